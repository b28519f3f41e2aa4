"""The Pico's firmware entry: build the HAL and the config, run the loop.

The board's ``/main.py`` (written by scripts/flash.sh) is::

    from metal.boards.rp2040.main import main
    main([])

Boot and exit paths::

    reset --> Rp2040Hal(PINS): rails off, fans full, pins and IRQs set up
          --> Firmware(config, hal, boot_id, uid, reset_cause)
          --> Ctrl-C off (USB-CDC link: 0x03 is data), watchdog armed
          --> loop.run_forever()
                |
                |-- BreakIn (host sent "\\r\\x03" at a frame boundary) or
                |   KeyboardInterrupt (Ctrl-C on the USB REPL while the host
                |   link is a UART)
                |     --> maintenance: Ctrl-C back on, fans full, a timer
                |         feeds the watchdog; return to the REPL (mpremote's
                |         "\\r\\x01" that follows opens the raw REPL)
                |
                +-- any other exception
                      --> traceback on the console, fans full, machine.reset()

Rails in maintenance keep the state they had: flashing the controller of a
running machine should not power it off. Nothing supervises them until the
next reset, so ``flash.sh`` ends with one.

Reset cause (EV_BOOT value, board.RESET_*): ``machine.reset_cause()`` mapped
to board-neutral codes. The RP2040 reports its own ``machine.reset()`` as a
watchdog reset, so whoever resets on purpose first writes the cause into the
marker file ``/metal-reboot``: the HAL's ``reboot()`` (REBOOT command,
RESET_COMMANDED) and scripts/flash.sh (RESET_EXTERNAL); main.py reads and
removes it at boot.
"""

import binascii
import os
import sys

import machine
import micropython

from metal.boards.rp2040.board import (
    PINS,
    RESET_COMMANDED,
    RESET_EXTERNAL,
    RESET_OTHER,
    RESET_POWER_ON,
    RESET_WAKE,
    RESET_WATCHDOG,
    make_config,
)
from metal.boards.rp2040.hal import REBOOT_MARKER, BreakIn, Rp2040Hal
from metal.core.firmware import Firmware


def take_marker(path):
    """The reset cause a marker file holds (then removed), or -1 without one."""
    try:
        with open(path) as f:
            text = f.read()
        os.remove(path)
    except OSError:
        return -1
    try:
        return int(text)
    except ValueError:
        return RESET_OTHER


def reset_cause():
    """EV_BOOT value for this boot (board.RESET_*)."""
    marked = take_marker(REBOOT_MARKER)
    if marked >= 0:
        return marked
    c = machine.reset_cause()
    for name, code in (("PWRON_RESET", RESET_POWER_ON), ("WDT_RESET", RESET_WATCHDOG),
                       ("HARD_RESET", RESET_EXTERNAL), ("SOFT_RESET", RESET_EXTERNAL),
                       ("DEEPSLEEP_RESET", RESET_WAKE)):
        if c == getattr(machine, name, None):
            return code
    return RESET_OTHER


def fold30(data, acc=0):
    """Fold bytes into a 30-bit int without ever leaving the small-int range."""
    for b in data:
        acc = (((acc & 0x3FFFFF) << 8) | b) ^ (acc >> 22)
    return acc & 0x3FFFFFFF


def boot_id():
    """Random per boot (os.urandom), mixed with the chip id so two boards with
    a weak entropy source still differ."""
    return fold30(os.urandom(8), fold30(machine.unique_id()))


def uid():
    return binascii.hexlify(machine.unique_id()).decode()


def main(argv=None):
    micropython.alloc_emergency_exception_buf(128)
    pins = PINS
    hal = Rp2040Hal(pins)
    try:
        fw = Firmware(make_config(pins), hal, boot_id(), uid(), reset_cause=reset_cause())
    except Exception:
        hal.fail_safe()
        raise  # to the REPL: nothing runs, the watchdog is not armed
    stdio = pins.uart is None
    if stdio:
        micropython.kbd_intr(-1)
    hal.start_watchdog()
    try:
        fw.loop.run_forever()
    except (BreakIn, KeyboardInterrupt):
        micropython.kbd_intr(3)
        hal.enter_maintenance()
        sys.stdout.write("\r\nmetal: firmware stopped for maintenance (fans full, rails held); "
                         "reset to restart it\r\n")
        return 0
    except Exception as e:
        micropython.kbd_intr(3)
        hal.fail_safe()
        sys.print_exception(e)
        machine.reset()
    return 1
