"""SimHal: the input image (channel mapping, raw conversions, snapshot
timing), time, serial rings, and the allocation-free tick on both
MicroPython VMs."""

import pytest

from metal.boards.sim.board import (
    CH_DOOR,
    CH_ESTOP,
    CH_LOCK,
    CH_LOCK_SENSE,
    CH_TAMPER,
    make_config,
)
from metal.boards.sim.hal import ByteRing, SimHal, lm75_raw, tmp117_raw
from metal.boards.sim.plant import Plant
from metal.core.drivers import ntc
from metal.core.hal import READ_ERROR, Hal
from metal.core.proto import (
    FAULT_CLEAR,
    FAULT_ESTOP,
    FAULT_PG_GLITCH,
    FAULT_RAIL_SHORT,
    FAULT_SENSOR_OPEN,
    FAULT_SENSOR_SHORT,
    FAULT_SENSOR_STUCK,
    FAULT_TAMPER,
    R_OK,
    R_UNKNOWN_TARGET,
)

CPU, MEMORY, IO = range(3)
T0 = 1000000


@pytest.fixture
def hal():
    return SimHal()


def resample(h):
    """A tick's sample with no time passing (the first one starts the clock
    at 0): the image as of now."""
    h.sample(h._last_us)
    return h


def din(h, ch):
    return (h.din_mask >> ch) & 1


def pg(h, ch):
    return (h.pg_mask >> ch) & 1


def sign16(raw):
    return raw - 0x10000 if raw & 0x8000 else raw


def tmp117_to_mc(raw):
    """Datasheet decode: two's complement, 7.8125 m°C per LSB."""
    return sign16(raw) * 78125 // 10000


def lm75_to_mc(raw):
    """Datasheet decode: 1/256 °C per register LSB."""
    return sign16(raw) * 1000 // 256


def test_implements_every_hal_method():
    names = [n for n in vars(Hal) if not n.startswith("_") and callable(getattr(Hal, n))
             and n != "claim_inputs"]
    assert len(names) == 9
    for n in names:
        assert getattr(SimHal, n) is not getattr(Hal, n), n


def test_image_is_sized_by_the_config_and_filled_before_the_first_tick():
    h = SimHal()
    assert len(h.adc) == 6 and len(h.i2c_temp) == 2
    assert len(h.mv) == 6 and len(h.ma) == 6
    assert all(ntc.classify(raw) == ntc.NTC_OK for raw in h.adc)
    assert list(h.mv) == [0] * 6 and list(h.ma) == [0] * 6
    assert h.pg_mask == 0
    assert din(h, 8) == 1 and din(h, 11) == 0  # pull-up / pull-down inputs


# -- temperature channels ------------------------------------------------------------


@pytest.mark.parametrize("zone_mc", [-30000, 0, 25000, 47300, 60000, 94999, 120000])
def test_ntc_reads_round_trip_through_the_driver_table(hal, zone_mc):
    p = hal.plant
    for z in range(3):
        p.set_zone_temp(z, zone_mc)
    resample(hal)
    for ch, sensor in ((0, 0), (1, 1), (2, 3), (3, 4), (4, 5), (5, 6)):
        raw = hal.adc[ch]
        assert 0 <= raw <= 65535
        assert ntc.classify(raw) == ntc.NTC_OK
        assert abs(ntc.adc_to_mc(raw) - p.sensor_mc(sensor)) <= 100


def test_ntc_hotter_reads_lower(hal):
    p = hal.plant
    p.set_zone_temp(CPU, 40000)
    cold = resample(hal).adc[0]
    p.set_zone_temp(CPU, 80000)
    assert resample(hal).adc[0] < cold


def test_ntc_open_and_short_read_full_scale_and_zero(hal):
    assert hal.sim_fault(FAULT_SENSOR_OPEN, 0, 0) == R_OK
    assert hal.sim_fault(FAULT_SENSOR_SHORT, 3, 0) == R_OK
    resample(hal)
    assert hal.adc[0] == 65535 and ntc.classify(65535) == ntc.NTC_OPEN
    assert hal.adc[2] == 0 and ntc.classify(0) == ntc.NTC_SHORT
    hal.sim_fault(FAULT_CLEAR, -1, 0)
    assert ntc.classify(resample(hal).adc[0]) == ntc.NTC_OK


