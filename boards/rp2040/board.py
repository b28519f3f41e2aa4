"""Raspberry Pi Pico (RP2040) controller: pin map and BoardConfig.

This module is plain data: it imports no ``machine``, so the host and the
tests can read it on CPython. ``hal.py`` builds its ``machine`` objects from
``PINS``; ``make_config()`` builds the BoardConfig the firmware runs, from
the same tables, so a pin and its channel are written down once.

Pin map (Pico GPIO numbers; "ch" is the HAL channel the drivers use)::

    GP0  GP1    UART0 TX/RX: reserved for an optional host UART (PINS.uart);
                by default the host link is the USB-CDC serial port
    GP2         digital ch 1  bmc_reset_n        out, starts high (not in reset)
    GP3         digital ch 2  power_btn_n        in, pull-up (button to GND)
    GP4  GP5    I2C0 SDA/SCL 400 kHz: i2c ch 0 = TMP117 at 0x48 (board)
    GP6  GP7    fan 0 cpu_fan        PWM out (slice 3A) / tach in (pull-up)
    GP8  GP9    fan 1 chassis_fan0   PWM out (slice 4A) / tach in (pull-up)
    GP10 GP11   fan 2 chassis_fan1   PWM out (slice 5A) / tach in (pull-up)
    GP12 GP15   rail 0 p12v_main     enable out / power-good in (pull-up)
    GP13 GP16   rail 1 p5v           enable out / power-good in (pull-up)
    GP14 GP17   rail 2 p3v3          enable out / power-good in (pull-up)
    GP18        digital ch 3  tamper switch      in, pull-up, 1 = case open
    GP19        digital ch 6  door switch        in, pull-up, 1 = door open
    GP20        digital ch 7  e-stop             in, pull-up, 1 = pressed
    GP21        digital ch 4  door lock          out, 1 = drive the bolt locked
    GP22        digital ch 5  lock sense         in, pull-up, inverted: the
                                                 switch shorts to GND when locked
    GP25        digital ch 0  led_status         out (the Pico's LED)
    GP26-28     adc ch 0..2   cpu / inlet / psu  10k B3950 NTC, 10k pull-up to
                                                 ADC_VREF (ratiometric)

Wiring assumptions, chosen so a broken wire fails safe:

* tamper, door and e-stop are normally-closed contacts to GND: closed reads
  0, an open contact *or a cut wire* reads 1 (tampered / open / pressed);
* rails: enable outputs need external pull-downs (a rail stays off while the
  RP2040 is in reset); power-good is open-drain, active high;
* fan PWM drives the fan's 25 kHz PWM input directly (``pwm_invert`` for an
  inverting transistor stage); tachometers are open-collector, 2 pulses/rev.

Not fitted on this board, honestly reported: no rail voltage or current
monitors (the image's ``mv``/``ma`` hold READ_ERROR, so telemetry shows 0 and
no overcurrent is configured -- power-good alone protects the rails).

Channel namespaces (as in boards/sim): adc, i2c, pwm/tach (fan n uses pwm ch
n and tach ch n), rail (rail n), digital (GPIO lines first, then security).

Interlocks: the standard set of core/interlocks/defaults.py with the real
boards' policy (common/board.py ``board_config``), in table order
<sensor>_crit (ACT_OVERHEAT), <fan>_stall (stalled for 3 s:
ACT_FANS_MAX), <rail>_fault (latched ACT_POWER_DOWN), estop (latched
ACT_LOCKOUT). The sim board's fan rows trip at once (its stall is exact).
"""

# RESET_* (EV_BOOT reset causes, board-neutral), DigitalPin and used_gpios are shared
# by the real boards and stay importable from here.
from metal.boards.common.board import (
    RESET_COMMANDED,
    RESET_EXTERNAL,
    RESET_OTHER,
    RESET_POWER_ON,
    RESET_WAKE,
    RESET_WATCHDOG,
    DigitalPin,
    board_config,
    used_gpios,
)
from metal.core.config import (
    ACT_POWER_DOWN,
    DIR_IN,
    DIR_OUT,
    Fan,
    Limits,
    PULL_UP,
    Rail,
    SAFE_HOLD,
    Security,
    Sensor,
    SENSOR_NTC,
    SENSOR_TMP117,
    Zone,
)

NAME = "rp2040"
FW_VERSION = "0.1.0"

# zones
Z_CPU = 0
Z_CHASSIS = 1

# digital channels
CH_LED = 0
CH_BMC_RESET_N = 1
CH_POWER_BTN_N = 2
N_GPIO = 3  # digital channels 0..N_GPIO-1 are GPIO lines
CH_TAMPER = 3
CH_LOCK = 4
CH_LOCK_SENSE = 5
CH_DOOR = 6
CH_ESTOP = 7

