"""Generate tests/vectors/protocol.json, the byte-level vectors of docs/protocol.md §12.

Run from the repository root:  .venv/bin/python tests/vectors/make_vectors.py

The vectors are built with the *reference* libraries only (cbor2 canonical
encoding, crcmod's "crc-ccitt-false", the ``cobs`` package) and hand-written
bytes, never with the project's own codecs, so both of those are checked
against an independent source. A few values are pinned by hand against
published references in the unit tests (CRC check value 0x29B1, COBS
examples from Cheshire & Baker / Wikipedia).

File format
-----------
``valid``: ``name``, ``type`` (number), ``type_name``, ``flags``, ``seq``,
``ack``, ``payload_hex`` (CBOR, "" for an empty payload), ``body_hex``
(header + payload, without CRC), ``crc_hex`` (big-endian CRC of the body),
``wire_hex`` (COBS(body || CRC) || 00), ``payload`` (JSON form below, null for
an empty payload) and ``payload_diag`` (RFC 8949 diagnostic notation).

``invalid``: ``name``, ``wire_hex``, ``error`` (the error-code name: COBS,
SHORT, OVERSIZE, CRC, VERSION, TYPE, CBOR, UNSUPPORTED, RANGE), ``note``, and
for payload-level errors ``payload_hex``. Fed as one stream to the board
``Deframer`` the wire yields exactly one error or one good frame whose
payload ``Decoder.validate`` rejects with ``error``; the host's
``decode_frame`` raises ``ProtocolError`` with that code.

JSON form of a payload: integers are numbers, text is a string, true/false/
null are themselves, arrays are lists, a byte string is ``{"bytes": "<hex>"}``
and a map is an object whose keys are the integer keys in decimal (all
protocol maps have integer keys, so ``{"bytes": ...}`` cannot be confused
with a map). Object key order is the encoded (canonical, ascending) order.

This module also holds the small helpers the codec tests share: JSON form
<-> Python values, diagnostic notation, and walkers that drive the board's
``Encoder``/``Decoder`` from/to Python values.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import cbor2
import crcmod.predefined
from cobs import cobs

HERE = Path(__file__).resolve().parent
VECTORS_PATH = HERE / "protocol.json"

PROTO_VERSION = 1
F_ACK = 0x01
TYPE_NAMES = {
    1: "HELLO",
    2: "DESCRIBE",
    3: "HEARTBEAT",
    4: "TELEMETRY",
    5: "EVENT",
    6: "CMD",
    7: "RESULT",
    8: "POLICY",
    9: "ACK",
    10: "NAK",
    11: "LOG",
}
_crc = crcmod.predefined.mkCrcFun("crc-ccitt-false")


# -- JSON form, diagnostic notation ------------------------------------------------


def to_json(obj: Any) -> Any:
    """Python payload value -> the vectors' JSON form."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, (bytes, bytearray)):
        return {"bytes": bytes(obj).hex()}
    if isinstance(obj, (list, tuple)):
        return [to_json(x) for x in obj]
    if isinstance(obj, dict):
        for k in obj:
            if type(k) is not int:
                raise TypeError(f"map key {k!r} is not an int")
        return {str(k): to_json(v) for k, v in obj.items()}
    raise TypeError(f"{type(obj).__name__} has no JSON form")


def from_json(j: Any) -> Any:
    """The vectors' JSON form -> Python payload value."""
    if j is None or isinstance(j, (bool, int, str)):
        return j
    if isinstance(j, list):
        return [from_json(x) for x in j]
    if isinstance(j, dict):
        if set(j) == {"bytes"}:
            return bytes.fromhex(j["bytes"])
        return {int(k): from_json(v) for k, v in j.items()}
    raise TypeError(f"{type(j).__name__} is not a payload JSON form")


