"""Power rails: sequencing order and timing, every fault path, request results,
safety actions, telemetry/signals, and the zero-allocation tick under MicroPython."""

from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metal.core.compat import ticks_add
from metal.core.config import Rail
from metal.core.drivers.power import PowerController
from metal.core.events import EventQueue
from metal.core.proto import (
    EV_POWER_STATE,
    EV_RAIL_STATE,
    PWR_FAULT,
    PWR_OFF,
    PWR_ON,
    PWR_PARTIAL,
    PWR_SEQ_OFF,
    PWR_SEQ_ON,
    R_BUSY,
    R_INVALID_ARGUMENT,
    R_OK,
    R_REJECTED_BY_INTERLOCK,
    R_UNKNOWN_TARGET,
    RAIL_FAULT,
    RAIL_OFF,
    RAIL_ON,
    RAIL_SEQ_OFF,
    RAIL_SEQ_ON,
    RF_NONE,
    RF_OVERCURRENT,
    RF_PARENT,
    RF_PG_LOST,
    RF_PG_TIMEOUT,
    RF_SHED,
)
from metal.core.signals import Signals

from .fake_hal import READ_ERROR, FakeHal, micropython_vms, run_micropython

TICK = 10

# Rail tree used throughout (channel = 10 + index, so indices and channels differ):
#   0 main ── 1 aux ── 2 core
#          └─ 3 io
#   4 standby (independent)
MAIN, AUX, CORE, IO, STBY = 0, 1, 2, 3, 4


def ch(i):
    return 10 + i


def make_rails(off_delay_ms=10):
    return (
        Rail("main", ch(0), 12000, pg_timeout_ms=50, overcurrent_ma=8000, off_delay_ms=off_delay_ms),
        Rail("aux", ch(1), 5000, parent=0, pg_timeout_ms=30, overcurrent_ma=3000,
             off_delay_ms=off_delay_ms),
        Rail("core", ch(2), 1000, parent=1, pg_timeout_ms=20, overcurrent_ma=0,
             off_delay_ms=off_delay_ms),
        Rail("io", ch(3), 3300, parent=0, pg_timeout_ms=20, off_delay_ms=off_delay_ms),
        Rail("standby", ch(4), 3300, pg_timeout_ms=20, off_delay_ms=off_delay_ms),
    )


class Bench:
    """A PowerController on the fake HAL with its own clock."""

    def __init__(self, rails=None, events=256, image="list"):
        self.rails = rails if rails is not None else make_rails()
        self.hal = FakeHal()
        if image == "array":  # the image as a board's claim_inputs makes it
            self.hal.mv = array("i", [0] * 32)
            self.hal.ma = array("i", [0] * 32)
        self.sig = Signals(0, 0, len(self.rails))
        self.ev = EventQueue(events)
        self.p = PowerController(self.rails, self.hal, self.sig, self.ev)
        self.t = 0
        self.hal.clear_log()

    def tick(self, n=1):
        for _ in range(n):
            self.ev.now_ms = self.t
            self.p.step(self.t)
            self.p.publish()
            check_invariants(self)
            self.t = ticks_add(self.t, TICK)

    def run_until_settled(self, limit=200):
        for _ in range(limit):
            self.tick()
            if self.p.active < 0 and not pending(self.p):
                return
        raise AssertionError("sequencer did not settle")

    def events(self, kind=None):
        out = []
        q = self.ev
        while q.count:
            i = q.head
            e = (q.kind[i], q.source[i], q.value[i], q.aux[i])
            q.pop()
            if kind is None or e[0] == kind:
                out.append(e)
        return out

    def states(self):
        return list(self.p.state)


def pending(p):
    for j in range(p.n):
        if p.want[j] and p.state[j] != RAIL_ON:
            return True
        if not p.want[j] and p.state[j] == RAIL_ON:
            return True
        if p.cyc[j]:
            return True
    return False


def check_invariants(b):
    p = b.p
    assert p.illegal_transitions == 0
    for j in range(p.n):
        s = p.state[j]
        par = p.parent[j]
        if s in (RAIL_ON, RAIL_SEQ_ON) and par >= 0:
            assert p.state[par] == RAIL_ON, "rail %d up while parent %d is not ON" % (j, par)
        # the enable pin follows the state: on exactly in SEQ_ON and ON
        assert b.hal.enabled[p.ch[j]] == (1 if s in (RAIL_SEQ_ON, RAIL_ON) else 0)
        assert (p.fault[j] != RF_NONE) == (s == RAIL_FAULT)


def all_on():
    b = Bench()
    assert b.p.power_on_all() == R_OK
    b.run_until_settled()
    assert b.states() == [RAIL_ON] * 5
    b.events()
    b.hal.clear_log()
    return b


# -- boot ---------------------------------------------------------------------------------


def test_boot_disables_every_rail_dependents_first_without_events():
    hal = FakeHal()
    for c in range(32):
        hal.enabled[c] = 1  # whatever the pins did before
    ev = EventQueue()
    p = PowerController(make_rails(), hal, Signals(0, 0, 5), ev)
    assert hal.rail_calls() == [(ch(4), 0), (ch(3), 0), (ch(2), 0), (ch(1), 0), (ch(0), 0)]
    assert list(p.state) == [RAIL_OFF] * 5
    assert p.power_state == PWR_OFF
    assert ev.count == 0


def test_parent_must_be_an_earlier_rail():
    rails = (Rail("a", 0, 1000, parent=1), Rail("b", 1, 1000))
    with pytest.raises(ValueError):
        PowerController(rails, FakeHal(), Signals(0, 0, 2), EventQueue())


def test_rail_channels_must_be_in_the_input_image():
    with pytest.raises(ValueError):  # no mv/ma slot for channel 32
        PowerController((Rail("a", 32, 1000),), FakeHal(), Signals(0, 0, 1), EventQueue())
    hal = FakeHal(40)  # an mv/ma slot, but power-good lives in a 30-bit mask
    with pytest.raises(ValueError):
        PowerController((Rail("a", 30, 1000),), hal, Signals(0, 0, 1), EventQueue())


