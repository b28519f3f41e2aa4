"""TELEMETRY payload encoder (protocol.md §6), allocation-free.

The payload is a positional CBOR array; its first element is one byte string
of packed little-endian values plus 4-bit states, which keeps the reference
sim board's frame under 96 bytes on the wire. Buffers are claimed in
``__init__``; ``encode`` only writes into them.
"""

from metal.core.cbor import Encoder
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
        if self.analog_len + 48 > MAX_PAYLOAD:
            raise ValueError("telemetry does not fit a frame for this board")
        self.buf = bytearray(MAX_PAYLOAD)
        self.enc = Encoder(self.buf)
        self.len = 0

    def encode(self, sensors, fans, power, gpio_levels, tripped, latched, status,
               tick_us_last, tick_us_window_max, overruns, queue_overflows):
        """Encode one payload into ``self.buf``; returns its length (0 on an
        encoder error, which a correctly sized board never hits)."""
        e = self.enc
        e.reset(0)
        e.array(N_FIELDS)
        p = e.reserve_bytes(self.analog_len)
        if p < 0:
            self.len = 0
            return 0
        # 2 × (S + 2F + 2R) bytes of uint16 LE, then S + F + R nibbles. Each
        # loop writes its bytes itself: a helper call per value (or per
        # nibble) cost ~50 calls per frame, the bulk of it on the 32-bit VM.
        b = self.buf
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
        e.uint(gpio_levels)
        e.uint(tripped)
        e.uint(latched)
        e.uint(status)
        e.uint(power.power_state)
        e.uint(tick_us_last)
        e.uint(tick_us_window_max)
        e.uint(overruns)
        e.uint(queue_overflows)
        if e.err:
            self.len = 0
            return 0
        self.len = e.pos
        return e.pos
