"""core/frame.py: encode_frame and the streaming Deframer (board side)."""

import importlib.util
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metal.core import frame as frame_mod
from metal.core.cbor import Decoder, Encoder
from metal.core.cobs import cobs_decode, cobs_encode
from metal.core.crc16 import crc16
from metal.core.frame import SCRATCH_LEN, Deframer, encode_frame
from metal.core.proto import (
    CRC_LEN,
    E_CBOR,
    E_COBS,
    E_COUNT,
    E_CRC,
    E_OK,
    E_OVERSIZE,
    E_RANGE,
    E_SHORT,
    E_TYPE,
    E_UNSUPPORTED,
    E_VERSION,
    F_ACK,
    HEADER_LEN,
    MAX_BODY,
    MAX_PAYLOAD,
    MAX_WIRE,
)

REPO = Path(__file__).resolve().parent.parent


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
CODES = {"COBS": E_COBS, "SHORT": E_SHORT, "OVERSIZE": E_OVERSIZE, "CRC": E_CRC,
         "VERSION": E_VERSION, "TYPE": E_TYPE, "CBOR": E_CBOR, "UNSUPPORTED": E_UNSUPPORTED,
         "RANGE": E_RANGE}


def board_frame(ftype, flags, seq, ack, payload=b""):
    out = bytearray(MAX_WIRE)
    n = encode_frame(ftype, flags, seq, ack, payload, 0, len(payload), bytearray(SCRATCH_LEN),
                     out, 0)
    assert n > 0
    return bytes(out[:n])


def run_stream(df, data, cuts=()):
    """Feed ``data`` in pieces split at ``cuts``; return the outcomes in order."""
    outcomes = []
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(data)), len(data)]
    for a, b in zip(bounds, bounds[1:]):
        i = a
        while i < b:
            j = df.feed(data, i, b)
            assert i < j <= b
            i = j
            if df.status == E_OK:
                s = df.payload_start
                outcomes.append(("ok", df.ftype, df.flags, df.seq, df.ack,
                                 bytes(df.body[s : s + df.payload_len])))
            elif df.status != -1:
                outcomes.append(df.status)
    return outcomes


def test_sizes():
    assert SCRATCH_LEN == MAX_BODY + CRC_LEN
    assert frame_mod._MAX_ENC == MAX_WIRE - 1
    assert frame_mod._MIN_DECODED == HEADER_LEN + CRC_LEN


# -- vectors --------------------------------------------------------------------------


@pytest.mark.parametrize("v", VALID, ids=[v["name"] for v in VALID])
def test_encode_valid_vector(v):
    payload = bytes.fromhex(v["payload_hex"])
    assert board_frame(v["type"], v["flags"], v["seq"], v["ack"], payload).hex() == v["wire_hex"]
    # payload None is allowed for an empty payload
    if not payload:
        out = bytearray(MAX_WIRE)
        n = encode_frame(v["type"], v["flags"], v["seq"], v["ack"], None, 0, 0,
                         bytearray(SCRATCH_LEN), out, 0)
        assert out[:n].hex() == v["wire_hex"]


@pytest.mark.parametrize("v", VALID, ids=[v["name"] for v in VALID])
def test_deframe_valid_vector(v):
    wire = bytes.fromhex(v["wire_hex"])
    df = Deframer()
    assert df.feed(wire, 0, len(wire)) == len(wire)
    assert df.status == E_OK
    assert (df.ftype, df.flags, df.seq, df.ack) == (v["type"], v["flags"], v["seq"], v["ack"])
    assert df.payload_start == HEADER_LEN
    assert isinstance(df.body, bytearray)
    assert df.body[: HEADER_LEN + df.payload_len].hex() == v["body_hex"]
    assert df.frames == 1 and sum(df.errors) == 0
    if df.payload_len:
        d = Decoder()
        assert d.validate(df.body, HEADER_LEN, HEADER_LEN + df.payload_len) == E_OK


