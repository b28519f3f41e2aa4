"""Temperature sensors: one read per sensor per tick, conversion to m°C, health.

Conversions (integers only):

* ``SENSOR_NTC``: ``hal.adc_read`` → ``ntc.classify`` (open / short) →
  ``ntc.adc_to_mc``.
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
"""

from array import array

from metal.core.compat import const
from metal.core.config import SENSOR_NTC, SENSOR_TMP117, SENSOR_LM75
from metal.core.drivers.ntc import RAW_OPEN, RAW_SHORT, adc_to_mc
from metal.core.hal import READ_ERROR
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
        self._adc_read = hal.adc_read
        self._i2c_read = hal.i2c_temp_read
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
        for i in range(n):
            s = sensors[i]
            self.kind[i] = s.kind
            self.ch[i] = s.ch
            self.zone[i] = s.zone
            self.min_mc[i] = s.min_mc
            self.max_mc[i] = s.max_mc
            self.crit_mc[i] = s.crit_mc

        self.mc = array("i", [TEMP_INVALID] * n)  # last valid reading
        self.state = bytearray([SENSOR_STALE] * n)  # published state
        self.pending = bytearray([1] * n)  # 1 until the first verdict after boot
        self.misses = bytearray(n)  # consecutive invalid ticks (saturates)
        self.reason = bytearray(n)  # reason of the last invalid reading
        self.reason_run = bytearray(n)  # consecutive ticks with that same reason
        self.max_mc_all = TEMP_INVALID  # hottest valid sensor of the whole board
        self.zone_max_mc = array("i", [TEMP_INVALID] * n_zones)
        self.zone_count = bytearray(n_zones)
        self.zone_bad = bytearray(n_zones)
        self.zone_pending = bytearray(n_zones)
        for i in range(n):
            self.zone_count[self.zone[i]] += 1
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
        # One pass per sensor: read, convert, judge, publish and summarise. This
        # runs for every sensor on every tick, so the arrays live in locals and
        # the NTC classification is written out here: on the 32-bit VM one
        # Python call costs about as much as the rest of a sensor's work.
        v = self._v
        stale = self.stale_ticks
        kinds = self.kind
        chs = self.ch
        min_mc = self.min_mc
        max_mc = self.max_mc
        zones = self.zone
        mcs = self.mc
        states = self.state
        pending = self.pending
        misses = self.misses
        reasons = self.reason
        runs = self.reason_run
        adc_read = self._adc_read
        i2c_read = self._i2c_read
        push = self._push
        temp0 = self._temp0
        state0 = self._state0
        zmax = self.zone_max_mc
        zbad = self.zone_bad
        zpend = self.zone_pending
        for z in range(self.n_zones):
            zmax[z] = TEMP_INVALID
            zbad[z] = 0
            zpend[z] = 0
        hottest = TEMP_INVALID
        for i in range(self.n):
            # read and convert: why = _NONE and mc, or the reason it is invalid
            kind = kinds[i]
            if kind == SENSOR_NTC:
                raw = adc_read(chs[i])
                if raw > RAW_SHORT and raw < RAW_OPEN:  # a temperature (the common case)
                    why = _NONE
                    mc = adc_to_mc(raw)
                elif raw == READ_ERROR:  # (negative: the test above excludes it)
                    why = SENSOR_STALE
                elif raw >= RAW_OPEN:  # ntc.classify, inline
                    why = SENSOR_OPEN
                else:
                    why = SENSOR_SHORT
            else:
                raw = i2c_read(chs[i])
                if raw == READ_ERROR:
                    why = SENSOR_STALE
                else:
                    why = _NONE
                    if kind == SENSOR_TMP117:
                        mc = tmp117_to_mc(raw)
                    else:  # SENSOR_LM75 (config rejects other kinds)
                        mc = lm75_to_mc(raw)
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
                    if pending[i]:
                        pending[i] = 0  # first reading after boot: not news
                    else:
                        push(EV_SENSOR_STATE, i, SENSOR_OK, 0)
            else:
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
                        push(EV_SENSOR_STATE, i, why, 0)
                elif why != st and runs[i] >= stale:
                    st = why
                    states[i] = st
                    push(EV_SENSOR_STATE, i, why, 0)

            # publish and summarise
            z = zones[i]
            v[state0 + i] = st
            if st == SENSOR_OK:
                t = mcs[i]
                v[temp0 + i] = t
                if t > hottest:
                    hottest = t
                if t > zmax[z]:
                    zmax[z] = t
            else:
                v[temp0 + i] = TEMP_INVALID
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
