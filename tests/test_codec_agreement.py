"""The board codec (metal.core) and the host codec (metal.host.codec) agree.

Properties over the CBOR subset, frames and damaged byte streams: whatever one
side writes the other reads back identically, and for bad input both report
the same error code (at the same payload offset for CBOR errors). The host is
stricter in two documented ways only: invalid UTF-8 text (E_CBOR) and
duplicate map keys (E_SCHEMA), which the board's syntactic validate() lets
through to its schema checks.
"""

import importlib.util
import sys
from pathlib import Path

import cbor2
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from metal.core.cbor import Decoder
from metal.core.frame import SCRATCH_LEN, Deframer, encode_frame as board_encode_frame
from metal.core.proto import E_CBOR, E_OK, E_SCHEMA, MAX_PAYLOAD, MAX_WIRE
from metal.host.codec import (
    FrameSplitter,
    ProtocolError,
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

TOP = 2**30 - 1
BOTTOM = -(2**30)
_BOUNDS = [0, 23, 24, 255, 256, 65535, 65536, TOP, -1, -24, -25, -256, -257, -65536, -65537,
           BOTTOM]

INTS = st.one_of(st.integers(BOTTOM, TOP), st.sampled_from(_BOUNDS))
LEAVES = st.one_of(INTS, st.binary(max_size=30), st.text(max_size=12), st.booleans(), st.none())


def _subset(depth):
    if depth == 0:
        return LEAVES
    sub = _subset(depth - 1)
    return st.one_of(LEAVES, st.lists(sub, max_size=4), st.dictionaries(INTS, sub, max_size=4))


SUBSET = _subset(4)  # every value here is inside the board subset (depth <= 4)

# Well-formed CBOR *outside* the subset too: floats, big ints, tags, text keys,
# deeper nesting. Used (then damaged) to drive the error-agreement checks.
_WIDE_LEAVES = st.one_of(
    LEAVES,
    st.integers(-(2**64), 2**64 - 1),
    st.floats(allow_nan=False),
    st.builds(cbor2.CBORTag, st.integers(0, 2**16), INTS),
    st.just(cbor2.undefined),
)


def _wide(depth):
    if depth == 0:
        return _WIDE_LEAVES
    sub = _wide(depth - 1)
    keys = st.one_of(INTS, st.text(max_size=3), st.booleans())
    return st.one_of(_WIDE_LEAVES, st.lists(sub, max_size=3), st.dictionaries(keys, sub, max_size=3))


WIDE = _wide(6)


def host_outcome(b):
    try:
        decode_payload(b)
    except ProtocolError as e:
        return e.code, e.offset, str(e)
    return E_OK, None, ""


def board_outcome(b):
    d = Decoder()
    err = d.validate(b, 0, len(b))
    return err, (d.pos if err else None)


def assert_agree(b):
    hcode, hoff, msg = host_outcome(b)
    bcode, boff = board_outcome(b)
    if hcode == E_SCHEMA or (hcode == E_CBOR and "UTF-8" in msg):
        assert bcode == E_OK, (b.hex(), msg, bcode)  # host-only checks
    else:
        assert (hcode, hoff) == (bcode, boff), (b.hex(), msg, bcode, boff)
    return hcode


# -- values ---------------------------------------------------------------------------------


@settings(max_examples=250, deadline=None)
@given(SUBSET)
def test_board_encoder_output_is_what_cbor2_writes_and_reads(x):
    b, err = mv.board_encode(x, cap=4096)
    assert err == E_OK
    assert b == cbor2.dumps(x)  # same minimal heads, same map order
    assert cbor2.loads(b) == x
    assert decode_payload(b) == x


@settings(max_examples=400, deadline=None)
@given(SUBSET)
def test_host_encoding_reads_back_on_the_board(x):
    for b in (encode_payload(x), cbor2.dumps(x)):
        assert mv.board_decode(b) == (E_OK, x)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(INTS, INTS), max_size=20))
def test_canonical_host_maps_equal_board_maps_written_in_key_order(pairs):
    m = dict(pairs)
    canonical = encode_payload(m)
    ordered = dict(sorted(m.items(), key=lambda kv: cbor2.dumps(kv[0])))
    ordered = dict(sorted(ordered.items(), key=lambda kv: len(cbor2.dumps(kv[0]))))
    assert mv.board_encode(ordered, cap=4096)[0] == canonical