def test_stuck_sensor_reads_its_value(hal):
    hal.sim_fault(FAULT_SENSOR_STUCK, 4, 88000)  # dimm_b on adc 3
    assert abs(ntc.adc_to_mc(resample(hal).adc[3]) - 88000) <= 100
    hal.sim_fault(FAULT_SENSOR_STUCK, 2, 99004)  # cpu_vrm on TMP117
    assert tmp117_to_mc(resample(hal).i2c_temp[0]) == 99000  # floored to 7.8125 m°C steps
    hal.plant.set_zone_temp(MEMORY, 30000)  # a stuck sensor ignores its zone
    hal.sample(T0 + 10000)
    assert abs(ntc.adc_to_mc(hal.adc[3]) - 88000) <= 100


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
        resample(hal)
        assert 0 <= vrm - sensors.tmp117_to_mc(hal.i2c_temp[0]) < 8
        assert 0 <= board - sensors.lm75_to_mc(hal.i2c_temp[1]) < 125


def test_i2c_channels_read_the_plant(hal):
    p = hal.plant
    p.set_zone_temp(CPU, 61000)
    p.set_zone_temp(IO, 43000)
    resample(hal)
    assert tmp117_to_mc(hal.i2c_temp[0]) == 65000  # cpu_vrm: zone + 4 °C
    assert lm75_to_mc(hal.i2c_temp[1]) == 43000  # io_board: no offset


def test_i2c_sensor_faults_do_not_answer(hal):
    hal.sim_fault(FAULT_SENSOR_OPEN, 2, 0)
    hal.sim_fault(FAULT_SENSOR_SHORT, 7, 0)
    resample(hal)
    assert hal.i2c_temp[0] == READ_ERROR
    assert hal.i2c_temp[1] == READ_ERROR
    hal.sim_fault(FAULT_CLEAR, 7, FAULT_SENSOR_SHORT)
    assert resample(hal).i2c_temp[1] != READ_ERROR


def test_unmapped_channels(hal):
    before = (list(hal.adc), list(hal.i2c_temp), list(hal.mv), list(hal.ma), hal.pg_mask,
              hal.din_mask)
    for ch in (-1, 6, 100):
        assert hal.tach_pulses(ch) == READ_ERROR
        hal.pwm_set(ch, 500)  # ignored, no exception
        hal.rail_enable(ch, 1)
        hal.digital_out(ch + 30, 1)
    hal.sample(T0 + 10000)
    assert (list(hal.adc), list(hal.i2c_temp), list(hal.mv), list(hal.ma), hal.pg_mask,
            hal.din_mask) == before
    assert list(hal.plant.f_duty) == [0] * 4


def permuted_config():
    """The sim board with no channel equal to its index: rails on 7..2, NTCs
    shuffled, the two I2C sensors on 3 and 0 (1 and 2 unused)."""
    c = make_config()
    for i, r in enumerate(c.rails):
        r.ch = 7 - i
    adc = iter([5, 3, 1, 0, 2, 4])
    for s in c.sensors:
        s.ch = next(adc) if s.kind == 1 else (3 if s.ch == 0 else 0)
    return c


def test_image_follows_the_channel_map_of_any_config():
    c = permuted_config()
    h = SimHal(c)
    p = h.plant
    p.set_noise(300, 9)
    t = 0
    h.sample(t)
    for ch in range(2, 8):
        h.rail_enable(ch, 1)
    for k in range(300):
        if k == 100:
            p.inject(FAULT_SENSOR_OPEN, 2, 0)
            p.inject(FAULT_PG_GLITCH, 1, 50)
        t += 10000
        h.sample(t)
        assert len(h.adc) == 6 and len(h.i2c_temp) == 4 and len(h.mv) == 8
        for i, s in enumerate(c.sensors):
            image = h.adc if s.kind == 1 else h.i2c_temp
            assert image[s.ch] == p.reading(i), (k, i)
        assert h.i2c_temp[1] == h.i2c_temp[2] == READ_ERROR
        for i, r in enumerate(c.rails):
            assert h.mv[r.ch] == p.r_mv[i] and h.ma[r.ch] == p.r_ma[i]
            assert pg(h, r.ch) == p.rail_power_good(i)
        assert h.mv[0] == h.mv[1] == READ_ERROR and h.pg_mask & 3 == 0
    assert p.r_mv[0] == 12000 and pg(h, 7) == 1  # the tree came up
    assert pg(h, 6) == 1  # the glitch on rail 1 (channel 6) is over


