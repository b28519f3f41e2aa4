"""Loop: phase order, timing stats, overrun policy, watchdog, drift-free schedule."""

import time

import pytest

from metal.core.compat import ticks_add, ticks_diff
from metal.core.events import EventQueue
from metal.core.loop import JITTER_EDGES, Loop, _default_sleep_us
from metal.core.proto import EV_LOOP_FAULT, R_OK

PERIOD = 10000
MASK = (1 << 30) - 1


class FakeClock:
    """ticks_us stand-in; sleep() advances it (optionally oversleeping)."""

    def __init__(self, t=0, overshoot=0):
        self.t = t & MASK
        self.overshoot = overshoot
        self.sleeps = []

    def __call__(self):
        return self.t

    def advance(self, us):
        self.t = ticks_add(self.t, us)

    def sleep(self, us):
        self.sleeps.append(us)
        self.advance(us + self.overshoot)


class Runner:
    """Records every phase call; each tick costs `cost[k]` µs on the fake clock."""

    PHASES = ("inputs", "interlocks", "controllers", "policy", "outputs", "link", "stats")

    def __init__(self, clock, costs=(0,)):
        self.clock = clock
        self.costs = list(costs)
        self.calls = []
        self.starts = []  # fake-clock time at phase_inputs
        self.healthy = 1
        self.safe_reasons = []
        self.raise_in = None
        self.unhealthy_on_safe = False
        self.k = 0

    def _phase(self, name, now_ms):
        if name == self.raise_in:
            raise RuntimeError("phase failed")
        self.calls.append((name, now_ms))

    def phase_inputs(self, now_ms):
        self.starts.append(self.clock.t)
        self._phase("inputs", now_ms)

    def phase_interlocks(self, now_ms):
        self._phase("interlocks", now_ms)

    def phase_controllers(self, now_ms):
        self._phase("controllers", now_ms)

    def phase_policy(self, now_ms):
        self._phase("policy", now_ms)

    def phase_outputs(self, now_ms):
        self._phase("outputs", now_ms)
        cost = self.costs[self.k] if self.k < len(self.costs) else self.costs[-1]
        self.k += 1
        self.clock.advance(cost)

    def phase_link(self, now_ms):
        self._phase("link", now_ms)

    def phase_stats(self, now_ms):
        self._phase("stats", now_ms)

    def enter_safe_state(self, reason):
        self.safe_reasons.append(reason)
        if self.unhealthy_on_safe:
            self.healthy = 0


class Hal:
    def __init__(self):
        self.feeds = 0

    def watchdog_feed(self):
        self.feeds += 1


def make(costs=(0,), limit=3, t0=0, overshoot=0, max_behind=2):
    clock = FakeClock(t0, overshoot)
    runner = Runner(clock, costs)
    hal = Hal()
    ev = EventQueue(16)
    loop = Loop(PERIOD, runner, hal, ev, limit, clock_us=clock, sleep_us=clock.sleep,
                max_behind=max_behind)
    return loop, runner, hal, ev, clock


def events(ev):
    out = []
    while ev.count:
        h = ev.head
        out.append((ev.kind[h], ev.source[h], ev.value[h], ev.aux[h]))
        ev.pop()
    return out


# -- phases and time ----------------------------------------------------------------

def test_phases_run_in_order_every_tick_with_now_ms():
    loop, runner, hal, ev, clock = make()
    loop.tick(5_000_000)
    loop.tick(5_010_000)
    names = [c[0] for c in runner.calls]
    assert names == list(Runner.PHASES) * 2
    assert [c[1] for c in runner.calls] == [5000] * 7 + [5010] * 7
    assert ev.now_ms == 5010
    assert loop.ticks == 2


def test_now_ms_carries_sub_millisecond_remainders():
    loop, runner, *_ = make()
    seen = []
    t = 0
    for _ in range(8):
        loop.tick(t)
        seen.append(loop.now_ms)
        t += 1500
    assert seen == [0, 1, 3, 4, 6, 7, 9, 10]


