"""SensorBank: conversions, staleness timing, open/short/range, events,
published signals and per-zone summaries."""

from metal.core.config import SENSOR_LM75, SENSOR_NTC, SENSOR_TMP117, Sensor
from metal.core.drivers import ntc
from metal.core.drivers.sensors import SensorBank, lm75_to_mc, tmp117_to_mc
from metal.core.events import EventQueue
from metal.core.hal import READ_ERROR
from metal.core.proto import (
    EV_SENSOR_STATE,
    SENSOR_OK,
    SENSOR_OPEN,
    SENSOR_RANGE,
    SENSOR_SHORT,
    SENSOR_STALE,
)
from metal.core.signals import G_MAX_TEMP, TEMP_INVALID, Signals

from .thermal_fake_hal import ThermalFakeHal

STALE = 5


def events_of(q, kind):
    out = []
    for k in range(q.count):
        i = (q.head + k) % q.size
        if q.kind[i] == kind:
            out.append((q.source[i], q.value[i]))
    return out


def make(sensors=None, stale=STALE):
    if sensors is None:
        sensors = [
            Sensor("ntc0", SENSOR_NTC, 0, 0, 70000, 90000),
            Sensor("tmp1", SENSOR_TMP117, 1, 0, 70000, 90000),
            Sensor("lm2", SENSOR_LM75, 2, 1, 70000, 90000),
        ]
    hal = ThermalFakeHal()
    hal.adc[0] = 32768  # 25 °C
    hal.i2c[1] = 0x0C80  # TMP117 25 °C
    hal.i2c[2] = 0x1E00  # LM75 30 °C
    sig = Signals(len(sensors), 0, 0)
    q = EventQueue(64)
    bank = SensorBank(sensors, hal, sig, q, stale)
    return bank, hal, sig, q


# -- conversions -----------------------------------------------------------------

def test_tmp117_known_registers():
    assert tmp117_to_mc(0x0C80) == 25000  # 3200 × 7.8125
    assert tmp117_to_mc(0x0000) == 0
    assert tmp117_to_mc(0x0001) == 7  # 7.8125 floored
    assert tmp117_to_mc(0xFF80) == -1000  # -128 LSB
    assert tmp117_to_mc(0xE480) == -55000  # -7040 LSB
    assert tmp117_to_mc(-128) == -1000  # a HAL that sign-extends already
    assert tmp117_to_mc(0x7FFF) == 255992  # 32767 × 7.8125 = 255992.1875
    assert tmp117_to_mc(0x8000) == -256000
    # the same as the textbook raw * 78125 // 10000 over the whole register
    for raw in range(-32768, 32768, 7):
        assert tmp117_to_mc(raw) == raw * 78125 // 10000


def test_lm75_known_registers():
    assert lm75_to_mc(0x1900) == 25000
    assert lm75_to_mc(0x1980) == 25500  # 9-bit part: 0.5 °C
    assert lm75_to_mc(0x19E0) == 25875  # 11-bit part: 0.125 °C steps
    assert lm75_to_mc(0x19FF) == 25875  # undefined low bits ignored
    assert lm75_to_mc(0xFF80) == -500
    assert lm75_to_mc(0xFFE0) == -125
    assert lm75_to_mc(0xE700) == -25000
    assert lm75_to_mc(0xC900) == -55000
    assert lm75_to_mc(-6400) == -25000


def test_ntc_known_points_through_the_bank():
    bank, hal, sig, q = make()
    for raw, mc in ((32768, 25000), (50511, 0), (19860, 45000), (7387, 80000)):
        hal.adc[0] = raw
        bank.step()
        assert bank.mc[0] == mc
        assert sig.v[sig.temp0] == mc
    hal.adc[0] = (32768 + 29202) // 2  # halfway between 25 and 30 °C
    bank.step()
    assert 27400 <= bank.mc[0] <= 27600


