"""kill -9 of the bridge in the middle of a stream of commands and board events.

A real ``metal bridge`` child process (``BridgeProcess``) talks to the sim firmware
(``SimProcess``, socket://). Five clients drive REST commands, each with its own
Idempotency-Key, each on its own targets and strictly one after the other:

* zones ``cpu`` / ``memory``: manual (a new duty each time) <-> auto -- every execution
  changes the zone's mode, so the board emits exactly one ``hardware.zone_mode`` per
  execution;
* rail ``p12v_fans``: on <-> off (``busy`` answers are truthful rejections; the client
  then asks again under a new key) -- ``hardware.rail_state`` on/off per execution;
* sim fault ``sensor_open`` on ``io_board`` <-> clear -- ``hardware.sensor_state``;
* GPIO ``led_status`` and ``aux_out_0`` toggles (outputs have no events: final levels).

Because each command flips its target relative to the last *applied* one, the board's
event log is a counter of executions: a command that ran twice (a retry that executed
again, a stale retransmission executing after a newer command) shows up as an extra flip.

The bridge is SIGKILLed twice while requests are in flight, then restarted on the same
state directory. Then:

* desired state as the killed process left it holds every command stored ``applied``
  (answered or not; the last one per key), and still does after the restart;
* every request that got no response is retried with the same Idempotency-Key: a command
  stored before the kill is answered by *that* command (same command_id, replayed), with
  its verdict, ``failed`` (never sent: not applied) or a truthful 504 (fate unknown);
* the event log: every (boot_id, seq) of the board exactly once, contiguous from 1, no
  ``events.gap``, no reboot; per target the executions match the applied commands;
* the final desired state equals the last applied command per key, the board's state
  agrees, and the command rows agree with what every client was told.

Where the kill lands is a matter of timing; ``test_kill_9_while_verdicts_are_in_flight``
pins the two interesting windows down with a relay that holds the bytes.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from integration.fault_relay import (
    BridgeProcess,
    FaultRelay,
    all_events,
    check_board_events,
    collapse,
    desired_now,
    flips,
    pid_alive,
    read_db,
    sequence_matches,
)
from metal.host.sim_process import SimProcess

pytestmark = pytest.mark.timeout(180)

DEV = "sim0"
ZONES = {"cpu": 0, "memory": 1}
RAIL, RAIL_INDEX = "p12v_fans", 5
SENSOR, SENSOR_INDEX = "io_board", 7
GPIO_LINES = ("led_status", "aux_out_0")


# -- the client side ---------------------------------------------------------------------------


@dataclass
class Cmd:
    worker: str
    key: str
    path: str
    body: dict[str, Any] | None
    effect: tuple[Any, ...]  # ("zone", name, mode, duty) / ("rail", name, on|off) / ...
    #: (HTTP status or None for no response, body, replayed, monotonic time)
    responses: list[tuple[int | None, Any, bool, float]] = field(default_factory=list)
    outcome: str | None = None  # applied | rejected | failed | unknown
    command_id: int | None = None
    no_response: bool = False  # at least one attempt got no HTTP response (the kill)
    done_at: float | None = None


class Stream:
    """Sends commands, retrying with the same key until a definitive verdict."""

    def __init__(self, bridge: BridgeProcess, client: httpx.AsyncClient) -> None:
        self.bridge = bridge
        self.client = client
        self.up = asyncio.Event()
        self.up.set()
        self.stop = asyncio.Event()
        self.cmds: list[Cmd] = []
        self.inflight = 0
        self.keys = itertools.count(1)

    def new(self, worker: str, path: str, body: dict[str, Any] | None,
            effect: tuple[Any, ...]) -> Cmd:
        cmd = Cmd(worker, f"{worker}-{next(self.keys)}", f"/api/v1/devices/{DEV}{path}", body,
                  effect)
        self.cmds.append(cmd)
        return cmd

    def row_state(self, key: str) -> str | None:
        rows = read_db(self.bridge.state_dir,
                       "SELECT state FROM commands WHERE idempotency_key = ?", (key,))
        return rows[0][0] if rows else None

    async def settle(self, cmd: Cmd, budget_s: float = 60.0) -> str:
        deadline = time.monotonic() + budget_s
        while True:
            assert time.monotonic() < deadline, f"{cmd.key}: no verdict: {cmd.responses}"
            await self.up.wait()
            self.inflight += 1
            try:
                r = await self.client.post(self.bridge.base + cmd.path, json=cmd.body,
                                           headers={"Idempotency-Key": cmd.key})
            except httpx.TransportError:
                cmd.responses.append((None, None, False, time.monotonic()))
                cmd.no_response = True
                await asyncio.sleep(0.05)
                continue
            finally:
                self.inflight -= 1
            body = r.json()
            replayed = (r.headers.get("idempotent-replayed") == "true"
                        or bool((body.get("details") or {}).get("replayed")))
            cmd.responses.append((r.status_code, body, replayed, time.monotonic()))
            if r.status_code == 200 and body["result"] in ("applied", "rejected"):
                cmd.outcome, cmd.command_id = body["result"], body["command_id"]
            elif r.status_code == 409:
                cmd.outcome, cmd.command_id = "rejected", body["command_id"]
            elif r.status_code == 503 and replayed:
                cmd.outcome = "failed"  # stored, never sent: not applied
                cmd.command_id = (body.get("details") or {}).get("command_id")
            elif r.status_code == 503:
                await asyncio.sleep(0.1)  # offline (the bridge is reconnecting): not stored
                continue
            elif r.status_code == 504:
                if replayed and await asyncio.to_thread(self.row_state, cmd.key) == "timeout":
                    cmd.outcome = "unknown"  # the bridge says: may or may not have applied
                    cmd.command_id = (body.get("details") or {}).get("command_id")
                else:
                    await asyncio.sleep(0.2)
                    continue
            else:
                raise AssertionError(f"{cmd.key} {cmd.body}: unexpected {r.status_code} {body}")
            cmd.done_at = time.monotonic()
            return cmd.outcome

    async def snapshot(self) -> dict[str, Any]:
        await self.up.wait()
        r = await self.client.get(f"{self.bridge.base}/api/v1/devices/{DEV}")
        data: dict[str, Any] = r.json()
        return data


async def zone_worker(st: Stream, zone: str, rng: random.Random) -> None:
    mode = "auto"  # a freshly booted board
    k = 0
    while not st.stop.is_set():
        k += 1
        if mode == "auto":
            duty = 20 + rng.randrange(60)
            cmd = st.new(f"zone-{zone}", f"/thermal/zones/{zone}",
                         {"mode": "manual", "duty_pct": duty}, ("zone", zone, "manual", duty))
        else:
            cmd = st.new(f"zone-{zone}", f"/thermal/zones/{zone}", {"mode": "auto"},
                         ("zone", zone, "auto", None))
        out = await st.settle(cmd)
        if out == "applied":
            mode = cmd.effect[2]
        elif out == "unknown":
            mode = await _reported(st, lambda s: {z["name"]: z["mode"] for z in
                                                  s["thermal"]["zones"]}[zone],
                                   ("auto", "manual"))
        await asyncio.sleep(rng.uniform(0.0, 0.03))


async def rail_worker(st: Stream, rng: random.Random) -> None:
    state = "off"
    while not st.stop.is_set():
        want = "off" if state == "on" else "on"
        cmd = st.new("rail", f"/power/rails/{RAIL}", {"action": want}, ("rail", RAIL, want))
        out = await st.settle(cmd)
        if out == "applied":
            state = want
        elif out == "unknown":
            state = await _reported(st, lambda s: {r["name"]: r["state"] for r in
                                                   s["power"]["rails"]}[RAIL], ("on", "off"))
        await asyncio.sleep(rng.uniform(0.02, 0.06))


async def fault_worker(st: Stream, rng: random.Random) -> None:
    faulted = False
    while not st.stop.is_set():
        if faulted:
            cmd = st.new("fault", "/sim/faults",
                         {"kind": "clear", "target": SENSOR, "fault": "sensor_open"},
                         ("sensor", SENSOR, "ok"))
        else:
            cmd = st.new("fault", "/sim/faults", {"kind": "sensor_open", "target": SENSOR},
                         ("sensor", SENSOR, "bad"))
        out = await st.settle(cmd)
        if out == "applied":
            faulted = not faulted
        elif out == "unknown":
            faulted = await _reported(st, lambda s: {x["name"]: x["status"] for x in
                                                     s["thermal"]["sensors"]}[SENSOR] != "ok",
                                      (True, False))
        await asyncio.sleep(rng.uniform(0.05, 0.1))  # let the sensor state settle


async def gpio_worker(st: Stream, rng: random.Random) -> None:
    levels = dict.fromkeys(GPIO_LINES, 0)
    while not st.stop.is_set():
        line = rng.choice(GPIO_LINES)
        level = 1 - levels[line]
        cmd = st.new("gpio", f"/gpio/{line}", {"level": level}, ("gpio", line, level))
        out = await st.settle(cmd)
        if out == "applied":
            levels[line] = level
        elif out == "unknown":
            levels[line] = await _reported(st, lambda s: {g["name"]: g["level"] for g in
                                                          s["gpio"]}[line], (0, 1))
        await asyncio.sleep(rng.uniform(0.0, 0.03))


async def _reported(st: Stream, get: Any, allowed: tuple[Any, ...]) -> Any:
    """After a command of unknown fate: the board's actual state, once it is settled."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        value = get(await st.snapshot())
        if value in allowed:
            await asyncio.sleep(0.2)
            again = get(await st.snapshot())
            if again == value:
                return value
        await asyncio.sleep(0.05)
    raise AssertionError("the board's state did not settle")


