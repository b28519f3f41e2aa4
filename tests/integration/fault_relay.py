"""Harness for the bridge's end-to-end fault tests: a fault-injecting TCP relay, and
``metal bridge`` as a real child process.

:class:`FaultRelay` sits between the bridge and a board's serial port served on TCP
(``SimProcess``'s ``socket://``), on 127.0.0.1::

    bridge --socket://127.0.0.1:relay--> FaultRelay --socket://sim--> sim firmware

Each accepted bridge connection gets its own upstream connection and two pump threads,
one per direction (``"up"``: bridge -> board, ``"down"``: board -> bridge). Per chunk read,
with probabilities from one seeded ``random.Random`` per (connection, direction):

* ``corrupt``: one byte XORed with a random non-zero value;
* ``drop``: 1..8 consecutive bytes removed;
* ``stall``: the direction stops for ``stall_s`` (200 ms) before forwarding.

``disconnect_every=(lo, hi)``: a chaos thread closes both sides of the current connection
after a random lo..hi seconds, again and again (the bridge's transport reconnects, the sim
takes the new upstream connection). :meth:`hold` / :meth:`release` stop a direction
deterministically (bytes wait, nothing is lost), :meth:`disconnect` drops the connection
now. ``stats`` counts what was done, so a test can check that every fault happened.

:class:`BridgeProcess` runs ``metal bridge --device ID=URL --state-dir DIR --port P`` with
its output in a log file; :meth:`~BridgeProcess.kill` is SIGKILL, :meth:`~BridgeProcess.stop`
SIGTERM then SIGKILL, both bounded. Every pid it ever started is in ``pids`` so a test can
check that none is left.

The checks the fault tests share: :func:`all_events` (the REST event log, every page),
:func:`check_board_events` (every (boot_id, seq) once, contiguous from 1, no gap),
:func:`flips` / :func:`collapse` / :func:`sequence_matches` (a target's executions on the
board, read from its events, against the commands a client was told were applied), and
:func:`desired_now` (the stored desired state).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "BridgeProcess",
    "FaultRelay",
    "all_events",
    "check_board_events",
    "collapse",
    "desired_now",
    "flips",
    "free_port",
    "pid_alive",
    "read_db",
    "sequence_matches",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (Linux /proc; kill(0) elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def read_db(state_dir: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the bridge's SQLite store (read-only; the bridge may be running)."""
    uri = f"file:{state_dir / 'bridge.sqlite3'}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=5)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


# -- the relay ----------------------------------------------------------------------------


class _Pair:
    def __init__(self, down: socket.socket, up: socket.socket, index: int) -> None:
        self.down = down  # the bridge's connection
        self.up = up  # ours to the board
        self.index = index
        self.closed = threading.Event()
        self.threads: list[threading.Thread] = []

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for s in (self.down, self.up):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()


