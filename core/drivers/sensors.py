"""Temperature sensors: one read per sensor per tick, conversion to m°C, health.

Each sensor reads its slot of the HAL's input image (``hal.adc[ch]`` for an
NTC, ``hal.i2c_temp[ch]`` for a digital part), refreshed by ``hal.sample``.
Conversions (integers only, written out inline in ``step``):

* ``SENSOR_NTC``: open / short (``ntc.classify``), then the thermistor table
  by direct index (``ntc.adc_to_mc``; see ntc.py: one bucket lookup, one
  compare, one division, bit-identical to the table's interpolation).
* ``SENSOR_TMP117``: signed 16-bit register, 7.8125 m°C per LSB.
  7.8125 = 125/16 exactly, so m°C = ``(raw * 125) >> 4`` (floor, like
  ``raw * 78125 // 10000`` but |raw * 125| <= 4.1e6, while ``raw * 78125``
  reaches 2.56e9 and would be a heap long on a 32-bit VM).
* ``SENSOR_LM75``: signed 16-bit register in 1/256 °C, of which the top 9..11
  bits are used. m°C = ``(raw >> 5) * 125`` (0.125 °C steps): exact for 9-,
  10- and 11-bit parts, and undefined low bits of clones are ignored.

The HAL may hand the 16-bit register either as 0..65535 or already
sign-extended; both are accepted. ``READ_ERROR`` means no reading this tick.

Health. A tick's reading is *valid* when it converts and lies in
``[min_mc, max_mc]``; otherwise it has a *reason*: STALE (read error),
OPEN/SHORT (NTC circuit), RANGE (out of range). A single bad sample does not
drop a zone into failsafe, but a lost sensor is reported within
``stale_ticks`` ticks::

                       valid reading (silent: normal boot)
        (boot) PENDING ---------------------------------------> OK
            |                                                  ^ |
            | stale_ticks invalid ticks in a row               | | stale_ticks invalid
            | (event even if the reason is STALE: the host     | | ticks in a row
            |  learns that a sensor never answered)            | v
            +--------------------------------------------> FAULT(reason)
                                 one valid reading: back to OK  |  ^
                                                                +--+
                        the same new reason for stale_ticks ticks in a row:
                        FAULT(new reason)

FAULT(reason) is the wire state SENSOR_STALE, _OPEN, _SHORT or _RANGE: the
reason of the last invalid reading when the sensor went down. Changing the
reason while down needs the new one to persist for ``stale_ticks`` ticks, so
a flaky bus alternating between two failure modes cannot flood the event
queue. PENDING publishes SENSOR_STALE; it only exists until the first valid
reading or the first ``stale_ticks`` ticks. Every other state change pushes
EV_SENSOR_STATE(source=sensor, value=new state).

While a sensor is not OK it publishes ``TEMP_INVALID`` as its temperature;
``mc`` keeps the last valid value for diagnostics. During the few ticks
between the first bad sample and the state change, the last valid value is
still published (the reading is held, not invented).

Per zone, ``step`` also computes the hottest valid sensor (``zone_max_mc``),
the number of sensors not OK (``zone_bad``) and the number still pending
(``zone_pending``). A zone without sensors is never "all valid".

Steady state. On most ticks most sensors read the same raw value as on the
tick before. A sensor that is OK, has no invalid tick counted and reads the
raw value of its last valid reading again would be judged exactly as last
time: the same m°C, the same range verdict, no counter or state change and
nothing new to publish. ``_last[i]`` holds that raw value while all of this
is true and ``_NO_RAW`` (a value no HAL stores) otherwise, so ``step``
compares every sensor's image slot with it and converts and judges only the
sensors that differ. Every sensor is still read on every tick, and one that
is not OK or is in its grace ticks is judged on every tick, so a failing
sensor is seen on the same tick as without the shortcut. The summaries
follow the published values: a state (or pending) change recomputes all of
them; a valid temperature that moves updates its zone's maximum and the
board's in place (rescanning the zone only when its hottest sensor cooled)::

    for each sensor:  image slot == _last[i] ?  -- yes --> nothing (steady)
                              | no
                              v
                      convert, judge, publish; a moved temperature updates
                      the zone / board maxima, a state change marks "full"
    full ?  -- yes --> recompute zone_max_mc, zone_bad, zone_pending, max
"""

from array import array