@pytest.mark.parametrize("v", INVALID, ids=[v["name"] for v in INVALID])
def test_reject_invalid_vector(v):
    wire = bytes.fromhex(v["wire_hex"])
    df = Deframer()
    out = run_stream(df, wire)
    assert len(out) == 1, out
    want = CODES[v["error"]]
    if want >= E_CBOR:
        assert out[0][0] == "ok"
        payload = out[0][5]
        assert payload.hex() == v["payload_hex"]
        d = Decoder()
        assert d.validate(payload, 0, len(payload)) == want
    else:
        assert out[0] == want
        assert df.errors[want] == 1 and df.frames == 0
        assert sum(df.errors) == 1


def test_all_vectors_as_one_stream_any_chunking():
    stream = b"".join(bytes.fromhex(v["wire_hex"]) for v in VALID + INVALID)
    want = run_stream(Deframer(), stream)
    assert len(want) == len(VALID) + len(INVALID)
    assert [o[0] == "ok" for o in want[: len(VALID)]] == [True] * len(VALID)
    assert run_stream(Deframer(), stream, cuts=range(len(stream))) == want  # byte by byte
    rng = random.Random(7)
    for _ in range(20):
        cuts = rng.sample(range(1, len(stream)), 40)
        assert run_stream(Deframer(), stream, cuts) == want


# -- encode_frame --------------------------------------------------------------------------


def test_encode_frame_limits():
    scratch = bytearray(SCRATCH_LEN)
    out = bytearray(400)
    p = bytes(range(1, 250))
    assert encode_frame(6, 0, 0, 0, p, 0, MAX_PAYLOAD + 1, scratch, out, 0) == -1
    assert encode_frame(6, 0, 0, 0, p, 0, -1, scratch, out, 0) == -1
    n = encode_frame(6, 0, 0, 0, p, 0, MAX_PAYLOAD, scratch, out, 0)
    assert n == MAX_WIRE  # body+CRC 254 bytes -> 255 encoded + delimiter
    assert encode_frame(6, 0, 0, 0, p, 0, MAX_PAYLOAD, bytearray(SCRATCH_LEN - 1), out, 0) == -1


def test_encode_frame_out_too_small_and_offset():
    p = bytes.fromhex("a10001")
    wire = board_frame(6, F_ACK, 1, 2, p)
    for size in range(len(wire)):
        assert encode_frame(6, F_ACK, 1, 2, p, 0, 3, bytearray(SCRATCH_LEN), bytearray(size),
                            0) == -1
    out = bytearray(b"\xee" * 10 + bytes(len(wire)))
    assert encode_frame(6, F_ACK, 1, 2, p, 0, 3, bytearray(SCRATCH_LEN), out, 10) == len(wire)
    assert bytes(out[:10]) == b"\xee" * 10 and bytes(out[10:]) == wire
    assert encode_frame(6, F_ACK, 1, 2, p, 0, 3, bytearray(SCRATCH_LEN), out, 11) == -1


def test_encode_frame_payload_window_and_in_place():
    p = bytes.fromhex("a10001")
    wire = board_frame(6, F_ACK, 1, 2, p)
    out = bytearray(MAX_WIRE)
    big = b"\xff\xff" + p + b"\xff"
    assert out[: encode_frame(6, F_ACK, 1, 2, big, 2, 3, bytearray(SCRATCH_LEN), out, 0)] == wire
    # payload built straight into the scratch buffer behind the header: no copy needed
    scratch = bytearray(SCRATCH_LEN)
    e = Encoder(scratch)
    e.reset(HEADER_LEN)
    e.map(1)
    e.uint(0)
    e.uint(1)
    n = encode_frame(6, F_ACK, 1, 2, scratch, HEADER_LEN, e.pos - HEADER_LEN, scratch, out, 0)
    assert bytes(out[:n]) == wire


def test_encode_frame_masks_header_fields():
    assert board_frame(0x13, 0x101, 0x1FF, 0x100) == board_frame(3, 1, 0xFF, 0)