def test_first_tick_publishes_temps_states_and_max():
    bank, hal, sig, q = make()
    assert sig.v[sig.temp0] == TEMP_INVALID  # nothing read yet
    assert sig.v[sig.sensor_state0] == SENSOR_STALE
    bank.step()
    assert list(sig.v[sig.temp0:sig.temp0 + 3]) == [25000, 25000, 30000]
    assert list(sig.v[sig.sensor_state0:sig.sensor_state0 + 3]) == [0, 0, 0]
    assert sig.v[sig.global0 + G_MAX_TEMP] == 30000
    assert bank.zone_max(0) == 25000
    assert bank.zone_max(1) == 30000
    assert bank.zone_all_valid(0) == 1 and bank.zone_all_valid(1) == 1
    assert q.count == 0  # the boot-time first reading is not news


# -- staleness ----------------------------------------------------------------------

def test_lost_sensor_goes_stale_on_exactly_the_stale_ticks_th_bad_tick():
    bank, hal, sig, q = make()
    bank.step()
    hal.i2c[1] = 0x0D00  # 26 °C
    bank.step()
    hal.i2c[1] = READ_ERROR
    for k in range(1, STALE):
        bank.step()
        # holding the last valid value during the grace ticks
        assert bank.state[1] == SENSOR_OK, k
        assert sig.v[sig.temp0 + 1] == 26000
    assert q.count == 0
    bank.step()  # the 5th bad tick in a row
    assert bank.state[1] == SENSOR_STALE
    assert sig.v[sig.sensor_state0 + 1] == SENSOR_STALE
    assert sig.v[sig.temp0 + 1] == TEMP_INVALID
    assert bank.mc[1] == 26000  # last valid value kept for diagnostics
    assert events_of(q, EV_SENSOR_STATE) == [(1, SENSOR_STALE)]
    assert bank.zone_all_valid(0) == 0
    assert bank.zone_max(0) == 25000  # the other sensor of the zone
    for _ in range(20):
        bank.step()
    assert q.count == 1  # no repeats while it stays down


def test_one_good_reading_brings_it_back():
    bank, hal, sig, q = make()
    bank.step()
    hal.i2c[1] = READ_ERROR
    for _ in range(STALE):
        bank.step()
    hal.i2c[1] = 0x0E00  # 28 °C
    bank.step()
    assert bank.state[1] == SENSOR_OK
    assert sig.v[sig.temp0 + 1] == 28000
    assert events_of(q, EV_SENSOR_STATE) == [(1, SENSOR_STALE), (1, SENSOR_OK)]
    assert bank.zone_all_valid(0) == 1


def test_intermittent_errors_shorter_than_stale_ticks_never_trip():
    bank, hal, sig, q = make()
    for _ in range(50):
        hal.i2c[1] = READ_ERROR
        for _ in range(STALE - 1):
            bank.step()
        hal.i2c[1] = 0x0C80
        bank.step()
        assert bank.state[1] == SENSOR_OK
    assert q.count == 0


def test_stale_ticks_is_configurable():
    bank, hal, sig, q = make(stale=2)
    bank.step()
    hal.adc[0] = READ_ERROR
    bank.step()
    assert bank.state[0] == SENSOR_OK
    bank.step()
    assert bank.state[0] == SENSOR_STALE


# -- open / short / range ---------------------------------------------------------------

def test_ntc_open_and_short():
    bank, hal, sig, q = make()
    bank.step()
    hal.adc[0] = 65535
    for _ in range(STALE):
        bank.step()
    assert bank.state[0] == SENSOR_OPEN
    assert sig.v[sig.temp0] == TEMP_INVALID
    # stays OPEN; becomes SHORT only once shorted for stale_ticks in a row
    hal.adc[0] = ntc.RAW_SHORT
    for _ in range(STALE - 1):
        bank.step()
        assert bank.state[0] == SENSOR_OPEN
    bank.step()
    assert bank.state[0] == SENSOR_SHORT
    assert events_of(q, EV_SENSOR_STATE) == [(0, SENSOR_OPEN), (0, SENSOR_SHORT)]


