"""host/codec.py: the host's fast codec (cbor2 + cobs + binascii CRC) and its errors."""

import importlib.util
import pickle
import sys
from pathlib import Path

import cbor2
import pytest
from cobs import cobs
from hypothesis import given, settings
from hypothesis import strategies as st

from metal.core.proto import (
    E_CBOR,
    E_COBS,
    E_CRC,
    E_OVERFLOW,
    E_OVERSIZE,
    E_RANGE,
    E_SCHEMA,
    E_SHORT,
    E_TYPE,
    E_UNSUPPORTED,
    E_VERSION,
    F_ACK,
    MAX_PAYLOAD,
    MAX_WIRE,
    T_ACK,
    T_CMD,
    T_TELEMETRY,
)
from metal.host import codec
from metal.host.codec import (
    ERROR_CODES,
    ERROR_NAMES,
    Frame,
    FrameSplitter,
    ProtocolError,
    crc16,
    decode_frame,
    decode_payload,
    encode_frame,
    encode_frame_raw,
    encode_payload,
)


def _load_make_vectors():
    name = "metal_tests_make_vectors"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).parent / "vectors" / "make_vectors.py"
        )
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


mv = _load_make_vectors()
VECTORS = mv.load_vectors()
VALID = VECTORS["valid"]
INVALID = VECTORS["invalid"]
H = bytes.fromhex


def _raises(code, fn, *args):
    with pytest.raises(ProtocolError) as ei:
        fn(*args)
    assert ei.value.code == code, (ERROR_NAMES[ei.value.code], str(ei.value))
    assert ei.value.code_name == ERROR_NAMES[code]
    return ei.value


# -- vectors ---------------------------------------------------------------------------


@pytest.mark.parametrize("v", VALID, ids=[v["name"] for v in VALID])
def test_decode_valid_vector(v):
    wire = H(v["wire_hex"])
    want_payload = mv.from_json(v["payload"])
    for w in (wire, wire[:-1], bytearray(wire), memoryview(wire)):
        f = decode_frame(w)
        assert isinstance(f, Frame)
        assert (f.ftype, f.flags, f.seq, f.ack) == (v["type"], v["flags"], v["seq"], v["ack"])
        assert f.payload_bytes.hex() == v["payload_hex"]
        assert f.payload == want_payload
        assert type(f.payload_bytes) is bytes


@pytest.mark.parametrize("v", VALID, ids=[v["name"] for v in VALID])
def test_encode_valid_vector(v):
    obj = mv.from_json(v["payload"])
    wire = encode_frame(v["type"], v["seq"], v["ack"], obj, v["flags"])
    assert wire.hex() == v["wire_hex"]
    if obj is not None:
        assert encode_payload(obj).hex() == v["payload_hex"]
        assert decode_payload(H(v["payload_hex"])) == obj
    raw = encode_frame_raw(v["type"], v["flags"], v["seq"], v["ack"], H(v["payload_hex"]))
    assert raw.hex() == v["wire_hex"]
    body = H(v["body_hex"])
    assert crc16(body).to_bytes(2, "big").hex() == v["crc_hex"]
    assert cobs.decode(wire[:-1]) == body + H(v["crc_hex"])


@pytest.mark.parametrize("v", INVALID, ids=[v["name"] for v in INVALID])
def test_reject_invalid_vector(v):
    err = _raises(ERROR_CODES[v["error"]], decode_frame, H(v["wire_hex"]))
    assert str(err)  # a message naming the problem
    if "payload_hex" in v:
        _raises(ERROR_CODES[v["error"]], decode_payload, H(v["payload_hex"]))


def test_error_names_cover_every_code():
    assert set(ERROR_NAMES) == set(range(12))
    assert ERROR_CODES["CRC"] == E_CRC and ERROR_CODES["OVERFLOW"] == E_OVERFLOW


# -- ProtocolError messages --------------------------------------------------------------


def test_crc_message_names_both_values():
    wire = bytearray(H(VALID[0]["wire_hex"]))
    body = cobs.decode(bytes(wire[:-1]))
    good = crc16(body[:-2])
    bad = body[:-2] + (good ^ 0x1234).to_bytes(2, "big")
    err = _raises(E_CRC, decode_frame, cobs.encode(bad) + b"\x00")
    assert str(err) == (
        f"CRC mismatch: frame says 0x{good ^ 0x1234:04X}, body computes 0x{good:04X}"
    )
    assert isinstance(err, ValueError)
    assert err.offset is None
    assert "CRC" in repr(err)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.code, copy.code_name, str(copy), copy.offset) == (E_CRC, "CRC", str(err), None)


