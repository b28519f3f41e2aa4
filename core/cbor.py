"""Allocation-free CBOR subset codec for the board (RFC 8949, protocol.md §2).

The subset: unsigned and negative integers within -2**30 .. 2**30-1, byte and
text strings, arrays and maps with definite lengths, false, true and null.
Everything else is refused with an error code, never an exception:

* ``E_CBOR``: not well-formed or truncated: a head or string running past the
  end, a container announcing more items than bytes are left, reserved
  additional-info values 28..30, a break byte or an indefinite-length integer,
  a string/container length of 2**30 or more (it can never fit a frame), and
  bytes after the item (``validate`` only).
* ``E_UNSUPPORTED``: well-formed but outside the subset: floats, tags,
  simple values other than false/true/null, indefinite-length strings and
  containers, nesting deeper than ``MAX_DEPTH`` and (``skip``/``validate``)
  map keys that are not integers.
* ``E_RANGE``: an integer (major type 0 or 1) outside the 30-bit range.
  Non-minimal encodings are accepted, including 8-byte ones whose value fits.

Nesting depth counts containers: a top-level array or map is at depth 1, an
array inside it at depth 2, and so on; a container at depth 5 is refused.
Text strings are not checked for valid UTF-8 and duplicate map keys are not
detected here (the host refuses both; on the board a schema parser sees them).

Errors are found in stream order, item by item; within one head the checks
run: reserved/indefinite -> simple values and floats -> tags -> truncated
argument -> 30-bit range -> length/count larger than the bytes left -> map
key type -> depth. ``metal.host.codec`` applies the same order, so both
sides name the same error at the same offset.

Nothing on these paths allocates on a 32-bit MicroPython: no slicing, no
tuples, no intermediate value reaches 2**30 (the top byte of a 4-byte
argument is range-checked before the bytes are combined).

``int_map_into``/``uints_into`` write the board's integer-only payloads
(RESULT, EVENT, HEARTBEAT, TELEMETRY's tail) in one call each, without an
Encoder call per item.
"""

from array import array

from metal.core.compat import const
from metal.core.proto import E_CBOR, E_OK, E_OVERFLOW, E_RANGE, E_UNSUPPORTED

# Item kinds returned by Decoder.next()/skip(). The first six equal the CBOR
# major type.
K_UINT = const(0)
K_NEG = const(1)
K_BYTES = const(2)
K_TEXT = const(3)
K_ARRAY = const(4)
K_MAP = const(5)
K_FALSE = const(6)
K_TRUE = const(7)
K_NULL = const(8)
K_ERROR = const(-1)

MAX_DEPTH = const(4)

_MT_UINT = const(0x00)
_MT_NEG = const(0x20)
_MT_BYTES = const(0x40)
_MT_TEXT = const(0x60)
_MT_ARRAY = const(0x80)
_MT_MAP = const(0xA0)
_MT_SIMPLE = const(0xE0)