def diag(obj: Any) -> str:
    """RFC 8949 §8 diagnostic notation of a subset value."""
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, (bytes, bytearray)):
        return f"h'{bytes(obj).hex()}'"
    if isinstance(obj, str):
        return json.dumps(obj, ensure_ascii=False)
    if isinstance(obj, list):
        return "[" + ", ".join(diag(x) for x in obj) + "]"
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{diag(k)}: {diag(v)}" for k, v in obj.items()) + "}"
    raise TypeError(type(obj).__name__)


def load_vectors(path: Path = VECTORS_PATH) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


# -- walkers over the board codec (used by the tests) -------------------------------


def board_encode(obj: Any, cap: int = 248) -> tuple[bytes, int]:
    """Encode a Python value with the board ``Encoder``; returns (bytes, err)."""
    from metal.core.cbor import Encoder

    buf = bytearray(cap)
    enc = Encoder(buf)

    def walk(o: Any) -> None:
        if o is None:
            enc.null()
        elif o is True or o is False:
            enc.bool(o)
        elif isinstance(o, int):
            enc.int(o)
        elif isinstance(o, (bytes, bytearray)):
            enc.bytes_from(o, 0, len(o))
        elif isinstance(o, str):
            b = o.encode("utf-8")
            enc.text_from(b, 0, len(b))
        elif isinstance(o, (list, tuple)):
            enc.array(len(o))
            for x in o:
                walk(x)
        elif isinstance(o, dict):
            enc.map(len(o))
            for k, v in o.items():
                walk(k)
                walk(v)
        else:
            raise TypeError(type(o).__name__)

    walk(obj)
    return bytes(buf[: enc.pos]), enc.err


def board_decode(data: bytes | bytearray) -> tuple[int, Any]:
    """Validate and walk ``data`` with the board ``Decoder``; returns (err, value).

    ``value`` is None when err is not E_OK. Text is decoded as UTF-8 with
    surrogateescape so a byte-exact comparison is still possible.
    """
    from metal.core.cbor import (
        K_ARRAY,
        K_BYTES,
        K_FALSE,
        K_MAP,
        K_NEG,
        K_NULL,
        K_TEXT,
        K_TRUE,
        K_UINT,
        Decoder,
    )

    dec = Decoder()
    err = dec.validate(data, 0, len(data))
    if err:
        return err, None

    def item() -> Any:
        k = dec.next()
        if k == K_UINT or k == K_NEG:
            return dec.val
        if k == K_BYTES:
            return bytes(data[dec.start : dec.start + dec.val])
        if k == K_TEXT:
            return bytes(data[dec.start : dec.start + dec.val]).decode("utf-8", "surrogateescape")
        if k == K_ARRAY:
            n = dec.val
            return [item() for _ in range(n)]
        if k == K_MAP:
            n = dec.val
            out = {}
            for _ in range(n):
                key = item()
                out[key] = item()
            return out
        if k == K_FALSE:
            return False
        if k == K_TRUE:
            return True
        if k == K_NULL:
            return None
        raise AssertionError(f"validate() passed but next() gave kind {k}, err {dec.err}")

    value = item()
    if dec.pos != len(data):
        raise AssertionError("validate() passed but the walk did not end at the end")
    return 0, value


# -- building vectors with the reference libraries ---------------------------------------


def _body(ftype: int, flags: int, seq: int, ack: int, payload: bytes, version: int = 1) -> bytes:
    return bytes(((version << 4) | ftype, flags, seq, ack)) + payload


def _wire(body: bytes) -> bytes:
    return cobs.encode(body + _crc(body).to_bytes(2, "big")) + b"\x00"


def _canonical(obj: Any) -> bytes:
    p: bytes = cbor2.dumps(obj, canonical=True)
    # The JSON form keeps map order: make sure the vector's order *is* canonical.
    if cbor2.dumps(obj) != p:
        raise ValueError("payload maps must be written in canonical (ascending key) order")
    return p


