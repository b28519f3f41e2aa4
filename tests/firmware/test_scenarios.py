"""End-to-end safety scenarios of the composed firmware on the sim board.

Each test runs ``Firmware`` over ``SimHal`` on a simulated 10 ms clock with a
host stand-in on the serial link (``harness.SimBoard``), injects a physical
fault into the plant and checks, tick by tick, what the issue's "must show"
list asks for: the exact tick a protection acts, the order rails go down in,
the events and telemetry the host sees, and which commands are refused while
the condition holds.

Tick arithmetic: a fault injected into the plant between ticks is first seen
by the next tick (index 0 of a ``trace`` started at the injection).
"""

import pytest

from metal.boards.sim.board import (
    CRIT_DELAY_TICKS,
    CRIT_HYSTERESIS_MC,
    FAN_SPINUP_MS,
    Z_CPU,
    Z_IO,
    Z_MEMORY,
    make_config,
)
from metal.core.config import ACT_FANS_MAX, ACT_LOCKOUT, ACT_POWER_DOWN, SAFE_HOLD, SAFE_POWER_DOWN
from metal.core.drivers.fans import WINDOW_MS
from metal.core.drivers.thermal import MODE_AUTO, MODE_FAILSAFE, MODE_MAX
from metal.core.proto import (
    EV_ESTOP,
    EV_FAN_STATE,
    EV_HOST_LOST,
    EV_INTERLOCK_CLEAR,
    EV_INTERLOCK_TRIP,
    EV_OVERHEAT_CANCEL,
    EV_OVERHEAT_POWER_DOWN,
    EV_OVERHEAT_START,
    EV_SAFE_STATE,
    EV_SENSOR_STATE,
    EV_TAMPER,
    EV_ZONE_MODE,
    FAN_OK,
    FAN_STALLED,
    FAULT_CLEAR,
    FAULT_ESTOP,
    FAULT_FAN_STALL,
    FAULT_PG_GLITCH,
    FAULT_RAIL_SHORT,
    FAULT_SENSOR_OPEN,
    FAULT_SENSOR_SHORT,
    FAULT_SENSOR_STUCK,
    FAULT_TAMPER,
    OP_ARM,
    OP_ESTOP,
    OP_INTERLOCK_CLEAR,
    OP_POWER_ON,
    OP_RAIL_OFF,
    OP_RAIL_ON,
    OP_SIM_FAULT,
    OP_TAMPER_CLEAR,
    PWR_OFF,
    PWR_ON,
    R_OK,
    R_REJECTED_BY_INTERLOCK,
    RAIL_FAULT,
    RAIL_OFF,
    RAIL_SEQ_OFF,
    RF_OVERCURRENT,
    RF_PARENT,
    RF_PG_LOST,
    RF_SHED,
    SENSOR_OK,
    SENSOR_OPEN,
    SENSOR_SHORT,
    SENSOR_STALE,
    STF_ARMED,
    STF_ESTOP,
    STF_FAILSAFE,
    STF_HOST_LOST,
    STF_LOCKOUT,
    STF_OVERHEAT,
    STF_TAMPER,
)
from metal.core.telemetry import TEMP_NONE

from .harness import TICK_MS, SimBoard, power_down_bound_ticks

CPU0_DIE, CPU1_DIE, CPU_VRM, DIMM_A, DIMM_B, IO_HUB, PSU_HOT, IO_BOARD = range(8)
CPU_FAN0, CPU_FAN1, MEM_FAN, IO_FAN = range(4)
P12V_MAIN, P5V, P3V3, P1V8, P1V0_CORE, P12V_FANS = range(6)
ALL_FULL = [1000, 1000, 1000, 1000]


