"""The real boards' boot sequence: build the HAL and the config, run the loop.

A board's main.py (the module scripts/flash.sh's ``/main.py`` imports) calls
``run(HalClass, PINS, make_config)``. Boot and exit paths::

    reset --> safe_boot() says why to skip? --> message, return to the REPL:
          |                                    nothing configured, no watchdog
          --> HalClass(pins): rails off, fans full, pins and IRQs set up
          --> Firmware(make_config(pins), hal, boot_id, uid, reset_cause)
          --> Ctrl-C off (stdio link: 0x03 is data), watchdog armed
          --> loop.run_forever()
                |
                |-- BreakIn (host sent "\\r\\x03" at a frame boundary) or
                |   KeyboardInterrupt (Ctrl-C on the REPL while the host
                |   link is another UART)
                |     --> maintenance: Ctrl-C back on, fans full, a timer
                |         feeds the watchdog; return to the REPL (mpremote's
                |         "\\r\\x01" that follows opens the raw REPL)
                |
                +-- any other exception
                      --> traceback on the console, fans full, machine.reset()

Rails in maintenance keep the state they had: flashing the controller of a
running machine should not power it off. Nothing supervises them until the
next reset, so ``flash.sh`` ends with one.

Reset cause (EV_BOOT value, common/board.RESET_*): ``machine.reset_cause()``
mapped to board-neutral codes. No port tells a deliberate reset apart (the
RP2040 reports its own ``machine.reset()`` as a watchdog reset, the ESP32
every ``machine.reset()`` as a software reset), so whoever resets on purpose
first writes the cause into the marker file ``/metal-reboot``: the HAL's
``reboot()`` (REBOOT command, RESET_COMMANDED) and scripts/flash.sh
(RESET_EXTERNAL); ``reset_cause()`` reads and removes it at boot.
"""

import binascii
import os
import sys

import machine
import micropython

from metal.boards.common.board import (
    RESET_EXTERNAL,
    RESET_OTHER,
    RESET_POWER_ON,
    RESET_WAKE,
    RESET_WATCHDOG,
)
from metal.boards.common.machine_hal import REBOOT_MARKER, BreakIn
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
    """EV_BOOT value for this boot (common/board.RESET_*)."""
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


def run(hal_class, pins, make_config, safe_boot=None):
    """Boot the firmware on ``hal_class(pins)`` (see the module docstring).

    ``safe_boot``: None, or a function called first that returns why to skip
    the firmware (a str, e.g. "BOOT button held") or None to boot it.
    Returns 0 after a safe boot or a maintenance break-in; after a crash the
    board resets (1 is returned only where machine.reset() comes back).
    """
    micropython.alloc_emergency_exception_buf(128)
    if safe_boot is not None:
        why = safe_boot()
        if why is not None:
            sys.stdout.write("metal: safe boot (" + why + "): firmware not started\r\n")
            return 0
    hal = hal_class(pins)
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
