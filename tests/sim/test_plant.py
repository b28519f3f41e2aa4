"""The sim board's physics: rail timing, fans, thermal steady states, faults."""

import pytest

from metal.boards.sim.board import make_config
from metal.boards.sim.plant import Physics, Plant
from metal.core.proto import (
    FAULT_CLEAR,
    FAULT_DOOR,
    FAULT_ESTOP,
    FAULT_FAN_STALL,
    FAULT_PG_GLITCH,
    FAULT_RAIL_SHORT,
    FAULT_SENSOR_OPEN,
    FAULT_SENSOR_SHORT,
    FAULT_SENSOR_STUCK,
    FAULT_TAMPER,
    R_INVALID_ARGUMENT,
    R_OK,
    R_UNKNOWN_TARGET,
)

MAIN, P5V, P3V3, P1V8, CORE, FANS = range(6)
CPU, MEMORY, IO = range(3)
CPU_FAN0, CPU_FAN1, MEM_FAN, IO_FAN = range(4)
CH_TAMPER, CH_LOCK, CH_LOCK_SENSE, CH_DOOR, CH_ESTOP = 16, 17, 18, 19, 20
MINUTE_MS = 60000


@pytest.fixture
def plant():
    return Plant(make_config())


def power_all(p):
    """Enable every rail and let the tree come up."""
    for i in range(p.n_rails):
        p.set_rail_enable(i, 1)
    p.step(200)
    assert all(p.rail_power_good(i) for i in range(p.n_rails))


def fans(p, duty):
    for i in range(p.n_fans):
        p.set_fan_duty(i, duty)


def first_ms(p, cond, limit_ms=1000):
    """Step 1 ms at a time; the first elapsed ms at which cond() holds."""
    for t in range(1, limit_ms + 1):
        p.step(1)
        if cond():
            return t
    return None


# -- rails ---------------------------------------------------------------------


@pytest.mark.parametrize("rail,nominal,t90,pg_ms", [
    # ramp 10 ms: 90 % at 9 ms, pg delay 5 ms
    (MAIN, 12000, 9, 14),
    # ramp 8 ms: 1000 * k // 8 >= 900 first at k = 8 (7.2 rounded up), pg delay 4
    (CORE, 1000, 8, 12),
    # ramp 4 ms: 1800 * k // 4 >= 1620 first at k = 4, pg delay 2
    (P1V8, 1800, 4, 6),
])
def test_soft_start_and_power_good_are_exact_to_the_ms(plant, rail, nominal, t90, pg_ms):
    p = plant
    parent = p.r_parent[rail]
    while parent >= 0:  # bring the parents up first
        p.set_rail_enable(parent, 1)
        parent = p.r_parent[parent]
    p.step(200)
    p.set_rail_enable(rail, 1)
    assert p.r_mv[rail] == 0 and p.rail_power_good(rail) == 0
    good = nominal - nominal // 10
    assert first_ms(p, lambda: p.r_mv[rail] >= good) == t90
    assert p.rail_power_good(rail) == 0
    assert first_ms(p, lambda: p.rail_power_good(rail) == 1) == pg_ms - t90
    assert p.r_mv[rail] == nominal


def test_soft_start_is_a_linear_ramp(plant):
    p = plant
    p.set_rail_enable(MAIN, 1)
    seen = []
    for _ in range(12):
        p.step(1)
        seen.append(p.r_mv[MAIN])
    assert seen == [1200, 2400, 3600, 4800, 6000, 7200, 8400, 9600, 10800, 12000, 12000, 12000]


def test_power_good_lands_on_the_tick_after_its_ms(plant):
    # Stepped at the 10 ms tick, pg (due 14 ms after enable) shows at 20 ms.
    p = plant
    p.set_rail_enable(MAIN, 1)
    p.step(10)
    assert p.rail_power_good(MAIN) == 0 and p.r_mv[MAIN] == 12000
    p.step(10)
    assert p.rail_power_good(MAIN) == 1


def test_every_rail_reaches_power_good_inside_its_configured_timeout(plant):
    cfg = make_config()
    for i in range(plant.n_rails):
        assert plant.r_pg_at[i] < cfg.rails[i].pg_timeout_ms