from metal.core.compat import const
from metal.core.config import SENSOR_NTC, SENSOR_TMP117
from metal.core.drivers import ntc
from metal.core.drivers.ntc import RAW_OPEN, RAW_SHORT
from metal.core.hal import READ_ERROR, check_channel
from metal.core.proto import (
    EV_SENSOR_STATE,
    SENSOR_OK,
    SENSOR_STALE,
    SENSOR_OPEN,
    SENSOR_SHORT,
    SENSOR_RANGE,
)
from metal.core.signals import G_MAX_TEMP, TEMP_INVALID

_NONE = const(0)  # no invalid reason: the reading was valid
# _last[i] of a sensor that is not in the steady state. No image slot holds
# it: the HAL stores 0..65535 (or -32768..32767, an I2C register it already
# sign-extended) or READ_ERROR.
_NO_RAW = const(-0x40000000)

# ntc's per-tick table parameters as compile-time constants for the inline
# conversion in step (a module attribute would be two lookups per use);
# checked against ntc here, at import.
_NTC_SHIFT = const(7)  # ntc.SEG_SHIFT
_NTC_STEP = const(5000)  # ntc.STEP_MC
_NTC_RAW_COLD = const(63944)  # ntc.TABLE_RAW_COLD
_NTC_RAW_HOT = const(1283)  # ntc.TABLE_RAW_HOT
if (_NTC_SHIFT != ntc.SEG_SHIFT or _NTC_STEP != ntc.STEP_MC
        or _NTC_RAW_COLD != ntc.TABLE_RAW_COLD or _NTC_RAW_HOT != ntc.TABLE_RAW_HOT):
    raise ImportError("sensors: the inline NTC constants no longer match ntc.py")


def tmp117_to_mc(raw):
    """m°C of a TMP117 result register (0..65535 or already signed)."""
    raw &= 0xFFFF
    if raw & 0x8000:
        raw -= 0x10000
    return (raw * 125) >> 4


def lm75_to_mc(raw):
    """m°C of an LM75 temperature register (0..65535 or already signed)."""
    raw &= 0xFFFF
    if raw & 0x8000:
        raw -= 0x10000
    return (raw >> 5) * 125


