"""1,000 REST commands through a faulty serial link: every one truthful, none twice, none lost.

``metal bridge`` (child process) -> :class:`~integration.fault_relay.FaultRelay` -> the sim
firmware (``SimProcess``). The relay corrupts and drops bytes, stalls a direction for
200 ms, closes both sides every few seconds (the bridge's transport reconnects), and every
few seconds blacks out the board -> bridge direction for longer than the bridge's command
timeout (1 s here), so some commands end in 504 while the board did run them.

Clients, each on its own targets and one command after the other, each command with its
own Idempotency-Key:

* zones ``cpu`` and ``memory``: manual (new duty) <-> auto -- one ``hardware.zone_mode``
  per execution; zone ``io``: manual with a new duty every time;
* rails ``p12v_fans`` and ``p1v8``: on <-> off (``busy`` is a truthful rejection: the
  client asks again under a new key);
* GPIO outputs ``led_status``, ``led_fault``, ``aux_out_0``, ``aux_out_1``, ``uart_sel``;
* invalid requests: an input line, an unknown rail, a duty of 150 % (422/404 from the
  bridge), and ``security arm`` / ``clear_tamper`` with the tamper switch open (409
  ``rejected_by_interlock`` from the board).

A 503 (link down) or a 504 is retried with the same key until the answer is definitive.
Then every key is asked again: the answer must be the same (same command, replayed).
The board's event log must show exactly the executions the clients were told about
(each command flips its target relative to the last applied one), the final state and
the desired state must match the last applied command per target, every (boot_id, seq)
arrives once, contiguous, with no gap, and the stored commands agree with the answers.

The default run sends 1,000 commands (about 30 s); ``--run-slow`` adds a 5,000-command soak.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
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

DEV = "sim0"
COMMAND_TIMEOUT_MS = 1000
ZONE_INDEX = {"cpu": 0, "memory": 1, "io": 2}
RAIL_INDEX = {"p12v_fans": 5, "p1v8": 3}
RAIL_PARENT = {"p12v_main": None, "p5v": "p12v_main", "p3v3": "p5v", "p1v8": "p3v3",
               "p1v0_core": "p1v8", "p12v_fans": "p12v_main"}
GPIO_A = ("led_status", "led_fault")
GPIO_B = ("aux_out_0", "aux_out_1", "uart_sel")
INVALID: tuple[tuple[str, dict[str, Any], set[int]], ...] = (
    ("/gpio/gpio_in_0", {"level": 1}, {422}),  # an input line
    ("/power/rails/p9v", {"action": "on"}, {404}),  # no such rail
    ("/thermal/zones/cpu", {"mode": "manual", "duty_pct": 150}, {422}),
    ("/security", {"action": "arm"}, {409}),  # the board: tamper switch open
    ("/security", {"action": "clear_tamper"}, {409}),
)


@dataclass
class Cmd:
    worker: str
    key: str
    path: str
    body: dict[str, Any]
    effect: tuple[Any, ...]
    answers: list[tuple[int | None, Any]] = field(default_factory=list)
    status: int | None = None  # the definitive answer
    outcome: str | None = None  # applied | rejected | invalid | failed | unknown
    reason: str | None = None
    command_id: int | None = None
    finished: int = 0  # order in which definitive answers came

    @property
    def timed_out(self) -> bool:
        return any(s == 504 for s, _ in self.answers)


class Clients:
    def __init__(self, bridge: BridgeProcess, client: httpx.AsyncClient, total: int) -> None:
        self.bridge = bridge
        self.client = client
        self.total = total
        self.issued = 0
        self.cmds: list[Cmd] = []
        self.keys = itertools.count(1)
        self.finished = itertools.count(1)
        self.transport_errors = 0

    def take(self) -> bool:
        if self.issued >= self.total:
            return False
        self.issued += 1
        return True

    def new(self, worker: str, path: str, body: dict[str, Any], effect: tuple[Any, ...]) -> Cmd:
        cmd = Cmd(worker, f"{worker}-{next(self.keys)}", f"/api/v1/devices/{DEV}{path}", body,
                  effect)
        self.cmds.append(cmd)
        return cmd

    async def post(self, cmd: Cmd) -> tuple[int | None, Any]:
        try:
            r = await self.client.post(self.bridge.base + cmd.path, json=cmd.body,
                                       headers={"Idempotency-Key": cmd.key})
        except httpx.TransportError:
            self.transport_errors += 1
            return None, None
        return r.status_code, (r.json(), r.headers.get("idempotent-replayed") == "true")

    async def settle(self, cmd: Cmd, budget_s: float = 60.0) -> str:
        """Ask until the answer is definitive (503 and 504 are retried with the same key)."""
        deadline = time.monotonic() + budget_s
        while True:
            assert time.monotonic() < deadline, f"{cmd.key} {cmd.body}: lost: {cmd.answers}"
            status, got = await self.post(cmd)
            body: Any = got[0] if got else None
            cmd.answers.append((status, body))
            details = (body or {}).get("details") or {}
            if status is None:
                await asyncio.sleep(0.1)
                continue
            if status == 503 and not details.get("replayed"):
                await asyncio.sleep(0.05)  # the link is down: not stored, ask again
                continue
            if status == 504:
                rows = read_db(self.bridge.state_dir, "SELECT state FROM commands WHERE "
                               "idempotency_key = ?", (cmd.key,))
                if not (details.get("replayed") and rows and rows[0][0] == "timeout"):
                    await asyncio.sleep(0.2)  # pending: the verdict may still come
                    continue
            cmd.status = status
            if status == 200:
                cmd.outcome, cmd.command_id = body["result"], body["command_id"]
                cmd.reason = body["reason"]
            elif status == 409:
                cmd.outcome, cmd.command_id, cmd.reason = "rejected", body["command_id"], \
                    body["reason"]
            elif status in (404, 422):
                cmd.outcome, cmd.reason = "invalid", body["code"]
                cmd.command_id = details.get("command_id")
            elif status == 503:
                cmd.outcome, cmd.command_id = "failed", details.get("command_id")
            elif status == 504:
                cmd.outcome, cmd.command_id = "unknown", details.get("command_id")
            else:
                raise AssertionError(f"{cmd.key} {cmd.body}: unexpected {status} {body}")
            cmd.finished = next(self.finished)
            return cmd.outcome


# -- workers: each owns its targets and flips them relative to the last applied command ----


async def zone_flipper(cl: Clients, zone: str, rng: random.Random) -> None:
    mode = "auto"
    while cl.take():
        if mode == "auto":
            duty = 30 + rng.randrange(60)
            cmd = cl.new(f"zone-{zone}", f"/thermal/zones/{zone}",
                         {"mode": "manual", "duty_pct": duty}, ("zone", zone, "manual", duty))
        else:
            cmd = cl.new(f"zone-{zone}", f"/thermal/zones/{zone}", {"mode": "auto"},
                         ("zone", zone, "auto", None))
        if await cl.settle(cmd) == "applied":
            mode = cmd.effect[2]


async def zone_duty(cl: Clients, zone: str, rng: random.Random) -> None:
    duty = None
    while cl.take():
        new = duty
        while new == duty:
            new = 30 + rng.randrange(60)
        cmd = cl.new(f"zone-{zone}", f"/thermal/zones/{zone}", {"mode": "manual", "duty_pct": new},
                     ("zone", zone, "manual", new))
        if await cl.settle(cmd) == "applied":
            duty = new


async def rail_toggler(cl: Clients, rail: str, rng: random.Random) -> None:
    state = "off"
    while cl.take():
        want = "off" if state == "on" else "on"
        cmd = cl.new(f"rail-{rail}", f"/power/rails/{rail}", {"action": want},
                     ("rail", rail, want))
        out = await cl.settle(cmd)
        if out == "applied":
            state = want
        else:
            assert out == "rejected" and cmd.reason == "busy", (cmd.key, out, cmd.answers)
            await asyncio.sleep(rng.uniform(0.02, 0.06))


async def gpio_toggler(cl: Clients, name: str, lines: tuple[str, ...],
                       rng: random.Random) -> None:
    levels = dict.fromkeys(lines, 0)
    while cl.take():
        line = rng.choice(lines)
        cmd = cl.new(name, f"/gpio/{line}", {"level": 1 - levels[line]},
                     ("gpio", line, 1 - levels[line]))
        if await cl.settle(cmd) == "applied":
            levels[line] = cmd.effect[2]


async def invalid_sender(cl: Clients, rng: random.Random) -> None:
    while cl.take():
        path, body, statuses = rng.choice(INVALID)
        cmd = cl.new("invalid", path, body, ("invalid", statuses))
        await cl.settle(cmd)
        assert cmd.status in statuses, (cmd.key, cmd.path, cmd.body, cmd.answers)
        if cmd.status == 409:
            assert cmd.reason == "rejected_by_interlock" and cmd.command_id, cmd.answers
        await asyncio.sleep(rng.uniform(0.0, 0.02))


async def blackouts(relay: FaultRelay, rng: random.Random, stop: asyncio.Event) -> int:
    """Every few seconds: board -> bridge held longer than the command timeout (504s)."""
    n = 0
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), rng.uniform(3.0, 5.0))
            return n
        except TimeoutError:
            pass
        relay.hold("down")
        await asyncio.sleep(COMMAND_TIMEOUT_MS / 1000 + 0.3)
        relay.release("down")
        n += 1
    return n


# -- checks ------------------------------------------------------------------------------------


def ancestors(rail: str) -> list[str]:
    out: list[str] = []
    cur: str | None = rail
    while cur is not None:
        out.insert(0, cur)
        cur = RAIL_PARENT[cur]
    return out


def dependents(rail: str) -> list[str]:
    out = [rail]
    for r, parent in RAIL_PARENT.items():  # parents come before children here
        if parent in out and r not in out:
            out.append(r)
    return out


def desired_writes(effect: tuple[Any, ...]) -> list[tuple[str, Any]]:
    if effect[0] == "zone":
        _, zone, mode, duty = effect
        return [(f"zone:{zone}", {"mode": "manual", "duty_pct": duty} if mode == "manual"
                 else {"mode": "auto"})]
    if effect[0] == "rail":
        _, rail, action = effect
        names = ancestors(rail) if action == "on" else dependents(rail)
        return [(f"rail:{n}", action) for n in names]
    if effect[0] == "gpio":
        return [(f"gpio:{effect[1]}", effect[2])]
    return []


def last_applied(cmds: list[Cmd]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in sorted((c for c in cmds if c.outcome == "applied"), key=lambda c: c.finished):
        for key, value in desired_writes(c.effect):
            out[key] = value
    return out


def check_executions(events: list[dict[str, Any]], cmds: list[Cmd]) -> None:
    def done(pred: Any) -> list[Cmd]:
        return sorted((c for c in cmds if pred(c) and c.outcome in ("applied", "unknown")),
                      key=lambda c: c.finished)

    for zone in ("cpu", "memory", "io"):
        got = [("auto", "manual")[v] for v in flips(events, "hardware.zone_mode",
                                                     ZONE_INDEX[zone]) if v in (0, 1)]
        mine = done(lambda c, z=zone: c.effect[:2] == ("zone", z))
        want = [(c.effect[2], c.outcome == "applied") for c in mine]
        assert sequence_matches(got, "auto", want), (
            f"zone {zone}: board {collapse(got)} vs commands {collapse([w for w, _ in want])}")
    for rail, idx in RAIL_INDEX.items():
        got = ["on" if v == 2 else "off" for v in flips(events, "hardware.rail_state", idx)
               if v in (0, 2)]
        mine = done(lambda c, r=rail: c.effect[:2] == ("rail", r))
        want = [(c.effect[2], c.outcome == "applied") for c in mine]
        assert sequence_matches(got, "off", want), (
            f"rail {rail}: board {collapse(got)} vs commands {[w for w, _ in want]}")


# -- the test ----------------------------------------------------------------------------------


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    sp = SimProcess("cpython", "sim-faults").start()
    try:
        yield sp
    finally:
        sp.stop()
        assert sp.pid is not None and not pid_alive(sp.pid)


def run_faulty_link(sim: SimProcess, tmp_path: Path, total: int, seed: int,
                    budget_s: float) -> None:
    assert sim.url is not None
    relay = FaultRelay(sim.url, seed=seed, corrupt=0.03, drop=0.03, stall=0.02, stall_s=0.2,
                       disconnect_every=(2.0, 4.0))
    relay.faults(False)
    relay.start()
    bridge = BridgeProcess(relay.url, tmp_path / "state", device_id=DEV,
                           log=tmp_path / "bridge.log",
                           extra=("--command-timeout-ms", str(COMMAND_TIMEOUT_MS)))
    rng = random.Random(seed)
    base = f"/api/v1/devices/{DEV}"

    async def main() -> None:
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
            bridge.start()
            await bridge.wait_online(client)
            # the tamper switch open: "security arm" is refused by the board itself
            r = await client.post(bridge.base + base + "/sim/faults",
                                  json={"kind": "tamper", "active": True})
            assert r.status_code == 200, r.text
            deadline = time.monotonic() + 5
            while not (await client.get(bridge.base + base)).json()["security"]["tamper"]:
                assert time.monotonic() < deadline, "tamper switch not seen"
                await asyncio.sleep(0.05)
            first_event = (await all_events(client, bridge.base, DEV))[-1]["id"]

            cl = Clients(bridge, client, total)
            stop = asyncio.Event()
            relay.faults(True)
            started = time.monotonic()
            chaos = asyncio.ensure_future(blackouts(relay, random.Random(rng.random()), stop))
            workers = [asyncio.ensure_future(w) for w in (
                zone_flipper(cl, "cpu", random.Random(rng.random())),
                zone_flipper(cl, "memory", random.Random(rng.random())),
                zone_duty(cl, "io", random.Random(rng.random())),
                rail_toggler(cl, "p12v_fans", random.Random(rng.random())),
                rail_toggler(cl, "p1v8", random.Random(rng.random())),
                gpio_toggler(cl, "gpio-a", GPIO_A, random.Random(rng.random())),
                gpio_toggler(cl, "gpio-b", GPIO_B, random.Random(rng.random())),
                invalid_sender(cl, random.Random(rng.random())),
            )]
            try:
                await asyncio.gather(*workers)
            finally:
                stop.set()
                for w in workers:
                    w.cancel()
                blackout_count = await chaos
            elapsed = time.monotonic() - started
            relay.faults(False)
            cmds = cl.cmds
            assert len(cmds) == total and all(c.outcome for c in cmds)

            # -- every key again: the same answer, from the same command ------------------
            sem = asyncio.Semaphore(8)

            async def again(c: Cmd) -> None:
                async with sem:
                    status, got = await cl.post(c)
                assert status == c.status, (c.key, c.status, status, got, c.answers)
                body, replayed = got
                if c.outcome in ("applied", "rejected"):
                    assert body.get("command_id") == c.command_id, (c.key, body)
                    assert replayed or (body.get("details") or {}).get("replayed"), (c.key, body)
                    if c.outcome == "applied":
                        assert body["result"] == "applied", (c.key, body)

            await asyncio.gather(*(again(c) for c in cmds))

            # -- the stored commands agree with the answers ------------------------------
            rows = {k: (cid, state) for k, cid, state in read_db(
                bridge.state_dir, "SELECT idempotency_key, command_id, state FROM commands "
                "WHERE idempotency_key IS NOT NULL")}
            stored = {"applied": "applied", "rejected": "rejected", "failed": "failed",
                      "unknown": "timeout"}
            for c in cmds:
                if c.outcome == "invalid" and c.command_id is None:
                    assert c.key not in rows, (c.key, rows[c.key])  # refused by the bridge
                else:
                    assert rows.get(c.key) == (c.command_id, stored[c.outcome or ""]), (
                        c.key, rows.get(c.key), c.outcome, c.answers)

            # -- the board: events, executions, final state -------------------------------
            await asyncio.sleep(1.0)  # fresh telemetry without faults
            snap = await bridge.wait_online(client)
            events = await all_events(client, bridge.base, DEV)
            check_board_events(events, boots=1)
            check_executions([e for e in events if e["id"] > first_event], cmds)
            want = last_applied(cmds)
            rails = {r["name"]: r["state"] for r in snap["power"]["rails"]}
            zones = {z["name"]: z for z in snap["thermal"]["zones"]}
            levels = {g["name"]: g["level"] for g in snap["gpio"]}
            for key, value in want.items():
                kind, _, name = key.partition(":")
                if kind == "rail" and name in RAIL_INDEX:
                    assert rails[name] == value, (key, value, rails)
                elif kind == "gpio":
                    assert levels[name] == value, (key, value, levels)
                elif kind == "zone":
                    assert zones[name]["mode"] == value["mode"], (key, value, zones[name])
                    if value["mode"] == "manual":
                        assert abs(zones[name]["duty_pct"] - value["duty_pct"]) <= 0.15, (
                            key, value, zones[name])
            desired = desired_now(bridge.state_dir, DEV)
            assert {k: v for k, v in desired.items() if k in want} == want
            assert set(desired) - set(want) == set(), desired  # nothing else was desired

            # -- the faults really happened --------------------------------------------
            metrics = (await client.get(bridge.base + "/metrics")).text
            reconnects = _metric(metrics, "metal_transport_reconnects_total")
            retransmits = _metric(metrics, "metal_link_retransmits_total")
            crc = _metric(metrics, 'metal_link_errors_total{device="sim0",kind="crc"}')
            outcomes = Counter(c.outcome for c in cmds)
            timeouts = [c for c in cmds if c.timed_out]
            stats = dict(relay.stats)
            print(f"\n{total} commands in {elapsed:.1f} s: {dict(outcomes)}; 504 first: "
                  f"{len(timeouts)} -> {dict(Counter(c.outcome for c in timeouts))}; "
                  f"rejections: {dict(Counter(c.reason for c in cmds if c.outcome == 'rejected'))};"
                  f" relay: {stats}; blackouts {blackout_count}; transport reconnects "
                  f"{reconnects:g}, retransmits {retransmits:g}, crc errors {crc:g}; client "
                  f"transport errors {cl.transport_errors}")
            for k in ("corrupted", "dropped", "stalls", "disconnects"):
                assert stats.get(k, 0) > 0, f"no {k} injected: {stats}"
            assert reconnects >= 1 and retransmits >= 1 and crc >= 1
            assert timeouts, "no command saw a 504"
            assert outcomes["applied"] >= total // 2
            assert outcomes["unknown"] == 0  # no reboot, no restart: every fate is known

    try:
        asyncio.run(asyncio.wait_for(main(), budget_s))
    finally:
        bridge.stop()
        relay.stop()
    assert all(not pid_alive(p) for p in bridge.pids), "a bridge process survived"


def _metric(text: str, name: str) -> float:
    pat = re.escape(name) + (r"(\{[^}]*\})?" if "{" not in name else "") + r" ([0-9.e+-]+)$"
    total = 0.0
    for m in re.finditer(pat, text, re.M):
        total += float(m.group(m.lastindex or 1))
    return total


@pytest.mark.timeout(150)
def test_1000_commands_through_a_faulty_link(sim: SimProcess, tmp_path: Path) -> None:
    run_faulty_link(sim, tmp_path, total=1000, seed=1, budget_s=120)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_5000_commands_through_a_faulty_link_soak(sim: SimProcess, tmp_path: Path) -> None:
    run_faulty_link(sim, tmp_path, total=5000, seed=2, budget_s=540)
