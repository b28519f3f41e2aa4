"""DeviceSession against the real sim firmware, in process, over a fake transport.

``FakeBoard`` runs ``metal.core.firmware.Firmware`` with the sim board's ``SimHal`` on the
test's event loop (one tick every 10 ms of real time) and plays the transport: bytes the
session writes go into the HAL's receive ring, what the firmware writes comes back through
``on_data``. It can unplug/replug, reboot, and drop or hold traffic, which is what the
session's recovery paths need. ``test_manager.py`` imports it too.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from metal.boards.sim.board import make_config
from metal.boards.sim.hal import SimHal
from metal.core import proto as P
from metal.core.compat import ticks_us
from metal.core.firmware import Firmware
from metal.host.bridge.events import EventBus, EventFilter
from metal.host.bridge.model import (
    CommandRequest,
    DeviceOffline,
    DeviceTimeout,
    IdempotencyConflict,
    InvalidInput,
    Refused,
    TargetNotFound,
)
from metal.host.bridge.session import DeviceSession, SessionConfig
from metal.host.bridge.store import Store
from metal.host.bridge.transport import TransportStats
from metal.host.codec import FrameSplitter, decode_frame

T = TypeVar("T")


def run(fn: Callable[[], Awaitable[T]], timeout: float = 30) -> T:
    async def main() -> T:
        return await asyncio.wait_for(fn(), timeout=timeout)

    return asyncio.run(main())


async def until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


class FakeBoard:
    """The sim firmware as a Transport (see the module docstring)."""

    def __init__(self, url: str = "fake://board", uid: str = "sim-fake") -> None:
        self.url = url
        self.uid = uid
        self.stats = TransportStats()
        self.config = make_config()
        self.hal = SimHal(self.config)
        self.boot_ids: list[int] = []
        self.fw = self._boot(0)
        self._connected = False
        self.plugged = True
        self.running = True  # False: the board is frozen (no ticks)
        self.hold_rx = False  # True: host -> board bytes are dropped
        self.hold_tx = False  # True: board -> host bytes are dropped
        self.tx_filter: Callable[[bytes], bool] | None = None  # frames host->board to drop
        self.sent_cmds: list[dict[int, Any]] = []  # every CMD frame that reached the board
        self._splitter = FrameSplitter()
        self._task: asyncio.Task[None] | None = None
        self._on_open: Callable[[], None] = lambda: None
        self._on_data: Callable[[bytes], None] = lambda d: None
        self._on_close: Callable[[str], None] = lambda r: None

    def _boot(self, cause: int) -> Firmware:
        boot = int.from_bytes(os.urandom(4), "big") & 0x3FFFFFFF
        self.boot_ids.append(boot)
        return Firmware(self.config, self.hal, boot, self.uid, reset_cause=cause)

    @property
    def boot_id(self) -> int:
        return self.boot_ids[-1]

    @property
    def connected(self) -> bool:
        return self._connected

    def bind(self, on_open: Callable[[], None], on_data: Callable[[bytes], None],
             on_close: Callable[[str], None]) -> None:
        self._on_open, self._on_data, self._on_close = on_open, on_data, on_close

    async def start(self) -> None:
        self._task = asyncio.create_task(self._tick_main())
        if self.plugged:
            self._open()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._connected:
            self._connected = False
            self._on_close("stopped")

    def _open(self) -> None:
        self._connected = True
        self.stats.connected = True
        self.stats.opens += 1
        if self.stats.opens > 1:
            self.stats.reconnects += 1
        self._on_open()

    def unplug(self) -> None:
        self.plugged = False
        if self._connected:
            self._connected = False
            self.stats.connected = False
            self._on_close("unplugged")

    def replug(self) -> None:
        self.plugged = True
        self._splitter.reset()
        self._open()

    def reboot(self) -> None:
        """Power-cycle the board now (a new boot id; the plant keeps its state)."""
        self.hal.rx.clear()
        self.hal.tx.clear()
        self.fw = self._boot(0)

    def write(self, data: bytes) -> bool:
        if not self._connected:
            self.stats.write_drops += 1
            return False
        self.stats.bytes_tx += len(data)
        if self.hold_rx:
            return True
        for chunk in self._splitter.feed(data):
            try:
                fr = decode_frame(chunk)
            except Exception:
                fr = None
            if fr is not None and self.tx_filter is not None and self.tx_filter(chunk):
                continue
            if fr is not None and fr.ftype == P.T_CMD and self.running:
                self.sent_cmds.append(fr.payload)
            self.hal.host_write(chunk + b"\x00")
        return True

    async def _tick_main(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            if not self.running:
                continue
            self.fw.loop.tick(ticks_us())
            if self.hal.reboot_requested:
                self.hal.reboot_requested = False
                self.fw = self._boot(1)
            out = self.hal.host_read()
            if out and self._connected and not self.hold_tx:
                self.stats.bytes_rx += len(out)
                self._on_data(out)

    def cmds(self, op: int) -> list[dict[int, Any]]:
        return [c for c in self.sent_cmds if c.get(P.CMD_OP) == op]


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "bridge.sqlite3")
    yield s
    s.close()


def make_session(store: Store, board: FakeBoard, **kw: Any) -> DeviceSession:
    bus = EventBus(store)
    cfg = SessionConfig(device_id=kw.pop("device_id", "dev"), url=board.url, **kw)
    return DeviceSession(cfg, store, bus, transport=board)


async def online(s: DeviceSession, timeout: float = 5.0) -> None:
    await until(lambda: s.online and s.telemetry is not None, timeout, "device online")


def rail(action: str, name: str) -> CommandRequest:
    return CommandRequest("rail", action, name)


# -- tests --------------------------------------------------------------------------------


def test_handshake_describe_telemetry_snapshot(store: Store) -> None:
    async def main() -> None:
        board = FakeBoard()
        s = make_session(store, board)
        await s.start()
        try:
            await online(s)
            assert s.board == "sim" and s.simulated and s.uid == "sim-fake"
            assert s.boot_id == board.boot_id
            assert s.layout is not None and len(s.layout.rails) == 6
            snap = s.snapshot.data
            assert snap["online"] is True
            assert [r["name"] for r in snap["power"]["rails"]][:2] == ["p12v_main", "p5v"]
            temps = [x["temp_c"] for x in snap["thermal"]["sensors"]]
            assert all(isinstance(t, float) and 0 < t < 100 for t in temps)
            assert snap["thermal"]["zones"][0]["name"] == "cpu"
            assert snap["thermal"]["zones"][0]["setpoint_c"] == 60.0
            # the JSON is what GET serves, built once per telemetry frame
            assert s.snapshot_json() is s.snapshot.json
            assert b'"voltage_v"' in s.snapshot_json()
            # heartbeats flow and give an RTT
            await until(lambda: s.rtt_ms is not None, 3, "heartbeat echo")
            # the device row knows the boot and the layout
            row = store.get_device("dev")
            assert row is not None and row.last_boot_id == board.boot_id
            assert row.describe is not None and "parts_hex" in row.describe
        finally:
            await s.stop()

    run(main)


def test_events_persisted_in_order_with_boot_id(store: Store) -> None:
    async def main() -> None:
        board = FakeBoard()
        s = make_session(store, board)
        await s.start()
        try:
            await online(s)
            v = await s.execute(rail("on", "p5v"), principal="t", idempotency_key=None)
            assert v.result == "applied"
            await until(lambda: s.snapshot.data["power"]["rails"][1]["state"] == "on", 3,
                        "p5v on")

            def rail_events_stored():
                page = store.query_events(device="dev", type="hardware.rail_state", limit=1000)
                names = {e.payload.get("source_name") for e in page.events}
                return {"p12v_main", "p5v"} <= names

            # (the board meters its link: the events arrive over a few ticks)
            await until(rail_events_stored, 3, "rail events")
            page = store.query_events(device="dev", type="hardware.*", limit=1000)
            seqs = [e.seq for e in page.events if e.boot_id == board.boot_id]
            assert seqs == list(range(1, len(seqs) + 1))  # no gap, no duplicate
            kinds = [e.kind for e in page.events]
            assert "hardware.boot" in kinds and "hardware.rail_state" in kinds
            names = [e.payload.get("source_name") for e in page.events
                     if e.kind == "hardware.rail_state"]
            assert "p12v_main" in names and "p5v" in names
            assert not store.query_events(device="dev", type="events.gap").events
        finally:
            await s.stop()

    run(main)


def test_ack_only_after_persist(store: Store) -> None:
    """No frame leaves the host between an EVENT's delivery and its commit."""

    async def main() -> None:
        board = FakeBoard()
        s = make_session(store, board)
        bus = s.bus
        real = bus.publish_board_event
        log: list[str] = []
        orig_write = board.write

        def write(data: bytes) -> bool:
            log.append("write")
            return orig_write(data)

        async def slow_publish(*a: Any, **kw: Any) -> Any:
            log.append("persist-start")
            await asyncio.sleep(0.05)  # a slow disk
            r = await real(*a, **kw)
            log.append("persist-end")
            return r

        board.write = write  # type: ignore[method-assign]
        bus.publish_board_event = slow_publish  # type: ignore[method-assign]
        await s.start()
        try:
            await online(s)
            await until(lambda: log.count("persist-end") >= 1, 3, "an event")
            # between every persist-start and its persist-end there is no write
            inside = False
            for item in log:
                if item == "persist-start":
                    inside = True
                elif item == "persist-end":
                    inside = False
                elif item == "write":
                    assert not inside, "a frame (and its ack) went out before the commit"
        finally:
            await s.stop()

    run(main)


