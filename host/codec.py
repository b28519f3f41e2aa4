"""Host side of the wire codec (docs/protocol.md §1-2), built for speed.

The board has its own allocation-free codec in ``metal.core``; this module
speaks the same bytes with C code: ``cobs`` for byte stuffing,
``binascii.crc_hqx`` for CRC-16/CCITT-FALSE (identical to crcmod's
``crc-ccitt-false``, which the tests check) and ``cbor2`` for CBOR. Every
problem is reported as one typed error, :class:`ProtocolError`, carrying the
protocol's error code (``E_*`` in ``metal.core.proto``).

Payload decoding has two paths. The fast path lets ``cbor2`` decode with
every tag and indefinite length refused, then walks the result once: only
subset types, 30-bit ints, integer keys, depth <= 4, and a *minimal* encoded
size equal to the payload length (so nothing trails the item and no
duplicate key was folded away). Anything else goes to a pure-Python scanner
that applies the board's rules in stream order, so the host reports the same
code at the same offset as ``metal.core.cbor.Decoder.validate``. On top of
the board's checks the host also refuses text that is not UTF-8 (``E_CBOR``)
and duplicate map keys (``E_SCHEMA``); those are reported only when the
payload passes every board check.

Oversize frames in a stream: :class:`FrameSplitter` never buffers more than
``MAX_WIRE`` bytes. When a frame reaches ``MAX_WIRE`` bytes without a
delimiter it emits those first ``MAX_WIRE`` bytes as a chunk (which
:func:`decode_frame` rejects with ``E_OVERSIZE``, so the error surfaces in
stream order like every other bad frame) and discards the rest of that frame
up to the next 0x00, exactly like the board's ``Deframer``.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

import binascii

import cbor2
from cobs import cobs as _cobs

from metal.core.proto import (
    CRC_LEN,
    E_CBOR,
    E_COBS,
    E_CRC,
    E_OK,
    E_OVERFLOW,
    E_OVERSIZE,
    E_RANGE,
    E_SCHEMA,
    E_SHORT,
    E_TYPE,
    E_UNSUPPORTED,
    E_VERSION,
    HEADER_LEN,
    MAX_PAYLOAD,
    MAX_WIRE,
    PROTO_VERSION,
    T_MAX,
)

__all__ = [
    "ERROR_CODES",
    "ERROR_NAMES",
    "MAX_DEPTH",
    "Frame",
    "FrameSplitter",
    "ProtocolError",
    "crc16",
    "decode_frame",
    "decode_payload",
    "encode_frame",
    "encode_frame_raw",
    "encode_payload",
]

#: E_* code -> short name used in messages and in the test vectors.
ERROR_NAMES: Final[dict[int, str]] = {
    E_OK: "OK",
    E_COBS: "COBS",
    E_SHORT: "SHORT",
    E_OVERSIZE: "OVERSIZE",
    E_CRC: "CRC",
    E_VERSION: "VERSION",
    E_TYPE: "TYPE",
    E_CBOR: "CBOR",
    E_UNSUPPORTED: "UNSUPPORTED",
    E_RANGE: "RANGE",
    E_SCHEMA: "SCHEMA",
    E_OVERFLOW: "OVERFLOW",
}
#: short name -> E_* code.
ERROR_CODES: Final[dict[str, int]] = {v: k for k, v in ERROR_NAMES.items()}

#: Containers nest at most this deep (a top-level array/map is depth 1).
MAX_DEPTH: Final = 4
_LIMIT: Final = 1 << 30  # integers are within -_LIMIT .. _LIMIT - 1
_MIN_DECODED: Final = HEADER_LEN + CRC_LEN
_MAX_ENCODED: Final = MAX_WIRE - 1  # encoded frame without its delimiter

# CRC-16/CCITT-FALSE is exactly binascii.crc_hqx with init 0xFFFF (poly 0x1021,
# no reflection, no final XOR). It is in the standard library, written in C
# and measured ~35 % faster per call than crcmod's wrapper; the tests check it
# against crcmod's "crc-ccitt-false" on random data.
_crc_hqx = binascii.crc_hqx


def crc16(data: bytes | bytearray | memoryview, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE of ``data``, continuing from ``crc``."""
    return _crc_hqx(data, crc)


