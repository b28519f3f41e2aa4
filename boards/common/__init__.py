# metal: portable
# (this package and board.py are plain data; machine_hal and board_main import machine)
"""Code shared by the real boards (boards/rp2040, boards/esp32); not a board.

``board`` (plain data every board.py builds on: reset codes, DigitalPin and
pin-map helpers; importable anywhere), ``machine_hal`` (MachineHal: the HAL
over ``machine`` that each board's hal.py subclasses; on a board only) and
``board_main`` (the boot sequence each board's main.py runs; on a board only).
Nothing is imported here. scripts/flash.sh installs this package with every
board that imports it; it has no main.py, so it cannot be flashed by itself.
"""
