"""Bridge (BridgeService) over in-process sim boards: devices, snapshots, commands,
streams (conflated telemetry, never-dropped events, resume), events, readiness, metrics."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.test_session import FakeBoard, run, until
from metal.host.bridge.manager import (
    Bridge,
    BridgeConfig,
    DeviceConfig,
    device_id_from_url,
    parse_device_spec,
)
from metal.host.bridge.model import (
    CommandRequest,
    DeviceNotFound,
    InvalidInput,
    TargetNotFound,
)


def test_device_ids() -> None:
    assert device_id_from_url("/dev/ttyACM0") == "ttyACM0"
    assert device_id_from_url("socket://10.0.0.5:7000") == "10.0.0.5-7000"
    assert device_id_from_url("rfc2217://lab-rig:4000") == "lab-rig-4000"
    assert device_id_from_url("/dev/pts/7") == "7"
    d = parse_device_spec("shelf-a=/dev/ttyUSB1")
    assert (d.id, d.url) == ("shelf-a", "/dev/ttyUSB1")
    d = parse_device_spec("socket://127.0.0.1:9=x")  # '=' after a scheme: part of the URL
    assert d.url == "socket://127.0.0.1:9=x"
    with pytest.raises(ValueError, match="two devices"):
        BridgeConfig(devices=["a=/dev/x", "a=/dev/y"]).device_configs()
    with pytest.raises(ValueError, match="device id"):
        DeviceConfig(url="/dev/x", id="bad id!")
    with pytest.raises(ValueError, match="power_restore"):
        DeviceConfig(url="/dev/x", power_restore="sometimes")


class Fleet:
    """A Bridge whose devices are FakeBoards."""

    def __init__(self, tmp: Path, n: int = 2, **cfg: Any) -> None:
        self.boards: dict[str, FakeBoard] = {}
        devices = [DeviceConfig(url=f"fake://{i}", id=f"b{i}") for i in range(n)]

        def factory(d: DeviceConfig) -> FakeBoard:
            fb = FakeBoard(d.url, uid=f"uid-{d.id}")
            assert d.id is not None
            self.boards[d.id] = fb
            return fb

        self.bridge = Bridge(BridgeConfig(devices=devices, state_dir=tmp / "state", **cfg),
                             transport_factory=factory)

    async def __aenter__(self) -> Bridge:
        await self.bridge.start()
        for s in self.bridge.sessions.values():
            await until(lambda s=s: s.online and s.telemetry is not None, 5, s.device_id)
        return self.bridge

    async def __aexit__(self, *exc: object) -> None:
        await self.bridge.stop()


def test_devices_snapshot_execute_readiness(tmp_path: Path) -> None:
    async def main() -> None:
        fleet = Fleet(tmp_path)
        async with fleet as bridge:
            devs = {d.id: d for d in bridge.list_devices()}
            assert set(devs) == {"b0", "b1"}
            assert devs["b1"].uid == "uid-b1" and devs["b1"].online and devs["b1"].simulated
            assert devs["b0"].to_dict() == {"id": "b0", "board": "sim", "online": True,
                                            "firmware_version": "0.1.0", "simulated": True}
            snap = json.loads(bridge.snapshot_json("b0"))
            assert snap["id"] == "b0" and snap["online"] is True
            with pytest.raises(DeviceNotFound):
                bridge.snapshot_json("nope")
            with pytest.raises(DeviceNotFound):
                await bridge.execute("nope", CommandRequest("power", "on"), principal="p",
                                     idempotency_key=None)
            v = await bridge.execute("b1", CommandRequest("rail", "on", "p5v"), principal="p",
                                     idempotency_key="k1")
            assert v.result == "applied"
            await until(lambda: json.loads(bridge.snapshot_json("b1"))["power"]["rails"][1]
                        ["state"] == "on", 3, "b1 p5v on")
            assert json.loads(bridge.snapshot_json("b0"))["power"]["rails"][1]["state"] == "off"
            with pytest.raises(TargetNotFound):
                await bridge.execute("b0", CommandRequest("rail", "on", "x"), principal="p",
                                     idempotency_key=None)
            assert bridge.readiness() == {"ready": True, "store": True,
                                          "devices": {"b0": "connected", "b1": "connected"}}
            fleet.boards["b0"].unplug()
            await until(lambda: bridge.readiness()["devices"]["b0"] == "disconnected", 2,
                        "b0 down")
            assert not {d.id: d for d in bridge.list_devices()}["b0"].online
            assert json.loads(bridge.snapshot_json("b0"))["online"] is False
        r = bridge.readiness()
        assert r["ready"] is False and r["store"] is False

    run(main)


def test_metrics(tmp_path: Path) -> None:
    async def main() -> None:
        async with Fleet(tmp_path, n=1) as bridge:
            await bridge.execute("b0", CommandRequest("rail", "on", "p12v_main"),
                                 principal="p", idempotency_key=None)
            await until(lambda: bridge.session("b0").snapshot.data["power"]["rails"][0]
                        ["state"] == "on", 3, "rail on")
            text = bridge.metrics_text().decode()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in fams.values() for s in f.samples}

        def val(name: str, **labels: str) -> float:
            return samples[(name, tuple(sorted(labels.items())))]

        t = val("metal_sensor_temperature_celsius", device="b0", sensor="cpu0_die")
        assert 5 < t < 100
        assert val("metal_rail_on", device="b0", rail="p12v_main") == 1.0
        assert val("metal_rail_state", device="b0", rail="p12v_main", state="on") == 1.0
        assert val("metal_rail_state", device="b0", rail="p5v", state="off") == 1.0
        assert 11 < val("metal_rail_voltage_volts", device="b0", rail="p12v_main") < 13
        assert val("metal_fan_speed_rpm", device="b0", fan="cpu_fan0") >= 0
        assert 0 <= val("metal_fan_duty_ratio", device="b0", fan="cpu_fan0") <= 1
        assert val("metal_interlock_tripped", device="b0", interlock="estop") == 0.0
        assert val("metal_link_frames_total", device="b0", direction="rx") > 10
        assert val("metal_link_frames_total", device="b0", direction="tx") > 1
        assert val("metal_link_bytes_total", device="b0", direction="rx") > 100
        assert val("metal_device_online", device="b0") == 1.0
        assert val("metal_commands_total", device="b0", result="ok") == 1.0
        assert val("metal_loop_overruns_total", device="b0") >= 0
        assert val("metal_bus_queue_depth_max") >= 0
        assert val("metal_bus_board_events_total") > 0
        assert "metal_transport_reconnects_total" in text

    run(main)


def test_stream_telemetry_is_conflated_and_events_flow(tmp_path: Path) -> None:
    async def main() -> None:
        async with Fleet(tmp_path, n=2) as bridge:
            it = bridge.subscribe(frozenset({"telemetry"}), "b0", None)
            first = await asyncio.wait_for(it.__anext__(), 2)
            assert first["topic"] == "telemetry" and first["device"] == "b0"
            assert first["data"]["id"] == "b0"
            seen: list[float] = []
            bridge.session("b0").add_listener(lambda d, snap: seen.append(snap["updated_at"]))
            await until(lambda: len(seen) >= 3, 3, "frames while the client does not read")
            last = seen[-1]
            nxt = await asyncio.wait_for(it.__anext__(), 2)
            # the latest one waited, not the oldest: no backlog of stale frames
            assert nxt["time"] >= last > seen[0]
            await it.aclose()  # type: ignore[attr-defined]
            assert len(bridge.session("b0")._listeners) == 1  # only the test's own

            ev = bridge.subscribe(frozenset({"events", "state"}), "b1", None)
            task = asyncio.ensure_future(ev.__anext__())
            await asyncio.sleep(0.05)
            await bridge.execute("b1", CommandRequest("rail", "on", "p5v"), principal="p",
                                 idempotency_key=None)
            got = [await asyncio.wait_for(task, 3)]
            while not any(m.get("type") == "hardware.rail_state" for m in got):
                got.append(await asyncio.wait_for(ev.__anext__(), 3))
            assert all(m["device"] == "b1" for m in got)
            topics = {m["topic"] for m in got}
            assert "events" in topics
            while "state" not in {m["topic"] for m in got}:  # desired write or reported change
                got.append(await asyncio.wait_for(ev.__anext__(), 3))
            await ev.aclose()  # type: ignore[attr-defined]
            with pytest.raises(InvalidInput):
                bridge.subscribe(frozenset({"bogus"}), None, None)
            with pytest.raises(DeviceNotFound):
                bridge.subscribe(frozenset({"events"}), "nope", None)

    run(main)


def test_slow_event_consumer_is_closed_with_reason_then_resumes(tmp_path: Path) -> None:
    async def main() -> None:
        async with Fleet(tmp_path, n=1, subscriber_queue=3) as bridge:
            it = bridge.subscribe(frozenset({"events"}), "b0", None)
            task = asyncio.ensure_future(it.__anext__())
            await asyncio.sleep(0.05)
            await bridge.execute("b0", CommandRequest("power", "on"), principal="p",
                                 idempotency_key=None)
            await until(lambda: bridge.session("b0").snapshot.data["power"]["state"] == "on",
                        3, "power on")
            await asyncio.sleep(0.2)
            msgs = [await asyncio.wait_for(task, 2)]
            while msgs[-1]["topic"] != "closed":
                msgs.append(await asyncio.wait_for(it.__anext__(), 2))
            close = msgs[-1]
            assert close == {"topic": "closed", "reason": "slow_consumer",
                             "last_id": msgs[-2]["id"]}
            delivered = [m["id"] for m in msgs[:-1]]
            with pytest.raises(StopAsyncIteration):
                await it.__anext__()
            assert bridge.bus is not None and bridge.bus.metrics.slow_consumers == 1
            # resume: the stored backlog after the cursor, in order, nothing skipped
            r = bridge.subscribe(frozenset({"events"}), "b0", close["last_id"])
            rest = []
            stored = [e["id"] for e in (await bridge.query_events(
                device_id="b0", type=None, since_id=close["last_id"], since_time=None,
                limit=1000))[0] if not e["type"].startswith("state.")]
            while len(rest) < len(stored):
                rest.append((await asyncio.wait_for(r.__anext__(), 2))["id"])
            assert rest == stored
            assert delivered + rest == sorted(delivered + rest)
            await r.aclose()  # type: ignore[attr-defined]

    run(main)


def test_query_events_pages(tmp_path: Path) -> None:
    async def main() -> None:
        async with Fleet(tmp_path, n=1) as bridge:
            await bridge.execute("b0", CommandRequest("power", "on"), principal="p",
                                 idempotency_key=None)
            await until(lambda: bridge.session("b0").snapshot.data["power"]["state"] == "on",
                        3, "power on")
            await asyncio.sleep(0.2)
            page1, cur = await bridge.query_events(device_id="b0", type="hardware.rail_state",
                                                   since_id=None, since_time=None, limit=3)
            assert len(page1) == 3 and cur == page1[-1]["id"]
            assert all(e["type"] == "hardware.rail_state" and e["boot_id"] for e in page1)
            assert page1[0]["data"]["source_name"] == "p12v_main"
            page2, _ = await bridge.query_events(device_id="b0", type="hardware.rail_state",
                                                 since_id=cur, since_time=None, limit=100)
            assert page2 and page2[0]["id"] > cur
            with pytest.raises(DeviceNotFound):
                await bridge.query_events(device_id="zz", type=None, since_id=None,
                                          since_time=None, limit=1)

    run(main)


def test_restart_recovers_desired_state(tmp_path: Path) -> None:
    async def main() -> None:
        async with Fleet(tmp_path, n=1) as bridge:
            await bridge.execute("b0", CommandRequest("zone", "manual", "cpu", 80),
                                 principal="p", idempotency_key=None)
        fleet = Fleet(tmp_path, n=1)
        await fleet.bridge.start()
        try:
            s = fleet.bridge.session("b0")
            assert s.state.desired["zone:cpu"] == {"mode": "manual", "duty_pct": 80}
            # a fresh board (new boot id): re-synced from the recovered desired state
            await until(lambda: s.online and s.zone_modes and s.zone_modes[0] == "manual", 5,
                        "zone restored on the new board")
            assert s.state.desired["zone:cpu"] == {"mode": "manual", "duty_pct": 80}
        finally:
            await fleet.bridge.stop()

    run(main)