def test_store_failure_is_not_acked_and_event_is_redelivered(store: Store) -> None:
    async def main() -> None:
        board = FakeBoard()
        s = make_session(store, board)
        bus = s.bus
        real = bus.publish_board_event
        fail = {"n": 1}

        async def flaky(*a: Any, **kw: Any) -> Any:
            if fail["n"]:
                fail["n"] -= 1
                raise OSError("disk full")
            return await real(*a, **kw)

        bus.publish_board_event = flaky  # type: ignore[method-assign]
        await s.start()
        try:
            await online(s)
            await until(lambda: (store.get_last_seq("dev", board.boot_id) or 0) >= 1, 5,
                        "boot event stored after the retry")
            ev = store.find_board_event("dev", board.boot_id, 1)
            assert ev is not None  # the event the first attempt failed on
        finally:
            await s.stop()

    run(main)


def test_command_errors_and_interlock_refusal(store: Store) -> None:
    async def main() -> None:
        board = FakeBoard()
        s = make_session(store, board)
        await s.start()
        try:
            await online(s)
            with pytest.raises(TargetNotFound) as nf:
                await s.execute(rail("on", "p9v"), principal="t", idempotency_key=None)
            assert "p12v_main" in str(nf.value)
            with pytest.raises(InvalidInput, match="duty_pct must be between 0 and 100"):
                await s.execute(CommandRequest("zone", "manual", "cpu", 150), principal="t",
                                idempotency_key=None)
            # e-stop -> the estop interlock trips (latched) -> power on refused by the board
            v = await s.execute(CommandRequest("sim", "estop", None, 1), principal="t",
                                idempotency_key=None)
            assert v.result == "applied"
            await until(lambda: "estop" in s.snapshot.data["security"] and
                        s.snapshot.data["security"]["estop"], 3, "estop in telemetry")
            with pytest.raises(Refused) as ref:
                await s.execute(CommandRequest("power", "on"), principal="t",
                                idempotency_key=None)
            assert ref.value.status == 409
            assert ref.value.details["reason"] == "rejected_by_interlock"
            cid = ref.value.details["command_id"]
            row = store.get_command("dev", cid)
            assert row is not None and row.state == "rejected"
            il = {x["name"]: x for x in s.snapshot.data["interlocks"]}
            assert il["estop"]["state"] == "tripped" and il["estop"]["latched"] is True
        finally:
            await s.stop()

    run(main)


