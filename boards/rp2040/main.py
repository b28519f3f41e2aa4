"""The Pico's firmware entry: the shared boot sequence on Rp2040Hal.

The board's ``/main.py`` (written by scripts/flash.sh) is::

    from metal.boards.rp2040.main import main
    main([])

common/board_main.py has the boot and exit paths and the reset-cause rules.
On the Pico the host link is USB-CDC (Ctrl-C is turned off while the loop
runs, "\\r\\x03" breaks in); with ``PINS.uart`` set, Ctrl-C on the USB REPL
stops the loop instead. The RP2040 reports its own ``machine.reset()`` as a
watchdog reset: the /metal-reboot marker tells the deliberate ones apart.
"""

from metal.boards.common.board_main import run
from metal.boards.rp2040.board import PINS, make_config
from metal.boards.rp2040.hal import Rp2040Hal


def main(argv=None):
    return run(Rp2040Hal, PINS, make_config)
