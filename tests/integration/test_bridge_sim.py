"""The bridge against the real sim firmware in a child process (``SimProcess``).

Over ``socket://`` (CPython firmware), over a real pty, and with the MicroPython unix port
as the firmware runtime. Every wait is bounded; every process is stopped in a ``finally``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from metal.core import proto as P
from metal.host.bridge.manager import Bridge, BridgeConfig, DeviceConfig
from metal.host.bridge.model import CommandRequest, Refused, TargetNotFound
from metal.host.sim_process import SimError, SimProcess, micropython_binary

T = TypeVar("T")
pytestmark = pytest.mark.timeout(60)


def run(fn: Callable[[], Awaitable[T]], timeout: float = 45) -> T:
    async def main() -> T:
        return await asyncio.wait_for(fn(), timeout=timeout)

    return asyncio.run(main())


async def until(cond: Callable[[], bool], timeout: float = 8.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    sp = SimProcess("cpython", "sim-it-0001").start()
    try:
        yield sp
    finally:
        sp.stop()


def snap(bridge: Bridge, dev: str = "sim0") -> dict[str, Any]:
    data: dict[str, Any] = json.loads(bridge.snapshot_json(dev))
    return data


def rails(bridge: Bridge, dev: str = "sim0") -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in snap(bridge, dev)["power"]["rails"]}


def make_bridge(url: str, state: Path, **dev: Any) -> Bridge:
    return Bridge(BridgeConfig(devices=[DeviceConfig(url=url, id="sim0", **dev)],
                               state_dir=state, restart_settle_s=0.5))


async def online(bridge: Bridge, dev: str = "sim0", timeout: float = 10.0) -> None:
    s = bridge.session(dev)
    await until(lambda: s.online and s.telemetry is not None, timeout, f"{dev} online")


def board_events(bridge: Bridge, boot: int) -> list[Any]:
    assert bridge.store is not None
    out = []
    cursor = None
    while True:
        page = bridge.store.query_events(device="sim0", since_id=cursor, limit=1000)
        out += [e for e in page.events if e.seq is not None and e.boot_id == boot]
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


def test_bridge_over_socket_full_scenario(sim: SimProcess, tmp_path: Path) -> None:
    assert sim.url is not None and sim.url.startswith("socket://")

    async def main() -> None:
        bridge = make_bridge(sim.url, tmp_path / "state")
        await bridge.start()
        try:
            await online(bridge)
            s = bridge.session("sim0")
            # -- devices -----------------------------------------------------------
            devs = bridge.list_devices()
            assert len(devs) == 1
            d = devs[0]
            assert (d.id, d.board, d.online, d.simulated) == ("sim0", "sim", True, True)
            assert d.firmware_version == "0.1.0" and d.uid == "sim-it-0001"
            boot1 = d.boot_id
            assert isinstance(boot1, int)
            # -- snapshot: readable units ---------------------------------------------
            sn = snap(bridge)
            assert sn["id"] == "sim0" and sn["online"] is True and sn["boot_id"] == boot1
            for x in sn["thermal"]["sensors"]:
                assert isinstance(x["temp_c"], float) and 5.0 < x["temp_c"] < 100.0, x
                assert x["status"] in ("ok", "warning")
            for x in sn["thermal"]["fans"]:
                assert 0.0 <= x["duty_pct"] <= 100.0 and 0 <= x["speed_rpm"] <= 13000
            for r in sn["power"]["rails"]:
                assert r["state"] == "off" and r["voltage_v"] < 0.5 and r["fault"] is None
            assert sn["power"]["state"] == "off"
            assert [z["name"] for z in sn["thermal"]["zones"]] == ["cpu", "memory", "io"]
            assert sn["thermal"]["zones"][0]["setpoint_c"] == 60.0
            assert len(sn["gpio"]) == 16 and sn["gpio"][2]["level"] == 1  # bmc_reset_n
            assert sn["loop"]["tick_budget_us"] == 10000 and sn["loop"]["tick_us"] >= 0
            assert sn["link"]["frames_rx"] > 0 and sn["link"]["state"] == "connected"
            assert sn["security"]["fitted"]["lock"] is True
            # -- a rail command, visible in the next snapshot -----------------------------
            v = await bridge.execute("sim0", CommandRequest("rail", "on", "p5v"),
                                     principal="op", idempotency_key=None)
            assert v.result == "applied"
            await until(lambda: rails(bridge)["p5v"]["state"] == "on", 3, "p5v on")
            r = rails(bridge)
            assert 4.7 < r["p5v"]["voltage_v"] < 5.3 and r["p12v_main"]["state"] == "on"
            assert 11.4 < r["p12v_main"]["voltage_v"] < 12.6
            # -- invalid target ----------------------------------------------------------------
            with pytest.raises(TargetNotFound):
                await bridge.execute("sim0", CommandRequest("rail", "on", "p48v"),
                                     principal="op", idempotency_key=None)
            # -- idempotent retry: the first verdict, no second CMD --------------------------------
            req = CommandRequest("zone", "manual", "memory", 35)
            v1 = await bridge.execute("sim0", req, principal="op", idempotency_key="idem-1")
            sent = s.cmd_frames_tx
            rows = len(bridge.store.list_commands("sim0"))  # type: ignore[union-attr]
            v2 = await bridge.execute("sim0", req, principal="op", idempotency_key="idem-1")
            assert (v2.command_id, v2.result, v2.replayed) == (v1.command_id, "applied", True)
            await asyncio.sleep(0.2)
            assert s.cmd_frames_tx == sent
            assert len(bridge.store.list_commands("sim0")) == rows  # type: ignore[union-attr]
            # -- interlock refusal: e-stop -> estop interlock trips -> power on refused (409)
            await bridge.execute("sim0", CommandRequest("sim", "estop", None, 1),
                                 principal="op", idempotency_key=None)
            await until(lambda: {i["name"]: i for i in snap(bridge)["interlocks"]}["estop"]
                        ["state"] == "tripped", 3, "estop interlock")
            await until(lambda: rails(bridge)["p5v"]["state"] == "off", 3, "lockout power-off")
            with pytest.raises(Refused) as refused:
                await bridge.execute("sim0", CommandRequest("power", "on"), principal="op",
                                     idempotency_key=None)
            assert refused.value.status == 409
            assert refused.value.details["reason"] == "rejected_by_interlock"
            # release and clear: the lockout ends, power can come back
            await bridge.execute("sim0", CommandRequest("sim", "estop", None, 0),
                                 principal="op", idempotency_key=None)
            deadline = time.monotonic() + 5
            while True:  # refused while the condition is still present (debounce, 1 tick)
                try:
                    await bridge.execute("sim0", CommandRequest("interlock", "clear", "estop"),
                                         principal="op", idempotency_key=None)
                    break
                except Refused:
                    assert time.monotonic() < deadline, "estop interlock never cleared"
                    await asyncio.sleep(0.05)
            v = await bridge.execute("sim0", CommandRequest("rail", "on", "p5v"),
                                     principal="op", idempotency_key=None)
            assert v.result == "applied"
            await until(lambda: rails(bridge)["p5v"]["state"] == "on", 3, "p5v on again")
            # -- events: (boot id, seq), persisted, no gaps -------------------------------------
            await until(lambda: len(board_events(bridge, boot1)) >= 10, 3, "events")
            evs = board_events(bridge, boot1)
            seqs = [e.seq for e in evs]
            assert seqs == list(range(1, len(seqs) + 1))
            kinds = {e.kind for e in evs}
            assert {"hardware.boot", "hardware.rail_state", "interlock.trip",
                    "interlock.estop"} <= kinds
            assert not bridge.store.query_events(  # type: ignore[union-attr]
                device="sim0", type="events.gap").events
            # -- reboot: detected, LastState re-applied, events under the new boot id ------------
            v = await bridge.execute("sim0", CommandRequest("board", "reboot"), principal="op",
                                     idempotency_key=None)
            assert v.result == "applied"
            await until(lambda: s.boot_id != boot1 and s.online, 8, "reboot detected")
            boot2 = s.boot_id
            assert bridge.list_devices()[0].boot_id == boot2

            def restored() -> bool:
                r = rails(bridge)
                z = {z["name"]: z for z in snap(bridge)["thermal"]["zones"]}
                return (r["p5v"]["state"] == "on" and r["p12v_main"]["state"] == "on"
                        and r["p3v3"]["state"] == "off" and z["memory"]["mode"] == "manual")

            await until(restored, 8, "LastState restore")
            resync = bridge.store.query_events(  # type: ignore[union-attr]
                device="sim0", type="state.resync").events
            assert resync and resync[-1].boot_id == boot2
            assert [a["result"] for a in resync[-1].payload["actions"]] == ["applied"] * len(
                resync[-1].payload["actions"])
            await until(lambda: len(board_events(bridge, boot2)) >= 3, 3, "new-boot events")
            evs2 = board_events(bridge, boot2)
            assert [e.seq for e in evs2] == list(range(1, len(evs2) + 1))
            assert evs2[0].kind == "hardware.boot" and evs2[0].value == 1  # commanded reset
            assert bridge.store.query_events(  # type: ignore[union-attr]
                device="sim0", type="device.reboot").events[-1].payload == {
                "previous_boot_id": boot1, "boot_id": boot2}
            # -- metrics, readiness, stream ---------------------------------------------------
            text = bridge.metrics_text().decode()
            assert 'metal_sensor_temperature_celsius{device="sim0",sensor="cpu0_die"}' in text
            assert 'metal_link_frames_total{device="sim0",direction="rx"}' in text
            assert 'metal_rail_on{device="sim0",rail="p5v"} 1.0' in text
            assert 'metal_fan_speed_rpm{device="sim0",fan="cpu_fan0"}' in text
            assert "metal_bus_queue_depth_max" in text
            assert bridge.readiness() == {"ready": True, "store": True,
                                          "devices": {"sim0": "connected"}}
            stream = bridge.subscribe(frozenset({"telemetry", "events"}), "sim0", 0)
            got: dict[str, Any] = {}
            async for msg in stream:
                got.setdefault(msg["topic"], msg)
                if "telemetry" in got and "events" in got:
                    break
            await stream.aclose()  # type: ignore[attr-defined]
            assert got["events"]["id"] >= 1 and got["telemetry"]["device"] == "sim0"
            page, cursor = await bridge.query_events(device_id="sim0", type="hardware.*",
                                                     since_id=None, since_time=None, limit=5)
            assert len(page) == 5 and cursor == page[-1]["id"]
        finally:
            await bridge.stop()

    run(main)


def test_bridge_restart_recovers_state_and_events_continue(sim: SimProcess,
                                                           tmp_path: Path) -> None:
    async def main() -> None:
        assert sim.url is not None
        state = tmp_path / "state"
        b1 = make_bridge(sim.url, state)
        await b1.start()
        try:
            await online(b1)
            boot = b1.session("sim0").boot_id
            assert boot is not None
            await b1.execute("sim0", CommandRequest("rail", "on", "p3v3"), principal="op",
                             idempotency_key="k")
            await until(lambda: rails(b1)["p3v3"]["state"] == "on", 3, "p3v3 on")
            n1 = len(board_events(b1, boot))
        finally:
            await b1.stop()
        b2 = make_bridge(sim.url, state)
        await b2.start()
        try:
            s = b2.session("sim0")
            assert s.state.desired["rail:p3v3"] == "on"  # recovered before the board answers
            await online(b2)
            assert s.boot_id == boot  # same boot: no reboot, no re-sync
            # the retry of the same request after the restart is answered from the store
            v = await b2.execute("sim0", CommandRequest("rail", "on", "p3v3"), principal="op",
                                 idempotency_key="k")
            assert v.replayed and v.result == "applied" and s.cmd_frames_tx == 0
            await b2.execute("sim0", CommandRequest("rail", "off", "p3v3"), principal="op",
                             idempotency_key=None)
            await until(lambda: len(board_events(b2, boot)) > n1 + 1, 3, "more events")
            seqs = [e.seq for e in board_events(b2, boot)]
            assert seqs == list(range(1, len(seqs) + 1))
            assert not b2.store.query_events(  # type: ignore[union-attr]
                device="sim0", type="device.reboot").events
        finally:
            await b2.stop()

    run(main)


def test_version_mismatch_refused_with_message(sim: SimProcess, tmp_path: Path) -> None:
    async def main() -> None:
        assert sim.url is not None
        bridge = make_bridge(sim.url, tmp_path / "state", proto_min=2, proto_max=2)
        await bridge.start()
        try:
            s = bridge.session("sim0")
            await until(lambda: s.status == "refused", 8, "refusal")
            text = "board speaks protocol 1..1, bridge speaks 2..2"
            d = bridge.list_devices()[0]
            assert not d.online and d.link_state == "refused" and d.refusal == text
            assert snap(bridge)["link"]["refusal"] == text
            assert bridge.readiness()["devices"] == {"sim0": "refused"}
            await until(lambda: any(
                e.payload.get("state") == "refused" and e.payload.get("reason") == text
                for e in bridge.store.query_events(  # type: ignore[union-attr]
                    device="sim0", type="link.status").events), 3, "link.status event")
        finally:
            await bridge.stop()

    run(main)


def test_bridge_over_pty(tmp_path: Path) -> None:
    sp = SimProcess("cpython", "sim-pty", pty=True).start()
    try:
        assert sp.url is not None and sp.url.startswith("/dev/")

        async def main() -> None:
            bridge = make_bridge(sp.url, tmp_path / "state")  # type: ignore[arg-type]
            await bridge.start()
            try:
                await online(bridge)
                assert bridge.list_devices()[0].uid == "sim-pty"
                v = await bridge.execute("sim0", CommandRequest("rail", "on", "p12v_fans"),
                                         principal="op", idempotency_key=None)
                assert v.result == "applied"
                await until(lambda: rails(bridge)["p12v_fans"]["state"] == "on", 3, "fans rail")
                assert 11.4 < rails(bridge)["p12v_fans"]["voltage_v"] < 12.6
            finally:
                await bridge.stop()

        run(main)
    finally:
        sp.stop()


@pytest.mark.micropython
def test_bridge_with_micropython_firmware(tmp_path: Path) -> None:
    try:
        micropython_binary()
    except SimError as exc:
        import mpvm as harness

        harness.unavailable(str(exc))  # a skip locally, a failure under CI
    sp = SimProcess("micropython", "sim-mp").start()
    try:
        assert sp.url is not None

        async def main() -> None:
            bridge = make_bridge(sp.url, tmp_path / "state")  # type: ignore[arg-type]
            await bridge.start()
            try:
                await online(bridge, timeout=15)
                d = bridge.list_devices()[0]
                assert d.board == "sim" and d.uid == "sim-mp"
                sn = snap(bridge)
                assert all(isinstance(x["temp_c"], float) for x in sn["thermal"]["sensors"])
                v = await bridge.execute("sim0", CommandRequest("rail", "on", "p5v"),
                                         principal="op", idempotency_key=None)
                assert v.result == "applied"
                await until(lambda: rails(bridge)["p5v"]["state"] == "on", 5, "p5v on")
                with pytest.raises(TargetNotFound):
                    await bridge.execute("sim0", CommandRequest("zone", "auto", "gpu"),
                                         principal="op", idempotency_key=None)
                boot = bridge.session("sim0").boot_id
                assert boot is not None
                await until(lambda: len(board_events(bridge, boot)) >= 3, 3, "events")
                seqs = [e.seq for e in board_events(bridge, boot)]
                assert seqs == list(range(1, len(seqs) + 1))
            finally:
                await bridge.stop()

        run(main)
    finally:
        sp.stop()


def test_sim_faults_only_on_simulated_boards(sim: SimProcess, tmp_path: Path) -> None:
    from metal.host.bridge.model import NotSupported

    async def main() -> None:
        assert sim.url is not None
        bridge = make_bridge(sim.url, tmp_path / "state", simulated=False)
        await bridge.start()
        try:
            await online(bridge)
            with pytest.raises(NotSupported):
                await bridge.execute("sim0", CommandRequest("sim", "estop", None, 1),
                                     principal="op", idempotency_key=None)
            assert bridge.session("sim0").cmd_frames_tx == 0
            assert P.OP_SIM_FAULT == 60
        finally:
            await bridge.stop()

    run(main)
