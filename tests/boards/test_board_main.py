"""boards/common/board_main.py (the real boards' boot sequence) and the boards' main.py,
run under the MicroPython unix VM on the fake ``machine`` of tests/boards/fake_machine.py.

Unix VM only: this is about control flow, not allocation, and the WASM port has no
os.urandom (boot_id). ``micropython`` is replaced by a recorder inside board_main so the
Ctrl-C switching can be checked, and the reboot marker lives in a temp directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import mpvm as harness

from .halcheck import HERE, SHARED

pytestmark = pytest.mark.micropython

# MicroPython. {marker} is filled in.
PRELUDE = '''
import sys
import fake_machine as M
sys.modules["machine"] = M
from metal.boards.common import board_main as BM
from metal.boards.common import machine_hal as H


class FakeMicropython:
    def __init__(self):
        self.kbd = []
        self.ebuf = 0

    def kbd_intr(self, c):
        self.kbd.append(c)

    def alloc_emergency_exception_buf(self, n):
        self.ebuf = n


MP = FakeMicropython()
BM.micropython = MP
BM.REBOOT_MARKER = H.REBOOT_MARKER = "{marker}"


RealPin = M.Pin


class BootHigh(RealPin):
    """GPIO0 reads high when created: the ESP32's BOOT button is not held."""

    def __init__(self, gpio, mode=-1, pull=None, value=None):
        RealPin.__init__(self, gpio, mode, pull, value)
        if gpio == 0:
            self.level = 1


def ok(name, cond, detail=""):
    if not cond:
        raise AssertionError(name + " " + str(detail))
    print("ok", name)
'''

# The whole boot over the stdio link: the host's "\r\x03" at the start of the stream
# breaks in, main() returns 0 in maintenance.
MAIN_SCRIPT = '''
from metal.boards.{board} import main as BOARD_MAIN
from metal.boards.{board}.board import PINS

if "{board}" == "esp32":
    M.Pin = BootHigh
rc = BOARD_MAIN.main([])
M.Pin = RealPin
ok("main_returns_0", rc == 0, rc)
ok("ctrl_c_off_then_on", MP.kbd == [-1, 3], MP.kbd)
ok("emergency_buf", MP.ebuf == 128)
ok("watchdog_armed", M.WDT.last is not None and M.WDT.last.timeout == PINS.wdt_timeout_ms)
ok("maintenance_timer", M.Timer.last is not None and M.Timer.last.period == H.MAINT_FEED_MS
   and M.Timer.last.id == (0 if "{board}" == "esp32" else -1), M.Timer.last.id)
ok("fans_full", all(M.PWM.by_gpio[g].duty == 65535 for g in PINS.pwm))
ok("rails_held_off", all(M.Pin.by_gpio[g].level == 0 for g in PINS.rail_en))
ok("no_reset", M.resets == 0)
print("done")
'''

# The shared pieces one by one, on the Pico's HAL with a fake UART as the host link.
PARTS_SCRIPT = '''
import os
from metal.boards.common.board import (
    RESET_COMMANDED, RESET_EXTERNAL, RESET_OTHER, RESET_POWER_ON, RESET_WAKE, RESET_WATCHDOG)
from metal.boards.rp2040.board import PinMap, make_config
from metal.boards.rp2040.hal import Rp2040Hal
from metal.boards.esp32 import main as ESP32_MAIN

MARK = BM.REBOOT_MARKER

# -- reset cause ----------------------------------------------------------------------------
real_cause = M.reset_cause
for name, want in (("PWRON_RESET", RESET_POWER_ON), ("WDT_RESET", RESET_WATCHDOG),
                   ("HARD_RESET", RESET_EXTERNAL), ("SOFT_RESET", RESET_EXTERNAL),
                   ("DEEPSLEEP_RESET", RESET_WAKE)):
    value = getattr(M, name)
    M.reset_cause = lambda: value
    ok("cause_" + name, BM.reset_cause() == want, BM.reset_cause())
M.reset_cause = lambda: 99
ok("cause_unknown", BM.reset_cause() == RESET_OTHER)
M.reset_cause = real_cause

pins = PinMap()
pins.uart = (1, 0, 1, 115200)
hal = Rp2040Hal(pins)
hal.reboot()  # the REBOOT command: marker first, then machine.reset()
ok("reboot_resets", M.resets == 1)
ok("reboot_marker", open(MARK).read() == str(RESET_COMMANDED))
ok("cause_commanded", BM.reset_cause() == RESET_COMMANDED)
ok("marker_taken", BM.take_marker(MARK) == -1)  # read once, then removed
ok("cause_back_to_machine", BM.reset_cause() == RESET_POWER_ON)
with open(MARK, "w") as f:
    f.write("3")  # what scripts/flash.sh leaves before its reset
ok("cause_flash", BM.reset_cause() == RESET_EXTERNAL)
with open(MARK, "w") as f:
    f.write("garbage")
ok("cause_bad_marker", BM.reset_cause() == RESET_OTHER)