def test_encoded_frame_layout_by_hand():
    # ACK with ack 9, empty payload: body 19 01 00 09, CRC-16/CCITT-FALSE 0xCA09
    # (crcmod crc-ccitt-false), so body+CRC = 19 01 00 09 CA 09 and COBS gives
    # [03 19 01] [04 09 CA 09] plus the delimiter.
    assert board_frame(9, F_ACK, 0, 9) == bytes.fromhex("03 19 01 04 09 ca 09 00")


# -- Deframer behaviour -------------------------------------------------------------------


def test_flush_and_empty_frames_are_ignored():
    f = board_frame(3, 0, 0, 0, bytes.fromhex("a1001903e8"))
    df = Deframer()
    out = run_stream(df, b"\x00\x00\x00" + f + b"\x00\x00" + f)
    assert [o[0] for o in out] == ["ok", "ok"]
    assert sum(df.errors) == 0 and df.frames == 2


def test_garbage_before_a_frame():
    f = board_frame(3, 0, 0, 0, bytes.fromhex("a1001903e8"))
    df = Deframer()
    # garbage glued to the frame spoils it; a flush delimiter saves the next one
    out = run_stream(df, b"\x13\x37" + f + b"\x13\x37\x00" + f)
    assert out[0] in (E_COBS, E_CRC, E_SHORT, E_VERSION, E_TYPE)
    assert out[1] in (E_COBS, E_CRC, E_SHORT, E_VERSION, E_TYPE)
    assert out[2][0] == "ok"


def test_oversize_reported_once_at_the_limit_then_discarded():
    f = board_frame(11, 0, 0, 0, bytes.fromhex("a2000101617a"))
    junk = bytes([0x42]) * 2000
    df = Deframer()
    data = junk + b"\x00" + f
    i = df.feed(data, 0, len(data))
    assert i == MAX_WIRE and df.status == E_OVERSIZE  # reported at the 256th byte
    i = df.feed(data, i, len(data))
    assert df.status == E_OK and i == len(data)
    assert df.errors[E_OVERSIZE] == 1 and df.frames == 1


def test_oversize_boundary():
    # 255 encoded bytes is the longest valid frame; 256 is one too many
    scratch = bytearray(SCRATCH_LEN)
    out = bytearray(MAX_WIRE)
    n = encode_frame(8, F_ACK, 1, 1, bytes(range(1, 249)), 0, MAX_PAYLOAD, scratch, out, 0)
    assert n == MAX_WIRE
    assert run_stream(Deframer(), bytes(out))[0][0] == "ok"
    # 255 bytes are accepted as a frame (here 252 zero bytes + a wrong CRC)
    assert run_stream(Deframer(), b"\x01" * 255 + b"\x00") == [E_CRC]
    assert run_stream(Deframer(), b"\x01" * 256 + b"\x00") == [E_OVERSIZE]
    assert run_stream(Deframer(), b"\x01" * 256) == [E_OVERSIZE]
    assert run_stream(Deframer(), b"\x01" * 255) == []


def test_oversize_discard_spans_feeds():
    f = board_frame(9, F_ACK, 0, 3)
    df = Deframer()
    out = run_stream(df, b"\x05" * 300 + b"\x05" * 300 + b"\x00" + f, cuts=(100, 280, 550))
    assert out[0] == E_OVERSIZE and out[1][0] == "ok" and len(out) == 2


def test_reset_drops_a_partial_frame():
    f = board_frame(9, F_ACK, 0, 3)
    df = Deframer()
    assert run_stream(df, f[:-3]) == []
    df.reset()
    assert run_stream(df, f)[0][0] == "ok"


def test_short_frames():
    assert run_stream(Deframer(), b"\x01\x00") == [E_SHORT]
    five = b"\x19\x01\x00"
    c = crc16(five, 0, 3)
    from cobs import cobs as cobs_pkg

    assert run_stream(Deframer(), cobs_pkg.encode(five + bytes([c >> 8, c & 0xFF])) + b"\x00") == [
        E_SHORT
    ]


