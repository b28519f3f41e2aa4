"""A virtual MicroPython board on a pseudo-terminal, for tests and demos.

``VirtualBoard(flash_dir)`` opens a pty pair and plays, on the slave end
(``board.port``, e.g. ``/dev/pts/7``), a MicroPython board whose flash
filesystem is the directory ``flash_dir``. mpremote (and so
``scripts/flash.sh``) can talk to it like to a Pico on ``/dev/ttyACM0``; after
a reset it runs ``/main.py`` with the same pty as its console, so a flashed
firmware speaks the wire protocol there, exactly like a real board.

How it works: Python code runs in a MicroPython unix-port process (the
*worker*, one per boot) that re-mounts its root VFS onto ``flash_dir``
(``os.VfsPosix``), so ``open('/lib/x')``, ``os.listdir('/')``, ``os.mkdir`` and
imports from ``/lib`` all act on the flash directory, and the REPL globals
persist between execs (``f = open(...)`` in one exec, ``f.write`` in the next,
as mpremote does). This process (a thread of it) owns the pty master, runs the
REPL state machine and relays bytes::

    mpremote / bridge                 VirtualBoard thread               worker (micropython)
    /dev/pts/N  <---- pty ---->  master: REPL state machine  --ctl pipe-->  exec(code, globals)
                                 (banner, raw REPL, raw paste, <--ctl pipe--  D(one)/R(eset)/X(soft)
                                  Ctrl-C/Ctrl-D, break-in)    --stdin-->     sys.stdin  (main.py)
                                                              <--stdout/err-- print, firmware frames

REPL states (``board.state``)::

            boot (worker starting)
              |  /main.py exists and (hard reset, or soft reset in friendly mode)
              +-----------------------------------------------> main -----+
              |  otherwise                                        |  ends   | break-in "\\r\\x03"
              v                                                   v         v at a frame boundary
          friendly  --Ctrl-A-->  raw  --code Ctrl-D--> exec      friendly <- interrupting
           |  ^  line             | ^   (raw paste: Ctrl-E A Ctrl-A)    (traceback, banner)
           |  +--- exec_line      | +--- D: stdout \\x04 stderr \\x04 >
           |       (<-- Ctrl-B ---+)
           +-- Ctrl-D on an empty line, or Ctrl-D on an empty raw line: soft reset
               ("MPY: soft reboot"; friendly mode then runs /main.py again)

    machine.reset() (our ``machine`` module) in any exec or in main.py: hard reset,
    the worker is replaced and the board boots (runs /main.py if present).

While main.py runs, the host's bytes go to the firmware's stdin, except the
maintenance break-in: 0x0D 0x03 at a frame boundary (after a 0x00, after
20 ms of silence, or first bytes after boot) -- what mpremote sends first and
what a valid frame can never start with (its second byte is 0x1T). That is
the rule the real boards' HAL applies (boards/common/machine_hal.py); a plain
MicroPython board would stop at any 0x03 byte.

Limits (deliberate): exec'd code cannot read stdin (``input()`` and ``mpremote
mount`` do not work); the friendly REPL has no line history, paste mode or
auto-indent; output is CRLF-converted only in the friendly REPL; a 64-bit VM (small ints up to 2**62) with the unix
port's heap; no ``machine.Pin`` & co. (``machine`` has reset, soft_reset,
reset_cause, unique_id, freq, idle; ``os`` is the unix port's with a
board-like ``ilistdir``); host -> board bytes that arrive while the
firmware's stdin pipe is full, and board -> host bytes beyond OUT_QUEUE_MAX
while nobody reads the pty, are dropped (like a UART FIFO).

Run one by hand::

    python -m metal.host.virtual_board --flash /tmp/vflash
    scripts/flash.sh sim /dev/pts/N
"""

from __future__ import annotations

import argparse
import errno
import os
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path
from typing import Callable

__all__ = ["VirtualBoard", "find_micropython", "main"]

RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
SOFT_REBOOT = b"MPY: soft reboot\r\n"
RAW_PASTE_WINDOW = 2048
OUT_QUEUE_MAX = 16 * 1024  # board -> host bytes queued for the pty (see _update_interest)
BREAK_GAP_S = 0.020  # silence after which the next byte starts a frame (as the real HAL)
INTERRUPT_GRACE_S = 2.0  # a worker that ignores SIGINT this long is killed
BOOT_TIMEOUT_S = 10.0

