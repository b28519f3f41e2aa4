"""The standard interlock set a board builds its table from (start-up only).

Every board so far protects the same four things; only the numbers and the
way a fan failure is watched differ, so the rows are written here once and a
board's ``make_config()`` passes its choices in. Rows, in table order (row
index = position, which is the bit of the row in telemetry)::

    one per sensor i   <sensor>_crit   (SIG_TEMP, i) >= sensor.crit_mc,
                                       crit_hysteresis_mc, crit_delay_ticks,
                                       not latched                ACT_OVERHEAT
    one per fan i      <fan>_stall     (SIG_FAN_STALLED, i) >= 1,
                                       fan_delay_ticks            ACT_FANS_MAX
                  or   <fan>_fault     (SIG_FAN_STATE, i) != FAN_OK,
                                       fan_delay_ticks            ACT_FANS_MAX
    one per rail i     <rail>_fault    (SIG_RAIL_FAULT, i) >= 1,
                                       latched                    ACT_POWER_DOWN
    estop (if estop)   estop           (SIG_GLOBAL, G_ESTOP) >= 1,
                                       latched                    ACT_LOCKOUT

Fan rows (``fan_watch``):

* FAN_WATCH_STALLED watches the fan driver's stalled flag, which is 1 exactly
  in the STALLED state; the driver already judged the stall over a measuring
  window after the spin-up grace, so the sim board needs no delay, and the
  real boards (boards/common) add 3 s against a tach that misses a window.
  A fan its zone switched off (duty 0) is OFF, not stalled: no trip.
* FAN_WATCH_STATE trips on any state other than FAN_OK (STALLED, but also a
  spin-up or an OFF fan) once it has lasted ``fan_delay_ticks``, which must
  then be longer than a spin-up. No board uses it: a zone at duty 0 (a
  manual duty of 0) would trip it and force every fan to full.

Runs once in ``make_config()``: it allocates the rows and a tuple, which is
fine at start-up; nothing here is on the tick path.
"""

from metal.core.config import (
    ACT_FANS_MAX,
    ACT_LOCKOUT,
    ACT_OVERHEAT,
    ACT_POWER_DOWN,
    CMP_GE,
    CMP_NE,
    Interlock,
)
from metal.core.proto import FAN_OK
from metal.core.signals import (
    G_ESTOP,
    SIG_FAN_STALLED,
    SIG_FAN_STATE,
    SIG_GLOBAL,
    SIG_RAIL_FAULT,
    SIG_TEMP,
)

# fan_watch: which signal a fan row compares (see the module docstring)
FAN_WATCH_STALLED = 0  # <fan>_stall: SIG_FAN_STALLED >= 1
FAN_WATCH_STATE = 1  # <fan>_fault: SIG_FAN_STATE != FAN_OK


def default_interlocks(sensors, fans, rails, crit_hysteresis_mc, crit_delay_ticks,
                       fan_watch=FAN_WATCH_STALLED, fan_delay_ticks=0, estop=True):
    """The standard rows for these sensors, fans and rails (config records), as a tuple."""
    if fan_watch not in (FAN_WATCH_STALLED, FAN_WATCH_STATE):
        raise ValueError("board config: fan_watch unknown")
    stall = fan_watch == FAN_WATCH_STALLED
    rows = []
    for i in range(len(sensors)):
        s = sensors[i]
        rows.append(Interlock(s.name + "_crit", (SIG_TEMP, i), CMP_GE, s.crit_mc,
                              hysteresis=crit_hysteresis_mc, delay_ticks=crit_delay_ticks,
                              latch=False, action=ACT_OVERHEAT))
    for i in range(len(fans)):
        if stall:
            rows.append(Interlock(fans[i].name + "_stall", (SIG_FAN_STALLED, i), CMP_GE, 1,
                                  delay_ticks=fan_delay_ticks, latch=False, action=ACT_FANS_MAX))
        else:
            rows.append(Interlock(fans[i].name + "_fault", (SIG_FAN_STATE, i), CMP_NE, FAN_OK,
                                  delay_ticks=fan_delay_ticks, latch=False, action=ACT_FANS_MAX))
    for i in range(len(rails)):
        rows.append(Interlock(rails[i].name + "_fault", (SIG_RAIL_FAULT, i), CMP_GE, 1,
                              latch=True, action=ACT_POWER_DOWN))
    if estop:
        rows.append(Interlock("estop", (SIG_GLOBAL, G_ESTOP), CMP_GE, 1, latch=True,
                              action=ACT_LOCKOUT))
    return tuple(rows)
