"""core/cbor.py: the board's allocation-free CBOR subset Encoder/Decoder."""

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metal.core.cbor import (
    K_ARRAY,
    K_BYTES,
    K_ERROR,
    K_FALSE,
    K_MAP,
    K_NEG,
    K_NULL,
    K_TEXT,
    K_TRUE,
    K_UINT,
    MAX_DEPTH,
    Decoder,
    Encoder,
    int_map_into,
    uints_into,
)
from metal.core.proto import E_CBOR, E_OK, E_OVERFLOW, E_RANGE, E_UNSUPPORTED

H = bytes.fromhex
TOP = 2**30 - 1
BOTTOM = -(2**30)

# -- Encoder ---------------------------------------------------------------------------

INT_BOUNDARIES = [0, 1, 23, 24, 255, 256, 65535, 65536, TOP,
                  -1, -24, -25, -256, -257, -65536, -65537, BOTTOM]


def _encode(fn, *args, cap=64):
    buf = bytearray(cap)
    e = Encoder(buf)
    fn(e, *args)
    return bytes(buf[: e.pos]), e.err


@pytest.mark.parametrize("v", INT_BOUNDARIES)
def test_int_minimal_encoding(v):
    got, err = _encode(Encoder.int, v)
    assert err == E_OK
    assert got == cbor2.dumps(v)
    if v >= 0:
        assert _encode(Encoder.uint, v) == (got, E_OK)


def test_int_head_sizes_by_hand():
    assert _encode(Encoder.uint, 23)[0] == H("17")
    assert _encode(Encoder.uint, 24)[0] == H("1818")
    assert _encode(Encoder.uint, 256)[0] == H("190100")
    assert _encode(Encoder.uint, 65536)[0] == H("1a00010000")
    assert _encode(Encoder.uint, TOP)[0] == H("1a3fffffff")
    assert _encode(Encoder.int, BOTTOM)[0] == H("3a3fffffff")
    assert _encode(Encoder.int, -25)[0] == H("3818")


@pytest.mark.parametrize(
    "method,arg",
    [
        (Encoder.uint, -1),
        (Encoder.uint, 2**30),
        (Encoder.uint, 2**40),
        (Encoder.int, 2**30),
        (Encoder.int, BOTTOM - 1),
        (Encoder.int, -(2**62)),
        (Encoder.array, -1),
        (Encoder.array, 2**30),
        (Encoder.map, 2**31),
    ],
)
def test_range_errors_are_sticky(method, arg):
    buf = bytearray(16)
    e = Encoder(buf)
    e.uint(7)
    method(e, arg)
    assert e.err == E_RANGE
    assert e.pos == 1
    e.uint(8)
    e.null()
    assert e.pos == 1 and e.err == E_RANGE
    assert bytes(buf) == b"\x07" + bytes(15)


def test_overflow_writes_nothing_more():
    buf = bytearray(4)
    e = Encoder(buf)
    e.uint(1)
    e.uint(65536)  # needs 5 bytes, 3 left
    assert e.err == E_OVERFLOW and e.pos == 1
    e.uint(2)  # would fit, but err is sticky
    assert e.pos == 1
    assert bytes(buf) == b"\x01\x00\x00\x00"


def test_overflow_on_string_does_not_write_the_head():
    buf = bytearray(6)
    e = Encoder(buf)
    e.bytes_from(b"abcdef", 0, 6)  # head + 6 = 7 > 6
    assert e.err == E_OVERFLOW and e.pos == 0
    assert bytes(buf) == bytes(6)
    e.reset()
    e.text_from(b"abcde", 0, 5)
    assert e.err == E_OK and bytes(buf) == b"\x65abcde"


def test_exact_fit():
    buf = bytearray(5)
    e = Encoder(buf)
    e.uint(TOP)
    assert e.err == E_OK and e.pos == 5