def test_idempotent_retry_returns_first_verdict_without_second_cmd(store: Store) -> None:
    async def main() -> None:
        board = FakeBoard()
        s = make_session(store, board)
        await s.start()
        try:
            await online(s)
            req = CommandRequest("zone", "manual", "memory", 40)
            v1 = await s.execute(req, principal="alice", idempotency_key="k-1")
            n = len(board.cmds(P.OP_ZONE_MANUAL))
            v2 = await s.execute(req, principal="alice", idempotency_key="k-1")
            assert v2.command_id == v1.command_id and v2.result == "applied" and v2.replayed
            assert len(board.cmds(P.OP_ZONE_MANUAL)) == n == 1
            with pytest.raises(IdempotencyConflict):
                await s.execute(CommandRequest("zone", "manual", "memory", 41),
                                principal="alice", idempotency_key="k-1")
            # another principal's key is its own
            v3 = await s.execute(req, principal="bob", idempotency_key="k-1")
            assert v3.command_id != v1.command_id
            # concurrent retries: one CMD
            req2 = CommandRequest("zone", "manual", "io", 55)
            rs = await asyncio.gather(*(s.execute(req2, principal="alice",
                                                  idempotency_key="k-2") for _ in range(5)),
                                      return_exceptions=True)
            ids = {r.command_id for r in rs if not isinstance(r, BaseException)}
            assert len(ids) == 1, rs
            assert len([c for c in board.cmds(P.OP_ZONE_MANUAL) if c[P.CMD_TARGET] == 2]) == 1
            # desired state recorded from the applied verdicts
            assert s.state.desired["zone:memory"] == {"mode": "manual", "duty_pct": 40}
            await until(lambda: s.snapshot.data["thermal"]["zones"][1]["mode"] == "manual", 3,
                        "zone mode event")
        finally:
            await s.stop()

    run(main)


