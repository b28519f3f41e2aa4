"""Thermal zones: sensors in, fan duty out, and the overheat timer.

Each zone runs a ``Pid`` on its hottest valid sensor, and optionally a
stepwise table on the same temperature; the zone's duty is the larger of the
two, within the zone's [min_duty, max_duty]. Every fan follows its zone's
duty, raised to the fan's own ``min_duty`` when non-zero (below it a fan may
not turn at all).

Zone modes (the value of EV_ZONE_MODE, pushed whenever a zone's effective
mode changes)::

                       set_manual(z, d)
          +--------+ ------------------> +----------+
    boot  |  AUTO  |                     |  MANUAL  |  duty = d
    ----> |  PID   | <------------------ |          |
          +--------+      set_auto(z)    +----------+
              ^  |                          ^  |
   all sensors|  | a sensor of the zone     |  | (same conditions)
   OK again   |  v not OK / none valid      |  v
          +------------+               +------------+
          |  FAILSAFE  |               |  FAILSAFE  |  duty = max(failsafe_duty,
          |            |               |  (manual   |         manual d)
          +------------+               |  remembered)|
                                       +------------+
       force_max set, overheat timer running or expired (from any mode):
          --> MAX, duty 1000 ‰; when it clears, back to whichever of the
              above applies.

``set_auto``/``set_manual`` change the *requested* mode (AUTO or MANUAL);
the *effective* mode is MAX if forced, else FAILSAFE if the zone is not
healthy, else the requested one, so a command never lowers the cooling of a
zone in failsafe or max. Entering AUTO from anything else resets the PID to
the zone's present duty (bumpless); the slew limit then walks it down.

Boot: until every sensor of the zone has had its first verdict (a valid
reading, or ``stale_ticks`` bad ones, see sensors.py) the zone holds
``boot_duty`` in whichever mode is requested, without events. It then enters
AUTO/MANUAL with the PID starting from ``boot_duty``, or FAILSAFE.

Overheat timer (started by the firmware when a critical-temperature interlock
with ACT_OVERHEAT trips)::

              overheat_start                 overheat_timer_ms elapsed
        IDLE ----------------> RUNNING ---------------------------------> EXPIRED
         ^   EV_OVERHEAT_START   |  EV_OVERHEAT_POWER_DOWN, overheat_expired=1:  |
         |   fans MAX            |  the firmware powers the board down          |
         +-----------------------+----------------------------------------------+
                        overheat_cancel: EV_OVERHEAT_CANCEL

``overheat_start`` is a no-op while RUNNING or EXPIRED (it does not restart
the countdown, so an interlock that fires again cannot postpone the
power-down). The firmware calls ``overheat_cancel`` when the condition clears
(its interlock's threshold and hysteresis decide "fell back"); fans stay at
maximum until then, also after expiry, to carry away residual heat.

Loop order: ``sensors.step()`` and ``fans.step(now)`` in the input phase,
interlocks (which may set ``force_max`` or call ``overheat_start``), then
``thermal.step(now)``, which ends with ``fans.apply()`` when a zone duty
changed.

Speed: every zone runs on every tick, so ``step`` does its work inline: the
per-zone PID is ``pid.Pid.update`` written out on one ``array('i')`` per
zone (the ``_P_*`` offsets; a ``Pid`` built at start-up validates the gains
and supplies the limits, and ``pid[z]`` is a read-only view for tests), the
sensor bank's zone summaries are read directly, and only a zone whose duty
changed writes its fans (``fans.apply`` is called only then: the fans follow
the zone duties and nothing else). Two exact shortcuts skip the integral
step: a zone *pinned* at a bound (the output already at the floor or ceiling
the error pushes it against: Pid would neither integrate nor move the output),
found after the P term; and, while the error of a pinned zone without a D
term repeats, a single compare (``_P_PIN_E``). tests/drivers/test_thermal.py
checks every output against ``Pid`` tick for tick.
"""

from array import array

