"""core/cobs.py: COBS encode/decode on caller buffers, byte-identical to the cobs package."""

import pytest
from cobs import cobs
from hypothesis import given, settings
from hypothesis import strategies as st

from metal.core.cobs import cobs_decode, cobs_encode


def enc(data: bytes) -> bytes:
    out = bytearray(len(data) + len(data) // 254 + 2)
    n = cobs_encode(data, 0, len(data), out, 0)
    assert n >= 0
    return bytes(out[:n])


def dec(data: bytes) -> bytes | None:
    out = bytearray(len(data) + 1)
    n = cobs_decode(data, 0, len(data), out, 0)
    return None if n < 0 else bytes(out[:n])


_RUN_254 = bytes(range(1, 255))  # 01..FE
# Published examples (Cheshire & Baker; the Wikipedia "Consistent Overhead Byte
# Stuffing" table), delimiter not included.
PUBLISHED = [
    ("", "01"),
    ("00", "0101"),
    ("0000", "010101"),
    ("001100", "01021101"),
    ("11220033", "0311220233"),
    ("11223344", "0511223344"),
    ("11000000", "0211010101"),
    (_RUN_254.hex(), "ff" + _RUN_254.hex()),
    ("00" + _RUN_254.hex(), "01ff" + _RUN_254.hex()),
    (bytes(range(1, 256)).hex(), "ff" + _RUN_254.hex() + "02ff"),
    (bytes(range(2, 256)).hex() + "00", "ff" + bytes(range(2, 256)).hex() + "0101"),
    (bytes(range(3, 256)).hex() + "0001", "fe" + bytes(range(3, 256)).hex() + "0201"),
]


@pytest.mark.parametrize("raw,encoded", PUBLISHED)
def test_published_examples(raw, encoded):
    r, e = bytes.fromhex(raw), bytes.fromhex(encoded)
    assert enc(r) == e
    assert dec(e) == r
    assert cobs.encode(r) == e  # the host library agrees with the same table


def test_brief_examples_by_hand():
    assert enc(b"\x00") == b"\x01\x01"
    assert enc(b"\x11\x22\x00\x33") == b"\x03\x11\x22\x02\x33"


def test_offsets():
    src = b"ab\x11\x22\x00\x33cd"
    out = bytearray(b"XXXX" + bytes(10))
    end = cobs_encode(src, 2, 6, out, 4)
    assert end == 9
    assert bytes(out[:end]) == b"XXXX\x03\x11\x22\x02\x33"
    back = bytearray(b"YY" + bytes(8))
    assert cobs_decode(out, 4, end, back, 2) == 4
    assert bytes(back[:6]) == b"YY\x11\x22\x00\x33"


def test_encode_dst_too_small():
    for data in (b"", b"\x00", b"\x11\x22\x00\x33", _RUN_254, _RUN_254 + b"\x01"):
        need = len(enc(data))
        for size in range(need):
            assert cobs_encode(data, 0, len(data), bytearray(size), 0) == -1, (data, size)
        assert cobs_encode(data, 0, len(data), bytearray(need), 0) == need
        # dst_start counts against the size too
        assert cobs_encode(data, 0, len(data), bytearray(need + 2), 3) == -1


def test_decode_dst_too_small():
    e = bytes.fromhex("0311220233")
    assert cobs_decode(e, 0, 5, bytearray(4), 0) == 4
    for size in range(4):
        assert cobs_decode(e, 0, 5, bytearray(size), 0) == -1
    assert cobs_decode(e, 0, 5, bytearray(5), 2) == -1


@pytest.mark.parametrize(
    "bad",
    [
        "00",  # a code byte of 0
        "0200",  # a data byte of 0
        "0311002233",  # 0x00 inside a group
        "05112233",  # code points past the end
        "031122" + "04",  # last code points past the end
        "ff" + "01" * 10,  # 0xFF wants 254 bytes
    ],
)
def test_decode_errors(bad):
    b = bytes.fromhex(bad)
    assert dec(b) is None
    with pytest.raises(cobs.DecodeError):
        cobs.decode(b)


def test_decode_empty_input():
    assert cobs_decode(b"", 0, 0, bytearray(4), 0) == 0


def test_decode_in_place():
    buf = bytearray(b"\x00" + bytes.fromhex("0211010101") + b"\x00")
    n = cobs_decode(buf, 1, 6, buf, 1)
    assert n == 4
    assert bytes(buf[1:5]) == b"\x11\x00\x00\x00"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=700))
def test_round_trip_matches_cobs_package(data):
    e = enc(data)
    assert e == cobs.encode(data)
    assert 0 not in e
    assert len(e) <= len(data) + len(data) // 254 + 1
    if len(data) <= 254:
        assert len(e) == len(data) + 1
    assert dec(e) == data
    # in place, at an offset
    buf = bytearray(b"\xaa" * 3 + e)
    assert cobs_decode(buf, 3, len(buf), buf, 3) == len(data)
    assert bytes(buf[3 : 3 + len(data)]) == data


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_decode_agrees_with_cobs_package_on_any_input(data):
    try:
        want = cobs.decode(data)
    except cobs.DecodeError:
        want = None
    assert dec(data) == want


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 255).map(lambda b: b or 0xFF), max_size=600).map(bytes))
def test_decode_zero_free_input_agrees(data):
    # zero-free input only exercises the code-byte structure
    try:
        want = cobs.decode(data)
    except cobs.DecodeError:
        want = None
    assert dec(data) == want