def test_frame_level_messages():
    assert "0x00 inside the frame at offset 2" in str(_raises(E_COBS, decode_frame, H("0311000100")))
    assert "code byte 0x04 at offset 0 points past the end" in str(
        _raises(E_COBS, decode_frame, H("041122")))
    assert "decodes to 2 bytes" in str(_raises(E_SHORT, decode_frame, H("03112200")))
    assert "256 bytes" in str(_raises(E_OVERSIZE, decode_frame, b"\x01" * 256))
    assert "version 2" in str(_raises(E_VERSION, decode_frame,
                                      encode_frame_raw(3, 0, 0, 0, b"\xa0", version=2)))
    assert "type 12" in str(_raises(E_TYPE, decode_frame, encode_frame_raw(12, 0, 0, 0, b"")))


def test_empty_wire_is_short():
    _raises(E_SHORT, decode_frame, b"")
    _raises(E_SHORT, decode_frame, b"\x00")


def test_two_delimiters_are_not_one_frame():
    wire = H(VALID[0]["wire_hex"])
    _raises(E_COBS, decode_frame, wire + b"\x00")


def test_payload_error_offsets_and_messages():
    e = _raises(E_RANGE, decode_payload, H("a2000103" + "1a40000000"))
    assert e.offset == 4 and "1073741824" in str(e)
    e = _raises(E_CBOR, decode_payload, H("a1000102"))
    assert e.offset == 3 and "trailing" in str(e)
    e = _raises(E_UNSUPPORTED, decode_payload, H("a103fb3ff8000000000000"))
    assert e.offset == 2 and "float" in str(e)
    e = _raises(E_UNSUPPORTED, decode_payload, H("8181818180"))
    assert e.offset == 4 and "deeper" in str(e)
    e = _raises(E_CBOR, decode_payload, H("a2000101"))
    assert e.offset == 0 and "truncated" in str(e)
    e = _raises(E_UNSUPPORTED, decode_payload, H("a1616101"))
    assert e.offset == 1 and "key" in str(e)


# -- decode_payload specifics -------------------------------------------------------------


@pytest.mark.parametrize(
    "hexdata,value",
    [
        ("1805", 5),
        ("1b0000000000000005", 5),
        ("3b000000003fffffff", -(2**30)),
        ("1a3fffffff", 2**30 - 1),
        ("a20a010102", {10: 1, 1: 2}),  # key order need not be canonical
        ("b8010001", {0: 1}),
        ("5802abcd", b"\xab\xcd"),
        ("6361c2b0", "a°"),
        ("f6", None),
        ("84818180f4f5f6", [[[[]]], False, True, None]),
    ],
)
def test_decode_payload_accepts_non_minimal_and_any_key_order(hexdata, value):
    assert decode_payload(H(hexdata)) == value


def test_decode_payload_refuses_what_cbor2_would_fold():
    # cbor2 alone turns these into plain values; the subset has no tags
    assert cbor2.loads(H("c24101")) == 1
    _raises(E_UNSUPPORTED, decode_payload, H("c24101"))
    assert cbor2.loads(H("d9d9f701")) == 1
    _raises(E_UNSUPPORTED, decode_payload, H("d9d9f701"))
    # a bignum whose tagged form is exactly as long as the minimal int: only
    # refusing tags inside cbor2 (not the size check) catches this one
    assert cbor2.loads(H("c243010000")) == 65536 and len(cbor2.dumps(65536)) == 5
    _raises(E_UNSUPPORTED, decode_payload, H("c243010000"))
    _raises(E_UNSUPPORTED, decode_payload, H("82" "c243010000" "01"))
    # and cbor2 ignores trailing bytes
    assert cbor2.loads(H("0102")) == 1
    _raises(E_CBOR, decode_payload, H("0102"))


def test_decode_payload_host_only_checks():
    e = _raises(E_CBOR, decode_payload, H("a1006261ff"))
    assert "UTF-8" in str(e) and e.offset == 2
    e = _raises(E_SCHEMA, decode_payload, H("a201020103"))
    assert "duplicate map key 1" in str(e) and e.offset == 3
    # a board-level error later in the stream wins over a host-only one before it
    _raises(E_RANGE, decode_payload, H("82" "62c328" "1a40000000"))
    _raises(E_CBOR, decode_payload, H("a2" "0001" "0002" "ff"))


