"""`metal sim` and SimProcess: the sim firmware behind a TCP port or a pty, end to end.

Each test starts real firmware (CPython, or the MicroPython unix port), connects with
pyserial's serial_for_url like any host tool, does the handshake as a ROLE_HOST Link
(HostSession) and checks what the board says. Every wait has a deadline and every
process is killed in a finally.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import serial
from click.testing import CliRunner

from metal.core import proto
from metal.host.cli.sim import sim as sim_command
from metal.host.console import HostSession
from metal.host.sim_process import SimError, SimProcess, micropython_binary, parse_listen
from metal.host.telemetry_view import Layout, decode_describe, decode_telemetry

pytestmark = pytest.mark.timeout(60)


# -- helpers ----------------------------------------------------------------------


def start_cli(*args: str) -> tuple[subprocess.Popen[str], str, int]:
    """Run `metal sim ARGS`; return (process, the URL/path it printed, firmware pid)."""
    p = subprocess.Popen(
        [sys.executable, "-m", "metal.host.cli.sim", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = _read_line(p, p.stdout, 20.0)
        info = _read_line(p, p.stderr, 5.0)
    except BaseException:
        _terminate(p)
        raise
    m = re.match(r"^(?:listening on |pty )(\S+)$", line.strip())
    assert m, f"unexpected first line: {line!r}"
    pid = re.search(r"pid (\d+)", info)
    assert pid, info
    return p, m.group(1), int(pid.group(1))


def _read_line(p: subprocess.Popen[str], stream: Any, timeout: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise AssertionError(f"no output within {timeout} s (rc {p.poll()})")
        line = stream.readline()
    finally:
        sel.close()
    assert line, f"process ended early: rc {p.wait(5)}, stderr {p.stderr.read() if p.stderr else ''}"
    return str(line)


def _terminate(p: subprocess.Popen[str]) -> int:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            return p.wait(5)
    return p.returncode


def _gone(pid: int, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie still answers kill(0); its parent (metal sim) has exited and init reaps
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


class HostClient:
    """A host over pyserial: handshake, layout, decoded telemetry, results."""

    def __init__(self, url: str) -> None:
        self.ser = serial.serial_for_url(url, timeout=0.02)
        self.hs = HostSession()
        self.hello: dict[int, Any] | None = None
        self.parts: dict[int, Any] = {}
        self.layout: Layout | None = None
        self.telemetry: list[dict[str, Any]] = []
        self.results: dict[int, dict[int, Any]] = {}

    def close(self) -> None:
        self.ser.close()

    def pump(self, until: Any, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            data = self.ser.read(max(1, self.ser.in_waiting))
            for m in self.hs.feed(data) if data else ():
                self._on(m.ftype, m.payload)
            out = self.hs.output()
            if out:
                self.ser.write(out)
            if until():
                return
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def _on(self, t: int, p: Any) -> None:
        if t == proto.T_HELLO:
            self.hello = p
        elif t == proto.T_DESCRIBE:
            self.parts[p[proto.DESC_PART]] = p
            if len(self.parts) == p[proto.DESC_PARTS]:
                self.layout = decode_describe(self.parts.values())
        elif t == proto.T_TELEMETRY and self.layout is not None:
            self.telemetry.append(decode_telemetry(self.layout, p))
        elif t == proto.T_RESULT:
            self.results[p[proto.RES_ID]] = p


def check_board(url: str, connect_timeout: float = 15.0) -> None:
    """Handshake, DESCRIBE, sane telemetry, then power on and see the rails come up."""
    c = HostClient(url)
    try:
        c.pump(lambda: c.layout is not None and len(c.telemetry) >= 2, connect_timeout,
               "handshake, DESCRIBE and telemetry")
        assert c.hs.connected
        assert c.hello is not None
        assert c.hello[proto.HELLO_BOARD] == "sim"
        assert c.hello[proto.HELLO_SESSION] == c.hs.link.session != 0
        assert c.hello[proto.HELLO_DESCRIBE_PARTS] == len(c.parts)

        lay = c.layout
        assert lay is not None and lay.complete
        assert (len(lay.sensors), len(lay.fans), len(lay.rails), len(lay.gpio)) == (8, 4, 6, 16)

        tel = c.telemetry[-1]
        for s in tel["sensors"]:
            assert s["state"] == "ok", s
            assert 15.0 <= s["temp_c"] <= 60.0, s
        for f, spec in zip(tel["fans"], lay.fans, strict=True):
            assert 0.0 <= f["duty_pct"] <= 100.0, f
            assert 0 <= f["speed_rpm"] <= spec["max_rpm"], f
            assert f["state"] in ("ok", "spinning_up"), f
            if f["state"] == "ok":
                assert f["speed_rpm"] >= spec["stall_rpm"], (f, spec)
        assert [r["state"] for r in tel["rails"]] == ["off"] * 6
        assert tel["power_state"] == "off"
        assert tel["tick_us"] > 0

        cid = c.hs.command(proto.OP_POWER_ON, 0)
        c.pump(lambda: cid in c.results, 5.0, f"RESULT of CMD {cid}")
        assert c.results[cid][proto.RES_CODE] == proto.R_OK
        n = len(c.telemetry)

        def rails_up() -> bool:
            return len(c.telemetry) > n and all(
                r["state"] == "on" for r in c.telemetry[-1]["rails"])

        c.pump(rails_up, 2.5, "all rails on in telemetry")
        tel = c.telemetry[-1]
        for r, spec in zip(tel["rails"], lay.rails, strict=True):
            assert abs(r["voltage_v"] - spec["nominal_v"]) <= 0.1 * spec["nominal_v"], (r, spec)
        assert tel["power_state"] == "on"
    finally:
        c.close()


# -- `metal sim` as a command -------------------------------------------------------


def test_cli_socket_cpython_handshake_telemetry_and_power_on() -> None:
    p, url, pid = start_cli("--listen", "socket://127.0.0.1:0", "--uid", "sim-test-7")
    try:
        assert re.fullmatch(r"socket://127\.0\.0\.1:\d+", url)
        assert not url.endswith(":0")
        check_board(url)
    finally:
        rc = _terminate(p)
    assert rc == 0, p.stderr.read() if p.stderr else ""
    assert _gone(pid), "the firmware outlived `metal sim`"


@pytest.mark.micropython
def test_cli_socket_micropython_runtime() -> None:
    try:
        micropython_binary()
    except SimError as e:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(str(e))
        pytest.skip(str(e))
    p, url, pid = start_cli("--runtime", "micropython")
    try:
        # the venv's `micropython` may be a script (its interpreter comes first in argv);
        # right after exec the cmdline can still read empty, so look again briefly
        argv: list[bytes] = []
        end = time.monotonic() + 5
        while time.monotonic() < end and not any(argv):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            time.sleep(0.02)
        assert b"micropython" in [os.path.basename(a) for a in argv], argv
        check_board(url, connect_timeout=20.0)
    finally:
        rc = _terminate(p)
    assert rc == 0
    assert _gone(pid)


def test_cli_pty_mode() -> None:
    p, path, pid = start_cli("--pty")
    try:
        assert path.startswith("/dev/") and os.path.exists(path)
        check_board(path)
    finally:
        rc = _terminate(p)
    assert rc == 0
    assert _gone(pid)


def test_cli_sigint_stops_cleanly_and_child_death_is_an_error() -> None:
    p, url, pid = start_cli()
    try:
        p.send_signal(signal.SIGINT)
        assert p.wait(10) == 0
        assert _gone(pid)
    finally:
        _terminate(p)

    p, url, pid = start_cli()
    try:
        os.kill(pid, signal.SIGKILL)  # the firmware dies under `metal sim`
        rc = p.wait(10)
        err = p.stderr.read() if p.stderr else ""
    finally:
        _terminate(p)
    assert rc != 0
    assert "sim firmware exited with status -9" in err


def test_cli_option_errors() -> None:
    r = CliRunner().invoke(sim_command, ["--pty", "--listen", "socket://127.0.0.1:0"])
    assert r.exit_code == 2
    assert "mutually exclusive" in r.output
    r = CliRunner().invoke(sim_command, ["--listen", "socket://127.0.0.1:notaport"])
    assert r.exit_code == 1
    assert "is not a number" in r.output
    r = CliRunner().invoke(sim_command, ["--runtime", "jython"])
    assert r.exit_code == 2


# -- the Python API ----------------------------------------------------------------------


@pytest.fixture
def sim_proc() -> Iterator[SimProcess]:
    sp = SimProcess("cpython", "api-1").start()
    try:
        yield sp
    finally:
        sp.stop()


def test_api_start_returns_at_once_and_stop_kills(sim_proc: SimProcess) -> None:
    assert sim_proc.url is not None and sim_proc.url.startswith("socket://127.0.0.1:")
    assert sim_proc.pid is not None
    c = HostClient(sim_proc.url)
    try:
        c.pump(lambda: c.hello is not None and c.hs.connected, 10.0, "the handshake")
        assert c.hello is not None and c.hello[proto.HELLO_UID] == "api-1"
    finally:
        c.close()
    pid = sim_proc.pid
    sim_proc.stop()
    assert sim_proc.exited.is_set()
    assert not sim_proc.died
    assert _gone(pid)
    sim_proc.stop()  # idempotent


def test_api_new_client_replaces_old(sim_proc: SimProcess) -> None:
    assert sim_proc.url is not None
    a = HostClient(sim_proc.url)
    b = None
    try:
        a.pump(lambda: a.hs.connected, 10.0, "client A's handshake")
        b = HostClient(sim_proc.url)
        b.pump(lambda: b.layout is not None and len(b.telemetry) >= 1, 10.0,
               "client B's handshake and telemetry")
        assert sim_proc.clients == 2
        # A was disconnected: the server closed its socket
        end = time.monotonic() + 5
        closed = False
        while time.monotonic() < end and not closed:
            try:
                if a.ser.read(4096) == b"":
                    continue
            except serial.SerialException:
                closed = True
        assert closed, "the old client was not disconnected"
    finally:
        a.close()
        if b is not None:
            b.close()


def test_api_child_death_reported_with_stderr(tmp_path: Any) -> None:
    # a "micropython" that crashes at start stands in for firmware that dies
    fake = tmp_path / "micropython"
    fake.write_text("#!/bin/sh\necho 'Traceback: boom' >&2\nexit 3\n")
    fake.chmod(0o755)
    sp = SimProcess("micropython", micropython=str(fake)).start()
    try:
        assert sp.wait(10), "the relay did not notice the child exit"
        assert sp.died
        assert sp.returncode == 3
        assert sp.stderr_text() == "Traceback: boom\n"
    finally:
        sp.stop()


def test_api_pty(tmp_path: Any) -> None:
    with SimProcess(pty=True) as sp:
        assert sp.url is not None and sp.url.startswith("/dev/")
        c = HostClient(sp.url)
        try:
            c.pump(lambda: c.layout is not None, 10.0, "DESCRIBE over the pty")
            assert c.layout is not None and c.layout.counts == (8, 4, 6)
        finally:
            c.close()
    assert sp.exited.is_set()


def test_parse_listen() -> None:
    assert parse_listen("socket://127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("socket://localhost:4000") == ("localhost", 4000)
    assert parse_listen(":5000") == ("127.0.0.1", 5000)
    assert parse_listen("5001") == ("127.0.0.1", 5001)
    assert parse_listen("socket://[::1]:7") == ("::1", 7)
    with pytest.raises(SimError, match="only socket://"):
        parse_listen("rfc2217://127.0.0.1:1")
    with pytest.raises(SimError, match="out of range"):
        parse_listen("70000")
    with pytest.raises(SimError, match="runtime"):
        SimProcess("jython")
