"""core/crc16.py: CRC-16/CCITT-FALSE, table-driven, board side."""

import binascii

import crcmod.predefined
from hypothesis import given, settings
from hypothesis import strategies as st

from metal.core.crc16 import _TABLE, TABLE_HI, TABLE_LO, crc16
from metal.host.codec import crc16 as host_crc16

_ref = crcmod.predefined.mkCrcFun("crc-ccitt-false")


def test_check_value():
    # The catalogue check value of CRC-16/CCITT-FALSE (a.k.a. CRC-16/IBM-3740).
    assert crc16(b"123456789", 0, 9) == 0x29B1
    assert host_crc16(b"123456789") == 0x29B1
    assert _ref(b"123456789") == 0x29B1


def test_known_small_values():
    assert crc16(b"", 0, 0) == 0xFFFF  # init, nothing processed
    assert crc16(b"A", 0, 1) == 0xB915
    assert crc16(b"\x00", 0, 1) == 0xE1F0
    assert crc16(b"\xff\xff\xff\xff", 0, 4) == 0x1D0F


def test_table_is_the_polynomial_table():
    assert len(_TABLE) == 256
    assert _TABLE[0] == 0
    assert _TABLE[1] == 0x1021  # the polynomial itself
    assert _TABLE[0x80] == 0x9188
    assert max(_TABLE) <= 0xFFFF


def test_split_tables_step_like_the_16_bit_table():
    # the hi/lo form frame.py folds into its byte loops
    assert all((TABLE_HI[i] << 8) | TABLE_LO[i] == _TABLE[i] for i in range(256))
    for crc in (0xFFFF, 0x0000, 0x1D0F, 0x8001, 0x29B1):
        for b in (0x00, 0x01, 0x7F, 0x80, 0xFF):
            want = ((crc << 8) & 0xFF00) ^ _TABLE[((crc >> 8) ^ b) & 0xFF]
            x = (crc >> 8) ^ b
            hi = (crc & 0xFF) ^ TABLE_HI[x]
            lo = TABLE_LO[x]
            assert (hi << 8) | lo == want


def test_start_end_window():
    buf = bytearray(b"xx123456789yy")
    assert crc16(buf, 2, 11) == 0x29B1
    assert crc16(memoryview(buf), 2, 11) == 0x29B1


def test_continuation():
    c = crc16(b"1234", 0, 4)
    assert crc16(b"56789", 0, 5, c) == 0x29B1


def test_residue_is_zero_with_crc_appended():
    body = b"\x14\x01\x2a\x05hello"
    c = crc16(body, 0, len(body))
    assert crc16(body + bytes((c >> 8, c & 0xFF)), 0, len(body) + 2) == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.data())
def test_matches_crcmod_and_binascii(data, d):
    want = _ref(data)
    assert crc16(data, 0, len(data)) == want
    assert host_crc16(data) == want
    assert binascii.crc_hqx(data, 0xFFFF) == want
    cut = d.draw(st.integers(0, len(data)))
    assert crc16(data, cut, len(data), crc16(data, 0, cut)) == want
    assert host_crc16(data[cut:], host_crc16(data[:cut])) == want