# -- what the commands mean --------------------------------------------------------------------


def desired_writes(effect: tuple[Any, ...]) -> list[tuple[str, Any]]:
    kind = effect[0]
    if kind == "zone":
        _, zone, mode, duty = effect
        return [(f"zone:{zone}", {"mode": "manual", "duty_pct": duty} if mode == "manual"
                 else {"mode": "auto"})]
    if kind == "rail":
        _, rail, action = effect
        return [("rail:p12v_main", "on"), (f"rail:{rail}", "on")] if action == "on" \
            else [(f"rail:{rail}", "off")]
    if kind == "gpio":
        return [(f"gpio:{effect[1]}", effect[2])]
    return []  # sim faults change no desired state


def expected_desired(cmds: list[Cmd], applied_only: bool = True) -> dict[str, Any]:
    """The desired state the applied commands make (the last one per key wins)."""
    out: dict[str, Any] = {}
    for c in sorted((c for c in cmds if c.outcome == "applied" or not applied_only),
                    key=lambda c: c.command_id or 0):
        for key, value in desired_writes(c.effect):
            out[key] = value
    return out


def check_executions(events: list[dict[str, Any]], cmds: list[Cmd]) -> None:
    """Per target: what the board did (its events) == what the clients were told."""

    def check(actual: list[Any], start: Any, mine: list[Cmd], value: Any, what: str) -> None:
        done = sorted((c for c in mine if c.outcome in ("applied", "unknown")),
                      key=lambda c: c.command_id or 0)
        assert sequence_matches(actual, start,
                                [(value(c), c.outcome == "applied") for c in done]), (
            f"{what}: board {collapse(actual)} vs commands "
            f"{[(value(c), c.outcome) for c in mine if c.outcome in ('applied', 'unknown')]}")

    for zone, idx in ZONES.items():
        got = [v for v in flips(events, "hardware.zone_mode", idx) if v in (0, 1)]
        check([("auto", "manual")[v] for v in got], "auto",
              [c for c in cmds if c.effect[:2] == ("zone", zone)], lambda c: c.effect[2],
              f"zone {zone}")
    got = [v for v in flips(events, "hardware.rail_state", RAIL_INDEX) if v in (0, 2)]
    check(["on" if v == 2 else "off" for v in got], "off",
          [c for c in cmds if c.effect[0] == "rail"], lambda c: c.effect[2], "rail")
    got = flips(events, "hardware.sensor_state", SENSOR_INDEX)
    check(["ok" if v == 0 else "bad" for v in got], "ok",
          [c for c in cmds if c.effect[0] == "sensor"], lambda c: c.effect[2], "sensor")


