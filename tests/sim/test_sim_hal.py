"""SimHal: channel mapping, raw conversions, time, serial rings, and the
allocation-free tick on both MicroPython VMs."""

import pytest

from metal.boards.sim.board import CH_DOOR, CH_ESTOP, CH_LOCK, CH_LOCK_SENSE, CH_TAMPER
from metal.boards.sim.hal import ByteRing, SimHal, lm75_raw, tmp117_raw
from metal.boards.sim.plant import Plant
from metal.core.drivers import ntc
from metal.core.hal import READ_ERROR, Hal
from metal.core.proto import (
    FAULT_CLEAR,
    FAULT_ESTOP,
    FAULT_SENSOR_OPEN,
    FAULT_SENSOR_SHORT,
    FAULT_SENSOR_STUCK,
    FAULT_TAMPER,
    R_OK,
    R_UNKNOWN_TARGET,
)

CPU, MEMORY, IO = range(3)


@pytest.fixture
def hal():
    return SimHal()


def sign16(raw):
    return raw - 0x10000 if raw & 0x8000 else raw


def tmp117_to_mc(raw):
    """Datasheet decode: two's complement, 7.8125 m°C per LSB."""
    return sign16(raw) * 78125 // 10000


def lm75_to_mc(raw):
    """Datasheet decode: 1/256 °C per register LSB."""
    return sign16(raw) * 1000 // 256


def test_implements_every_hal_method():
    names = [n for n in vars(Hal) if not n.startswith("_") and callable(getattr(Hal, n))]
    assert len(names) == 15
    for n in names:
        assert getattr(SimHal, n) is not getattr(Hal, n), n


# -- temperature channels ------------------------------------------------------------


@pytest.mark.parametrize("zone_mc", [-30000, 0, 25000, 47300, 60000, 94999, 120000])
def test_ntc_reads_round_trip_through_the_driver_table(hal, zone_mc):
    p = hal.plant
    for z in range(3):
        p.set_zone_temp(z, zone_mc)
    for ch, sensor in ((0, 0), (1, 1), (2, 3), (3, 4), (4, 5), (5, 6)):
        raw = hal.adc_read(ch)
        assert 0 <= raw <= 65535
        assert ntc.classify(raw) == ntc.NTC_OK
        assert abs(ntc.adc_to_mc(raw) - p.sensor_mc(sensor)) <= 100


def test_ntc_hotter_reads_lower(hal):
    p = hal.plant
    p.set_zone_temp(CPU, 40000)
    cold = hal.adc_read(0)
    p.set_zone_temp(CPU, 80000)
    assert hal.adc_read(0) < cold


def test_ntc_open_and_short_read_full_scale_and_zero(hal):
    assert hal.sim_fault(FAULT_SENSOR_OPEN, 0, 0) == R_OK
    assert hal.sim_fault(FAULT_SENSOR_SHORT, 3, 0) == R_OK
    assert hal.adc_read(0) == 65535 and ntc.classify(65535) == ntc.NTC_OPEN
    assert hal.adc_read(2) == 0 and ntc.classify(0) == ntc.NTC_SHORT
    hal.sim_fault(FAULT_CLEAR, -1, 0)
    assert ntc.classify(hal.adc_read(0)) == ntc.NTC_OK


def test_stuck_sensor_reads_its_value(hal):
    hal.sim_fault(FAULT_SENSOR_STUCK, 4, 88000)  # dimm_b on adc 3
    assert abs(ntc.adc_to_mc(hal.adc_read(3)) - 88000) <= 100
    hal.sim_fault(FAULT_SENSOR_STUCK, 2, 99004)  # cpu_vrm on TMP117
    assert tmp117_to_mc(hal.i2c_temp_read(0)) == 99000  # floored to 7.8125 m°C steps


@pytest.mark.parametrize("mc,raw", [
    (25000, 0x0C80),  # datasheet: 25 °C
    (0, 0x0000),
    (7, 0x0000),  # below one LSB (7.8125 m°C) floors to zero
    (8, 0x0001),
    (-1, 0xFFFF),  # floors, like the part's two's complement
    (7812, 0x03E7),  # 999.936 LSB
    (-1000, 0xFF80),  # -1 °C, two's complement
    (-40000, 0xEC00),
    (100000, 0x3200),
    (150000, 0x4B00),
    (200000, 0x4B00),  # clamped to the part's 150 °C
    (-70000, 0xE480),  # clamped to -55 °C
])
def test_tmp117_register_values(mc, raw):
    assert tmp117_raw(mc) == raw


