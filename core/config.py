"""How a board describes its hardware.

A board module (``metal.boards.<name>``) builds one ``BoardConfig`` from these
small records; the drivers copy what they need into preallocated arrays at
start-up and never look at the records again on the tick path. The same
records produce the DESCRIBE message, so the host learns the layout from the
board instead of from a second copy of this file.

Units are the board's scaled integers: m°C, mV, mA, per-mille duty, RPM, ms.
Every record checks its own arguments and raises ValueError with the field
name, so a bad board file fails at import on the bench, not at run time.
"""

from metal.core.compat import const

# sensor kinds
SENSOR_NTC = const(1)  # thermistor on an ADC channel, see drivers/ntc.py
SENSOR_TMP117 = const(2)  # I2C digital sensor, 7.8125 m°C per LSB
SENSOR_LM75 = const(3)  # I2C digital sensor, 1/256 °C per LSB (9..11 bits used)

# gpio
DIR_IN = const(0)
DIR_OUT = const(1)
PULL_NONE = const(0)
PULL_UP = const(1)
PULL_DOWN = const(2)

# interlock comparisons
CMP_GE = const(1)  # trips when signal >= threshold, clears below threshold - hysteresis
CMP_LE = const(2)  # trips when signal <= threshold, clears above threshold + hysteresis
CMP_NE = const(3)  # trips when signal != threshold (flags), clears when equal

# interlock / safety actions
ACT_NONE = const(0)  # report only
ACT_FANS_MAX = const(1)
ACT_SHED_RAIL = const(2)  # power down one rail (and its dependents)
ACT_POWER_DOWN = const(3)  # orderly power-down of every rail
ACT_LOCKOUT = const(4)  # power down and refuse power-on until cleared
ACT_OVERHEAT = const(5)  # fans max and start the overheat timer

# what host-lost safe mode and tamper do
SAFE_HOLD = const(0)  # keep rails as they are, fans to failsafe
SAFE_POWER_DOWN = const(1)


def _check(cond, what):
    if not cond:
        raise ValueError("board config: " + what)


class Rail:
    def __init__(self, name, ch, nominal_mv, parent=-1, pg_timeout_ms=50,
                 overcurrent_ma=0, off_delay_ms=10):
        _check(0 < nominal_mv < 65536, name + ".nominal_mv out of range")
        _check(pg_timeout_ms > 0, name + ".pg_timeout_ms must be positive")
        _check(0 <= overcurrent_ma < 65536, name + ".overcurrent_ma out of range")
        self.name = name
        self.ch = ch
        self.nominal_mv = nominal_mv
        self.parent = parent  # index of the rail this one depends on, -1 for none
        self.pg_timeout_ms = pg_timeout_ms
        self.overcurrent_ma = overcurrent_ma  # 0 = not monitored
        self.off_delay_ms = off_delay_ms  # wait after disabling before the next rail goes down


class Sensor:
    def __init__(self, name, kind, ch, zone, warn_mc, crit_mc,
                 min_mc=-40000, max_mc=150000):
        _check(kind in (SENSOR_NTC, SENSOR_TMP117, SENSOR_LM75), name + ".kind unknown")
        _check(min_mc < warn_mc <= crit_mc < max_mc, name + ": need min < warn <= crit < max")
        self.name = name
        self.kind = kind
        self.ch = ch
        self.zone = zone
        self.warn_mc = warn_mc
        self.crit_mc = crit_mc
        self.min_mc = min_mc  # a reading outside [min, max] is out of range, not a temperature
        self.max_mc = max_mc


class Fan:
    def __init__(self, name, pwm_ch, tach_ch, zone, max_rpm, stall_rpm=300,
                 pulses_per_rev=2, spinup_ms=2000, min_duty=200):
        _check(0 < max_rpm < 65536, name + ".max_rpm out of range")
        _check(0 < pulses_per_rev <= 8, name + ".pulses_per_rev out of range")
        _check(0 <= min_duty <= 1000, name + ".min_duty out of range")
        self.name = name
        self.pwm_ch = pwm_ch
        self.tach_ch = tach_ch
        self.zone = zone
        self.max_rpm = max_rpm
        self.stall_rpm = stall_rpm  # below this while driven at >= min_duty after spin-up: stalled
        self.pulses_per_rev = pulses_per_rev
        self.spinup_ms = spinup_ms
        self.min_duty = min_duty


class Zone:
    """A thermal zone: its fans follow the max of its controllers' outputs.

    PID gains are per-mille duty per °C of error, scaled by 1000
    (``kp=20000`` means 20 ‰ duty per °C); ``ki`` per °C·s, ``kd`` per °C/s.
    ``steps`` is an optional stepwise table ((m°C, duty ‰), ...) evaluated
    on the zone's hottest sensor alongside the PID.
    """

    def __init__(self, name, setpoint_mc, kp=20000, ki=2000, kd=0, min_duty=200,
                 max_duty=1000, failsafe_duty=1000, boot_duty=600,
                 slew_permille_per_tick=20, steps=None):
        _check(0 <= min_duty <= max_duty <= 1000, name + ": need 0 <= min_duty <= max_duty <= 1000")
        _check(0 <= failsafe_duty <= 1000, name + ".failsafe_duty out of range")
        _check(0 <= boot_duty <= 1000, name + ".boot_duty out of range")
        _check(slew_permille_per_tick > 0, name + ".slew_permille_per_tick must be positive")
        self.name = name
        self.setpoint_mc = setpoint_mc
        self.kp = kp
        self.ki = ki
        self.kd = kd
        self.min_duty = min_duty
        self.max_duty = max_duty
        self.failsafe_duty = failsafe_duty
        self.boot_duty = boot_duty
        self.slew = slew_permille_per_tick
        self.steps = steps or ()