def valid(
    name: str, ftype: int, payload: Any, *, flags: int = 0, seq: int = 0, ack: int = 0,
    note: str = "",
) -> dict[str, Any]:
    pb = b"" if payload is None else _canonical(payload)
    assert len(pb) <= 248, (name, len(pb))
    body = _body(ftype, flags, seq, ack, pb)
    wire = _wire(body)
    assert len(wire) <= 256, (name, len(wire))
    v: dict[str, Any] = {
        "name": name,
        "type": ftype,
        "type_name": TYPE_NAMES[ftype],
        "flags": flags,
        "seq": seq,
        "ack": ack,
        "payload_hex": pb.hex(),
        "body_hex": body.hex(),
        "crc_hex": _crc(body).to_bytes(2, "big").hex(),
        "wire_hex": wire.hex(),
        "payload": to_json(payload),
        "payload_diag": "" if payload is None else diag(payload),
    }
    if note:
        v["note"] = note
    return v


def invalid(name: str, wire: bytes, error: str, note: str, payload: bytes | None = None
            ) -> dict[str, Any]:
    v: dict[str, Any] = {"name": name, "wire_hex": wire.hex(), "error": error, "note": note}
    if payload is not None:
        v["payload_hex"] = payload.hex()
    return v


def _bad_payload(name: str, payload: bytes, error: str, note: str) -> dict[str, Any]:
    # A CMD frame that is fine at the frame level around a bad payload.
    return invalid(name, _wire(_body(6, F_ACK, 3, 1, payload)), error, note, payload)


def telemetry_analog(temps: list[int], duty: list[int], rpm: list[int], mv: list[int],
                     ma: list[int], states: list[int]) -> bytes:
    """§6 position 0: little-endian int16/uint16 blocks, then 4-bit states, low nibble first."""
    out = struct.pack(f"<{len(temps)}h", *temps)
    for block in (duty, rpm, mv, ma):
        out += struct.pack(f"<{len(block)}H", *block)
    s = list(states) + [0] * (len(states) & 1)
    out += bytes(s[i] | (s[i + 1] << 4) for i in range(0, len(s), 2))
    return out