TICK_US = 10000
FAN_SPINUP_MS = 2000


class PinMap:
    """Every GPIO the board uses, indexed by HAL channel (see the module docstring)."""

    def __init__(self):
        self.adc = (26, 27, 28)  # adc ch -> GPIO (ADC0..2)
        self.i2c_id = 0
        self.i2c_sda = 4
        self.i2c_scl = 5
        self.i2c_freq = 400000
        self.i2c_addr = (0x48,)  # i2c ch -> 7-bit address
        self.pwm = (6, 8, 10)  # pwm ch -> GPIO
        self.pwm_freq = 25000  # Intel 4-wire fan spec: 21..28 kHz
        self.pwm_invert = False
        self.tach = (7, 9, 11)  # tach ch -> GPIO
        self.rail_en = (12, 13, 14)  # rail ch -> enable GPIO
        self.rail_pg = (15, 16, 17)  # rail ch -> power-good GPIO
        self.digital = (
            DigitalPin("led_status", 25, DIR_OUT),
            DigitalPin("bmc_reset_n", 2, DIR_OUT, initial=1),
            DigitalPin("power_btn_n", 3, DIR_IN, pull=PULL_UP),
            DigitalPin("tamper", 18, DIR_IN, pull=PULL_UP),
            DigitalPin("lock", 21, DIR_OUT),
            DigitalPin("lock_sense", 22, DIR_IN, pull=PULL_UP, invert=True),
            DigitalPin("door", 19, DIR_IN, pull=PULL_UP),
            DigitalPin("estop", 20, DIR_IN, pull=PULL_UP),
        )
        # Host link: None = USB-CDC (sys.stdin/stdout, shared with the REPL);
        # (uart id, tx GPIO, rx GPIO, baud) = a machine.UART, REPL stays on USB.
        self.uart = None
        self.wdt_timeout_ms = 2000  # RP2040 maximum: 8388 ms


PINS = PinMap()


def _zones():
    return (
        Zone("cpu", setpoint_mc=60000),
        Zone("chassis", setpoint_mc=40000),
    )


def _sensors():
    return (
        Sensor("cpu", SENSOR_NTC, 0, Z_CPU, warn_mc=85000, crit_mc=95000),
        Sensor("inlet", SENSOR_NTC, 1, Z_CHASSIS, warn_mc=40000, crit_mc=50000),
        Sensor("psu", SENSOR_NTC, 2, Z_CHASSIS, warn_mc=70000, crit_mc=80000),
        Sensor("board", SENSOR_TMP117, 0, Z_CHASSIS, warn_mc=65000, crit_mc=75000),
    )


def _fans():
    return (
        Fan("cpu_fan", 0, 0, Z_CPU, max_rpm=12000, pulses_per_rev=2, spinup_ms=FAN_SPINUP_MS),
        Fan("chassis_fan0", 1, 1, Z_CHASSIS, max_rpm=5000, stall_rpm=200, pulses_per_rev=2,
            spinup_ms=FAN_SPINUP_MS),
        Fan("chassis_fan1", 2, 2, Z_CHASSIS, max_rpm=5000, stall_rpm=200, pulses_per_rev=2,
            spinup_ms=FAN_SPINUP_MS),
    )


def _rails():
    # No current monitors on this board: overcurrent_ma stays 0 (not monitored).
    return (
        Rail("p12v_main", 0, 12000, parent=-1, pg_timeout_ms=100, off_delay_ms=20),
        Rail("p5v", 1, 5000, parent=0, pg_timeout_ms=50),
        Rail("p3v3", 2, 3300, parent=1, pg_timeout_ms=50),
    )


def _security():
    return Security(tamper_ch=CH_TAMPER, lock_ch=CH_LOCK, lock_sense_ch=CH_LOCK_SENSE,
                    door_ch=CH_DOOR, estop_ch=CH_ESTOP, tamper_action=ACT_POWER_DOWN,
                    lock_timeout_ms=500, debounce_ticks=3)


def _limits():
    # serial_budget: the USB-CDC read is one byte per poll (~10 µs each on the
    # M0+), so 128 bytes a tick keeps the link's share of a 10 ms tick small.
    return Limits(tick_us=TICK_US, heartbeat_timeout_ms=2000, stale_ticks=5,
                  overheat_timer_ms=60000, telemetry_every=10, host_lost_action=SAFE_HOLD,
                  serial_budget=128)


def make_config(pins=None):
    """A fresh BoardConfig for this board (the GPIO lines come from ``pins``)."""
    return board_config(NAME, FW_VERSION, PINS if pins is None else pins, N_GPIO,
                        zones=_zones(), sensors=_sensors(), fans=_fans(), rails=_rails(),
                        security=_security(), limits=_limits())