@pytest.mark.parametrize("mc,raw", [
    (125000, 0x7D00),  # LM75B datasheet table: +125 °C
    (25000, 0x1900),
    (125, 0x0020),  # +0.125 °C, one 11-bit LSB
    (0, 0x0000),
    (-125, 0xFFE0),
    (-25000, 0xE700),
    (-55000, 0xC900),
    (130000, 0x7D00),  # clamped to 125 °C
])
def test_lm75_register_values(mc, raw):
    assert lm75_raw(mc) == raw


def test_i2c_conversions_round_trip_within_one_lsb():
    for mc in range(-55000, 150001, 97):
        assert 0 <= mc - tmp117_to_mc(tmp117_raw(mc)) <= 8, mc  # one LSB, both floored
        if mc <= 125000:
            assert 0 <= mc - lm75_to_mc(lm75_raw(mc)) < 125, mc


def test_i2c_registers_decode_through_the_sensor_driver(hal):
    from metal.core.drivers import sensors
    p = hal.plant
    for zone_mc in (-30000, -1000, 0, 25000, 61000, 94999, 120000):
        p.set_zone_temp(CPU, zone_mc)
        p.set_zone_temp(IO, zone_mc)
        vrm = p.sensor_mc(2)
        board = p.sensor_mc(7)
        assert 0 <= vrm - sensors.tmp117_to_mc(hal.i2c_temp_read(0)) < 8
        assert 0 <= board - sensors.lm75_to_mc(hal.i2c_temp_read(1)) < 125


def test_i2c_channels_read_the_plant(hal):
    p = hal.plant
    p.set_zone_temp(CPU, 61000)
    p.set_zone_temp(IO, 43000)
    assert tmp117_to_mc(hal.i2c_temp_read(0)) == 65000  # cpu_vrm: zone + 4 °C
    assert lm75_to_mc(hal.i2c_temp_read(1)) == 43000  # io_board: no offset


def test_i2c_sensor_faults_do_not_answer(hal):
    hal.sim_fault(FAULT_SENSOR_OPEN, 2, 0)
    hal.sim_fault(FAULT_SENSOR_SHORT, 7, 0)
    assert hal.i2c_temp_read(0) == READ_ERROR
    assert hal.i2c_temp_read(1) == READ_ERROR
    hal.sim_fault(FAULT_CLEAR, 7, FAULT_SENSOR_SHORT)
    assert hal.i2c_temp_read(1) != READ_ERROR


def test_unmapped_channels(hal):
    for ch in (-1, 6, 100):
        assert hal.adc_read(ch) == READ_ERROR
        assert hal.rail_mv(ch) == READ_ERROR
        assert hal.rail_ma(ch) == READ_ERROR
        assert hal.rail_power_good(ch) == 0
        assert hal.tach_pulses(ch) == READ_ERROR
        hal.pwm_set(ch, 500)  # ignored, no exception
        hal.rail_enable(ch, 1)
        hal.digital_out(ch + 30, 1)
        assert hal.digital_in(ch + 30) == 0
    assert hal.i2c_temp_read(2) == READ_ERROR


# -- time ----------------------------------------------------------------------------


def test_first_sample_sets_the_reference_only(hal):
    hal.sample(123456)
    assert hal.plant.elapsed_ms == 0
    hal.sample(123456 + 10000)
    assert hal.plant.elapsed_ms == 10


def test_sub_millisecond_remainders_are_carried(hal):
    t = 5000
    hal.sample(t)
    for _ in range(10):
        t += 1500
        hal.sample(t)
    assert hal.plant.elapsed_ms == 15
    for _ in range(3):
        t += 333
        hal.sample(t)
    assert hal.plant.elapsed_ms == 15  # 999 µs: not yet a whole ms
    hal.sample(t + 1)
    assert hal.plant.elapsed_ms == 16


def test_sample_across_the_tick_counter_wrap(hal):
    t = (1 << 30) - 4000
    hal.sample(t)
    hal.sample((t + 10000) & ((1 << 30) - 1))
    assert hal.plant.elapsed_ms == 10


def test_clock_stepping_back_is_ignored_and_long_gaps_capped(hal):
    hal.sample(1000000)
    hal.sample(900000)
    assert hal.plant.elapsed_ms == 0
    hal.sample(900000 + 60 * 1000000)  # a minute stopped in a debugger
    assert hal.plant.elapsed_ms == 10000
    assert hal.samples == 3


