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
from metal.core.crc16 import TABLE as _CRC_TABLE, crc16
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
    be None when ``p_len`` is 0). If ``payload is scratch`` and ``p_start`` is
    HEADER_LEN the payload is already in place (built there with
    ``Encoder.reset(HEADER_LEN)``) and is not copied. ``scratch`` needs
    MAX_BODY + CRC_LEN bytes (its contents afterwards are unspecified). Header
    fields are masked to their widths (``ftype`` to 4 bits, the rest to 8).
    Returns the number of bytes written, or -1 if ``p_len`` is negative or
    above MAX_PAYLOAD, or a buffer is too small.
    """
    if p_len < 0 or p_len > MAX_PAYLOAD:
        return -1
    n = HEADER_LEN + p_len
    if len(scratch) < n + CRC_LEN:
        return -1
    scratch[0] = (PROTO_VERSION << 4) | (ftype & 0x0F)
    scratch[1] = flags & 0xFF
    scratch[2] = seq & 0xFF
    scratch[3] = ack & 0xFF
    m = n + CRC_LEN  # <= 254: COBS adds one code byte, then the delimiter
    if out_start + m + 2 > len(out):
        # ``out`` may be too small for this frame: the checked three-pass path
        return _encode_checked(payload, p_start, p_len, scratch, out, out_start)

    # One pass over header, payload and CRC computes the CRC and COBS-encodes
    # at once, reading the payload where it is (no copy into scratch). This is
    # cobs.cobs_encode with crc16.crc16 folded in; ``out`` has room for the
    # longest encoding (checked above), so the loop needs no bounds checks.
    # Three pieces: scratch[0:4] (header), the payload, scratch[n:n+2] (CRC,
    # stored once the payload is done).
    t = _CRC_TABLE
    crc = 0xFFFF
    code_pos = out_start  # where the current group's code byte goes
    o = out_start + 1
    code = 1
    full = 0  # 1 while the last group was closed by a full 254-byte run
    src = scratch
    i = 0
    stop = HEADER_LEN
    piece = 0
    while True:
        while i < stop:
            b = src[i]
            i += 1
            crc = ((crc << 8) & 0xFF00) ^ t[((crc >> 8) ^ b) & 0xFF]
            if b == 0:
                out[code_pos] = code
                code_pos = o
                o += 1
                code = 1
                full = 0
            else:
                out[o] = b
                o += 1
                code += 1
                if code == 0xFF:
                    out[code_pos] = 0xFF
                    code = 1
                    full = 1
                    code_pos = o
                    o += 1
        if piece == 0:
            piece = 1
            if p_len:
                src = payload
                i = p_start
                stop = p_start + p_len
        elif piece == 1:
            piece = 2
            scratch[n] = crc >> 8
            scratch[n + 1] = crc & 0xFF
            src = scratch
            i = n
            stop = n + CRC_LEN
        else:
            break
    if full and code == 1:
        o -= 1  # a final 254-byte run: no trailing empty group (as cobs_encode)
    else:
        out[code_pos] = code
    out[o] = 0
    return o + 1 - out_start


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
    """

    def __init__(self):
        # One buffer: frames accumulate here and are COBS-decoded in place.
        self._acc = bytearray(MAX_WIRE)
        self.body = self._acc
        self._n = 0
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

    def reset(self):
        """Drop any half-received frame (counters are kept)."""
        self._n = 0
        self._discard = False
        self.status = -1

    def _drop(self, code):
        errs = self.errors
        errs[code] = (errs[code] + 1) & _WRAP
        self.status = code

    def feed(self, data, start, end):
        """Consume ``data[start:end]`` up to the end of one frame; return the next index."""
        acc = self._acc
        n = self._n
        discard = self._discard
        i = start
        while i < end:
            b = data[i]
            i += 1
            if b == 0:
                if discard:
                    discard = False
                    continue
                if n == 0:
                    continue  # empty frame / flush delimiter
                self._n = 0
                self._discard = False
                self._check(n)
                return i
            if discard:
                continue
            if n >= _MAX_ENC:
                self._n = 0
                self._discard = True
                self._drop(E_OVERSIZE)
                return i
            acc[n] = b
            n += 1
        self._n = n
        self._discard = discard
        self.status = -1
        return i

    def _check(self, n):
        # COBS decode in place and CRC in one pass. _acc never holds a 0x00
        # (feed() ends the frame there), so only the code bytes need checking.
        # The CRC runs over the CRC bytes too: for this CRC (no reflection, no
        # final XOR) a body followed by its big-endian CRC leaves 0, so a
        # non-zero result is exactly a mismatch (what cobs_decode + crc16 +
        # a compare found in three passes).
        body = self._acc
        t = _CRC_TABLE
        crc = 0xFFFF
        i = 0
        o = 0
        while i < n:
            code = body[i]
            i += 1
            stop = i + code - 1
            if stop > n:
                self._drop(E_COBS)
                return
            while i < stop:
                b = body[i]
                i += 1
                body[o] = b
                o += 1
                crc = ((crc << 8) & 0xFF00) ^ t[((crc >> 8) ^ b) & 0xFF]
            if code != 0xFF and i < n:
                body[o] = 0
                o += 1
                crc = ((crc << 8) & 0xFF00) ^ t[crc >> 8]
        if o < _MIN_DECODED:
            self._drop(E_SHORT)
            return
        if crc:
            self._drop(E_CRC)
            return
        m = o - CRC_LEN
        vt = body[0]
        if (vt >> 4) != PROTO_VERSION:
            self._drop(E_VERSION)
            return
        t = vt & 0x0F
        if t == 0 or t > T_MAX:
            self._drop(E_TYPE)
            return
        self.ftype = t
        self.flags = body[1]
        self.seq = body[2]
        self.ack = body[3]
        self.payload_len = m - HEADER_LEN
        self.frames = (self.frames + 1) & _WRAP
        self.status = E_OK