class FaultRelay:
    def __init__(
        self,
        upstream: str,
        *,
        seed: int = 0,
        corrupt: float = 0.0,
        drop: float = 0.0,
        stall: float = 0.0,
        stall_s: float = 0.2,
        disconnect_every: tuple[float, float] | None = None,
    ) -> None:
        host, _, port = upstream.removeprefix("socket://").rpartition(":")
        self.upstream = (host.strip("[]") or "127.0.0.1", int(port))
        self.seed = seed
        self.corrupt = corrupt
        self.drop = drop
        self.stall = stall
        self.stall_s = stall_s
        self.disconnect_every = disconnect_every
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._pair: _Pair | None = None
        self._index = 0
        self._stop = threading.Event()
        self._open = {"up": threading.Event(), "down": threading.Event()}
        for ev in self._open.values():
            ev.set()
        self._faults = True
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(4)
        self.port = int(self._listener.getsockname()[1])
        self.url = f"socket://127.0.0.1:{self.port}"
        self._threads: list[threading.Thread] = []

    # -- control ------------------------------------------------------------------------

    def start(self) -> FaultRelay:
        self._spawn(self._accept_main, "relay-accept")
        if self.disconnect_every is not None:
            self._spawn(self._chaos_main, "relay-chaos")
        return self

    def stop(self) -> None:
        self._stop.set()
        for ev in self._open.values():
            ev.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            pair, self._pair = self._pair, None
        if pair is not None:
            pair.close()
        for t in self._threads:
            t.join(2.0)
        if pair is not None:
            for t in pair.threads:
                t.join(2.0)

    def __enter__(self) -> FaultRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def faults(self, on: bool) -> None:
        """Switch the random faults (corrupt/drop/stall/disconnect) on or off."""
        self._faults = on

    def hold(self, direction: str) -> None:
        """Stop forwarding ``"up"`` (bridge -> board) or ``"down"``; bytes wait."""
        self._open[direction].clear()

    def release(self, direction: str) -> None:
        self._open[direction].set()

    def disconnect(self) -> None:
        with self._lock:
            pair = self._pair
        if pair is not None and not pair.closed.is_set():
            self.stats["disconnects"] += 1
            pair.close()

    @property
    def connections(self) -> int:
        return self.stats["connections"]

    # -- threads ------------------------------------------------------------------------

    def _spawn(self, fn: Any, name: str, *args: Any) -> threading.Thread:
        t = threading.Thread(target=fn, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)
        return t

    def _accept_main(self) -> None:
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self._listener], [], [], 0.1)
                if not r:
                    continue
                down, _ = self._listener.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(self.upstream, timeout=2.0)
            except OSError:
                self.stats["upstream_refused"] += 1
                down.close()
                continue
            for s in (down, up):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(None)
            with self._lock:
                old = self._pair
                self._index += 1
                pair = _Pair(down, up, self._index)
                self._pair = pair
            if old is not None:
                old.close()
            self.stats["connections"] += 1
            for direction, src, dst in (("up", down, up), ("down", up, down)):
                rng = random.Random(f"{self.seed}/{pair.index}/{direction}")
                t = threading.Thread(target=self._pump, args=(pair, direction, src, dst, rng),
                                     name=f"relay-{direction}-{pair.index}", daemon=True)
                t.start()
                pair.threads.append(t)

    def _pump(self, pair: _Pair, direction: str, src: socket.socket, dst: socket.socket,
              rng: random.Random) -> None:
        gate = self._open[direction]
        try:
            while not pair.closed.is_set() and not self._stop.is_set():
                r, _, _ = select.select([src], [], [], 0.1)
                if not r:
                    continue
                data = bytearray(src.recv(4096))
                if not data:
                    break
                while not gate.wait(0.05):
                    if pair.closed.is_set() or self._stop.is_set():
                        return
                if self._faults:
                    if rng.random() < self.stall:
                        self.stats["stalls"] += 1
                        time.sleep(self.stall_s)
                    if rng.random() < self.corrupt:
                        i = rng.randrange(len(data))
                        data[i] ^= rng.randrange(1, 256)
                        self.stats["corrupted"] += 1
                    if rng.random() < self.drop:
                        i = rng.randrange(len(data))
                        n = rng.randint(1, 8)
                        del data[i:i + n]
                        self.stats["dropped"] += 1
                if data:
                    dst.sendall(data)
                    self.stats[f"bytes_{direction}"] += len(data)
        except OSError:
            pass
        finally:
            pair.close()

    def _chaos_main(self) -> None:
        assert self.disconnect_every is not None
        lo, hi = self.disconnect_every
        rng = random.Random(f"{self.seed}/chaos")
        while not self._stop.wait(rng.uniform(lo, hi)):
            if self._faults:
                self.disconnect()


# -- `metal bridge` as a child process ----------------------------------------------------


def _bridge_argv() -> list[str]:
    exe = Path(sys.executable).with_name("metal")
    if exe.is_file() and os.access(exe, os.X_OK):
        return [str(exe), "bridge"]
    return [sys.executable, "-m", "metal.host.cli.bridge"]