def test_a_channel_named_twice_belongs_to_the_later_sensor_and_rail():
    c = make_config()
    c.sensors[1].ch = 0  # cpu1_die onto cpu0_die's ADC channel
    c.rails[5].ch = 4  # p12v_fans onto p1v0_core's channel
    h = SimHal(c)
    p = h.plant
    p.set_zone_temp(CPU, 50000)
    p.inject(FAULT_SENSOR_OPEN, 0, 0)  # the earlier sensor: not on the image
    h.rail_enable(0, 1)
    h.rail_enable(4, 1)  # the channel's rail: p12v_fans
    t = 0
    for _ in range(10):
        t += 10000
        h.sample(t)
    assert h.adc[0] == ntc.mc_to_adc(p.sensor_mc(1))  # cpu1_die, still ~51 °C
    assert 50000 < p.sensor_mc(1) < 51000
    assert h.mv[4] == 12000 and pg(h, 4) == 1 and p.r_mv[4] == 0


# -- the image is a snapshot taken by sample -------------------------------------------


def test_faults_between_ticks_show_in_the_next_sample_only(hal):
    p = hal.plant
    for ch in range(6):
        hal.rail_enable(ch, 1)
    t = T0
    for _ in range(20):
        t += 10000
        hal.sample(t)
    assert hal.pg_mask == 0x3F
    adc0 = hal.adc[0]
    hal.sim_fault(FAULT_SENSOR_OPEN, 0, 0)
    hal.sim_fault(FAULT_SENSOR_SHORT, 7, 0)
    hal.sim_fault(FAULT_RAIL_SHORT, 3, 0)
    hal.sim_fault(FAULT_TAMPER, 0, 1)
    hal.rail_enable(5, 0)
    # the tick that is running still sees its own start
    assert hal.adc[0] == adc0 and hal.i2c_temp[1] != READ_ERROR
    assert hal.pg_mask == 0x3F and hal.mv[3] == 1800 and hal.ma[3] == 5000
    assert din(hal, CH_TAMPER) == 0
    hal.sample(t + 10000)
    assert hal.adc[0] == 65535 and hal.i2c_temp[1] == READ_ERROR
    assert hal.pg_mask == 0x07  # p1v8 shorted, p1v0_core without input, fans off
    assert hal.ma[3] == 20000 and hal.mv[3] == 90  # short current, collapsed voltage
    assert din(hal, CH_TAMPER) == 1


def expected_image(h):
    """The image recomputed from the plant's state, by channel."""
    p = h.plant
    c = h.config
    adc = [READ_ERROR] * len(h.adc)
    i2c = [READ_ERROR] * len(h.i2c_temp)
    for i, s in enumerate(c.sensors):
        (adc if s.kind == 1 else i2c)[s.ch] = p.reading(i)
    mv = [READ_ERROR] * len(h.mv)
    ma = [READ_ERROR] * len(h.ma)
    pgm = 0
    for i, r in enumerate(c.rails):
        mv[r.ch] = p.r_mv[i]
        ma[r.ch] = p.r_ma[i]
        pgm = (pgm & ~(1 << r.ch)) | (p.rail_power_good(i) << r.ch)
    din = sum(p.d_level[ch] << ch for ch in range(p.n_digital))
    return adc, i2c, mv, ma, pgm, din


