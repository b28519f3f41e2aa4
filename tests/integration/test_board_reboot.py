"""Board reboot in the middle of a stream of commands and events.

``test_bridge_sim`` reboots a quiet board. Here a client keeps flipping zone ``io``
between manual and auto (one ``hardware.zone_mode`` event per flip, about 50 per second)
and a WebSocket-style subscriber (``Bridge.subscribe``) follows the event stream while
the board is told to reboot. Then:

* the reboot is detected: ``device.reboot`` {previous_boot_id, boot_id};
* the board is re-synced per power-restore ``last_state``: rails, manual zone duty and
  GPIO outputs desired before the reboot are back, every resync action ``applied``;
* the event stream continues under the new boot id: the old boot's delivered events are
  1..N without a hole, the new boot's start at 1 (a commanded ``hardware.boot``), no
  ``events.gap`` anywhere, and flips made after the reboot arrive under the new boot;
* the subscriber got every stored event exactly once, in order, across the reboot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from integration.fault_relay import check_board_events, pid_alive
from metal.host.bridge.events import BusEvent
from metal.host.bridge.manager import Bridge, BridgeConfig, DeviceConfig
from metal.host.bridge.model import BridgeError, CommandRequest
from metal.host.sim_process import SimProcess

T = TypeVar("T")
pytestmark = pytest.mark.timeout(90)
DEV = "sim0"


def run(fn: Callable[[], Awaitable[T]], timeout: float = 60) -> T:
    async def main() -> T:
        return await asyncio.wait_for(fn(), timeout=timeout)

    return asyncio.run(main())


async def until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    sp = SimProcess("cpython", "sim-reboot").start()
    try:
        yield sp
    finally:
        sp.stop()
        assert sp.pid is not None and not pid_alive(sp.pid)


def test_reboot_while_events_flow(sim: SimProcess, tmp_path: Path) -> None:
    assert sim.url is not None

    async def main() -> None:
        bridge = Bridge(BridgeConfig(devices=[DeviceConfig(url=sim.url, id=DEV)],
                                     state_dir=tmp_path / "state", restart_settle_s=0.5))
        await bridge.start()
        s = bridge.session(DEV)
        store = bridge.store
        assert store is not None

        def snap() -> dict[str, Any]:
            data: dict[str, Any] = json.loads(bridge.snapshot_json(DEV))
            return data

        async def execute(*args: Any) -> Any:
            return await bridge.execute(DEV, CommandRequest(*args), principal="test",
                                        idempotency_key=None)

        try:
            await until(lambda: s.online and s.telemetry is not None, 10, "online")
            boot1 = s.boot_id
            # desired state to restore after the reboot
            for args in (("rail", "on", "p3v3"), ("zone", "manual", "memory", 35),
                         ("gpio", "write", "led_status", 1), ("gpio", "write", "aux_out_1", 1)):
                assert (await execute(*args)).result == "applied"
            await until(lambda: {r["name"]: r["state"] for r in snap()["power"]["rails"]}
                        ["p3v3"] == "on", 5, "p3v3 on")

            # a subscriber from here on, and a stream of board events
            start_id = store.last_event_id()
            stream = bridge.subscribe(frozenset({"events", "state"}), DEV, start_id)
            received: list[dict[str, Any]] = []

            async def follow() -> None:
                async for msg in stream:
                    received.append(msg)

            follower = asyncio.ensure_future(follow())
            stop = asyncio.Event()
            flips: list[tuple[int | None, str, str]] = []  # (boot at answer, mode, outcome)

            async def flipper() -> None:
                mode = "auto"
                while not stop.is_set():
                    want = "manual" if mode == "auto" else "auto"
                    args = ("zone", want, "io", 60) if want == "manual" else ("zone", "auto", "io")
                    try:
                        await execute(*args)
                        mode = want
                        flips.append((s.boot_id, want, "applied"))
                    except BridgeError as exc:  # offline / fate unknown around the reboot
                        flips.append((s.boot_id, want, exc.code))
                        await asyncio.sleep(0.05)
                    await asyncio.sleep(0.01)

            flipping = asyncio.ensure_future(flipper())
            await until(lambda: len(flips) >= 20, 10, "events flowing")
            assert (await execute("board", "reboot")).result == "applied"
            await until(lambda: s.boot_id != boot1 and s.online, 10, "reboot detected")
            boot2 = s.boot_id
            await until(lambda: bool(store.query_events(device=DEV, type="state.resync").events),
                        10, "power restore")
            n = len(flips)
            await until(lambda: sum(1 for b, _, o in flips[n:] if b == boot2 and o == "applied")
                        >= 20, 10, "flips on the new boot")
            stop.set()
            await asyncio.wait_for(flipping, 10)
            await asyncio.sleep(0.3)  # the last events
            end_id = store.last_event_id()
            await until(lambda: end_id in {m.get("id") for m in received[-50:]}, 5,
                        "the subscriber caught up")
            follower.cancel()  # (the generator's finally releases the subscription)
            with contextlib.suppress(asyncio.CancelledError):
                await follower

            # -- detected ---------------------------------------------------------------
            reboots = store.query_events(device=DEV, type="device.reboot").events
            assert [e.payload for e in reboots] == [{"previous_boot_id": boot1,
                                                     "boot_id": boot2}]
            # -- re-synced (last_state) ------------------------------------------------
            resync = store.query_events(device=DEV, type="state.resync").events
            assert len(resync) == 1 and resync[0].boot_id == boot2
            actions = resync[0].payload["actions"]
            assert actions and all(a["result"] == "applied" for a in actions), actions

            def restored() -> bool:
                sn = snap()
                rails = {r["name"]: r["state"] for r in sn["power"]["rails"]}
                zones = {z["name"]: z for z in sn["thermal"]["zones"]}
                gpio = {g["name"]: g["level"] for g in sn["gpio"]}
                return (rails["p12v_main"] == rails["p5v"] == rails["p3v3"] == "on"
                        and rails["p1v8"] == "off" and zones["memory"]["mode"] == "manual"
                        and abs(zones["memory"]["duty_pct"] - 35) < 0.2
                        and gpio["led_status"] == 1 and gpio["aux_out_1"] == 1)

            await until(restored, 5, "the desired state back on the board")
            # -- the event log across the reboot ---------------------------------------
            events = [BusEvent.from_row(r).to_dict()
                      for r in store.query_events(device=DEV, limit=1000).events]
            assert len(events) < 1000
            seqs = check_board_events(events, boots=2)  # no events.gap, both contiguous
            assert list(seqs) == [boot1, boot2]
            first2 = next(e for e in events if e["boot_id"] == boot2 and e["seq"] == 1)
            assert first2["type"] == "hardware.boot" and first2["data"]["value"] == 1
            last1 = max(e["id"] for e in events if e["boot_id"] == boot1 and e["seq"])
            assert first2["id"] > last1  # the old boot's events all came first
            io_new = [e for e in events if e["boot_id"] == boot2
                      and e["type"] == "hardware.zone_mode" and e["data"]["source"] == 2]
            assert len(io_new) >= 15, "the event stream did not continue on the new boot"
            # -- the subscriber: every stored event after its start, once, in order ------
            stored = [e["id"] for e in events if e["id"] > start_id]
            got = [m["id"] for m in received if m.get("id") is not None]
            assert got == stored, (len(got), len(stored))
            assert {m["topic"] for m in received} <= {"events", "state"}
            print(f"\nflips: {len(flips)} ({sum(o == 'applied' for _, _, o in flips)} applied); "
                  f"boot {boot1}: {len(seqs[boot1])} events, boot {boot2}: "
                  f"{len(seqs[boot2])} events; resync: {actions}")
        finally:
            await bridge.stop()

    run(main)
