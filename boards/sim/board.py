"""The reference simulated board: what its firmware sees.

Every test and benchmark runs against this layout, so it is deliberately a
small but complete server chassis: three thermal zones, eight temperature
sensors of all three kinds, four fans, a six-rail power tree, sixteen GPIO
lines and the full set of physical-security inputs. The physics behind the
channels lives in ``plant.py``; ``hal.py`` maps the channels onto it.

Channel map (the ``ch`` numbers of the HAL's input image and methods)::

    ADC  (adc[ch])         0 cpu0_die   1 cpu1_die   2 dimm_a   3 dimm_b
                           4 io_hub     5 psu_hot      (all 10k/B3950 NTC)
    I2C  (i2c_temp[ch])    0 cpu_vrm (TMP117)   1 io_board (LM75)
    PWM / TACH             0 cpu_fan0  1 cpu_fan1  2 mem_fan  3 io_fan
                           (pwm ch n and tach ch n belong to fan n)
    RAIL (mv/ma[ch], pg_mask bit ch, rail_enable)
                           0 p12v_main  1 p5v  2 p3v3  3 p1v8  4 p1v0_core
                           5 p12v_fans  (rail ch n is rail n)
    DIGITAL (din_mask bit ch, digital_out)
                           0..7   GPIO outputs (led_status .. aux_out_1)
                           8..15  GPIO inputs  (gpio_in_0 .. power_btn_n)
                           16 tamper switch   in   1 = case open
                           17 door lock       out  1 = drive the bolt locked
                           18 lock sense      in   1 = bolt sensed locked
                           19 door switch     in   1 = door open
                           20 e-stop          in   1 = pressed

The lock actuator and its sense line sit on their own channels (16..20) and
are not GPIO lines, so no GPIO command can reach them.

Power tree (parent -> child; a child only comes up while its parent is good)::

    p12v_main ─┬─ p5v ── p3v3 ── p1v8 ── p1v0_core
               └─ p12v_fans

Default interlock set (core/interlocks/defaults.py), in table order (row index = position)::

    0..7    <sensor>_crit    SIG_TEMP >= crit, hyst 3 °C, 3 ticks, ACT_OVERHEAT
    8..11   <fan>_stall      SIG_FAN_STALLED >= 1,                  ACT_FANS_MAX
    12..17  <rail>_fault     SIG_RAIL_FAULT >= 1, latched,          ACT_POWER_DOWN
    18      estop            G_ESTOP >= 1, latched,                 ACT_LOCKOUT

The fan rows watch the fan-stalled flag, not the fan state: the state codes
(OK 0, STALLED 1, SPINUP 2, OFF 3) have no order in which one comparison
isolates STALLED, while the flag is 1 exactly in that state. The fan driver
already judges a stall over a full measuring window after the spin-up grace,
so the rows trip without a further delay and release (not latched) as soon
as the fan turns again.
"""

from metal.core.config import (
    ACT_POWER_DOWN,
    BoardConfig,
    DIR_IN,
    DIR_OUT,
    Fan,
    GpioLine,
    Limits,
    PULL_DOWN,
    PULL_NONE,
    PULL_UP,
    Rail,
    SAFE_HOLD,
    Security,
    Sensor,
    SENSOR_LM75,
    SENSOR_NTC,
    SENSOR_TMP117,
    Zone,
)
from metal.core.interlocks.defaults import FAN_WATCH_STALLED, default_interlocks

# zones
Z_CPU = 0
Z_MEMORY = 1
Z_IO = 2

# security channels (digital namespace, after the 16 GPIO lines)
CH_TAMPER = 16
CH_LOCK = 17
CH_LOCK_SENSE = 18
CH_DOOR = 19
CH_ESTOP = 20
N_DIGITAL = 21

TICK_US = 10000
FAN_SPINUP_MS = 2000
CRIT_HYSTERESIS_MC = 3000
CRIT_DELAY_TICKS = 3


def _zones():
    # Setpoints sit a little below where the plant settles at half airflow, so
    # the controllers run the fans in the middle of their range.
    return (
        Zone("cpu", setpoint_mc=60000),
        Zone("memory", setpoint_mc=45000),
        Zone("io", setpoint_mc=45000),
    )


def _sensors():
    return (
        Sensor("cpu0_die", SENSOR_NTC, 0, Z_CPU, warn_mc=85000, crit_mc=95000),
        Sensor("cpu1_die", SENSOR_NTC, 1, Z_CPU, warn_mc=85000, crit_mc=95000),
        Sensor("cpu_vrm", SENSOR_TMP117, 0, Z_CPU, warn_mc=85000, crit_mc=95000),
        Sensor("dimm_a", SENSOR_NTC, 2, Z_MEMORY, warn_mc=75000, crit_mc=85000),
        Sensor("dimm_b", SENSOR_NTC, 3, Z_MEMORY, warn_mc=75000, crit_mc=85000),
        Sensor("io_hub", SENSOR_NTC, 4, Z_IO, warn_mc=70000, crit_mc=80000),
        Sensor("psu_hot", SENSOR_NTC, 5, Z_IO, warn_mc=70000, crit_mc=80000),
        # LM75 datasheet range ends at 125 °C; keep max inside it.
        Sensor("io_board", SENSOR_LM75, 1, Z_IO, warn_mc=65000, crit_mc=75000,
               max_mc=125000),
    )


