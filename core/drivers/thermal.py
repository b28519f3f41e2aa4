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
``thermal.step(now)``, which ends with ``fans.apply()``.
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
        # three calls per zone); zones past sb.n_zones have no sensors.
        self._sb_zones = sensors_bank.n_zones
        self._sb_count = sensors_bank.zone_count
        self._sb_bad = sensors_bank.zone_bad
        self._sb_pending = sensors_bank.zone_pending
        self._sb_max = sensors_bank.zone_max_mc
        self._apply_fans = fan_bank.apply
        self.overheat_timer_ms = limits.overheat_timer_ms
        dt_ms = (limits.tick_us + 500) // 1000
        if dt_ms < 1:
            dt_ms = 1

        self.pid = []
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
            self.pid.append(Pid(zc.kp, zc.ki, zc.kd, zc.min_duty, zc.max_duty,
                                zc.slew, dt_ms))
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

        self.force_max = 0  # set by the firmware (interlock ACT_FANS_MAX)
        self.failsafe_any = 0  # telemetry STF_FAILSAFE
        self.overheat_running = 0  # telemetry STF_OVERHEAT
        self.overheat_expired = 0  # the firmware powers down when this is 1
        self.overheat_sensor = -1
        self._overheat_start_ms = 0

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
    def _drive_fans(self):
        # Per fan per tick: fans.set_duty written out (its target check cannot
        # fail here, its 0..1000 clamp is kept) and the arrays in locals.
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
            if d < 0:
                d = 0
            elif d > 1000:
                d = 1000
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
        sb_zones = self._sb_zones
        sb_count = self._sb_count
        sb_bad = self._sb_bad
        sb_pending = self._sb_pending
        sb_max = self._sb_max
        booting = self.booting
        requested = self.requested
        mode = self.mode
        duty = self.duty
        pids = self.pid
        failsafe_any = 0
        for z in range(self.n):
            # sensors.zone_all_valid(z)
            healthy = 1 if z < sb_zones and sb_count[z] and not sb_bad[z] else 0
            if booting[z]:
                # ... or not sensors.zone_is_pending(z)
                if healthy or not (z < sb_zones and sb_pending[z]):
                    booting[z] = 0
                    pids[z].reset(duty[z])
            if forced:
                m = MODE_MAX
            elif booting[z]:
                m = requested[z]
            elif not healthy:
                m = MODE_FAILSAFE
            else:
                m = requested[z]
            if m != mode[z]:
                mode[z] = m
                self._push(EV_ZONE_MODE, z, m, 0)
                if m == MODE_AUTO:
                    pids[z].reset(duty[z])

            if m == MODE_MAX:
                d = 1000
            elif booting[z]:
                d = self.boot_duty[z]
            elif m == MODE_FAILSAFE:
                failsafe_any = 1
                d = self.failsafe_duty[z]
                if requested[z] == MODE_MANUAL and self.manual_duty[z] > d:
                    d = self.manual_duty[z]
            elif m == MODE_MANUAL:
                d = self.manual_duty[z]
            else:
                t = sb_max[z] if z < sb_zones else TEMP_INVALID  # sensors.zone_max(z)
                d = pids[z].update(self.setpoint[z], t)
                if self.has_steps[z]:  # an empty table gives 0, never above the PID's d
                    s = stepwise(self.steps[z], t)
                    if s > d:
                        d = s
                if d > self.max_duty[z]:
                    d = self.max_duty[z]
            duty[z] = d
        self.failsafe_any = failsafe_any
        self._drive_fans()
