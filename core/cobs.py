"""Consistent Overhead Byte Stuffing (Cheshire & Baker), board side.

Byte-identical to the ``cobs`` package on the host: a run of 254 non-zero bytes
becomes a 0xFF code with no implied zero, and a final run of exactly 254
non-zero bytes gets no extra trailing 0x01 group. Neither function writes or
expects the 0x00 frame delimiter.

Both functions work on caller-owned buffers (bytes/bytearray/memoryview/
array('B')), allocate nothing, never raise on malformed input and return -1
instead.
"""


def cobs_encode(src, start, end, dst, dst_start):
    """Encode ``src[start:end]`` into ``dst`` from ``dst_start``.

    Returns the end index in ``dst`` (exclusive), or -1 if ``dst`` is too small
    (``dst`` may then hold a partial encoding). Encoded length is
    ``n + 1 + n // 254`` at most, exactly ``n + 1`` for ``n <= 254``.
    ``dst`` must not overlap ``src``.
    """
    dlen = len(dst)
    code_pos = dst_start
    if code_pos >= dlen:
        return -1
    o = code_pos + 1
    code = 1
    last = end - 1
    for i in range(start, end):
        b = src[i]
        if b == 0:
            dst[code_pos] = code
            code_pos = o
            if code_pos >= dlen:
                return -1
            o += 1
            code = 1
        else:
            if o >= dlen:
                return -1
            dst[o] = b
            o += 1
            code += 1
            if code == 0xFF:
                dst[code_pos] = 0xFF
                code = 1
                if i == last:
                    # a final 254-byte run: no trailing empty group
                    return o
                code_pos = o
                if code_pos >= dlen:
                    return -1
                o += 1
    dst[code_pos] = code
    return o


def cobs_decode(src, start, end, dst, dst_start):
    """Decode ``src[start:end]`` (without the delimiter) into ``dst``.

    Returns the decoded length, or -1 on a COBS error: a 0x00 byte anywhere
    in the input, a code byte pointing past ``end``, or ``dst`` too small.
    Works in place (``dst is src`` and ``dst_start == start``): the write
    position never overtakes the read position. ``dst`` may hold partial
    output after an error.
    """
    dlen = len(dst)
    i = start
    o = dst_start
    while i < end:
        code = src[i]
        if code == 0:
            return -1
        i += 1
        stop = i + code - 1
        if stop > end:
            return -1
        if o + code - 1 > dlen:
            return -1
        while i < stop:
            b = src[i]
            if b == 0:
                return -1
            dst[o] = b
            o += 1
            i += 1
        if code != 0xFF and i < end:
            if o >= dlen:
                return -1
            dst[o] = 0
            o += 1
    return o - dst_start