def test_no_rails_is_off_and_steps():
    b = Bench(rails=())
    b.tick(3)
    assert b.p.power_state == PWR_OFF
    assert b.p.power_on_all() == R_OK
    assert b.p.request_on(0) == R_UNKNOWN_TARGET


# -- sequencing ---------------------------------------------------------------------------


def test_power_on_all_in_index_order_one_rail_at_a_time():
    b = Bench()
    assert b.p.power_on_all() == R_OK
    assert b.hal.rail_calls() == []  # requests only plan; the tick does the work
    b.tick()
    assert b.states() == [RAIL_SEQ_ON, RAIL_OFF, RAIL_OFF, RAIL_OFF, RAIL_OFF]
    b.tick()  # main has power-good: ON, and aux starts in the same tick
    assert b.states() == [RAIL_ON, RAIL_SEQ_ON, RAIL_OFF, RAIL_OFF, RAIL_OFF]
    b.run_until_settled()
    assert b.hal.rail_calls() == [(ch(i), 1) for i in range(5)]
    assert b.p.power_state == PWR_ON
    rail_events = b.events(EV_RAIL_STATE)
    expected = []
    for i in range(5):
        expected += [(EV_RAIL_STATE, i, RAIL_SEQ_ON, RF_NONE), (EV_RAIL_STATE, i, RAIL_ON, RF_NONE)]
    assert rail_events == expected


def test_power_state_events_do_not_flicker_mid_sequence():
    b = Bench()
    b.p.power_on_all()
    b.run_until_settled()
    assert b.events(EV_POWER_STATE) == [(EV_POWER_STATE, 0, PWR_SEQ_ON, 0),
                                        (EV_POWER_STATE, 0, PWR_ON, 0)]
    b.p.power_off_all()
    b.run_until_settled()
    assert b.events(EV_POWER_STATE) == [(EV_POWER_STATE, 0, PWR_SEQ_OFF, 0),
                                        (EV_POWER_STATE, 0, PWR_OFF, 0)]


def test_request_on_brings_up_missing_parents_first_in_order():
    b = Bench()
    assert b.p.request_on(CORE) == R_OK
    b.run_until_settled()
    assert b.hal.rail_calls() == [(ch(MAIN), 1), (ch(AUX), 1), (ch(CORE), 1)]
    assert b.states() == [RAIL_ON, RAIL_ON, RAIL_ON, RAIL_OFF, RAIL_OFF]
    assert b.p.power_state == PWR_PARTIAL


def test_request_on_of_an_on_rail_is_ok_and_changes_nothing():
    b = all_on()
    assert b.p.request_on(CORE) == R_OK
    b.tick(3)
    assert b.hal.log == []
    assert b.events() == []


def test_pg_wait_then_on_timing_to_the_tick():
    b = Bench()
    b.hal.pg_auto = False
    b.p.request_on(MAIN)
    b.tick()  # t=0: enabled
    assert b.p.state[MAIN] == RAIL_SEQ_ON
    b.tick(3)  # t=10..30 no power-good yet
    assert b.p.state[MAIN] == RAIL_SEQ_ON
    b.hal.pg[ch(MAIN)] = 1
    b.tick()  # t=40
    assert b.p.state[MAIN] == RAIL_ON


def test_request_off_takes_dependents_down_first_with_off_delay():
    b = Bench(rails=make_rails(off_delay_ms=30))
    b.p.power_on_all()
    b.run_until_settled()
    b.hal.clear_log()
    b.events()
    assert b.p.request_off(MAIN) == R_OK
    t_start = b.t
    times = {}
    for _ in range(40):
        b.tick()
        for name, c, v in b.hal.log:
            times.setdefault(c, b.t - TICK)
        if b.p.state[MAIN] == RAIL_OFF:
            break
    assert b.hal.rail_calls() == [(ch(IO), 0), (ch(CORE), 0), (ch(AUX), 0), (ch(MAIN), 0)]
    # each rail waits its off_delay_ms (30 ms = 3 ticks) after the previous one was disabled
    assert times[ch(IO)] == t_start
    assert times[ch(CORE)] == t_start + 30
    assert times[ch(AUX)] == t_start + 60
    assert times[ch(MAIN)] == t_start + 90
    assert b.states() == [RAIL_OFF, RAIL_OFF, RAIL_OFF, RAIL_OFF, RAIL_ON]
    ev = b.events(EV_RAIL_STATE)
    assert ev[0] == (EV_RAIL_STATE, IO, RAIL_SEQ_OFF, RF_NONE)
    assert ev[1] == (EV_RAIL_STATE, IO, RAIL_OFF, RF_NONE)


def test_seq_off_lasts_off_delay_to_the_tick():
    b = Bench(rails=make_rails(off_delay_ms=30))
    b.p.request_on(STBY)
    b.run_until_settled()
    b.p.request_off(STBY)
    b.tick()  # disabled at t0
    assert b.p.state[STBY] == RAIL_SEQ_OFF
    b.tick(2)  # t0+10, t0+20
    assert b.p.state[STBY] == RAIL_SEQ_OFF
    b.tick()  # t0+30
    assert b.p.state[STBY] == RAIL_OFF


def test_power_off_all_reverse_order_and_reason():
    b = all_on()
    assert b.p.power_off_all(RF_SHED) == R_OK
    b.run_until_settled()
    assert b.hal.rail_calls() == [(ch(i), 0) for i in (4, 3, 2, 1, 0)]
    offs = [e for e in b.events(EV_RAIL_STATE) if e[2] == RAIL_OFF]
    assert [e[1] for e in offs] == [4, 3, 2, 1, 0]
    assert all(e[3] == RF_SHED for e in offs)
    assert b.p.power_state == PWR_OFF


def test_request_off_of_an_off_rail_is_ok_and_changes_nothing():
    b = Bench()
    assert b.p.request_off(CORE) == R_OK
    b.tick(3)
    assert b.hal.log == [] and b.events() == []