def test_child_rail_needs_its_parent(plant):
    p = plant
    p.set_rail_enable(P5V, 1)
    p.step(100)
    assert p.r_mv[P5V] == 0 and p.rail_power_good(P5V) == 0
    p.set_rail_enable(MAIN, 1)
    t = first_ms(p, lambda: p.rail_power_good(P5V) == 1)
    # main reaches 90 % in its 9th ms, and p5v ramps from that same ms on
    # (parents step first): 8 ms of waiting + 5 ms to 90 % + 3 ms pg delay.
    assert t == 8 + 5 + 3


def test_disable_drops_power_good_at_once_and_voltage_decays(plant):
    p = plant
    power_all(p)
    p.set_rail_enable(MAIN, 0)
    assert p.rail_power_good(MAIN) == 0
    assert p.r_mv[MAIN] == 12000  # the capacitors hold it for a moment
    last = p.r_mv[MAIN]
    for _ in range(10):
        p.step(10)
        assert p.r_mv[MAIN] < last
        last = p.r_mv[MAIN]
    assert last < 1200
    p.step(300)
    assert p.r_mv[MAIN] == 0 and p.r_ma[MAIN] == 0
    # Its children lose their input and go down too, though still enabled.
    for child in (P5V, P3V3, P1V8, CORE, FANS):
        assert p.rail_power_good(child) == 0
        assert p.r_mv[child] == 0


def test_reenable_waits_the_full_power_good_delay(plant):
    p = plant
    p.set_rail_enable(MAIN, 1)
    p.step(50)
    p.set_rail_enable(MAIN, 0)
    p.step(1)
    assert p.r_mv[MAIN] > 10800
    p.set_rail_enable(MAIN, 1)
    assert first_ms(p, lambda: p.rail_power_good(MAIN) == 1) == 5


def test_rail_current_is_its_load_when_on_and_follows_set_rail_load(plant):
    p = plant
    power_all(p)
    assert p.r_ma[CORE] == 20000
    assert p.r_ma[P1V8] == 5000
    assert p.set_rail_load(CORE, 25000) == R_OK
    assert p.r_ma[CORE] == 25000
    assert p.set_rail_load(9, 1) == R_UNKNOWN_TARGET
    assert p.set_rail_load(CORE, 70000) == R_INVALID_ARGUMENT


def test_fan_supply_current_follows_fan_speed(plant):
    p = plant
    power_all(p)
    idle = p.r_ma[FANS]
    fans(p, 1000)
    p.step(30000)
    # 100 mA base + 2 x 600 + 2 x 300 mA at full speed
    assert idle == 100
    assert p.r_ma[FANS] == 100 + 600 + 600 + 300 + 300


def test_settled_rails_leave_the_active_set_and_a_change_brings_them_back(plant):
    p = plant
    power_all(p)
    assert p.r_active == 0  # nothing left to step: the rail loop is skipped
    mv, ma = list(p.r_mv), list(p.r_ma)
    p.step(1000)
    assert list(p.r_mv) == mv and list(p.r_ma) == ma
    p.set_rail_enable(P1V8, 0)
    assert p.r_active == (1 << P1V8) | (1 << CORE)  # the rail and its child
    p.step(500)
    assert p.r_mv[P1V8] == 0 and p.r_mv[CORE] == 0 and p.r_ma[CORE] == 0
    assert p.r_active == 0
    assert p.set_rail_load(P3V3, 2000) == R_OK  # a settled rail still follows its load
    assert p.r_ma[P3V3] == 2000
    p.set_rail_enable(P1V8, 1)
    p.step(100)
    assert p.rail_power_good(P1V8) and p.rail_power_good(CORE) and p.r_active == 0


