"""CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final XOR).

Table-driven, one table lookup per byte. Board-safe: the table is built once at
import; ``crc16`` allocates nothing and every intermediate stays below 2**24,
so a 32-bit MicroPython keeps it all in small ints.

Check value: ``crc16(b"123456789", 0, 9) == 0x29B1``.
"""

from array import array

from metal.core.compat import const

_POLY = const(0x1021)


def _make_table():
    t = array("H", [0] * 256)
    for i in range(256):
        c = i << 8
        for _ in range(8):
            if c & 0x8000:
                c = ((c << 1) ^ _POLY) & 0xFFFF
            else:
                c = (c << 1) & 0xFFFF
        t[i] = c
    return t


_TABLE = _make_table()


def _split(t, shift):
    b = bytearray(256)
    for i in range(256):
        b[i] = (t[i] >> shift) & 0xFF
    return b


# The table split into its high and low bytes, for byte loops that keep the
# CRC as two bytes (frame.encode_frame and Deframer): with
# hi = crc >> 8, lo = crc & 0xFF one step is
#     x = hi ^ b;  hi = lo ^ TABLE_HI[x];  lo = TABLE_LO[x]
# which drops the shift and the two masks of the 16-bit form (fewer
# bytecodes per byte on MicroPython).
TABLE_HI = _split(_TABLE, 8)
TABLE_LO = _split(_TABLE, 0)


def crc16(buf, start, end, crc=0xFFFF):
    """CRC of ``buf[start:end]`` continuing from ``crc`` (default: a fresh CRC).

    ``buf`` is anything indexable yielding ints 0..255 (bytes, bytearray,
    memoryview, array('B')). Pass the previous result as ``crc`` to checksum
    data that arrives in pieces.
    """
    t = _TABLE
    for i in range(start, end):
        crc = ((crc << 8) & 0xFF00) ^ t[((crc >> 8) ^ buf[i]) & 0xFF]
    return crc
