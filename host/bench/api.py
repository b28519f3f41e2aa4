"""``metal bench api``: the bridge's API under load, end to end, on this machine.

Shape (stable keys, other tools read them)::

    {"command_rtt_ms_p50", "command_rtt_ms_p99", "command_rtt_ms_max", "commands",
     "get_device_rps", "get_device_ms_p50", "get_device_ms_p99", "get_device_requests",
     "get_device_errors", "connections", "duration_s",
     "ws_fanout_p50_ms", "ws_fanout_p99_ms", "ws_fanout_max_ms", "ws_clients",
     "ws_duration_s", "ws_messages", "ws_msgs_per_client_per_s", "ws_errors",
     "telemetry_hz", "setup": {...}, "targets": {...}}

Each part runs the real stack in separate processes: the sim board (``metal.boards.sim``
firmware, 100 Hz ticks) behind a pseudo-terminal (``SimProcess(pty=True)`` in a helper
process), ``metal bridge --device bench=/dev/pts/N`` (uvicorn with its httptools parser,
no access log) and this process as the client / load generator:

* ``command_rtt_ms_*``: ``POST /api/v1/devices/bench/gpio/led_status`` (alternating
  level), one at a time on a keep-alive connection: REST -> bridge -> CMD over the pty ->
  the board applies it -> RESULT -> HTTP response; ``--requests`` of them after a warm-up.
* ``get_device_rps``: ``GET /api/v1/devices/bench`` as fast as 16 keep-alive connections
  (``--connections``) get answers, for ``--duration`` seconds after a warm-up; a small
  asyncio HTTP/1.1 client on raw sockets (no HTTP library in the measured path).
* ``ws_fanout_*``: 100 WebSocket subscribers (``--ws-clients``) of
  ``/api/v1/stream?topics=telemetry`` for ``--ws-duration`` seconds, with the board sending
  TELEMETRY every tick (100 Hz; the bridge stack is restarted for this part with such a
  board). Latency = the client's receive time minus the message's ``time``, which is the
  bridge's wall-clock time when it decoded that TELEMETRY frame (the snapshot's
  ``updated_at``): board frame received by the bridge -> message received by the client.
  The stream conflates telemetry (latest wins): ``ws_msgs_per_client_per_s`` below 100
  means the bridge skipped frames for some subscribers.

The default board config sends TELEMETRY every 10 ticks (10 Hz); the 100 Hz board for
the fan-out part is the same firmware with ``limits.telemetry_every = 1``, started through
this module (``python -m metal.host.bench.api --firmware --telemetry-every 1``), so no
default changes. The figures are whatever this machine delivers with the generator on the
same CPUs; the targets are for comparison only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metal.host.sim_process import SimProcess

__all__ = ["TARGETS", "run"]

TARGETS = {"command_rtt_ms_p99": 30, "ws_fanout_p99_ms": 50, "get_device_rps": 6000}
DEVICE = "bench"
ONLINE_WAIT_S = 60.0


# -- percentiles ------------------------------------------------------------------------------


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p / 100.0))]


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


# -- the stack: sim board behind a pty + `metal bridge` ------------------------------------------


class _BenchSim(SimProcess):
    """The sim firmware with TELEMETRY every ``telemetry_every`` ticks."""

    def __init__(self, telemetry_every: int, uid: str) -> None:
        super().__init__("cpython", uid, pty=True)
        self.telemetry_every = telemetry_every

    def _command(self) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable, "-u", "-m", "metal.host.bench.api", "--firmware",
                "--telemetry-every", str(self.telemetry_every), "--uid", self.uid or "bench"]
        return argv, dict(os.environ)


def _firmware_main(uid: str, telemetry_every: int) -> int:
    """``metal.boards.sim.main`` with another telemetry period (nothing else differs)."""
    from metal.boards.sim import main as sim_main

    make_config = sim_main.make_config

    def bench_config() -> Any:
        cfg = make_config()
        cfg.limits.telemetry_every = telemetry_every
        return cfg

    sim_main.make_config = bench_config  # type: ignore[assignment]
    return int(sim_main.main(["--uid", uid]) or 0)


def _sim_main(telemetry_every: int, uid: str) -> int:
    """Helper process: serve the sim board on a pty until SIGTERM or stdin closes."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def watch_stdin() -> None:  # the parent closed our stdin or went away: stop too
        with contextlib.suppress(OSError):  # (os.read: no buffered-reader lock at exit)
            while os.read(0, 64):
                pass
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    sim = _BenchSim(telemetry_every, uid).start()
    try:
        print(f"pty {sim.url}", flush=True)
        while not stop.is_set() and not sim.wait(0.2):
            pass
    finally:
        sim.stop()
    if sim.died:
        sys.stderr.write(sim.stderr_text())
        return 1
    return 0