def test_flapping_between_two_faults_does_not_flood_events():
    bank, hal, sig, q = make()
    bank.step()
    for k in range(200):
        hal.adc[0] = 65535 if k % 2 else 0
        bank.step()
    assert bank.state[0] in (SENSOR_OPEN, SENSOR_SHORT)
    assert len(events_of(q, EV_SENSOR_STATE)) == 1


def test_out_of_range_reading():
    sensors = [Sensor("tmp", SENSOR_TMP117, 1, 0, 70000, 90000, min_mc=-20000, max_mc=125000)]
    bank, hal, sig, q = make(sensors)
    hal.i2c[1] = 0x4000  # 128 °C > 125 °C
    for _ in range(STALE):
        bank.step()
    assert bank.state[0] == SENSOR_RANGE
    assert sig.v[sig.temp0] == TEMP_INVALID
    assert sig.v[sig.global0 + G_MAX_TEMP] == TEMP_INVALID
    hal.i2c[1] = 0xF600  # -20 °C: on the bound is valid
    bank.step()
    assert bank.state[0] == SENSOR_OK
    assert sig.v[sig.temp0] == -20000
    assert sig.v[sig.global0 + G_MAX_TEMP] == -20000


def test_negative_temperatures_are_valid_and_max_picks_the_hottest():
    bank, hal, sig, q = make()
    hal.adc[0] = 58079  # -15 °C
    hal.i2c[1] = 0xFF80  # TMP117 -1 °C
    hal.i2c[2] = 0xE700  # LM75 -25 °C
    bank.step()
    assert list(bank.mc) == [-15000, -1000, -25000]
    assert sig.v[sig.global0 + G_MAX_TEMP] == -1000
    assert bank.zone_max(0) == -1000
    assert bank.zone_max(1) == -25000


# -- boot -----------------------------------------------------------------------------------

def test_sensor_dead_at_boot_reports_after_stale_ticks_with_an_event():
    bank, hal, sig, q = make()
    hal.i2c[2] = READ_ERROR
    for _ in range(STALE - 1):
        bank.step()
        assert bank.zone_is_pending(1) == 1
        assert bank.zone_all_valid(1) == 0
        assert bank.state[2] == SENSOR_STALE  # published as stale meanwhile
    assert q.count == 0
    bank.step()
    assert bank.zone_is_pending(1) == 0
    assert events_of(q, EV_SENSOR_STATE) == [(2, SENSOR_STALE)]
    hal.i2c[2] = 0x1900
    bank.step()
    assert events_of(q, EV_SENSOR_STATE) == [(2, SENSOR_STALE), (2, SENSOR_OK)]


def test_zone_queries_out_of_range_and_zone_without_sensors():
    bank, hal, sig, q = make()
    bank.step()
    assert bank.zone_max(7) == TEMP_INVALID
    assert bank.zone_all_valid(7) == 0
    assert bank.zone_all_valid(-1) == 0
    assert bank.temp(9) == TEMP_INVALID
    assert bank.temp(2) == 30000


# -- start-up ---------------------------------------------------------------------------------

def test_a_channel_outside_the_image_fails_at_start_up():
    hal = ThermalFakeHal(n_ch=4)
    sig = Signals(1, 0, 0)
    for kind in (SENSOR_NTC, SENSOR_TMP117):
        try:
            SensorBank([Sensor("far", kind, 4, 0, 70000, 90000)], hal, sig, EventQueue(8), STALE)
        except ValueError as e:
            assert "far" in str(e)
        else:
            raise AssertionError("channel 4 of a 4-slot image accepted")