def test_containers_simple_values_strings():
    buf = bytearray(64)
    e = Encoder(buf)
    e.map(3)
    e.uint(0)
    e.array(2)
    e.bool(True)
    e.bool(False)
    e.uint(1)
    e.null()
    e.int(-2)
    e.text_from(b"xx\xc2\xb0C", 2, 3)
    assert e.err == E_OK
    assert bytes(buf[: e.pos]) == cbor2.dumps({0: [True, False], 1: None, -2: "°C"})


def test_bytes_from_window_and_long_heads():
    src = bytes(range(256)) * 2
    for n in (0, 23, 24, 255, 256, 300):
        got, err = _encode(Encoder.bytes_from, src, 5, n, cap=400)
        assert err == E_OK
        assert got == cbor2.dumps(src[5 : 5 + n])


def test_reserve_bytes():
    buf = bytearray(40)
    e = Encoder(buf)
    e.array(2)
    p = e.reserve_bytes(30)
    assert p == 3 and e.pos == 33
    buf[p : p + 30] = bytes(range(30))
    e.uint(5)
    assert bytes(buf[: e.pos]) == cbor2.dumps([bytes(range(30)), 5])
    assert e.reserve_bytes(10) == -1 and e.err == E_OVERFLOW and e.pos == 34


def test_raw():
    item = cbor2.dumps(["fan0", 1200])
    buf = bytearray(32)
    e = Encoder(buf)
    e.array(2)
    e.raw(item, 0, len(item))
    e.raw(b"zz\xf6", 2, 1)
    assert bytes(buf[: e.pos]) == cbor2.dumps([["fan0", 1200], None])
    e.raw(bytes(40), 0, 40)
    assert e.err == E_OVERFLOW


def test_reset_clears_error_and_sets_position():
    buf = bytearray(8)
    e = Encoder(buf)
    e.uint(-1)
    assert e.err == E_RANGE
    e.reset(4)
    assert e.err == E_OK and e.pos == 4
    e.map(1)
    e.uint(0)
    e.uint(1)
    assert bytes(buf[4:7]) == H("a10001")
    assert e.pos == 7


# -- Decoder.next -------------------------------------------------------------------


def _next(data, start=0):
    d = Decoder()
    d.reset(data, start, len(data))
    k = d.next()
    return k, d


@pytest.mark.parametrize(
    "hexdata,kind,val",
    [
        ("00", K_UINT, 0),
        ("17", K_UINT, 23),
        ("1818", K_UINT, 24),
        ("1a3fffffff", K_UINT, TOP),
        ("20", K_NEG, -1),
        ("3a3fffffff", K_NEG, BOTTOM),
        ("f4", K_FALSE, 0),
        ("f5", K_TRUE, 1),
        ("f6", K_NULL, 0),
        ("83010203", K_ARRAY, 3),
        ("a0", K_MAP, 0),
        ("a201020304", K_MAP, 2),
        # non-minimal encodings are accepted
        ("1805", K_UINT, 5),
        ("190005", K_UINT, 5),
        ("1a00000005", K_UINT, 5),
        ("1b0000000000000005", K_UINT, 5),
        ("1b000000003fffffff", K_UINT, TOP),
        ("3800", K_NEG, -1),
        ("3b0000000000000000", K_NEG, -1),
        ("9800", K_ARRAY, 0),
        ("b90001" + "0000", K_MAP, 1),
    ],
)
def test_next_scalars_and_heads(hexdata, kind, val):
    data = H(hexdata)
    k, d = _next(data)
    assert k == kind
    assert d.val == val
    head_len = 1 + {24: 1, 25: 2, 26: 4, 27: 8}.get(data[0] & 31, 0)
    # containers: positioned after the head, on the first child
    assert d.pos == (head_len if kind in (K_ARRAY, K_MAP) else len(data))


