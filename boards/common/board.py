# metal: portable
"""Plain data shared by the real boards' board.py: reset codes, pin-map helpers, config policy.

No ``machine`` import, so every board.py stays importable on CPython (host,
tests) and on any MicroPython VM. A board's pin map (``PinMap``) keeps its own
GPIO numbers; what is common is how a digital channel is described
(``DigitalPin``), which GPIOs a map claims (``used_gpios``) and how the GPIO
lines of the BoardConfig are derived from it (``gpio_lines``); and how a
BoardConfig is assembled from a board's tables with the real boards'
interlock policy (``board_config``).

Reset codes (the EV_BOOT value, board-neutral; 0 and 1 mean what they mean
on the sim board): common/board_main.py maps ``machine.reset_cause()`` onto
them and reads RESET_COMMANDED / RESET_EXTERNAL back from the reboot marker
that common/machine_hal.py and scripts/flash.sh write before a deliberate
reset.
"""

from metal.core.config import BoardConfig, GpioLine, PULL_NONE
from metal.core.interlocks.defaults import FAN_WATCH_STALLED, default_interlocks

RESET_POWER_ON = 0
RESET_COMMANDED = 1  # the firmware rebooted itself (REBOOT command)
RESET_WATCHDOG = 2
RESET_EXTERNAL = 3  # from outside the firmware: RUN pin / EN button, machine.reset() at the REPL
RESET_WAKE = 4  # wake from deep sleep
RESET_OTHER = 5

# Interlock policy of the real boards (the standard set of core/interlocks/defaults.py).
# Their fan rows watch the fan state, so the delay must outlast a spin-up.
CRIT_HYSTERESIS_MC = 3000
CRIT_DELAY_TICKS = 3
# A stall must last this long before a real board's fan row trips: a real
# tachometer can miss a window's pulses now and then (a noisy or loose tach
# wire); a fan that really stopped stays stalled.
FAN_STALL_DELAY_MS = 3000


class DigitalPin:
    """One digital channel: its GPIO and how the HAL sets it up.

    ``invert``: the HAL reports (and drives) the opposite of the pin level, so
    every channel is active-high above the HAL. ``initial`` is the level an
    output is driven to when the HAL creates it (before the drivers run).
    """

    def __init__(self, name, gpio, direction, pull=PULL_NONE, invert=False, initial=0):
        self.name = name
        self.gpio = gpio
        self.direction = direction
        self.pull = pull
        self.invert = invert
        self.initial = initial


def used_gpios(pins):
    """Every GPIO number ``pins`` claims, in a list (start-up and tests only)."""
    out = list(pins.adc) + [pins.i2c_sda, pins.i2c_scl] + list(pins.pwm) + list(pins.tach)
    out += list(pins.rail_en) + list(pins.rail_pg)
    for d in pins.digital:
        out.append(d.gpio)
    if pins.uart is not None:
        out += [pins.uart[1], pins.uart[2]]
    return out


def gpio_lines(pins, n_gpio):
    """The BoardConfig GPIO lines: digital channels 0..n_gpio-1 of ``pins``
    (the security inputs and the lock follow them and are not GPIO lines)."""
    lines = []
    for ch in range(n_gpio):
        d = pins.digital[ch]
        lines.append(GpioLine(d.name, ch, d.direction, pull=d.pull, initial=d.initial))
    return tuple(lines)


def board_config(name, fw_version, pins, n_gpio, zones, sensors, fans, rails, security, limits):
    """A real board's BoardConfig (start-up only): GPIO lines from ``pins`` (see
    ``gpio_lines``) and the standard interlock set, each fan's row tripping once
    it has been stalled for FAN_STALL_DELAY_MS (300 ticks at 10 ms): a fan its
    zone switched off (duty 0, state OFF) is no fault; everything else is the
    board's own."""
    return BoardConfig(
        name,
        fw_version,
        rails=rails,
        sensors=sensors,
        fans=fans,
        zones=zones,
        gpio=gpio_lines(pins, n_gpio),
        security=security,
        interlocks=default_interlocks(sensors, fans, rails, CRIT_HYSTERESIS_MC, CRIT_DELAY_TICKS,
                                      fan_watch=FAN_WATCH_STALLED,
                                      fan_delay_ticks=FAN_STALL_DELAY_MS * 1000 // limits.tick_us),
        limits=limits,
    )
