"""boards/esp32 (ESP32 DevKit): pin map and BoardConfig on CPython, the HAL on the
MicroPython VMs (fake ``machine``), and the firmware running on both."""

from __future__ import annotations

import ast
import sys

import pytest

import mpvm as harness
from drivers.fake_hal import FakeHal
from metal.boards.esp32 import board
from metal.boards.esp32.board import (
    ADC_SATURATED_UV,
    FLASH_GPIOS,
    INPUT_ONLY_GPIOS,
    N_GPIO,
    PINS,
    SAFE_BOOT_GPIO,
    adc_uv_to_raw,
    make_config,
    used_gpios,
)
from metal.core.config import (
    ACT_LOCKOUT,
    ACT_OVERHEAT,
    BoardConfig,
    DIR_IN,
    DIR_OUT,
    PULL_NONE,
    SENSOR_LM75,
    SENSOR_NTC,
    SENSOR_TMP117,
)
from metal.core.drivers import ntc
from metal.core.firmware import Firmware

from .halcheck import check_result, run_hal_check

ESP32_GPIOS = set(range(0, 40)) - {20, 24, 28, 29, 30, 31}  # what the chip bonds out
ADC1_GPIOS = {32, 33, 34, 35, 36, 37, 38, 39}
STRAPPING = {0, 2, 5, 12, 15}
UART0 = {1, 3}


def test_board_module_is_plain_data():
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
    assert (c.name, c.fw_version) == ("esp32", "0.1.0")
    assert [(s.name, s.kind) for s in c.sensors] == [
        ("cpu", SENSOR_NTC), ("inlet", SENSOR_NTC), ("board", SENSOR_TMP117), ("psu", SENSOR_LM75)]
    assert [f.name for f in c.fans] == ["cpu_fan", "chassis_fan"]
    assert [r.name for r in c.rails] == ["p12v_main", "p5v", "p3v3"]
    assert all(r.overcurrent_ma == 0 for r in c.rails)  # no current monitors fitted
    assert c.limits.tick_us == 10000
    # UART0 at 115200 moves ~115 bytes per 10 ms tick into a 128-byte FIFO
    assert c.limits.serial_budget <= 115


def test_every_channel_has_a_pin():
    c = make_config()
    for s in c.sensors:
        table = PINS.adc if s.kind == SENSOR_NTC else PINS.i2c_addr
        assert 0 <= s.ch < len(table), s.name
    assert sorted(s.ch for s in c.sensors if s.kind != SENSOR_NTC) == [0, 1]
    assert len(set(PINS.i2c_addr)) == len(PINS.i2c_addr)  # TMP117 0x48, LM75 0x49
    for f in c.fans:
        assert 0 <= f.pwm_ch < len(PINS.pwm) and 0 <= f.tach_ch < len(PINS.tach), f.name
    for r in c.rails:
        assert 0 <= r.ch < len(PINS.rail_en) == len(PINS.rail_pg), r.name


def test_gpio_lines_and_security_come_from_the_pin_map():
    c = make_config()
    assert len(c.gpio) == N_GPIO
    for i, line in enumerate(c.gpio):
        d = PINS.digital[i]
        assert (line.name, line.ch, line.direction, line.pull) == (d.name, i, d.direction, d.pull)
    sec = c.security
    for name, ch in (("tamper", sec.tamper_ch), ("lock", sec.lock_ch),
                     ("lock_sense", sec.lock_sense_ch), ("door", sec.door_ch),
                     ("estop", sec.estop_ch)):
        assert ch >= N_GPIO and PINS.digital[ch].name == name
        assert PINS.digital[ch].direction == (DIR_OUT if name == "lock" else DIR_IN)
    assert PINS.digital[sec.lock_sense_ch].invert
    assert PINS.digital[1].gpio == SAFE_BOOT_GPIO == 0  # the BOOT button, also a GPIO input