from metal.core.compat import const, ticks_diff
from metal.core.drivers.pid import Pid, steps_table, stepwise
from metal.core.proto import (
    EV_ZONE_MODE,
    EV_OVERHEAT_START,
    EV_OVERHEAT_CANCEL,
    EV_OVERHEAT_POWER_DOWN,
    R_OK,
    R_INVALID_ARGUMENT,
    R_UNKNOWN_TARGET,
)
from metal.core.signals import TEMP_INVALID

MODE_AUTO = const(0)
MODE_MANUAL = const(1)
MODE_FAILSAFE = const(2)
MODE_MAX = const(3)

# Setpoints an operator may choose; a zone's setpoint must also stay below the
# lowest critical temperature of its sensors (or the fans would idle until the
# overheat path takes over).
SETPOINT_MIN_MC = const(0)
SETPOINT_MAX_MC = const(120000)

# Each zone's PID, written out in ``step`` (see "Speed" above) on one array('i')
# per zone, at these offsets. Gains and limits come from a ``pid.Pid`` built
# at start-up (it validates them); the state is the Pid's, minus the last
# P and D terms (not kept).
_P_KP = const(0)
_P_KI = const(1)
_P_KD = const(2)
_P_EP_LIM = const(3)  # |error| limits for the P, I and D products (pid._lim)
_P_EI_LIM = const(4)
_P_ED_LIM = const(5)
_P_SLEW = const(6)  # ‰ per tick
_P_DT = const(7)  # ms
_P_MIN = const(8)  # output range, ‰ (the zone's min_duty / max_duty)
_P_MAX = const(9)
_P_I_MIN = const(10)  # integral range, 10 µ‰ units
_P_I_MAX = const(11)
_P_I = const(12)  # state: integral, 10 µ‰ units
_P_OUT = const(13)  # state: last output, ‰
_P_PREV = const(14)  # state: previous measurement (clamped to ±E_MAX), m°C
_P_FLAGS = const(15)  # state: _F_* bits
_P_PIN_E = const(16)  # state: the error of the last pinned update, or _NO_PIN (see step)
_P_E_LIM = const(17)  # min(_P_EP_LIM, _P_EI_LIM): inside it neither clamp acts
_P_LEN = const(18)
_NO_PIN = const(0x3FFFFFFF)  # no error reaches it: |measured|, |setpoint| <= 2**29
_F_BUMPLESS = const(1)  # reset() happened: the next update back-computes the integral
_F_DERIV = const(2)  # kd != 0 (constant): a D term is formed
_F_HAVE_PREV = const(4)  # _P_PREV holds a sample (only tracked with _F_DERIV)
# pid.py's constants (const() names are not importable without a global lookup)
_E_MAX = const(200000)
_D_MAX = const(2000000)
_I_PER_PERMILLE = const(100000)
_I_PER_MPERMILLE = const(100)


class ZonePid:
    """Read-only view of one zone's PID state (``ThermalController.pid[z]``)
    for tests and debugging: ``out`` (last output, ‰) and ``i`` (integral,
    10 µ‰ units). Not used on the tick path."""

    def __init__(self, state):
        self._st = state

    @property
    def out(self):
        return self._st[_P_OUT]

    @property
    def i(self):
        return self._st[_P_I]