def check_rows(state_dir: Path, cmds: list[Cmd]) -> None:
    """One stored command per key, in the state the client was told."""
    rows = {k: (cid, state) for k, cid, state in read_db(
        state_dir, "SELECT idempotency_key, command_id, state FROM commands "
        "WHERE device = ? AND idempotency_key IS NOT NULL", (DEV,))}
    want = {"applied": "applied", "rejected": "rejected", "failed": "failed",
            "unknown": "timeout"}
    for c in cmds:
        if c.outcome is None:
            continue
        assert c.key in rows, f"{c.key}: answered {c.outcome} but not stored"
        cid, state = rows[c.key]
        assert (cid, state) == (c.command_id, want[c.outcome]), (c.key, rows[c.key], c.outcome)


# -- the test ---------------------------------------------------------------------------------


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    sp = SimProcess("cpython", "sim-restart").start()
    try:
        yield sp
    finally:
        sp.stop()
        assert sp.pid is not None and not pid_alive(sp.pid)


def test_kill_9_mid_stream_recovers_without_loss_or_double_execution(
        sim: SimProcess, tmp_path: Path) -> None:
    assert sim.url is not None
    bridge = BridgeProcess(sim.url, tmp_path / "state", device_id=DEV, log=tmp_path / "bridge.log")
    rng = random.Random(20260101)

    async def main() -> None:
        async with httpx.AsyncClient(timeout=15.0) as client:
            bridge.start()
            await bridge.wait_online(client)
            st = Stream(bridge, client)
            workers = [asyncio.ensure_future(w) for w in (
                zone_worker(st, "cpu", random.Random(rng.random())),
                zone_worker(st, "memory", random.Random(rng.random())),
                rail_worker(st, random.Random(rng.random())),
                fault_worker(st, random.Random(rng.random())),
                gpio_worker(st, random.Random(rng.random())),
            )]
            kills: list[dict[str, Any]] = []
            try:
                for cycle in range(2):
                    # run until enough has happened, then kill at a seeded moment while
                    # requests are in flight
                    t0 = time.monotonic()
                    while sum(c.outcome == "applied" for c in st.cmds) < 25 * (cycle + 1):
                        assert time.monotonic() - t0 < 30, "the stream does not progress"
                        _raise_failed(workers)
                        await asyncio.sleep(0.05)
                    await asyncio.sleep(rng.uniform(0.0, 0.3))
                    t0 = time.monotonic()
                    while st.inflight < 3 and time.monotonic() - t0 < 2:
                        await asyncio.sleep(0.001)
                    st.up.clear()
                    inflight = st.inflight
                    bridge.kill()
                    killed_at = time.monotonic()
                    before = [c for c in st.cmds if c.outcome == "applied"]
                    rows = {k: (cid, state) for k, cid, state in read_db(
                        bridge.state_dir, "SELECT idempotency_key, command_id, state FROM "
                        "commands WHERE idempotency_key IS NOT NULL")}
                    open_cmds = [c for c in st.cmds if c.outcome is None]
                    kills.append({"inflight": inflight, "open": len(open_cmds),
                                  "stored_open": sum(c.key in rows for c in open_cmds)})
                    # desired state as the dead process left it: every command stored as
                    # applied is in it (the last one per key), answered or not
                    stored_applied = [c for c in st.cmds if rows.get(c.key, (0, ""))[1]
                                      == "applied"]
                    for c in stored_applied:
                        c.command_id = rows[c.key][0]
                    at_kill = desired_now(bridge.state_dir, DEV)
                    expected = expected_desired(stored_applied, applied_only=False)
                    assert {k: at_kill.get(k) for k in expected} == expected, (
                        "an applied command is missing from desired state after kill -9")
                    assert set(expected) >= set(expected_desired(before))
                    bridge.start()
                    await bridge.wait_online(client)
                    # after the restart: the same, plus what in-flight commands that turn
                    # out applied add
                    desired = desired_now(bridge.state_dir, DEV)
                    maybe = {k: v for c in open_cmds for k, v in desired_writes(c.effect)}
                    for key, value in expected.items():
                        assert desired.get(key) in (value, maybe.get(key, value)), (
                            key, desired.get(key), value)
                    st.up.set()
                    # every request without a response is retried with its key: a command
                    # stored before the kill must be answered by that same command
                    t0 = time.monotonic()
                    while any(c.outcome is None for c in open_cmds):
                        assert time.monotonic() - t0 < 40, [c.responses for c in open_cmds
                                                             if c.outcome is None]
                        _raise_failed(workers)
                        await asyncio.sleep(0.05)
                    for c in open_cmds:
                        if c.key in rows and c.no_response:
                            # (a response the old process sent just before it died may
                            # still be read after the kill: only retries count here)
                            assert c.command_id == rows[c.key][0], (c.key, c.responses)
                            cut = [x[0] for x in c.responses].index(None)
                            after = [x for x in c.responses[cut:] if x[0] is not None]
                            assert after and all(x[2] for x in after), c.responses
                    assert time.monotonic() - killed_at < 60
                await asyncio.sleep(1.0)  # the stream goes on after the last restart
            finally:
                st.stop.set()
                st.up.set()
                done, pending = await asyncio.wait(workers, timeout=70)
                for w in pending:
                    w.cancel()
            for w in workers:
                if w.done() and not w.cancelled() and w.exception() is not None:
                    raise w.exception()  # type: ignore[misc]
            assert not pending, "a client did not finish"

            # -- what the clients were told vs what the bridge stored --------------------
            cmds = st.cmds
            assert all(c.outcome is not None for c in cmds)
            check_rows(bridge.state_dir, cmds)
            lost = [c for c in cmds if c.no_response]
            assert lost, f"no request was cut by the kills: {kills}"
            assert sum(k["stored_open"] for k in kills) >= 1, (
                f"no stored command was cut by the kills: {kills}")
            # -- the board: events, executions, state ------------------------------------
            await asyncio.sleep(0.5)  # the last commands' events
            events = await all_events(client, bridge.base, DEV)
            check_board_events(events, boots=1)
            assert not [e for e in events if e["type"] == "device.reboot"]
            check_executions(events, cmds)
            snap = await st.snapshot()
            levels = {g["name"]: g["level"] for g in snap["gpio"]}
            want_desired = expected_desired(cmds)
            for line in GPIO_LINES:
                if f"gpio:{line}" in want_desired:
                    assert levels[line] == want_desired[f"gpio:{line}"], (line, levels)
            # -- desired state: every applied command, the last one per key wins ----------
            assert desired_now(bridge.state_dir, DEV) == want_desired
            print(f"commands: {len(cmds)}, applied {sum(c.outcome == 'applied' for c in cmds)}, "
                  f"no response at a kill: {len(lost)}, kills: {kills}, "
                  f"outcomes of those: {sorted(c.outcome or '' for c in lost)}, "
                  f"unknown fate: {[c.key for c in cmds if c.outcome == 'unknown']}")

    try:
        asyncio.run(asyncio.wait_for(main(), 160))
    finally:
        bridge.stop()
    assert all(not pid_alive(p) for p in bridge.pids), "a bridge process survived"


