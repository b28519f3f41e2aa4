"""The ESP32 DevKit's firmware entry: the shared boot sequence on Esp32Hal.

The board's ``/main.py`` (written by scripts/flash.sh) is::

    from metal.boards.esp32.main import main
    main([])

common/board_main.py has the boot and exit paths and the reset-cause rules.
What the ESP32 adds: a safe boot -- the BOOT button (GPIO0) held low when
main.py starts returns to the REPL with nothing configured and no watchdog.
The host link is UART0 (Ctrl-C is turned off while the loop runs, "\\r\\x03"
breaks in). The ESP32 reports every ``machine.reset()`` alike (a software
reset): the /metal-reboot marker tells the deliberate ones apart.
"""

import machine

from metal.boards.common.board_main import run
from metal.boards.esp32.board import PINS, SAFE_BOOT_GPIO, make_config
from metal.boards.esp32.hal import Esp32Hal


def safe_boot():
    """Why to skip the firmware: the BOOT button held at start-up (press it
    right after releasing EN); None to boot it."""
    if machine.Pin(SAFE_BOOT_GPIO, machine.Pin.IN, machine.Pin.PULL_UP).value() == 0:
        return "BOOT button held"
    return None


def main(argv=None):
    return run(Esp32Hal, PINS, make_config, safe_boot=safe_boot)