# -- errors ---------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40))
def test_error_agreement_on_random_bytes(b):
    assert_agree(b)


@st.composite
def damaged_encodings(draw):
    b = bytearray(cbor2.dumps(draw(WIDE)))
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(["flip", "cut", "append", "insert", "wrap"]))
        if how == "flip" and b:
            i = draw(st.integers(0, len(b) - 1))
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif how == "cut" and b:
            b = b[: draw(st.integers(0, len(b) - 1))]
        elif how == "append":
            b += draw(st.binary(min_size=1, max_size=4))
        elif how == "insert":
            i = draw(st.integers(0, len(b)))
            b[i:i] = draw(st.sampled_from([b"\x18\x05", b"\x1b" + bytes(7) + b"\x01", b"\xf9",
                                           b"\x9f", b"\xff", b"\xc2", b"\x1a\x40"]))
        elif how == "wrap":  # one more level of nesting
            b = bytearray(b"\x81" + bytes(b))
    return bytes(b)


@settings(max_examples=600, deadline=None)
@given(damaged_encodings())
def test_error_agreement_on_damaged_and_out_of_subset_cbor(b):
    assert_agree(b)


@settings(max_examples=200, deadline=None)
@given(SUBSET, st.integers(0, 3))
def test_non_minimal_encodings_accepted_by_both(x, widen):
    # re-encode every integer head with a wider argument
    b = cbor2.dumps(x)
    d = Decoder()
    d.reset(b, 0, len(b))
    out = bytearray()
    while d.pos < len(b):
        p = d.pos
        k = d.next()
        assert k >= 0
        ib = b[p]
        mt = ib & 0xE0
        if ib >> 5 in (0, 1) or (ib >> 5 in (2, 3, 4, 5)):
            ai = ib & 31
            v = ai if ai < 24 else int.from_bytes(b[p + 1 : p + 1 + (1 << (ai - 24))], "big")
            n = max(1 << widen, 1 if v < 256 else 2 if v < 65536 else 4)
            out += bytes([mt | (24 + n.bit_length() - 1)]) + v.to_bytes(n, "big")
            if ib >> 5 in (2, 3):
                out += b[d.start : d.start + d.val]
        else:
            out += b[p : d.pos]
    out = bytes(out)
    assert decode_payload(out) == x
    assert mv.board_decode(out) == (E_OK, x)


# -- frames ---------------------------------------------------------------------------------

SMALL = _subset(3)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 11), st.integers(0, 255), st.integers(0, 255), st.integers(0, 255),
       st.one_of(st.none(), SMALL))
def test_board_frame_decodes_on_the_host(ftype, flags, seq, ack, x):
    p = b"" if x is None else cbor2.dumps(x)
    assume(len(p) <= MAX_PAYLOAD)
    out = bytearray(MAX_WIRE)
    n = board_encode_frame(ftype, flags, seq, ack, p, 0, len(p), bytearray(SCRATCH_LEN), out, 0)
    assert 0 < n <= MAX_WIRE
    wire = bytes(out[:n])
    f = decode_frame(wire)
    assert (f.ftype, f.flags, f.seq, f.ack, f.payload_bytes) == (ftype, flags, seq, ack, p)
    assert f.payload == x
    assert encode_frame_raw(ftype, flags, seq, ack, p) == wire


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 11), st.integers(0, 255), st.integers(0, 255), st.integers(0, 255),
       st.one_of(st.none(), SMALL))
def test_host_frame_deframes_on_the_board(ftype, flags, seq, ack, x):
    try:
        wire = encode_frame(ftype, seq, ack, x, flags)
    except ProtocolError:
        assume(False)  # payload over 248 bytes
    df = Deframer()
    assert df.feed(wire, 0, len(wire)) == len(wire)
    assert df.status == E_OK
    assert (df.ftype, df.flags, df.seq, df.ack) == (ftype, flags, seq, ack)
    p = bytes(df.body[4 : 4 + df.payload_len])
    if x is None:
        assert p == b""
    else:
        assert mv.board_decode(p) == (E_OK, x)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 15), st.integers(0, 255), st.integers(0, 255), st.integers(0, 255),
       st.binary(max_size=MAX_PAYLOAD))