# -- faults -------------------------------------------------------------------------------


def test_pg_timeout_faults_at_the_timeout_tick():
    b = Bench()
    b.hal.pg_auto = False
    b.p.request_on(MAIN)  # pg_timeout_ms 50
    b.tick()  # t=0 enable
    b.tick(4)  # t=10..40
    assert b.p.state[MAIN] == RAIL_SEQ_ON
    b.tick()  # t=50
    assert b.p.state[MAIN] == RAIL_FAULT
    assert b.p.fault[MAIN] == RF_PG_TIMEOUT
    assert b.hal.rail_calls() == [(ch(MAIN), 1), (ch(MAIN), 0)]
    assert (EV_RAIL_STATE, MAIN, RAIL_FAULT, RF_PG_TIMEOUT) in b.events(EV_RAIL_STATE)
    assert b.p.power_state == PWR_FAULT
    assert b.p.active == -1


def test_power_good_on_the_timeout_tick_wins():
    b = Bench()
    b.hal.pg_auto = False
    b.p.request_on(MAIN)
    b.tick(5)  # t=0..40
    b.hal.pg[ch(MAIN)] = 1
    b.tick()  # t=50: power-good is checked before the timeout
    assert b.p.state[MAIN] == RAIL_ON


def test_pg_timeout_stops_the_rest_of_the_sequence():
    b = Bench()
    b.hal.pg_auto = False
    b.p.request_on(CORE)
    b.tick()
    b.hal.pg[ch(MAIN)] = 1
    b.tick()  # main ON, aux SEQ_ON
    b.tick(3)  # aux pg_timeout 30 ms
    assert b.p.state[AUX] == RAIL_FAULT
    b.tick(10)
    assert b.states() == [RAIL_ON, RAIL_FAULT, RAIL_OFF, RAIL_OFF, RAIL_OFF]
    assert b.hal.enabled[ch(CORE)] == 0
    assert list(b.p.want) == [1, 0, 0, 0, 0]
    assert b.p.power_state == PWR_FAULT


def test_pg_loss_faults_rail_and_takes_dependents_down_in_reverse_order():
    b = all_on()
    b.hal.pg[ch(MAIN)] = 0
    b.tick()
    # the failing rail first, at once; then its dependents deepest first, same tick
    assert b.hal.rail_calls() == [(ch(MAIN), 0), (ch(IO), 0), (ch(CORE), 0), (ch(AUX), 0)]
    assert b.states() == [RAIL_FAULT, RAIL_OFF, RAIL_OFF, RAIL_OFF, RAIL_ON]
    assert b.p.fault[MAIN] == RF_PG_LOST
    assert b.events(EV_RAIL_STATE) == [
        (EV_RAIL_STATE, MAIN, RAIL_FAULT, RF_PG_LOST),
        (EV_RAIL_STATE, IO, RAIL_OFF, RF_PARENT),
        (EV_RAIL_STATE, CORE, RAIL_OFF, RF_PARENT),
        (EV_RAIL_STATE, AUX, RAIL_OFF, RF_PARENT),
    ]
    assert b.p.power_state == PWR_FAULT


def test_pg_loss_of_a_middle_rail_leaves_siblings_and_parent_on():
    b = all_on()
    b.hal.pg[ch(AUX)] = 0
    b.hal.pg[ch(CORE)] = 0  # its child collapses too: the parent is blamed, not the child
    b.tick()
    assert b.hal.rail_calls() == [(ch(AUX), 0), (ch(CORE), 0)]
    assert b.states() == [RAIL_ON, RAIL_FAULT, RAIL_OFF, RAIL_ON, RAIL_ON]
    assert b.events(EV_RAIL_STATE) == [
        (EV_RAIL_STATE, AUX, RAIL_FAULT, RF_PG_LOST),
        (EV_RAIL_STATE, CORE, RAIL_OFF, RF_PARENT),
    ]


def test_fault_stays_until_explicit_off_even_when_power_good_returns():
    b = all_on()
    b.hal.pg[ch(IO)] = 0
    b.tick()
    b.hal.pg[ch(IO)] = 1
    b.tick(20)
    assert b.p.state[IO] == RAIL_FAULT
    b.p.power_off_all()  # an orderly down does not clear a fault
    b.run_until_settled()
    assert b.p.state[IO] == RAIL_FAULT
    assert b.p.power_state == PWR_FAULT
    b.events()
    assert b.p.request_off(IO) == R_OK  # explicit: FAULT -> OFF at once
    assert b.p.state[IO] == RAIL_OFF and b.p.fault[IO] == RF_NONE
    assert b.events() == [(EV_RAIL_STATE, IO, RAIL_OFF, RF_NONE), (EV_POWER_STATE, 0, PWR_OFF, 0)]


def test_on_request_from_fault_retries():
    b = Bench()
    b.hal.pg_auto = False
    b.p.request_on(STBY)
    b.tick(3)  # pg_timeout 20 ms
    assert b.p.state[STBY] == RAIL_FAULT
    b.hal.pg_auto = True
    b.hal.clear_log()
    b.events()
    assert b.p.request_on(STBY) == R_OK
    b.tick(2)
    assert b.p.state[STBY] == RAIL_ON and b.p.fault[STBY] == RF_NONE
    assert b.events(EV_RAIL_STATE) == [(EV_RAIL_STATE, STBY, RAIL_SEQ_ON, RF_NONE),
                                       (EV_RAIL_STATE, STBY, RAIL_ON, RF_NONE)]


def test_on_request_for_a_child_retries_a_faulted_parent():
    b = all_on()
    b.hal.pg[ch(AUX)] = 0
    b.tick()
    assert b.p.state[AUX] == RAIL_FAULT
    b.hal.pg[ch(AUX)] = 1
    assert b.p.request_on(CORE) == R_OK
    b.run_until_settled()
    assert b.states() == [RAIL_ON] * 5