class SensorBank:
    def __init__(self, sensors, hal, signals, events, stale_ticks):
        n = len(sensors)
        if stale_ticks <= 0 or stale_ticks > 255:
            raise ValueError("stale_ticks out of range 1..255")
        n_zones = 0
        for s in sensors:
            if s.zone + 1 > n_zones:
                n_zones = s.zone + 1
        self.n = n
        self.n_zones = n_zones
        self.stale_ticks = stale_ticks
        self._push = events.push
        self._v = signals.v
        self._temp0 = signals.temp0
        self._state0 = signals.sensor_state0
        self._gmax = signals.global0 + G_MAX_TEMP

        self.kind = bytearray(n)
        self.ch = array("i", [0] * n)
        self.zone = bytearray(n)
        self.min_mc = array("i", [0] * n)
        self.max_mc = array("i", [0] * n)
        self.crit_mc = array("i", [0] * n)
        # The image array each sensor reads (the HAL never replaces them): one
        # reference per sensor, so the tick reads a slot without a branch on
        # the kind.
        self._img = []
        for i in range(n):
            s = sensors[i]
            self.kind[i] = s.kind
            self.ch[i] = s.ch
            self.zone[i] = s.zone
            self.min_mc[i] = s.min_mc
            self.max_mc[i] = s.max_mc
            self.crit_mc[i] = s.crit_mc
            img = hal.adc if s.kind == SENSOR_NTC else hal.i2c_temp
            check_channel(img, s.ch, "sensor " + s.name)
            self._img.append(img)

        # the thermistor table step() writes out inline (see ntc.py)
        self._seg_of = ntc.SEG_OF
        self._seg_low = ntc.SEG_LOW
        self._seg_num = ntc.SEG_NUM
        self._seg_den = ntc.SEG_DEN

        self.mc = array("i", [TEMP_INVALID] * n)  # last valid reading
        self.state = bytearray([SENSOR_STALE] * n)  # published state
        self.pending = bytearray([1] * n)  # 1 until the first verdict after boot
        self.misses = bytearray(n)  # consecutive invalid ticks (saturates)
        self.reason = bytearray(n)  # reason of the last invalid reading
        self.reason_run = bytearray(n)  # consecutive ticks with that same reason
        self._last = array("i", [_NO_RAW] * n)  # steady-state raw, see the docstring
        self.max_mc_all = TEMP_INVALID  # hottest valid sensor of the whole board
        self.zone_max_mc = array("i", [TEMP_INVALID] * n_zones)
        self.zone_count = bytearray(n_zones)
        self.zone_bad = bytearray(n_zones)
        self.zone_pending = bytearray(n_zones)
        for i in range(n):
            self.zone_count[self.zone[i]] += 1
        # Sensor indices grouped by zone: zone z's are _zmem[_zfirst[z]] up to
        # _zmem[_zfirst[z + 1] - 1] (a rescan of one zone visits only those).
        self._zfirst = array("i", [0] * (n_zones + 1))
        self._zmem = array("i", [0] * n)
        k = 0
        for z in range(n_zones):
            self._zfirst[z] = k
            for i in range(n):
                if self.zone[i] == z:
                    self._zmem[k] = i
                    k += 1
        self._zfirst[n_zones] = k
        self._full = 1  # the first step computes every summary
        self._publish_all()

    def _publish_all(self):
        v = self._v
        for i in range(self.n):
            v[self._temp0 + i] = TEMP_INVALID
            v[self._state0 + i] = self.state[i]
        v[self._gmax] = TEMP_INVALID

    # -- the tick ---------------------------------------------------------------
    def step(self, now_ms=0):
        """Read every sensor once, update states, publish signals and the
        per-zone summaries. ``now_ms`` is unused (ticks are the time base)."""
        # Steady state (see the module docstring): find the first sensor whose
        # image slot differs from its steady raw value. None: every sensor is
        # OK and reads what it read before, so nothing changes this tick.
        imgs = self._img
        chs = self.ch
        last = self._last
        n = self.n
        for first in range(n):
            if imgs[first][chs[first]] != last[first]:
                break
        else:
            return

        # From `first` on: read, convert, judge, publish and summarise each
        # sensor that is not steady. Everything is written out here, arrays in
        # locals: on the 32-bit VM one Python call costs about as much as the
        # rest of a sensor's work.
        v = self._v
        stale = self.stale_ticks
        kinds = self.kind
        min_mc = self.min_mc
        max_mc = self.max_mc
        zones = self.zone
        mcs = self.mc
        states = self.state
        pending = self.pending
        misses = self.misses
        reasons = self.reason
        runs = self.reason_run
        push = self._push
        temp0 = self._temp0
        state0 = self._state0
        zmax = self.zone_max_mc
        seg_of = self._seg_of
        seg_low = self._seg_low
        seg_num = self._seg_num
        seg_den = self._seg_den
        full = self._full  # a state changed: recompute every summary at the end
        hottest = self.max_mc_all
        rescan = 0  # the board's hottest sensor cooled: max over the zones at the end
        for i in range(first, n):
            raw = imgs[i][chs[i]]
            if raw == last[i]:
                continue  # steady

            # convert: why = _NONE and mc, or the reason the reading is invalid
            why = _NONE
            kind = kinds[i]
            if kind == SENSOR_NTC:
                if raw > _NTC_RAW_HOT and raw < _NTC_RAW_COLD:
                    # ntc.adc_to_mc inside the table (the common case); the
                    # bounds lie inside (RAW_SHORT, RAW_OPEN), see ntc.py
                    k = seg_of[raw >> _NTC_SHIFT]
                    if raw <= seg_low[k]:
                        k += 1
                    mc = (seg_num[k] - raw * _NTC_STEP) // seg_den[k]
                elif raw == READ_ERROR:
                    why = SENSOR_STALE
                elif raw >= RAW_OPEN:  # ntc.classify, inline
                    why = SENSOR_OPEN
                elif raw <= RAW_SHORT:
                    why = SENSOR_SHORT
                elif raw >= _NTC_RAW_COLD:  # valid, past the table's ends: clamped
                    mc = ntc.TABLE_MC_COLD
                else:
                    mc = ntc.TABLE_MC_HOT
            elif raw == READ_ERROR:
                why = SENSOR_STALE
            else:
                mc = ((raw & 0xFFFF) ^ 0x8000) - 0x8000  # the register, sign-extended
                if kind == SENSOR_TMP117:
                    mc = (mc * 125) >> 4  # tmp117_to_mc
                else:  # SENSOR_LM75 (config rejects other kinds): lm75_to_mc
                    mc = (mc >> 5) * 125
            if why == _NONE and (mc < min_mc[i] or mc > max_mc[i]):
                why = SENSOR_RANGE

            # judge (see the state diagram in the module docstring)
            st = states[i]
            if why == _NONE:
                mcs[i] = mc
                if misses[i]:  # (a reason run only exists after a miss)
                    misses[i] = 0
                    runs[i] = 0
                if st != SENSOR_OK:
                    st = SENSOR_OK
                    states[i] = st
                    v[state0 + i] = st
                    full = 1
                    if pending[i]:
                        pending[i] = 0  # first reading after boot: not news
                    else:
                        push(EV_SENSOR_STATE, i, SENSOR_OK, 0)
                last[i] = raw  # OK, no miss counted: steady while raw stays
            else:
                last[i] = _NO_RAW
                if misses[i] < stale:
                    misses[i] += 1
                if why == reasons[i]:
                    if runs[i] < stale:
                        runs[i] += 1
                else:
                    reasons[i] = why
                    runs[i] = 1
                if pending[i] or st == SENSOR_OK:
                    if misses[i] >= stale:
                        pending[i] = 0
                        st = why
                        states[i] = st
                        v[state0 + i] = st
                        full = 1
                        push(EV_SENSOR_STATE, i, why, 0)
                elif why != st and runs[i] >= stale:
                    st = why
                    states[i] = st
                    v[state0 + i] = st
                    full = 1
                    push(EV_SENSOR_STATE, i, why, 0)

            # publish; keep the maxima right when a valid temperature moved
            if st == SENSOR_OK:
                t = mcs[i]
            else:
                t = TEMP_INVALID
            old = v[temp0 + i]
            if t != old:
                v[temp0 + i] = t
                if not full:
                    # The state did not change (that sets full), so both old
                    # and t are valid. zmax[z] is the max of the zone's
                    # published temperatures: a rise above it is the new max;
                    # if the sensor that held it cooled, another sensor of
                    # the zone may hold it now.
                    z = zones[i]
                    zm = zmax[z]
                    if t > zm:
                        zmax[z] = t
                    elif old == zm:
                        zm = TEMP_INVALID
                        zmem = self._zmem
                        for j in range(self._zfirst[z], self._zfirst[z + 1]):
                            u = v[temp0 + zmem[j]]
                            if u > zm:
                                zm = u
                        zmax[z] = zm
                    if t > hottest:
                        hottest = t
                    elif old == hottest:
                        rescan = 1

        if full:
            self._full = 0
            self._summarise()
            return
        if rescan:
            hottest = TEMP_INVALID
            for z in range(self.n_zones):
                if zmax[z] > hottest:
                    hottest = zmax[z]
        self.max_mc_all = hottest
        v[self._gmax] = hottest

    def _summarise(self):
        """Every summary from the published states and temperatures: after a
        state change (and on the first tick), not on the steady path."""
        v = self._v
        temp0 = self._temp0
        zones = self.zone
        states = self.state
        pending = self.pending
        zmax = self.zone_max_mc
        zbad = self.zone_bad
        zpend = self.zone_pending
        for z in range(self.n_zones):
            zmax[z] = TEMP_INVALID
            zbad[z] = 0
            zpend[z] = 0
        hottest = TEMP_INVALID
        for i in range(self.n):
            z = zones[i]
            if states[i] == SENSOR_OK:
                t = v[temp0 + i]
                if t > hottest:
                    hottest = t
                if t > zmax[z]:
                    zmax[z] = t
            else:
                zbad[z] += 1
                if pending[i]:
                    zpend[z] += 1
        self.max_mc_all = hottest
        v[self._gmax] = hottest

    # -- per-zone queries (read the arrays computed by step) ------------------
    def zone_max(self, z):
        """Hottest valid sensor of zone ``z`` in m°C, TEMP_INVALID if none."""
        if 0 <= z < self.n_zones:
            return self.zone_max_mc[z]
        return TEMP_INVALID

    def zone_all_valid(self, z):
        """1 when zone ``z`` has sensors and every one of them is OK."""
        if 0 <= z < self.n_zones and self.zone_count[z] and not self.zone_bad[z]:
            return 1
        return 0

    def zone_is_pending(self, z):
        """1 while a sensor of zone ``z`` has had no verdict since boot."""
        if 0 <= z < self.n_zones and self.zone_pending[z]:
            return 1
        return 0

    def temp(self, i):
        """Published temperature of sensor ``i`` (TEMP_INVALID when not OK)."""
        if 0 <= i < self.n and self.state[i] == SENSOR_OK:
            return self.mc[i]
        return TEMP_INVALID
