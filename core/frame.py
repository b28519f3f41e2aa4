"""Frame layer, board side: header + payload + CRC-16, COBS, 0x00 delimiter.

``wire = COBS(body || CRC16(body)) || 0x00`` with ``body = vt, flags, seq,
ack, payload`` (protocol.md §1). ``encode_frame`` builds one frame into a
caller buffer; ``Deframer`` eats a byte stream and yields one checked frame
at a time. Both allocate nothing after construction and never raise on
malformed input. CBOR payloads are *not* checked here: the link/app runs
``Decoder.validate`` on ``body[payload_start:payload_start + payload_len]``.

Oversize rule: a valid frame is at most MAX_WIRE (256) bytes including its
delimiter, i.e. at most MAX_WIRE - 1 encoded bytes. The MAX_WIRE-th byte
without a delimiter makes the frame oversize: E_OVERSIZE is reported at once
(exactly once) and everything up to and including the next 0x00 is discarded.
"""

from array import array

from metal.core.cobs import cobs_encode
from metal.core.compat import const
from metal.core.crc16 import TABLE_HI as _CRC_HI, TABLE_LO as _CRC_LO, crc16
from metal.core.proto import (
    CRC_LEN,
    E_COBS,
    E_COUNT,
    E_CRC,
    E_OK,
    E_OVERSIZE,
    E_SHORT,
    E_TYPE,
    E_VERSION,
    HEADER_LEN,
    MAX_PAYLOAD,
    MAX_WIRE,
    PROTO_VERSION,
    T_MAX,
)

_WRAP = const(0x3FFFFFFF)  # counters wrap mod 2**30 (small ints on a 32-bit VM)
_MAX_ENC = const(255)  # MAX_WIRE - 1: longest encoded frame without its delimiter
_MIN_DECODED = const(6)  # HEADER_LEN + CRC_LEN

# Size callers should give the ``scratch`` buffer of encode_frame.
SCRATCH_LEN = const(254)  # MAX_BODY + CRC_LEN


def encode_frame(ftype, flags, seq, ack, payload, p_start, p_len, scratch, out, out_start):
    """Encode one frame into ``out[out_start:]``, delimiter included.

    ``payload[p_start:p_start + p_len]`` is the CBOR payload (``payload`` may
    be None when ``p_len`` is 0); it is read where it is, never copied
    (it may also sit in ``scratch`` after the header, built there with
    ``Encoder.reset(HEADER_LEN)``). ``scratch`` needs MAX_BODY + CRC_LEN
    bytes (its contents afterwards are unspecified). Header fields are masked
    to their widths (``ftype`` to 4 bits, the rest to 8). Returns the number
    of bytes written, or -1 if ``p_len`` is negative or above MAX_PAYLOAD, or
    a buffer is too small. ``FrameEncoder`` does the same over several calls.
    """
    if p_len < 0 or p_len > MAX_PAYLOAD:
        return -1
    n = HEADER_LEN + p_len
    if len(scratch) < n + CRC_LEN:
        return -1
    _header(scratch, ftype, flags, seq, ack)
    if out_start + n + CRC_LEN + 2 > len(out):
        # ``out`` may be too small for this frame: the checked three-pass path
        return _encode_checked(payload, p_start, p_len, scratch, out, out_start)
    st = _ST
    st[0] = out_start
    st[1] = 0xFF
    st[2] = 0xFF
    _cobs_crc(scratch, 0, HEADER_LEN, out_start + 1, out, st)
    _cobs_crc(payload, p_start, p_start + p_len, out_start + 1 + HEADER_LEN - p_start, out, st)
    return _finish(out, out_start + 1 + n, st) - out_start


def _header(buf, ftype, flags, seq, ack):
    buf[0] = (PROTO_VERSION << 4) | (ftype & 0x0F)
    buf[1] = flags & 0xFF
    buf[2] = seq & 0xFF
    buf[3] = ack & 0xFF


# The one-pass CRC + COBS of encode_frame and FrameEncoder: cobs.cobs_encode
# with crc16.crc16 folded in. Each input byte takes exactly one output byte
# (itself, or for a 0x00 the code byte of the group it opens), so within a
# run the output index is the input index plus a constant ``d``. body + CRC
# is at most 254 bytes, so no group can reach the 254-byte run that COBS
# splits: no run check per byte. ``st`` carries the state between runs:
# [index of the open group's code byte, CRC high byte, CRC low byte].
_ST = array("i", [0, 0xFF, 0xFF])  # encode_frame's (one frame at a time)