def build() -> dict[str, Any]:
    V: list[dict[str, Any]] = []

    # -- every message type ---------------------------------------------------------
    V.append(valid("hello_board", 1, {
        0: 1, 1: 1, 2: 0x2A5F3C1, 3: 0, 4: "sim", 5: "0.1.0", 6: "sim-5f3c1e", 7: 0, 8: 8,
    }, note="board HELLO before any host connected (session 0)"))
    V.append(valid("hello_host", 1, {0: 1, 3: 0x1234567},
                   note="host HELLO choosing protocol 1, session 0x1234567"))
    V.append(valid("hello_board_echo", 1, {
        0: 1, 1: 1, 2: 0x2A5F3C1, 3: 0x1234567, 4: "sim", 5: "0.1.0", 6: "sim-5f3c1e", 7: 3,
        8: 8,
    }, note="board echoes the host's session"))
    V.append(valid("hello_host_refusal", 1, {
        0: 0, 3: 0, 9: "board speaks protocol 2..3, bridge speaks 1..1",
    }, note="version negotiation failed: proto 0 = refused"))
    V.append(valid("describe_identity", 2, {
        0: 0, 1: 8, 2: 1, 3: [
            ["board", "sim"], ["tick_us", 10000], ["hb_timeout_ms", 2000],
            ["failsafe_duty", 1000], ["overheat_ms", 60000],
        ],
    }, flags=F_ACK, seq=0, ack=0, note="DESCRIBE part 0 of 8, section 1 (identity and limits)"))
    V.append(valid("describe_rails", 2, {
        0: 1, 1: 8, 2: 2, 3: [
            ["p12v_main", 12000], ["p5v", 5000], ["p3v3", 3300], ["p1v8", 1800],
            ["p1v0_core", 1000], ["p12v_fans", 12000],
        ],
    }, flags=F_ACK, seq=1, ack=0, note="DESCRIBE part 1, section 2 (rails: name, nominal mV)"))
    V.append(valid("heartbeat_host", 3, {0: 73_421_907}, note="host clock ms mod 2**30"))
    V.append(valid("heartbeat_board", 3, {0: 73_421_907, 1: 1_824_233},
                   flags=F_ACK, ack=4, note="board echo with its uptime"))

    sim_analog = telemetry_analog(
        temps=[5412, 5275, 4830, 4105, 4160, 3920, 4480, 3315],
        duty=[420, 420, 350, 300],
        rpm=[5040, 5010, 2790, 2380],
        mv=[12010, 5020, 3305, 1801, 1002, 12005],
        ma=[8450, 1210, 2380, 760, 14800, 1900],
        states=[0] * 8 + [0] * 4 + [2] * 6,
    )
    V.append(valid("telemetry_sim", 4, [
        sim_analog, 0b1010_0100_1100_0001, 0, 0, 0x30, 2, 812, 1490, 0, 0,
    ], flags=F_ACK, seq=42, ack=5, note=(
        "reference sim board: 8 temps (centi-°C), 4 fans (per-mille, RPM), 6 rails (mV, mA), "
        "18 state nibbles; GPIO, tripped, latched, status (armed|locked), power state, "
        "tick last/max µs, overruns, overflows")))
    fault_analog = telemetry_analog(
        temps=[9650, 9510, 8800, 4105, 4160, 3920, -1250, 0x7FFF],
        duty=[1000, 1000, 1000, 1000],
        rpm=[11950, 11890, 5400, 0],
        mv=[12010, 5020, 3305, 1801, 1002, 0],
        ma=[9450, 1210, 2380, 760, 15900, 0],
        states=[0, 0, 0, 0, 0, 0, 4, 1] + [0, 0, 0, 1] + [2, 2, 2, 2, 2, 4],
    )
    V.append(valid("telemetry_sim_faults", 4, [
        fault_analog, 0xFFFF, (1 << 0) | (1 << 11) | (1 << 17), 1 << 17,
        (1 << 2) | (1 << 7) | (1 << 4), 2, 9_870, 23_412, 1_073_741_823, 17,
    ], flags=F_ACK, seq=255, ack=6, note=(
        "hot CPU (crit trip 0, overheat timer), io_fan stalled (trip 11), p12v_fans FAULT "
        "(trip+latch 17), psu_hot out of range (-12.50 °C), io_board no reading (0x7FFF, "
        "stale); overruns at 2**30-1")))
    V.append(valid("event", 5, {0: 15, 1: 3, 2: 11, 3: 1, 4: 123_456_789, 5: -1},
                   flags=F_ACK, seq=7, ack=2))
    V.append(valid("cmd", 6, {0: 1001, 1: 2, 2: 3, 3: 600}, flags=F_ACK, seq=3, ack=8,
                   note="host -> board: command id 1001, op 2 on target 3 with arg 600"))
    V.append(valid("cmd_two_args", 6, {0: 1002, 1: 4, 2: 1, 3: -40, 4: 250}, flags=F_ACK,
                   seq=4, ack=8))
    V.append(valid("result_ok", 7, {0: 1001, 1: 0, 2: 600}, flags=F_ACK, seq=8, ack=4))
    V.append(valid("result_rejected", 7, {0: 1002, 1: 1}, flags=F_ACK, seq=9, ack=5,
                   note="rejected_by_interlock, no value"))
    table = bytes((i * 37 + 11) & 0xFF for i in range(180))
    V.append(valid("policy_last_chunk", 8, {
        0: 2001, 1: 3, 2: 0, 3: len(table), 4: table, 5: _crc(table),
    }, flags=F_ACK, seq=5, ack=9, note="a one-chunk policy table with its CRC-16"))
    V.append(valid("policy_middle_chunk", 8, {
        0: 2002, 1: 4, 2: 200, 3: 520, 4: bytes(range(200)),
    }, flags=F_ACK, seq=6, ack=9, note="a 200-byte chunk in the middle of a transfer"))
    V.append(valid("ack", 9, None, flags=F_ACK, ack=9, note="empty payload"))
    V.append(valid("nak", 10, None, flags=F_ACK, ack=4, note="empty payload"))
    V.append(valid("log", 11, {0: 2, 1: "fan 3 (io_fan) stalled at duty 1000"}))
    V.append(valid("log_utf8", 11, {0: 1, 1: "zone cpu: 54.1 °C → fans 42 %"},
                   note="multi-byte UTF-8 text"))

    # -- edge cases -----------------------------------------------------------------
    names = [f"item{i:02d}" for i in range(40)]
    items = [[n, i] for i, n in enumerate(names)]
    # grow/shrink the last item's name until the payload is exactly 248 bytes
    base = {0: 2, 1: 8, 2: 3, 3: items}
    while len(cbor2.dumps(base, canonical=True)) > 248:
        items.pop()
    pad = 248 - len(cbor2.dumps(base, canonical=True))
    items[-1][0] = str(items[-1][0]) + "x" * pad
    assert len(cbor2.dumps(base, canonical=True)) == 248
    V.append(valid("edge_max_payload", 2, base, flags=F_ACK, seq=2, ack=0,
                   note="payload of exactly 248 bytes (wire 256 with the delimiter)"))

    # 248 zero-free payload bytes: body+CRC is one 254-byte run (COBS code 0xFF)
    def zero_free_telemetry(seq: int, width: int) -> tuple[Any, bytes]:
        blob = bytes(1 + (i * 7) % 255 for i in range(width))
        obj = [blob, 0x5A5, 1, 1, 0x31, 2, 812, 1490, 3, 1]
        return obj, _body(4, F_ACK, seq, 5, cbor2.dumps(obj))

    obj, body = zero_free_telemetry(1, 100)
    width = 100 + 248 - (len(body) - 4)
    seq = 1
    while True:
        obj, body = zero_free_telemetry(seq, width)
        if 0 not in body + _crc(body).to_bytes(2, "big"):
            break
        seq += 1
    assert len(body) == 252
    V.append(valid("edge_max_payload_no_zero", 4, obj, flags=F_ACK, seq=seq, ack=5, note=(
        "248-byte payload and a CRC without 0x00: body+CRC is a single 254-byte COBS run "
        "(code 0xFF, no trailing group), wire exactly 256 bytes")))
    V.append(valid("edge_zero_bytes", 6, {0: 1, 1: 0, 2: 0, 3: 0, 4: 0}, flags=0, seq=0,
                   ack=0, note="header and payload full of 0x00 bytes"))
    V.append(valid("edge_seq_255_ack_wrap", 5, {0: 256, 1: 1, 2: 0, 3: 0, 4: 1000},
                   flags=F_ACK, seq=255, ack=0, note="seq 255; the ack has wrapped to 0"))
    V.append(valid("edge_ack_255", 7, {0: 7, 1: 0}, flags=F_ACK, seq=0, ack=255,
                   note="seq wrapped to 0, ack 255"))
    V.append(valid("edge_negative_ints", 6, {
        0: 5, 1: 9, 2: 0, 3: -24, 4: [-1, -25, -256, -257, -65536, -65537, -(2**30)],
    }, flags=F_ACK, seq=9, ack=1, note="negative integers across every head size"))
    V.append(valid("edge_int_boundaries", 6, {
        0: 2**30 - 1, 1: 23, 2: 24, 3: [255, 256, 65535, 65536, 2**30 - 1, -(2**30)],
    }, flags=F_ACK, seq=10, ack=1, note="unsigned head-size boundaries and the 30-bit limits"))
    V.append(valid("edge_30bit_clocks", 3, {0: 2**30 - 1, 1: 0}, flags=F_ACK, ack=0,
                   note="heartbeat clocks at the top of the 30-bit range and at 0"))
    V.append(valid("edge_empty_strings", 11, {0: 0, 1: ""}, note="empty text"))
    V.append(valid("edge_bool_null", 6, {0: 77, 1: 1, 2: 0, 3: True, 4: None},
                   flags=F_ACK, seq=11, ack=1, note="true and null values"))
    V.append(valid("edge_depth_4", 2, {0: 3, 1: 8, 2: 6, 3: [["gpio", [False, True]]]},
                   flags=F_ACK, seq=3, ack=0,
                   note="nesting at the limit: map > array > array > array"))

    # -- invalid ----------------------------------------------------------------------
    I: list[dict[str, Any]] = []
    by_name = {v["name"]: v for v in V}
    good_body = bytes.fromhex(by_name["telemetry_sim"]["body_hex"])
    crc = _crc(good_body)
    I.append(invalid("bad_crc", cobs.encode(good_body + ((crc ^ 0x0001).to_bytes(2, "big")))
                     + b"\x00", "CRC", "telemetry_sim with the CRC's low bit flipped"))
    flipped = bytearray(good_body)
    flipped[20] ^= 0x10
    I.append(invalid("bad_crc_payload_bit", cobs.encode(bytes(flipped) + crc.to_bytes(2, "big"))
                     + b"\x00", "CRC", "telemetry_sim with one payload bit flipped"))
    I.append(invalid("cobs_code_past_end", bytes.fromhex("0611223344") + b"\x00", "COBS",
                     "code byte 0x06 at offset 0 wants 5 data bytes, only 4 follow"))
    w = bytearray(bytes.fromhex(by_name["event"]["wire_hex"]))
    w[0] = len(w) + 3  # first code byte points past the end
    I.append(invalid("cobs_first_code_too_long", bytes(w), "COBS",
                     "the event vector with its first code byte pointing past the end"))
    I.append(invalid("short_empty_body", bytes.fromhex("0100"), "SHORT",
                     "one code byte decoding to nothing"))
    short_body = bytes((0x19, 0x01, 0x00))
    I.append(invalid("short_5_bytes", _wire(short_body), "SHORT",
                     "3-byte body + CRC = 5 bytes, fewer than header + CRC"))
    I.append(invalid("oversize", b"\x01" * 300 + b"\x00", "OVERSIZE",
                     "300 bytes before the delimiter"))
    I.append(invalid("oversize_boundary", bytes(range(1, 256)) + b"\x07" + b"\x00", "OVERSIZE",
                     "256 bytes before the delimiter: one more than the longest valid frame"))
    I.append(invalid("wrong_version_2", _wire(_body(9, F_ACK, 0, 1, b"", version=2)), "VERSION",
                     "framing version 2"))
    I.append(invalid("wrong_version_0", _wire(_body(3, 0, 0, 0, b"\xa1\x00\x01", version=0)),
                     "VERSION", "framing version 0"))
    I.append(invalid("unknown_type_0", _wire(_body(0, 0, 0, 0, b"")), "TYPE", "type 0"))
    I.append(invalid("unknown_type_12", _wire(_body(12, 0, 0, 0, b"\xa0")), "TYPE", "type 12"))
    I.append(invalid("unknown_type_15", _wire(_body(15, F_ACK, 1, 1, b"")), "TYPE", "type 15"))

    I.append(_bad_payload("cbor_truncated_map", bytes.fromhex("a30001010202"), "CBOR",
                          "map of 3 pairs, only 2.5 present"))
    I.append(_bad_payload("cbor_truncated_int", bytes.fromhex("a100190a"), "CBOR",
                          "a 2-byte integer argument cut after one byte"))
    I.append(_bad_payload("cbor_truncated_text", bytes.fromhex("a20001016568656c6c"), "CBOR",
                          "text of 5 bytes with 4 present"))
    I.append(_bad_payload("cbor_trailing_bytes", bytes.fromhex("a100010203"), "CBOR",
                          "a complete map followed by two more bytes"))
    I.append(_bad_payload("cbor_reserved_ai", bytes.fromhex("a1001c"), "CBOR",
                          "additional information 28 is reserved"))
    I.append(_bad_payload("cbor_stray_break", bytes.fromhex("ff"), "CBOR",
                          "a break code with no indefinite-length item open"))
    I.append(_bad_payload("cbor_float64", bytes.fromhex("a203fb3ff8000000000000" + "0001"),
                          "UNSUPPORTED", "{3: 1.5} as a double"))
    I.append(_bad_payload("cbor_float16", bytes.fromhex("a100f93e00"), "UNSUPPORTED",
                          "{0: 1.5} as a half float"))
    I.append(_bad_payload("cbor_tag_epoch", bytes.fromhex("a100c11a5f5e1000"), "UNSUPPORTED",
                          "tag 1 (epoch time)"))
    I.append(_bad_payload("cbor_tag_bignum", bytes.fromhex("a100c24101"), "UNSUPPORTED",
                          "tag 2 (bignum 1): cbor2 would fold it into a plain int"))
    I.append(_bad_payload("cbor_tag_self_describe", bytes.fromhex("d9d9f7a10001"), "UNSUPPORTED",
                          "tag 55799 (self-describe): cbor2 would drop it silently"))
    I.append(_bad_payload("cbor_indefinite_array", bytes.fromhex("a1009f0102ff"), "UNSUPPORTED",
                          "indefinite-length array"))
    I.append(_bad_payload("cbor_indefinite_text", bytes.fromhex("7f6161ff"), "UNSUPPORTED",
                          "indefinite-length text"))
    I.append(_bad_payload("cbor_undefined", bytes.fromhex("a100f7"), "UNSUPPORTED",
                          "simple value undefined"))
    I.append(_bad_payload("cbor_text_key", bytes.fromhex("a1616101"), "UNSUPPORTED",
                          "map key is text"))
    I.append(_bad_payload("cbor_int_2_30", bytes.fromhex("a1031a40000000"), "RANGE",
                          "{3: 2**30}"))
    I.append(_bad_payload("cbor_int_2_32", bytes.fromhex("a1031b0000000100000000"), "RANGE",
                          "{3: 2**32} (8-byte argument)"))
    I.append(_bad_payload("cbor_negint_below_range", bytes.fromhex("a1033a40000000"), "RANGE",
                          "{3: -2**30 - 1}"))
    I.append(_bad_payload("cbor_nested_too_deep", bytes.fromhex("a10381818181 01".replace(" ", "")), "UNSUPPORTED",
                          "{3: [[[[1]]]]}: an array at depth 5"))
    I.append(_bad_payload("cbor_empty_array_too_deep", bytes.fromhex("8181818180"), "UNSUPPORTED",
                          "[[[[[]]]]]: an empty array at depth 5 is still too deep"))

    for v in I:
        assert len(v["wire_hex"]) // 2 <= 400
    return {
        "protocol": "metal wire protocol v1 (docs/protocol.md)",
        "generated_by": "tests/vectors/make_vectors.py",
        "format": (
            "valid: fields + payload_hex/body_hex/crc_hex/wire_hex; payload in JSON form "
            "(ints, strings, true/false/null, lists, {'bytes': hex}, maps as objects with "
            "decimal integer keys in encoded order); payload_diag in RFC 8949 diagnostic "
            "notation. invalid: wire_hex + error code name (+ payload_hex for payload errors)."
        ),
        "valid": V,
        "invalid": I,
    }


def render(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    data = build()
    text = render(data)
    if "--check" in argv:
        if VECTORS_PATH.read_text(encoding="utf-8") != text:
            print(f"{VECTORS_PATH} is out of date; run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    VECTORS_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {VECTORS_PATH} ({len(data['valid'])} valid, {len(data['invalid'])} invalid)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