def image(h):
    return list(h.adc), list(h.i2c_temp), list(h.mv), list(h.ma), h.pg_mask, h.din_mask


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_image_is_the_plant_state_at_every_sample_and_only_changes_there(seed):
    # Random world changes between and "during" ticks: after each sample the
    # image equals a recomputation from scratch (no change missed by the
    # incremental updates), and nothing but sample changes it.
    import random
    from metal.core import proto as P
    rnd = random.Random(seed)
    h = SimHal(permuted_config() if seed == 3 else make_config())
    p = h.plant
    n_rail_ch = len(h.mv)
    t = 0
    h.sample(t)
    kinds = [P.FAULT_SENSOR_STUCK, P.FAULT_SENSOR_OPEN, P.FAULT_SENSOR_SHORT, P.FAULT_FAN_STALL,
             P.FAULT_RAIL_SHORT, P.FAULT_PG_GLITCH, P.FAULT_TAMPER, P.FAULT_ESTOP, P.FAULT_DOOR]
    for k in range(1500):
        snap = image(h)
        for _ in range(rnd.choice([0, 0, 1, 2, 3])):
            op = rnd.randrange(9)
            if op == 0:
                h.pwm_set(rnd.randrange(4), rnd.randrange(1001))
            elif op == 1:
                h.rail_enable(rnd.randrange(n_rail_ch), rnd.random() < 0.7)
            elif op == 2:
                h.digital_out(rnd.randrange(21), rnd.randrange(2))
            elif op == 3 and rnd.random() < 0.3:
                kind = rnd.choice(kinds)
                value = {P.FAULT_SENSOR_STUCK: rnd.randrange(-100000, 200000),
                         P.FAULT_PG_GLITCH: rnd.randrange(1, 200)}.get(kind, 1)
                h.sim_fault(kind, rnd.randrange(6), value)
            elif op == 4 and rnd.random() < 0.2:
                h.sim_fault(P.FAULT_CLEAR, -1, 0)
            elif op == 5 and rnd.random() < 0.1:
                p.set_zone_temp(rnd.randrange(3), rnd.randrange(0, 120000))
            elif op == 6 and rnd.random() < 0.1:
                p.set_noise(rnd.choice([0, 0, 300]), rnd.randrange(1, 1000))
            elif op == 7 and rnd.random() < 0.1:
                p.set_rail_load(rnd.randrange(6), rnd.randrange(0, 30000))
            else:
                p.set_input(rnd.randrange(8, 21), rnd.randrange(2))
        assert image(h) == snap, k  # a snapshot until the next sample
        t += rnd.choice([10000, 10000, 10000, 0, 2500, 70000])
        h.sample(t)
        assert image(h) == expected_image(h), k
    assert p.elapsed_ms > 15000


def test_noise_moves_the_image_every_tick():
    h = SimHal()
    h.plant.set_noise(2000, 3)
    t = 0
    h.sample(t)
    seen = set()
    for _ in range(50):
        t += 10000
        h.sample(t)
        seen.add(h.adc[0])
        assert h.adc[0] == ntc.mc_to_adc(h.plant.sensor_mc(0))
    assert len(seen) > 20
    h.plant.set_noise(0)
    resample(h)
    assert h.adc[0] == ntc.mc_to_adc(25000 + 2000)  # cpu0_die: ambient + its offset


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
    assert hal.pg_mask == 0x3F
    assert list(hal.mv) == [12000, 5000, 3300, 1800, 1000, 12000]
    assert hal.ma[4] == 20000
    hal.rail_enable(0, 0)
    assert pg(resample(hal), 0) == 0


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
    assert din(hal, 8) == 1  # pull-up input
    assert din(hal, 11) == 0  # pull-down input
    hal.digital_out(0, 1)
    assert din(hal, 0) == 0  # not before the next sample
    assert din(resample(hal), 0) == 1  # outputs read back
    hal.digital_out(9, 0)  # writing an input does nothing
    assert din(resample(hal), 9) == 1
    hal.plant.set_input(9, 0)
    assert din(resample(hal), 9) == 0
    assert hal.din_mask == sum(hal.plant.d_level[ch] << ch for ch in range(21))


