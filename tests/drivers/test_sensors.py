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