def test_counters_count_and_wrap():
    df = Deframer()
    assert len(df.errors) == E_COUNT
    good = board_frame(9, F_ACK, 0, 3)
    bad = bytearray(good)
    bad[2] ^= 0x40
    run_stream(df, good + bytes(bad) + b"\x01\x00" + good)
    assert df.frames == 2 and df.errors[E_SHORT] == 1
    assert df.errors[E_CRC] + df.errors[E_COBS] + df.errors[E_VERSION] + df.errors[E_TYPE] == 1
    df.frames = 0x3FFFFFFF
    df.errors[E_SHORT] = 0x3FFFFFFF
    run_stream(df, good + b"\x01\x00")
    assert df.frames == 0 and df.errors[E_SHORT] == 0


# -- fuzz --------------------------------------------------------------------------------

_FRAME_CODES = (E_COBS, E_SHORT, E_OVERSIZE, E_CRC, E_VERSION, E_TYPE)
_VALID_WIRES = [bytes.fromhex(v["wire_hex"]) for v in VALID]


@st.composite
def damaged_streams(draw):
    parts = []
    for _ in range(draw(st.integers(1, 6))):
        w = bytearray(draw(st.sampled_from(_VALID_WIRES)))
        how = draw(st.sampled_from(["keep", "flip", "truncate", "garbage", "oversize", "splice"]))
        if how == "flip":
            for _ in range(draw(st.integers(1, 3))):
                i = draw(st.integers(0, len(w) - 1))
                w[i] ^= 1 << draw(st.integers(0, 7))
        elif how == "truncate":
            w = w[: draw(st.integers(0, len(w) - 1))]
        elif how == "garbage":
            w = bytearray(draw(st.binary(max_size=80)))
        elif how == "oversize":
            w = bytearray(draw(st.binary(min_size=256, max_size=700)).replace(b"\x00", b"\x55"))
        elif how == "splice":
            cut = draw(st.integers(1, len(w) - 1))
            w = w[:cut] + draw(st.binary(max_size=10)) + w[cut:]
        parts.append(bytes(w))
    return b"".join(parts)


@settings(max_examples=300, deadline=None)
@given(damaged_streams(), st.lists(st.integers(1, 2000), max_size=5))
def test_fuzz_deframer_never_raises_and_counts(stream, cuts):
    df = Deframer()
    out = run_stream(df, stream, cuts)
    errs = [o for o in out if not isinstance(o, tuple)]
    assert all(e in _FRAME_CODES for e in errs)
    assert sum(df.errors) == len(errs)
    assert df.frames == len(out) - len(errs)
    for o in out:
        if isinstance(o, tuple):
            _, ftype, flags, seq, ack, payload = o
            assert 1 <= ftype <= 11 and len(payload) <= MAX_PAYLOAD
            d = Decoder()
            assert d.validate(payload, 0, len(payload)) in (E_OK, E_CBOR, E_UNSUPPORTED, E_RANGE)
    # chunking never changes the outcome
    assert run_stream(Deframer(), stream) == out


def reference_stream(data):
    """What the board's deframing means, the slow way: split at 0x00, and per
    frame cobs_decode, the CRC over the body, then the header checks (the
    oversize rule: the 256th byte without a delimiter ends the frame)."""
    out = []
    acc = bytearray()
    discard = False
    for b in data:
        if b == 0:
            if discard:
                discard = False
            elif acc:
                out.append(_reference_frame(bytes(acc)))
            acc.clear()
            continue
        if discard:
            continue
        if len(acc) == MAX_WIRE - 1:
            out.append(E_OVERSIZE)
            acc.clear()
            discard = True
            continue
        acc.append(b)
    return out


def _reference_frame(enc):
    body = bytearray(MAX_WIRE)
    n = cobs_decode(enc, 0, len(enc), body, 0)
    if n < 0:
        return E_COBS
    if n < HEADER_LEN + CRC_LEN:
        return E_SHORT
    if crc16(body, 0, n) != 0:
        return E_CRC
    if body[0] >> 4 != 1:
        return E_VERSION
    t = body[0] & 0x0F
    if t == 0 or t > 11:
        return E_TYPE
    return ("ok", t, body[1], body[2], body[3], bytes(body[HEADER_LEN:n - CRC_LEN]))