def test_reads_the_image_of_its_kind():
    # NTC and I2C sensors on the same channel number read different images
    sensors = [Sensor("n", SENSOR_NTC, 3, 0, 70000, 90000),
               Sensor("t", SENSOR_TMP117, 3, 0, 70000, 90000)]
    bank, hal, sig, q = make(sensors)
    hal.adc[3] = 19860  # 45 °C
    hal.i2c[3] = 0x0D00  # 26 °C
    bank.step()
    assert list(bank.mc) == [45000, 26000]


# -- conversions inside step equal the public functions ---------------------------------------

def test_inline_ntc_conversion_equals_adc_to_mc_over_the_whole_range():
    sensors = [Sensor("n", SENSOR_NTC, 0, 0, -39000, 149000, min_mc=-40000, max_mc=150000)]
    bank, hal, sig, q = make(sensors)
    for raw in range(ntc.RAW_SHORT + 1, ntc.RAW_OPEN, 3):
        hal.adc[0] = raw
        bank.step()
        assert bank.state[0] == SENSOR_OK
        assert bank.mc[0] == ntc.adc_to_mc(raw), raw
        assert sig.v[sig.temp0] == bank.mc[0]


def test_inline_i2c_conversions_equal_the_functions():
    sensors = [Sensor("t", SENSOR_TMP117, 0, 0, 70000, 90000, min_mc=-300000, max_mc=300000),
               Sensor("l", SENSOR_LM75, 1, 0, 70000, 90000, min_mc=-300000, max_mc=300000)]
    bank, hal, sig, q = make(sensors)
    for raw in list(range(0, 65536, 5)) + [-1, -128, -32768, 0xFFFF, 0x8000, 0x7FFF]:
        hal.i2c[0] = raw
        hal.i2c[1] = raw
        bank.step()
        assert bank.mc[0] == tmp117_to_mc(raw), raw
        assert bank.mc[1] == lm75_to_mc(raw), raw


# -- the steady-state shortcut ----------------------------------------------------------------

def test_a_sensor_failing_after_a_long_steady_run_is_seen_on_time():
    bank, hal, sig, q = make(stale=3)
    for _ in range(100):
        bank.step()  # nothing changes: every sensor steady
    assert sig.v[sig.temp0] == 25000
    hal.adc[0] = READ_ERROR
    bank.step()
    bank.step()
    assert bank.state[0] == SENSOR_OK  # held during the grace ticks
    bank.step()  # the 3rd bad tick
    assert bank.state[0] == SENSOR_STALE
    assert sig.v[sig.temp0] == TEMP_INVALID
    assert bank.zone_all_valid(0) == 0
    assert events_of(q, EV_SENSOR_STATE) == [(0, SENSOR_STALE)]
    # a fault that reads the same raw value every tick is still judged every
    # tick: the reason run counts up to a new state
    hal.adc[0] = 65535
    for _ in range(2):
        bank.step()
    assert bank.state[0] == SENSOR_STALE
    bank.step()
    assert bank.state[0] == SENSOR_OPEN


def test_the_same_raw_value_after_a_miss_clears_the_miss():
    bank, hal, sig, q = make(stale=3)
    bank.step()
    for _ in range(10):
        hal.adc[0] = READ_ERROR
        bank.step()
        bank.step()
        hal.adc[0] = 32768  # the raw value it read before the misses
        bank.step()
        assert bank.misses[0] == 0
    assert bank.state[0] == SENSOR_OK and q.count == 0


