"""``SimHal``: the HAL of the simulated board, over ``plant.Plant``.

The drivers cannot tell this from a real board: they get raw ADC counts,
raw I2C temperature registers, tachometer pulses, power-good levels and a
byte stream, produced from the plant's physical state. Channel numbers are
the ones ``board.py`` assigns (see its channel map); a channel the config
does not use reads ``READ_ERROR`` (digital and power-good reads: 0) and
ignores writes.

Conversions (plant m°C -> what the part would report):

    NTC     ntc.mc_to_adc(m°C); an open thermistor reads 65535 (full
            scale), a shorted one 0
    TMP117  register = m°C × 16 / 125  (7.8125 m°C per LSB, = ×10000/78125
            without the large intermediate), floored, clamped to the part's
            -55..150 °C, returned as the raw 16-bit register 0..0xFFFF
            (two's complement: 0xFF80 is -1 °C, the caller sign-extends)
    LM75    register = (m°C // 125) << 5  (11-bit, 0.125 °C per LSB, left
            justified; 1/256 °C per register LSB), clamped to -55..125 °C,
            raw 16-bit register 0..0xFFFF, two's complement
    I2C sensor open or short: READ_ERROR (the device does not answer)

Time: ``sample(now_us)`` steps the plant by the µs elapsed since the
previous call (the first call only sets the reference), carrying the
sub-millisecond remainder so no time is lost. A gap longer than
``MAX_CATCHUP_MS`` (10 s, e.g. a stopped debugger) is simulated as 10 s so
one tick never has to compute minutes of physics.

Serial link: two preallocated byte rings, one per direction::

    host_write(data) -> rx ring -> serial_read(buf, start, max_n)  (firmware)
    (firmware) serial_write(buf, start, n) -> tx ring -> host_read(max_n)

Overflow, on purpose like the hardware each side stands for:

* rx (host -> board) behaves like a UART receive FIFO: bytes that arrive
  when it is full are lost. ``host_write`` stores what fits, drops the rest,
  counts them in ``rx.dropped`` and returns how many it stored, so a
  harness that cares can retry the remainder later.
* tx (board -> host) applies back-pressure instead: ``serial_write``
  accepts only what fits and returns that count, so the firmware keeps the
  rest for its next tick and nothing is lost.

``host_write``/``host_read`` stand for the outside world and may allocate;
everything else here runs inside the tick and allocates nothing.
"""

from array import array

from metal.core.compat import const, ticks_diff
from metal.core.config import SENSOR_LM75, SENSOR_NTC, SENSOR_TMP117
from metal.core.drivers.ntc import mc_to_adc
from metal.core.hal import READ_ERROR, Hal
from metal.core.proto import FAULT_SENSOR_OPEN, FAULT_SENSOR_SHORT

from metal.boards.sim.plant import Plant

MAX_CATCHUP_MS = const(10000)
SERIAL_RING_SIZE = const(2048)
_MASK30 = const(0x3FFFFFFF)

ADC_OPEN = const(65535)
ADC_SHORT = const(0)
TMP117_MIN_MC = const(-55000)
TMP117_MAX_MC = const(150000)
LM75_MIN_MC = const(-55000)
LM75_MAX_MC = const(125000)