_cobs_encode = _cobs.encode
_cobs_decode = _cobs.decode
_CobsDecodeError = _cobs.DecodeError
_loads = cbor2.loads
_dumps = cbor2.dumps


class ProtocolError(ValueError):
    """A frame or payload that breaks the wire protocol.

    ``code`` is the ``E_*`` number, ``code_name`` its name (``"CRC"``), and
    ``offset`` the byte offset of the problem inside the CBOR payload for
    payload errors (``None`` for frame-level errors).
    """

    def __init__(self, code: int, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.code_name = ERROR_NAMES.get(code, str(code))
        self.offset = offset

    def __repr__(self) -> str:
        return f"ProtocolError({self.code_name}, {self.args[0]!r})"

    def __reduce__(self) -> tuple[Any, ...]:  # picklable despite the extra arguments
        return (ProtocolError, (self.code, self.args[0], self.offset))


class Frame(NamedTuple):
    """One decoded frame. ``payload`` is None for an empty payload (ACK, NAK);
    a CBOR ``null`` payload also decodes to None but has ``payload_bytes ==
    b"\\xf6"``."""

    ftype: int
    flags: int
    seq: int
    ack: int
    payload: Any
    payload_bytes: bytes


_new_frame: Final = tuple.__new__


# -- payload encoding -----------------------------------------------------------


def _where(path: str) -> str:
    return path or "the payload"


def _check_encodable(obj: object, depth: int, path: str) -> None:
    t = type(obj)
    if type(obj) is int:
        if not -_LIMIT <= obj < _LIMIT:
            raise ProtocolError(
                E_RANGE, f"integer {obj} at {_where(path)} is outside -2**30 .. 2**30-1"
            )
        return
    if obj is None or t is bool or t is str or t is bytes or t is bytearray:
        return
    if isinstance(obj, (list, tuple)) and (t is list or t is tuple):
        if depth >= MAX_DEPTH:
            raise ProtocolError(
                E_UNSUPPORTED, f"array at {_where(path)} nests deeper than {MAX_DEPTH}"
            )
        for i, x in enumerate(obj):
            _check_encodable(x, depth + 1, f"{path}[{i}]")
        return
    if isinstance(obj, dict) and t is dict:
        if depth >= MAX_DEPTH:
            raise ProtocolError(
                E_UNSUPPORTED, f"map at {_where(path)} nests deeper than {MAX_DEPTH}"
            )
        for k, v in obj.items():
            if type(k) is not int:
                raise ProtocolError(
                    E_UNSUPPORTED,
                    f"map key {k!r} at {_where(path)} is a {type(k).__name__}; keys must be integers",
                )
            _check_encodable(k, depth + 1, f"{path} key")
            _check_encodable(v, depth + 1, f"{path}[{k}]")
        return
    if t is float:
        raise ProtocolError(
            E_UNSUPPORTED,
            f"float {obj!r} at {_where(path)} is outside the CBOR subset (use scaled integers)",
        )
    if isinstance(obj, cbor2.CBORTag):
        raise ProtocolError(
            E_UNSUPPORTED, f"CBOR tag {obj.tag} at {_where(path)} is outside the CBOR subset"
        )
    raise ProtocolError(
        E_UNSUPPORTED, f"{t.__name__} at {_where(path)} is outside the CBOR subset"
    )


def encode_payload(obj: object) -> bytes:
    """Encode ``obj`` as canonical subset CBOR (map keys sorted, minimal heads).

    Allowed: int (-2**30 .. 2**30-1), bool, None, bytes/bytearray, str,
    list/tuple and dict with int keys, nested at most 4 deep. Raises
    ProtocolError E_RANGE for out-of-range ints and E_UNSUPPORTED for
    anything else (floats, tags, sets, non-int keys, deeper nesting).
    """
    _check_encodable(obj, 0, "")
    out: bytes = _dumps(obj, canonical=True)
    return out


# -- payload decoding -----------------------------------------------------------


class _NoTags(dict):  # type: ignore[type-arg]
    """``semantic_decoders`` for cbor2 that refuses every tag.

    Without it cbor2 folds some tags into plain values (bignums into int, the
    self-describe tag 55799 into its content) which the subset forbids.
    """

    def __missing__(self, tag: int) -> Any:
        raise ValueError(f"tag {tag}")


_NO_TAGS: Final = _NoTags()
_BAD: Final = -(1 << 62)


def _fast_size(obj: Any, depth: int) -> int:
    """Minimal encoded size of a cbor2 result made of subset values.

    ``obj`` lives at nesting ``depth`` (number of enclosing containers).
    Floats, simple values and anything else outside the subset, ints outside
    30 bits, non-int keys and containers deeper than MAX_DEPTH give a hugely
    negative result (``_BAD`` swamps any sum it is added to).
    """
    t = type(obj)
    if t is list:
        if depth >= MAX_DEPTH:
            return _BAD
        n = len(obj)
        size = 1 if n < 24 else 2 if n < 0x100 else 3 if n < 0x10000 else 5
        d = depth + 1
        for x in obj:
            if type(x) is int:
                if x < 0:
                    x = -1 - x
                size += (1 if x < 24 else 2 if x < 0x100 else 3 if x < 0x10000
                         else 5 if x < _LIMIT else _BAD)
            else:
                size += _fast_size(x, d)
        return size if size > 0 else _BAD
    if t is int:
        if obj < 0:
            obj = -1 - obj
        return (1 if obj < 24 else 2 if obj < 0x100 else 3 if obj < 0x10000
                else 5 if obj < _LIMIT else _BAD)
    if t is bytes or t is str:
        n = len(obj) if t is bytes or obj.isascii() else len(obj.encode("utf-8"))
        return n + (1 if n < 24 else 2 if n < 0x100 else 3 if n < 0x10000 else 5)
    if t is bool or obj is None:
        return 1
    if t is dict:
        if depth >= MAX_DEPTH:
            return _BAD
        n = len(obj)
        size = 1 if n < 24 else 2 if n < 0x100 else 3 if n < 0x10000 else 5
        d = depth + 1
        for k, x in obj.items():
            if type(k) is not int:
                return _BAD
            if k < 0:
                k = -1 - k
            size += (1 if k < 24 else 2 if k < 0x100 else 3 if k < 0x10000
                     else 5 if k < _LIMIT else _BAD)
            if type(x) is int:
                if x < 0:
                    x = -1 - x
                size += (1 if x < 24 else 2 if x < 0x100 else 3 if x < 0x10000
                         else 5 if x < _LIMIT else _BAD)
            else:
                size += _fast_size(x, d)
        return size if size > 0 else _BAD
    return _BAD


_MAJOR_NAMES: Final = ("unsigned integer", "negative integer", "byte string", "text string",
                       "array", "map", "tag", "simple value")
_FLOAT_NAMES: Final = {25: "half", 26: "single", 27: "double"}


class _Scanner:
    """Pure-Python, stream-order subset decoder: the authoritative slow path.

    Mirrors the board's ``Decoder.skip``/``validate`` rule for rule (order of
    checks included) and builds the Python value on the way.
    """

    __slots__ = ("b", "p", "end", "late")

    def __init__(self, b: bytes) -> None:
        self.b = b
        self.p = 0
        self.end = len(b)
        self.late: ProtocolError | None = None  # first host-only problem

    def fail(self, code: int, offset: int, msg: str) -> ProtocolError:
        return ProtocolError(code, msg, offset)

    def item(self, depth: int, is_key: bool) -> Any:
        b = self.b
        p0 = p = self.p
        end = self.end
        if p >= end:
            raise self.fail(E_CBOR, p, f"truncated CBOR: an item was expected at offset {p}, "
                                       f"but the payload ends there")
        ib = b[p]
        p += 1
        mt = ib >> 5
        ai = ib & 0x1F
        if ai >= 28:
            if ai == 31 and 2 <= mt <= 5:
                raise self.fail(E_UNSUPPORTED, p0, f"indefinite-length {_MAJOR_NAMES[mt]} "
                                                   f"(0x{ib:02x}) at offset {p0} is outside the "
                                                   f"CBOR subset")
            if ai == 31:
                what = "break code 0xff outside an indefinite-length item" if mt == 7 else (
                    f"indefinite length on a {_MAJOR_NAMES[mt]} (0x{ib:02x})")
            else:
                what = f"reserved additional information {ai} in initial byte 0x{ib:02x}"
            raise self.fail(E_CBOR, p0, f"malformed CBOR: {what} at offset {p0}")
        if mt == 7:
            if ai == 20 or ai == 21 or ai == 22:
                value: Any = (False, True, None)[ai - 20]
                self.p = p
                if is_key:
                    raise self.fail(E_UNSUPPORTED, p0, f"map key at offset {p0} is "
                                                       f"{'false true null'.split()[ai - 20]}; "
                                                       f"keys must be integers")
                return value
            if ai >= 25:
                what = f"{_FLOAT_NAMES[ai]}-precision float"
            elif ai == 24:
                what = "simple value (0xf8 xx)"
            else:
                what = f"simple value {ai}" + (" (undefined)" if ai == 23 else "")
            raise self.fail(E_UNSUPPORTED, p0, f"{what} at offset {p0} is outside the CBOR "
                                               f"subset")
        if mt == 6:
            raise self.fail(E_UNSUPPORTED, p0, f"tag (0x{ib:02x}) at offset {p0} is outside "
                                               f"the CBOR subset")
        if ai < 24:
            v = ai
        else:
            n = 1 << (ai - 24)
            if p + n > end:
                raise self.fail(E_CBOR, p0, f"truncated CBOR: the {_MAJOR_NAMES[mt]} head at "
                                            f"offset {p0} needs {n} argument bytes, "
                                            f"{end - p} left")
            v = int.from_bytes(b[p:p + n], "big")
            p += n
            if v >= _LIMIT:
                if mt <= 1:
                    value = v if mt == 0 else -1 - v
                    raise self.fail(E_RANGE, p0, f"integer {value} at offset {p0} is outside "
                                                 f"-2**30 .. 2**30-1")
                raise self.fail(E_CBOR, p0, f"truncated CBOR: the {_MAJOR_NAMES[mt]} at offset "
                                            f"{p0} announces {v} items/bytes, far more than "
                                            f"the payload holds")
        if mt <= 1:
            self.p = p
            if mt == 0:
                return v
            return -1 - v
        left = end - p
        if mt <= 3:
            if v > left:
                raise self.fail(E_CBOR, p0, f"truncated CBOR: the {_MAJOR_NAMES[mt]} at offset "
                                            f"{p0} is {v} bytes long, only {left} left")
        elif v > (left if mt == 4 else left >> 1):
            raise self.fail(E_CBOR, p0, f"truncated CBOR: the {_MAJOR_NAMES[mt]} at offset "
                                        f"{p0} announces {v} {'items' if mt == 4 else 'pairs'} "
                                        f"but only {left} bytes are left")
        if is_key:
            raise self.fail(E_UNSUPPORTED, p0, f"map key at offset {p0} is a "
                                               f"{_MAJOR_NAMES[mt]}; keys must be integers")
        if mt <= 3:
            raw = bytes(b[p:p + v])
            self.p = p + v
            if mt == 2:
                return raw
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                if self.late is None:
                    self.late = self.fail(E_CBOR, p0, f"text string at offset {p0} is not "
                                                      f"valid UTF-8 ({exc.reason} at byte "
                                                      f"{exc.start})")
                return ""
        if depth >= MAX_DEPTH:
            raise self.fail(E_UNSUPPORTED, p0, f"{_MAJOR_NAMES[mt]} at offset {p0} nests "
                                               f"deeper than {MAX_DEPTH}")
        self.p = p
        d = depth + 1
        if mt == 4:
            return [self.item(d, False) for _ in range(v)]
        out: dict[int, Any] = {}
        for _ in range(v):
            kp = self.p
            k = self.item(d, True)
            val = self.item(d, False)
            if k in out and self.late is None:
                self.late = self.fail(E_SCHEMA, kp, f"duplicate map key {k} at offset {kp}")
            out[k] = val
        return out

    def whole(self) -> Any:
        obj = self.item(0, False)
        if self.p != self.end:
            n = self.end - self.p
            raise self.fail(E_CBOR, self.p, f"{n} trailing byte{'s' if n != 1 else ''} after "
                                            f"the CBOR item, which ends at offset {self.p} of "
                                            f"{self.end}")
        if self.late is not None:
            raise self.late
        return obj


def decode_payload(b: bytes | bytearray | memoryview) -> Any:
    """Decode one subset CBOR item that must fill ``b`` exactly.

    Raises ProtocolError: E_CBOR (malformed, truncated, trailing bytes,
    invalid UTF-8, empty input), E_UNSUPPORTED (floats, tags, indefinite
    lengths, other simple values, non-integer map keys, nesting deeper than
    4), E_RANGE (integers outside -2**30 .. 2**30-1), E_SCHEMA (duplicate map
    keys). Non-minimal integer encodings are accepted.
    """
    if type(b) is not bytes:
        b = bytes(b)
    try:
        obj = _loads(b, semantic_decoders=_NO_TAGS, allow_indefinite=False)
    except Exception:  # any cbor2 complaint: let the scanner name it
        pass
    else:
        # No tags, no indefinite lengths, subset types only, and a minimal
        # encoding of exactly len(b) bytes: nothing trails the item. Duplicate
        # keys shrink the dict and so the size; the scanner reports them.
        if _fast_size(obj, 0) == len(b):
            return obj
    return _Scanner(b).whole()


# -- frames ---------------------------------------------------------------------


def _byte(name: str, v: int, limit: int = 0x100) -> int:
    if type(v) is not int or not 0 <= v < limit:
        raise ProtocolError(E_RANGE, f"{name} {v!r} does not fit in {limit.bit_length() - 1} bits")
    return v


def encode_frame_raw(
    ftype: int,
    flags: int,
    seq: int,
    ack: int,
    payload_bytes: bytes,
    *,
    version: int = PROTO_VERSION,
) -> bytes:
    """Wire bytes (delimiter included) for an already-encoded payload.

    Nothing is checked beyond field widths and the payload size, so tests and
    fault injection can build frames of any type 0..15 and any version.
    """
    vt = (_byte("version", version, 16) << 4) | _byte("type", ftype, 16)
    if len(payload_bytes) > MAX_PAYLOAD:
        raise ProtocolError(
            E_OVERFLOW, f"payload is {len(payload_bytes)} bytes; the limit is {MAX_PAYLOAD}"
        )
    body = bytes((vt, _byte("flags", flags), _byte("seq", seq), _byte("ack", ack))) + bytes(
        payload_bytes
    )
    crc: int = crc16(body)
    wire: bytes = _cobs_encode(body + crc.to_bytes(2, "big"))
    return wire + b"\x00"


def encode_frame(
    ftype: int,
    seq: int = 0,
    ack: int = 0,
    payload: object = None,
    flags: int = 0,
) -> bytes:
    """Wire bytes (delimiter included) for a message of type 1..11.

    ``payload=None`` sends an empty payload (ACK/NAK); anything else is
    encoded with :func:`encode_payload`. ``flags`` is explicit: pass
    ``F_ACK`` when ``ack`` is meaningful.
    """
    if type(ftype) is not int or not 1 <= ftype <= T_MAX:
        raise ProtocolError(E_TYPE, f"message type {ftype!r} is not 1..{T_MAX}")
    pb = b"" if payload is None else encode_payload(payload)
    return encode_frame_raw(ftype, flags, seq, ack, pb)


def _cobs_problem(enc: bytes) -> str:
    z = enc.find(0)
    if z >= 0:
        return f"COBS error: 0x00 inside the frame at offset {z}"
    i = 0
    n = len(enc)
    while i < n:
        code = enc[i]
        if i + code > n:
            return (f"COBS error: code byte 0x{code:02x} at offset {i} points past the end of "
                    f"the {n}-byte frame")
        i += code
    return "COBS error"  # pragma: no cover - cobs only raises for the two cases above


def decode_frame(wire: bytes | bytearray | memoryview) -> Frame:
    """Check and decode one frame, with or without its trailing 0x00.

    Checks run in the protocol's order (§1): OVERSIZE, COBS, SHORT, CRC,
    VERSION, TYPE, then the payload (CBOR/UNSUPPORTED/RANGE/SCHEMA as in
    :func:`decode_payload`). An empty payload gives ``payload=None``.
    """
    if type(wire) is not bytes:
        wire = bytes(wire)
    n = len(wire)
    if n and wire[n - 1] == 0:
        n -= 1
        wire = wire[:n]
    if n > _MAX_ENCODED:
        raise ProtocolError(
            E_OVERSIZE,
            f"frame is {n} bytes before its delimiter; at most {_MAX_ENCODED} fit "
            f"({MAX_WIRE} on the wire)",
        )
    try:
        body = _cobs_decode(wire)
    except _CobsDecodeError:
        raise ProtocolError(E_COBS, _cobs_problem(wire)) from None
    m = len(body)
    if m < _MIN_DECODED:
        raise ProtocolError(
            E_SHORT, f"frame decodes to {m} bytes; at least {_MIN_DECODED} (header + CRC) needed"
        )
    if _crc_hqx(body, 0xFFFF):  # CRC over body || CRC is 0 exactly when it matches
        said = (body[m - 2] << 8) | body[m - 1]
        calc = crc16(body[: m - 2])
        raise ProtocolError(
            E_CRC, f"CRC mismatch: frame says 0x{said:04X}, body computes 0x{calc:04X}"
        )
    vt = body[0]
    if vt >> 4 != PROTO_VERSION:
        raise ProtocolError(
            E_VERSION, f"framing version {vt >> 4}, this codec speaks {PROTO_VERSION}"
        )
    t = vt & 0x0F
    if t == 0 or t > T_MAX:
        raise ProtocolError(E_TYPE, f"unknown message type {t} (valid: 1..{T_MAX})")
    pb = body[HEADER_LEN : m - CRC_LEN]
    return _new_frame(  # tuple.__new__: skips NamedTuple's Python-level __new__
        Frame, (t, body[1], body[2], body[3], decode_payload(pb) if pb else None, pb)
    )


class FrameSplitter:
    """Split a byte stream at 0x00 into frame chunks (delimiters removed).

    Empty chunks (two delimiters in a row, a flush 0x00) are dropped. The
    pending partial frame never grows beyond ``MAX_WIRE - 1`` bytes: a frame
    that reaches ``MAX_WIRE`` bytes without a delimiter is emitted once as its
    first ``MAX_WIRE`` bytes (``decode_frame`` raises E_OVERSIZE for it), is
    counted in ``oversized``, and the rest of it up to the next 0x00 is
    discarded.
    """

    __slots__ = ("_pending", "_discarding", "oversized")

    def __init__(self) -> None:
        self._pending = b""
        self._discarding = False
        self.oversized = 0

    @property
    def pending(self) -> int:
        """Bytes of a partial frame held back until its delimiter arrives."""
        return len(self._pending)

    def reset(self) -> None:
        self._pending = b""
        self._discarding = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Complete frame chunks in ``data`` (plus what was pending), in order."""
        parts = bytes(data).split(b"\x00")
        tail = parts.pop()  # after the last delimiter: not complete yet
        if parts:
            if self._discarding:  # the rest of an oversize frame ends here
                self._discarding = False
                parts[0] = b""
            elif self._pending:
                parts[0] = self._pending + parts[0]
            self._pending = b""
        elif self._discarding:
            return []
        else:
            tail = self._pending + tail
        if parts and max(map(len, parts)) >= MAX_WIRE:
            out = []
            for part in parts:
                if len(part) >= MAX_WIRE:
                    out.append(part[:MAX_WIRE])
                    self.oversized += 1
                elif part:
                    out.append(part)
        else:
            out = [p for p in parts if p]
        if len(tail) >= MAX_WIRE:
            out.append(tail[:MAX_WIRE])
            self.oversized += 1
            self._discarding = True
            self._pending = b""
        else:
            self._pending = tail
        return out