def test_fan_supply_current_tracks_each_fan_step_while_the_tree_is_settled(plant):
    p = plant
    power_all(p)
    assert p.r_active == 0
    fans(p, 1000)
    full = (600, 600, 300, 300)
    for _ in range(300):
        p.step(10)
        want = 100 + sum(full[i] * p.fan_rpm(i) // p.f_max_rpm[i] for i in range(4))
        assert p.r_ma[FANS] == want
    assert p.r_active == 0


def test_fan_supply_switched_on_later_draws_what_the_fans_draw_now(plant):
    p = plant
    p.set_rail_enable(MAIN, 1)
    fans(p, 1000)  # the fans run from standby power; their rail is off
    p.step(30000)
    assert p.r_ma[FANS] == 0
    p.set_rail_enable(FANS, 1)
    p.step(50)
    assert p.rail_power_good(FANS) and p.r_ma[FANS] == 100 + 600 + 600 + 300 + 300


def test_a_stall_keeps_the_pulses_counted_before_it(plant):
    a = plant
    b = Plant(make_config())
    for p in (a, b):
        p.set_fan_duty(CPU_FAN0, 700)
        p.step(10000)
        p.take_pulses(CPU_FAN0)
        p.step(1230)  # pulses pile up, nobody takes them
    a.inject(FAULT_FAN_STALL, CPU_FAN0, 0)
    assert a.take_pulses(CPU_FAN0) == b.take_pulses(CPU_FAN0) > 0
    a.step(1000)
    assert a.take_pulses(CPU_FAN0) == 0


def test_pulses_stay_exact_over_minutes_without_being_taken():
    # the fastest fan a config allows: 65535 RPM, 8 pulses per revolution
    from metal.core.config import BoardConfig, Fan, Zone
    cfg = BoardConfig("tiny", "0", fans=(Fan("f", 0, 0, 0, 65535, pulses_per_rev=8),),
                      zones=(Zone("z", 40000),))
    p = Plant(cfg)
    p.set_fan_duty(0, 1000)
    p.step(60000)
    assert p.fan_rpm(0) == 65535
    p.take_pulses(0)
    for _ in range(10):
        p.step(MINUTE_MS)
    assert p.take_pulses(0) == 10 * 65535 * 8
    assert all(-(1 << 30) < x < (1 << 30) for x in p.f_pulse_acc)


# -- fans ----------------------------------------------------------------------------


def test_fan_spin_up_reaches_63_percent_in_one_time_constant(plant):
    p = plant
    p.set_fan_duty(CPU_FAN0, 1000)
    for _ in range(100):  # 1 s at the 10 ms tick
        p.step(10)
    frac = p.fan_rpm(CPU_FAN0) * 1000 // 12000
    assert 620 <= frac <= 645
    p.step(30000)
    assert p.fan_rpm(CPU_FAN0) == 12000  # converges exactly, no rounding stall


def test_fan_speed_settles_exactly_at_duty_times_max(plant):
    p = plant
    p.set_fan_duty(MEM_FAN, 537)
    p.step(20000)
    assert p.fan_rpm(MEM_FAN) == 537 * 5000 // 1000
    p.set_fan_duty(MEM_FAN, 100)
    p.step(30000)
    assert p.fan_rpm(MEM_FAN) == 500


def test_fan_coasts_down_slower_than_it_spins_up(plant):
    p = plant
    p.set_fan_duty(CPU_FAN0, 1000)
    p.step(20000)
    p.set_fan_duty(CPU_FAN0, 0)
    p.step(1000)
    # tau 2 s: about 61 % of full speed left after 1 s
    assert 7000 < p.fan_rpm(CPU_FAN0) < 7600


def test_duty_is_clamped(plant):
    p = plant
    p.set_fan_duty(IO_FAN, 5000)
    assert p.f_duty[IO_FAN] == 1000
    p.set_fan_duty(IO_FAN, -3)
    assert p.f_duty[IO_FAN] == 0
    assert p.set_fan_duty(7, 10) == R_UNKNOWN_TARGET


def test_tach_pulses_count_revolutions_with_fractions_kept(plant):
    p = plant
    p.set_fan_duty(CPU_FAN0, 100)  # 1200 RPM -> 40 pulses/s at 2 per rev
    p.set_fan_duty(MEM_FAN, 333)  # 1665 RPM -> 55.5 pulses/s
    p.step(30000)
    assert p.fan_rpm(CPU_FAN0) == 1200 and p.fan_rpm(MEM_FAN) == 1665
    p.take_pulses(CPU_FAN0)
    p.take_pulses(MEM_FAN)
    total0 = 0
    total2 = 0
    for _ in range(1000):  # 10 s of ticks
        p.step(10)
        total0 += p.take_pulses(CPU_FAN0)
        total2 += p.take_pulses(MEM_FAN)
    assert total0 == 400
    assert 554 <= total2 <= 556
    assert p.take_pulses(CPU_FAN0) == 0  # taking resets the count


# -- thermal ------------------------------------------------------------------------


def run_minutes(p, minutes):
    for _ in range(minutes):
        p.step(MINUTE_MS)


def warm(p, cpu, memory, io, duty):
    """Power up, spin the fans to ``duty`` and put the zones at a warm state
    (the long runs from cold are done once, in the first test)."""
    power_all(p)
    fans(p, duty)
    p.step(15000)
    p.set_zone_temp(CPU, cpu)
    p.set_zone_temp(MEMORY, memory)
    p.set_zone_temp(IO, io)


def test_half_airflow_settles_cpu_near_60c_from_cold(plant):
    p = plant
    power_all(p)
    fans(p, 500)
    run_minutes(p, 10)
    assert 59000 <= p.z_mc[CPU] <= 61000
    # the other zones sit well below their sensors' warning limits
    assert 43000 <= p.z_mc[MEMORY] <= 47000
    assert 43000 <= p.z_mc[IO] <= 47000
    # and it is a steady state: another minute changes nothing much
    before = list(p.z_mc)
    run_minutes(p, 1)
    assert all(abs(a - b) < 200 for a, b in zip(p.z_mc, before))


def test_full_airflow_settles_well_below_critical(plant):
    p = plant
    warm(p, 60000, 45000, 45000, 1000)
    run_minutes(p, 5)
    assert 42000 <= p.z_mc[CPU] <= 46000
    assert max(p.sensor_mc(i) for i in range(p.n_sensors)) < 50000


def test_stalled_fans_overheat_the_cpu_within_minutes(plant):
    p = plant
    warm(p, 60000, 45000, 45000, 500)
    p.inject(FAULT_FAN_STALL, CPU_FAN0, 0)
    p.inject(FAULT_FAN_STALL, CPU_FAN1, 0)
    t_ms = 0
    while p.z_mc[CPU] < 95000 and t_ms < 10 * MINUTE_MS:
        p.step(1000)
        t_ms += 1000
    # thermal mass: not instant, but within a few minutes (about 2.4)
    assert 2 * MINUTE_MS <= t_ms <= 3 * MINUTE_MS
    assert p.z_mc[MEMORY] < 46000  # the other zones keep their airflow


def test_fans_at_zero_also_overheat(plant):
    p = plant
    warm(p, 60000, 45000, 45000, 0)
    run_minutes(p, 5)
    assert p.z_mc[CPU] > 95000
    assert p.z_mc[MEMORY] > 85000


def test_no_power_no_heat(plant):
    p = plant
    fans(p, 500)
    run_minutes(p, 2)
    assert list(p.z_mc) == [25000, 25000, 25000]


def test_cooling_back_to_ambient_after_power_off(plant):
    p = plant
    warm(p, 60000, 45000, 45000, 500)
    for i in reversed(range(p.n_rails)):
        p.set_rail_enable(i, 0)
    run_minutes(p, 10)
    assert all(abs(t - 25000) < 500 for t in p.z_mc)


def test_ambient_shifts_the_steady_state(plant):
    p = plant
    assert p.set_ambient(35000) == R_OK
    assert p.set_ambient(100000) == R_INVALID_ARGUMENT
    warm(p, 60000, 45000, 45000, 500)
    run_minutes(p, 8)
    assert 69000 <= p.z_mc[CPU] <= 71000


def test_sensors_read_their_zone_plus_offset(plant):
    p = plant
    p.set_zone_temp(CPU, 50000)
    p.set_zone_temp(IO, 40000)
    assert p.sensor_mc(0) == 52000  # cpu0_die +2 °C
    assert p.sensor_mc(2) == 54000  # cpu_vrm +4 °C
    assert p.sensor_mc(7) == 40000  # io_board, no offset
    assert p.set_zone_temp(5, 1) == R_UNKNOWN_TARGET


def test_physics_for_unknown_names_falls_back_to_defaults():
    from metal.core.config import BoardConfig, Fan, Rail, Sensor, SENSOR_NTC, Zone
    cfg = BoardConfig("tiny", "0", rails=(Rail("r", 0, 3300),),
                      sensors=(Sensor("s", SENSOR_NTC, 0, 0, 60000, 70000),),
                      fans=(Fan("f", 0, 0, 0, 3000),), zones=(Zone("z", 40000),))
    p = Plant(cfg)
    p.set_rail_enable(0, 1)
    p.set_fan_duty(0, 500)
    p.step(5000)
    assert p.rail_power_good(0) == 1 and p.fan_rpm(0) > 0
    assert p.sensor_mc(0) == p.z_mc[0]


def test_noise_is_bounded_deterministic_and_off_by_default(plant):
    p = plant
    p.step(100)
    assert p.sensor_mc(4) == 25000
    assert p.set_noise(200, seed=7) == R_OK
    a = []
    for _ in range(200):
        p.step(10)
        a.append(p.sensor_mc(4) - 25000)
    assert all(-200 <= x <= 200 for x in a)
    assert len(set(a)) > 50
    q = Plant(make_config())
    q.step(100)
    q.set_noise(200, seed=7)
    b = []
    for _ in range(200):
        q.step(10)
        b.append(q.sensor_mc(4) - 25000)
    assert a == b
    assert p.set_noise(10**6) == R_INVALID_ARGUMENT


# -- digital lines and the lock ---------------------------------------------------------


def test_inputs_start_at_their_pull_and_outputs_at_their_initial_level(plant):
    p = plant
    assert p.digital_level(8) == 1  # gpio_in_0, pull-up
    assert p.digital_level(10) == 0  # gpio_in_2, pull-down
    assert p.digital_level(2) == 1  # bmc_reset_n, initial 1
    assert p.digital_level(0) == 0
    for ch in (CH_TAMPER, CH_LOCK, CH_LOCK_SENSE, CH_DOOR, CH_ESTOP):
        assert p.digital_level(ch) == 0


def test_outputs_and_inputs_are_written_from_their_own_side_only(plant):
    p = plant
    assert p.set_output(0, 1) == R_OK and p.digital_level(0) == 1
    assert p.set_output(8, 0) == R_UNKNOWN_TARGET and p.digital_level(8) == 1
    assert p.set_input(8, 0) == R_OK and p.digital_level(8) == 0
    assert p.set_input(0, 0) == R_UNKNOWN_TARGET and p.digital_level(0) == 1
    assert p.set_input(99, 1) == R_UNKNOWN_TARGET
    assert p.digital_level(99) == 0


def test_lock_sense_follows_the_actuator_after_100ms(plant):
    p = plant
    p.set_output(CH_LOCK, 1)
    assert first_ms(p, lambda: p.digital_level(CH_LOCK_SENSE) == 1) == 100
    p.set_output(CH_LOCK, 0)
    p.step(99)
    assert p.digital_level(CH_LOCK_SENSE) == 1
    p.step(1)
    assert p.digital_level(CH_LOCK_SENSE) == 0


def test_a_short_lock_pulse_does_not_move_the_bolt(plant):
    p = plant
    p.set_output(CH_LOCK, 1)
    p.step(60)
    p.set_output(CH_LOCK, 0)
    p.step(60)
    p.set_output(CH_LOCK, 1)
    p.step(60)
    assert p.digital_level(CH_LOCK_SENSE) == 0
    p.step(40)
    assert p.digital_level(CH_LOCK_SENSE) == 1


# -- faults ---------------------------------------------------------------------------


def test_sensor_stuck_reads_its_value_until_cleared(plant):
    p = plant
    assert p.inject(FAULT_SENSOR_STUCK, 3, 99000) == R_OK
    p.step(1000)
    assert p.sensor_mc(3) == 99000
    assert p.sensor_mc(4) == 25000  # the neighbour is unaffected
    assert p.inject(FAULT_CLEAR, 3, FAULT_SENSOR_STUCK) == R_OK
    assert p.sensor_mc(3) == 26000


def test_sensor_open_and_short_are_flagged_and_clear(plant):
    p = plant
    assert p.inject(FAULT_SENSOR_OPEN, 0, 0) == R_OK
    assert p.inject(FAULT_SENSOR_SHORT, 7, 0) == R_OK
    assert p.s_fault[0] == FAULT_SENSOR_OPEN and p.s_fault[7] == FAULT_SENSOR_SHORT
    # any sensor kind clears the sensor's fault slot
    assert p.inject(FAULT_CLEAR, 0, FAULT_SENSOR_SHORT) == R_OK
    assert p.s_fault[0] == 0 and p.s_fault[7] == FAULT_SENSOR_SHORT


def test_fan_stall_stops_the_rotor_and_the_pulses(plant):
    p = plant
    p.set_fan_duty(IO_FAN, 800)
    p.step(10000)
    p.take_pulses(IO_FAN)
    assert p.inject(FAULT_FAN_STALL, IO_FAN, 0) == R_OK
    assert p.fan_rpm(IO_FAN) == 0
    p.step(2000)
    assert p.fan_rpm(IO_FAN) == 0 and p.take_pulses(IO_FAN) == 0
    assert p.inject(FAULT_CLEAR, IO_FAN, FAULT_FAN_STALL) == R_OK
    p.step(1000)
    assert 2400 < p.fan_rpm(IO_FAN) < 2600  # spinning up again, tau 1 s toward 4000
    assert p.take_pulses(IO_FAN) > 0


def test_rail_short_collapses_voltage_overcurrents_and_drops_pg(plant):
    p = plant
    power_all(p)
    assert p.inject(FAULT_RAIL_SHORT, P1V8, 0) == R_OK
    # at once, without waiting for a step
    assert p.rail_power_good(P1V8) == 0
    assert p.r_mv[P1V8] == 90
    cfg = make_config()
    assert p.r_ma[P1V8] == 2 * cfg.rails[P1V8].overcurrent_ma
    assert p.r_ma[P1V8] > cfg.rails[P1V8].overcurrent_ma
    p.step(10)
    # the rail it feeds loses its input
    assert p.rail_power_good(CORE) == 0
    p.step(200)
    assert p.r_mv[CORE] == 0
    assert p.rail_power_good(P3V3) == 1  # upstream is unaffected
    assert p.inject(FAULT_CLEAR, P1V8, FAULT_RAIL_SHORT) == R_OK
    # it ramps again from the collapsed voltage: 90 % within the 4 ms ramp, +2 ms pg
    t = first_ms(p, lambda: p.rail_power_good(P1V8) == 1)
    assert t == 6
    assert p.r_ma[P1V8] == 5000
    p.step(50)
    assert p.rail_power_good(CORE) == 1


def test_short_on_a_disabled_rail_shows_when_enabled(plant):
    p = plant
    assert p.inject(FAULT_RAIL_SHORT, MAIN, 0) == R_OK
    assert p.r_ma[MAIN] == 0
    p.set_rail_enable(MAIN, 1)
    p.step(100)
    assert p.rail_power_good(MAIN) == 0 and p.r_ma[MAIN] == 40000


def test_pg_glitch_masks_power_good_for_its_duration(plant):
    p = plant
    power_all(p)
    assert p.inject(FAULT_PG_GLITCH, P3V3, 25) == R_OK
    assert p.rail_power_good(P3V3) == 0
    assert p.r_mv[P3V3] == 3300  # only the signal glitches
    assert first_ms(p, lambda: p.rail_power_good(P3V3) == 1) == 25
    assert p.inject(FAULT_PG_GLITCH, P3V3, 0) == R_INVALID_ARGUMENT
    assert p.inject(FAULT_PG_GLITCH, P3V3, 60001) == R_INVALID_ARGUMENT


def test_pg_glitch_clears_early_on_request(plant):
    p = plant
    power_all(p)
    p.inject(FAULT_PG_GLITCH, MAIN, 5000)
    p.step(100)
    assert p.rail_power_good(MAIN) == 0
    assert p.inject(FAULT_CLEAR, MAIN, FAULT_PG_GLITCH) == R_OK
    assert p.rail_power_good(MAIN) == 1


@pytest.mark.parametrize("kind,ch", [
    (FAULT_TAMPER, CH_TAMPER), (FAULT_ESTOP, CH_ESTOP), (FAULT_DOOR, CH_DOOR),
])
def test_security_switch_faults(plant, kind, ch):
    p = plant
    assert p.inject(kind, 0, 1) == R_OK
    assert p.digital_level(ch) == 1
    assert p.inject(kind, 0, 0) == R_OK
    assert p.digital_level(ch) == 0
    assert p.inject(kind, -1, 1) == R_OK
    assert p.digital_level(ch) == 1
    assert p.inject(FAULT_CLEAR, 0, kind) == R_OK
    assert p.digital_level(ch) == 0
    assert p.inject(kind, 0, 2) == R_INVALID_ARGUMENT
    assert p.inject(kind, 1, 1) == R_UNKNOWN_TARGET


def test_clear_all_undoes_every_fault(plant):
    p = plant
    power_all(p)
    fans(p, 500)
    p.step(5000)
    p.inject(FAULT_SENSOR_STUCK, 1, 120000)
    p.inject(FAULT_SENSOR_OPEN, 4, 0)
    p.inject(FAULT_FAN_STALL, CPU_FAN1, 0)
    p.inject(FAULT_RAIL_SHORT, P5V, 0)
    p.inject(FAULT_PG_GLITCH, MAIN, 10000)
    p.inject(FAULT_TAMPER, 0, 1)
    p.inject(FAULT_ESTOP, 0, 1)
    p.inject(FAULT_DOOR, 0, 1)
    p.step(100)
    assert p.inject(FAULT_CLEAR, -1, 0) == R_OK
    assert list(p.s_fault) == [0] * 8
    assert p.sensor_mc(1) != 120000
    assert list(p.f_stalled) == [0] * 4
    assert list(p.r_short) == [0] * 6 and list(p.r_glitch_ms) == [0] * 6
    assert p.rail_power_good(MAIN) == 1
    for ch in (CH_TAMPER, CH_ESTOP, CH_DOOR):
        assert p.digital_level(ch) == 0
    p.step(500)
    assert all(p.rail_power_good(i) for i in range(6))
    assert p.fan_rpm(CPU_FAN1) > 0


@pytest.mark.parametrize("kind,target,value,code", [
    (FAULT_SENSOR_STUCK, 8, 50000, R_UNKNOWN_TARGET),
    (FAULT_SENSOR_STUCK, -1, 50000, R_UNKNOWN_TARGET),
    (FAULT_SENSOR_STUCK, 0, 250000, R_INVALID_ARGUMENT),
    (FAULT_SENSOR_OPEN, 8, 0, R_UNKNOWN_TARGET),
    (FAULT_FAN_STALL, 4, 0, R_UNKNOWN_TARGET),
    (FAULT_RAIL_SHORT, 6, 0, R_UNKNOWN_TARGET),
    (FAULT_PG_GLITCH, -2, 10, R_UNKNOWN_TARGET),
    (99, 0, 0, R_INVALID_ARGUMENT),
    (FAULT_CLEAR, 0, 0, R_INVALID_ARGUMENT),  # which table? ambiguous
    (FAULT_CLEAR, 0, 99, R_INVALID_ARGUMENT),
    (FAULT_CLEAR, 9, FAULT_SENSOR_STUCK, R_UNKNOWN_TARGET),
    (FAULT_CLEAR, 4, FAULT_FAN_STALL, R_UNKNOWN_TARGET),
    (FAULT_CLEAR, 6, FAULT_RAIL_SHORT, R_UNKNOWN_TARGET),
    (FAULT_CLEAR, 1, FAULT_TAMPER, R_UNKNOWN_TARGET),
])
def test_bad_fault_requests_are_refused_without_effect(plant, kind, target, value, code):
    p = plant
    before = (bytes(p.s_fault), bytes(p.f_stalled), bytes(p.r_short), bytes(p.d_level))
    assert p.inject(kind, target, value) == code
    assert (bytes(p.s_fault), bytes(p.f_stalled), bytes(p.r_short), bytes(p.d_level)) == before


# -- determinism and ranges ------------------------------------------------------------


def test_large_steps_equal_many_small_ones():
    a = Plant(make_config())
    b = Plant(make_config())
    for p in (a, b):
        power_all(p)
        fans(p, 700)
    a.step(30000)
    for _ in range(3000):
        b.step(10)
    assert list(a.z_mc) == list(b.z_mc)
    assert [a.fan_rpm(i) for i in range(4)] == [b.fan_rpm(i) for i in range(4)]


def test_extreme_conditions_stay_in_the_small_int_range():
    # Hottest ambient, every load at its limit, fans stalled, rails shorted
    # and recovered: every state value stays well inside 30 bits. (The
    # intermediates are proven by the heap_lock run on the 32-bit VM in
    # test_sim_hal.py.)
    p = Plant(make_config())
    p.set_ambient(60000)
    for i in range(6):
        p.set_rail_load(i, 65535)
    power_all(p)
    for f in range(4):
        p.inject(FAULT_FAN_STALL, f, 0)
    p.set_zone_temp(CPU, 240000)
    run_minutes(p, 1)
    assert p.z_mc[CPU] == 250000  # clamped
    for i in range(6):
        p.inject(FAULT_RAIL_SHORT, i, 0)
    p.step(1000)
    limit = 1 << 30
    for arr in (p.z_mc, p.z_acc, p.z_heat_mw, p.r_mv, p.r_ma, p.f_rpm_m, p.f_pulse_acc):
        assert all(-limit < x < limit for x in arr)


def test_physics_validation():
    ph = Physics()
    ph.zones = {"cpu": (60000, 2000, 2000)}
    with pytest.raises(ValueError):
        Plant(make_config(), ph)
    ph = Physics()
    ph.fan_tau_up_ms = 5
    with pytest.raises(ValueError):
        Plant(make_config(), ph)