def test_rejected_replay_raises_same_error(store: Store) -> None:
    async def main() -> None:
        board = FakeBoard()
        s = make_session(store, board)
        await s.start()
        try:
            await online(s)
            await s.execute(CommandRequest("estop", "assert"), principal="t", idempotency_key=None)
            await until(lambda: s.snapshot.data["interlocks"][18]["state"] == "tripped", 3,
                        "estop tripped")
            with pytest.raises(Refused) as e1:
                await s.execute(rail("on", "p12v_main"), principal="t", idempotency_key="r")
            with pytest.raises(Refused) as e2:
                await s.execute(rail("on", "p12v_main"), principal="t", idempotency_key="r")
            assert e2.value.details["command_id"] == e1.value.details["command_id"]
            assert e2.value.details["replayed"] is True
            assert len(board.cmds(P.OP_RAIL_ON)) == 1
        finally:
            await s.stop()

    run(main)


def test_offline_device_refuses_commands(store: Store) -> None:
    async def main() -> None:
        board = FakeBoard()
        board.plugged = False
        s = make_session(store, board)
        await s.start()
        try:
            with pytest.raises(DeviceOffline):
                await s.execute(rail("on", "p5v"), principal="t", idempotency_key=None)
            assert s.status == "disconnected" and not s.summary().online
        finally:
            await s.stop()

    run(main)