def tmp117_raw(mc):
    """TMP117 temperature register for ``mc`` m°C (0..0xFFFF)."""
    if mc < TMP117_MIN_MC:
        mc = TMP117_MIN_MC
    elif mc > TMP117_MAX_MC:
        mc = TMP117_MAX_MC
    return (mc * 16 // 125) & 0xFFFF


def lm75_raw(mc):
    """LM75 (11-bit) temperature register for ``mc`` m°C (0..0xFFFF)."""
    if mc < LM75_MIN_MC:
        mc = LM75_MIN_MC
    elif mc > LM75_MAX_MC:
        mc = LM75_MAX_MC
    return ((mc // 125) << 5) & 0xFFFF


class ByteRing:
    """A fixed-size byte FIFO over one preallocated bytearray.

    ``put_from``/``get_into`` copy byte by byte (a slice read would
    allocate) and never block: they move what fits and return the count.
    """

    def __init__(self, size):
        self.buf = bytearray(size)
        self.size = size
        self.head = 0  # index of the oldest byte
        self.count = 0
        self.dropped = 0  # bytes refused by host_write (rx overruns), mod 2**30

    def free(self):
        return self.size - self.count

    def put_from(self, src, start, n):
        free = self.size - self.count
        if n > free:
            n = free
        buf = self.buf
        size = self.size
        j = self.head + self.count
        if j >= size:
            j -= size
        # at most two contiguous runs (up to the end of buf, then from 0), so
        # the per-byte loop needs no wrap test: every byte the board sends
        # passes here
        first = size - j
        if first > n:
            first = n
        d = j - start
        for k in range(start, start + first):
            buf[k + d] = src[k]
        d = -start - first
        for k in range(start + first, start + n):
            buf[k + d] = src[k]
        self.count += n
        return n

    def get_into(self, dst, start, n):
        if n > self.count:
            n = self.count
        buf = self.buf
        size = self.size
        j = self.head
        first = size - j  # two contiguous runs, as in put_from
        if first > n:
            first = n
        d = start - j
        for k in range(j, j + first):
            dst[k + d] = buf[k]
        d = start + first
        for k in range(n - first):
            dst[k + d] = buf[k]
        j += n
        if j >= size:
            j -= size
        self.head = j
        self.count -= n
        return n


def _channel_map(n):
    return array("i", [-1] * n)


class SimHal(Hal):
    def __init__(self, config=None, plant=None, serial_size=SERIAL_RING_SIZE):
        if config is None:
            from metal.boards.sim.board import CONFIG
            config = CONFIG
        self.config = config
        self.plant = plant if plant is not None else Plant(config)

        # channel -> index maps; -1 = channel not used by this config
        n_adc = 0
        n_i2c = 0
        for s in config.sensors:
            if s.kind == SENSOR_NTC:
                n_adc = max(n_adc, s.ch + 1)
            else:
                n_i2c = max(n_i2c, s.ch + 1)
        self._adc_sensor = _channel_map(n_adc)
        self._i2c_sensor = _channel_map(n_i2c)
        self._i2c_kind = bytearray(n_i2c)
        for i in range(len(config.sensors)):
            s = config.sensors[i]
            if s.kind == SENSOR_NTC:
                self._adc_sensor[s.ch] = i
            else:
                self._i2c_sensor[s.ch] = i
                self._i2c_kind[s.ch] = s.kind
        self._n_adc = n_adc
        self._n_i2c = n_i2c
        n_pwm = 0
        n_tach = 0
        for f in config.fans:
            n_pwm = max(n_pwm, f.pwm_ch + 1)
            n_tach = max(n_tach, f.tach_ch + 1)
        self._pwm_fan = _channel_map(n_pwm)
        self._tach_fan = _channel_map(n_tach)
        for i in range(len(config.fans)):
            self._pwm_fan[config.fans[i].pwm_ch] = i
            self._tach_fan[config.fans[i].tach_ch] = i
        self._n_pwm = n_pwm
        self._n_tach = n_tach
        n_rail = 0
        for r in config.rails:
            n_rail = max(n_rail, r.ch + 1)
        self._rail = _channel_map(n_rail)
        for i in range(len(config.rails)):
            self._rail[config.rails[i].ch] = i
        self._n_rail = n_rail

        self.claim_inputs(n_adc, n_i2c, n_rail)
        self.rx = ByteRing(serial_size)  # host -> board
        self.tx = ByteRing(serial_size)  # board -> host
        self.watchdog_feeds = 0  # mod 2**30
        self.reboot_requested = False
        self.samples = 0  # sample() calls, mod 2**30
        self._started = False
        self._last_us = 0
        self._us_rem = 0  # elapsed µs not yet simulated (< 1 ms)

    # -- time and housekeeping ---------------------------------------------

    def sample(self, now_us):
        self.samples = (self.samples + 1) & _MASK30
        if not self._started:
            self._started = True
            self._last_us = now_us
            self._refresh_image()
            return
        d = ticks_diff(now_us, self._last_us)
        self._last_us = now_us
        if d <= 0:
            self._refresh_image()
            return  # no time passed (or the caller's clock stepped back)
        us = self._us_rem + d
        ms = us // 1000
        self._us_rem = us - ms * 1000
        if ms > MAX_CATCHUP_MS:
            ms = MAX_CATCHUP_MS
        if ms:
            self.plant.step(ms)
        self._refresh_image()

    def _refresh_image(self):
        # every input, as the drivers will see it for this whole tick
        adc = self.adc
        for ch in range(self._n_adc):
            adc[ch] = self.adc_read(ch)
        i2c = self.i2c_temp
        for ch in range(self._n_i2c):
            i2c[ch] = self.i2c_temp_read(ch)
        mv = self.mv
        ma = self.ma
        pg = 0
        for ch in range(self._n_rail):
            mv[ch] = self.rail_mv(ch)
            ma[ch] = self.rail_ma(ch)
            if self.rail_power_good(ch):
                pg |= 1 << ch
        self.pg_mask = pg
        plant = self.plant
        lv = plant.d_level
        m = 0
        for ch in range(plant.n_digital):
            if lv[ch]:
                m |= 1 << ch
        self.din_mask = m

    def watchdog_feed(self):
        self.watchdog_feeds = (self.watchdog_feeds + 1) & _MASK30

    def reboot(self):
        # The process wrapper (or test) sees the flag and restarts the firmware.
        self.reboot_requested = True

    def sim_fault(self, kind, target, value):
        """OP_SIM_FAULT: inject a plant fault; R_OK / R_UNKNOWN_TARGET /
        R_INVALID_ARGUMENT (see plant.py)."""
        return self.plant.inject(kind, target, value)

    # -- analog and digital inputs ---------------------------------------------

    def adc_read(self, ch):
        if ch < 0 or ch >= self._n_adc:
            return READ_ERROR
        s = self._adc_sensor[ch]
        if s < 0:
            return READ_ERROR
        plant = self.plant
        fault = plant.s_fault[s]
        if not fault:
            # plant.sensor_mc(s) written out: the firmware reads every NTC on
            # every tick, and a call is a large part of this method's cost
            return mc_to_adc(plant.z_mc[plant.s_zone[s]] + plant.s_offset[s] + plant.s_noise[s])
        if fault == FAULT_SENSOR_OPEN:
            return ADC_OPEN
        if fault == FAULT_SENSOR_SHORT:
            return ADC_SHORT
        return mc_to_adc(plant.sensor_mc(s))

    def i2c_temp_read(self, ch):
        if ch < 0 or ch >= self._n_i2c:
            return READ_ERROR
        s = self._i2c_sensor[ch]
        if s < 0:
            return READ_ERROR
        plant = self.plant
        fault = plant.s_fault[s]
        if not fault:  # plant.sensor_mc(s) written out, as in adc_read
            mc = plant.z_mc[plant.s_zone[s]] + plant.s_offset[s] + plant.s_noise[s]
        elif fault == FAULT_SENSOR_OPEN or fault == FAULT_SENSOR_SHORT:
            return READ_ERROR
        else:
            mc = plant.sensor_mc(s)
        kind = self._i2c_kind[ch]
        if kind == SENSOR_TMP117:
            return tmp117_raw(mc)
        if kind == SENSOR_LM75:
            return lm75_raw(mc)
        return READ_ERROR

    def digital_in(self, ch):
        # plant.digital_level(ch) written out (GPIO and security inputs call this
        # about a dozen times per tick)
        plant = self.plant
        if ch >= 0 and ch < plant.n_digital:  # (two compares: cheaper than a chained one)
            return plant.d_level[ch]
        return 0

    def digital_out(self, ch, level):
        self.plant.set_output(ch, level)

    # -- fans ----------------------------------------------------------------------

    def pwm_set(self, ch, duty_permille):
        if ch >= 0 and ch < self._n_pwm:
            f = self._pwm_fan[ch]
            if f >= 0:
                # plant.set_fan_duty(f, duty) written out: the thermal loop moves
                # the duties of most fans on most ticks
                if duty_permille < 0:
                    duty_permille = 0
                elif duty_permille > 1000:
                    duty_permille = 1000
                self.plant.f_duty[f] = duty_permille

    def tach_pulses(self, ch):
        if ch < 0 or ch >= self._n_tach:
            return READ_ERROR
        f = self._tach_fan[ch]
        if f < 0:
            return READ_ERROR
        pulses = self.plant.f_pulses  # plant.take_pulses(f) written out (per fan per tick)
        n = pulses[f]
        pulses[f] = 0
        return n

    # -- power rails -----------------------------------------------------------------

    def rail_enable(self, ch, on):
        if 0 <= ch < self._n_rail:
            r = self._rail[ch]
            if r >= 0:
                self.plant.set_rail_enable(r, on)

    def rail_power_good(self, ch):
        if ch < 0 or ch >= self._n_rail:
            return 0
        r = self._rail[ch]
        if r < 0:
            return 0
        plant = self.plant  # plant.rail_power_good(r) written out (per ON rail per tick)
        if plant.r_pg[r] and not plant.r_glitch_ms[r]:
            return 1
        return 0

    def rail_mv(self, ch):
        if ch < 0 or ch >= self._n_rail:
            return READ_ERROR
        r = self._rail[ch]
        if r < 0:
            return READ_ERROR
        return self.plant.r_mv[r]

    def rail_ma(self, ch):
        if ch < 0 or ch >= self._n_rail:
            return READ_ERROR
        r = self._rail[ch]
        if r < 0:
            return READ_ERROR
        return self.plant.r_ma[r]

    # -- host link ---------------------------------------------------------------------

    def serial_read(self, buf, start, max_n):
        return self.rx.get_into(buf, start, max_n)

    def serial_write(self, buf, start, n):
        return self.tx.put_from(buf, start, n)

    # -- the outside world (may allocate) ----------------------------------------

    def host_write(self, data):
        """Bytes from the host into the board's receive ring; returns how
        many were stored (the rest are lost and counted in rx.dropped)."""
        n = len(data)
        stored = self.rx.put_from(data, 0, n)
        if stored < n:
            self.rx.dropped = (self.rx.dropped + n - stored) & _MASK30
        return stored

    def host_read(self, max_n=-1):
        """Up to ``max_n`` bytes (all when negative) the board has sent."""
        n = self.tx.count
        if 0 <= max_n < n:
            n = max_n
        out = bytearray(n)
        self.tx.get_into(out, 0, n)
        return bytes(out)