def test_security_inputs_and_lock(hal):
    t = 0
    hal.sample(t)
    assert hal.sim_fault(FAULT_TAMPER, 0, 1) == R_OK
    assert hal.sim_fault(FAULT_ESTOP, 0, 1) == R_OK
    resample(hal)
    assert din(hal, CH_TAMPER) == 1 and din(hal, CH_ESTOP) == 1
    assert din(hal, CH_DOOR) == 0
    hal.digital_out(CH_LOCK, 1)
    for _ in range(9):
        t += 10000
        hal.sample(t)
    assert din(hal, CH_LOCK) == 1 and din(hal, CH_LOCK_SENSE) == 0
    t += 10000
    hal.sample(t)
    assert din(hal, CH_LOCK_SENSE) == 1
    assert hal.sim_fault(FAULT_TAMPER, 3, 1) == R_UNKNOWN_TARGET
    hal.sim_fault(FAULT_CLEAR, -1, 0)
    resample(hal)
    assert din(hal, CH_TAMPER) == 0 and din(hal, CH_ESTOP) == 0 and din(hal, CH_LOCK_SENSE) == 1


def test_watchdog_and_reboot(hal):
    assert hal.watchdog_feeds == 0 and hal.reboot_requested is False
    for _ in range(5):
        hal.watchdog_feed()
    hal.reboot()
    assert hal.watchdog_feeds == 5 and hal.reboot_requested is True


def test_hal_can_be_given_a_plant():
    p = Plant(SimHal().config)
    p.set_zone_temp(CPU, 70000)
    p.inject(FAULT_TAMPER, 0, 1)
    h = SimHal(plant=p)
    assert h.plant is p
    # the image starts from the plant as it is, whatever it has been through
    assert h.adc[0] == ntc.mc_to_adc(72000) and din(h, CH_TAMPER) == 1


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


def test_byte_ring_matches_a_fifo_model():
    # random writes and reads (offsets, partial fits, compaction, clear) against bytes
    import random

    rng = random.Random(7)
    r = ByteRing(32)
    model = bytearray()
    src = bytes(range(1, 256))
    for _ in range(3000):
        op = rng.random()
        if op < 0.5:
            start = rng.randrange(0, 100)
            n = rng.randrange(0, 40)
            stored = r.put_from(src, start, n)
            assert stored == min(n, 32 - len(model))
            model += src[start:start + stored]
        elif op < 0.98:
            start = rng.randrange(0, 5)
            n = rng.randrange(0, 40)
            dst = bytearray(64)
            got = r.get_into(dst, start, n)
            assert got == min(n, len(model))
            assert bytes(dst[start:start + got]) == bytes(model[:got])
            del model[:got]
        else:
            r.clear()
            model = bytearray()
        assert r.count == len(model) and r.free() == 32 - len(model)


# -- MicroPython VMs ------------------------------------------------------------------------

ALLOC_SCRIPT = r'''
import gc, micropython
from metal.boards.sim.hal import SimHal
from metal.core.proto import (FAULT_CLEAR, FAULT_FAN_STALL, FAULT_PG_GLITCH, FAULT_RAIL_SHORT,
                              FAULT_SENSOR_OPEN, FAULT_SENSOR_STUCK, FAULT_TAMPER)
h = SimHal()
p = h.plant
buf = bytearray(64)

adc = h.adc
i2c = h.i2c_temp
mv = h.mv
ma = h.ma

def tick(t):
    h.sample(t)
    acc = 0
    for ch in range(6):
        acc += adc[ch]
    acc += i2c[0] + i2c[1]
    for ch in range(4):
        acc += h.tach_pulses(ch)
        h.pwm_set(ch, 1000 - (t // 10000) % 500)  # fans always moving
    for ch in range(6):
        acc += mv[ch] + ma[ch]
        h.rail_enable(ch, 1)
    acc += h.pg_mask + h.din_mask
    h.digital_out(0, 1)
    h.digital_out(17, (t // 1000000) & 1)  # the lock travels now and then
    n = h.serial_read(buf, 0, 64)
    h.serial_write(buf, 0, n)
    h.watchdog_feed()
    return acc

p.set_noise(5000, 3)
h.sample(0)
tick(10000)
h.host_write(b"x" * 600)
results = []
t = k = f = r = 0  # module globals created before the lock (a new one grows the dict)
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