def test_zone_and_board_maxima_follow_moving_temperatures():
    sensors = [Sensor("a", SENSOR_TMP117, 0, 0, 70000, 90000),
               Sensor("b", SENSOR_TMP117, 1, 0, 70000, 90000),
               Sensor("c", SENSOR_TMP117, 2, 1, 70000, 90000)]
    bank, hal, sig, q = make(sensors)
    gmax = sig.global0 + G_MAX_TEMP
    hal.i2c[0] = 0x0C80  # 25 °C
    hal.i2c[1] = 0x0D00  # 26 °C
    hal.i2c[2] = 0x0E00  # 28 °C
    bank.step()
    assert (bank.zone_max(0), bank.zone_max(1), sig.v[gmax]) == (26000, 28000, 28000)
    hal.i2c[0] = 0x0F00  # a rises above b: new zone max and board max
    bank.step()
    assert (bank.zone_max(0), bank.zone_max(1), sig.v[gmax]) == (30000, 28000, 30000)
    hal.i2c[0] = 0x0C00  # a (the max) cools below b: b holds the zone max again
    bank.step()
    assert (bank.zone_max(0), bank.zone_max(1), sig.v[gmax]) == (26000, 28000, 28000)
    assert bank.max_mc_all == 28000
    hal.i2c[2] = 0x0A00  # c (the board max) cools: the board max is zone 0's again
    bank.step()
    assert (bank.zone_max(0), bank.zone_max(1), sig.v[gmax]) == (26000, 20000, 26000)
    hal.i2c[1] = 0x0C00  # b cools too, a and b are equal now
    bank.step()
    assert (bank.zone_max(0), sig.v[gmax]) == (24000, 24000)
    hal.i2c[0] = 0x0B00  # one of two equal maxima cools: the other one stays
    bank.step()
    assert (bank.zone_max(0), sig.v[gmax]) == (24000, 24000)


# -- against a plain reference model, on random input sequences ------------------------------

class ReferenceBank:
    """The documented behaviour written the plain way: every sensor read,
    converted by the public functions, judged and summarised on every tick."""

    def __init__(self, sensors, stale):
        self.s = sensors
        self.stale = stale
        n = len(sensors)
        self.mc = [TEMP_INVALID] * n
        self.state = [SENSOR_STALE] * n
        self.pending = [1] * n
        self.misses = [0] * n
        self.reason = [0] * n
        self.run = [0] * n
        self.events = []
        self.n_zones = max([s.zone + 1 for s in sensors] + [0])

    def step(self, adc, i2c):
        for i, s in enumerate(self.s):
            why, mc = 0, None
            if s.kind == SENSOR_NTC:
                raw = adc[s.ch]
                if raw == READ_ERROR:
                    why = SENSOR_STALE
                elif ntc.classify(raw) != ntc.NTC_OK:
                    why = ntc.classify(raw)
                else:
                    mc = ntc.adc_to_mc(raw)
            else:
                raw = i2c[s.ch]
                if raw == READ_ERROR:
                    why = SENSOR_STALE
                else:
                    mc = (tmp117_to_mc if s.kind == SENSOR_TMP117 else lm75_to_mc)(raw)
            if why == 0 and not s.min_mc <= mc <= s.max_mc:
                why = SENSOR_RANGE
            if why == 0:
                self.mc[i] = mc
                self.misses[i] = self.run[i] = 0
                if self.state[i] != SENSOR_OK:
                    self.state[i] = SENSOR_OK
                    if self.pending[i]:
                        self.pending[i] = 0
                    else:
                        self.events.append((i, SENSOR_OK))
                continue
            self.misses[i] = min(self.misses[i] + 1, self.stale)
            if why == self.reason[i]:
                self.run[i] = min(self.run[i] + 1, self.stale)
            else:
                self.reason[i], self.run[i] = why, 1
            if self.pending[i] or self.state[i] == SENSOR_OK:
                if self.misses[i] >= self.stale:
                    self.pending[i] = 0
                    self.state[i] = why
                    self.events.append((i, why))
            elif why != self.state[i] and self.run[i] >= self.stale:
                self.state[i] = why
                self.events.append((i, why))

    def temps(self):
        return [self.mc[i] if self.state[i] == SENSOR_OK else TEMP_INVALID
                for i in range(len(self.s))]

    def zone_max(self):
        out = [TEMP_INVALID] * self.n_zones
        for i, t in enumerate(self.temps()):
            out[self.s[i].zone] = max(out[self.s[i].zone], t)
        return out

    def zone_bad(self):
        out = [0] * self.n_zones
        for i, s in enumerate(self.s):
            out[s.zone] += self.state[i] != SENSOR_OK
        return out

    def zone_pending(self):
        out = [0] * self.n_zones
        for i, s in enumerate(self.s):
            out[s.zone] += self.pending[i]
        return out