# reset causes as MicroPython's machine module numbers them (ESP32 numbering)
PWRON_RESET = 1
HARD_RESET = 2
SOFT_RESET = 5

HARD_RESET_MAGIC = "__metal_virtual_board_hard_reset__"

# -- code that runs inside the MicroPython worker -----------------------------------------

MACHINE_SHIM = f'''\
"""machine for the metal virtual board: reset() restarts the board."""
import os
import machine as _builtin  # the unix port's own (sys.modules is patched after this import)

PWRON_RESET = {PWRON_RESET}
HARD_RESET = {HARD_RESET}
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = {SOFT_RESET}
HARD_RESET_MAGIC = {HARD_RESET_MAGIC!r}

for _k in ("mem8", "mem16", "mem32", "PinBase", "Signal", "idle", "time_pulse_us"):
    if hasattr(_builtin, _k):
        globals()[_k] = getattr(_builtin, _k)


def reset():
    raise SystemExit(HARD_RESET_MAGIC)


def soft_reset():
    raise SystemExit(0)


def reset_cause():
    return int(os.getenv("VB_RESET_CAUSE") or PWRON_RESET)


def unique_id():
    import binascii
    return binascii.unhexlify(os.getenv("VB_UID") or "00000000")


def freq(*args):
    return 125000000
'''

OS_SHIM = '''\
"""os for the metal virtual board: the unix port's, with board-like ilistdir.

The unix port lists (name, type, inode); a board adds the size, which
``mpremote fs ls`` shows.
"""
from os import *  # noqa: F401,F403
import os as _os


def ilistdir(path="."):
    for e in _os.ilistdir(path):
        if len(e) == 3:
            size = 0
            if e[1] == 0x8000:
                try:
                    size = _os.stat(path.rstrip("/") + "/" + e[0] if path else e[0])[6]
                except OSError:
                    pass
            yield (e[0], e[1], e[2], size)
        else:
            yield e
'''

WORKER = '''\
"""metal virtual board worker: runs REPL code and /main.py against the flash dir."""
import io
import os
import sys

_cin = open("/dev/fd/" + sys.argv[1], "rb")
_cout = open("/dev/fd/" + sys.argv[2], "wb")
_flash = sys.argv[3]

import _vb_machine
import _vb_os

sys.modules["machine"] = _vb_machine
sys.modules["umachine"] = _vb_machine
sys.modules["os"] = _vb_os
sys.modules["uos"] = _vb_os
os.umount("/")
os.mount(os.VfsPosix(_flash), "/")
os.chdir("/")
sys.path[:] = ["", ".frozen", "/lib"]
sys.argv[:] = []
_g = {"__name__": "__main__"}


def _reply(kind, status, text):
    # one write: atomic on the pipe, and no KeyboardInterrupt can split it
    _cout.write(kind + bytes([status]) + len(text).to_bytes(4, "little") + text)


def _read(n):
    b = b""
    while len(b) < n:
        try:
            c = _cin.read(n - len(b))
        except KeyboardInterrupt:
            continue  # a late Ctrl-C after an exec ended: nothing to interrupt
        if not c:
            raise SystemExit(0)  # the board was switched off
        b += c
    return b


def _run(kind, src):
    try:
        if kind == b"M":
            with open(src) as f:
                code = compile(f.read(), src.lstrip("/"), "exec")
        elif kind == b"S":
            code = compile(src, "<stdin>", "single")
        else:
            code = compile(src, "<stdin>", "exec")
        exec(code, _g)
    except SystemExit as e:
        if e.args and e.args[0] == _vb_machine.HARD_RESET_MAGIC:
            _reply(b"R", 0, b"")
        else:
            _reply(b"X", 0, b"")
        return
    except BaseException as e:
        s = io.StringIO()
        sys.print_exception(e, s)
        # drop this file's own frame: a board's traceback starts at <stdin> / main.py
        lines = [ln for ln in s.getvalue().split("\\n") if "_vb_worker.py" not in ln]
        _reply(b"D", 1, "\\n".join(lines).encode())
        return
    _reply(b"D", 0, b"")


_v = sys.implementation.version
_reply(b"H", 0, ("v%d.%d.%d" % (_v[0], _v[1], _v[2]) + " on " + sys.version.split(" on ")[-1]).encode())
while True:
    try:
        _h = _read(5)
        _src = _read(int.from_bytes(_h[1:5], "little")).decode()
        _run(_h[0:1], _src)
    except KeyboardInterrupt:
        pass
'''