def test_overcurrent_faults_only_above_the_limit():
    b = all_on()
    b.hal.ma[ch(AUX)] = 3000  # == limit: fine
    b.tick()
    assert b.p.state[AUX] == RAIL_ON
    b.hal.ma[ch(AUX)] = 3001
    b.tick()
    assert b.p.state[AUX] == RAIL_FAULT and b.p.fault[AUX] == RF_OVERCURRENT
    assert b.hal.rail_calls() == [(ch(AUX), 0), (ch(CORE), 0)]
    assert b.events(EV_RAIL_STATE) == [
        (EV_RAIL_STATE, AUX, RAIL_FAULT, RF_OVERCURRENT),
        (EV_RAIL_STATE, CORE, RAIL_OFF, RF_PARENT),
    ]


def test_inrush_still_over_the_limit_when_power_good_comes_faults_next_tick():
    # the currents do not change while the rail goes SEQ_ON -> ON: the new ON
    # rail is checked against the same image on the next tick
    b = Bench()
    b.hal.pg_auto = False
    b.p.request_on(MAIN)
    b.hal.ma[ch(MAIN)] = 8001  # limit 8000
    b.tick(2)
    b.hal.pg[ch(MAIN)] = 1
    b.tick()  # power-good: ON (overcurrent is checked before, while SEQ_ON)
    assert b.p.state[MAIN] == RAIL_ON
    b.tick()
    assert b.p.state[MAIN] == RAIL_FAULT and b.p.fault[MAIN] == RF_OVERCURRENT


def test_steady_ticks_read_the_image_without_hal_calls():
    b = all_on()
    b.hal.mv[ch(MAIN)] = 12010
    b.hal.ma[ch(AUX)] = 1500
    calls = b.hal.calls
    b.tick(20)
    assert b.hal.calls == calls
    assert b.p.mv[MAIN] == 12010 and b.p.ma[AUX] == 1500
    b.hal.ma[ch(AUX)] = 1600  # a changed reading shows on the next tick
    b.tick()
    assert b.p.ma[AUX] == 1600 and b.hal.calls == calls


def test_overcurrent_not_monitored_when_limit_is_zero():
    b = all_on()
    b.hal.ma[ch(CORE)] = 60000  # core has overcurrent_ma=0
    b.tick(3)
    assert b.p.state[CORE] == RAIL_ON


def test_overcurrent_ignored_during_soft_start():
    b = Bench()
    b.hal.pg_auto = False
    b.p.request_on(MAIN)
    b.hal.ma[ch(MAIN)] = 20000  # inrush
    b.tick(2)
    assert b.p.state[MAIN] == RAIL_SEQ_ON
    b.hal.pg[ch(MAIN)] = 1
    b.hal.ma[ch(MAIN)] = 100
    b.tick()
    assert b.p.state[MAIN] == RAIL_ON


def test_monitor_read_errors_report_zero_and_never_fault():
    b = all_on()
    b.hal.ma[ch(MAIN)] = READ_ERROR
    b.hal.mv[ch(MAIN)] = READ_ERROR
    b.hal.mv[ch(AUX)] = 5012
    b.hal.ma[ch(AUX)] = 1200
    b.hal.mv[ch(IO)] = 70000  # clamped to the uint16 telemetry field
    b.hal.ma[ch(IO)] = -3  # offset error below zero
    b.tick(3)
    assert b.p.state[MAIN] == RAIL_ON
    assert b.p.mv[MAIN] == 0 and b.p.ma[MAIN] == 0
    assert b.p.mv[AUX] == 5012 and b.p.ma[AUX] == 1200
    assert b.p.mv[IO] == 65535 and b.p.ma[IO] == 0
    assert b.p.read_errors == 6  # two reads failing on each of three ticks


def test_readings_above_the_field_alone_are_clamped():
    b = all_on()
    b.hal.mv[ch(MAIN)] = 70000  # no error or negative reading in the same image
    b.hal.ma[ch(AUX)] = 65536
    b.tick()
    assert b.p.mv[MAIN] == 65535 and b.p.ma[AUX] == 65535
    assert b.p.read_errors == 0


def test_the_image_at_start_up_is_measured_on_the_first_tick():
    hal = FakeHal()
    hal.mv[ch(MAIN)] = 12000
    hal.ma[ch(MAIN)] = READ_ERROR
    p = PowerController(make_rails(), hal, Signals(0, 0, 5), EventQueue())
    p.step(0)
    assert p.mv[MAIN] == 12000 and p.ma[MAIN] == 0 and p.read_errors == 1
    p.step(10)
    assert p.read_errors == 2


def test_fault_of_a_parent_aborts_a_dependent_in_seq_on():
    b = Bench()
    b.hal.pg_auto = False
    b.p.request_on(AUX)
    b.tick()
    b.hal.pg[ch(MAIN)] = 1
    b.tick()  # main ON, aux SEQ_ON
    assert b.p.state[AUX] == RAIL_SEQ_ON
    b.hal.pg[ch(MAIN)] = 0
    b.tick()
    assert b.states()[:2] == [RAIL_FAULT, RAIL_OFF]
    assert (EV_RAIL_STATE, AUX, RAIL_OFF, RF_PARENT) in b.events(EV_RAIL_STATE)
    assert b.p.active == -1


def test_fault_of_a_parent_while_dependent_is_in_seq_off():
    b = Bench(rails=make_rails(off_delay_ms=50))
    b.p.power_on_all()
    b.run_until_settled()
    b.p.request_off(AUX)
    b.tick()  # core SEQ_OFF
    assert b.p.state[CORE] == RAIL_SEQ_OFF
    b.hal.pg[ch(AUX)] = 0
    b.tick()
    assert b.p.state[AUX] == RAIL_FAULT and b.p.state[CORE] == RAIL_OFF
    b.tick(10)
    assert b.states() == [RAIL_ON, RAIL_FAULT, RAIL_OFF, RAIL_ON, RAIL_ON]


# -- request results ------------------------------------------------------------------------


def snapshot(b):
    p = b.p
    return (list(p.state), list(p.want), list(p.cyc), list(p.cyc_root), p.active, p.power_state)