class Encoder:
    """Writes subset CBOR into a caller-owned bytearray, minimal encodings only.

    ``err`` is sticky: after the first E_OVERFLOW (no room) or E_RANGE (an
    integer or count outside 0 .. 2**30-1 / -2**30 .. 2**30-1) nothing more is
    written and ``pos`` stays at the end of the last complete item.
    """

    def __init__(self, buf):
        self.buf = buf
        self.pos = 0
        self.err = E_OK
        self._cap = len(buf)

    def reset(self, pos=0):
        """Start a new item at ``pos`` (e.g. HEADER_LEN to build a frame body in place)."""
        self.pos = pos
        self.err = E_OK
        self._cap = len(self.buf)

    def _head(self, mt, v, extra):
        # Write a head for 0 <= v < 2**30 plus room check for ``extra`` more
        # bytes. Returns the position after the head, or -1.
        if self.err:
            return -1
        if v < 0 or (v >> 30):
            self.err = E_RANGE
            return -1
        if v < 24:
            n = 1
        elif v < 0x100:
            n = 2
        elif v < 0x10000:
            n = 3
        else:
            n = 5
        p = self.pos
        if p + n + extra > self._cap:
            self.err = E_OVERFLOW
            return -1
        buf = self.buf
        if n == 1:
            buf[p] = mt | v
        elif n == 2:
            buf[p] = mt | 24
            buf[p + 1] = v
        elif n == 3:
            buf[p] = mt | 25
            buf[p + 1] = v >> 8
            buf[p + 2] = v & 0xFF
        else:
            buf[p] = mt | 26
            buf[p + 1] = v >> 24
            buf[p + 2] = (v >> 16) & 0xFF
            buf[p + 3] = (v >> 8) & 0xFF
            buf[p + 4] = v & 0xFF
        p += n
        self.pos = p
        return p

    def uint(self, v):
        self._head(_MT_UINT, v, 0)

    def int(self, v):
        if v >= 0:
            self._head(_MT_UINT, v, 0)
        else:
            self._head(_MT_NEG, -1 - v, 0)

    def array(self, n):
        self._head(_MT_ARRAY, n, 0)

    def map(self, n):
        self._head(_MT_MAP, n, 0)

    def bool(self, b):
        self._head(_MT_SIMPLE, 21 if b else 20, 0)

    def null(self):
        self._head(_MT_SIMPLE, 22, 0)

    def _copy(self, src, start, n):
        buf = self.buf
        p = self.pos
        d = p - start
        for i in range(start, start + n):
            buf[i + d] = src[i]
        self.pos = p + n

    def bytes_from(self, src, start, n):
        """A byte string holding ``src[start:start+n]``."""
        if self._head(_MT_BYTES, n, n) >= 0:
            self._copy(src, start, n)

    def text_from(self, src, start, n):
        """A text string holding the (UTF-8) bytes ``src[start:start+n]``."""
        if self._head(_MT_TEXT, n, n) >= 0:
            self._copy(src, start, n)

    def reserve_bytes(self, n):
        """A byte string of ``n`` bytes the caller fills in place.

        Writes the head, advances ``pos`` past the data area and returns the
        offset of its first byte in ``buf`` (-1 on error).
        """
        p = self._head(_MT_BYTES, n, n)
        if p >= 0:
            self.pos = p + n
        return p

    def raw(self, src, start, n):
        """Copy ``n`` bytes of already-encoded CBOR from ``src[start:]``."""
        if self.err:
            return
        if n < 0 or self.pos + n > self._cap:
            self.err = E_OVERFLOW
            return
        self._copy(src, start, n)