def _cobs_crc(src, start, end, d, out, st):
    th = _CRC_HI
    tl = _CRC_LO
    cp = st[0]
    hi = st[1]
    lo = st[2]
    for i in range(start, end):
        b = src[i]
        x = hi ^ b
        hi = lo ^ th[x]
        lo = tl[x]
        if b:
            out[i + d] = b
        else:
            o = i + d
            out[cp] = o - cp
            cp = o
    st[0] = cp
    st[1] = hi
    st[2] = lo


def _finish(out, o, st):
    # the CRC (big-endian: hi then lo) at out[o], the last code byte and the
    # delimiter; returns the index after the delimiter
    cp = st[0]
    hi = st[1]
    lo = st[2]
    if hi:
        out[o] = hi
    else:
        out[cp] = o - cp
        cp = o
    o += 1
    if lo:
        out[o] = lo
    else:
        out[cp] = o - cp
        cp = o
    o += 1
    out[cp] = o - cp  # the last group: at most 254 data bytes, code <= 0xFF
    out[o] = 0
    return o + 1


class FrameEncoder:
    """``encode_frame`` spread over several calls, for a frame too costly to
    encode in one tick (the board's TELEMETRY): ``start`` takes the header
    and the payload's place, each ``step(k)`` encodes up to ``k`` more
    payload bytes. The payload must not change until the frame is done::

        idle --start()--> running --step(k) ... step(k)--> idle, frame in out
                             (step returns -1 while payload bytes remain)

    Allocates nothing after construction."""

    def __init__(self):
        self._hdr = bytearray(HEADER_LEN)
        self._st = array("i", [0, 0xFF, 0xFF])
        self.running = 0
        self._src = None
        self._out = None
        self._i = 0  # next payload index
        self._end = 0
        self._d = 0  # output index - payload index
        self._o0 = 0  # out_start

    def start(self, ftype, flags, seq, ack, payload, p_start, p_len, out, out_start):
        """Begin a frame into ``out[out_start:]`` (room for the whole frame
        needed: ``p_len + 8`` bytes). False if ``p_len`` is out of range or
        ``out`` too small; then nothing is running."""
        self.running = 0
        if p_len < 0 or p_len > MAX_PAYLOAD or out_start + HEADER_LEN + p_len + CRC_LEN + 2 > len(out):
            return False
        h = self._hdr
        _header(h, ftype, flags, seq, ack)
        st = self._st
        st[0] = out_start
        st[1] = 0xFF
        st[2] = 0xFF
        _cobs_crc(h, 0, HEADER_LEN, out_start + 1, out, st)
        self._src = payload
        self._out = out
        self._i = p_start
        self._end = p_start + p_len
        self._d = out_start + 1 + HEADER_LEN - p_start
        self._o0 = out_start
        self.running = 1
        return True

    def step(self, k):
        """Encode up to ``k`` (>= 1) more payload bytes; -1 while some remain,
        else the frame is complete: returns its length, delimiter included."""
        if not self.running:
            return -1
        i = self._i
        e = i + k
        if e < self._end:
            _cobs_crc(self._src, i, e, self._d, self._out, self._st)
            self._i = e
            return -1
        e = self._end
        _cobs_crc(self._src, i, e, self._d, self._out, self._st)
        self.running = 0
        self._src = None
        return _finish(self._out, e + self._d, self._st) - self._o0


def _encode_checked(payload, p_start, p_len, scratch, out, out_start):
    # encode_frame for an ``out`` that may be too small: copy, CRC, COBS with
    # its bounds checks (-1 when the frame does not fit).
    n = HEADER_LEN + p_len
    if p_len and (payload is not scratch or p_start != HEADER_LEN):
        d = HEADER_LEN - p_start
        for i in range(p_start, p_start + p_len):
            scratch[i + d] = payload[i]
    c = crc16(scratch, 0, n, 0xFFFF)
    scratch[n] = c >> 8
    scratch[n + 1] = c & 0xFF
    e = cobs_encode(scratch, 0, n + CRC_LEN, out, out_start)
    if e < 0 or e >= len(out):
        return -1
    out[e] = 0
    return e + 1 - out_start