def test_raw_frames_any_payload_bytes(ftype, flags, seq, ack, p):
    wire = encode_frame_raw(ftype, flags, seq, ack, p)
    out = bytearray(MAX_WIRE)
    n = board_encode_frame(ftype, flags, seq, ack, p, 0, len(p), bytearray(SCRATCH_LEN), out, 0)
    assert bytes(out[:n]) == wire


# -- streams --------------------------------------------------------------------------------

_WIRES = [bytes.fromhex(v["wire_hex"]) for v in VECTORS["valid"] + VECTORS["invalid"]]


def board_stream(data):
    df = Deframer()
    out = []
    i = 0
    while i < len(data):
        i = df.feed(data, i, len(data))
        if df.status == E_OK:
            s = df.payload_start
            p = bytes(df.body[s : s + df.payload_len])
            code = E_OK if not p else Decoder().validate(p, 0, len(p))
            out.append((code, df.ftype, df.flags, df.seq, df.ack, p))
        elif df.status > 0:
            out.append((df.status,))
    return out


def host_stream(data, cuts):
    sp = FrameSplitter()
    chunks = []
    bounds = [0, *sorted(cuts), len(data)]
    for a, b in zip(bounds, bounds[1:]):
        chunks += sp.feed(data[a:b])
    out = []
    for c in chunks:
        try:
            f = decode_frame(c)
        except ProtocolError as e:
            out.append((e.code,))
        else:
            out.append((E_OK, f.ftype, f.flags, f.seq, f.ack, f.payload_bytes))
    return out


@st.composite
def streams(draw):
    parts = []
    for _ in range(draw(st.integers(1, 6))):
        w = bytearray(draw(st.sampled_from(_WIRES)))
        how = draw(st.sampled_from(["keep", "flip", "cut", "garbage", "oversize", "flush"]))
        if how == "flip":
            i = draw(st.integers(0, len(w) - 1))
            w[i] ^= 1 << draw(st.integers(0, 7))
        elif how == "cut":
            w = w[: draw(st.integers(0, len(w) - 1))]
        elif how == "garbage":
            w = bytearray(draw(st.binary(max_size=60)))
        elif how == "oversize":
            w = bytearray(b"\x77" * draw(st.integers(250, 600)) + b"\x00")
        elif how == "flush":
            w = b"\x00" + w
        parts.append(bytes(w))
    data = b"".join(parts)
    cuts = draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=6, unique=True))
    return data, cuts


@settings(max_examples=300, deadline=None)
@given(streams())
def test_board_deframer_and_host_splitter_agree_on_streams(sc):
    data, cuts = sc
    board = board_stream(data)
    host = host_stream(data, [c for c in cuts if c < len(data)])
    assert len(board) == len(host)
    for b, h in zip(board, host):
        if len(b) == 1:  # the board dropped the frame: the host drops it for the same reason
            assert h == b
            continue
        code, ftype, flags, seq, ack, p = b
        if len(h) == 1:  # the frame is fine, its payload is not
            assert h[0] == host_outcome(p)[0] != E_OK
            assert_agree(p)
        else:
            assert code == E_OK
            assert h == (E_OK, ftype, flags, seq, ack, p)


# -- the vectors file is what the generator writes -----------------------------------------------


def test_vectors_file_is_up_to_date():
    assert mv.main(["--check"]) == 0, "run: .venv/bin/python tests/vectors/make_vectors.py"


def test_vectors_cover_every_message_type_and_error():
    types = {v["type"] for v in VECTORS["valid"]}
    assert types == set(range(1, 12))
    errors = {v["error"] for v in VECTORS["invalid"]}
    assert errors == {"COBS", "SHORT", "OVERSIZE", "CRC", "VERSION", "TYPE", "CBOR",
                      "UNSUPPORTED", "RANGE"}
    assert {v["name"] for v in VECTORS["valid"]} >= {"edge_max_payload", "edge_zero_bytes",
                                                    "edge_seq_255_ack_wrap", "telemetry_sim"}
    assert max(len(bytes.fromhex(v["payload_hex"])) for v in VECTORS["valid"]) == MAX_PAYLOAD
