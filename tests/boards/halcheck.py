"""Run a real board's HAL (boards/<board>/hal.py over boards/common/machine_hal.py) under
the MicroPython VMs, on the fake ``machine`` of tests/boards/fake_machine.py, and check what
it does to the pins.

``run_hal_check(vm, board, tmp)`` stages metal/core + metal/boards/{<board>,common} +
fake_machine,
runs HAL_SCRIPT there and returns the ``mpvm.Result``; the script prints ``ok <check>``
per check and ``alloc <bytes> <error>`` for the tick-path allocation measurement.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mpvm as harness

HERE = Path(__file__).resolve().parent

HAL_CLASS = {"rp2040": "Rp2040Hal", "esp32": "Esp32Hal"}
SHARED = ["common"]  # boards/ packages the real boards import (flash.sh installs them too)

# MicroPython. {board} and {hal_class} are filled in; the rest is literal.
HAL_SCRIPT = '''
import sys
import fake_machine as M
sys.modules["machine"] = M
from metal.boards.{board}.board import PINS, make_config
from metal.boards.{board} import hal as B
from metal.boards.common import machine_hal as H
from metal.core.hal import READ_ERROR
from metal.core.firmware import Firmware

BOARD = "{board}"
pins = PINS
pins.uart = (1, 0, 1, 115200)  # a fake UART as the host link (GPIO 0/1: free on both maps)
hal = B.{hal_class}(pins)
u = hal.link._rx
P = M.Pin.by_gpio


def ok(name, cond, detail=""):
    if not cond:
        raise AssertionError(name + " " + str(detail))
    print("ok", name)


ok("hal_is_machine_hal", isinstance(hal, H.MachineHal))

# -- start-up state ---------------------------------------------------------------------
ok("rails_off", all(P[g].mode == M.Pin.OUT and P[g].level == 0 for g in pins.rail_en))
ok("pg_pulled_up", all(P[g].pull == M.Pin.PULL_UP for g in pins.rail_pg))
ok("fans_full_at_boot", all(M.PWM.by_gpio[g].duty == 65535 for g in pins.pwm))
ok("pwm_25khz", all(M.PWM.by_gpio[g].freq == 25000 for g in pins.pwm))
ok("tach_hard_irq", all(P[g].hard and P[g].trigger == M.Pin.IRQ_FALLING
                        and P[g].pull == M.Pin.PULL_UP for g in pins.tach))
for i in range(len(pins.digital)):
    d = pins.digital[i]
    p = P[d.gpio]
    if d.direction == 1:
        ok("out_initial_" + d.name, p.mode == M.Pin.OUT and p.level == (d.initial ^ int(d.invert)))
    else:
        ok("in_mode_" + d.name, p.mode == M.Pin.IN)

# -- fans -------------------------------------------------------------------------------------
pw = M.PWM.by_gpio[pins.pwm[0]]
hal.pwm_set(0, 500)
ok("pwm_half", pw.duty == 32767, pw.duty)
w = pw.writes
hal.pwm_set(0, 500)
ok("pwm_write_on_change_only", pw.writes == w)
hal.pwm_set(0, 1200)
ok("pwm_clamped", pw.duty == 65535)
hal.pwm_set(0, -5)
ok("pwm_zero", pw.duty == 0)
tp = P[pins.tach[1]]
for _ in range(37):
    tp.handler(tp)
ok("tach_count", hal.tach_pulses(1) == 37)
ok("tach_since_last", hal.tach_pulses(1) == 0)
hal._tach_count[1] = H.TACH_MASK - 1
hal._tach_last[1] = H.TACH_MASK - 1
for _ in range(3):
    tp.handler(tp)
ok("tach_wraps", hal.tach_pulses(1) == 3 and hal._tach_count[1] == 1)
ok("tach_bad_channel", hal.tach_pulses(99) == 0)

# -- digital ------------------------------------------------------------------------------------
for i in range(len(pins.digital)):
    d = pins.digital[i]
    p = P[d.gpio]
    if d.direction == 1:
        hal.digital_out(i, 1)
        hi = p.level
        hal.digital_out(i, 0)
        ok("out_" + d.name, (hi, p.level) == ((1, 0) if not d.invert else (0, 1)))
    else:
        p.level = 0
        hal.sample(0)
        lo = (hal.din_mask >> i) & 1
        p.level = 1
        hal.sample(0)
        hi = (hal.din_mask >> i) & 1
        ok("in_" + d.name, (lo, hi) == ((0, 1) if not d.invert else (1, 0)))
        before = p.level
        hal.digital_out(i, 0)  # an input is never driven
        ok("in_not_driven_" + d.name, p.mode == M.Pin.IN and p.level == before)
ok("din_mask_width", hal.din_mask < (1 << len(pins.digital)))

# -- analog and I2C -------------------------------------------------------------------------------
a = M.ADC.by_gpio[pins.adc[0]]
if BOARD == "esp32":
    ok("adc_attenuation", a.atten == M.ADC.ATTN_11DB)
    a.uv = 1650000  # half the 3.3 V supply
    hal.sample(0)
    ok("adc_uv_half", hal.adc[0] == 1650000 * 5 // 252, hal.adc[0])
    a.uv = 3000000  # saturated: reads as an open thermistor
    hal.sample(0)
    ok("adc_saturated_open", hal.adc[0] == 65535)
else:
    a.raw = 32768
    hal.sample(0)
    ok("adc_raw", hal.adc[0] == 32768)
ok("adc_image_size", len(hal.adc) == len(pins.adc))
bus = M.I2C.last
ok("i2c_pins", bus.sda.gpio == pins.i2c_sda and bus.scl.gpio == pins.i2c_scl and bus.freq == 400000)
addr = pins.i2c_addr[0]

# the samples above asked devices the fake bus had no registers for (bus errors): give
# every device a register and forget those errors
n_i2c = len(pins.i2c_addr)
for k in range(n_i2c):
    bus.regs[pins.i2c_addr[k]] = bytearray(b"\\x0c\\x80")
    hal._i2c_skip[k] = 0


def i2c_sample():
    hal.sample(0)
    return hal.i2c_temp[0]


bus.regs[addr] = bytearray(b"\\x0c\\x80")  # 25.0 degC on a TMP117
ok("i2c_register", i2c_sample() == 0x0C80)
bus.regs[addr] = bytearray(b"\\xff\\x80")  # negative temperatures come raw, 16 bits
ok("i2c_negative_raw", i2c_sample() == 0xFF80)
bus.regs[addr] = bytearray(b"\\x80\\x00")  # TMP117 power-on value: no conversion yet
ok("i2c_no_data", i2c_sample() == READ_ERROR)
errs = hal.i2c_errors
bus.fail = True
ok("i2c_bus_error", i2c_sample() == READ_ERROR and hal.i2c_errors == errs + n_i2c)
bus.fail = False
bus.regs[addr] = bytearray(b"\\x0c\\x80")
skipped = [i2c_sample() for _ in range(H.I2C_RETRY_READS)]
ok("i2c_backoff", skipped == [READ_ERROR] * H.I2C_RETRY_READS and hal.i2c_errors == errs + n_i2c
   and i2c_sample() == 0x0C80)

# -- rails -----------------------------------------------------------------------------------------
hal.rail_enable(1, True)
ok("rail_enable", P[pins.rail_en[1]].level == 1)
hal.rail_enable(1, False)
ok("rail_disable", P[pins.rail_en[1]].level == 0)
P[pins.rail_pg[2]].level = 1
hal.sample(0)
ok("rail_pg", (hal.pg_mask >> 2) & 1 == 1)
P[pins.rail_pg[2]].level = 0
hal.sample(0)
ok("rail_pg_low", (hal.pg_mask >> 2) & 1 == 0)
ok("rail_not_measured", hal.mv[0] == READ_ERROR and hal.ma[0] == READ_ERROR
   and len(hal.mv) == len(pins.rail_en))

# -- watchdog, maintenance ----------------------------------------------------------------------------
hal.watchdog_feed()  # not armed yet: nothing to feed
ok("wdt_lazy", M.WDT.last is None)
hal.start_watchdog()
hal.watchdog_feed()
ok("wdt_armed", M.WDT.last.timeout == pins.wdt_timeout_ms and M.WDT.last.feeds == 1)

# -- serial ------------------------------------------------------------------------------------------
buf = bytearray(64)
u.feed(b"\\x11\\x22\\x00\\x33")
ok("serial_read", hal.serial_read(buf, 2, 64) == 4 and buf[2:6] == b"\\x11\\x22\\x00\\x33")
ok("serial_read_empty", hal.serial_read(buf, 0, 64) == 0)
n = hal.serial_write(b"\\x01\\x02\\x03\\x04\\x05", 1, 3)
ok("serial_write", n == 3 and u.tx[:u.tx_len] == b"\\x02\\x03\\x04")
u.writable = False
ok("serial_write_blocked", hal.serial_write(b"abc", 0, 3) == 0)
u.writable = True
ok("uart_link_no_break_in", not hal.link.detect_break)
if BOARD == "esp32":  # GPIO numbers, as the ESP32 port's UART takes them
    ok("uart_pins", u.pins == (0, 1) and u.id == 1 and u.baudrate == 115200, u.pins)
else:
    ok("uart_pins", u.pins[0].gpio == 0 and u.pins[1].gpio == 1 and u.baudrate == 115200)
hal.link.detect_break = True  # the stdio link's setting
hal.sample(1000000)
u.feed(b"\\x11\\r\\x03\\x00")  # 0D 03 inside a frame: data
ok("break_in_not_mid_frame", hal.serial_read(buf, 0, 64) == 4)
u.feed(b"\\r\\x03\\r\\x01")  # right after the 0x00 that ended the last read
try:
    hal.serial_read(buf, 0, 64)
    broke = False
except H.BreakIn:
    broke = True
ok("break_in_at_boundary", broke and u.rx_pos == 2)  # "\\r\\x01" left for the REPL
hal.sample(1005000)
u.feed(b"\\x11\\x12")
hal.serial_read(buf, 0, 64)
hal.sample(1040000)  # 35 ms of silence: the next byte starts a frame
u.feed(b"\\r\\x03")
try:
    hal.serial_read(buf, 0, 64)
    broke = False
except H.BreakIn:
    broke = True
ok("break_in_after_silence", broke)
hal.pwm_set(1, 200)
hal.enter_maintenance()
ok("maintenance_fans_full", all(M.PWM.by_gpio[g].duty == 65535 for g in pins.pwm))
feeds = M.WDT.last.feeds
M.Timer.last.callback(M.Timer.last)
ok("maintenance_feeds_wdt", M.WDT.last.feeds == feeds + 1 and M.Timer.last.period > 0)
# the ESP32 port has no virtual timers: hardware timer 0 there, a virtual one on the RP2040
ok("maintenance_timer_id", M.Timer.last.id == (0 if BOARD == "esp32" else -1), M.Timer.last.id)

# -- the tick path allocates nothing ------------------------------------------------------------------
hal.link.detect_break = True
u.feed(b"\\x11\\x22\\x00\\x33\\x44\\x00")
out = bytearray(b"0123456789" * 4)


def tick():
    hal.sample(2000000)
    hal.digital_out(0, 1)
    hal.pwm_set(0, 300)
    hal.pwm_set(0, 700)
    tp.handler(tp)  # a tachometer edge: the hard-IRQ handler
    hal.tach_pulses(1)
    hal.rail_enable(0, 1)
    hal.watchdog_feed()
    u.rx_pos = 0
    hal.serial_read(buf, 0, 64)
    u.tx_len = 0
    hal.serial_write(out, 0, 40)


# 60 rounds: on the unix port, polling a Python stream object costs ~1 ms per poll
nbytes, err = measure_allocs(tick, 60)
print("alloc", nbytes, err)

# -- and the firmware runs on it (config + HAL + core) ---------------------------------------------------
gc.enable()
fw = Firmware(make_config(pins), hal, 12345, "uid-test", reset_cause=0)
for i in range(50):
    fw.loop.tick(3000000 + i * 10000)
ok("firmware_ticks", fw.loop.ticks == 50)
ok("firmware_fed_wdt", M.WDT.last.feeds > feeds + 1)
print("done")
'''


def stage(tmp: Path, board: str) -> Path:
    root = harness.stage_tree(tmp, boards=[board, *SHARED])
    shutil.copyfile(HERE / "fake_machine.py", root / "fake_machine.py")
    return root


def run_hal_check(vm: str, board: str, tmp: Path) -> harness.Result:
    reason = harness.missing(vm)
    if reason:
        harness.unavailable(reason)
    script = HAL_SCRIPT.replace("{board}", board).replace("{hal_class}", HAL_CLASS[board])
    return harness.run(vm, script, timeout=120, heapsize="2M", stage=stage(tmp, board),
                       prelude=True)


def check_result(r: harness.Result) -> list[str]:
    """The checks that passed; fails with the VM's output unless the script completed
    and the tick path allocated nothing."""
    r.check()
    assert r.lines[-1] == "done", r.describe()
    alloc = [ln for ln in r.lines if ln.startswith("alloc ")]
    assert alloc == ["alloc 0 None"], r.describe()
    return [ln[3:] for ln in r.lines if ln.startswith("ok ")]