def test_next_strings():
    data = H("ff") + H("43010203") + H("7801") + b"x" + H("4000")
    d = Decoder()
    d.reset(data, 1, len(data))
    assert d.next() == K_BYTES and d.val == 3 and d.start == 2 and d.pos == 5
    assert d.next() == K_TEXT and d.val == 1 and d.start == 7 and d.pos == 8
    assert d.next() == K_BYTES and d.val == 0 and d.pos == 9
    assert d.next() == K_UINT and d.val == 0
    assert d.next() == K_ERROR and d.err == E_CBOR and d.pos == len(data)


@pytest.mark.parametrize(
    "hexdata,err",
    [
        # out of the 30-bit range
        ("1a40000000", E_RANGE),
        ("1affffffff", E_RANGE),
        ("3a40000000", E_RANGE),
        ("1b0000000100000000", E_RANGE),
        ("1b8000000000000000", E_RANGE),
        ("3b0000000040000000", E_RANGE),
        # lengths that can never fit: truncated
        ("5a40000000", E_CBOR),
        ("7b0000000100000000", E_CBOR),
        ("9a40000000", E_CBOR),
        # floats, tags, other simple values, indefinite lengths
        ("f93c00", E_UNSUPPORTED),
        ("fa3fc00000", E_UNSUPPORTED),
        ("fb3ff8000000000000", E_UNSUPPORTED),
        ("f9", E_UNSUPPORTED),
        ("c11a5f5e1000", E_UNSUPPORTED),
        ("d8203f", E_UNSUPPORTED),
        ("c24101", E_UNSUPPORTED),
        ("f0", E_UNSUPPORTED),
        ("f7", E_UNSUPPORTED),
        ("f820", E_UNSUPPORTED),
        ("5f4101ff", E_UNSUPPORTED),
        ("7fff", E_UNSUPPORTED),
        ("9fff", E_UNSUPPORTED),
        ("bfff", E_UNSUPPORTED),
        # not well-formed: reserved additional info, break, indefinite int/tag
        ("1c", E_CBOR),
        ("3d", E_CBOR),
        ("5e", E_CBOR),
        ("fc", E_CBOR),
        ("ff", E_CBOR),
        ("1f", E_CBOR),
        ("3f", E_CBOR),
        ("df", E_CBOR),
        # truncated
        ("", E_CBOR),
        ("18", E_CBOR),
        ("1900", E_CBOR),
        ("1a000000", E_CBOR),
        ("1b00000000000000", E_CBOR),
        ("4301", E_CBOR),
        ("62ff", E_CBOR),
        ("830102", E_CBOR),
        ("a20102", E_CBOR),
    ],
)
def test_next_errors(hexdata, err):
    data = H(hexdata)
    k, d = _next(b"\x00" + data, 1)
    assert k == K_ERROR
    assert d.err == err
    assert d.pos == 1  # left at the offending head


# -- skip / validate ---------------------------------------------------------------------


def _validate(data):
    d = Decoder()
    return d.validate(data, 0, len(data)), d


def test_skip_nested_item():
    item = cbor2.dumps({0: [1, [b"ab", "c"], {1: None}], 1: -5})
    data = item + H("07")
    d = Decoder()
    d.reset(data, 0, len(data))
    assert d.skip() == K_MAP
    assert d.pos == len(item)
    assert d.skip() == K_UINT and d.pos == len(data)
    assert d.skip() == K_ERROR and d.err == E_CBOR


def test_skip_scalar_and_empty_containers():
    for obj, kind in ((5, K_UINT), ([], K_ARRAY), ({}, K_MAP), ("", K_TEXT), (True, K_TRUE)):
        data = cbor2.dumps(obj)
        d = Decoder()
        d.reset(data, 0, len(data))
        assert d.skip() == kind and d.pos == len(data)