def test_now_ms_is_continuous_across_the_us_wrap():
    loop, *_ = make()
    t = (1 << 30) - 25000
    loop.tick(t)
    ms0 = loop.now_ms
    for k in range(1, 6):
        t = ticks_add(t, PERIOD)
        loop.tick(t)
        assert ticks_diff(loop.now_ms, ms0) == 10 * k
    assert t < 100000  # the µs clock did wrap


def test_now_ms_wraps_at_2_30():
    loop, *_ = make()
    loop.tick(0)
    loop.now_ms = MASK - 5
    loop.tick(PERIOD)
    assert loop.now_ms == 4


def test_runner_without_required_members_rejected():
    class Half:
        def phase_inputs(self, now_ms):
            pass

    with pytest.raises(ValueError, match="phase_interlocks"):
        Loop(PERIOD, Half(), Hal(), EventQueue(4), 3, clock_us=FakeClock())


# -- stats ----------------------------------------------------------------------------

def test_last_max_window_max_and_mean():
    loop, runner, *_ = make(costs=(100, 300, 200))
    for k in range(3):
        loop.tick(k * PERIOD)
    assert loop.last_us == 200
    assert loop.max_us == 300
    assert loop.take_window_max() == 300
    assert loop.window_max_us == 0
    loop.tick(3 * PERIOD)
    assert loop.take_window_max() == 200
    assert loop.max_us == 300


def test_mean_starts_at_first_value_and_converges():
    loop, runner, *_ = make(costs=[400] * 5 + [800] * 200)
    loop.tick(0)
    assert loop.mean_us == 400
    for k in range(1, 5):
        loop.tick(k * PERIOD)
    assert loop.mean_us == 400
    prev = 400
    for k in range(5, 205):
        loop.tick(k * PERIOD)
        assert prev <= loop.mean_us <= 800
        prev = loop.mean_us
    assert loop.mean_us == 800


def test_mean_stays_small_int_for_huge_durations():
    loop, runner, *_ = make(costs=(100_000_000,))  # 100 s, above the EWMA clamp
    for k in range(50):
        loop.tick(k * PERIOD)
    assert loop._mean_x16 < (1 << 30)
    assert loop.mean_us == 0x3FFFFFF  # clamped (67 s), not wrapped or negative
    assert loop.max_us == 100_000_000


def test_tick_counter_wraps_at_2_30():
    loop, *_ = make()
    loop.ticks = (1 << 30) - 2
    for k in range(3):
        loop.tick(k * PERIOD)
    assert loop.ticks == 1


def test_jitter_histogram_buckets():
    loop, *_ = make()
    lates = (0, 49, 50, 99, 100, 249, 250, 999, 1000, 4999, 5000, 9999)
    for k, late in enumerate(lates):
        loop.tick(k * PERIOD, late)
    assert JITTER_EDGES == (50, 100, 250, 500, 1000, 2500, 5000)
    assert list(loop.jitter_hist) == [2, 2, 2, 1, 1, 1, 1, 2]
    loop.tick(99 * PERIOD)  # no late_us: not recorded
    assert sum(loop.jitter_hist) == len(lates)


# -- overruns ---------------------------------------------------------------------------

def test_overrun_counts_only_ticks_longer_than_the_period():
    loop, runner, *_ = make(costs=(PERIOD, PERIOD + 1, 5, PERIOD * 3), limit=10)
    for k in range(4):
        loop.tick(k * PERIOD * 4)
    assert loop.overruns == 2
    assert loop.overrun_streak == 1


def test_late_start_of_a_whole_period_is_an_overrun():
    loop, *_ = make(limit=10)
    loop.tick(0, PERIOD - 1)
    assert loop.overruns == 0
    loop.tick(PERIOD, PERIOD)
    assert loop.overruns == 1


