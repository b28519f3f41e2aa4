"""Serial transport for the bridge: pyserial ports on an asyncio loop, with reconnect.

A :class:`SerialTransport` owns one board connection, addressed by anything pyserial's
``serial_for_url`` opens: a tty path (``/dev/ttyACM0``, a pty slave), ``socket://host:port``,
``rfc2217://host:port``, ``loop://``. It knows nothing about frames: bytes in, bytes out.

Threads and the loop
--------------------
pyserial is blocking, so each transport runs two daemon threads:

* the **reader** opens the port, waits for input (``select`` on the port's file descriptor
  when it has one, else a blocking ``read(1)`` with a timeout), reads everything available
  in one call and hands it to the loop with ``loop.call_soon_threadsafe(on_data, data)``.
  It also owns the connection's life cycle: open, detect the loss, close, back off, reopen.
* the **writer** drains a bounded queue filled by :meth:`SerialTransport.write`, which never
  blocks the loop (it only appends to the queue). A write that times out or fails marks the
  connection broken; the reader then closes and reopens it.

Callbacks (``on_open()``, ``on_data(bytes)``, ``on_close(reason)``) always run on the loop.

Unplug / replug
---------------
A USB serial device that disappears makes the port readable with no data (pyserial raises
"device reports readiness to read but returned no data"), a pty whose master closed raises
EIO, a socket peer that closed returns EOF ("socket disconnected"): all of them end the
connection with ``on_close(reason)``. The reader then retries opening with capped
exponential back-off: ``backoff_initial`` (0.1 s) doubling up to ``backoff_max`` (5 s), each
wait multiplied by a random factor in ``1 ± jitter`` so that many bridges restarting at once
do not retry in lockstep. The back-off restarts from the initial value once a connection has
delivered data (a port that opens and dies at once keeps backing off).

Statistics (:class:`TransportStats`) count bytes, opens, reconnects, errors and dropped
writes; frame counters live in the link (``metal.core.link`` stats).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import select
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import serial

__all__ = ["SerialTransport", "Transport", "TransportStats"]

log = logging.getLogger(__name__)

_CHUNK = 4096


@dataclass
class TransportStats:
    bytes_rx: int = 0
    bytes_tx: int = 0
    opens: int = 0  # successful opens
    reconnects: int = 0  # opens after the first one
    errors: int = 0  # failed opens, read/write errors, disconnects
    write_drops: int = 0  # writes refused: not connected or the write queue is full
    last_error: str | None = None
    connected: bool = False
    since: float | None = None  # wall time of the last open/close

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Transport(Protocol):
    """What a device session needs from a byte transport (real or fake)."""

    url: str
    stats: TransportStats

    @property
    def connected(self) -> bool: ...

    def bind(
        self,
        on_open: Callable[[], None],
        on_data: Callable[[bytes], None],
        on_close: Callable[[str], None],
    ) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def write(self, data: bytes) -> bool: ...


Opener = Callable[..., Any]


class SerialTransport:
    """One pyserial connection with reconnect; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = 115200,
        read_timeout: float = 0.1,
        write_timeout: float = 2.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        jitter: float = 0.2,
        max_write_queue: int = 256,
        opener: Opener | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("backoff: need 0 < initial <= max")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self.url = url
        self.baudrate = baudrate
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.jitter = jitter
        self.stats = TransportStats()
        self._opener: Opener = opener if opener is not None else serial.serial_for_url
        self._rng = rng if rng is not None else random.Random()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_open: Callable[[], None] = lambda: None
        self._on_data: Callable[[bytes], None] = lambda data: None
        self._on_close: Callable[[str], None] = lambda reason: None
        self._stop = threading.Event()
        self._broken = threading.Event()  # the writer saw the connection fail
        self._port: Any = None
        self._port_lock = threading.Lock()
        self._wq: queue.Queue[bytes | None] = queue.Queue(max_write_queue)
        self._reader: threading.Thread | None = None
        self._writer: threading.Thread | None = None
        self._connected = False
        #: the delays actually slept between attempts (for tests and diagnostics)
        self.backoff_history: list[float] = []

    # -- public ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    def bind(
        self,
        on_open: Callable[[], None],
        on_data: Callable[[bytes], None],
        on_close: Callable[[str], None],
    ) -> None:
        self._on_open = on_open
        self._on_data = on_data
        self._on_close = on_close

    async def start(self) -> None:
        if self._reader is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        name = f"metal-serial[{self.url}]"
        self._reader = threading.Thread(target=self._read_main, name=name + "-rx", daemon=True)
        self._writer = threading.Thread(target=self._write_main, name=name + "-tx", daemon=True)
        self._reader.start()
        self._writer.start()

    async def stop(self) -> None:
        """Close the port and end both threads (bounded by the read timeout)."""
        if self._reader is None:
            return
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._wq.put_nowait(None)
        reader, writer = self._reader, self._writer
        self._reader = self._writer = None
        deadline = max(2.0, self.read_timeout * 5 + self.write_timeout)
        await asyncio.to_thread(reader.join, deadline)
        if writer is not None:
            await asyncio.to_thread(writer.join, deadline)

    def write(self, data: bytes) -> bool:
        """Queue ``data`` for the port; False (counted) when not connected or full.

        Never blocks. The link retransmits what matters, so dropping is safe.
        """
        if not self._connected or self._stop.is_set():
            self.stats.write_drops += 1
            return False
        try:
            self._wq.put_nowait(bytes(data))
        except queue.Full:
            self.stats.write_drops += 1
            return False
        return True

    # -- threads -----------------------------------------------------------------------

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is shutting down
            loop.call_soon_threadsafe(fn, *args)

    def _open(self) -> Any:
        port = self._opener(
            self.url,
            baudrate=self.baudrate,
            timeout=self.read_timeout,
            write_timeout=self.write_timeout,
            do_not_open=True,
        )
        port.open()
        try:
            fd = port.fileno()
        except Exception:  # rfc2217://, loop:// ... have no file descriptor
            fd = None
        if fd is not None:
            # Wait with select() on the fd and read non-blocking: everything available
            # in one call, no fixed read timeout added to the latency.
            port.timeout = 0
        return port, fd

    def _sleep_backoff(self, delay: float) -> None:
        j = self.jitter
        wait = delay * (1.0 + self._rng.uniform(-j, j)) if j else delay
        wait = min(wait, self.backoff_max * (1 + j))
        self.backoff_history.append(wait)
        if len(self.backoff_history) > 64:
            del self.backoff_history[:32]
        self._stop.wait(wait)

    def _read_main(self) -> None:
        delay = self.backoff_initial
        first = True
        while not self._stop.is_set():
            try:
                port, fd = self._open()
            except Exception as exc:  # SerialException, OSError, ValueError (bad URL)
                self._error(f"open {self.url}: {exc}")
                self._sleep_backoff(delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            with self._port_lock:
                self._port = port
            self._broken.clear()
            self.stats.opens += 1
            if not first:
                self.stats.reconnects += 1
            first = False
            self._drain_write_queue()
            self._connected = True
            self.stats.connected = True
            self.stats.since = time.time()
            self._call(self._on_open)
            reason = "closed"
            got_data = False
            try:
                while not self._stop.is_set():
                    if self._broken.is_set():
                        reason = self.stats.last_error or "write failed"
                        break
                    data = self._read_some(port, fd)
                    if data:
                        self.stats.bytes_rx += len(data)
                        if not got_data:
                            got_data = True
                            delay = self.backoff_initial
                        self._call(self._on_data, data)
            except Exception as exc:
                if not self._stop.is_set():
                    reason = f"{type(exc).__name__}: {exc}"
                    self._error(reason)
            finally:
                self._connected = False
                self.stats.connected = False
                self.stats.since = time.time()
                with self._port_lock:
                    self._port = None
                with contextlib.suppress(Exception):
                    port.close()
                self._call(self._on_close, "stopped" if self._stop.is_set() else reason)
            if self._stop.is_set():
                break
            self._sleep_backoff(delay)
            delay = min(delay * 2, self.backoff_max)

    def _read_some(self, port: Any, fd: int | None) -> bytes:
        if fd is not None:
            ready, _, _ = select.select([fd], [], [], self.read_timeout)
            if not ready:
                return b""
            data = port.read(_CHUNK)  # timeout 0: what is there now
            if not data:
                # readable but nothing to read: EOF (pyserial raises for ttys already)
                raise serial.SerialException("device reports readiness to read but "
                                             "returned no data (disconnected?)")
            return bytes(data)
        data = port.read(1)  # blocks up to read_timeout
        if data:
            n = port.in_waiting
            if n:
                data += port.read(min(n, _CHUNK))
        return bytes(data)

    def _drain_write_queue(self) -> None:
        """Bytes queued for a previous connection are stale: drop them."""
        while True:
            try:
                item = self._wq.get_nowait()
            except queue.Empty:
                return
            if item is None:  # a stop request: put it back
                with contextlib.suppress(queue.Full):
                    self._wq.put_nowait(None)
                return

    def _write_main(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._wq.get(timeout=0.5)
            except queue.Empty:
                continue
            if data is None:
                return
            with self._port_lock:
                port = self._port
            if port is None:
                self.stats.write_drops += 1
                continue
            try:
                port.write(data)
                self.stats.bytes_tx += len(data)
            except Exception as exc:
                if self._stop.is_set():
                    return
                self._error(f"write: {type(exc).__name__}: {exc}")
                self._broken.set()

    def _error(self, text: str) -> None:
        self.stats.errors += 1
        self.stats.last_error = text
        log.debug("%s: %s", self.url, text)
