"""The sim board's BoardConfig: shape, channel map, limits, interlock set."""

from metal.boards.sim import board
from metal.boards.sim.board import CONFIG, make_config
from metal.boards.sim.plant import Plant
from metal.core.config import (
    ACT_FANS_MAX,
    ACT_LOCKOUT,
    ACT_OVERHEAT,
    ACT_POWER_DOWN,
    BoardConfig,
    CMP_GE,
    DIR_IN,
    DIR_OUT,
    SENSOR_LM75,
    SENSOR_NTC,
    SENSOR_TMP117,
)
from metal.core.events import EventQueue
from metal.core.interlocks.table import InterlockTable
from metal.core.proto import RF_OVERCURRENT
from metal.core.signals import (
    G_ESTOP,
    SIG_FAN_STALLED,
    SIG_FAN_STATE,
    SIG_GLOBAL,
    SIG_RAIL_FAULT,
    SIG_TEMP,
    Signals,
)


def test_identity_and_counts():
    c = make_config()
    assert isinstance(c, BoardConfig)
    assert (c.name, c.fw_version) == ("sim", "0.1.0")
    assert len(c.zones) == 3
    assert len(c.sensors) == 8
    assert len(c.fans) == 4
    assert len(c.rails) == 6
    assert len(c.gpio) == 16


def test_make_config_builds_a_fresh_copy():
    a = make_config()
    assert a is not CONFIG and a.sensors[0] is not CONFIG.sensors[0]
    assert [s.name for s in a.sensors] == [s.name for s in CONFIG.sensors]


def test_sensor_kinds_channels_and_limits():
    c = CONFIG
    kinds = [s.kind for s in c.sensors]
    assert kinds.count(SENSOR_TMP117) >= 1 and kinds.count(SENSOR_LM75) >= 1
    assert kinds.count(SENSOR_NTC) == 6
    ntc_ch = sorted(s.ch for s in c.sensors if s.kind == SENSOR_NTC)
    assert ntc_ch == list(range(6))
    i2c_ch = [s.ch for s in c.sensors if s.kind != SENSOR_NTC]
    assert len(set(i2c_ch)) == len(i2c_ch)
    assert {s.zone for s in c.sensors} == {0, 1, 2}
    for s in c.sensors:
        assert s.warn_mc < s.crit_mc
        if c.zones[s.zone].name == "cpu":
            assert s.crit_mc == 95000
        else:
            assert s.crit_mc < 95000


def test_fans():
    c = CONFIG
    assert sorted(f.pwm_ch for f in c.fans) == [0, 1, 2, 3]
    assert sorted(f.tach_ch for f in c.fans) == [0, 1, 2, 3]
    for f in c.fans:
        assert f.pulses_per_rev == 2
        assert f.max_rpm in (12000, 5000)
    # every zone has airflow
    assert {f.zone for f in c.fans} == {0, 1, 2}


def test_power_tree():
    c = CONFIG
    names = [r.name for r in c.rails]
    assert names == ["p12v_main", "p5v", "p3v3", "p1v8", "p1v0_core", "p12v_fans"]
    parents = [names[r.parent] if r.parent >= 0 else None for r in c.rails]
    assert parents == [None, "p12v_main", "p5v", "p3v3", "p1v8", "p12v_main"]
    assert c.rails[4].overcurrent_ma == 30000
    assert sorted(r.ch for r in c.rails) == list(range(6))
    for r in c.rails:
        assert r.pg_timeout_ms > 0 and r.overcurrent_ma > 0


def test_plant_loads_sit_below_the_overcurrent_limits_and_shorts_above():
    p = Plant(make_config())
    for i in range(6):
        p.set_rail_enable(i, 1)
    p.step(200)
    for i, r in enumerate(CONFIG.rails):
        assert p.r_ma[i] < r.overcurrent_ma
        assert p.r_short_ma[i] > r.overcurrent_ma


def test_gpio_and_security_channels_do_not_overlap():
    c = CONFIG
    gpio_ch = [g.ch for g in c.gpio]
    assert sorted(gpio_ch) == list(range(16))
    dirs = [g.direction for g in c.gpio]
    assert dirs.count(DIR_OUT) >= 4 and dirs.count(DIR_IN) >= 4
    names = [g.name for g in c.gpio]
    assert len(set(names)) == 16
    assert "led_status" in names and "bmc_reset_n" in names and "gpio_in_0" in names
    sec = c.security
    sec_ch = [sec.tamper_ch, sec.lock_ch, sec.lock_sense_ch, sec.door_ch, sec.estop_ch]
    assert sec_ch == [board.CH_TAMPER, board.CH_LOCK, board.CH_LOCK_SENSE, board.CH_DOOR,
                      board.CH_ESTOP]
    assert len(set(sec_ch)) == 5
    assert not set(sec_ch) & set(gpio_ch)  # no GPIO command reaches the lock
    assert sec.lock_timeout_ms > 100  # the plant's bolt travel fits in the timeout