def test_decode_payload_empty_is_cbor_error():
    _raises(E_CBOR, decode_payload, b"")


def test_decode_payload_fast_path_used_for_telemetry(monkeypatch):
    v = next(v for v in VALID if v["name"] == "telemetry_sim")
    p = H(v["payload_hex"])

    class Boom:
        def __init__(self, b):
            raise AssertionError("slow path taken")

    monkeypatch.setattr(codec, "_Scanner", Boom)
    assert decode_payload(p) == mv.from_json(v["payload"])
    assert decode_frame(H(v["wire_hex"])).payload == mv.from_json(v["payload"])


def test_slow_path_gives_the_same_values():
    for v in VALID:
        if v["payload_hex"]:
            s = codec._Scanner(H(v["payload_hex"]))
            assert s.whole() == mv.from_json(v["payload"])


# -- encode_payload --------------------------------------------------------------------


def test_encode_payload_canonical():
    # keys sorted: {0: [1, 2], 1: h'78', 3: 1}
    assert encode_payload({3: 1, 0: [1, 2], 1: b"x"}) == H("a3" "00820102" "014178" "0301")
    assert encode_payload((1, 2)) == H("820102")
    assert encode_payload(bytearray(b"ab")) == H("426162")
    # canonical order is by encoded key: 00 < 20 (-1) < 18 18 (24, longer)
    assert encode_payload({-1: 0, 24: 1, 0: 2}) == H("a3" "0002" "2000" "181801")


@pytest.mark.parametrize(
    "obj,code",
    [
        (1.5, E_UNSUPPORTED),
        ({0: [0.0]}, E_UNSUPPORTED),
        (cbor2.CBORTag(1, 0), E_UNSUPPORTED),
        ({1, 2}, E_UNSUPPORTED),
        ({"a": 1}, E_UNSUPPORTED),
        ({True: 1}, E_UNSUPPORTED),
        ({(1,): 1}, E_UNSUPPORTED),
        (2**30, E_RANGE),
        (-(2**30) - 1, E_RANGE),
        ({2**30: 0}, E_RANGE),
        ([[[[[1]]]]], E_UNSUPPORTED),
        ([[[[{}]]]], E_UNSUPPORTED),
        (object(), E_UNSUPPORTED),
        (cbor2.undefined, E_UNSUPPORTED),
    ],
)
def test_encode_payload_rejects(obj, code):
    _raises(code, encode_payload, obj)


def test_encode_payload_error_names_the_path():
    e = _raises(E_RANGE, encode_payload, {0: [1, 2**31]})
    assert "[0][1]" in str(e) and str(2**31) in str(e)
    e = _raises(E_UNSUPPORTED, encode_payload, {3: 2.5})
    assert "[3]" in str(e) and "float" in str(e)


def test_encode_payload_limits_are_inclusive():
    assert decode_payload(encode_payload([2**30 - 1, -(2**30)])) == [2**30 - 1, -(2**30)]
    assert decode_payload(encode_payload([[[[1]]]])) == [[[[1]]]]


# -- encode_frame --------------------------------------------------------------------


def test_encode_frame_arguments():
    assert encode_frame(T_ACK, ack=9, flags=F_ACK) == encode_frame_raw(T_ACK, F_ACK, 0, 9, b"")
    assert decode_frame(encode_frame(T_CMD, 5, 6, {0: 1}, F_ACK)) == Frame(
        T_CMD, F_ACK, 5, 6, {0: 1}, H("a10001"))
    _raises(E_TYPE, encode_frame, 0)
    _raises(E_TYPE, encode_frame, 12)
    _raises(E_RANGE, encode_frame, T_CMD, 256)
    _raises(E_RANGE, encode_frame, T_CMD, 0, -1)
    _raises(E_RANGE, encode_frame_raw, 16, 0, 0, 0, b"")
    _raises(E_RANGE, encode_frame_raw, 1, 0x100, 0, 0, b"")