@pytest.mark.parametrize("bad", [-1, 5, 99])
def test_unknown_target_changes_nothing(bad):
    b = all_on()
    before = snapshot(b)
    assert b.p.request_on(bad) == R_UNKNOWN_TARGET
    assert b.p.request_off(bad) == R_UNKNOWN_TARGET
    assert b.p.request_cycle(bad) == R_UNKNOWN_TARGET
    assert b.p.shed(bad) == R_UNKNOWN_TARGET
    b.tick(5)
    assert snapshot(b) == before
    assert b.hal.log == [] and b.events() == []


@pytest.mark.parametrize("off_ms", [-1, 3600001])
def test_cycle_with_bad_off_time_is_invalid_and_changes_nothing(off_ms):
    b = all_on()
    before = snapshot(b)
    assert b.p.request_cycle(AUX, off_ms) == R_INVALID_ARGUMENT
    b.tick(5)
    assert snapshot(b) == before and b.hal.log == []


def test_lockout_refuses_power_on_requests_and_changes_nothing():
    b = Bench()
    b.p.lockout = 1
    before = snapshot(b)
    assert b.p.request_on(CORE) == R_REJECTED_BY_INTERLOCK
    assert b.p.power_on_all() == R_REJECTED_BY_INTERLOCK
    assert b.p.request_cycle(MAIN, 0) == R_REJECTED_BY_INTERLOCK
    b.tick(5)
    assert snapshot(b) == before and b.hal.log == [] and b.events() == []
    b.p.lockout = 0
    assert b.p.request_on(CORE) == R_OK


def test_lockout_allows_power_off():
    b = all_on()
    b.p.lockout = 1
    assert b.p.request_off(AUX) == R_OK
    assert b.p.power_off_all() == R_OK
    b.run_until_settled()
    assert b.p.power_state == PWR_OFF


def test_caller_veto_refuses_power_on():
    b = Bench()
    before = snapshot(b)
    assert b.p.request_on(MAIN, veto=1) == R_REJECTED_BY_INTERLOCK
    assert b.p.power_on_all(veto=1) == R_REJECTED_BY_INTERLOCK
    assert b.p.request_cycle(MAIN, 100, veto=1) == R_REJECTED_BY_INTERLOCK
    b.tick(3)
    assert snapshot(b) == before and b.hal.log == []


def test_lockout_set_mid_sequence_stops_further_power_up():
    b = Bench()
    b.hal.pg_auto = False
    b.p.power_on_all()
    b.tick()  # main SEQ_ON
    b.p.lockout = 1
    b.tick()
    assert b.p.state[MAIN] == RAIL_SEQ_OFF  # aborted: disabled, settling
    b.tick(5)
    assert b.states() == [RAIL_OFF] * 5
    assert list(b.p.want) == [0] * 5
    b.p.lockout = 0
    b.tick(5)  # nothing comes back by itself once the lockout clears
    assert b.states() == [RAIL_OFF] * 5


def test_busy_while_a_sequence_runs_on_the_rail():
    b = Bench()
    b.hal.pg_auto = False
    b.p.power_on_all()
    b.tick()  # main SEQ_ON, the rest pending
    before = snapshot(b)
    assert b.p.request_on(MAIN) == R_BUSY  # settling
    assert b.p.request_off(MAIN) == R_BUSY
    assert b.p.request_off(STBY) == R_BUSY  # pending in the plan
    assert b.p.request_cycle(IO) == R_BUSY
    assert b.p.power_on_all() == R_BUSY
    assert snapshot(b) == before
    b.hal.pg_auto = True
    for i in range(5):
        b.hal.pg[ch(i)] = 1
    b.run_until_settled()
    assert b.p.request_off(STBY) == R_OK


def test_busy_for_a_rail_in_seq_off_and_its_dependents_on_request():
    b = Bench(rails=make_rails(off_delay_ms=50))
    b.p.power_on_all()
    b.run_until_settled()
    b.p.request_off(CORE)
    b.tick()
    assert b.p.state[CORE] == RAIL_SEQ_OFF
    assert b.p.request_on(CORE) == R_BUSY
    assert b.p.request_off(AUX) == R_BUSY  # a dependent is settling
    assert b.p.request_on(IO) == R_OK  # unrelated branch, already on


def test_safety_actions_are_never_busy_and_preempt():
    b = Bench()
    b.hal.pg_auto = False
    b.p.power_on_all()
    b.tick()  # main SEQ_ON
    assert b.p.shed(MAIN) == R_OK
    b.tick()
    assert b.p.state[MAIN] == RAIL_SEQ_OFF
    assert (EV_RAIL_STATE, MAIN, RAIL_SEQ_OFF, RF_SHED) in b.events(EV_RAIL_STATE)
    # standby was not shed: it still comes up once the shed is done
    b.hal.pg_auto = True
    b.tick()
    assert b.states() == [RAIL_OFF, RAIL_OFF, RAIL_OFF, RAIL_OFF, RAIL_SEQ_ON]
    b.tick()
    assert b.states() == [RAIL_OFF, RAIL_OFF, RAIL_OFF, RAIL_OFF, RAIL_ON]


# -- shed / emergency -----------------------------------------------------------------------


def test_shed_takes_rail_and_dependents_down_in_order():
    b = all_on()
    assert b.p.shed(AUX, RF_SHED) == R_OK
    b.run_until_settled()
    assert b.hal.rail_calls() == [(ch(CORE), 0), (ch(AUX), 0)]
    assert b.states() == [RAIL_ON, RAIL_OFF, RAIL_OFF, RAIL_ON, RAIL_ON]
    offs = [e for e in b.events(EV_RAIL_STATE) if e[2] == RAIL_OFF]
    assert offs == [(EV_RAIL_STATE, CORE, RAIL_OFF, RF_SHED), (EV_RAIL_STATE, AUX, RAIL_OFF, RF_SHED)]
    assert b.p.power_state == PWR_PARTIAL