def test_rails_through_channels_with_sample(hal):
    t = 0
    hal.sample(t)
    for ch in range(6):
        hal.rail_enable(ch, 1)
    for _ in range(10):
        t += 10000
        hal.sample(t)
    assert [hal.rail_power_good(ch) for ch in range(6)] == [1] * 6
    assert [hal.rail_mv(ch) for ch in range(6)] == [12000, 5000, 3300, 1800, 1000, 12000]
    assert hal.rail_ma(4) == 20000
    hal.rail_enable(0, 0)
    assert hal.rail_power_good(0) == 0


def test_fans_through_channels(hal):
    t = 0
    hal.sample(t)
    hal.pwm_set(1, 500)
    hal.pwm_set(3, 1000)
    pulses1 = 0
    for _ in range(1500):  # 15 s
        t += 10000
        hal.sample(t)
        pulses1 += hal.tach_pulses(1)
    assert hal.plant.fan_rpm(1) == 6000 and hal.plant.fan_rpm(3) == 5000
    assert hal.plant.fan_rpm(0) == 0 and hal.tach_pulses(0) == 0
    # 15 s spinning up toward 200 pulses/s: a little under 3000
    assert 2500 < pulses1 < 3000
    pulses1 = 0
    for _ in range(100):
        t += 10000
        hal.sample(t)
        pulses1 += hal.tach_pulses(1)
    assert pulses1 == 200


# -- digital and security lines ---------------------------------------------------------


def test_gpio_lines(hal):
    assert hal.digital_in(8) == 1  # pull-up input
    assert hal.digital_in(11) == 0  # pull-down input
    hal.digital_out(0, 1)
    assert hal.digital_in(0) == 1  # outputs read back
    hal.digital_out(9, 0)  # writing an input does nothing
    assert hal.digital_in(9) == 1
    hal.plant.set_input(9, 0)
    assert hal.digital_in(9) == 0


def test_security_inputs_and_lock(hal):
    t = 0
    hal.sample(t)
    assert hal.sim_fault(FAULT_TAMPER, 0, 1) == R_OK
    assert hal.sim_fault(FAULT_ESTOP, 0, 1) == R_OK
    assert hal.digital_in(CH_TAMPER) == 1 and hal.digital_in(CH_ESTOP) == 1
    assert hal.digital_in(CH_DOOR) == 0
    hal.digital_out(CH_LOCK, 1)
    for _ in range(9):
        t += 10000
        hal.sample(t)
    assert hal.digital_in(CH_LOCK_SENSE) == 0
    t += 10000
    hal.sample(t)
    assert hal.digital_in(CH_LOCK_SENSE) == 1
    assert hal.sim_fault(FAULT_TAMPER, 3, 1) == R_UNKNOWN_TARGET


def test_watchdog_and_reboot(hal):
    assert hal.watchdog_feeds == 0 and hal.reboot_requested is False
    for _ in range(5):
        hal.watchdog_feed()
    hal.reboot()
    assert hal.watchdog_feeds == 5 and hal.reboot_requested is True


def test_hal_can_share_a_plant():
    p = Plant(SimHal().config)
    h = SimHal(plant=p)
    assert h.plant is p


# -- serial rings -------------------------------------------------------------------------


def test_serial_bytes_flow_both_ways_in_order():
    h = SimHal(serial_size=64)
    assert h.host_write(b"hello") == 5
    buf = bytearray(16)
    assert h.serial_read(buf, 3, 10) == 5
    assert bytes(buf[3:8]) == b"hello"
    assert h.serial_read(buf, 0, 10) == 0
    assert h.serial_write(b"xxworld", 2, 5) == 5
    assert h.host_read() == b"world"
    assert h.host_read() == b""


def test_serial_rings_wrap_around():
    h = SimHal(serial_size=16)
    buf = bytearray(16)
    sent = bytearray()
    got = bytearray()
    for k in range(50):  # 50 x 7 bytes through a 16-byte ring
        chunk = bytes((k * 7 + j) & 0xFF for j in range(7))
        assert h.host_write(chunk) == 7
        sent += chunk
        n = h.serial_read(buf, 0, 16)
        assert h.serial_write(buf, 0, n) == n
        got += h.host_read(3)
        got += h.host_read()
    assert bytes(got) == bytes(sent)