def test_unplug_replug_same_boot_resends_without_double_execution(store: Store) -> None:
    """A CMD whose RESULT was lost is sent again in the next session; the board answers
    from its result memory instead of executing twice."""

    async def main() -> None:
        board = FakeBoard()
        s = make_session(store, board, link_timeout_s=0.5)
        await s.start()
        try:
            await online(s)
            await until(lambda: board.fw.link.link.state == 2, 2, "board connected")
            executed: list[int] = []
            real_exec = board.fw.execute

            def counting(op: int, target: int, arg: int, arg2: int) -> int:
                executed.append(op)
                return real_exec(op, target, arg, arg2)

            board.fw.execute = counting  # type: ignore[method-assign]
            board.hold_tx = True  # the board runs the CMD, its RESULT never arrives
            task = asyncio.ensure_future(
                s.execute(rail("on", "p12v_main"), principal="t", idempotency_key="u1"))
            await until(lambda: executed == [P.OP_RAIL_ON], 3, "the board executes")
            board.unplug()
            await asyncio.sleep(1.0)  # > link_timeout_s: the host restarts the handshake
            board.hold_tx = False
            board.replug()
            v = await task
            assert v.result == "applied"
            # the unacked CMD goes out again in the new session; the board answers it from
            # its result memory
            await until(lambda: len(board.cmds(P.OP_RAIL_ON)) >= 2, 3, "CMD re-sent")
            await until(lambda: board.fw.link.duplicates >= 1, 2, "board saw a duplicate")
            await asyncio.sleep(0.2)
            assert executed == [P.OP_RAIL_ON]  # once, although the CMD went out twice
            row = store.find_command("dev", "u1", principal="t")
            assert row is not None and row.state == "applied"
            # the board answered twice (once per session): one command, counted once
            await until(lambda: s.late_results >= 1, 2, "the repeated RESULT")
            assert s.commands_total == {"ok": 1}
        finally:
            await s.stop()

    run(main)


def test_reboot_unanswered_command_times_out_and_is_not_resent(store: Store) -> None:
    async def main() -> None:
        board = FakeBoard()
        s = make_session(store, board, command_timeout_s=10)
        await s.start()
        try:
            await online(s)
            first_boot = board.boot_id
            board.running = False  # the board hangs: the CMD is transmitted, never answered
            task = asyncio.ensure_future(
                s.execute(rail("on", "p5v"), principal="t", idempotency_key="rb"))
            await until(lambda: len(board.cmds(P.OP_RAIL_ON)) == 0 and
                        any(p.transmitted_boot for p in s._pending.values()), 3, "transmitted")
            board.reboot()
            board.running = True
            with pytest.raises(DeviceTimeout, match="rebooted"):
                await task
            await until(lambda: s.online and s.boot_id == board.boot_id, 5, "new boot online")
            assert s.boot_id != first_boot
            await asyncio.sleep(0.3)
            assert board.cmds(P.OP_RAIL_ON) == []  # never reached the new boot
            row = store.find_command("dev", "rb", principal="t")
            assert row is not None and row.state == "timeout"
            with pytest.raises(DeviceTimeout):  # the replay keeps the verdict
                await s.execute(rail("on", "p5v"), principal="t", idempotency_key="rb")
            reboots = store.query_events(device="dev", type="device.reboot").events
            assert reboots and reboots[-1].payload["boot_id"] == board.boot_id
        finally:
            await s.stop()

    run(main)