@settings(max_examples=400, deadline=None)
@given(damaged_streams(), st.lists(st.integers(1, 2000), max_size=5))
def test_streaming_deframer_matches_the_three_pass_reference(stream, cuts):
    # the one-pass decoder (COBS + CRC as the bytes arrive, state across
    # feeds) says what cobs_decode + crc16 + header checks say, per frame
    assert run_stream(Deframer(), stream, cuts) == reference_stream(stream)


@pytest.mark.parametrize("data", [
    b"w" * 255 + b"\x00",  # a group cut short exactly at the limit: COBS, not CRC
    b"\x05" * 254 + b"\x02\x00",
    b"\xff" + b"\x01" * 254 + b"\x00",  # a full 254-byte run, then the delimiter
    b"\xff" + b"\x01" * 253 + b"\x02" + b"\x00",
    b"\x02\x11" * 127 + b"\x01\x00",
    b"\x01" * 256 + b"\x00" + b"\x02\x11\x00",
])
def test_deframer_at_the_size_limit_matches_the_reference(data):
    for cut in (None, 1, 128, 255, 256):
        assert run_stream(Deframer(), data, () if cut is None else (cut,)) == reference_stream(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 15), st.integers(0, 255), st.integers(0, 255), st.integers(0, 255),
       st.lists(st.sampled_from([0, 0, 1, 0x7F, 0xFF]) | st.integers(0, 255), max_size=248),
       st.integers(0, 7), st.integers(0, 7))
def test_encode_frame_is_cobs_of_body_and_crc(ftype, flags, seq, ack, payload, p_start, o_start):
    # the one-pass encoder against cobs_encode(body || CRC) from core/cobs.py
    p = bytes(payload)
    src = bytes(range(p_start)) + p
    out = bytearray(o_start + MAX_WIRE)
    n = encode_frame(ftype, flags, seq, ack, src, p_start, len(p), bytearray(SCRATCH_LEN), out,
                     o_start)
    body = bytes([0x10 | (ftype & 0x0F), flags, seq, ack]) + p
    c = crc16(body, 0, len(body))
    ref = bytearray(MAX_WIRE)
    e = cobs_encode(body + bytes([c >> 8, c & 0xFF]), 0, len(body) + 2, ref, 0)
    assert bytes(out[o_start:o_start + n]) == bytes(ref[:e]) + b"\x00"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1500))
def test_fuzz_garbage(data):
    df = Deframer()
    out = run_stream(df, data)
    errs = [o for o in out if not isinstance(o, tuple)]
    assert sum(df.errors) == len(errs)
    assert df.frames + len(errs) == len(out)


# -- allocation check under a real MicroPython ---------------------------------------------