class ThermalController:
    def __init__(self, zones, sensors_bank, fan_bank, signals, events, limits):
        nz = len(zones)
        self.n = nz
        self._sb = sensors_bank
        self._fb = fan_bank
        self._signals = signals
        self._push = events.push
        # The per-zone summaries SensorBank.step computes, read directly in the
        # tick (what zone_all_valid / zone_is_pending / zone_max return, without
        # three calls per zone). Which zones have sensors at all is fixed at
        # start-up (zones past sb.n_zones have none).
        self._has_sensors = bytearray(nz)
        for z in range(nz):
            if z < sensors_bank.n_zones and sensors_bank.zone_count[z]:
                self._has_sensors[z] = 1
        self._sb_bad = sensors_bank.zone_bad
        self._sb_pending = sensors_bank.zone_pending
        self._sb_max = sensors_bank.zone_max_mc
        self._apply_fans = fan_bank.apply
        self.overheat_timer_ms = limits.overheat_timer_ms
        dt_ms = (limits.tick_us + 500) // 1000
        if dt_ms < 1:
            dt_ms = 1

        self._pz = []  # per zone: array('i') at the _P_* offsets
        self.pid = []  # per zone: a ZonePid view of it
        self.steps = []
        self.has_steps = bytearray(nz)  # 1 = the zone has a stepwise table
        self.setpoint = array("i", [0] * nz)
        self.min_duty = array("i", [0] * nz)
        self.max_duty = array("i", [0] * nz)
        self.failsafe_duty = array("i", [0] * nz)
        self.boot_duty = array("i", [0] * nz)
        self.crit_min = array("i", [SETPOINT_MAX_MC + 1] * nz)
        for z in range(nz):
            zc = zones[z]
            ref = Pid(zc.kp, zc.ki, zc.kd, zc.min_duty, zc.max_duty, zc.slew, dt_ms)
            pz = array("i", [0] * _P_LEN)
            pz[_P_KP] = ref.kp
            pz[_P_KI] = ref.ki
            pz[_P_KD] = ref.kd
            pz[_P_EP_LIM] = ref._ep_lim
            pz[_P_EI_LIM] = ref._ei_lim
            pz[_P_ED_LIM] = ref._ed_lim
            pz[_P_E_LIM] = ref._ep_lim if ref._ep_lim < ref._ei_lim else ref._ei_lim
            pz[_P_SLEW] = ref.slew
            pz[_P_DT] = ref.dt_ms
            pz[_P_MIN] = ref.out_min
            pz[_P_MAX] = ref.out_max
            pz[_P_I_MIN] = ref._i_min
            pz[_P_I_MAX] = ref._i_max
            pz[_P_FLAGS] = _F_DERIV if ref.kd else 0
            self._pz.append(pz)
            self.pid.append(ZonePid(pz))
            self._pid_reset(z, zc.min_duty)  # as Pid() does
            self.steps.append(steps_table(zc.steps))
            self.has_steps[z] = 1 if zc.steps else 0
            self.setpoint[z] = zc.setpoint_mc
            self.min_duty[z] = zc.min_duty
            self.max_duty[z] = zc.max_duty
            self.failsafe_duty[z] = zc.failsafe_duty
            self.boot_duty[z] = zc.boot_duty
        for i in range(sensors_bank.n):
            z = sensors_bank.zone[i]
            if z < nz and sensors_bank.crit_mc[i] < self.crit_min[z]:
                self.crit_min[z] = sensors_bank.crit_mc[i]

        self.requested = bytearray([MODE_AUTO] * nz)  # AUTO or MANUAL, from commands
        self.mode = bytearray([MODE_AUTO] * nz)  # effective mode
        self.manual_duty = array("i", [0] * nz)
        self.booting = bytearray([1] * nz)
        self.duty = array("i", [0] * nz)  # zone output, per-mille
        for z in range(nz):
            self.duty[z] = self.boot_duty[z]

        # The fans of each zone, for step() to update only those of a zone
        # whose duty changed (a fan of no zone runs at 1000 from the start).
        self._zone_fans = []
        for z in range(nz):
            mine = []
            for i in range(fan_bank.n):
                if fan_bank.zone[i] == z:
                    mine.append(i)
            self._zone_fans.append(array("i", mine))

        self.force_max = 0  # set by the firmware (interlock ACT_FANS_MAX)
        self.failsafe_any = 0  # telemetry STF_FAILSAFE
        self.overheat_running = 0  # telemetry STF_OVERHEAT
        self.overheat_expired = 0  # the firmware powers down when this is 1
        self.overheat_sensor = -1
        self._overheat_start_ms = 0

        # What step() reads on every tick, in one tuple: unpacking it costs one
        # attribute lookup instead of one per name. None of these objects is
        # ever replaced (this class's arrays, the sensor bank's zone summaries
        # and the fan bank's min_duty/duty arrays are all claimed once).
        self._tick_refs = (self._has_sensors, self._sb_bad, self._sb_max, self.booting,
                           self.requested, self.mode, self.duty, self.setpoint, self._pz,
                           self.has_steps, self._zone_fans, fan_bank.min_duty, fan_bank.duty)

        # Boot: fans at boot duty from the very first apply.
        self._drive_fans()

    # -- commands (return R_*) ---------------------------------------------------
    def set_auto(self, z):
        if not 0 <= z < self.n:
            return R_UNKNOWN_TARGET
        self.requested[z] = MODE_AUTO
        return R_OK

    def set_manual(self, z, duty):
        if not 0 <= z < self.n:
            return R_UNKNOWN_TARGET
        if not 0 <= duty <= 1000:
            return R_INVALID_ARGUMENT
        self.manual_duty[z] = duty
        self.requested[z] = MODE_MANUAL
        return R_OK

    def set_setpoint(self, z, mc):
        if not 0 <= z < self.n:
            return R_UNKNOWN_TARGET
        if mc < SETPOINT_MIN_MC or mc > SETPOINT_MAX_MC or mc >= self.crit_min[z]:
            return R_INVALID_ARGUMENT
        self.setpoint[z] = mc
        return R_OK

    # -- overheat timer ------------------------------------------------------------
    def _sensor_mc(self, sensor):
        if 0 <= sensor < self._sb.n:
            return self._sb.mc[sensor]
        return TEMP_INVALID

    def overheat_start(self, sensor, now_ms):
        """Start the countdown to power-down (no-op while running or expired)."""
        if self.overheat_running or self.overheat_expired:
            return R_OK
        self.overheat_running = 1
        self.overheat_sensor = sensor
        self._overheat_start_ms = now_ms
        self._push(EV_OVERHEAT_START, sensor, self._sensor_mc(sensor), self.overheat_timer_ms)
        return R_OK

    def overheat_cancel(self):
        """The condition cleared: stop the countdown (or leave the expired state)."""
        if not (self.overheat_running or self.overheat_expired):
            return R_OK
        self.overheat_running = 0
        self.overheat_expired = 0
        s = self.overheat_sensor
        self._push(EV_OVERHEAT_CANCEL, s, self._sensor_mc(s), 0)
        return R_OK

    def overheat_ms_left(self, now_ms):
        """Milliseconds until power-down while running, else 0."""
        if not self.overheat_running:
            return 0
        left = self.overheat_timer_ms - ticks_diff(now_ms, self._overheat_start_ms)
        if left < 0:
            return 0
        return left

    # -- the tick ---------------------------------------------------------------------
    def _pid_reset(self, z, duty):
        """pid.Pid.reset on zone ``z``'s state: the next update outputs ``duty``
        (clamped to the zone's range)."""
        pz = self._pz[z]
        if duty < pz[_P_MIN]:
            duty = pz[_P_MIN]
        elif duty > pz[_P_MAX]:
            duty = pz[_P_MAX]
        pz[_P_OUT] = duty
        pz[_P_I] = duty * _I_PER_PERMILLE
        pz[_P_FLAGS] = (pz[_P_FLAGS] & _F_DERIV) | _F_BUMPLESS  # and no previous sample
        pz[_P_PIN_E] = _NO_PIN

    def _drive_fans(self):
        # Every fan from its zone's duty (start-up; step() updates the fans of
        # a zone whose duty changed), then fans.apply. fans.set_duty written
        # out: its target check cannot fail here and its 0..1000 clamp cannot
        # act (zone duties and fan min_duty are within 0..1000: Zone, Fan and
        # set_manual validate them, the PID and stepwise outputs stay inside).
        fb = self._fb
        nz = self.n
        zduty = self.duty
        fzone = fb.zone
        fmin = fb.min_duty
        fduty = fb.duty
        for i in range(fb.n):
            z = fzone[i]
            d = zduty[z] if z < nz else 1000
            if d > 0 and d < fmin[i]:
                d = fmin[i]
            fduty[i] = d
        self._apply_fans()

    def step(self, now_ms):
        if self.overheat_running:
            if ticks_diff(now_ms, self._overheat_start_ms) >= self.overheat_timer_ms:
                self.overheat_running = 0
                self.overheat_expired = 1
                s = self.overheat_sensor
                self._push(EV_OVERHEAT_POWER_DOWN, s, self._sensor_mc(s), 0)
        forced = self.force_max or self.overheat_running or self.overheat_expired

        # every zone on every tick: arrays in locals, the sensor bank's zone
        # summaries read directly (see __init__)
        (has_sensors, sb_bad, sb_max, booting, requested, mode, duty, setpoint, pzs,
         has_steps, zone_fans, fmin, fduty) = self._tick_refs
        failsafe_any = 0
        changed = 0  # some zone's duty differs from the previous tick's
        for z in range(self.n):
            healthy = has_sensors[z] and not sb_bad[z]  # sensors.zone_all_valid(z)
            b = booting[z]
            if b:
                # ... or not sensors.zone_is_pending(z)
                if healthy or not (has_sensors[z] and self._sb_pending[z]):
                    booting[z] = 0
                    b = 0
                    self._pid_reset(z, duty[z])
            if forced:
                m = MODE_MAX
            elif b or healthy:
                m = requested[z]
            else:
                m = MODE_FAILSAFE
            if m != mode[z]:
                mode[z] = m
                self._push(EV_ZONE_MODE, z, m, 0)
                if m == MODE_AUTO:
                    self._pid_reset(z, duty[z])

            if m == MODE_AUTO and not b:
                # pid.Pid.update(setpoint, t) written out on the zone's array
                # (same arithmetic, same results: tests/drivers/test_thermal.py
                # compares them). Healthy here, so the zone has a valid t.
                pz = pzs[z]
                t = sb_max[z]  # sensors.zone_max(z)
                e = t - setpoint[z]  # no ±E_MAX clamp: every |error| limit is <= E_MAX
                if e == pz[_P_PIN_E]:
                    # The last update was pinned (below) at this same error and
                    # left the state as it was; nothing changed it since
                    # (_pid_reset and every other update clear _P_PIN_E), and
                    # the gains are constant: same computation, same verdict.
                    # Sensors that repeat a reading take this path (an I2C
                    # sensor converts far slower than the tick runs).
                    d = pz[_P_OUT]
                else:
                    last = pz[_P_OUT]
                    lo = pz[_P_MIN]
                    hi = pz[_P_MAX]
                    i = pz[_P_I]
                    # the error for the P product (x) and for the I product
                    # (xi), each clamped to its limit
                    x = e
                    lim = pz[_P_E_LIM]
                    if x > lim or x < -lim:
                        lim = pz[_P_EI_LIM]
                        xi = lim if x > lim else (-lim if x < -lim else x)
                        lim = pz[_P_EP_LIM]
                        if x > lim:
                            x = lim
                        elif x < -lim:
                            x = -lim
                    else:
                        xi = x
                    # P and D only ever appear summed, with the 500 that
                    # rounds the m‰ sum half up: pd = P + D + 500
                    pd = pz[_P_KP] * x // 1000 + 500
                    fl = pz[_P_FLAGS]
                    if fl:  # a D term (kd != 0), or a bumpless restart pending
                        if fl & _F_DERIV:
                            if fl & _F_HAVE_PREV:
                                # one clamp to ±ed_lim does both ±E_MAX and ±ed_lim
                                dm = t - pz[_P_PREV]
                                lim = pz[_P_ED_LIM]
                                if dm > lim:
                                    dm = lim
                                elif dm < -lim:
                                    dm = -lim
                                dm = pz[_P_KD] * dm // pz[_P_DT]
                                if dm > _D_MAX:
                                    dm = _D_MAX
                                elif dm < -_D_MAX:
                                    dm = -_D_MAX
                                pd += dm
                            if t > _E_MAX:
                                pz[_P_PREV] = _E_MAX
                            elif t < -_E_MAX:
                                pz[_P_PREV] = -_E_MAX
                            else:
                                pz[_P_PREV] = t
                        if fl & _F_BUMPLESS:
                            # choose the integral so that P + I + D equals the held output
                            i = (last * 1000 + 500 - pd) * _I_PER_MPERMILLE
                            if i < pz[_P_I_MIN]:
                                i = pz[_P_I_MIN]
                            elif i > pz[_P_I_MAX]:
                                i = pz[_P_I_MAX]
                            pz[_P_I] = i
                        # done with the restart; a derivative zone now has a sample
                        pz[_P_FLAGS] = (_F_DERIV | _F_HAVE_PREV) if fl & _F_DERIV else 0
                    # the output before this tick's integration (Pid's `want`)
                    d = (pd + i // _I_PER_MPERMILLE) // 1000
                    if (((e <= 0 and last == lo and d <= lo) or (e >= 0 and last == hi and d >= hi))
                            and not (fl & _F_BUMPLESS)):
                        # Pinned (e.g. a cool zone whose fans sit at the floor):
                        # the integral step has the sign of e, and the output is
                        # already at the bound it pushes against, so Pid.update
                        # would not integrate, and its clamps would return `last`.
                        # Nothing changes. Without a D term (its value depends
                        # on the previous sample) the verdict holds for as long
                        # as e does: remember it.
                        d = last
                        if not fl:
                            pz[_P_PIN_E] = e
                    else:
                        pz[_P_PIN_E] = _NO_PIN  # the state moves
                        if not (fl & _F_BUMPLESS):
                            # (ki * xi) / 1000 * dt_ms / 10, each division truncating
                            # toward zero: on the magnitude, then the sign back
                            st = pz[_P_KI] * xi
                            if st < 0:
                                st = -((-st) // 1000 * pz[_P_DT] // 10)
                            else:
                                st = st // 1000 * pz[_P_DT] // 10
                            # Integrate unless the output is already pinned in the
                            # step's direction (range or slew), then recompute. The
                            # integral is always in [i_min, i_max], so a step can
                            # only cross the bound it moves towards.
                            if st > 0:
                                if d < hi and d <= last + pz[_P_SLEW]:
                                    i += st
                                    if i > pz[_P_I_MAX]:
                                        i = pz[_P_I_MAX]
                                    pz[_P_I] = i
                                    d = (pd + i // _I_PER_MPERMILLE) // 1000
                            elif st < 0:
                                if d > lo and d >= last - pz[_P_SLEW]:
                                    i += st
                                    if i < pz[_P_I_MIN]:
                                        i = pz[_P_I_MIN]
                                    pz[_P_I] = i
                                    d = (pd + i // _I_PER_MPERMILLE) // 1000
                        lim = pz[_P_SLEW]
                        if d > last + lim:
                            d = last + lim
                        elif d < last - lim:
                            d = last - lim
                        if d > hi:
                            d = hi
                        elif d < lo:
                            d = lo
                        pz[_P_OUT] = d
                if has_steps[z]:  # an empty table gives 0, never above the PID's d
                    s = stepwise(self.steps[z], t)
                    if s > d:
                        d = s
                    if d > self.max_duty[z]:  # (the PID's d never is)
                        d = self.max_duty[z]
            elif m == MODE_MAX:
                d = 1000
            elif b:
                d = self.boot_duty[z]
            elif m == MODE_FAILSAFE:
                failsafe_any = 1
                d = self.failsafe_duty[z]
                if requested[z] == MODE_MANUAL and self.manual_duty[z] > d:
                    d = self.manual_duty[z]
            else:  # MODE_MANUAL
                d = self.manual_duty[z]
            if d != duty[z]:
                duty[z] = d
                changed = 1
                for f in zone_fans[z]:  # this zone's fans, as in _drive_fans
                    fduty[f] = fmin[f] if 0 < d < fmin[f] else d
        self.failsafe_any = failsafe_any
        # The fans follow the zone duties and nothing else (this controller is
        # the only writer of fans.duty; __init__ drove them all once): with no
        # zone duty changed, every fan duty and its applied PWM are already
        # right, and fans.apply would write nothing.
        if changed:
            self._apply_fans()