def test_rx_overflow_drops_and_counts_like_a_uart():
    h = SimHal(serial_size=16)
    assert h.host_write(bytes(range(10))) == 10
    assert h.host_write(bytes(range(10, 20))) == 6  # only 6 fit
    assert h.rx.dropped == 4
    assert h.host_write(b"z") == 0
    assert h.rx.dropped == 5
    buf = bytearray(32)
    assert h.serial_read(buf, 0, 32) == 16
    assert bytes(buf[:16]) == bytes(range(16))  # the oldest bytes survive


def test_tx_overflow_pushes_back_without_loss():
    h = SimHal(serial_size=16)
    data = bytes(range(40))
    assert h.serial_write(data, 0, 40) == 16
    assert h.serial_write(data, 16, 24) == 0  # full: the firmware keeps the rest
    assert h.host_read(10) == data[:10]
    assert h.serial_write(data, 16, 24) == 10
    assert h.host_read() == data[10:26]
    assert h.tx.count == 0


def test_byte_ring_free_space():
    r = ByteRing(8)
    assert r.free() == 8
    r.put_from(b"abc", 0, 3)
    assert r.free() == 5


# -- MicroPython VMs ------------------------------------------------------------------------

ALLOC_SCRIPT = r'''
import gc, micropython
from metal.boards.sim.hal import SimHal
from metal.core.proto import (FAULT_CLEAR, FAULT_FAN_STALL, FAULT_PG_GLITCH, FAULT_RAIL_SHORT,
                              FAULT_SENSOR_OPEN, FAULT_SENSOR_STUCK, FAULT_TAMPER)
h = SimHal()
p = h.plant
buf = bytearray(64)

def tick(t):
    h.sample(t)
    acc = 0
    for ch in range(6):
        acc += h.adc_read(ch)
    acc += h.i2c_temp_read(0) + h.i2c_temp_read(1)
    for ch in range(4):
        acc += h.tach_pulses(ch)
        h.pwm_set(ch, 1000)
    for ch in range(6):
        acc += h.rail_power_good(ch) + h.rail_mv(ch) + h.rail_ma(ch)
        h.rail_enable(ch, 1)
    for ch in range(21):
        acc += h.digital_in(ch)
    h.digital_out(0, 1)
    h.digital_out(17, 1)
    n = h.serial_read(buf, 0, 64)
    h.serial_write(buf, 0, n)
    h.watchdog_feed()
    return acc

p.set_noise(5000, 3)
h.sample(0)
tick(10000)
h.host_write(b"x" * 600)
results = []
for phase in range(2):
    if phase == 1:
        # the extremes: hottest ambient, every load at its limit, fans stalled
        p.set_ambient(60000)
        for i in range(6):
            p.set_rail_load(i, 65535)
        p.set_zone_temp(0, 240000)
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    micropython.heap_lock()
    try:
        t = 20000 + phase * 100000000
        h.sample(t)
        for k in range(1000):
            t += 10000
            tick(t)
            if k == 500:
                for f in range(4):
                    h.sim_fault(FAULT_FAN_STALL, f, 0)
                h.sim_fault(FAULT_SENSOR_OPEN, 0, 0)
                h.sim_fault(FAULT_SENSOR_STUCK, 2, -60000)
                h.sim_fault(FAULT_PG_GLITCH, 3, 30)
                h.sim_fault(FAULT_TAMPER, 0, 1)
            if k == 700:
                for r in range(6):
                    h.sim_fault(FAULT_RAIL_SHORT, r, 0)
            if k == 800:
                h.sim_fault(FAULT_CLEAR, -1, 0)
        h.sample(t + 60000000)  # a long gap: 10 s of physics in one call
    finally:
        micropython.heap_unlock()
    results.append(gc.mem_alloc() - before)
    gc.enable()
print("ALLOC", results[0], results[1], "AMBIENT", p.ambient_mc, "CPU", p.z_mc[0])
'''


def test_tick_path_allocates_nothing(mpvm):
    # Runs once per VM (unix, wasm; see tests/conftest.py). The 32-bit WASM VM
    # allocates for any intermediate >= 2**30, so its run also proves the
    # plant's integer ranges, extremes included.
    r = mpvm.run(ALLOC_SCRIPT, timeout=180).check()
    words = r.lines[-1].split()
    assert words[0] == "ALLOC", r.stdout
    assert words[1:3] == ["0", "0"], r.stdout  # no byte allocated in either phase
    assert words[4] == "60000", r.stdout  # the extreme phase ran
    assert 60000 < int(words[6]) <= 250000, r.stdout