def test_reboot_resync_last_state(store: Store) -> None:
    async def main() -> None:
        board = FakeBoard()
        s = make_session(store, board)
        await s.start()
        try:
            await online(s)
            await s.execute(rail("on", "p3v3"), principal="t", idempotency_key=None)
            await s.execute(CommandRequest("zone", "manual", "io", 70), principal="t",
                            idempotency_key=None)
            v = await s.execute(CommandRequest("zone", "setpoint", "cpu", 55.5), principal="t",
                                idempotency_key=None)
            assert v.result == "applied" and s.state.desired["setpoint:cpu"] == 55.5
            cpu = [z.name for z in board.fw.config.zones].index("cpu")
            assert board.fw.thermal.setpoint[cpu] == 55500
            await until(lambda: s.snapshot.data["power"]["rails"][2]["state"] == "on", 3, "on")
            assert s.state.desired["rail:p12v_main"] == "on"
            assert s.state.desired["rail:p3v3"] == "on"
            old = board.boot_id
            await s.execute(CommandRequest("board", "reboot"), principal="t",
                            idempotency_key=None)
            await until(lambda: board.boot_id != old, 3, "reboot")
            await until(lambda: s.boot_id == board.boot_id and s.online, 5, "new session")

            def restored() -> bool:
                rails = {r["name"]: r["state"] for r in s.snapshot.data["power"]["rails"]}
                zones = {z["name"]: z["mode"] for z in s.snapshot.data["thermal"]["zones"]}
                return (rails["p3v3"] == "on" and rails["p5v"] == "on"
                        and rails["p1v8"] == "off" and zones["io"] == "manual")

            await until(restored, 5, "LastState re-applied")
            # the API's setpoint is back on the new boot (it came up with its configured one)
            await until(lambda: board.fw.thermal.setpoint[cpu] == 55500, 3, "setpoint re-applied")
            zones = {z["name"]: z for z in s.snapshot.data["thermal"]["zones"]}
            assert zones["cpu"]["setpoint_c"] == 55.5
            ev = store.query_events(device="dev", type="state.resync").events
            assert ev and ev[-1].payload["policy"] == "last_state"
            assert all(a["result"] == "applied" for a in ev[-1].payload["actions"])
            # events continue under the new boot id, from seq 1
            await until(lambda: (store.get_last_seq("dev", board.boot_id) or 0) >= 2, 3, "events")
            boot_ev = [e for e in store.query_events(device="dev", type="hardware.boot").events
                       if e.boot_id == board.boot_id]
            assert boot_ev and boot_ev[0].seq == 1 and boot_ev[0].value == 1  # commanded
        finally:
            await s.stop()

    run(main)


@pytest.mark.parametrize("policy,expect", [("always_on", "on"), ("always_off", "off")])
def test_reboot_resync_policies(store: Store, policy: str, expect: str) -> None:
    async def main() -> None:
        board = FakeBoard()
        s = make_session(store, board, power_restore=policy)
        await s.start()
        try:
            await online(s)
            await s.execute(rail("on", "p5v"), principal="t", idempotency_key=None)
            board.reboot()
            await until(lambda: s.boot_id == board.boot_id and s.online, 5, "new boot")
            await until(lambda: all(r["state"] == expect
                                    for r in s.snapshot.data["power"]["rails"]), 5,
                        f"all rails {expect}")
            await until(lambda: all(s.state.desired.get(f"rail:{r['name']}") == expect
                                    for r in s.snapshot.data["power"]["rails"]), 3,
                        "desired rails recorded")
        finally:
            await s.stop()

    run(main)


def test_version_refusal(store: Store) -> None:
    async def main() -> None:
        board = FakeBoard()
        s = make_session(store, board, proto_min=2, proto_max=3)
        await s.start()
        try:
            await until(lambda: s.status == "refused", 5, "refusal")
            assert s.refusal == "board speaks protocol 1..1, bridge speaks 2..3"
            assert s.summary().refusal == s.refusal and not s.summary().online
            assert s.snapshot.data["link"]["refusal"] == s.refusal

            def refused_event() -> bool:
                evs = store.query_events(device="dev", type="link.status").events
                return any(e.payload.get("state") == "refused"
                           and e.payload.get("reason") == s.refusal for e in evs)

            await until(refused_event, 3, "link.status refused event")
        finally:
            await s.stop()

    run(main)


