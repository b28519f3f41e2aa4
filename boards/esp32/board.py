"""ESP32 DevKit (ESP32-WROOM-32, DevKitC layout) controller: pin map and BoardConfig.

Plain data, no ``machine`` import: the host and the tests read it on
CPython; ``hal.py`` builds its ``machine`` objects from ``PINS`` and
``make_config()`` builds the BoardConfig from the same tables.

Pin map (ESP32 GPIO numbers; "ch" is the HAL channel the drivers use)::

    GPIO1  GPIO3   UART0 TX/RX through the DevKit's USB-UART bridge: the REPL
                   and, by default, the host link (sys.stdin/stdout, 115200)
    GPIO0          digital ch 1  boot_btn_n      in, pull-up (the BOOT button);
                   held low when main.py starts: safe boot, firmware not run
    GPIO2          digital ch 0  led_status      out (the DevKit LED on most clones)
    GPIO21 GPIO22  I2C0 SDA/SCL 400 kHz: i2c ch 0 = TMP117 at 0x48 (board),
                                         i2c ch 1 = LM75 at 0x49 (psu)
    GPIO32 GPIO33  adc ch 0 cpu, ch 1 inlet: ADC1, 11 dB attenuation,
                   10k B3950 NTC with a 10k pull-up to 3V3
    GPIO25 GPIO16  fan 0 cpu_fan       LEDC PWM out / tach in (pull-up)
    GPIO26 GPIO17  fan 1 chassis_fan   LEDC PWM out / tach in (pull-up)
    GPIO4  GPIO14  rail 0 p12v_main    enable out / power-good in (pull-up)
    GPIO13 GPIO19  rail 1 p5v          enable out / power-good in (pull-up)
    GPIO23 GPIO27  rail 2 p3v3         enable out / power-good in (pull-up)
    GPIO34         digital ch 2  tamper switch   in, 1 = case open
    GPIO18         digital ch 3  door lock       out, 1 = drive the bolt locked
    GPIO39 (VN)    digital ch 4  lock sense      in, inverted (shorts to GND when locked)
    GPIO35         digital ch 5  door switch     in, 1 = door open
    GPIO36 (VP)    digital ch 6  e-stop          in, 1 = pressed
    GPIO5 12 15    unused: strapping pins (12 must be low at boot, 5/15 glitch)
    GPIO6..11      unusable: the module's SPI flash

GPIO34..39 are input-only and have no internal pulls: the tamper, door,
e-stop and lock-sense contacts need external 10k pull-ups to 3V3. As on the
Pico, tamper/door/e-stop are normally-closed contacts to GND, so a cut wire
reads as open/pressed. Rail enables need external pull-downs (rails stay off
while the ESP32 is in reset); power-good is open-drain, active high.

ADC: the ESP32 ADC is not ratiometric and not linear, so the HAL reads the
factory-calibrated voltage (``read_uv``) and converts it to the 16-bit
fraction of the 3.3 V divider supply that drivers/ntc.py expects. Above
ADC_SATURATED_UV the 11 dB range is saturated and the reading is no longer a
temperature: it is reported as full scale, which the sensor driver calls an
open thermistor (below about -14 °C: failsafe, the safe side).

Not fitted, honestly reported: rail voltage/current monitors (READ_ERROR,
telemetry shows 0, no overcurrent configured).

Interlocks as on the Pico (core/interlocks/defaults.py): <sensor>_crit
(ACT_OVERHEAT), <fan>_stall (stalled for 3 s: ACT_FANS_MAX),
<rail>_fault (latched ACT_POWER_DOWN), estop (latched ACT_LOCKOUT).
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
    SENSOR_LM75,
    SENSOR_NTC,
    SENSOR_TMP117,
    Zone,
)

NAME = "esp32"
FW_VERSION = "0.1.0"

# zones
Z_CPU = 0
Z_CHASSIS = 1

# digital channels
CH_LED = 0
CH_BOOT_BTN_N = 1
N_GPIO = 2  # digital channels 0..N_GPIO-1 are GPIO lines
CH_TAMPER = 2
CH_LOCK = 3
CH_LOCK_SENSE = 4
CH_DOOR = 5
CH_ESTOP = 6

SAFE_BOOT_GPIO = 0  # BOOT button: held low at start-up skips the firmware

# ADC conversion (see the module docstring)
ADC_SUPPLY_UV = 3300000  # the NTC dividers' supply
ADC_SATURATED_UV = 2900000  # top of the trustworthy 11 dB range

TICK_US = 10000
FAN_SPINUP_MS = 2000


class PinMap:
    """Every GPIO the board uses, indexed by HAL channel (see the module docstring)."""

    def __init__(self):
        self.adc = (32, 33)  # adc ch -> GPIO (ADC1 only: ADC2 is unusable with Wi-Fi on)
        self.i2c_id = 0
        self.i2c_sda = 21
        self.i2c_scl = 22
        self.i2c_freq = 400000
        self.i2c_addr = (0x48, 0x49)  # i2c ch -> 7-bit address
        self.pwm = (25, 26)  # pwm ch -> GPIO (LEDC)
        self.pwm_freq = 25000  # Intel 4-wire fan spec: 21..28 kHz
        self.pwm_invert = False
        self.tach = (16, 17)  # tach ch -> GPIO
        self.rail_en = (4, 13, 23)  # rail ch -> enable GPIO
        self.rail_pg = (14, 19, 27)  # rail ch -> power-good GPIO
        self.digital = (
            DigitalPin("led_status", 2, DIR_OUT),
            DigitalPin("boot_btn_n", 0, DIR_IN, pull=PULL_UP),
            DigitalPin("tamper", 34, DIR_IN),  # input-only pins: external pull-ups
            DigitalPin("lock", 18, DIR_OUT),
            DigitalPin("lock_sense", 39, DIR_IN, invert=True),
            DigitalPin("door", 35, DIR_IN),
            DigitalPin("estop", 36, DIR_IN),
        )
        # Host link: None = UART0 through sys.stdin/stdout (shared with the REPL);
        # (uart id, tx GPIO, rx GPIO, baud) = a machine.UART (free two GPIOs first).
        self.uart = None
        self.wdt_timeout_ms = 2000


PINS = PinMap()

# Pins the ESP32 cannot drive or pull (input-only) and pins it must not use.
INPUT_ONLY_GPIOS = (34, 35, 36, 37, 38, 39)
FLASH_GPIOS = (6, 7, 8, 9, 10, 11)


def adc_uv_to_raw(uv):
    """Calibrated µV -> the 16-bit ratiometric reading drivers/ntc.py expects.

    65535 / 3.3 V = 5 / 252 per µV within 0.1 %; uv * 5 stays below 2**30.
    Saturated (or negative) readings are full scale: an open circuit.
    """
    if uv < 0 or uv >= ADC_SATURATED_UV:
        return 65535
    return uv * 5 // 252


def _zones():
    return (
        Zone("cpu", setpoint_mc=60000),
        Zone("chassis", setpoint_mc=40000),
    )


def _sensors():
    return (
        Sensor("cpu", SENSOR_NTC, 0, Z_CPU, warn_mc=85000, crit_mc=95000),
        Sensor("inlet", SENSOR_NTC, 1, Z_CHASSIS, warn_mc=40000, crit_mc=50000),
        Sensor("board", SENSOR_TMP117, 0, Z_CHASSIS, warn_mc=65000, crit_mc=75000),
        # LM75 datasheet range ends at 125 °C; keep max inside it.
        Sensor("psu", SENSOR_LM75, 1, Z_CHASSIS, warn_mc=70000, crit_mc=80000, max_mc=125000),
    )


def _fans():
    return (
        Fan("cpu_fan", 0, 0, Z_CPU, max_rpm=12000, pulses_per_rev=2, spinup_ms=FAN_SPINUP_MS),
        Fan("chassis_fan", 1, 1, Z_CHASSIS, max_rpm=5000, stall_rpm=200, pulses_per_rev=2,
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
    # serial_budget: UART0 at 115200 baud moves ~115 bytes per 10 ms tick and
    # the REPL UART has no TX buffer beyond the 128-byte hardware FIFO, so at
    # most 64 bytes a tick keeps every write inside the FIFO (no blocking).
    return Limits(tick_us=TICK_US, heartbeat_timeout_ms=2000, stale_ticks=5,
                  overheat_timer_ms=60000, telemetry_every=10, host_lost_action=SAFE_HOLD,
                  serial_budget=64)


def make_config(pins=None):
    """A fresh BoardConfig for this board (the GPIO lines come from ``pins``)."""
    return board_config(NAME, FW_VERSION, PINS if pins is None else pins, N_GPIO,
                        zones=_zones(), sensors=_sensors(), fans=_fans(), rails=_rails(),
                        security=_security(), limits=_limits())