def test_encode_frame_payload_size_limit():
    wire = encode_frame_raw(T_CMD, 0, 0, 0, b"\x01" * MAX_PAYLOAD)
    assert len(wire) == MAX_WIRE
    _raises(E_CBOR, decode_frame, wire)  # 248 bytes of CBOR `1`: trailing bytes
    big = [b"\x01" * (MAX_PAYLOAD - 3)]
    assert decode_frame(encode_frame(T_CMD, 0, 0, big)).payload == big
    _raises(E_OVERFLOW, encode_frame_raw, T_CMD, 0, 0, 0, b"\x01" * (MAX_PAYLOAD + 1))
    _raises(E_OVERFLOW, encode_frame, T_CMD, 0, 0, b"x" * 250)


def test_null_payload_differs_from_empty():
    f = decode_frame(encode_frame_raw(T_CMD, 0, 0, 0, b"\xf6"))
    assert f.payload is None and f.payload_bytes == b"\xf6"
    f = decode_frame(encode_frame(T_ACK))
    assert f.payload is None and f.payload_bytes == b""


# -- FrameSplitter -----------------------------------------------------------------------


def test_splitter_splits_and_buffers():
    a, b = H(VALID[0]["wire_hex"]), H(VALID[1]["wire_hex"])
    s = FrameSplitter()
    stream = b"\x00" + a + b"\x00" + b
    assert s.feed(stream[:5]) == []
    assert s.pending == 4
    chunks = s.feed(stream[5:])
    assert chunks == [a[:-1], b[:-1]]
    assert s.pending == 0
    assert [decode_frame(c).ftype for c in chunks] == [1, 1]


def test_splitter_byte_by_byte():
    stream = b"".join(H(v["wire_hex"]) for v in VALID)
    s = FrameSplitter()
    chunks = []
    for i in range(len(stream)):
        chunks += s.feed(stream[i : i + 1])
    assert chunks == [H(v["wire_hex"])[:-1] for v in VALID]


def test_splitter_oversize_marker_once_then_discard():
    good = H(VALID[0]["wire_hex"])
    s = FrameSplitter()
    out = s.feed(b"\x07" * 300)
    assert len(out) == 1 and out[0] == b"\x07" * MAX_WIRE
    assert s.oversized == 1
    assert s.feed(b"\x07" * 1000) == []  # still discarding, nothing buffered
    assert s.pending == 0
    assert s.feed(b"\x07\x00" + good) == [good[:-1]]
    assert s.oversized == 1
    _raises(E_OVERSIZE, decode_frame, out[0])


def test_splitter_oversize_boundary_and_delimiter_in_same_feed():
    s = FrameSplitter()
    assert s.feed(b"\x01" * 255 + b"\x00") == [b"\x01" * 255]
    out = s.feed(b"\x02" * 256 + b"\x00" + b"\x03\x00")
    assert out == [b"\x02" * 256, b"\x03"]
    assert s.oversized == 1


def test_splitter_reset():
    s = FrameSplitter()
    s.feed(b"\x05" * 10)
    s.reset()
    assert s.pending == 0
    assert s.feed(b"\x06\x00") == [b"\x06"]


# -- fuzz: the host only ever raises ProtocolError ------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_decode_frame_only_protocol_errors(data):
    try:
        f = decode_frame(data)
    except ProtocolError as e:
        assert e.code in ERROR_NAMES and e.code != 0
    else:
        assert 1 <= f.ftype <= 11


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80))
def test_fuzz_decode_payload_only_protocol_errors(data):
    try:
        decode_payload(data)
    except ProtocolError as e:
        assert e.code in (E_CBOR, E_UNSUPPORTED, E_RANGE, E_SCHEMA)
        assert e.offset is not None and 0 <= e.offset <= len(data)


_WIRES = [H(v["wire_hex"]) for v in VALID]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_WIRES), st.lists(st.tuples(st.integers(0, 300), st.integers(0, 7)),
                                         min_size=1, max_size=4), st.integers(0, 300))
def test_fuzz_damaged_frames(wire, flips, cut):
    w = bytearray(wire)
    for pos, bit in flips:
        w[pos % len(w)] ^= 1 << bit
    for data in (bytes(w), bytes(w[: cut % len(w)])):
        try:
            decode_frame(data)
        except ProtocolError as e:
            assert e.code in ERROR_NAMES and e.code != 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=400), max_size=8))
def test_fuzz_splitter_bounded(pieces):
    s = FrameSplitter()
    for p in pieces:
        for chunk in s.feed(p):
            assert 0 < len(chunk) <= MAX_WIRE and 0 not in chunk
        assert s.pending < MAX_WIRE