class GpioLine:
    def __init__(self, name, ch, direction, pull=PULL_NONE, debounce_ticks=4,
                 initial=0, owned=False):
        _check(direction in (DIR_IN, DIR_OUT), name + ".direction unknown")
        _check(pull in (PULL_NONE, PULL_UP, PULL_DOWN), name + ".pull unknown")
        _check(0 < debounce_ticks < 64, name + ".debounce_ticks out of range")
        self.name = name
        self.ch = ch
        self.direction = direction
        self.pull = pull
        self.debounce_ticks = debounce_ticks
        self.initial = initial
        self.owned = owned  # driven by firmware (e.g. a lock actuator): commands may not write it


class Security:
    """Physical security inputs and the door lock.

    Input channels are active-high after the HAL (a board inverts in its HAL
    if its switch is wired active-low); ``-1`` means not fitted.
    """

    def __init__(self, tamper_ch=-1, lock_ch=-1, lock_sense_ch=-1, door_ch=-1,
                 estop_ch=-1, tamper_action=ACT_POWER_DOWN, lock_timeout_ms=500,
                 debounce_ticks=3):
        self.tamper_ch = tamper_ch
        self.lock_ch = lock_ch  # output: 1 drives the bolt to locked
        self.lock_sense_ch = lock_sense_ch  # input: 1 when the bolt is sensed locked
        self.door_ch = door_ch  # input: 1 when the door is open
        self.estop_ch = estop_ch  # input: 1 while the emergency stop is pressed
        self.tamper_action = tamper_action
        self.lock_timeout_ms = lock_timeout_ms
        self.debounce_ticks = debounce_ticks


class Interlock:
    """One row of the interlock table.

    ``signal`` is a (kind, index) pair resolved against ``metal.core.signals``
    at start-up, e.g. ``(SIG_TEMP, 3)`` or ``(SIG_ESTOP, 0)``.
    """

    def __init__(self, name, signal, cmp, threshold, hysteresis=0, delay_ticks=0,
                 latch=False, action=ACT_NONE, target=-1):
        _check(cmp in (CMP_GE, CMP_LE, CMP_NE), name + ".cmp unknown")
        _check(hysteresis >= 0, name + ".hysteresis must be >= 0")
        _check(0 <= delay_ticks < 0x10000, name + ".delay_ticks out of range")
        _check(ACT_NONE <= action <= ACT_OVERHEAT, name + ".action unknown")
        self.name = name
        self.signal = signal
        self.cmp = cmp
        self.threshold = threshold
        self.hysteresis = hysteresis
        self.delay_ticks = delay_ticks
        self.latch = latch
        self.action = action
        self.target = target  # rail index for ACT_SHED_RAIL


class Limits:
    def __init__(self, tick_us=10000, heartbeat_timeout_ms=2000, stale_ticks=5,
                 overheat_timer_ms=60000, telemetry_every=10, overrun_limit=10,
                 host_lost_action=SAFE_HOLD, serial_budget=256):
        _check(1000 <= tick_us <= 1000000, "limits.tick_us out of range")
        _check(heartbeat_timeout_ms >= 100, "limits.heartbeat_timeout_ms below 100")
        _check(stale_ticks > 0, "limits.stale_ticks must be positive")
        _check(telemetry_every > 0, "limits.telemetry_every must be positive")
        _check(overrun_limit > 0, "limits.overrun_limit must be positive")
        self.tick_us = tick_us
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.stale_ticks = stale_ticks
        self.overheat_timer_ms = overheat_timer_ms
        self.telemetry_every = telemetry_every
        self.overrun_limit = overrun_limit  # consecutive overruns before the loop faults
        self.host_lost_action = host_lost_action
        self.serial_budget = serial_budget  # bytes read and written per tick at most


class BoardConfig:
    def __init__(self, name, fw_version, rails=(), sensors=(), fans=(), zones=(),
                 gpio=(), security=None, interlocks=(), limits=None):
        self.name = name
        self.fw_version = fw_version
        self.rails = rails
        self.sensors = sensors
        self.fans = fans
        self.zones = zones
        self.gpio = gpio
        self.security = security or Security()
        self.interlocks = interlocks
        self.limits = limits or Limits()
        for i in range(len(rails)):
            p = rails[i].parent
            _check(-1 <= p < i, rails[i].name + ".parent must name an earlier rail")
        for s in sensors:
            _check(0 <= s.zone < len(zones), s.name + ".zone out of range")
        for f in fans:
            _check(0 <= f.zone < len(zones), f.name + ".zone out of range")
        _check(len(sensors) <= 30 and len(rails) <= 30 and len(gpio) <= 30,
               "at most 30 sensors, rails and gpio lines (bitmask words)")
        _check(len(interlocks) <= 30, "at most 30 interlocks (bitmask words)")