NTC_RAWS = [32768, 32769, 32767, 50511, 7387, 63944, 63943, 64999, 1283, 1284, 1000, 65000,
            65535, 201, 200, 0, READ_ERROR, 20000, 3000]
I2C_RAWS = [0x0C80, 0x0C81, 0xFF80, 0x7FFF, 0x8000, 0x1900, 0x19E0, 0x4000, 0xE480, 0xF600,
            -128, READ_ERROR]


def test_matches_the_reference_model_on_random_sequences():
    import random

    for seed in range(60):
        rnd = random.Random(seed)
        n_zones = rnd.randint(1, 4)
        sensors = []
        for i in range(rnd.randint(1, 8)):
            lo = rnd.choice((-40000, -20000, 0))
            sensors.append(Sensor("s%d" % i, rnd.choice((SENSOR_NTC, SENSOR_TMP117, SENSOR_LM75)),
                                  rnd.randint(0, 7), rnd.randint(0, n_zones - 1), lo + 1000,
                                  lo + 2000, min_mc=lo,
                                  max_mc=rnd.choice((150000, 125000, 60000, 30000))))
        stale = rnd.randint(1, 6)
        hal = ThermalFakeHal()
        sig = Signals(len(sensors), 0, 0)
        q = EventQueue(1024)
        bank = SensorBank(sensors, hal, sig, q, stale)
        ref = ReferenceBank(sensors, stale)
        p_change = rnd.choice((0.02, 0.1, 0.5))  # long steady runs, and busy ones
        for t in range(300):
            for ch in range(8):
                for image, typical in ((hal.adc, NTC_RAWS), (hal.i2c, I2C_RAWS)):
                    if rnd.random() < p_change:
                        r = rnd.random()
                        image[ch] = rnd.choice(typical) if r < 0.6 else rnd.randint(0, 0xFFFF)
            bank.step()
            ref.step(hal.adc, hal.i2c)
            where = (seed, t)
            n = len(sensors)
            assert list(bank.state) == ref.state, where
            assert list(bank.pending) == ref.pending, where
            assert list(bank.mc) == ref.mc, where
            assert list(sig.v[sig.temp0:sig.temp0 + n]) == ref.temps(), where
            assert list(sig.v[sig.sensor_state0:sig.sensor_state0 + n]) == ref.state, where
            assert list(bank.zone_max_mc) == ref.zone_max(), where
            assert list(bank.zone_bad) == ref.zone_bad(), where
            assert list(bank.zone_pending) == ref.zone_pending(), where
            assert bank.max_mc_all == max(ref.temps()), where
            assert sig.v[sig.global0 + G_MAX_TEMP] == bank.max_mc_all, where
            assert events_of(q, EV_SENSOR_STATE) == ref.events, where


# -- zero allocation and the same results under MicroPython -------------------------------------