def _metal_bridge_argv() -> list[str]:
    exe = Path(sys.executable).with_name("metal")
    if exe.is_file() and os.access(exe, os.X_OK):
        return [str(exe), "bridge"]
    return [sys.executable, "-m", "metal.host.cli.bridge"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    """sim helper process + ``metal bridge`` process; :meth:`close` ends both."""

    def __init__(self, telemetry_every: int) -> None:
        self.telemetry_every = telemetry_every
        self.tmp = Path(tempfile.mkdtemp(prefix="metal-bench-api-"))
        self.port = _free_port()
        self.host = "127.0.0.1"
        self.sim: subprocess.Popen[bytes] | None = None
        self.bridge: subprocess.Popen[bytes] | None = None
        self.pty: str | None = None
        self.pids: list[int] = []

    def start(self) -> Stack:
        with open(self.tmp / "sim.log", "wb") as err:
            self.sim = subprocess.Popen(
                [sys.executable, "-m", "metal.host.bench.api", "--serve-sim",
                 "--telemetry-every", str(self.telemetry_every), "--uid", "bench-0001"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                start_new_session=True)
        self.pids.append(self.sim.pid)
        line = _readline(self.sim, 30.0)
        if not line.startswith("pty "):
            raise RuntimeError(f"the sim helper did not start: {line!r} "
                               f"{_tail(self.tmp / 'sim.log')}")
        self.pty = line.split(" ", 1)[1].strip()
        env = {k: v for k, v in os.environ.items() if not k.startswith("METAL_")}
        with open(self.tmp / "bridge.log", "wb") as log:
            self.bridge = subprocess.Popen(
                [*_metal_bridge_argv(), "--device", f"{DEVICE}={self.pty}", "--state-dir",
                 str(self.tmp / "state"), "--port", str(self.port), "--log-level", "warning"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)
        self.pids.append(self.bridge.pid)
        return self

    def wait_online(self, timeout: float = ONLINE_WAIT_S) -> None:
        import json
        import urllib.request

        deadline = time.monotonic() + timeout
        url = f"http://{self.host}:{self.port}/api/v1/devices/{DEVICE}"
        while time.monotonic() < deadline:
            assert self.bridge is not None
            if self.bridge.poll() is not None:
                raise RuntimeError(f"the bridge exited: {_tail(self.tmp / 'bridge.log')}")
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - loopback
                    snap = json.loads(r.read())
                if snap.get("online") and snap.get("updated_at") and snap["power"]["rails"]:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the bench board did not come online within {timeout:g} s: "
                           f"{_tail(self.tmp / 'bridge.log')}")

    def close(self) -> None:
        """SIGTERM the bridge; close the sim helper's stdin (it stops the firmware and
        exits); whatever is still running after 10 s is killed."""
        if self.bridge is not None and self.bridge.poll() is None:
            self.bridge.send_signal(signal.SIGTERM)
        if self.sim is not None and self.sim.stdin is not None:
            with contextlib.suppress(OSError):
                self.sim.stdin.close()
        for p in (self.bridge, self.sim):
            if p is None:
                continue
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if self.sim is not None and self.sim.stdout is not None:
            self.sim.stdout.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Stack:
        try:
            self.start()
            self.wait_online()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _readline(p: subprocess.Popen[bytes], timeout: float) -> str:
    out: list[bytes] = []
    assert p.stdout is not None
    t = threading.Thread(target=lambda: out.append(p.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    t.start()
    t.join(timeout)
    return out[0].decode(errors="replace") if out else ""


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


# -- a minimal keep-alive HTTP/1.1 client --------------------------------------------------------


class _Http(asyncio.Protocol):
    """One keep-alive connection sending ``request`` again after each full response."""

    def __init__(self, request: bytes, on_response: Callable[[_Http, int, bytes], None]) -> None:
        self.request = request
        self.on_response = on_response
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.sent_at = 0.0
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, request: bytes | None = None) -> None:
        assert self.transport is not None
        self.sent_at = time.perf_counter()
        self.transport.write(request or self.request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(buf[:end]).split(b"\r\n")
            length = 0
            for line in lines[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if len(buf) < end + 4 + length:
                return
            status = int(lines[0][9:12])
            body = bytes(buf[end + 4:end + 4 + length])
            del buf[:end + 4 + length]
            self.on_response(self, status, body)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)


def _get(host: str, port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()


def _post(host: str, port: int, path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _command_rtt(host: str, port: int, requests: int, warmup: int = 20) -> list[float]:
    loop = asyncio.get_running_loop()
    path = f"/api/v1/devices/{DEVICE}/gpio/led_status"
    pending: asyncio.Future[tuple[int, bytes]] | None = None

    def done(conn: _Http, status: int, body: bytes) -> None:
        if pending is not None and not pending.done():
            pending.set_result((status, body))

    _, conn = await loop.create_connection(lambda: _Http(b"", done), host, port)
    rtts: list[float] = []
    try:
        for i in range(warmup + requests):
            pending = loop.create_future()
            body = b'{"level": %d}' % (i % 2)
            t0 = time.perf_counter()
            conn.send(_post(host, port, path, body))
            status, text = await asyncio.wait_for(pending, 30)
            dt = (time.perf_counter() - t0) * 1000.0
            if status != 200 or b'"applied"' not in text:
                raise RuntimeError(f"command {i}: {status} {text[:200]!r}")
            if i >= warmup:
                rtts.append(dt)
    finally:
        assert conn.transport is not None
        conn.transport.close()
    return rtts


async def _get_load(host: str, port: int, connections: int, duration: float,
                    warmup: float = 1.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    request = _get(host, port, f"/api/v1/devices/{DEVICE}")
    state = {"measuring": False, "stop": False, "ok": 0, "errors": 0}
    latencies: list[float] = []

    def done(conn: _Http, status: int, body: bytes) -> None:
        if state["measuring"]:
            if status == 200:
                state["ok"] += 1
                latencies.append(time.perf_counter() - conn.sent_at)
            else:
                state["errors"] += 1
        if not state["stop"]:
            conn.send()

    conns = []
    for _ in range(connections):
        _, c = await loop.create_connection(lambda: _Http(request, done), host, port)
        conns.append(c)
    for c in conns:
        c.send()
    await asyncio.sleep(warmup)
    state["measuring"] = True
    t0 = time.perf_counter()
    await asyncio.sleep(duration)
    state["measuring"] = False
    elapsed = time.perf_counter() - t0
    state["stop"] = True
    await asyncio.sleep(0.2)
    for c in conns:
        assert c.transport is not None
        c.transport.close()
    ms = [x * 1000.0 for x in latencies]
    return {"get_device_rps": round(state["ok"] / elapsed, 1),
            "get_device_ms_p50": _r(_pct(ms, 50), 3), "get_device_ms_p99": _r(_pct(ms, 99), 3),
            "get_device_requests": state["ok"], "get_device_errors": state["errors"]}


async def _ws_fanout(host: str, port: int, clients: int, duration: float,
                     warmup: float = 2.0) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    url = f"ws://{host}:{port}/api/v1/stream?topics=telemetry&device={DEVICE}"
    latencies: list[float] = []
    counts = [0] * clients
    errors: list[str] = []
    window = {"on": False}
    marker = '"time":'

    async def client(i: int, started: asyncio.Event) -> None:
        try:
            async with connect(url, max_size=2**22, compression=None,
                               open_timeout=30) as ws:
                started.set()
                async for msg in ws:
                    now = time.time()
                    if not window["on"]:
                        continue
                    text = msg if isinstance(msg, str) else msg.decode()
                    j = text.find(marker)
                    if j < 0:
                        continue
                    k = text.find(",", j)
                    t = text[j + len(marker):k]
                    if t == "null":
                        continue
                    latencies.append((now - float(t)) * 1000.0)
                    counts[i] += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a connection that failed counts, it does not abort
            errors.append(f"{type(exc).__name__}: {exc}")
            started.set()

    ready = [asyncio.Event() for _ in range(clients)]
    tasks = [asyncio.ensure_future(client(i, ready[i])) for i in range(clients)]
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready)), 60)
        await asyncio.sleep(warmup)
        window["on"] = True
        t0 = time.perf_counter()
        await asyncio.sleep(duration)
        window["on"] = False
        elapsed = time.perf_counter() - t0
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"ws_fanout_p50_ms": _r(_pct(latencies, 50)), "ws_fanout_p99_ms": _r(_pct(latencies, 99)),
            "ws_fanout_max_ms": _r(max(latencies) if latencies else None),
            "ws_messages": len(latencies),
            "ws_msgs_per_client_per_s": round(len(latencies) / elapsed / clients, 1),
            "ws_errors": len(errors)}


# -- the benchmark ------------------------------------------------------------------------------


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def run(requests: int = 1000, duration: float = 10.0, ws_duration: float = 30.0,
        connections: int = 16, ws_clients: int = 100) -> dict[str, Any]:
    out: dict[str, Any] = {}
    load = {"before": _loadavg()}
    with Stack(telemetry_every=10) as st:
        rtts = asyncio.run(_command_rtt(st.host, st.port, requests))
        out.update(command_rtt_ms_p50=_r(_pct(rtts, 50)), command_rtt_ms_p99=_r(_pct(rtts, 99)),
                   command_rtt_ms_max=_r(max(rtts)), commands=len(rtts))
        out.update(asyncio.run(_get_load(st.host, st.port, connections, duration)))
        out.update(connections=connections, duration_s=duration)
    load["after_http"] = _loadavg()
    with Stack(telemetry_every=1) as st:
        out.update(asyncio.run(_ws_fanout(st.host, st.port, ws_clients, ws_duration)))
        out.update(ws_clients=ws_clients, ws_duration_s=ws_duration, telemetry_hz=100)
    load["after_ws"] = _loadavg()
    out["setup"] = {
        "board": "sim firmware (CPython), 100 Hz ticks, behind a pty (SimProcess)",
        "bridge": "metal bridge (uvicorn, httptools, no access log), its own process",
        "client": "this process: raw-socket HTTP/1.1 keep-alive / websockets",
        "telemetry_hz": {"command_rtt": 10, "get_device": 10, "ws_fanout": 100},
        "cpus": os.cpu_count(),
        "load_avg_1m": load,  # other work on the machine skews every figure
    }
    out["targets"] = TARGETS
    return out


def _main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m metal.host.bench.api")
    ap.add_argument("--firmware", action="store_true", help="run the bench sim firmware on stdio")
    ap.add_argument("--serve-sim", action="store_true", help="serve the bench sim on a pty")
    ap.add_argument("--telemetry-every", type=int, default=10)
    ap.add_argument("--uid", default="bench-0001")
    a = ap.parse_args(argv)
    if a.firmware:
        return _firmware_main(a.uid, a.telemetry_every)
    if a.serve_sim:
        return _sim_main(a.telemetry_every, a.uid)
    ap.error("use `metal bench api` to run the benchmark")
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