def test_pin_map_fits_the_esp32_devkit():
    used = used_gpios(PINS)
    assert len(used) == len(set(used)), sorted(g for g in used if used.count(g) > 1)
    assert set(used) <= ESP32_GPIOS
    assert not set(used) & set(FLASH_GPIOS)  # the module's SPI flash
    assert not set(used) & UART0  # the REPL / host link
    assert set(PINS.adc) <= ADC1_GPIOS  # ADC2 is unusable while Wi-Fi runs
    # input-only pins: never an output, never a pull (the hardware has none)
    outputs = set(PINS.pwm) | set(PINS.rail_en) | {d.gpio for d in PINS.digital if d.direction == DIR_OUT}
    assert not outputs & set(INPUT_ONLY_GPIOS)
    pulled = set(PINS.tach) | set(PINS.rail_pg) | {
        d.gpio for d in PINS.digital if d.direction == DIR_IN and d.pull != PULL_NONE}
    assert not pulled & set(INPUT_ONLY_GPIOS)
    # strapping pins: only the BOOT button (input) and the LED (output, low at boot)
    assert set(used) & STRAPPING == {0, 2}


def test_adc_conversion_matches_the_ntc_table():
    assert adc_uv_to_raw(0) == 0
    assert adc_uv_to_raw(-1) == 65535  # nonsense is an open circuit, not a temperature
    for uv in (100000, 825000, 1650000, 2475000, ADC_SATURATED_UV - 1):
        exact = uv * 65535 / 3300000
        assert abs(adc_uv_to_raw(uv) - exact) <= exact * 0.001 + 1, uv
    assert adc_uv_to_raw(ADC_SATURATED_UV) == 65535
    assert ntc.classify(adc_uv_to_raw(ADC_SATURATED_UV)) == ntc.NTC_OPEN
    # 10k NTC at 25 degC against a 10k pull-up: half the supply
    assert abs(ntc.adc_to_mc(adc_uv_to_raw(1650000)) - 25000) < 200
    # the largest intermediate stays a small int on a 32-bit VM
    assert (ADC_SATURATED_UV - 1) * 5 < 2**30
    # and the saturation point is cold enough not to matter in a chassis
    assert ntc.adc_to_mc(adc_uv_to_raw(ADC_SATURATED_UV - 1)) < -10000


def test_interlock_table():
    c = make_config()
    by_name = {il.name: il for il in c.interlocks}
    assert len(c.interlocks) == len(c.sensors) + len(c.fans) + len(c.rails) + 1
    assert by_name["psu_crit"].action == ACT_OVERHEAT
    assert by_name["estop"].action == ACT_LOCKOUT and by_name["estop"].latch


def test_firmware_runs_with_this_config():
    c = make_config()
    hal = FakeHal()
    for ch in range(len(c.rails)):
        hal.mv[ch] = hal.ma[ch] = -0x3FFFFFFF  # READ_ERROR, as the real HAL reports
    fw = Firmware(c, hal, 99, "246f28aabbcc", reset_cause=board.RESET_POWER_ON)
    t = 1_000_000
    for _ in range(30):
        fw.loop.tick(t)
        t += c.limits.tick_us
    assert fw.loop.ticks == 30 and fw.loop.fault == 0 and hal.feeds == 30


@pytest.mark.parametrize("vm", [pytest.param(v, marks=pytest.mark.micropython) for v in harness.VMS])
def test_hal_on_micropython(vm, tmp_path):
    passed = check_result(run_hal_check(vm, "esp32", tmp_path))
    for name in ("rails_off", "fans_full_at_boot", "tach_hard_irq", "adc_attenuation",
                 "adc_uv_half", "adc_saturated_open", "in_lock_sense", "i2c_negative_raw",
                 "break_in_at_boundary", "maintenance_fans_full", "maintenance_timer_id",
                 "uart_pins", "hal_is_machine_hal", "firmware_ticks"):
        assert name in passed, name