def test_escalation_exactly_at_limit_consecutive_overruns():
    big = PERIOD + 1
    loop, runner, hal, ev, clock = make(costs=(big, big, 1, big, big, big, big, big), limit=3)
    t = 0
    for expect_fault in (0, 0, 0, 0, 0, 1, 1, 1):
        loop.tick(t)
        t += PERIOD * 2
        assert loop.fault == expect_fault
    assert loop.overruns == 7
    assert runner.safe_reasons == [EV_LOOP_FAULT]
    assert events(ev) == [(EV_LOOP_FAULT, 0, 3, big)]


def test_clear_fault_starts_a_new_episode():
    big = PERIOD + 1
    loop, runner, hal, ev, clock = make(costs=(big,), limit=2)
    for k in range(4):
        loop.tick(k * PERIOD * 2)
    assert loop.fault == 1 and runner.safe_reasons == [EV_LOOP_FAULT]
    assert loop.clear_fault() == R_OK
    assert loop.fault == 0
    loop.tick(10 * PERIOD)
    assert loop.fault == 0  # streak restarted from zero
    loop.tick(12 * PERIOD)
    assert loop.fault == 1
    assert runner.safe_reasons == [EV_LOOP_FAULT, EV_LOOP_FAULT]
    assert [e[0] for e in events(ev)] == [EV_LOOP_FAULT, EV_LOOP_FAULT]


# -- watchdog ---------------------------------------------------------------------------

def test_watchdog_fed_after_each_healthy_tick():
    loop, runner, hal, *_ = make()
    for k in range(5):
        loop.tick(k * PERIOD)
    assert hal.feeds == 5


def test_watchdog_not_fed_when_runner_unhealthy():
    loop, runner, hal, *_ = make()
    loop.tick(0)
    runner.healthy = 0
    loop.tick(PERIOD)
    loop.tick(2 * PERIOD)
    assert hal.feeds == 1
    runner.healthy = 1
    loop.tick(3 * PERIOD)
    assert hal.feeds == 2


def test_watchdog_not_fed_when_a_phase_fails():
    loop, runner, hal, *_ = make()
    runner.raise_in = "controllers"
    with pytest.raises(RuntimeError):
        loop.tick(0)
    assert hal.feeds == 0
    assert [c[0] for c in runner.calls] == ["inputs", "interlocks"]
    assert loop.ticks == 0


def test_watchdog_starved_when_safe_state_leaves_board_unhealthy():
    big = PERIOD + 1
    loop, runner, hal, *_ = make(costs=(big,), limit=2)
    runner.unhealthy_on_safe = True
    loop.tick(0)
    assert hal.feeds == 1
    loop.tick(2 * PERIOD)  # escalates; healthy is read after enter_safe_state
    assert loop.fault == 1
    assert hal.feeds == 1


def test_watchdog_still_fed_in_fault_while_runner_healthy():
    big = PERIOD + 1
    loop, runner, hal, *_ = make(costs=(big,), limit=2)
    for k in range(4):
        loop.tick(k * 2 * PERIOD)
    assert loop.fault == 1
    assert hal.feeds == 4


# -- run_forever ------------------------------------------------------------------------

def test_run_forever_deadlines_do_not_drift():
    costs = (3000, 7000, 1234, 9999, 0, 4321)
    loop, runner, hal, ev, clock = make(costs=costs, t0=12345)
    assert loop.run_forever(max_ticks=30) == 30
    assert runner.starts == [12345 + k * PERIOD for k in range(30)]
    # each sleep is exactly what was left of the period
    assert clock.sleeps[:5] == [PERIOD - c for c in costs[:5]]
    assert loop.overruns == 0 and list(loop.jitter_hist)[0] == 30


def test_run_forever_oversleeping_does_not_accumulate():
    loop, runner, hal, ev, clock = make(costs=(2000,), t0=0, overshoot=37)
    loop.run_forever(max_ticks=20)
    # every tick after the first starts 37 µs late, never 37 * k
    assert runner.starts == [0] + [k * PERIOD + 37 for k in range(1, 20)]
    assert loop.now_us == 19 * PERIOD  # scheduled times stay on the grid
    assert loop.jitter_hist[0] == 20


