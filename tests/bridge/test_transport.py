"""SerialTransport: bytes both ways on the loop, loss detection, reconnect with back-off."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import serial

from metal.host.bridge.transport import SerialTransport

T = TypeVar("T")


def run(fn: Callable[[], Awaitable[T]], timeout: float = 20) -> T:
    async def main() -> T:
        return await asyncio.wait_for(fn(), timeout=timeout)

    return asyncio.run(main())


async def until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.data = bytearray()
        self.thread_ok = True
        self.loop_thread = threading.get_ident()

    def bind(self, t: SerialTransport) -> None:
        t.bind(self.on_open, self.on_data, self.on_close)

    def _check(self) -> None:
        if threading.get_ident() != self.loop_thread:
            self.thread_ok = False

    def on_open(self) -> None:
        self._check()
        self.events.append(("open", None))

    def on_data(self, d: bytes) -> None:
        self._check()
        self.data += d

    def on_close(self, reason: str) -> None:
        self._check()
        self.events.append(("close", reason))

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.events if k == kind)


class Server:
    """A TCP server that accepts one client at a time (like the sim relay)."""

    def __init__(self) -> None:
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(4)
        self.port = self.ls.getsockname()[1]
        self.url = f"socket://127.0.0.1:{self.port}"
        self.conn: socket.socket | None = None
        self.received = bytearray()
        self._stop = False
        self._t = threading.Thread(target=self._main, daemon=True)
        self._t.start()

    def _main(self) -> None:
        self.ls.settimeout(0.05)
        while not self._stop:
            try:
                c, _ = self.ls.accept()
            except (TimeoutError, OSError):
                continue
            c.settimeout(0.05)
            self.conn = c
            while not self._stop and self.conn is c:
                try:
                    d = c.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not d:
                    break
                self.received += d

    def send(self, d: bytes) -> None:
        assert self.conn is not None
        self.conn.sendall(d)

    def drop_client(self) -> None:
        c, self.conn = self.conn, None
        if c is not None:
            c.shutdown(socket.SHUT_RDWR)
            c.close()

    def close(self) -> None:
        self._stop = True
        self.drop_client()
        self.ls.close()
        self._t.join(2)


def test_socket_roundtrip_disconnect_and_reconnect() -> None:
    srv = Server()

    async def main() -> None:
        t = SerialTransport(srv.url, backoff_initial=0.02, backoff_max=0.1)
        rec = Recorder()
        rec.bind(t)
        assert t.write(b"early") is False and t.stats.write_drops == 1
        await t.start()
        try:
            await until(lambda: rec.count("open") == 1 and srv.conn is not None, 3, "connected")
            assert rec.events == [("open", None)] and t.connected
            assert t.write(b"hello\x00")
            await until(lambda: bytes(srv.received) == b"hello\x00", 2, "server got bytes")
            srv.send(b"\x01\x02\x03\x00")
            await until(lambda: bytes(rec.data) == b"\x01\x02\x03\x00", 2, "data on the loop")
            assert t.stats.bytes_rx == 4 and t.stats.bytes_tx == 6
            # the peer goes away: detected, reported, reopened after back-off
            srv.drop_client()
            await until(lambda: rec.count("close") == 1, 3, "close")
            assert "disconnected" in rec.events[1][1]
            await until(lambda: rec.count("open") == 2 and srv.conn is not None, 3, "reopen")
            assert t.stats.reconnects == 1 and t.stats.opens == 2 and t.stats.errors >= 1
            srv.send(b"again")
            await until(lambda: bytes(rec.data).endswith(b"again"), 2, "data after reconnect")
            assert rec.thread_ok  # every callback ran on the loop thread
        finally:
            await t.stop()
        assert rec.events[-1] == ("close", "stopped") and not t.connected

    try:
        run(main)
    finally:
        srv.close()


def test_open_failures_back_off_exponentially_with_jitter_and_cap() -> None:
    attempts: list[float] = []

    def opener(url: str, **kw: Any) -> Any:
        attempts.append(time.monotonic())
        raise serial.SerialException(f"could not open port {url}: No such file")

    async def main() -> None:
        t = SerialTransport("/dev/ttyNOPE", opener=opener, backoff_initial=0.01,
                            backoff_max=0.08, jitter=0.2, rng=random.Random(1))
        await t.start()
        try:
            await until(lambda: len(attempts) >= 7, 5, "retries")
        finally:
            await t.stop()
        h = t.backoff_history
        nominal = [0.01, 0.02, 0.04, 0.08, 0.08, 0.08]
        for got, want in zip(h, nominal):
            assert want * 0.8 - 1e-9 <= got <= want * 1.2 + 1e-9, (h, nominal)
        assert len(set(h[3:6])) == 3  # jittered, not lockstep
        assert t.stats.errors >= 7 and "No such file" in (t.stats.last_error or "")
        assert t.stats.opens == 0 and not t.connected

    run(main)


def test_backoff_resets_after_a_connection_delivered_data() -> None:
    srv = Server()

    async def main() -> None:
        t = SerialTransport(srv.url, backoff_initial=0.01, backoff_max=1.0, jitter=0.0)
        rec = Recorder()
        rec.bind(t)
        await t.start()
        try:
            for i in range(3):
                await until(lambda: rec.count("open") == i + 1 and srv.conn is not None, 3,
                            "open")
                srv.send(b"x")
                await until(lambda: len(rec.data) == i + 1, 2, "data")
                srv.drop_client()
                await until(lambda: rec.count("close") == i + 1, 3, "close")
            await until(lambda: rec.count("open") == 4, 3, "open again")
            assert t.backoff_history[:3] == [0.01, 0.01, 0.01]
        finally:
            await t.stop()

    try:
        run(main)
    finally:
        srv.close()


def test_pty_unplug_detected() -> None:
    master, slave = os.openpty()
    import tty

    tty.setraw(slave)
    path = os.ttyname(slave)

    async def main() -> None:
        t = SerialTransport(path, backoff_initial=0.02, backoff_max=0.05)
        rec = Recorder()
        rec.bind(t)
        await t.start()
        try:
            await until(lambda: t.connected, 3, "open")
            os.write(master, b"abc\x00")
            await until(lambda: bytes(rec.data) == b"abc\x00", 2, "pty data")
            assert t.write(b"to-board")
            deadline = time.monotonic() + 2
            got = b""
            while len(got) < 8 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
                try:
                    os.set_blocking(master, False)
                    got += os.read(master, 64)
                except BlockingIOError:
                    pass
            assert got == b"to-board"
            os.close(slave)
            os.close(master)  # the "device" disappears
            await until(lambda: rec.count("close") >= 1, 3, "unplug detected")
            await until(lambda: t.stats.errors >= 2, 3, "reopen attempts fail")
            assert not t.connected
        finally:
            await t.stop()

    run(main)


def test_loop_url_without_file_descriptor() -> None:
    async def main() -> None:
        t = SerialTransport("loop://", read_timeout=0.05)
        rec = Recorder()
        rec.bind(t)
        await t.start()
        try:
            await until(lambda: t.connected, 2, "open")
            t.write(b"echo me\x00")
            await until(lambda: bytes(rec.data) == b"echo me\x00", 2, "loopback")
        finally:
            await t.stop()

    run(main)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        SerialTransport("loop://", backoff_initial=0)
    with pytest.raises(ValueError):
        SerialTransport("loop://", jitter=1.5)