def _fans():
    # Two 40 mm fans on the CPU heatsink, 80 mm chassis fans for the others.
    return (
        Fan("cpu_fan0", 0, 0, Z_CPU, max_rpm=12000, pulses_per_rev=2,
            spinup_ms=FAN_SPINUP_MS),
        Fan("cpu_fan1", 1, 1, Z_CPU, max_rpm=12000, pulses_per_rev=2,
            spinup_ms=FAN_SPINUP_MS),
        Fan("mem_fan", 2, 2, Z_MEMORY, max_rpm=5000, stall_rpm=200, pulses_per_rev=2,
            spinup_ms=FAN_SPINUP_MS),
        Fan("io_fan", 3, 3, Z_IO, max_rpm=5000, stall_rpm=200, pulses_per_rev=2,
            spinup_ms=FAN_SPINUP_MS),
    )


def _rails():
    # The plant's soft-start reaches power-good 10..20 ms after enable (see
    # plant.py), comfortably inside every timeout here.
    return (
        Rail("p12v_main", 0, 12000, parent=-1, pg_timeout_ms=100, overcurrent_ma=20000,
             off_delay_ms=20),
        Rail("p5v", 1, 5000, parent=0, pg_timeout_ms=50, overcurrent_ma=8000),
        Rail("p3v3", 2, 3300, parent=1, pg_timeout_ms=50, overcurrent_ma=6000),
        Rail("p1v8", 3, 1800, parent=2, pg_timeout_ms=50, overcurrent_ma=10000),
        Rail("p1v0_core", 4, 1000, parent=3, pg_timeout_ms=50, overcurrent_ma=30000),
        Rail("p12v_fans", 5, 12000, parent=0, pg_timeout_ms=50, overcurrent_ma=5000),
    )


def _gpio():
    return (
        GpioLine("led_status", 0, DIR_OUT),
        GpioLine("led_fault", 1, DIR_OUT),
        GpioLine("bmc_reset_n", 2, DIR_OUT, initial=1),  # active low: start out of reset
        GpioLine("host_power_btn_n", 3, DIR_OUT, initial=1),
        GpioLine("uart_sel", 4, DIR_OUT),
        GpioLine("i2c_mux_reset_n", 5, DIR_OUT, initial=1),
        GpioLine("aux_out_0", 6, DIR_OUT),
        GpioLine("aux_out_1", 7, DIR_OUT),
        GpioLine("gpio_in_0", 8, DIR_IN, pull=PULL_UP),
        GpioLine("gpio_in_1", 9, DIR_IN, pull=PULL_UP),
        GpioLine("gpio_in_2", 10, DIR_IN, pull=PULL_DOWN),
        GpioLine("gpio_in_3", 11, DIR_IN, pull=PULL_DOWN),
        GpioLine("psu_present_n", 12, DIR_IN, pull=PULL_UP),
        GpioLine("fan_board_present_n", 13, DIR_IN, pull=PULL_UP),
        GpioLine("aux_in", 14, DIR_IN, pull=PULL_NONE),
        GpioLine("power_btn_n", 15, DIR_IN, pull=PULL_UP, debounce_ticks=5),
    )


def _security():
    return Security(tamper_ch=CH_TAMPER, lock_ch=CH_LOCK, lock_sense_ch=CH_LOCK_SENSE,
                    door_ch=CH_DOOR, estop_ch=CH_ESTOP, tamper_action=ACT_POWER_DOWN,
                    lock_timeout_ms=500, debounce_ticks=3)


def _limits():
    return Limits(tick_us=TICK_US, heartbeat_timeout_ms=2000, stale_ticks=5,
                  overheat_timer_ms=60000, telemetry_every=10, host_lost_action=SAFE_HOLD)


def make_config():
    """A fresh BoardConfig for the sim board (tests may mutate their copy)."""
    sensors = _sensors()
    fans = _fans()
    rails = _rails()
    return BoardConfig(
        "sim",
        "0.1.0",
        rails=rails,
        sensors=sensors,
        fans=fans,
        zones=_zones(),
        gpio=_gpio(),
        security=_security(),
        interlocks=default_interlocks(sensors, fans, rails, CRIT_HYSTERESIS_MC,
                                      CRIT_DELAY_TICKS, fan_watch=FAN_WATCH_STALLED),
        limits=_limits(),
    )


CONFIG = make_config()