def settled_board(config=None, **kw):
    """A connected board with every rail ON and every fan past its spin-up."""
    b = SimBoard(config, **kw)
    b.power_on()
    b.run(FAN_SPINUP_MS // TICK_MS + 100)
    assert all(s == FAN_OK for s in b.fw.fans.state)
    assert all(d < 1000 for d in b.fw.fans.duty)  # the controllers run the fans
    assert b.fw.interlocks.tripped == 0
    return b


def row(b, name):
    return b.fw.interlocks.names.index(name)


def first(seq, pred=bool):
    for i, x in enumerate(seq):
        if pred(x):
            return i
    return None


def subtree(config, rail):
    """``rail`` and every rail that depends on it."""
    out = {rail}
    for i in range(rail + 1, len(config.rails)):
        if config.rails[i].parent in out:
            out.add(i)
    return out


def assert_orderly_down(b, since, rails, reason):
    """Rails ``rails`` went down one at a time, highest index first, through
    SEQ_OFF, each with ``reason``; the enable outputs fell in the same order."""
    order = sorted(rails, reverse=True)
    want = []
    for r in order:
        want += [(r, RAIL_SEQ_OFF, reason), (r, RAIL_OFF, reason)]
    assert b.rail_events_since(since) == want
    edges = b.enables_since(since)
    assert [(r, lvl) for _, r, lvl in edges] == [(r, 0) for r in order]
    assert [t for t, _, _ in edges] == sorted(t for t, _, _ in edges)


# -- 1. over-temperature -----------------------------------------------------------------


def test_overheat_trips_after_its_delay_and_expiry_powers_down_in_reverse_order():
    b = settled_board()
    fw = b.fw
    lim = b.config.limits
    crit = b.config.sensors[CPU0_DIE].crit_mc
    r = row(b, "cpu0_die_crit")
    sig = fw.signals.temp0 + CPU0_DIE
    t0 = b.tick
    temp = b.trace(lambda b: b.fw.signals.v[sig])
    tripped = b.trace(lambda b: b.fw.interlocks.tripped)
    duty = b.trace(lambda b: list(b.fw.fans.duty))

    assert b.plant.inject(FAULT_SENSOR_STUCK, CPU0_DIE, 100000) == R_OK
    b.run(20)
    cross = first(temp, lambda t: t >= crit)
    trip = first(tripped)
    assert cross == 0  # the stuck reading is seen by the very next tick
    assert trip - cross == CRIT_DELAY_TICKS
    assert tripped[trip] == 1 << r  # only this row: the other sensors read normal
    assert all(d != ALL_FULL for d in duty[:trip])
    assert duty[trip] == ALL_FULL  # fans to full in the trip tick itself
    t_trip = t0 + trip

    [ev] = b.events_of(EV_INTERLOCK_TRIP)
    assert (ev.tick, ev.source) == (t_trip, r) and ev.value >= crit
    [ev] = b.events_of(EV_OVERHEAT_START)
    assert (ev.tick, ev.source, ev.aux) == (t_trip, CPU0_DIE, lim.overheat_timer_ms)
    assert abs(ev.value - 100000) < 1000  # the sensor's reading (NTC table quantisation)
    modes = [(e.source, e.value) for e in b.events_of(EV_ZONE_MODE) if e.tick == t_trip]
    assert sorted(modes) == [(Z_CPU, MODE_MAX), (Z_MEMORY, MODE_MAX), (Z_IO, MODE_MAX)]
    tel = b.telemetry_since(t_trip + 1)
    assert tel and all(t.duty == ALL_FULL for t in tel)
    assert all(t.status & STF_OVERHEAT and t.tripped == 1 << r for t in tel)

    # The countdown: nothing happens to the rails for overheat_timer_ms ...
    b.run_until(lambda b: b.events_of(EV_OVERHEAT_POWER_DOWN), lim.overheat_timer_ms // TICK_MS + 5,
                "overheat power-down")
    [pd] = b.events_of(EV_OVERHEAT_POWER_DOWN)
    assert pd.tick == t_trip + lim.overheat_timer_ms // TICK_MS
    assert b.rail_events_since(t_trip) == []
    assert all(d == ALL_FULL for d in duty[trip:])

    # ... then an orderly power-down, deepest rail first, fans still at full.
    bound = power_down_bound_ticks(b.config)
    b.run(bound + 5)
    assert_orderly_down(b, pd.tick, range(6), RF_SHED)
    # the expiry tick asks for the power-down, the sequencer starts on the next
    first_down = min(t for t, _, _ in b.enables_since(pd.tick))
    assert first_down == pd.tick + 1
    last_off = max(t for t, _, _ in b.enables_since(pd.tick))
    assert last_off - pd.tick <= bound
    assert fw.power.power_state == PWR_OFF
    assert list(fw.fans.duty) == ALL_FULL
    assert b.last_telemetry().status & STF_OVERHEAT


def test_power_on_refused_while_the_expired_overheat_still_holds():
    """After the overheat power-down a POWER_ON must not bring the board back
    up while the sensor is still critical (nothing would power it down again:
    the timer does not restart while expired)."""
    b = settled_board()
    lim = b.config.limits
    b.plant.inject(FAULT_SENSOR_STUCK, CPU0_DIE, 100000)
    b.run_until(lambda b: b.events_of(EV_OVERHEAT_POWER_DOWN),
                lim.overheat_timer_ms // TICK_MS + 10, "overheat power-down")
    b.run_until(lambda b: b.fw.power.power_state == PWR_OFF, 50, "rails off")
    t = b.tick
    assert b.cmd(OP_POWER_ON) == R_REJECTED_BY_INTERLOCK
    assert b.cmd(OP_RAIL_ON, P12V_MAIN) == R_REJECTED_BY_INTERLOCK
    b.run(20)
    assert b.enables_since(t) == []
    # once the sensor reads normal again the overheat is cancelled and power-on works
    b.plant.inject(FAULT_CLEAR, CPU0_DIE, FAULT_SENSOR_STUCK)
    b.run_until(lambda b: b.events_of(EV_OVERHEAT_CANCEL), 20, "overheat cancel")
    b.run(1)
    assert b.cmd(OP_POWER_ON) == R_OK
    b.run_until(lambda b: b.fw.power.power_state == PWR_ON, 100, "rails on")


def test_overheat_expiry_cuts_a_power_up_in_progress_short():
    """POWER_ON is allowed while the timer runs (it only counts down); if the
    timer expires while that power-up is still sequencing, no further rail may
    be switched on after the expiry tick (found by the soak, seed 1)."""
    b = SimBoard()
    b.run(300)
    lim = b.config.limits
    t0 = b.tick
    b.plant.inject(FAULT_SENSOR_STUCK, CPU0_DIE, 100000)
    b.run(CRIT_DELAY_TICKS + 1)
    [start] = b.events_of(EV_OVERHEAT_START)
    expiry = start.tick + lim.overheat_timer_ms // TICK_MS
    b.run(expiry - 4 - b.tick)
    assert b.cmd(OP_POWER_ON) == R_OK  # executed 3 ticks before the expiry
    b.run(power_down_bound_ticks(b.config) + 5)
    [pd] = b.events_of(EV_OVERHEAT_POWER_DOWN)
    assert pd.tick == expiry
    ups = [(t, r) for t, r, lvl in b.enables_since(t0) if lvl]
    assert ups and len(ups) < 6  # the power-up was under way and was cut short
    assert all(t <= expiry for t, _ in ups), ups
    assert b.fw.power.power_state == PWR_OFF and not any(b.hal.enable_level)


def test_overheat_cancelled_when_the_temperature_falls_back_before_expiry():
    b = settled_board()
    fw = b.fw
    lim = b.config.limits
    rows = [row(b, n + "_crit") for n in ("cpu0_die", "cpu1_die", "cpu_vrm")]
    t0 = b.tick
    temps = b.trace(lambda b: [b.fw.signals.v[b.fw.signals.temp0 + s] for s in range(3)])
    duty = b.trace(lambda b: list(b.fw.fans.duty))

    # The whole CPU zone at 98 °C: its three sensors (hot-spot offsets +2/+1/+4 °C)
    # all pass 95 °C; at full airflow the plant cools back down (steady 44 °C).
    assert b.plant.set_zone_temp(Z_CPU, 98000) == R_OK
    b.run(CRIT_DELAY_TICKS + 1)
    assert fw.interlocks.tripped == sum(1 << r for r in rows)
    t_trip = t0 + CRIT_DELAY_TICKS
    [start] = b.events_of(EV_OVERHEAT_START)
    assert start.tick == t_trip and start.source == CPU0_DIE  # first row of the table
    assert list(fw.fans.duty) == ALL_FULL

    b.run_until(lambda b: b.events_of(EV_OVERHEAT_CANCEL), lim.overheat_timer_ms // TICK_MS - 10,
                "overheat cancel before expiry")
    [cancel] = b.events_of(EV_OVERHEAT_CANCEL)
    assert cancel.tick < t_trip + lim.overheat_timer_ms // TICK_MS
    clears = {e.source: e.tick for e in b.events_of(EV_INTERLOCK_CLEAR)}
    assert sorted(clears) == sorted(rows)
    assert cancel.tick == max(clears.values())  # the last row releasing cancels the timer
    # each row released exactly when its reading fell below crit - hysteresis
    for s, r in zip(range(3), rows):
        k = clears[r] - t0
        limit = b.config.sensors[s].crit_mc - CRIT_HYSTERESIS_MC
        assert temps[k][s] < limit <= temps[k - 1][s]
    assert b.events_of(EV_OVERHEAT_POWER_DOWN) == []
    assert b.rail_events_since(t0) == []  # the rails stayed on throughout
    assert fw.power.power_state == PWR_ON
    # the fans are the controllers' again, from the cancel tick on
    back = [(e.source, e.value) for e in b.events_of(EV_ZONE_MODE) if e.tick == cancel.tick]
    assert sorted(back) == [(Z_CPU, MODE_AUTO), (Z_MEMORY, MODE_AUTO), (Z_IO, MODE_AUTO)]
    assert all(d == ALL_FULL for d in duty[CRIT_DELAY_TICKS:cancel.tick - t0])
    b.run(100)
    # the cooler zones' PIDs take their fans straight back down; the CPU zone's
    # PID (still far above its setpoint) keeps them up on its own account
    assert fw.fans.duty[MEM_FAN] < 1000 and fw.fans.duty[IO_FAN] < 1000
    assert list(fw.thermal.mode) == [MODE_AUTO] * 3 and fw.thermal.force_max == 0
    assert fw.thermal.duty[Z_CPU] == fw.thermal.pid[Z_CPU].out
    assert not b.last_telemetry().status & STF_OVERHEAT


# -- 2. sensor unplugged -----------------------------------------------------------------


@pytest.mark.parametrize("sensor,kind,state", [
    (DIMM_A, FAULT_SENSOR_OPEN, SENSOR_OPEN),  # NTC: full-scale ADC
    (IO_HUB, FAULT_SENSOR_SHORT, SENSOR_SHORT),  # NTC: zero ADC
    (CPU_VRM, FAULT_SENSOR_OPEN, SENSOR_STALE),  # TMP117: the device stops answering
    (IO_BOARD, FAULT_SENSOR_OPEN, SENSOR_STALE),  # LM75
])
def test_lost_sensor_puts_its_zone_in_failsafe_within_stale_ticks(sensor, kind, state):
    b = settled_board()
    fw = b.fw
    stale = b.config.limits.stale_ticks
    zone = b.config.sensors[sensor].zone
    zone_fans = [i for i, f in enumerate(b.config.fans) if f.zone == zone]
    other_fans = [i for i in range(4) if i not in zone_fans]
    failsafe = b.config.zones[zone].failsafe_duty
    assert all(fw.fans.duty[i] < failsafe for i in zone_fans)
    t0 = b.tick
    modes = b.trace(lambda b: list(b.fw.thermal.mode))
    duty = b.trace(lambda b: list(b.fw.fans.duty))

    assert b.plant.inject(kind, sensor, 0) == R_OK
    b.run(stale + 10)
    k = first(modes, lambda m: m[zone] == MODE_FAILSAFE)
    assert k == stale - 1  # the stale_ticks-th tick that reads it bad
    assert all(duty[k][i] == failsafe for i in zone_fans)
    assert all(duty[j][i] < failsafe for j in range(k) for i in zone_fans)
    # only that zone: the others keep their controllers
    assert all(m[z] == MODE_AUTO for m in modes for z in range(3) if z != zone)
    assert all(duty[-1][i] < 1000 for i in other_fans)
    [ev] = b.events_of(EV_SENSOR_STATE, sensor)
    assert (ev.tick, ev.value) == (t0 + k, state)
    [ev] = [e for e in b.events_of(EV_ZONE_MODE, zone) if e.tick >= t0]
    assert (ev.tick, ev.value) == (t0 + k, MODE_FAILSAFE)
    tel = b.last_telemetry()
    assert tel.status & STF_FAILSAFE
    assert tel.sensor_states[sensor] == state and tel.temps[sensor] == TEMP_NONE
    assert fw.power.power_state == PWR_ON  # a lost sensor alone powers nothing down

    # plugged back in: one good reading ends the failsafe
    t1 = b.tick
    b.plant.inject(FAULT_CLEAR, sensor, kind)
    b.run(1)
    assert fw.thermal.mode[zone] == MODE_AUTO
    assert [(e.tick, e.value) for e in b.events_of(EV_SENSOR_STATE, sensor)][-1] == (t1, SENSOR_OK)
    b.run(b.config.limits.telemetry_every + 2)
    assert not b.last_telemetry().status & STF_FAILSAFE


# -- 3. stalled fan ---------------------------------------------------------------------


@pytest.mark.parametrize("fan", [MEM_FAN, CPU_FAN1])
def test_stalled_fan_detected_within_two_windows_and_other_fans_go_full(fan):
    b = settled_board()
    fw = b.fw
    r = row(b, b.config.fans[fan].name + "_stall")
    window_ticks = WINDOW_MS // TICK_MS
    t0 = b.tick
    duty = b.trace(lambda b: list(b.fw.fans.duty))

    assert b.plant.inject(FAULT_FAN_STALL, fan, 0) == R_OK
    b.run_until(lambda b: b.events_of(EV_FAN_STATE, fan), 2 * window_ticks + 5, "stall detected")
    [ev] = b.events_of(EV_FAN_STATE, fan)
    assert ev.value == FAN_STALLED
    k = ev.tick - t0
    # documented (fans.py): a fan that stops while running is STALLED within two
    # measuring windows
    assert 0 <= k < 2 * window_ticks
    [trip] = b.events_of(EV_INTERLOCK_TRIP)
    assert (trip.tick, trip.source) == (ev.tick, r)
    assert all(d != ALL_FULL for d in duty[:k])
    assert duty[k] == ALL_FULL  # every other fan to full in the detection tick
    b.run(12)
    tel = b.last_telemetry()
    assert tel.fan_states[fan] == FAN_STALLED and tel.rpm[fan] == 0
    assert tel.duty == ALL_FULL and tel.tripped == 1 << r and tel.latched == 0
    assert fw.power.power_state == PWR_ON  # fans-max only

    # the rotor frees itself: the next window sees it turn, the row releases
    t1 = b.tick
    b.plant.inject(FAULT_CLEAR, fan, FAULT_FAN_STALL)
    b.run_until(lambda b: b.events_of(EV_INTERLOCK_CLEAR), 2 * window_ticks + 5, "stall cleared")
    [ok] = [e for e in b.events_of(EV_FAN_STATE, fan) if e.tick >= t1]
    [clr] = b.events_of(EV_INTERLOCK_CLEAR)
    assert ok.value == FAN_OK and clr.source == r and clr.tick == ok.tick
    assert fw.interlocks.tripped == 0
    b.run(100)
    assert all(d < 1000 for d in fw.fans.duty)  # back to the controllers


# -- 4. power-good loss -------------------------------------------------------------------


@pytest.mark.parametrize("rail", [P3V3, P12V_MAIN, P5V])
@pytest.mark.parametrize("kind,value", [(FAULT_RAIL_SHORT, 0), (FAULT_PG_GLITCH, 300)])
def test_rail_fault_drops_dependents_deepest_first_and_latches_power_down(rail, kind, value):
    b = settled_board()
    fw = b.fw
    cfg = b.config
    r = row(b, cfg.rails[rail].name + "_fault")
    deps = sorted(subtree(cfg, rail) - {rail}, reverse=True)
    others = sorted(set(range(6)) - subtree(cfg, rail), reverse=True)
    t0 = b.tick

    assert b.plant.inject(kind, rail, value) == R_OK
    b.run(1)
    # the failing rail FAULT, then its dependents OFF, deepest first, all in this tick
    ev = b.rail_events_since(t0)
    assert ev[0][:2] == (rail, RAIL_FAULT) and ev[0][2] in (RF_PG_LOST, RF_OVERCURRENT)
    assert ev[1:1 + len(deps)] == [(d, RAIL_OFF, RF_PARENT) for d in deps]
    assert b.enables_since(t0)[:1 + len(deps)] == [(t0, x, 0) for x in [rail] + deps]
    # the latched power-down row trips in the same tick ...
    assert fw.interlocks.tripped == 1 << r and fw.interlocks.latched == 1 << r
    [trip] = b.events_of(EV_INTERLOCK_TRIP)
    assert (trip.tick, trip.source) == (t0, r)
    # ... and the rest of the board goes down in order
    b.run(power_down_bound_ticks(cfg))
    assert b.rail_events_since(t0)[1 + len(deps):] == [
        x for o in others for x in ((o, RAIL_SEQ_OFF, RF_SHED), (o, RAIL_OFF, RF_SHED))]
    assert [(x, lvl) for _, x, lvl in b.enables_since(t0)] == [(x, 0) for x in [rail] + deps + others]
    assert all(s == (RAIL_FAULT if i == rail else RAIL_OFF) for i, s in enumerate(fw.power.state))
    tel = b.last_telemetry()
    assert tel.tripped == 1 << r and tel.latched == 1 << r
    assert tel.rail_states[rail] == RAIL_FAULT

    # latched: no power-on, and no clearing while the rail is in FAULT
    assert b.cmd(OP_POWER_ON) == R_REJECTED_BY_INTERLOCK
    assert b.cmd(OP_RAIL_ON, P12V_MAIN) == R_REJECTED_BY_INTERLOCK
    assert b.cmd(OP_INTERLOCK_CLEAR, r) == R_REJECTED_BY_INTERLOCK
    b.run(40)  # (a glitch is over by now; the rail stays FAULT until cleared)
    assert b.cmd(OP_SIM_FAULT, rail, FAULT_CLEAR, kind) == R_OK
    assert b.cmd(OP_INTERLOCK_CLEAR, r) == R_REJECTED_BY_INTERLOCK
    assert fw.interlocks.latched == 1 << r
    # the operator takes the rail out of FAULT, then clears the interlock
    assert b.cmd(OP_RAIL_OFF, rail) == R_OK
    assert fw.power.state[rail] == RAIL_OFF
    assert b.cmd(OP_INTERLOCK_CLEAR, r) == R_OK
    assert fw.interlocks.tripped == 0
    assert [e.source for e in b.events_of(EV_INTERLOCK_CLEAR)] == [r]
    t1 = b.tick
    b.run(1)
    assert b.cmd(OP_POWER_ON) == R_OK
    b.run_until(lambda b: b.fw.power.power_state == PWR_ON, 100, "all rails back on")
    assert [x for _, x, lvl in b.enables_since(t1)] == list(range(6))


def test_clearing_a_rail_fault_while_still_shorted_only_trips_again():
    """The operator may take a FAULT rail to OFF and clear the latch while the
    short is still there; the retry then fails its power-good and trips the
    same latched power-down again: the board never stays up on a short."""
    b = settled_board()
    fw = b.fw
    r = row(b, "p3v3_fault")
    b.plant.inject(FAULT_RAIL_SHORT, P3V3, 0)
    b.run(power_down_bound_ticks(b.config))
    assert b.cmd(OP_RAIL_OFF, P3V3) == R_OK
    assert b.cmd(OP_INTERLOCK_CLEAR, r) == R_OK
    b.run(1)
    t = b.tick
    assert b.cmd(OP_POWER_ON) == R_OK
    b.run(50)
    assert fw.power.state[P3V3] == RAIL_FAULT
    assert fw.interlocks.latched == 1 << r
    assert [e.tick for e in b.events_of(EV_INTERLOCK_TRIP, r)][-1] > t
    assert all(s in (RAIL_OFF, RAIL_FAULT) for s in fw.power.state)
    assert not any(b.hal.enable_level)


# -- 5. tamper -------------------------------------------------------------------------------


def _tamper_open(b):
    """Open the case; returns the tick the debounced opening was seen in."""
    t0 = b.tick
    assert b.plant.inject(FAULT_TAMPER, 0, 1) == R_OK
    debounce = b.config.security.debounce_ticks
    b.run(debounce + 3)  # (+3: a burst of events may take a few ticks to reach the host)
    [ev] = b.events_of(EV_TAMPER)
    assert (ev.tick, ev.value) == (t0 + debounce - 1, 1)
    return ev.tick


def test_sim_config_tamper_action_is_an_orderly_power_down():
    assert make_config().security.tamper_action == ACT_POWER_DOWN


def test_tamper_while_armed_powers_down_in_order():
    b = settled_board()
    fw = b.fw
    assert b.cmd(OP_ARM) == R_OK
    t = _tamper_open(b)
    [safe] = b.events_of(EV_SAFE_STATE)
    assert (safe.tick, safe.source, safe.value) == (t, 2, ACT_POWER_DOWN)
    bound = power_down_bound_ticks(b.config)
    b.run(bound)
    assert_orderly_down(b, t, range(6), RF_SHED)
    assert max(x[0] for x in b.enables_since(t)) - t <= bound
    assert fw.power.power_state == PWR_OFF
    tel = b.last_telemetry()
    assert tel.status & STF_TAMPER and tel.status & STF_ARMED
    assert not tel.status & STF_LOCKOUT  # a power-down, not a lockout
    # the latch holds while the switch is open
    assert b.cmd(OP_TAMPER_CLEAR) == R_REJECTED_BY_INTERLOCK
    b.plant.inject(FAULT_TAMPER, 0, 0)
    b.run(5)
    assert [e.value for e in b.events_of(EV_TAMPER)] == [1, 0]
    assert fw.security.tamper_latched
    assert b.cmd(OP_TAMPER_CLEAR) == R_OK
    b.run(12)
    assert not b.last_telemetry().status & STF_TAMPER


def test_tamper_while_disarmed_only_latches_the_event():
    b = settled_board()
    fw = b.fw
    before = list(fw.fans.duty)
    t = _tamper_open(b)
    b.run(50)
    assert b.events_of(EV_SAFE_STATE) == []
    assert b.rail_events_since(t) == [] and b.enables_since(t) == []
    assert fw.power.power_state == PWR_ON
    assert fw.security.tamper_latched and not fw.security.armed
    assert all(m == MODE_AUTO for m in fw.thermal.mode)
    assert list(fw.fans.duty) != ALL_FULL and before != ALL_FULL
    tel = b.last_telemetry()
    assert tel.status & STF_TAMPER and not tel.status & STF_ARMED
    # arming with the case open is refused: the board could not see the next opening
    assert b.cmd(OP_ARM) == R_REJECTED_BY_INTERLOCK


@pytest.mark.parametrize("action", [ACT_LOCKOUT, ACT_FANS_MAX])
def test_tamper_action_follows_the_config(action):
    cfg = make_config()
    cfg.security.tamper_action = action
    b = settled_board(cfg)
    fw = b.fw
    assert b.cmd(OP_ARM) == R_OK
    t = _tamper_open(b)
    [safe] = b.events_of(EV_SAFE_STATE)
    assert (safe.tick, safe.source, safe.value) == (t, 2, action)
    b.run(1)
    if action == ACT_LOCKOUT:
        # everything off in the tamper tick itself, deepest first, and locked out
        assert [(x, lvl) for _, x, lvl in b.enables_since(t)] == [(x, 0) for x in range(5, -1, -1)]
        assert all(x[0] == t for x in b.enables_since(t))
        assert fw.power.power_state == PWR_OFF
        assert b.cmd(OP_POWER_ON) == R_REJECTED_BY_INTERLOCK
        b.plant.inject(FAULT_TAMPER, 0, 0)
        b.run(5)
        assert b.cmd(OP_TAMPER_CLEAR) == R_OK
        b.run(1)
        assert b.cmd(OP_POWER_ON) == R_OK
        b.run_until(lambda b: b.fw.power.power_state == PWR_ON, 100, "rails back on")
    else:
        assert list(fw.fans.duty) == ALL_FULL
        b.run(20)
        assert b.rail_events_since(t) == [] and fw.power.power_state == PWR_ON
        b.plant.inject(FAULT_TAMPER, 0, 0)
        b.run(5)
        assert list(fw.fans.duty) == ALL_FULL  # until the operator clears the latch
        assert b.cmd(OP_TAMPER_CLEAR) == R_OK
        b.run(100)
        assert all(d < 1000 for d in fw.fans.duty)


# -- 6. host lost ----------------------------------------------------------------------------


@pytest.mark.parametrize("action", [SAFE_HOLD, SAFE_POWER_DOWN])
def test_heartbeat_loss_enters_the_safe_state_on_time_and_recovers(action):
    cfg = make_config()
    cfg.limits.host_lost_action = action
    b = settled_board(cfg)
    fw = b.fw
    timeout = cfg.limits.heartbeat_timeout_ms
    assert timeout == 2000  # the sim board's default
    hb_ticks = b.trace(lambda b: b.fw.link.heartbeats)
    lost = b.trace(lambda b: b.fw.host_lost)
    duty = b.trace(lambda b: list(b.fw.fans.duty))
    t0 = b.tick
    b.run(137)  # somewhere between two heartbeats
    b.heartbeat = False
    b.run(timeout // TICK_MS + 20)

    # Measured from the tick in which the board took the last heartbeat (the
    # host wrote it one tick earlier): the safe state must start between
    # timeout and timeout + one tick later.
    last_rx = t0 + first(hb_ticks, lambda n: n == hb_ticks[-1])
    k = first(lost)
    assert k is not None
    waited_ms = (t0 + k - last_rx) * TICK_MS
    assert timeout <= waited_ms <= timeout + TICK_MS
    assert duty[k] == ALL_FULL and all(d != ALL_FULL for d in duty[:k])
    [ev] = b.events_of(EV_HOST_LOST)
    assert (ev.tick, ev.value) == (t0 + k, 1)
    [safe] = b.events_of(EV_SAFE_STATE)
    assert (safe.tick, safe.source, safe.value) == (t0 + k, 0, action)
    assert b.last_telemetry().status & STF_HOST_LOST
    if action == SAFE_HOLD:
        assert b.rail_events_since(t0) == [] and fw.power.power_state == PWR_ON
    else:
        assert_orderly_down(b, t0 + k, range(6), 0)
        assert fw.power.power_state == PWR_OFF

    # heartbeats resume: EV_HOST_LOST 0 and the fans go back to their controllers
    t1 = b.tick
    b.heartbeat = True
    b.run(10)
    assert [e.value for e in b.events_of(EV_HOST_LOST)] == [1, 0]
    back = b.events_of(EV_HOST_LOST)[1].tick
    assert t1 <= back <= t1 + 2 and fw.host_lost == 0
    assert all(m == MODE_AUTO for m in fw.thermal.mode)
    b.run(100)
    assert all(d < 1000 for d in fw.fans.duty)
    assert not b.last_telemetry().status & STF_HOST_LOST
    if action == SAFE_POWER_DOWN:
        assert fw.power.power_state == PWR_OFF  # rails stay as they are


# -- 7. latched e-stop -------------------------------------------------------------------------


def test_estop_locks_out_until_released_and_cleared():
    b = settled_board()
    fw = b.fw
    r = row(b, "estop")
    debounce = b.config.security.debounce_ticks
    t0 = b.tick
    assert b.plant.inject(FAULT_ESTOP, 0, 1) == R_OK
    b.run(debounce)
    t = t0 + debounce - 1
    [ev] = b.events_of(EV_ESTOP)
    assert (ev.tick, ev.value) == (t, 1)
    [trip] = b.events_of(EV_INTERLOCK_TRIP)
    assert (trip.tick, trip.source) == (t, r)
    # lockout: every rail off in that very tick, deepest first
    assert b.enables_since(t0) == [(t, x, 0) for x in range(5, -1, -1)]
    assert fw.power.power_state == PWR_OFF
    b.run(12)
    tel = b.last_telemetry()
    assert tel.status & STF_ESTOP and tel.status & STF_LOCKOUT
    assert tel.tripped == 1 << r and tel.latched == 1 << r

    assert b.cmd(OP_POWER_ON) == R_REJECTED_BY_INTERLOCK
    assert b.cmd(OP_RAIL_ON, P12V_FANS) == R_REJECTED_BY_INTERLOCK
    assert b.cmd(OP_INTERLOCK_CLEAR, r) == R_REJECTED_BY_INTERLOCK  # still pressed
    b.plant.inject(FAULT_ESTOP, 0, 0)
    b.run(debounce + 1)
    assert [e.value for e in b.events_of(EV_ESTOP)] == [1, 0]
    assert b.cmd(OP_POWER_ON) == R_REJECTED_BY_INTERLOCK  # released, but still latched
    assert b.enables_since(t0 + debounce) == []
    assert b.cmd(OP_INTERLOCK_CLEAR, r) == R_OK
    b.run(1)
    assert b.cmd(OP_POWER_ON) == R_OK
    b.run_until(lambda b: b.fw.power.power_state == PWR_ON, 100, "rails back on")
    b.run(12)
    assert not b.last_telemetry().status & (STF_ESTOP | STF_LOCKOUT)


def test_software_estop_is_latched_like_the_input():
    b = settled_board()
    fw = b.fw
    r = row(b, "estop")
    t0 = b.tick
    assert b.cmd(OP_ESTOP, 0, 1) == R_OK
    b.run(1)  # the interlocks see the software e-stop at the next evaluation
    assert fw.power.power_state == PWR_OFF
    assert fw.interlocks.latched == 1 << r
    assert [lvl for _, _, lvl in b.enables_since(t0)] == [0] * 6
    assert b.cmd(OP_INTERLOCK_CLEAR, r) == R_REJECTED_BY_INTERLOCK
    assert b.cmd(OP_ESTOP, 0, 0) == R_OK
    assert b.cmd(OP_POWER_ON) == R_REJECTED_BY_INTERLOCK
    assert b.cmd(OP_INTERLOCK_CLEAR, r) == R_OK
    b.run(1)
    assert b.cmd(OP_POWER_ON) == R_OK


def assert_one_batch(executed):
    """Both commands were executed in one tick (the board's command count
    traced after every step went up by 2 at once): really one batch. Their
    results may reach the host in different ticks (one frame a tick)."""
    steps = [b - a for a, b in zip(executed, executed[1:])]
    assert 2 in steps and sum(steps) == 2, executed


def test_clear_then_power_on_in_one_batch_is_accepted():
    """A host that clears the interlock and powers on back to back (both CMDs
    reach the board in the same tick) must get OK for both: the verdict must
    not depend on how the serial link happened to batch the frames."""
    b = settled_board()
    r = row(b, "estop")
    assert b.cmd(OP_ESTOP, 0, 1) == R_OK
    assert b.cmd(OP_ESTOP, 0, 0) == R_OK
    executed = b.trace(lambda b: b.fw.link.commands)
    c1 = b.send_cmd(OP_INTERLOCK_CLEAR, r)
    c2 = b.send_cmd(OP_POWER_ON)
    assert b.wait_result(c1) == R_OK
    assert b.wait_result(c2) == R_OK
    assert_one_batch(executed)
    b.run_until(lambda b: b.fw.power.power_state == PWR_ON, 100, "rails on")


def test_power_on_right_after_a_software_estop_is_refused():
    """ESTOP 1 and POWER_ON in one batch: the e-stop is asserted when the
    power-on is judged, so no rail may be switched on (not even for the one
    tick until the e-stop row trips)."""
    b = SimBoard()
    t0 = b.tick
    executed = b.trace(lambda b: b.fw.link.commands)
    c1 = b.send_cmd(OP_ESTOP, 0, 1)
    c2 = b.send_cmd(OP_POWER_ON)
    assert b.wait_result(c1) == R_OK
    assert b.wait_result(c2) == R_REJECTED_BY_INTERLOCK
    assert_one_batch(executed)
    b.run(20)
    assert [lvl for _, _, lvl in b.enables_since(t0)] == []
    assert b.fw.power.power_state == PWR_OFF


def test_overheat_timer_keeps_running_when_its_sensor_goes_invalid():
    """A sensor that dies (or reads past its maximum) while overheating releases
    its critical row — an invalid reading compares as no temperature — but that
    is no proof of cooling: the timer must run on and power the board down."""
    b = settled_board()
    lim = b.config.limits
    b.plant.inject(FAULT_SENSOR_STUCK, CPU0_DIE, 100000)
    b.run(CRIT_DELAY_TICKS + 1)
    [start] = b.events_of(EV_OVERHEAT_START)
    b.run(100)
    # the stuck part now reads as an open circuit: no valid temperature at all
    b.plant.inject(FAULT_CLEAR, CPU0_DIE, FAULT_SENSOR_STUCK)
    assert b.plant.inject(FAULT_SENSOR_OPEN, CPU0_DIE, 0) == R_OK
    b.run(b.config.limits.stale_ticks + 5)
    assert b.fw.interlocks.tripped == 0  # the row released: its signal is invalid
    assert b.events_of(EV_OVERHEAT_CANCEL) == []
    assert b.fw.thermal.overheat_running
    expiry = start.tick + lim.overheat_timer_ms // TICK_MS
    b.run(expiry - b.tick + power_down_bound_ticks(b.config) + 5)
    [pd] = b.events_of(EV_OVERHEAT_POWER_DOWN)
    assert pd.tick == expiry
    assert b.fw.power.power_state == PWR_OFF