def test_emergency_off_disables_everything_in_the_same_call():
    b = Bench(rails=make_rails(off_delay_ms=100))
    b.p.power_on_all()
    b.run_until_settled()
    b.hal.pg[ch(IO)] = 0
    b.tick()  # io FAULT
    b.hal.clear_log()
    b.events()
    assert b.p.emergency_off() == R_OK
    # every enable driven low, dependents first, before any further tick
    assert b.hal.rail_calls() == [(ch(i), 0) for i in (4, 3, 2, 1, 0)]
    assert b.states() == [RAIL_OFF, RAIL_OFF, RAIL_OFF, RAIL_FAULT, RAIL_OFF]
    offs = b.events(EV_RAIL_STATE)
    assert [e[1] for e in offs] == [4, 2, 1, 0]
    assert all(e[2] == RAIL_OFF and e[3] == RF_SHED for e in offs)
    check_invariants(b)
    b.tick(5)
    assert b.states() == [RAIL_OFF, RAIL_OFF, RAIL_OFF, RAIL_FAULT, RAIL_OFF]


def test_emergency_off_mid_sequence_cancels_the_plan():
    b = Bench()
    b.hal.pg_auto = False
    b.p.power_on_all()
    b.tick()
    b.p.emergency_off()
    assert b.p.active == -1 and list(b.p.want) == [0] * 5
    b.hal.pg_auto = True
    b.tick(5)
    assert b.states() == [RAIL_OFF] * 5


# -- cycle --------------------------------------------------------------------------------


def test_cycle_off_then_on_with_off_time_to_the_tick():
    b = all_on()
    assert b.p.request_cycle(AUX, 100) == R_OK
    b.tick()  # core SEQ_OFF
    b.tick()  # core OFF, aux SEQ_OFF
    assert b.p.state[AUX] == RAIL_SEQ_OFF
    b.tick()  # aux OFF: off time starts now
    t_off = b.t - TICK
    assert b.p.state[AUX] == RAIL_OFF
    while b.t - t_off < 100:
        assert b.p.request_on(AUX) == R_BUSY  # the cycle owns it
        b.tick()
        assert b.p.state[AUX] == RAIL_OFF
    b.tick()  # t_off + 100: back on
    assert b.p.state[AUX] == RAIL_SEQ_ON
    b.run_until_settled()
    assert b.states() == [RAIL_ON] * 5
    assert b.hal.rail_calls() == [(ch(CORE), 0), (ch(AUX), 0), (ch(AUX), 1), (ch(CORE), 1)]


def test_cycle_default_off_time_is_one_second():
    b = all_on()
    assert b.p.request_cycle(STBY) == R_OK
    b.tick(2)
    assert b.p.state[STBY] == RAIL_OFF
    b.tick(99)
    assert b.p.state[STBY] == RAIL_OFF
    b.tick()
    assert b.p.state[STBY] == RAIL_SEQ_ON


def test_cycle_brings_back_only_dependents_that_were_on():
    b = Bench()
    b.p.request_on(AUX)
    b.run_until_settled()  # main, aux on; core, io off
    b.hal.clear_log()
    assert b.p.request_cycle(MAIN, 0) == R_OK
    b.run_until_settled()
    assert b.states() == [RAIL_ON, RAIL_ON, RAIL_OFF, RAIL_OFF, RAIL_OFF]
    assert b.hal.rail_calls() == [(ch(AUX), 0), (ch(MAIN), 0), (ch(MAIN), 1), (ch(AUX), 1)]


def test_cycle_of_an_off_rail_waits_then_powers_on_with_parents():
    b = Bench()
    assert b.p.request_cycle(AUX, 20) == R_OK
    b.tick(2)
    assert b.states() == [RAIL_OFF] * 5
    b.tick()
    b.run_until_settled()
    assert b.states() == [RAIL_ON, RAIL_ON, RAIL_OFF, RAIL_OFF, RAIL_OFF]


def test_cycle_of_a_faulted_rail_clears_and_retries():
    b = all_on()
    b.hal.pg[ch(STBY)] = 0
    b.tick()
    assert b.p.state[STBY] == RAIL_FAULT
    assert b.p.request_cycle(STBY, 0) == R_OK
    assert b.p.state[STBY] == RAIL_OFF
    b.hal.pg[ch(STBY)] = 0  # pg_auto sets it again when re-enabled
    b.run_until_settled()
    assert b.p.state[STBY] == RAIL_ON


def test_lockout_at_the_end_of_a_cycle_keeps_rails_off():
    b = all_on()
    b.p.request_cycle(AUX, 50)
    b.tick(4)
    b.p.lockout = 1
    b.tick(10)
    assert b.states() == [RAIL_ON, RAIL_OFF, RAIL_OFF, RAIL_ON, RAIL_ON]
    assert list(b.p.cyc) == [0] * 5 and list(b.p.cyc_root) == [0] * 5
    b.p.lockout = 0
    b.tick(10)
    assert b.states() == [RAIL_ON, RAIL_OFF, RAIL_OFF, RAIL_ON, RAIL_ON]


def test_shed_during_a_cycle_cancels_the_way_back():
    b = all_on()
    b.p.request_cycle(AUX, 50)
    b.tick(3)
    assert b.p.shed(AUX) == R_OK
    b.tick(20)
    assert b.states() == [RAIL_ON, RAIL_OFF, RAIL_OFF, RAIL_ON, RAIL_ON]
    assert b.p.request_on(AUX) == R_OK  # no longer busy


def test_fault_inside_a_cycle_keeps_the_faulted_rail_down():
    b = Bench(rails=make_rails(off_delay_ms=50))
    b.p.power_on_all()
    b.run_until_settled()
    b.p.request_cycle(MAIN, 0)
    b.tick()  # io SEQ_OFF first
    b.hal.pg[ch(AUX)] = 0  # aux is still ON and waiting its turn
    b.tick()
    assert b.p.state[AUX] == RAIL_FAULT
    b.hal.pg_auto = True
    b.run_until_settled()
    assert b.states() == [RAIL_ON, RAIL_FAULT, RAIL_OFF, RAIL_ON, RAIL_ON]


