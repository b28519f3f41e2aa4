"""A simulated serial line for link tests: two directions, a simulated clock.

Each ``Direction`` is a one-way UART between a writer and a reader:

* time is an integer number of microseconds owned by the caller (``now_us``);
* a written frame occupies the line for ``len * byte_us`` (bandwidth) after
  whatever is already queued, then arrives ``latency_us`` later, in order;
* ``writable(now_us)`` models a transmit FIFO of ``tx_buffer`` bytes: the
  writer should stop polling its link when the line is that far behind;
* impairments, all from one seeded ``random.Random``: whole-frame loss
  (``drop``), bit errors on the bytes of every frame at ``ber`` per bit
  (delimiters included, so a flipped bit can split or merge frames),
  duplication (``dup``: the frame is sent twice), and stalls (``stall``: with
  this probability per frame, the line stops for ``stall_us`` first);
* ``drop_filter(frame, direction) -> bool`` drops chosen frames
  deterministically, ``cut = True`` drops everything.

Counters (``frames``, ``dropped``, ``corrupted_frames``, ``bit_errors``,
``duplicated``, ``stalls``) let tests check that the impairments happened.
"""

import math
import random
from collections import deque

from metal.core.cobs import cobs_decode


class Direction:
    def __init__(
        self,
        rng,
        latency_us=2000,
        byte_us=87,
        drop=0.0,
        ber=0.0,
        dup=0.0,
        stall=0.0,
        stall_us=200_000,
        tx_buffer=512,
        drop_filter=None,
        name="",
    ):
        self.rng = rng
        self.latency_us = latency_us
        self.byte_us = byte_us
        self.drop = drop
        self.ber = ber
        self.dup = dup
        self.stall = stall
        self.stall_us = stall_us
        self.tx_buffer = tx_buffer
        self.drop_filter = drop_filter
        self.cut = False
        self.name = name
        self._q = deque()  # (arrival_us, bytes), arrival non-decreasing
        self._line_free = 0
        self._bits_to_error = self._draw_gap()
        self.frames = 0
        self.bytes = 0
        self.dropped = 0
        self.corrupted_frames = 0
        self.bit_errors = 0
        self.duplicated = 0
        self.stalls = 0
        self.log = []  # (now_us, frame bytes as written) when record is True
        self.record = False

    def _draw_gap(self):
        if self.ber <= 0.0:
            return 1 << 62
        u = self.rng.random()
        return int(math.log(1.0 - u) / math.log(1.0 - self.ber))

    def writable(self, now_us):
        return self._line_free - now_us < self.tx_buffer * self.byte_us

    def busy_until(self):
        return self._line_free

    def _corrupt(self, frame):
        nbits = len(frame) * 8
        if self._bits_to_error >= nbits:
            self._bits_to_error -= nbits
            return frame
        buf = bytearray(frame)
        pos = self._bits_to_error
        while pos < nbits:
            buf[pos >> 3] ^= 1 << (pos & 7)
            self.bit_errors += 1
            pos += 1 + self._draw_gap()
        self._bits_to_error = pos - nbits
        self.corrupted_frames += 1
        return bytes(buf)

    def write(self, frame, now_us):
        frame = bytes(frame)
        self.frames += 1
        self.bytes += len(frame)
        if self.record:
            self.log.append((now_us, frame))
        rng = self.rng
        if self.stall and rng.random() < self.stall:
            self.stalls += 1
            self._line_free = max(self._line_free, now_us) + self.stall_us
        copies = 2 if (self.dup and rng.random() < self.dup) else 1
        if copies == 2:
            self.duplicated += 1
        lost = self.cut or (self.drop and rng.random() < self.drop)
        if not lost and self.drop_filter is not None and self.drop_filter(frame, self):
            lost = True
        for _ in range(copies):
            start = max(self._line_free, now_us)
            self._line_free = start + len(frame) * self.byte_us
            if lost:
                continue  # it took the line time, then vanished
            data = self._corrupt(frame) if self.ber else frame
            self._q.append((self._line_free + self.latency_us, data))
        if lost:
            self.dropped += 1

    def read(self, now_us):
        q = self._q
        if not q or q[0][0] > now_us:
            return b""
        parts = []
        while q and q[0][0] <= now_us:
            parts.append(q.popleft()[1])
        return b"".join(parts)

    def in_transit(self):
        return len(self._q)


class Channel:
    """Two directions (``a2b`` and ``b2a``) sharing one seeded RNG and one clock."""

    def __init__(self, seed=1, **kw):
        self.rng = random.Random(seed)
        b2a_kw = dict(kw)
        self.a2b = Direction(self.rng, name="a2b", **kw)
        self.b2a = Direction(self.rng, name="b2a", **b2a_kw)
        self.now_us = 0

    def advance(self, dt_us):
        self.now_us += dt_us
        return self.now_us


def frame_header(frame):
    """(type, flags, seq, ack) of a wire frame, or None if it does not decode."""
    n = len(frame)
    if n and frame[n - 1] == 0:
        n -= 1
    body = bytearray(256)
    m = cobs_decode(frame, 0, n, body, 0)
    if m < 6:
        return None
    return (body[0] & 0x0F, body[1], body[2], body[3])