_HEAP_SCRIPT = r"""
import gc, micropython
from metal.core.cbor import Encoder, Decoder, K_ERROR
from metal.core.frame import encode_frame, Deframer, SCRATCH_LEN
from metal.core.proto import E_OK
scratch = bytearray(SCRATCH_LEN)
out = bytearray(700)
buf = bytearray(248)
enc = Encoder(buf)
tenc = Encoder(scratch)
dec = Decoder()
dfr = Deframer()
analog = bytearray(65)
txt = b"fan 3 stalled"
junk = bytearray(b"\x01\x02\x00\x11\x22\x00")
BOTTOM = -1073741823 - 1
bigs = bytes([0x1a, 0x40, 0, 0, 0, 0x1b, 0, 0, 0, 0, 0x3f, 0xff, 0xff, 0xff, 0x3b, 1, 0, 0, 0, 0, 0, 0, 0])
state = bytearray(4)

def extra():
    dec.reset(bigs, 0, len(bigs)); dec.next(); dec.pos = 5; dec.next(); dec.next()
    enc.reset(240); enc.bytes_from(analog, 0, 65)
    enc.reset(); enc.uint(-5)

def work():
    tenc.reset(4)
    tenc.array(10)
    p = tenc.reserve_bytes(65)
    for i in range(65):
        scratch[p + i] = analog[i]
    tenc.uint(0x5A5); tenc.uint(0); tenc.uint(0); tenc.uint(0x30); tenc.uint(2)
    tenc.uint(812); tenc.uint(1490); tenc.uint(1073741823); tenc.int(BOTTOM)
    n = encode_frame(4, 1, 42, 5, scratch, 4, tenc.pos - 4, scratch, out, 0)
    enc.reset()
    enc.map(3); enc.uint(0); enc.int(-300); enc.uint(1); enc.text_from(txt, 0, len(txt))
    enc.uint(2); enc.array(2); enc.bool(True); enc.null()
    m = encode_frame(5, 1, 7, 2, buf, 0, enc.pos, scratch, out, n)
    j = 0
    while j < len(junk):
        j = dfr.feed(junk, j, len(junk))
    total = n + m
    i = 0
    good = 0
    while i < total:
        i = dfr.feed(out, i, total)
        if dfr.status == E_OK:
            s = dfr.payload_start
            if dec.validate(dfr.body, s, s + dfr.payload_len) == E_OK:
                good += 1
    extra()
    state[0] = good

work()
gc.collect()
micropython.heap_lock()
try:
    for k in range(300):
        work()
finally:
    micropython.heap_unlock()
print("OK", state[0], dfr.frames, dfr.errors[1])
"""


def test_codec_allocation_free_under_heap_lock(mpvm):
    # both VMs; the 32-bit one also catches intermediates >= 2**30
    r = mpvm.run(_HEAP_SCRIPT, timeout=120).check()
    assert r.stdout.split() == ["OK", "2", "602", "602"]


# -- FrameEncoder: encode_frame over several calls ------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 15), st.integers(0, 255), st.integers(0, 255), st.integers(0, 255),
       st.binary(max_size=MAX_PAYLOAD), st.integers(1, 300), st.integers(0, 8))
def test_frame_encoder_equals_encode_frame(ftype, flags, seq, ack, payload, chunk, out_start):
    from metal.core.frame import FrameEncoder

    want = bytearray(MAX_WIRE + 8)
    n = encode_frame(ftype, flags, seq, ack, payload, 0, len(payload), bytearray(SCRATCH_LEN),
                     want, out_start)
    enc = FrameEncoder()
    out = bytearray(MAX_WIRE + 8)
    src = bytearray(3) + payload  # the payload at an offset, read where it is
    assert enc.start(ftype, flags, seq, ack, src, 3, len(payload), out, out_start)
    steps = 0
    while True:
        r = enc.step(chunk)
        steps += 1
        if r >= 0:
            break
        assert enc.running and steps <= MAX_PAYLOAD
    assert r == n and out[out_start:out_start + n] == want[out_start:out_start + n]
    assert steps == max(1, -(-len(payload) // chunk))
    assert not enc.running and enc.step(chunk) == -1  # idle: nothing to do


def test_frame_encoder_refuses_what_does_not_fit():
    from metal.core.frame import FrameEncoder

    enc = FrameEncoder()
    p = bytes(range(1, 41))
    assert not enc.start(1, 0, 0, 0, p, 0, MAX_PAYLOAD + 1, bytearray(MAX_WIRE + 8), 0)
    assert not enc.start(1, 0, 0, 0, p, 0, -1, bytearray(MAX_WIRE), 0)
    assert not enc.start(1, 0, 0, 0, p, 0, 40, bytearray(47), 0)  # 40 + 8 bytes needed
    assert not enc.running and enc.step(10) == -1
    out = bytearray(48)
    assert enc.start(1, 0, 0, 0, p, 0, 40, out, 0)
    assert enc.step(100) == 48 and out[47] == 0