class Deframer:
    """Stream-to-frame receiver.

    Call ``feed(data, start, end)`` until it has consumed everything; after
    each call ``status`` is -1 (needs more bytes), E_OK (a frame is ready in
    ``ftype``/``flags``/``seq``/``ack``/``body``/``payload_start``/
    ``payload_len``; ``body`` is valid until the next feed) or the E_* code
    of the frame just dropped. ``errors[code]`` counts drops per code,
    ``frames`` counts good frames; all wrap mod 2**30.

    Bytes are COBS-decoded into ``body`` and checksummed as they arrive (one
    pass, the state kept between feeds), so the delimiter only runs the
    checks, in protocol order: COBS (a code byte pointed past the end),
    SHORT, CRC, VERSION, TYPE. The CRC runs over the CRC bytes too: for this
    CRC (no reflection, no final XOR) a body followed by its big-endian CRC
    leaves 0, so a non-zero result is exactly a mismatch. Per byte::

        0x00, nothing since the previous 0x00 -> ignored (empty frame / flush)
        0x00 ----------------------------------> the checks; status; next frame
        other, rem > 0 ------------------------> data: body[n], CRC; rem -= 1
        other, rem == 0: a code byte c --------> the previous group's implied
                                                 0x00 if its code was < 0xFF;
                                                 rem = c - 1
        the MAX_WIRE-th byte without a 0x00 ---> E_OVERSIZE; discard up to and
                                                 including the next 0x00
    """

    def __init__(self):
        self._acc = bytearray(MAX_WIRE)
        self.body = self._acc
        self._n = 0  # decoded bytes in body
        self._rem = 0  # data bytes left in the open group (0: a code byte is next)
        self._zero = 0  # the open group ends with an implied 0x00 (1), no (0), cut short (2)
        self._nc = 0  # encoded index of the next code byte (0: nothing received yet)
        self._hi = 0xFF  # CRC so far, high and low byte
        self._lo = 0xFF
        self._discard = False
        self.status = -1
        self.ftype = 0
        self.flags = 0
        self.seq = 0
        self.ack = 0
        self.payload_start = HEADER_LEN
        self.payload_len = 0
        self.errors = array("i", [0] * E_COUNT)
        self.frames = 0

    def _restart(self):
        self._n = 0
        self._rem = 0
        self._zero = 0
        self._nc = 0
        self._hi = 0xFF
        self._lo = 0xFF

    def reset(self):
        """Drop any half-received frame (counters are kept)."""
        self._restart()
        self._discard = False
        self.status = -1

    def _drop(self, code):
        errs = self.errors
        errs[code] = (errs[code] + 1) & _WRAP
        self.status = code

    def feed(self, data, start, end):
        """Consume ``data[start:end]`` up to the end of one frame; return the next index."""
        i = start
        if self._discard:
            # after an oversize frame: everything up to and including the next 0x00
            while i < end:
                b = data[i]
                i += 1
                if not b:
                    self._discard = False
                    break
            if self._discard:
                self.status = -1
                return i
        body = self._acc
        n = self._n
        rem = self._rem
        zero = self._zero
        nc = self._nc
        hi = self._hi
        lo = self._lo
        th = _CRC_HI
        tl = _CRC_LO
        for j in range(i, end):
            b = data[j]
            if rem and b:
                # a data byte (the common case, first)
                rem -= 1
                body[n] = b
                n += 1
                x = hi ^ b
                hi = lo ^ th[x]
                lo = tl[x]
            elif b:
                # a code byte, at encoded index nc
                if nc >= _MAX_ENC:
                    # the MAX_WIRE-th byte without a delimiter
                    self._restart()
                    self._discard = True
                    self._drop(E_OVERSIZE)
                    return j + 1
                if zero:
                    # the previous group's implied 0x00 (a group follows it)
                    body[n] = 0
                    n += 1
                    x = hi
                    hi = lo ^ th[x]
                    lo = tl[x]
                zero = 1 if b < 0xFF else 0
                c = nc + b
                if c > _MAX_ENC:
                    # The group runs past the longest frame: take its data up
                    # to the limit, where the next byte is oversize (or the
                    # delimiter finds it cut short: zero = 2, a COBS error).
                    c = _MAX_ENC
                    zero = 2
                rem = c - nc - 1
                nc = c
            elif nc:
                # the delimiter of a frame: the checks, in protocol order
                self._n = 0
                self._rem = 0
                self._zero = 0
                self._nc = 0
                self._hi = 0xFF
                self._lo = 0xFF
                if rem or zero == 2:
                    self._drop(E_COBS)  # a code byte pointed past the end of the frame
                elif n < _MIN_DECODED:
                    self._drop(E_SHORT)
                elif hi | lo:
                    self._drop(E_CRC)
                else:
                    vt = body[0]
                    t = vt & 0x0F
                    if (vt >> 4) != PROTO_VERSION:
                        self._drop(E_VERSION)
                    elif t == 0 or t > T_MAX:
                        self._drop(E_TYPE)
                    else:
                        self.ftype = t
                        self.flags = body[1]
                        self.seq = body[2]
                        self.ack = body[3]
                        self.payload_len = n - CRC_LEN - HEADER_LEN
                        self.frames = (self.frames + 1) & _WRAP
                        self.status = E_OK
                return j + 1
            # else: an empty frame / flush delimiter, ignored
        self._n = n
        self._rem = rem
        self._zero = zero
        self._nc = nc
        self._hi = hi
        self._lo = lo
        self.status = -1
        return end