def test_limits():
    lim = CONFIG.limits
    assert lim.tick_us == 10000
    assert lim.heartbeat_timeout_ms == 2000
    assert lim.stale_ticks == 5
    assert lim.overheat_timer_ms == 60000
    assert lim.telemetry_every == 10


def _rows(signal):
    return [r for r in CONFIG.interlocks if r.signal == signal]


def test_every_sensor_has_a_critical_overheat_interlock():
    for i, s in enumerate(CONFIG.sensors):
        rows = _rows((SIG_TEMP, i))
        assert len(rows) == 1, s.name
        r = rows[0]
        assert (r.cmp, r.threshold, r.hysteresis, r.delay_ticks) == (CMP_GE, s.crit_mc, 3000, 3)
        assert r.action == ACT_OVERHEAT and not r.latch


def test_every_fan_has_a_stall_interlock():
    for i, f in enumerate(CONFIG.fans):
        rows = _rows((SIG_FAN_STALLED, i))
        assert len(rows) == 1, f.name
        r = rows[0]
        assert (r.cmp, r.threshold, r.latch, r.action) == (CMP_GE, 1, False, ACT_FANS_MAX)
    # nothing watches the state code itself (SPINUP/OFF are not faults)
    assert not [r for r in CONFIG.interlocks if r.signal[0] == SIG_FAN_STATE]


def test_every_rail_fault_powers_down_latched():
    for i, rail in enumerate(CONFIG.rails):
        rows = _rows((SIG_RAIL_FAULT, i))
        assert len(rows) == 1, rail.name
        r = rows[0]
        assert (r.cmp, r.threshold, r.latch, r.action) == (CMP_GE, 1, True, ACT_POWER_DOWN)


def test_estop_locks_out_latched():
    rows = _rows((SIG_GLOBAL, G_ESTOP))
    assert len(rows) == 1
    r = rows[0]
    assert (r.cmp, r.threshold, r.latch, r.action) == (CMP_GE, 1, True, ACT_LOCKOUT)


def test_interlock_table_accepts_the_set_and_trips_as_meant():
    c = make_config()
    sig = Signals(len(c.sensors), len(c.fans), len(c.rails))
    ev = EventQueue()
    t = InterlockTable(c.interlocks, sig, ev)
    assert t.n == len(c.interlocks) == 8 + 4 + 6 + 1
    # quiet board: all sensors warm, fans OK, no faults
    for i in range(8):
        sig.v[sig.index(SIG_TEMP, i)] = 50000
    for _ in range(5):
        assert t.evaluate() == 0
    # cpu0 at its critical limit trips on the 4th tick (delay 3)
    sig.v[sig.index(SIG_TEMP, 0)] = 95000
    assert [t.evaluate() & 1 for _ in range(4)] == [0, 0, 0, 1]
    assert t.overheat == 0 and t.fans_max == 1
    # and clears only below crit - 3 °C
    sig.v[sig.index(SIG_TEMP, 0)] = 92500
    assert t.evaluate() & 1
    sig.v[sig.index(SIG_TEMP, 0)] = 91999
    assert not t.evaluate() & 1
    # a rail fault powers down and stays latched
    rail_row = 12 + 4
    sig.v[sig.index(SIG_RAIL_FAULT, 4)] = RF_OVERCURRENT
    t.evaluate()
    assert t.new_power_down == 1 and t.latched >> rail_row & 1
    sig.v[sig.index(SIG_RAIL_FAULT, 4)] = 0
    t.evaluate()
    assert t.latched >> rail_row & 1
    # e-stop locks out
    sig.v[sig.index(SIG_GLOBAL, G_ESTOP)] = 1
    t.evaluate()
    assert t.lockout == 1
    # a stalled fan forces full airflow at once and releases when it turns
    fan_row = 8 + 2
    sig.v[sig.index(SIG_FAN_STALLED, 2)] = 1
    assert t.evaluate() >> fan_row & 1
    sig.v[sig.index(SIG_FAN_STALLED, 2)] = 0
    assert not t.evaluate() >> fan_row & 1