def _raise_failed(workers: Sequence[asyncio.Future[Any]]) -> None:
    for w in workers:
        if w.done() and not w.cancelled() and w.exception() is not None:
            raise w.exception()  # type: ignore[misc]


def test_kill_9_while_verdicts_are_in_flight(sim: SimProcess, tmp_path: Path) -> None:
    """Deterministic versions of the two windows a kill can hit (a relay holds the bytes):

    * the board applied the command, its RESULT had not reached the bridge: after the
      restart the board re-sends the RESULT, the retry (same key) gets ``applied`` from
      that same command, and desired state records it;
    * the CMD was stored ``sent`` but never reached the board: after the restart the retry
      gets a truthful 504 (fate unknown) and nothing ran on the board.
    """
    assert sim.url is not None
    relay = FaultRelay(sim.url).start()
    bridge = BridgeProcess(relay.url, tmp_path / "state", device_id=DEV,
                           log=tmp_path / "bridge.log")
    base = f"/api/v1/devices/{DEV}"

    async def post(client: httpx.AsyncClient, path: str, body: dict[str, Any],
                   key: str) -> httpx.Response:
        return await client.post(bridge.base + base + path, json=body,
                                 headers={"Idempotency-Key": key})

    async def state_of(key: str, want: str, timeout: float = 5.0) -> tuple[int, str]:
        deadline = time.monotonic() + timeout
        while True:
            rows = read_db(bridge.state_dir, "SELECT command_id, state FROM commands WHERE "
                           "idempotency_key = ?", (key,))
            if rows and rows[0][1] == want:
                return rows[0][0], rows[0][1]
            assert time.monotonic() < deadline, (key, rows, want)
            await asyncio.sleep(0.02)

    async def main() -> None:
        async with httpx.AsyncClient(timeout=15.0) as client:
            bridge.start()
            snap = await bridge.wait_online(client)
            levels = {g["name"]: g["level"] for g in snap["gpio"]}
            assert levels["led_fault"] == 0 and levels["uart_sel"] == 0
            # 1. RESULT in flight: board -> bridge held
            relay.hold("down")
            t1 = asyncio.ensure_future(post(client, "/gpio/led_fault", {"level": 1}, "k-result"))
            cid1, _ = await state_of("k-result", "sent")
            await asyncio.sleep(0.3)  # the board runs it (10 ms ticks) and answers
            bridge.kill()
            relay.release("down")
            with pytest.raises(httpx.TransportError):
                await t1
            # 2. CMD in flight: bridge -> board held
            bridge.start()
            await bridge.wait_online(client)
            relay.hold("up")
            t2 = asyncio.ensure_future(post(client, "/gpio/uart_sel", {"level": 1}, "k-cmd"))
            cid2, _ = await state_of("k-cmd", "sent")
            await asyncio.sleep(0.3)
            bridge.kill()
            relay.disconnect()  # the held CMD bytes go with the dead connection
            relay.release("up")
            with pytest.raises(httpx.TransportError):
                await t2
            bridge.start()
            snap = await bridge.wait_online(client)
            # the first command: applied by the board, answered after the restart
            r = await post(client, "/gpio/led_fault", {"level": 1}, "k-result")
            for _ in range(100):
                if r.status_code != 504:
                    break
                await asyncio.sleep(0.1)
                r = await post(client, "/gpio/led_fault", {"level": 1}, "k-result")
            assert r.status_code == 200, r.text
            assert r.json() == {"command_id": cid1, "result": "applied", "reason": None}
            assert r.headers["idempotent-replayed"] == "true"
            # the second: never reached the board; after the settle time a truthful 504
            await state_of("k-cmd", "timeout", timeout=10)
            r = await post(client, "/gpio/uart_sel", {"level": 1}, "k-cmd")
            assert r.status_code == 504, r.text
            assert r.json()["details"] == {"command_id": cid2, "replayed": True}
            snap = await bridge.wait_online(client)
            levels = {g["name"]: g["level"] for g in snap["gpio"]}
            assert levels["led_fault"] == 1 and levels["uart_sel"] == 0
            desired = desired_now(bridge.state_dir, DEV)
            assert desired.get("gpio:led_fault") == 1, (
                f"an applied command is missing from desired state: {desired}")
            assert "gpio:uart_sel" not in desired
            events = await all_events(client, bridge.base, DEV)
            check_board_events(events, boots=1)

    try:
        asyncio.run(asyncio.wait_for(main(), 90))
    finally:
        bridge.stop()
        relay.stop()
    assert all(not pid_alive(p) for p in bridge.pids), "a bridge process survived"