class BridgeProcess:
    """``metal bridge`` for one device, on a fixed port, restartable on the same state."""

    def __init__(self, device_url: str, state_dir: Path, *, device_id: str = "sim0",
                 port: int | None = None, log: Path | None = None,
                 extra: tuple[str, ...] = ()) -> None:
        self.device_id = device_id
        self.device_url = device_url
        self.state_dir = state_dir
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log or state_dir.parent / "bridge.log"
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []
        self.starts = 0

    def start(self) -> BridgeProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        argv = [*_bridge_argv(), "--device", f"{self.device_id}={self.device_url}",
                "--state-dir", str(self.state_dir), "--port", str(self.port),
                "--log-level", "info", *self.extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith("METAL_")}
        with open(self.log, "ab") as out:
            out.write(f"\n===== start #{self.starts + 1}: {' '.join(argv)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        self.pids.append(self.proc.pid)
        self.starts += 1
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs in the bridge."""
        p = self.proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        return p.returncode

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    async def wait_online(self, client: httpx.AsyncClient, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the API answers and the device is online with telemetry; the snapshot."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if not self.running:
                raise AssertionError(f"the bridge exited ({self.proc and self.proc.returncode})"
                                     f":\n{self.log_tail()}")
            try:
                r = await client.get(f"{self.base}/api/v1/devices/{self.device_id}")
                last = r.status_code
                if r.status_code == 200:
                    snap: dict[str, Any] = r.json()
                    if snap["online"] and snap["updated_at"] is not None and snap["power"]["rails"]:
                        return snap
            except httpx.TransportError as exc:
                last = exc
            await asyncio.sleep(0.05)
        raise AssertionError(f"device not online within {timeout} s (last: {last!r}):\n"
                             f"{self.log_tail()}")


# -- shared checks ------------------------------------------------------------------------


def desired_now(state_dir: Path, device: str) -> dict[str, Any]:
    """The stored desired state of ``device`` (tombstones included as None)."""
    return {k: json.loads(v) for k, v in
            read_db(state_dir, "SELECT key, value FROM desired WHERE device = ?", (device,))}


async def all_events(client: httpx.AsyncClient, base: str, device: str) -> list[dict[str, Any]]:
    """Every stored event of ``device`` through ``GET /api/v1/events``, page by page."""
    out: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        params: dict[str, Any] = {"device": device, "limit": 1000}
        if cursor is not None:
            params["cursor"] = cursor
        r = await client.get(f"{base}/api/v1/events", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        out += page["events"]
        cursor = page["next_cursor"]
        if cursor is None:
            return out
    raise AssertionError("event paging did not end")


def check_board_events(events: list[dict[str, Any]], boots: int = 1) -> dict[int, list[int]]:
    """Every (boot_id, seq) once, contiguous from 1 per boot, in id order, no gap reported.
    Returns boot id -> its sequence numbers, in the order the boots were seen."""
    gaps = [e for e in events if e["type"] == "events.gap"]
    assert not gaps, f"a gap was reported: {gaps[:3]}"
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    by_boot: dict[int, list[int]] = {}
    for e in events:
        if e["seq"] is not None:
            by_boot.setdefault(e["boot_id"], []).append(e["seq"])
    assert len(by_boot) == boots, f"boots seen: {list(by_boot)}"
    for boot, seqs in by_boot.items():
        assert seqs == list(range(1, len(seqs) + 1)), (
            f"boot {boot}: seqs not contiguous from 1 / duplicated: "
            f"{[s for i, s in enumerate(seqs) if s != i + 1][:10]}")
    return by_boot


def flips(events: list[dict[str, Any]], etype: str, source: int) -> list[int]:
    """The values of one board event type for one source (a zone, a rail ...), in order."""
    return [e["data"]["value"] for e in events
            if e["type"] == etype and e["data"].get("source") == source]


def collapse(seq: list[Any]) -> list[Any]:
    return [x for i, x in enumerate(seq) if i == 0 or seq[i - 1] != x]


def sequence_matches(actual: list[Any], start: Any, expected: list[tuple[Any, bool]]) -> bool:
    """Did the board go through exactly ``expected`` (in order, after ``start``)?

    ``expected``: (value, certain) per command, in the order they were applied; an
    uncertain one (a command of unknown fate) may or may not have happened -- every
    variant is tried. Repeats collapse on both sides: a command that flips its target
    relative to the previous applied one shows up as exactly one change, so a command
    executed twice (or one executed that was reported as not applied) does not match.
    """
    optional = [i for i, (_, certain) in enumerate(expected) if not certain]
    assert len(optional) <= 10, "too many commands of unknown fate to check"
    got = collapse([start, *actual])
    for mask in range(1 << len(optional)):
        skip = {optional[j] for j in range(len(optional)) if mask >> j & 1}
        want = collapse([start] + [v for i, (v, _) in enumerate(expected) if i not in skip])
        if got == want:
            return True
    return False