def find_micropython() -> str | None:
    """The MicroPython unix port: $METAL_MICROPYTHON, next to this Python, or on PATH."""
    env = os.environ.get("METAL_MICROPYTHON")
    if env:
        return env
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    return shutil.which("micropython")


class _BreakIn:
    """The break-in detector (same rule as boards/common/machine_hal.py StreamLink.read)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.after_zero = True
        self.armed = False
        self.last = 0.0

    def feed(self, data: bytes, now: float) -> int:
        """Index of the 0x03 that completes a break-in in ``data``, or -1."""
        boundary = self.after_zero or now - self.last >= BREAK_GAP_S
        for i, b in enumerate(data):
            if b == 3 and self.armed:
                self.armed = False
                self.after_zero = False
                self.last = now
                return i
            self.armed = boundary and b == 13
            boundary = b == 0
        if data:
            self.after_zero = boundary
            self.last = now
        return -1


class _Worker:
    """One MicroPython process: its pipes and the control channel."""

    def __init__(self, exe: str, runtime: Path, flash: Path, env: dict[str, str],
                 heapsize: str | None) -> None:
        cin_r, self.cin_w = os.pipe()  # host -> worker commands
        self.cout_r, cout_w = os.pipe()  # worker -> host replies
        cmd = [exe]
        if heapsize:
            cmd += ["-X", "heapsize=" + heapsize]
        cmd += [str(runtime / "_vb_worker.py"), str(cin_r), str(cout_w), str(flash)]
        try:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(cin_r, cout_w), cwd=str(flash), env=env, start_new_session=True)
        finally:
            os.close(cin_r)
            os.close(cout_w)
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        self.stdin = self.proc.stdin.fileno()
        self.stdout = self.proc.stdout.fileno()
        self.stderr = self.proc.stderr.fileno()
        for fd in (self.stdin, self.stdout, self.stderr, self.cout_r):
            os.set_blocking(fd, False)
        self.ctl_buf = b""

    def send(self, kind: bytes, text: str) -> None:
        data = text.encode()
        msg = kind + struct.pack("<I", len(data)) + data
        # The worker reads commands only when idle: a blocking write is fine. A
        # dead worker is noticed by the board's housekeeping.
        try:
            os.write(self.cin_w, msg)
        except OSError:
            pass

    def messages(self) -> list[tuple[bytes, int, bytes]]:
        """Complete control messages received so far."""
        while True:
            try:
                chunk = os.read(self.cout_r, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            self.ctl_buf += chunk
        out = []
        while len(self.ctl_buf) >= 6:
            n = struct.unpack_from("<I", self.ctl_buf, 2)[0]
            if len(self.ctl_buf) < 6 + n:
                break
            out.append((self.ctl_buf[0:1], self.ctl_buf[1], self.ctl_buf[6:6 + n]))
            self.ctl_buf = self.ctl_buf[6 + n:]
        return out

    def interrupt(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not fail
            pass
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if f:
                    f.close()
            except OSError:
                pass
        for fd in (self.cin_w, self.cout_r):
            try:
                os.close(fd)
            except OSError:
                pass


class VirtualBoard:
    """A MicroPython board on a pty whose flash filesystem is ``flash_dir``.

    ``start()`` opens the pty and powers the board on (it runs ``/main.py``
    if the flash holds one); ``port`` is the path to open; ``stop()`` powers
    it off and closes everything. Also a context manager.
    """

    def __init__(self, flash_dir: str | os.PathLike[str], *, micropython: str | None = None,
                 uid: str = "e6605838", raw_paste: bool = True, heapsize: str | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.flash_dir = Path(flash_dir).resolve()
        self.flash_dir.mkdir(parents=True, exist_ok=True)
        exe = micropython or find_micropython()
        if not exe:
            raise FileNotFoundError("MicroPython unix port not found (set METAL_MICROPYTHON)")
        self.micropython = exe
        self.uid = uid
        self.raw_paste = raw_paste
        self.heapsize = heapsize
        self._log = log
        self.port = ""
        self.state = "off"
        self.boots = 0  # how many times the board booted (power-on, resets)
        self.main_runs = 0  # how many times /main.py was started
        self.dropped = 0  # bytes dropped (firmware stdin full, or nobody reading the pty)
        self.version = ""
        self._master = -1
        self._slave = -1
        self._runtime: Path | None = None
        self._worker: _Worker | None = None
        self._sel: selectors.BaseSelector | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake_r = self._wake_w = -1
        self._cond = threading.Condition()
        self._out = bytearray()  # waiting for the pty
        self._in = bytearray()  # host bytes not yet consumed by the REPL
        self._line = bytearray()  # friendly REPL line / raw REPL code
        self._cont = bytearray()  # friendly REPL: lines of a compound statement so far
        self._paste_left = 0  # raw paste: bytes the host may still send in this window
        self._pasting = False
        self._repl = "friendly"  # the REPL mode a soft reset returns to
        self._cause = PWRON_RESET
        self._boot_kind = "power"
        self._boot_deadline = 0.0
        self._interrupt_at = 0.0
        self._break = _BreakIn()
        self._pending_reset: str | None = None
        self._master_events = 0
        self._out_fds: set[int] = set()  # worker output fds currently registered
        self._worker_open: set[int] = set()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> VirtualBoard:
        self._runtime = Path(tempfile.mkdtemp(prefix="metal-vboard-"))
        (self._runtime / "_vb_worker.py").write_text(WORKER)
        (self._runtime / "_vb_machine.py").write_text(MACHINE_SHIM)
        (self._runtime / "_vb_os.py").write_text(OS_SHIM)
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line discipline: a serial port
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._master, selectors.EVENT_READ, "host")
        self._master_events = selectors.EVENT_READ
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._boot("power")
        self._thread = threading.Thread(target=self._run, name="virtual-board", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._kill_worker()
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = self._wake_r = self._wake_w = -1
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)
            self._runtime = None
        self._set_state("off")

    def __enter__(self) -> VirtualBoard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Press the reset button (from any thread)."""
        self._pending_reset = "hard"
        os.write(self._wake_w, b"r")

    def wait_state(self, *states: str, timeout: float = 10.0, min_boots: int = 0) -> str:
        """Block until ``state`` is one of ``states`` (and the board booted at least
        ``min_boots`` times); returns it. TimeoutError otherwise."""
        end = time.monotonic() + timeout
        with self._cond:
            while not (self.state in states and self.boots >= min_boots):
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"virtual board: state {self.state!r} (boots {self.boots}), "
                                       f"wanted {states} (boots >= {min_boots})")
                self._cond.wait(left)
            return self.state

    # -- helpers ---------------------------------------------------------------------------
    def _debug(self, msg: str) -> None:
        if self._log is not None:
            self._log("virtual board: " + msg)

    def _set_state(self, state: str) -> None:
        with self._cond:
            self.state = state
            self._cond.notify_all()
        self._debug("state " + state)

    def _emit(self, data: bytes) -> None:
        self._out += data
        self._flush()
        if self.state in ("main", "interrupting") and len(self._out) > OUT_QUEUE_MAX:
            cut = len(self._out) - OUT_QUEUE_MAX
            del self._out[:cut]
            self.dropped += cut

    def _flush(self) -> None:
        while self._out:
            try:
                n = os.write(self._master, self._out)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.EIO:
                    return
                raise
            del self._out[:n]

    def _update_interest(self) -> None:
        """Select on what can make progress. Board -> host output: while main.py
        runs, the queue drops its oldest bytes beyond OUT_QUEUE_MAX (a firmware
        never blocks on a port nobody reads); in the REPL the worker's output is
        not read while the queue is full, so it blocks (back-pressure, like a
        board whose host is slow)."""
        sel = self._sel
        assert sel is not None
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if self._out else 0)
        if want != self._master_events:
            sel.modify(self._master, want, "host")
            self._master_events = want
        wanted: set[int] = set()
        if self.state in ("main", "interrupting") or len(self._out) < OUT_QUEUE_MAX:
            wanted = set(self._worker_open)
        for fd in self._out_fds - wanted:
            try:
                sel.unregister(fd)
            except (KeyError, ValueError):
                pass
        for fd in wanted - self._out_fds:
            sel.register(fd, selectors.EVENT_READ, "out")
        self._out_fds = wanted

    def _banner(self) -> bytes:
        return (f"MicroPython {self.version}; metal virtual board (unix port)\r\n"
                'Type "help()" for more information.\r\n').encode()

    def _kill_worker(self) -> None:
        w = self._worker
        if w is None:
            return
        self._worker = None
        if self._sel is not None:
            for fd in (w.stdout, w.stderr, w.cout_r):
                try:
                    self._sel.unregister(fd)
                except (KeyError, ValueError):
                    pass
        self._out_fds.clear()
        self._worker_open = set()
        w.close()

    def _boot(self, kind: str) -> None:
        """kind: power | hard | soft | repl (a fresh worker after an interrupt: no main.py)."""
        self._kill_worker()
        assert self._runtime is not None and self._sel is not None
        if kind in ("power", "hard"):
            self._in.clear()  # a reset clears the UART
            self._repl = "friendly"
            self._cause = PWRON_RESET if kind == "power" else HARD_RESET
        elif kind == "soft":
            self._emit(SOFT_REBOOT)
        self._line.clear()
        self._cont.clear()
        self._pasting = False
        self._boot_kind = kind
        env = dict(os.environ)
        env["MICROPYPATH"] = f"{self._runtime}:{self.flash_dir / 'lib'}"
        env["VB_RESET_CAUSE"] = str(self._cause if kind != "soft" else SOFT_RESET)
        env["VB_UID"] = self.uid
        self._worker = _Worker(self.micropython, self._runtime, self.flash_dir, env, self.heapsize)
        w = self._worker
        self._sel.register(w.cout_r, selectors.EVENT_READ, "ctl")
        self._worker_open = {w.stdout, w.stderr}  # until they reach EOF
        self._boot_deadline = time.monotonic() + BOOT_TIMEOUT_S
        if kind != "repl":
            self.boots += 1
        self._debug(f"boot ({kind}), worker pid {w.proc.pid}")
        self._set_state("boot")

    def _booted(self) -> None:
        """The worker is up: run /main.py, or show the REPL."""
        w = self._worker
        assert w is not None
        runs_main = self._boot_kind in ("power", "hard") or (
            self._boot_kind == "soft" and self._repl == "friendly")
        if runs_main and (self.flash_dir / "main.py").is_file():
            self._break.reset()
            self.main_runs += 1
            self._set_state("main")
            w.send(b"M", "/main.py")
            if self._in:  # bytes the host sent while the board booted
                pending = bytes(self._in)
                self._in.clear()
                self._to_firmware(pending)
        elif self._boot_kind == "soft" and self._repl == "raw":
            self._emit(RAW_BANNER + b">")
            self._set_state("raw")
            self._process_input()
        else:
            self._emit(self._banner() + b">>> ")
            self._set_state("friendly")
            self._process_input()

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        assert self._sel is not None
        try:
            while not self._stop.is_set():
                self._update_interest()
                for key, ev in self._sel.select(0.05):
                    if self._stop.is_set():
                        break
                    if key.data == "host":
                        if ev & selectors.EVENT_READ:
                            self._read_host()
                    elif key.data == "out":
                        self._read_worker_output(key.fd)
                    elif key.data == "ctl":
                        self._read_ctl()
                    elif key.data == "wake":
                        try:
                            os.read(self._wake_r, 64)
                        except BlockingIOError:
                            pass
                if self._stop.is_set():
                    break
                if self._pending_reset:
                    kind, self._pending_reset = self._pending_reset, None
                    self._boot(kind)
                self._housekeeping()
                self._flush()
        except Exception as e:  # pragma: no cover - a bug here must be visible
            self._debug(f"crashed: {e!r}")
            sys.stderr.write(f"virtual board thread crashed: {e!r}\n")
            raise

    def _housekeeping(self) -> None:
        w = self._worker
        if w is None:
            return
        now = time.monotonic()
        if w.proc.poll() is not None:
            # Drain what it said last (a reply may be in the pipe still).
            self._read_ctl()
            if self._worker is not w:
                return
            code = w.proc.returncode
            self._debug(f"worker exited with {code} in state {self.state}")
            if self.state == "interrupting":
                self._emit(b"\r\nKeyboardInterrupt: \r\n")
                self._boot("repl")
            else:
                self._emit(f"\r\n[virtual board: MicroPython exited ({code}); resetting]\r\n".encode())
                self._boot("hard")
            return
        if self.state == "boot" and now > self._boot_deadline:
            self._emit(b"\r\n[virtual board: MicroPython did not start; resetting]\r\n")
            self._boot("hard")
        elif self.state == "interrupting" and now - self._interrupt_at > INTERRUPT_GRACE_S:
            self._debug("worker ignored SIGINT: killing it")
            w.proc.kill()

    def _read_host(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno == errno.EIO:  # no process has the slave open: nothing to read
                return
            raise
        if not data:
            return
        if self.state == "main":
            self._to_firmware(data)
        else:
            self._in += data
            self._process_input()

    def _to_firmware(self, data: bytes) -> None:
        w = self._worker
        assert w is not None
        i = self._break.feed(data, time.monotonic())
        if i >= 0:
            self._write_stdin(w, data[:i])
            self._in += data[i + 1:]
            self._debug("break-in: interrupting main.py")
            self._interrupt()
            return
        self._write_stdin(w, data)

    def _write_stdin(self, w: _Worker, data: bytes) -> None:
        if not data:
            return
        try:
            n = os.write(w.stdin, data)
        except BlockingIOError:
            n = 0
        except BrokenPipeError:
            return
        self.dropped += len(data) - n

    def _interrupt(self) -> None:
        w = self._worker
        assert w is not None
        self._interrupt_at = time.monotonic()
        self._set_state("interrupting")
        w.interrupt()

    def _read_worker_output(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._worker_open.discard(fd)
            return
        self._emit_output(data)

    def _emit_output(self, data: bytes) -> None:
        if self.state == "exec_line":
            data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        self._emit(data)

    def _drain_output(self) -> None:
        """Everything the worker printed before its reply (the pipes hold it already)."""
        w = self._worker
        if w is None:
            return
        for fd in (w.stdout, w.stderr):
            while True:
                try:
                    data = os.read(fd, 65536)
                except (BlockingIOError, OSError):
                    break
                if not data:
                    break
                self._emit_output(data)

    def _read_ctl(self) -> None:
        w = self._worker
        if w is None:
            return
        for kind, status, text in w.messages():
            if self._worker is not w:
                return
            self._on_reply(kind, status, text)

    def _on_reply(self, kind: bytes, status: int, text: bytes) -> None:
        if kind == b"H":
            self.version = text.decode(errors="replace")
            self._booted()
            return
        self._drain_output()
        if kind == b"R":
            self._debug("machine.reset()")
            self._boot("hard")
            return
        state = self.state
        if kind == b"X":
            if state == "exec":
                self._emit(b"\x04\x04")
            self._boot("soft")
            return
        # kind D: the exec, line or main.py finished
        if state == "exec":
            self._emit(b"\x04" + text + b"\x04>")
            self._set_state("raw")
        elif state == "exec_line":
            self._emit(text.replace(b"\n", b"\r\n") + b">>> ")
            self._set_state("friendly")
        else:  # main or interrupting: main.py ended; the board falls into the REPL
            self._emit(text.replace(b"\n", b"\r\n") + self._banner() + b">>> ")
            self._set_state("friendly")
        self._process_input()

    # -- the REPL ----------------------------------------------------------------------------
    def _process_input(self) -> None:
        while self._in and self.state in ("friendly", "raw"):
            if self.state == "raw":
                self._raw_step()
            else:
                self._friendly_step()
        if self._in and self.state in ("exec", "exec_line"):
            i = self._in.find(b"\x03")
            if i >= 0:
                del self._in[: i + 1]  # Ctrl-C interrupts the running code
                self._interrupt_exec()

    def _interrupt_exec(self) -> None:
        w = self._worker
        if w is not None:
            self._interrupt_at = time.monotonic()
            w.interrupt()

    def _raw_step(self) -> None:
        if self._pasting:
            self._paste_step()
            return
        b = self._in[0]
        del self._in[0]
        if b == 0x01:  # Ctrl-A: raw REPL again, or the raw-paste request \x05A\x01
            if self._line == b"\x05A":
                self._line.clear()
                if self.raw_paste:
                    self._emit(b"R\x01" + struct.pack("<H", RAW_PASTE_WINDOW))
                    self._pasting = True
                    self._paste_left = RAW_PASTE_WINDOW
                else:
                    self._emit(b"R\x00")
                return
            self._line.clear()
            self._emit(RAW_BANNER + b">")
        elif b == 0x02:  # Ctrl-B: friendly REPL
            self._line.clear()
            self._repl = "friendly"
            self._emit(b"\r\n" + self._banner() + b">>> ")
            self._set_state("friendly")
        elif b == 0x03:
            self._line.clear()
        elif b == 0x04:
            self._emit(b"OK")
            if not self._line:
                self._emit(b"\r\n")
                self._boot("soft")
                return
            code = self._line.decode(errors="replace")
            self._line.clear()
            self._exec("exec", b"E", code)
        else:
            self._line.append(b)

    def _paste_step(self) -> None:
        # Raw paste: the host sends at most a window before our \x01; \x04 ends it.
        i = 0
        n = len(self._in)
        while i < n:
            b = self._in[i]
            i += 1
            if b == 0x04:
                del self._in[:i]
                self._pasting = False
                self._emit(b"\x04")
                code = self._line.decode(errors="replace")
                self._line.clear()
                self._exec("exec", b"E", code)
                return
            if b == 0x03:  # abandon: tell the host, drop what it sent
                del self._in[:i]
                self._pasting = False
                self._line.clear()
                self._emit(b"\x04>")
                return
            self._line.append(b)
            self._paste_left -= 1
            if self._paste_left <= 0:
                self._paste_left = RAW_PASTE_WINDOW
                self._emit(b"\x01")
        del self._in[:n]

    def _exec(self, state: str, kind: bytes, code: str) -> None:
        w = self._worker
        assert w is not None
        self._set_state(state)
        w.send(kind, code)

    def _friendly_step(self) -> None:
        b = self._in[0]
        del self._in[0]
        if b == 0x01:
            self._line.clear()
            self._cont.clear()
            self._repl = "raw"
            self._emit(b"\r\n" + RAW_BANNER + b">")
            self._set_state("raw")
        elif b == 0x02:
            self._line.clear()
            self._cont.clear()
            self._emit(b"\r\n" + self._banner() + b">>> ")
        elif b == 0x03:
            self._line.clear()
            self._cont.clear()
            self._emit(b"\r\n>>> ")
        elif b == 0x04:
            if not self._line and not self._cont:
                self._emit(b"\r\n")
                self._boot("soft")
        elif b in (0x08, 0x7F):
            if self._line:
                self._line.pop()
                self._emit(b"\x08 \x08")
        elif b == 0x0D:  # Enter (a terminal's LF after it is ignored below)
            self._emit(b"\r\n")
            self._friendly_line()
        elif b >= 0x20 or b == 0x09:
            self._line.append(b)
            self._emit(bytes([b]))

    def _friendly_line(self) -> None:
        line = bytes(self._line)
        self._line.clear()
        if self._cont:
            if line.strip():
                self._cont += line + b"\n"
                self._emit(b"... ")
                return
            code = bytes(self._cont)
            self._cont.clear()
        elif line.rstrip().endswith(b":"):
            self._cont += line + b"\n"
            self._emit(b"... ")
            return
        elif not line.strip():
            self._emit(b">>> ")
            return
        else:
            code = line
        self._exec("exec_line", b"S", code.decode(errors="replace"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m metal.host.virtual_board",
        description="Run a virtual MicroPython board on a pty (flash it with scripts/flash.sh).")
    ap.add_argument("--flash", default=None,
                    help="directory that plays the board's flash filesystem (default: a temp dir)")
    ap.add_argument("--micropython", default=None, help="the MicroPython unix port binary")
    ap.add_argument("--uid", default="e6605838", help="machine.unique_id() as hex")
    ap.add_argument("--no-raw-paste", action="store_true", help="refuse raw-paste mode")
    ap.add_argument("-v", "--verbose", action="store_true", help="log REPL state changes to stderr")
    args = ap.parse_args(argv)
    flash = args.flash or tempfile.mkdtemp(prefix="metal-vflash-")

    def log(msg: str) -> None:
        sys.stderr.write(msg + "\n")

    board = VirtualBoard(flash, micropython=args.micropython, uid=args.uid,
                         raw_paste=not args.no_raw_paste, log=log if args.verbose else None)
    board.start()
    print(f"virtual board on {board.port} (flash: {board.flash_dir})", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        board.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