# -- transitions, signals, wrap -------------------------------------------------------------


def test_illegal_transition_is_refused_and_counted():
    b = Bench()
    b.p._set_state(MAIN, RAIL_ON, RF_NONE)  # OFF -> ON skips SEQ_ON
    assert b.p.state[MAIN] == RAIL_OFF
    assert b.p.illegal_transitions == 1
    assert b.ev.count == 0
    b.p._set_state(MAIN, RAIL_SEQ_OFF, RF_NONE)
    assert b.p.illegal_transitions == 2


def test_every_legal_transition_is_exercised_and_allowed():
    legal = {
        (RAIL_OFF, RAIL_SEQ_ON), (RAIL_SEQ_ON, RAIL_ON), (RAIL_SEQ_ON, RAIL_SEQ_OFF),
        (RAIL_SEQ_ON, RAIL_FAULT), (RAIL_SEQ_ON, RAIL_OFF), (RAIL_ON, RAIL_SEQ_OFF),
        (RAIL_ON, RAIL_FAULT), (RAIL_ON, RAIL_OFF), (RAIL_SEQ_OFF, RAIL_OFF),
        (RAIL_FAULT, RAIL_OFF), (RAIL_FAULT, RAIL_SEQ_ON),
    }
    for old in range(5):
        for new in range(5):
            if old == new:
                continue
            b = Bench()
            b.p.state[MAIN] = old
            b.p._set_state(MAIN, new, RF_NONE)
            assert (b.p.state[MAIN] == new) == ((old, new) in legal), (old, new)


def test_publish_writes_states_and_fault_reasons():
    b = all_on()
    b.hal.ma[ch(AUX)] = 9999
    b.tick()
    v = b.sig.v
    s0 = b.sig.rail_state0
    f0 = b.sig.rail_fault0
    assert list(v[s0:s0 + 5]) == [RAIL_ON, RAIL_FAULT, RAIL_OFF, RAIL_ON, RAIL_ON]
    assert list(v[f0:f0 + 5]) == [0, RF_OVERCURRENT, 0, 0, 0]
    b.p.request_off(AUX)
    b.p.publish()
    assert v[f0 + AUX] == 0 and v[s0 + AUX] == RAIL_OFF


def test_timeouts_across_the_tick_counter_wrap():
    b = Bench()
    b.t = (1 << 30) - 20  # two ticks before the 2**30 wrap
    b.hal.pg_auto = False
    b.p.request_on(MAIN)
    b.tick()  # enabled just before the wrap
    b.tick(4)
    assert b.p.state[MAIN] == RAIL_SEQ_ON
    b.tick()
    assert b.p.state[MAIN] == RAIL_FAULT and b.p.fault[MAIN] == RF_PG_TIMEOUT


# -- random sequences keep the invariants ------------------------------------------------------

ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["on", "off", "cycle", "all_on", "all_off", "shed", "estop", "lockout",
                         "pg_drop", "pg_back", "oc", "oc_clear", "pg_auto", "tick"]),
        st.integers(min_value=-1, max_value=5),
        st.integers(min_value=1, max_value=12),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ACTIONS)
def test_random_requests_and_faults_keep_invariants(actions):
    b = Bench(events=16)
    codes = (R_OK, R_BUSY, R_UNKNOWN_TARGET, R_REJECTED_BY_INTERLOCK, R_INVALID_ARGUMENT)
    for name, i, n in actions:
        c = ch(i) if 0 <= i < 5 else ch(0)
        if name == "on":
            assert b.p.request_on(i) in codes
        elif name == "off":
            assert b.p.request_off(i) in codes
        elif name == "cycle":
            assert b.p.request_cycle(i, n * 10) in codes
        elif name == "all_on":
            assert b.p.power_on_all() in codes
        elif name == "all_off":
            assert b.p.power_off_all() == R_OK
        elif name == "shed":
            assert b.p.shed(i) in (R_OK, R_UNKNOWN_TARGET)
        elif name == "estop":
            b.p.emergency_off()
            assert all(s in (RAIL_OFF, RAIL_FAULT) for s in b.p.state)
        elif name == "lockout":
            b.p.lockout = n & 1
        elif name == "pg_drop":
            b.hal.pg[c] = 0
        elif name == "pg_back":
            b.hal.pg[c] = b.hal.enabled[c]
        elif name == "oc":
            b.hal.ma[c] = 50000
        elif name == "oc_clear":
            b.hal.ma[c] = 0
        elif name == "pg_auto":
            b.hal.pg_auto = bool(n & 1)
        b.tick(n if name == "tick" else 1)
    # with healthy hardware and no lockout, an orderly power-down always completes
    b.p.lockout = 0
    for c in range(32):
        b.hal.ma[c] = 0
    b.p.power_off_all()
    b.run_until_settled()
    assert all(s in (RAIL_OFF, RAIL_FAULT) for s in b.p.state)


# -- the steady-state fast paths change nothing --------------------------------------------

def force_full_pass(p):
    """Make the next step() do all the work of every tick: measure every rail,
    run the per-rail monitor and every sequencer section, publish everything
    (what step() did on every tick before the fast paths)."""
    p._measured = 0
    p._oc_on = -1
    p._on_pg = (1 << 30) - 1  # every power-good "missing": the exact monitor pass runs
    p._seq_dirty = 1
    p._pub_dirty = 1


def observable(b):
    p = b.p
    v = b.sig.v
    return (list(p.state), list(p.fault), list(p.want), list(p.cyc), list(p.cyc_root),
            list(p.mv), list(p.ma), p.read_errors, p.power_state, p.active,
            p.illegal_transitions, list(v[b.sig.rail_state0:b.sig.rail_state0 + p.n]),
            list(v[b.sig.rail_fault0:b.sig.rail_fault0 + p.n]), b.events(), list(b.hal.log),
            list(b.hal.enabled))