# Mostly steady ticks; now and then a sensor moves (zone and board maxima up and
# down), fails (stale, open, short, range), recovers or reads past the table's
# ends. A checksum of everything the bank publishes, per tick, goes with the
# allocation count so CPython can check the VMs computed the same thing.
VM_BODY = '''
import gc
from array import array
from metal.core.compat import IS_MICROPYTHON
from metal.core.config import Sensor, SENSOR_NTC, SENSOR_TMP117, SENSOR_LM75
from metal.core.events import EventQueue
from metal.core.hal import READ_ERROR
from metal.core.signals import Signals
from metal.core.drivers.sensors import SensorBank

sensors = [Sensor("n0", SENSOR_NTC, 0, 0, 70000, 90000),
           Sensor("n1", SENSOR_NTC, 1, 0, 70000, 90000),
           Sensor("t2", SENSOR_TMP117, 2, 1, 70000, 90000, min_mc=-20000, max_mc=125000),
           Sensor("l3", SENSOR_LM75, 3, 1, 70000, 90000),
           Sensor("n4", SENSOR_NTC, 4, 3, 70000, 90000)]  # zone 2 has no sensor
hal = ThermalFakeHal()
sig = Signals(5, 0, 0)
q = EventQueue(32)
sb = SensorBank(sensors, hal, sig, q, 3)
NTC = (32768, 32769, 30000, 65535, 0, READ_ERROR, 63990, 1200, 7387, 50511)
I2C = (0x0C80, 0x0D00, 0x4000, READ_ERROR, 0xFF80, 0x8000, 0x1900, 0x0B00)
st = array("i", [0, 0, 0])  # ticks, checksum, state-change events
seen = bytearray(8)  # states seen while locked


def one_tick():
    k = st[0] + 1
    st[0] = k
    if k % 7 == 0:
        hal.adc[0] = NTC[(k // 7) % 10]
    if k % 11 == 0:
        hal.adc[1] = NTC[(k // 11 + 3) % 10]
    if k % 5 == 0:
        hal.i2c[2] = I2C[(k // 5) % 8]
    if k % 13 == 0:
        hal.i2c[3] = I2C[(k // 13 + 5) % 8]
    if k % 17 == 0:
        hal.adc[4] = 32768 - (k % 400) * 20
    sb.step(k)
    v = sig.v
    cs = st[1]
    for i in range(len(v)):
        cs = (cs * 31 + v[i]) & 0x3FFFFF
    for z in range(sb.n_zones):
        cs = (cs * 31 + sb.zone_max_mc[z] + 7 * sb.zone_bad[z] + sb.zone_pending[z]) & 0x3FFFFF
    st[1] = cs
    for i in range(5):
        seen[sb.state[i]] = 1
    while q.count:
        q.pop()
        st[2] += 1


def run(n):
    for _ in range(n):
        one_tick()


run(500)  # unlocked first
for i in range(8):
    seen[i] = 0


def locked_run(n):
    # in a function: a module-level name stored between the two mem_alloc()
    # reads could grow the globals dict and show up as an allocation
    import micropython

    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    micropython.heap_lock()
    try:
        run(n)
    finally:
        micropython.heap_unlock()
    grown = gc.mem_alloc() - before
    gc.enable()
    return grown


delta = 0
if IS_MICROPYTHON:
    delta = locked_run(3000)
else:
    run(3000)
result = "RESULT %d %d %d %d %s" % (st[0], delta, st[1], st[2], " ".join([str(x) for x in seen]))
print(result)
'''


def test_step_allocates_nothing_and_agrees_with_cpython(mpvm, tmp_path):
    import os
    import shutil

    import mpvm as harness

    stage = harness.stage_tree(tmp_path / "stage", boards=())
    here = os.path.dirname(os.path.abspath(__file__))
    shutil.copy(os.path.join(here, "thermal_fake_hal.py"), str(stage / "thermal_fake_hal.py"))
    r = mpvm.run("from thermal_fake_hal import ThermalFakeHal\n" + VM_BODY, timeout=180,
                 stage=stage).check()
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, r.stdout
    parts = line[0].split()
    assert int(parts[1]) == 3500
    assert int(parts[2]) == 0, "SensorBank.step allocated %s bytes" % parts[2]
    assert int(parts[4]) > 50  # state changes happened while locked
    seen = [int(x) for x in parts[5:]]
    for s in (SENSOR_OK, SENSOR_STALE, SENSOR_OPEN, SENSOR_SHORT, SENSOR_RANGE):
        assert seen[s], (s, seen)
    g = {"ThermalFakeHal": ThermalFakeHal}
    exec(VM_BODY, g)
    mine = g["result"].split()
    assert parts[3] == mine[3] and parts[4] == mine[4], (line[0], g["result"])