class Decoder:
    """Pull parser over ``buf[start:end]``.

    ``next()`` reads one head and returns its kind: for K_UINT/K_NEG ``val``
    is the integer, for K_BYTES/K_TEXT ``val`` is the length and ``start`` the
    offset of the data (already skipped), for K_ARRAY/K_MAP ``val`` is the
    item/pair count (the caller reads the children), for K_FALSE/K_TRUE/K_NULL
    ``val`` is 0/1/0. On K_ERROR, ``err`` holds the E_* code and ``pos`` is
    left at the head of the offending item (``end`` when no item is left).
    """

    def __init__(self):
        self.buf = b""
        self.pos = 0
        self.end = 0
        self.val = 0
        self.start = 0
        self.err = E_OK
        self._rem = array("i", [0] * MAX_DEPTH)  # items left per open container
        self._ismap = bytearray(MAX_DEPTH)

    def reset(self, buf, start, end):
        self.buf = buf
        self.pos = start
        self.end = end
        self.val = 0
        self.start = start
        self.err = E_OK

    def _fail(self, code):
        self.err = code
        return K_ERROR

    def next(self):
        buf = self.buf
        p = self.pos
        end = self.end
        if p >= end:
            return self._fail(E_CBOR)
        ib = buf[p]
        p += 1
        mt = ib >> 5
        ai = ib & 0x1F
        if ai >= 28:
            if ai == 31 and mt >= 2 and mt <= 5:
                return self._fail(E_UNSUPPORTED)  # indefinite length
            return self._fail(E_CBOR)  # reserved, break, indefinite int/tag
        if mt == 7:
            if ai == 20:
                self.val = 0
                self.pos = p
                return K_FALSE
            if ai == 21:
                self.val = 1
                self.pos = p
                return K_TRUE
            if ai == 22:
                self.val = 0
                self.pos = p
                return K_NULL
            return self._fail(E_UNSUPPORTED)  # floats, other simple values
        if mt == 6:
            return self._fail(E_UNSUPPORTED)  # tags
        big = False
        if ai < 24:
            v = ai
        elif ai == 24:
            if p + 1 > end:
                return self._fail(E_CBOR)
            v = buf[p]
            p += 1
        elif ai == 25:
            if p + 2 > end:
                return self._fail(E_CBOR)
            v = (buf[p] << 8) | buf[p + 1]
            p += 2
        else:
            if ai == 27:
                if p + 8 > end:
                    return self._fail(E_CBOR)
                if buf[p] | buf[p + 1] | buf[p + 2] | buf[p + 3]:
                    big = True
                p += 4
            elif p + 4 > end:
                return self._fail(E_CBOR)
            b0 = buf[p]
            if b0 >= 0x40:
                big = True
                v = 0
            else:
                v = (b0 << 24) | (buf[p + 1] << 16) | (buf[p + 2] << 8) | buf[p + 3]
            p += 4
        if big:
            if mt <= 1:
                return self._fail(E_RANGE)
            return self._fail(E_CBOR)  # a length that cannot fit the buffer
        if mt == 0:
            self.val = v
            self.pos = p
            return K_UINT
        if mt == 1:
            self.val = -1 - v
            self.pos = p
            return K_NEG
        if mt <= 3:
            if v > end - p:
                return self._fail(E_CBOR)
            self.val = v
            self.start = p
            self.pos = p + v
            return mt
        if mt == 4:
            if v > end - p:
                return self._fail(E_CBOR)
        elif v > ((end - p) >> 1):
            return self._fail(E_CBOR)
        self.val = v
        self.pos = p
        return mt

    def skip(self):
        """Skip one complete item (containers with everything inside).

        Returns the item's kind or K_ERROR. Also enforces MAX_DEPTH and
        integer map keys. ``val``/``start`` are not meaningful afterwards.
        """
        k = self.next()
        if k != K_ARRAY and k != K_MAP:
            return k
        top = k
        v = self.val
        if v == 0:
            return top
        rem = self._rem
        ismap = self._ismap
        if k == K_MAP:
            rem[0] = v + v
            ismap[0] = 1
        else:
            rem[0] = v
            ismap[0] = 0
        d = 1
        while d:
            lvl = d - 1
            r = rem[lvl]
            p0 = self.pos
            k = self.next()
            if k < 0:
                return K_ERROR
            if ismap[lvl] and not (r & 1):
                if k != K_UINT and k != K_NEG:
                    self.pos = p0
                    return self._fail(E_UNSUPPORTED)  # map key is not an integer
            rem[lvl] = r - 1
            if k == K_ARRAY or k == K_MAP:
                if d >= MAX_DEPTH:
                    self.pos = p0
                    return self._fail(E_UNSUPPORTED)  # nested too deep
                v = self.val
                if v:
                    if k == K_MAP:
                        rem[d] = v + v
                        ismap[d] = 1
                    else:
                        rem[d] = v
                        ismap[d] = 0
                    d += 1
                    continue
            while d and rem[d - 1] == 0:
                d -= 1
        return top

    def validate(self, buf, start, end):
        """E_OK if ``buf[start:end]`` is exactly one well-formed subset item.

        On success the decoder is left reset to ``start``, ready for next().
        On failure ``err`` is the code and ``pos`` the offending offset.
        """
        self.reset(buf, start, end)
        if start < end:
            # Fast path for the common payload, one array or map (< 24 items)
            # of plain integers (CMD, HEARTBEAT): a single loop with no calls.
            # It only ever answers E_OK, for exactly the items the full walk
            # accepts; anything else (other kinds, 8-byte heads, a 4-byte head
            # outside 30 bits, a count or head that runs past the end,
            # trailing bytes) goes to the full walk, which names the error.
            ib = buf[start]
            if 0x80 <= ib < 0x98 or 0xA0 <= ib < 0xB8:
                cnt = ib & 0x1F
                if ib >= 0xA0:
                    cnt += cnt
                p = start + 1
                while cnt and p < end:
                    ib = buf[p]
                    if ib < 0x18 or 0x20 <= ib < 0x38:
                        p += 1
                    elif ib == 0x18 or ib == 0x38:
                        p += 2
                    elif ib == 0x19 or ib == 0x39:
                        p += 3
                    elif (ib == 0x1A or ib == 0x3A) and p + 4 < end and buf[p + 1] < 0x40:
                        p += 5
                    else:
                        break
                    cnt -= 1
                if not cnt and p == end:
                    return E_OK
        if self.skip() < 0:
            return self.err
        if self.pos != end:
            self.err = E_CBOR  # trailing bytes
            return E_CBOR
        self.pos = start
        return E_OK