def test_depth_limit():
    assert MAX_DEPTH == 4
    assert _validate(cbor2.dumps([[[[1]]]]))[0] == E_OK
    assert _validate(cbor2.dumps({0: [[[]]]}))[0] == E_OK
    assert _validate(cbor2.dumps([[[{0: 1}]]]))[0] == E_OK
    for deep in ([[[[[1]]]]], [[[[[]]]]], {0: [[[{}]]]}, [[[{1: [2]}]]], [1, [2, [3, [4, {}]]]]):
        data = cbor2.dumps(deep)
        err, d = _validate(data)
        assert err == E_UNSUPPORTED, deep
        assert data[d.pos] >> 5 in (4, 5)  # pos at the too-deep container


def test_depth_is_per_branch_not_cumulative():
    wide = [[[[1]]], [[[2]]], {0: [[3]]}, [[[4]]]]
    assert _validate(cbor2.dumps(wide))[0] == E_OK


def test_map_keys_must_be_integers():
    assert _validate(cbor2.dumps({-3: 1, 0: 2, TOP: 3}))[0] == E_OK
    # text, bytes, true, null, array and map keys
    for bad in (H("a1616101"), H("a1410101"), H("a1f501"), H("a1f601"), H("a1800101"),
                H("a2000180a0"), H("a1a00000")):
        err, d = _validate(bad)
        assert err == E_UNSUPPORTED, bad.hex()
    # the offending key's offset is reported
    err, d = _validate(H("a2000161780102"))
    assert err == E_UNSUPPORTED and d.pos == 3
    # values may be anything
    assert _validate(cbor2.dumps({1: "x", 2: b"y", 3: [1], 4: {5: None}}))[0] == E_OK


def test_validate_trailing_bytes_and_window():
    err, d = _validate(H("a1000102"))
    assert err == E_CBOR and d.pos == 3
    buf = b"\xff\xff" + cbor2.dumps([1, 2]) + b"\xff"
    d = Decoder()
    assert d.validate(buf, 2, 5) == E_OK
    assert d.pos == 2  # reset to start on success, ready to walk
    assert d.next() == K_ARRAY and d.val == 2
    assert d.validate(buf, 2, 6) == E_CBOR


def test_validate_empty_is_cbor_error():
    assert _validate(b"")[0] == E_CBOR


def test_validate_errors_inside_containers_keep_their_code():
    assert _validate(H("a103fb3ff8000000000000"))[0] == E_UNSUPPORTED
    assert _validate(H("8201" + "1a40000000"))[0] == E_RANGE
    assert _validate(H("82011a4000"))[0] == E_CBOR
    assert _validate(H("a1009f01ff"))[0] == E_UNSUPPORTED


def test_decoder_reuse_after_error():
    d = Decoder()
    assert d.validate(H("fb"), 0, 1) == E_UNSUPPORTED
    data = cbor2.dumps({0: [1, 2, 3]})
    assert d.validate(data, 0, len(data)) == E_OK
    assert d.err == E_OK


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64))
def test_never_raises_on_garbage(data):
    d = Decoder()
    err = d.validate(data, 0, len(data))
    assert err in (E_OK, E_CBOR, E_UNSUPPORTED, E_RANGE)
    assert 0 <= d.pos <= len(data)
    d.reset(data, 0, len(data))
    for _ in range(len(data) + 1):
        k = d.next()
        assert K_ERROR <= k <= K_NULL
        if k == K_ERROR:
            break
    d.reset(data, 0, len(data))
    while d.skip() != K_ERROR:
        pass
    assert d.err in (E_CBOR, E_UNSUPPORTED, E_RANGE)


# -- validate's fast path, int_map_into, uints_into ----------------------------------------


def _full_walk(b):
    """validate() without its fast path: skip one item, then no trailing bytes."""
    d = Decoder()
    d.reset(b, 0, len(b))
    if d.skip() < 0:
        return d.err
    return E_OK if d.pos == len(b) else E_CBOR


def _int_head(v, width):
    """An integer head of ``width`` extra bytes (0 = in the initial byte),
    non-minimal when wider than needed; None if ``v`` does not fit."""
    mt, a = (0x00, v) if v >= 0 else (0x20, -1 - v)
    if width == 0:
        return bytes([mt | a]) if a < 24 else None
    if a >= 1 << (8 * width):
        return None
    ai = {1: 24, 2: 25, 4: 26, 8: 27}[width]
    return bytes([mt | ai]) + a.to_bytes(width, "big")


