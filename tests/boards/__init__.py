"""Tests of the real boards (boards/rp2040, boards/esp32): their BoardConfig and pin map on
CPython, their HAL under the MicroPython VMs on a fake ``machine`` (fake_machine.py,
halcheck.py)."""