def int_map_into(buf, p, vals, n):
    """Write ``{0: vals[0], 1: vals[1], ..., n-1: vals[n-1]}`` (integers, minimal
    heads, n < 24) into ``buf`` from ``p``; returns the end offset, or -1 if a
    value is outside -2**30 .. 2**30-1. The caller guarantees room for
    ``1 + 6 * n`` bytes. One call per message instead of two per item (the
    Encoder): what the board's RESULT/EVENT/HEARTBEAT encoding uses."""
    buf[p] = _MT_MAP | n
    p += 1
    for j in range(n):
        buf[p] = j
        v = vals[j]
        mt = _MT_UINT
        if v < 0:
            mt = _MT_NEG
            v = -1 - v
        if v < 24:
            buf[p + 1] = mt | v
            p += 2
        elif v < 0x100:
            buf[p + 1] = mt | 24
            buf[p + 2] = v
            p += 3
        elif v < 0x10000:
            buf[p + 1] = mt | 25
            buf[p + 2] = v >> 8
            buf[p + 3] = v & 0xFF
            p += 4
        elif not (v >> 30):  # (a 2**30 literal is a big int on a 32-bit VM)
            buf[p + 1] = mt | 26
            buf[p + 2] = v >> 24
            buf[p + 3] = (v >> 16) & 0xFF
            buf[p + 4] = (v >> 8) & 0xFF
            buf[p + 5] = v & 0xFF
            p += 6
        else:
            return -1
    return p


def uints_into(buf, p, vals, n):
    """Write ``vals[0..n-1]`` as a run of unsigned integers (minimal heads,
    no container head) into ``buf`` from ``p``; returns the end offset, or -1
    if a value is outside 0 .. 2**30-1. The caller guarantees room for
    ``5 * n`` bytes."""
    for j in range(n):
        v = vals[j]
        if v < 0:
            return -1
        if v < 24:
            buf[p] = v
            p += 1
        elif v < 0x100:
            buf[p] = 24
            buf[p + 1] = v
            p += 2
        elif v < 0x10000:
            buf[p] = 25
            buf[p + 1] = v >> 8
            buf[p + 2] = v & 0xFF
            p += 3
        elif not (v >> 30):  # (a 2**30 literal is a big int on a 32-bit VM)
            buf[p] = 26
            buf[p + 1] = v >> 24
            buf[p + 2] = (v >> 16) & 0xFF
            buf[p + 3] = (v >> 8) & 0xFF
            buf[p + 4] = v & 0xFF
            p += 5
        else:
            return -1
    return p