@st.composite
def flat_int_containers(draw):
    """A map or array of integers (any head width), then maybe damaged."""
    n = draw(st.integers(0, 26))
    is_map = draw(st.booleans())
    items = draw(st.lists(st.integers(-(2**31), 2**31), min_size=2 * n if is_map else n,
                          max_size=2 * n if is_map else n))
    out = bytearray()
    head = 0xA0 if is_map else 0x80
    out += bytes([head | n]) if n < 24 else bytes([head | 24, n])
    for v in items:
        h = None
        while h is None:
            h = _int_head(v, draw(st.sampled_from([0, 1, 2, 4, 8])))
            if h is None:
                v = draw(st.integers(-24, 23))
        out += h
    how = draw(st.sampled_from(["keep", "keep", "cut", "extend", "flip"]))
    if how == "cut" and out:
        del out[draw(st.integers(0, len(out) - 1)):]
    elif how == "extend":
        out += draw(st.binary(min_size=1, max_size=4))
    elif how == "flip" and out:
        i = draw(st.integers(0, len(out) - 1))
        out[i] ^= 1 << draw(st.integers(0, 7))
    return bytes(out)


@settings(max_examples=600, deadline=None)
@given(flat_int_containers())
def test_validate_fast_path_agrees_with_the_full_walk(b):
    d = Decoder()
    assert d.validate(b, 0, len(b)) == _full_walk(b)
    # and a window inside a bigger buffer
    buf = b"\x00\xff" + b + b"\x17"
    assert d.validate(buf, 2, 2 + len(b)) == _full_walk(b)
    if d.err == E_OK:
        assert d.pos == 2  # left reset for next()


def test_validate_fast_path_edges():
    d = Decoder()
    assert d.validate(H("a20001011a3fffffff"), 0, 9) == E_OK  # 4-byte value at the top
    assert d.validate(H("a20001011a40000000"), 0, 9) == E_RANGE  # one past it: full walk
    assert d.validate(H("821b00000000000000010a"), 0, 11) == E_OK  # 8-byte head that fits
    assert d.validate(H("a1000102"), 0, 4) == E_CBOR  # trailing byte
    assert d.validate(H("a20001"), 0, 3) == E_CBOR  # count past the end
    assert d.validate(H("82001a000000"), 0, 6) == E_CBOR  # head cut short


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(BOTTOM, TOP), max_size=23), st.integers(0, 5))
def test_int_map_into_is_the_minimal_cbor_map(vals, off):
    buf = bytearray(off + 1 + 6 * len(vals) + 3)
    end = int_map_into(buf, off, vals, len(vals))
    want = cbor2.dumps({i: v for i, v in enumerate(vals)})
    assert bytes(buf[off:end]) == want
    e = Encoder(bytearray(200))
    e.map(len(vals))
    for i, v in enumerate(vals):
        e.uint(i)
        e.int(v)
    assert bytes(e.buf[: e.pos]) == want


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, TOP), max_size=12), st.integers(0, 5))
def test_uints_into_is_a_run_of_minimal_uints(vals, off):
    buf = bytearray(off + 5 * len(vals) + 2)
    end = uints_into(buf, off, vals, len(vals))
    assert bytes(buf[off:end]) == b"".join(cbor2.dumps(v) for v in vals)


@pytest.mark.parametrize("bad", [TOP + 1, BOTTOM - 1, 2**40])
def test_int_map_into_refuses_values_beyond_30_bits(bad):
    assert int_map_into(bytearray(20), 0, [1, bad], 2) == -1


@pytest.mark.parametrize("bad", [-1, TOP + 1])
def test_uints_into_refuses_negative_and_big(bad):
    assert uints_into(bytearray(20), 0, [1, bad], 2) == -1