READINGS = (0, 1, 3000, 3001, 8001, 12000, 65535, 70000, -3, READ_ERROR)
DIFF_ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["on", "off", "cycle", "all_on", "all_off", "shed", "estop", "lockout",
                         "pg_drop", "pg_back", "ma", "mv", "pg_auto", "tick"]),
        st.integers(min_value=-1, max_value=5),
        st.integers(min_value=1, max_value=12),
    ),
    max_size=50,
)


@settings(max_examples=150, deadline=None)
@given(DIFF_ACTIONS)
def test_fast_paths_match_a_full_pass_every_tick(actions):
    # The same requests, inputs and ticks on two controllers: one as it runs (on an
    # array image, like a board's), one forced through the full pass on every tick
    # (on a list image). Everything observable must agree after every tick.
    fast = Bench(events=512, image="array")
    full = Bench(events=512)
    for name, i, n in actions:
        c = ch(i) if 0 <= i < 5 else ch(0)
        for b in (fast, full):
            p = b.p
            if name == "on":
                p.request_on(i)
            elif name == "off":
                p.request_off(i)
            elif name == "cycle":
                p.request_cycle(i, n * 10)
            elif name == "all_on":
                p.power_on_all()
            elif name == "all_off":
                p.power_off_all()
            elif name == "shed":
                p.shed(i)
            elif name == "estop":
                p.emergency_off()
            elif name == "lockout":
                p.lockout = n & 1
            elif name == "pg_drop":
                b.hal.pg[c] = 0
            elif name == "pg_back":
                b.hal.pg[c] = b.hal.enabled[c]
            elif name == "ma":
                b.hal.ma[c] = READINGS[n % len(READINGS)]
            elif name == "mv":
                b.hal.mv[c] = READINGS[(n * 7) % len(READINGS)]
            elif name == "pg_auto":
                b.hal.pg_auto = bool(n & 1)
        for _ in range(n if name == "tick" else 1):
            force_full_pass(full.p)
            fast.tick()
            full.tick()
            assert observable(fast) == observable(full)


# -- MicroPython: zero allocation on the tick and request paths --------------------------------

ALLOC_SCRIPT = r"""
import gc, micropython, time
from fake_hal import FakeHal
from metal.core.config import Rail
from metal.core.signals import Signals
from metal.core.events import EventQueue
from metal.core.drivers.power import PowerController

rails = (
    Rail("main", 10, 12000, pg_timeout_ms=50, overcurrent_ma=8000),
    Rail("aux", 11, 5000, parent=0, pg_timeout_ms=30, overcurrent_ma=3000),
    Rail("core", 12, 1000, parent=1, pg_timeout_ms=20),
    Rail("io", 13, 3300, parent=0, pg_timeout_ms=20),
    Rail("standby", 14, 3300, pg_timeout_ms=20),
    Rail("fan", 15, 12000, parent=0, overcurrent_ma=2000),
)
hal = FakeHal()
hal.recording = False
p = PowerController(rails, hal, Signals(0, 0, 6), EventQueue(32))
results = [0] * 8

def scenario(t0, ticks):
    # every request path, sequencing, every fault path, cycle, shed, e-stop, lockout
    t = t0
    for k in range(ticks):
        ph = k % 100
        if ph == 0:
            hal.pg_auto = True
            p.lockout = 0
            results[0] = p.power_on_all()
        elif ph == 10:
            results[1] = p.request_cycle(1, 30)
        elif ph == 20:
            hal.pg[11] = 0
        elif ph == 22:
            hal.pg[11] = 1
            results[2] = p.request_on(2)
        elif ph == 30:
            hal.ma[15] = 2500
        elif ph == 31:
            hal.ma[15] = READ_ERR
            results[3] = p.request_off(5)
        elif ph == 35:
            hal.ma[15] = 0
            results[4] = p.request_on(5)
        elif ph == 45:
            results[5] = p.shed(1)
        elif ph == 55:
            results[6] = p.request_off(0)
        elif ph == 60:
            hal.pg_auto = False
            p.request_on(4)
        elif ph == 70:
            p.request_off(4)
            hal.pg_auto = True
            p.power_on_all()
        elif ph == 75:
            p.lockout = 1
            results[7] = p.request_on(3)
        elif ph == 80:
            p.lockout = 0
            p.power_on_all()
        elif ph == 90:
            p.emergency_off()
        elif ph == 95:
            p.power_off_all(5)
        p.step(t)
        p.publish()
        t = (t + 10) & 0x3FFFFFFF
    return t

def steady(t0, ticks):
    t = t0
    for k in range(ticks):
        p.step(t)
        p.publish()
        t = (t + 10) & 0x3FFFFFFF
    return t

from metal.core.hal import READ_ERROR as READ_ERR

def measure(fn, t0, ticks):
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    micropython.heap_lock()
    try:
        start = time.ticks_us()
        t = fn(t0, ticks)
        us = time.ticks_diff(time.ticks_us(), start)
    finally:
        micropython.heap_unlock()
    d = gc.mem_alloc() - a
    gc.enable()
    return d, us, t

t = 0
d1, us1, t = measure(scenario, t, 1000)
p.power_on_all()
t = steady(t, 20)
d2, us2, t = measure(steady, t, 1000)
print("scenario", d1, us1, "steady", d2, us2, "transitions_ok", p.illegal_transitions == 0,
      "state", p.power_state, "results", results)
"""


@pytest.mark.micropython
@pytest.mark.parametrize("vm", ["unix", "wasm"])
def test_zero_allocation_under_micropython(vm):
    if vm not in micropython_vms():
        pytest.skip("MicroPython %s VM not installed" % vm)
    code, out, err = run_micropython(ALLOC_SCRIPT, vm)
    assert code == 0, err
    words = out.split()
    assert words[0] == "scenario" and words[3] == "steady", out
    assert int(words[1]) == 0, "scenario allocated %s bytes" % words[1]
    assert int(words[4]) == 0, "steady tick allocated %s bytes" % words[4]
    assert words[7] == "True", out
    # the scenario really exercised the paths it claims to (not all refused)
    assert "results [0, 0, 0, 0, 0, 0, 0, 1]" in out, out