def test_restart_recovers_desired_and_boot(store: Store, tmp_path: Path) -> None:
    async def main() -> None:
        board = FakeBoard()
        s = make_session(store, board)
        await s.start()
        await online(s)
        await s.execute(rail("on", "p5v"), principal="t", idempotency_key=None)
        await s.execute(CommandRequest("zone", "setpoint", "cpu", 55), principal="t",
                        idempotency_key=None)
        await s.execute(CommandRequest("zone", "manual", "memory", 30), principal="t",
                        idempotency_key=None)
        await until(lambda: s.zone_modes[1] == "manual", 3, "manual event")
        await s.stop()
        # a new bridge process, the same board (same boot)
        board2 = board
        s2 = make_session(store, board2)
        assert s2.state.desired["rail:p5v"] == "on"
        await s2.start()
        try:
            # offline but described: the stored layout gives names at once
            assert [r["name"] for r in s2.snapshot.data["power"]["rails"]][0] == "p12v_main"
            await online(s2)
            await until(lambda: s2.zone_modes[1] == "manual" and
                        s2.zone_setpoints_c[0] == 55, 3, "restored zone state")
            assert not store.query_events(device="dev", type="device.reboot").events
        finally:
            await s2.stop()

    run(main)


def test_orphan_commands_after_restart(store: Store) -> None:
    async def main() -> None:
        board = FakeBoard()
        store.upsert_device("dev", boot_id=board.boot_id)
        q, _ = store.create_command("dev", {"kind": "power", "action": "on"},
                                    idempotency_key="q")
        snt, _ = store.create_command("dev", {"kind": "power", "action": "off"},
                                      idempotency_key="s")
        store.update_command("dev", snt.command_id, "sent", boot_id=board.boot_id)
        s = make_session(store, board, restart_settle_s=0.2)
        await s.start()
        try:
            row = store.get_command("dev", q.command_id)
            assert row is not None and row.state == "failed"
            await online(s)
            await until(lambda: store.get_command("dev", snt.command_id).state == "timeout",  # type: ignore[union-attr]
                        3, "orphan settled")
            with pytest.raises(DeviceOffline, match="never sent"):
                await s.execute(CommandRequest("power", "on"), principal="",
                                idempotency_key="q")
        finally:
            await s.stop()

    run(main)


def test_telemetry_listener_and_reported_state(store: Store) -> None:
    async def main() -> None:
        board = FakeBoard()
        s = make_session(store, board)
        got: list[str] = []
        s.add_listener(lambda dev, snap: got.append(dev))
        await s.start()
        try:
            await online(s)
            await until(lambda: len(got) >= 3, 2, "telemetry")
            await until(lambda: s.state.reported.get("rail:p5v") == "off", 2, "reported")
            assert s.state.reported["zone:cpu"]["mode"] in ("auto", "failsafe", "max")
        finally:
            await s.stop()

    run(main)


def test_gpio_write_and_lock(store: Store) -> None:
    async def main() -> None:
        board = FakeBoard()
        s = make_session(store, board)
        await s.start()
        try:
            await online(s)
            await s.execute(CommandRequest("gpio", "write", "led_status", True), principal="t",
                            idempotency_key=None)
            await until(lambda: s.snapshot.data["gpio"][0]["level"] == 1, 2, "gpio high")
            with pytest.raises(InvalidInput, match="is an input"):
                await s.execute(CommandRequest("gpio", "write", "gpio_in_0", 1), principal="t",
                                idempotency_key=None)
            await s.execute(CommandRequest("security", "lock"), principal="t",
                            idempotency_key=None)
            await until(lambda: s.snapshot.data["security"]["locked"] is True, 3, "locked")
            assert s.state.desired["security.lock"] == "locked"
        finally:
            await s.stop()

    run(main)


def test_events_filter_resume_under_boot(store: Store) -> None:
    async def main() -> None:
        board = FakeBoard()
        s = make_session(store, board)
        await s.start()
        try:
            await online(s)
            evs = await s.bus.replay(0, EventFilter(devices=("dev",)))
            assert any(e.type == "link.status" for e in evs)
        finally:
            await s.stop()

    run(main)
