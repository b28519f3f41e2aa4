"""boards/rp2040 (Raspberry Pi Pico): pin map and BoardConfig on CPython, the HAL on the
MicroPython VMs (fake ``machine``), and the firmware running on both."""

from __future__ import annotations

import ast
import sys

import pytest

import mpvm as harness
from .halcheck import check_result, run_hal_check
from drivers.fake_hal import FakeHal
from metal.boards.rp2040 import board
from metal.boards.rp2040.board import N_GPIO, PINS, PinMap, make_config, used_gpios
from metal.core.config import (
    ACT_FANS_MAX,
    ACT_LOCKOUT,
    ACT_OVERHEAT,
    ACT_POWER_DOWN,
    BoardConfig,
    DIR_IN,
    DIR_OUT,
    SENSOR_NTC,
    SENSOR_TMP117,
)
from metal.core.describe import build_parts
from metal.core.firmware import Firmware

PICO_GPIOS = set(range(0, 23)) | {25, 26, 27, 28}  # on the Pico's header (25: the LED)
I2C0_SDA = {0, 4, 8, 12, 16, 20}
I2C0_SCL = {1, 5, 9, 13, 17, 21}


def test_board_module_is_plain_data():
    """board.py must import on CPython: no machine, rp2 or other board-only module."""
    tree = ast.parse(open(board.__file__, encoding="utf-8").read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported == {"metal"}, imported
    assert "machine" not in sys.modules


def test_identity_and_counts():
    c = make_config()
    assert isinstance(c, BoardConfig)
    assert (c.name, c.fw_version) == ("rp2040", "0.1.0")
    assert [z.name for z in c.zones] == ["cpu", "chassis"]
    assert [(s.name, s.kind) for s in c.sensors] == [
        ("cpu", SENSOR_NTC), ("inlet", SENSOR_NTC), ("psu", SENSOR_NTC), ("board", SENSOR_TMP117)]
    assert [f.name for f in c.fans] == ["cpu_fan", "chassis_fan0", "chassis_fan1"]
    assert [r.name for r in c.rails] == ["p12v_main", "p5v", "p3v3"]
    assert [r.parent for r in c.rails] == [-1, 0, 1]
    assert c.limits.tick_us == 10000


def test_every_channel_has_a_pin():
    c = make_config()
    for s in c.sensors:
        table = PINS.adc if s.kind == SENSOR_NTC else PINS.i2c_addr
        assert 0 <= s.ch < len(table), s.name
    for f in c.fans:
        assert 0 <= f.pwm_ch < len(PINS.pwm) and 0 <= f.tach_ch < len(PINS.tach), f.name
    assert sorted(f.pwm_ch for f in c.fans) == list(range(len(PINS.pwm)))
    for r in c.rails:
        assert 0 <= r.ch < len(PINS.rail_en) == len(PINS.rail_pg), r.name


def test_no_current_monitors_so_no_overcurrent_limits():
    # the image's mv/ma hold READ_ERROR on this board: an overcurrent limit would be a lie.
    assert all(r.overcurrent_ma == 0 for r in make_config().rails)


def test_gpio_lines_and_security_come_from_the_pin_map():
    c = make_config()
    assert len(c.gpio) == N_GPIO
    for i, line in enumerate(c.gpio):
        d = PINS.digital[i]
        assert (line.name, line.ch, line.direction, line.pull, line.initial) == (
            d.name, i, d.direction, d.pull, d.initial)
    sec = c.security
    chans = {"tamper": sec.tamper_ch, "lock": sec.lock_ch, "lock_sense": sec.lock_sense_ch,
             "door": sec.door_ch, "estop": sec.estop_ch}
    for name, ch in chans.items():
        assert ch >= N_GPIO, f"{name} must not be reachable by GPIO commands"
        d = PINS.digital[ch]
        assert d.name == name
        assert d.direction == (DIR_OUT if name == "lock" else DIR_IN), name
    assert PINS.digital[sec.lock_sense_ch].invert  # sense switch shorts to GND when locked
    # normally-closed contacts to GND: a cut wire reads open/pressed (pull-up, not inverted)
    for ch in (sec.tamper_ch, sec.door_ch, sec.estop_ch):
        assert not PINS.digital[ch].invert
    assert PINS.digital[1].name == "bmc_reset_n" and PINS.digital[1].initial == 1


def test_pin_map_fits_the_pico():
    used = used_gpios(PINS)
    assert len(used) == len(set(used)), sorted(g for g in used if used.count(g) > 1)
    assert set(used) <= PICO_GPIOS
    assert set(PINS.adc) <= {26, 27, 28}  # ADC0..2
    assert PINS.i2c_id == 0 and PINS.i2c_sda in I2C0_SDA and PINS.i2c_scl in I2C0_SCL
    # each fan needs its own PWM channel: (slice, A/B) = ((gpio >> 1) & 7, gpio & 1)
    chans = [((g >> 1) & 7, g & 1) for g in PINS.pwm]
    assert len(set(chans)) == len(chans)
    assert 0 not in used and 1 not in used  # GP0/GP1 stay free for the optional host UART
    assert PINS.digital[0].gpio == 25  # the on-board LED
    assert 0 < PINS.wdt_timeout_ms <= 8388  # the RP2040 watchdog's maximum


def test_uart_host_link_pins_count_as_used():
    p = PinMap()
    p.uart = (0, 0, 1, 115200)
    assert {0, 1} <= set(used_gpios(p))


def test_interlock_table():
    c = make_config()
    names = [il.name for il in c.interlocks]
    assert names == ([s.name + "_crit" for s in c.sensors] + [f.name + "_stall" for f in c.fans]
                     + [r.name + "_fault" for r in c.rails] + ["estop"])
    by_name = {il.name: il for il in c.interlocks}
    assert by_name["cpu_crit"].action == ACT_OVERHEAT
    assert by_name["cpu_crit"].threshold == c.sensors[0].crit_mc
    assert by_name["cpu_fan_stall"].action == ACT_FANS_MAX
    assert by_name["p5v_fault"].action == ACT_POWER_DOWN and by_name["p5v_fault"].latch
    assert by_name["estop"].action == ACT_LOCKOUT and by_name["estop"].latch


def test_firmware_runs_with_this_config():
    c = make_config()
    hal = FakeHal()
    for ch in range(len(c.rails)):
        hal.mv[ch] = hal.ma[ch] = -0x3FFFFFFF  # READ_ERROR, as the real HAL reports
    fw = Firmware(c, hal, 1234, "e6605838832a1f2c", reset_cause=board.RESET_EXTERNAL)
    t = 5_000_000
    for _ in range(30):
        fw.loop.tick(t)
        t += c.limits.tick_us
    assert fw.loop.ticks == 30 and fw.loop.fault == 0
    assert hal.feeds == 30
    assert len(build_parts(c)) >= 1
    assert fw.power.read_errors > 0  # no monitors: reported as read errors, never as faults
    assert all(st == 0 for st in fw.power.state)  # RAIL_OFF: nothing asked them on


def test_reset_codes_are_distinct():
    codes = [board.RESET_POWER_ON, board.RESET_COMMANDED, board.RESET_WATCHDOG,
             board.RESET_EXTERNAL, board.RESET_WAKE, board.RESET_OTHER]
    assert codes == list(range(6))
    assert (board.RESET_POWER_ON, board.RESET_COMMANDED) == (0, 1)  # as the sim board


@pytest.mark.parametrize("vm", [pytest.param(v, marks=pytest.mark.micropython) for v in harness.VMS])
def test_hal_on_micropython(vm, tmp_path):
    passed = check_result(run_hal_check(vm, "rp2040", tmp_path))
    for name in ("rails_off", "fans_full_at_boot", "tach_wraps", "in_lock_sense", "adc_raw",
                 "i2c_no_data", "i2c_bus_error", "break_in_at_boundary",
                 "break_in_not_mid_frame", "break_in_after_silence", "maintenance_feeds_wdt",
                 "maintenance_timer_id", "uart_pins", "hal_is_machine_hal", "firmware_ticks"):
        assert name in passed, name
