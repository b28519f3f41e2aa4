"""TELEMETRY payload encoder (protocol.md §6), allocation-free.

The payload is a positional CBOR array; its first element is one byte string
of packed little-endian values plus 4-bit states, which keeps the reference
sim board's frame under 96 bytes on the wire. Buffers are claimed in
``__init__``; ``encode`` only writes into ``buf`` (which the firmware points
at the board link's TELEMETRY slot, so the payload is never copied), and
``encode_into`` into any buffer. Every byte is written inline, without an
Encoder call per item: on the 32-bit VM a call costs as much as a value's work.
"""

from metal.core.cbor import uints_into
from metal.core.compat import const
from metal.core.proto import MAX_PAYLOAD, SENSOR_OK

TEMP_NONE = const(0x7FFF)  # int16 slot of a sensor with no valid reading
N_FIELDS = const(10)


class TelemetryEncoder:
    def __init__(self, n_sensors, n_fans, n_rails):
        self.n_sensors = n_sensors
        self.n_fans = n_fans
        self.n_rails = n_rails
        n_states = n_sensors + n_fans + n_rails
        self.analog_len = 2 * (n_sensors + 2 * n_fans + 2 * n_rails) + (n_states + 1) // 2
        # array head 1 + byte-string head <= 3 + analog + 9 integers of <= 5 bytes
        if self.analog_len + 48 > MAX_PAYLOAD:
            raise ValueError("telemetry does not fit a frame for this board")
        # where encode() writes; a memoryview, so that the firmware can point
        # it at the board link's buffer (BoardLink.telemetry_buf): no copy
        self.buf = memoryview(bytearray(MAX_PAYLOAD))
        self.len = 0
        self._tail = [0] * (N_FIELDS - 1)  # positions 1..9, staged for uints_into

    def encode(self, sensors, fans, power, gpio_levels, tripped, latched, status,
               tick_us_last, tick_us_window_max, overruns, queue_overflows):
        """Encode one payload into ``self.buf``; returns its length (0 on a
        value out of range, which a correctly built board never produces)."""
        n = self.encode_into(self.buf, 0, sensors, fans, power, gpio_levels, tripped, latched,
                             status, tick_us_last, tick_us_window_max, overruns,
                             queue_overflows)
        self.len = n
        return n

    def encode_into(self, buf, off, sensors, fans, power, gpio_levels, tripped, latched,
                    status, tick_us_last, tick_us_window_max, overruns, queue_overflows):
        """``encode`` into ``buf[off:off + MAX_PAYLOAD]``; returns the length."""
        b = buf
        p = off
        al = self.analog_len
        b[p] = 0x80 | N_FIELDS  # array(10)
        if al < 24:
            b[p + 1] = 0x40 | al
            p += 2
        else:
            b[p + 1] = 0x58  # byte string, 1-byte length (analog_len <= 200)
            b[p + 2] = al
            p += 3
        # 2 x (S + 2F + 2R) bytes of uint16 LE, then S + F + R nibbles. Each
        # loop writes its bytes itself: a helper call per value (or per
        # nibble) cost ~50 calls per frame, the bulk of it on the 32-bit VM.
        mc = sensors.mc
        sst = sensors.state
        for i in range(self.n_sensors):
            if sst[i] == SENSOR_OK:
                v = (mc[i] // 10) & 0xFFFF
            else:
                v = TEMP_NONE
            b[p] = v & 0xFF
            b[p + 1] = v >> 8
            p += 2
        nf = self.n_fans
        duty = fans.duty
        for i in range(nf):
            v = duty[i]
            if v > 0xFFFF:
                v = 0xFFFF
            b[p] = v & 0xFF
            b[p + 1] = (v >> 8) & 0xFF
            p += 2
        rpm = fans.rpm
        for i in range(nf):
            v = rpm[i]
            if v > 0xFFFF:
                v = 0xFFFF
            b[p] = v & 0xFF
            b[p + 1] = (v >> 8) & 0xFF
            p += 2
        nr = self.n_rails
        mv = power.mv
        for i in range(nr):
            v = mv[i]
            if v < 0:
                v = 0
            elif v > 0xFFFF:
                v = 0xFFFF
            b[p] = v & 0xFF
            b[p + 1] = v >> 8
            p += 2
        ma = power.ma
        for i in range(nr):
            v = ma[i]
            if v < 0:
                v = 0
            elif v > 0xFFFF:
                v = 0xFFFF
            b[p] = v & 0xFF
            b[p + 1] = v >> 8
            p += 2
        # 4-bit states, low nibble first: sensors, fans, rails (one run of
        # nibbles across the three arrays; `half` = b[p] has its low nibble)
        half = 0
        for i in range(self.n_sensors):
            v = sst[i] & 0x0F
            if half:
                b[p] |= v << 4
                p += 1
                half = 0
            else:
                b[p] = v
                half = 1
        fst = fans.state
        for i in range(nf):
            v = fst[i] & 0x0F
            if half:
                b[p] |= v << 4
                p += 1
                half = 0
            else:
                b[p] = v
                half = 1
        rst = power.state
        for i in range(nr):
            v = rst[i] & 0x0F
            if half:
                b[p] |= v << 4
                p += 1
                half = 0
            else:
                b[p] = v
                half = 1
        if half:
            p += 1
        t = self._tail
        t[0] = gpio_levels
        t[1] = tripped
        t[2] = latched
        t[3] = status
        t[4] = power.power_state
        t[5] = tick_us_last
        t[6] = tick_us_window_max
        t[7] = overruns
        t[8] = queue_overflows
        p = uints_into(b, p, t, N_FIELDS - 1)
        if p < 0:
            return 0
        return p - off