# -- identity ---------------------------------------------------------------------------------
ok("uid", BM.uid() == "e6605838832a1f2c", BM.uid())
ok("fold30_small", BM.fold30(b"\\xff" * 64) < 2 ** 30 and BM.fold30(b"") == 0)
ok("fold30_mixes", BM.fold30(b"\\x01\\x02") != BM.fold30(b"\\x02\\x01"))
ids = [BM.boot_id() for _ in range(4)]
ok("boot_id", all(0 <= i < 2 ** 30 for i in ids) and len(set(ids)) > 1, ids)


# -- run(): exit paths --------------------------------------------------------------------------
class ScriptedHal(Rp2040Hal):
    """Raises ``stop`` from the host link on its 5th read."""
    last = None
    stop = None

    def __init__(self, pins):
        Rp2040Hal.__init__(self, pins)
        self.reads = 0
        ScriptedHal.last = self

    def serial_read(self, buf, start, max_n):
        self.reads += 1
        if self.reads >= 5:
            raise ScriptedHal.stop
        return 0


def fresh_pins():
    p = PinMap()
    p.uart = (1, 0, 1, 115200)  # a UART link: Ctrl-C stays on
    return p


def reset_fakes():
    MP.kbd = []
    M.WDT.last = None
    M.Timer.last = None
    M.resets = 0


reset_fakes()
ScriptedHal.stop = KeyboardInterrupt()  # Ctrl-C on the REPL while the host link is a UART
rc = BM.run(ScriptedHal, fresh_pins(), make_config)
ok("interrupt_maintenance", rc == 0 and MP.kbd == [3] and M.Timer.last is not None
   and M.WDT.last.feeds > 0 and M.resets == 0, (rc, MP.kbd))

reset_fakes()
ScriptedHal.stop = H.BreakIn()
ok("break_in_maintenance", BM.run(ScriptedHal, fresh_pins(), make_config) == 0
   and M.Timer.last is not None)

reset_fakes()
ScriptedHal.stop = ValueError("boom")
p = fresh_pins()
rc = BM.run(ScriptedHal, p, make_config)
ok("crash_resets", rc == 1 and M.resets == 1 and MP.kbd == [3] and M.Timer.last is None, (rc, M.resets))
ok("crash_fans_full", all(M.PWM.by_gpio[g].duty == 65535 for g in p.pwm))


def bad_config(pins):
    raise ValueError("board config: broken")


reset_fakes()
p = fresh_pins()
try:
    BM.run(ScriptedHal, p, bad_config)
    raised = False
except ValueError:
    raised = True
ok("config_error_raises", raised and M.WDT.last is None and M.resets == 0 and MP.kbd == [])
ok("config_error_fans_full", all(M.PWM.by_gpio[g].writes == 1 and M.PWM.by_gpio[g].duty == 65535
                                 for g in p.pwm))

# -- the ESP32's safe boot ------------------------------------------------------------------------
reset_fakes()
M.PWM.by_gpio.clear()
ok("safe_boot_held", ESP32_MAIN.safe_boot() == "BOOT button held")  # GPIO0 reads low
ok("safe_boot_main", ESP32_MAIN.main([]) == 0 and not M.PWM.by_gpio and M.WDT.last is None)
M.Pin = BootHigh
ok("safe_boot_released", ESP32_MAIN.safe_boot() is None)
M.Pin = RealPin
print("done")
'''


def _run(tmp: Path, script: str, stdin: bytes | None = None) -> harness.Result:
    reason = harness.missing("unix")
    if reason:
        harness.unavailable(reason)
    root = harness.stage_tree(tmp / "stage", boards=["rp2040", "esp32", *SHARED])
    shutil.copyfile(HERE / "fake_machine.py", root / "fake_machine.py")
    text = PRELUDE.replace("{marker}", str(tmp / "metal-reboot")) + script
    r = harness.run("unix", text, timeout=60, heapsize="2M", stage=root, stdin=stdin).check()
    assert r.lines[-1] == "done", r.describe()
    return r


def _passed(r: harness.Result) -> list[str]:
    return [ln[3:] for ln in r.lines if ln.startswith("ok ")]


@pytest.mark.parametrize("board", ["rp2040", "esp32"])
def test_main_breaks_into_maintenance_over_stdio(tmp_path, board):
    r = _run(tmp_path, MAIN_SCRIPT.replace("{board}", board), stdin=b"\r\x03\r\x01")
    assert "metal: firmware stopped for maintenance" in r.stdout
    assert len(_passed(r)) == 8, r.describe()


def test_boot_sequence_parts(tmp_path):
    r = _run(tmp_path, PARTS_SCRIPT)
    passed = _passed(r)
    for name in ("cause_WDT_RESET", "cause_commanded", "marker_taken", "cause_flash",
                 "cause_bad_marker", "uid", "boot_id", "interrupt_maintenance",
                 "break_in_maintenance", "crash_resets", "config_error_raises",
                 "safe_boot_main", "safe_boot_released"):
        assert name in passed, name
    assert "metal: safe boot (BOOT button held): firmware not started" in r.stdout
    assert "ValueError: boom" in r.stdout  # the crash's traceback, on the console
    assert not (tmp_path / "metal-reboot").exists()