def test_run_forever_catches_up_after_a_long_tick():
    # tick 1 takes 2.5 periods: 2 periods behind (not more than max_behind=2)
    loop, runner, hal, ev, clock = make(costs=(1000, 25000, 1000, 1000, 1000, 1000), limit=5)
    loop.run_forever(max_ticks=6)
    assert runner.starts == [0, 10000, 35000, 36000, 40000, 50000]
    assert loop.now_us == 50000
    assert loop.skipped == 0
    # tick 1 overran by duration; tick 2 started 15 ms late (>= one period)
    assert loop.overruns == 2


def test_run_forever_reanchors_when_too_far_behind():
    loop, runner, hal, ev, clock = make(costs=(1000, 55000, 1000, 1000), limit=5)
    loop.run_forever(max_ticks=4)
    # after tick 1 (starts 10000, ends 65000) we are 4.5 periods behind deadline 20000:
    # 4 periods dropped, the grid keeps its phase
    assert loop.skipped == 4
    assert runner.starts == [0, 10000, 65000, 70000]
    assert [c[1] for c in runner.calls if c[0] == "inputs"] == [0, 10, 60, 70]
    assert loop.jitter_hist[7] == 1  # the 45 ms late start


def test_run_forever_across_the_clock_wrap():
    t0 = (1 << 30) - 25000
    loop, runner, hal, ev, clock = make(costs=(4000,), t0=t0)
    loop.run_forever(max_ticks=8)
    assert runner.starts == [(t0 + k * PERIOD) & MASK for k in range(8)]
    assert loop.overruns == 0
    assert hal.feeds == 8
    ms = [c[1] for c in runner.calls if c[0] == "inputs"]
    assert [ticks_diff(m, ms[0]) for m in ms] == [10 * k for k in range(8)]


def test_default_sleep_sleeps_in_microseconds():
    sleep_us = _default_sleep_us()
    t = time.monotonic()
    sleep_us(20000)
    assert 0.015 <= time.monotonic() - t < 1.0


# -- zero allocation under real MicroPython VMs -----------------------------------------

TICK_SCRIPT = r"""
from metal.core.compat import ticks_add
from metal.core.events import EventQueue
from metal.core.loop import Loop

class Runner:
    def __init__(self):
        self.healthy = 1
        self.safe = 0
    def phase_inputs(self, now_ms): pass
    def phase_interlocks(self, now_ms): pass
    def phase_controllers(self, now_ms): pass
    def phase_policy(self, now_ms): pass
    def phase_outputs(self, now_ms): pass
    def phase_link(self, now_ms): pass
    def phase_stats(self, now_ms): pass
    def enter_safe_state(self, reason): self.safe += 1

class Hal:
    def __init__(self): self.feeds = 0
    def watchdog_feed(self): self.feeds += 1

ev = EventQueue(16)
hal = Hal()
slow = Loop(1, Runner(), hal, ev, 3)  # every tick overruns: escalation path runs too
fast = Loop(10000, Runner(), hal, ev, 3)

def run(n):
    us = (1 << 30) - 5000000  # crosses the ticks_us wrap
    for k in range(n):
        slow.tick(us, k % 7000)
        fast.tick(us, k & 63)
        slow.take_window_max()
        if slow.fault and k % 100 == 0:
            slow.clear_fault()
        us = ticks_add(us, 10000)  # (us + 10000) could pass 2**30: a big int
        while ev.count:
            ev.pop()

run(20)
f = lambda: run(1000)
nbytes, err = measure_allocs(f, 1)
print("safe", slow._runner.safe, "feeds", hal.feeds)
print("alloc", nbytes, err)
"""


def test_tick_allocates_nothing_under_micropython(mpvm):
    r = mpvm.run(TICK_SCRIPT, prelude=True).check()
    assert r.lines[-1] == "alloc 0 None", r.stdout
    safe, feeds = r.lines[-2].split()[1::2]
    assert int(safe) >= 10  # fault episodes escalated (and cleared) inside the measured runs
    assert int(feeds) == 2 * (20 + 1000 + 1000)  # every tick complete and healthy: fed
