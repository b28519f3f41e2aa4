"""FanBank: duty caching, RPM from tach pulses, spin-up grace, stall
detection and recovery, published signals."""

from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metal.core.compat import ticks_add, ticks_diff
from metal.core.config import Fan
from metal.core.drivers.fans import FanBank
from metal.core.events import EventQueue
from metal.core.proto import (
    EV_FAN_STATE,
    FAN_OFF,
    FAN_OK,
    FAN_SPINUP,
    FAN_STALLED,
    R_OK,
    R_UNKNOWN_TARGET,
)
from metal.core.signals import Signals

from .fake_hal import micropython_vms, run_micropython
from .thermal_fake_hal import READ_ERROR, ThermalFakeHal

TICK = 10


def events_of(q, kind):
    out = []
    for k in range(q.count):
        i = (q.head + k) % q.size
        if q.kind[i] == kind:
            out.append((q.source[i], q.value[i], q.ms[i]))
    return out


class Rig:
    def __init__(self, fans=None, tick_ms=TICK, start_ms=0):
        if fans is None:
            fans = [
                Fan("f0", pwm_ch=0, tach_ch=0, zone=0, max_rpm=12000, stall_rpm=300,
                    pulses_per_rev=2, spinup_ms=2000, min_duty=200),
                Fan("f1", pwm_ch=1, tach_ch=1, zone=0, max_rpm=12000, stall_rpm=300,
                    pulses_per_rev=2, spinup_ms=2000, min_duty=200),
            ]
        self.hal = ThermalFakeHal()
        self.sig = Signals(0, len(fans), 0)
        self.q = EventQueue(64)
        self.fb_fans = fans
        self.fb = FanBank(fans, self.hal, self.sig, self.q, tick_ms)
        self.now = start_ms
        self.tick_ms = tick_ms

    def tick(self):
        """One loop tick: sample (the fake board counts this tick's tach
        pulses), input phase (step), output phase (apply)."""
        self.now = ticks_add(self.now, self.tick_ms)
        self.q.now_ms = self.now
        self.hal.sample(self.now * 1000)
        self.fb.step(self.now)
        self.fb.apply()

    def start(self, i, duty):
        """Drive fan i and run through its spin-up grace; the measuring
        window restarts on the tick the grace ends (now)."""
        self.fb.set_duty(i, duty)
        self.fb.apply()
        self.tick()
        assert self.fb.state[i] == FAN_SPINUP
        while self.fb.state[i] == FAN_SPINUP:
            self.tick()

    def run_ms(self, ms):
        for _ in range(ms // self.tick_ms):
            self.tick()


def test_set_duty_is_cached_until_apply_and_only_changes_are_written():
    r = Rig()
    assert r.fb.set_duty(0, 500) == R_OK
    assert r.hal.pwm[0] == -1
    r.fb.apply()
    assert r.hal.pwm[0] == 500 and r.hal.pwm[1] == 0
    writes = r.hal.pwm_writes
    r.fb.apply()
    assert r.hal.pwm_writes == writes
    r.fb.set_duty(0, 1500)
    r.fb.set_duty(1, -5)
    r.fb.apply()
    assert r.hal.pwm[0] == 1000 and r.hal.pwm[1] == 0
    assert r.fb.set_duty(2, 500) == R_UNKNOWN_TARGET
    assert r.fb.set_duty(-1, 500) == R_UNKNOWN_TARGET


def test_rpm_from_pulses_over_the_window():
    r = Rig()
    r.start(0, 600)
    r.hal.tach[0] = 1  # 1 pulse per 10 ms, 2 pulses per rev: 50 rev/s = 3000 RPM
    r.run_ms(490)
    assert r.fb.rpm[0] == 0  # no window has closed with pulses in it yet
    r.tick()
    assert r.fb.rpm[0] == 3000
    assert r.sig.v[r.sig.fan_rpm0] == 3000
    r.hal.tach[0] = 3  # 9000 RPM
    r.run_ms(500)
    assert r.fb.rpm[0] == 9000


def test_rpm_uses_real_elapsed_time_for_a_late_tick():
    r = Rig()
    r.start(0, 600)
    r.hal.tach[0] = 1
    r.tick()
    r.hal.tach[0] = 50  # 50 pulses...
    r.now = ticks_add(r.now, 990)  # ...over one late tick: 51 pulses in 1000 ms
    r.hal.sample(r.now * 1000)
    r.fb.step(r.now)
    assert r.fb.rpm[0] == 1530


def test_rpm_for_four_pulse_fans_and_no_overflow_on_huge_counts():
    fans = [Fan("f", 0, 0, 0, 20000, pulses_per_rev=4)]
    r = Rig(fans)
    r.start(0, 1000)
    r.hal.tach[0] = 4  # 4 pulses per 10 ms at 4 per rev = 100 rev/s
    r.run_ms(500)
    assert r.fb.rpm[0] == 6000
    r.hal.tach[0] = 10 ** 6  # a broken counter: capped, not a big int
    r.run_ms(500)
    assert r.fb.rpm[0] == 16000 * 60000 // (4 * 500)


def test_spinup_then_stall_at_exactly_spinup_plus_window():
    r = Rig()
    r.tick()
    assert r.fb.state[0] == FAN_OFF
    r.fb.set_duty(0, 500)
    r.fb.apply()
    t_applied = r.now
    r.tick()  # the first step that sees the applied duty
    assert r.fb.state[0] == FAN_SPINUP
    assert r.sig.v[r.sig.fan_state0] == FAN_SPINUP
    t_spin = r.now
    assert t_spin == t_applied + TICK
    # no pulses at all: grace for spinup_ms, then one full window
    while r.now - t_spin < 2000:
        r.tick()
        if r.now - t_spin < 2000:
            assert r.fb.state[0] == FAN_SPINUP
    assert r.fb.state[0] == FAN_OK  # grace over; not judged yet
    while r.fb.state[0] != FAN_STALLED:
        r.tick()
        assert r.now - t_spin <= 2500
    assert r.now - t_spin == 2000 + 500
    assert r.sig.v[r.sig.fan_state0] == FAN_STALLED
    assert events_of(r.q, EV_FAN_STATE) == [(0, FAN_STALLED, r.now)]


def test_a_fan_that_spins_up_in_time_is_never_stalled():
    r = Rig()
    r.fb.set_duty(0, 500)
    r.fb.apply()
    r.run_ms(1500)  # silent for most of the grace
    r.hal.tach[0] = 1
    r.run_ms(10000)
    assert r.fb.state[0] == FAN_OK
    assert r.fb.rpm[0] == 3000
    assert events_of(r.q, EV_FAN_STATE) == []


def test_stall_while_running_detected_within_two_windows_and_recovers():
    r = Rig()
    r.fb.set_duty(0, 500)
    r.fb.apply()
    r.hal.tach[0] = 1
    r.run_ms(3000)
    assert r.fb.state[0] == FAN_OK
    r.hal.tach[0] = 0
    t_stop = r.now
    while r.fb.state[0] != FAN_STALLED:
        r.tick()
        assert r.now - t_stop <= 1000
    r.hal.tach[0] = 1
    t_back = r.now
    while r.fb.state[0] != FAN_OK:
        r.tick()
        assert r.now - t_back <= 1000
    evs = events_of(r.q, EV_FAN_STATE)
    assert [(s, v) for s, v, _ in evs] == [(0, FAN_STALLED), (0, FAN_OK)]


def test_below_min_duty_is_not_judged_and_zero_is_off():
    r = Rig()
    r.fb.set_duty(0, 100)  # below min_duty 200
    r.fb.apply()
    r.run_ms(5000)
    assert r.fb.state[0] == FAN_OK
    r.fb.set_duty(0, 0)
    r.fb.apply()
    r.tick()
    assert r.fb.state[0] == FAN_OFF
    assert r.sig.v[r.sig.fan_state0] == FAN_OFF
    assert events_of(r.q, EV_FAN_STATE) == []


def test_stalled_fan_switched_off_reports_leaving_stalled():
    r = Rig()
    r.fb.set_duty(0, 500)
    r.fb.apply()
    r.run_ms(3000)
    assert r.fb.state[0] == FAN_STALLED
    r.fb.set_duty(0, 0)
    r.tick()
    r.tick()
    assert r.fb.state[0] == FAN_OFF
    evs = events_of(r.q, EV_FAN_STATE)
    assert [(s, v) for s, v, _ in evs] == [(0, FAN_STALLED), (0, FAN_OFF)]


def test_timing_across_the_tick_counter_wrap():
    r = Rig(start_ms=(1 << 30) - 1000)
    r.fb.set_duty(0, 500)
    r.fb.apply()
    r.tick()
    t_spin = r.now
    n = 0
    while r.fb.state[0] != FAN_STALLED:
        r.tick()
        n += 1
        assert n < 1000
    assert n * TICK == 2500
    assert r.now < t_spin  # wrapped on the way


def test_window_rounds_up_to_whole_ticks():
    r = Rig(tick_ms=30)
    assert r.fb.window_ms == 510
    r.start(0, 500)
    r.hal.tach[0] = 3  # 3 pulses per 30 ms = 50 rev/s
    r.run_ms(510)
    assert r.fb.rpm[0] == 3000


# -- tachometer reads and the O(1) steady state ---------------------------------------------

class CountingHal(ThermalFakeHal):
    def __init__(self):
        ThermalFakeHal.__init__(self)
        self.tach_reads = []  # (channel, pulses returned)

    def tach_pulses(self, ch):
        p = ThermalFakeHal.tach_pulses(self, ch)
        self.tach_reads.append((ch, p))
        return p


def test_tach_is_read_only_when_a_window_closes_or_restarts():
    r = Rig()
    r.hal = CountingHal()
    r.fb = FanBank(r.fb_fans, r.hal, r.sig, r.q, TICK)
    reads = r.hal.tach_reads
    r.tick()  # t=10: the first windows start (what was counted before them counts)
    r.hal.tach[0] = 1
    r.hal.tach[1] = 2
    for _ in range(49):  # t=20..500: mid-window, nothing to read
        r.tick()
    assert reads == []
    r.tick()  # t=510: both windows close, one read each with every pulse of the window
    assert reads == [(0, 50), (1, 100)]
    assert list(r.fb.rpm) == [3000, 6000]
    del reads[:]
    r.fb.set_duty(0, 600)
    r.fb.apply()
    r.tick()  # t=520: the start restarts fan 0's window, dropping the pulse before it
    assert reads == [(0, 1)]
    del reads[:]
    for k in range(20):  # a duty that moves but stays on changes nothing before a verdict
        r.fb.set_duty(0, 600 + 10 * k)
        r.tick()
    assert reads == []
    assert r.fb.state[0] == FAN_SPINUP


def test_clock_stepping_back_restarts_the_window_without_its_pulses():
    r = Rig()
    r.tick()  # t=10: the first window starts
    r.hal.tach[0] = 1
    r.run_ms(500)  # t=20..510: the first window closes
    assert r.fb.rpm[0] == 3000
    r.now = ticks_add(r.now, -15)
    r.tick()  # t=505: before the window start: restarts here, its pulse dropped
    r.run_ms(490)
    assert r.fb.rpm[0] == 3000
    r.tick()  # t=1005: a full window since the restart, 50 pulses
    assert r.fb.rpm[0] == 3000


def test_a_tach_read_error_counts_no_pulses():
    class DeadTach(ThermalFakeHal):
        def tach_pulses(self, ch):
            return READ_ERROR  # e.g. the sim HAL for a channel with no fan

    fans = [Fan("f", 0, 0, 0, 12000)]
    r = Rig(fans)
    r.hal = DeadTach()
    r.fb = FanBank(fans, r.hal, r.sig, r.q, TICK)
    r.start(0, 600)
    r.run_ms(500)
    assert r.fb.rpm[0] == 0 and r.fb.state[0] == FAN_STALLED


# -- the once-per-window reads give what per-tick accumulation gave ------------------------

class PerTickFanBank(FanBank):
    """The previous FanBank.step: tach read on every tick into a per-fan
    accumulator, every fan's state machine on every tick. The reference for the
    differential test below."""

    def __init__(self, *args):
        FanBank.__init__(self, *args)
        self._pulses = array("i", [0] * self.n)

    def step(self, now_ms):
        if not self._started:
            self._started = 1
            for i in range(self.n):
                self._win_start[i] = now_ms
                self._pulses[i] = 0
        v = self._v
        pulses = self._pulses
        win_start = self._win_start
        for i in range(self.n):
            p = self._tach(self.tach_ch[i])
            if p > 0:
                pulses[i] = min(pulses[i] + p, 16000)
            d = self.applied[i]
            st = self.state[i]
            if d <= 0:
                if st != FAN_OFF:
                    self._set_state(i, FAN_OFF)
            elif st == FAN_OFF:
                self._set_state(i, FAN_SPINUP)
                self._spin_start[i] = now_ms
                win_start[i] = now_ms
                pulses[i] = 0
            elif st == FAN_SPINUP:
                if ticks_diff(now_ms, self._spin_start[i]) >= self.spinup_ms[i]:
                    self._set_state(i, FAN_OK)
                    win_start[i] = now_ms
                    pulses[i] = 0
            elapsed = ticks_diff(now_ms, win_start[i])
            if elapsed >= self.window_ms:
                elapsed = min(elapsed, 100000)
                den = self.ppr[i] * elapsed
                rpm = (pulses[i] * 60000 + (den >> 1)) // den
                self.rpm[i] = rpm
                pulses[i] = 0
                win_start[i] = now_ms
                st = self.state[i]
                if st == FAN_OK or st == FAN_STALLED:
                    if d >= self.min_duty[i] and rpm < self.stall_rpm[i]:
                        self._set_state(i, FAN_STALLED)
                    else:
                        self._set_state(i, FAN_OK)
            elif elapsed < 0:
                win_start[i] = now_ms
                pulses[i] = 0
            st = self.state[i]
            v[self._rpm0 + i] = self.rpm[i]
            v[self._state0 + i] = st
            v[self._stalled0 + i] = 1 if st == FAN_STALLED else 0


def observable(r):
    fb = r.fb
    v = r.sig.v
    return (list(fb.rpm), list(fb.state), list(v[r.sig.fan_rpm0:r.sig.fan_rpm0 + 3 * fb.n]),
            [(q[0], q[1], q[2]) for q in events_of(r.q, EV_FAN_STATE)], list(r.hal.pwm))


FAN_ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["duty", "rate", "late", "back", "ticks"]),
        st.integers(min_value=0, max_value=2),
        st.integers(min_value=0, max_value=400),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(FAN_ACTIONS)
def test_matches_per_tick_accumulation(actions):
    fans = [
        Fan("a", pwm_ch=0, tach_ch=0, zone=0, max_rpm=12000, stall_rpm=300,
            pulses_per_rev=2, spinup_ms=200, min_duty=200),
        Fan("b", pwm_ch=1, tach_ch=1, zone=0, max_rpm=12000, stall_rpm=1000,
            pulses_per_rev=4, spinup_ms=0, min_duty=0),
        Fan("c", pwm_ch=2, tach_ch=2, zone=0, max_rpm=12000, stall_rpm=300,
            pulses_per_rev=1, spinup_ms=730, min_duty=300),
    ]
    new = Rig(fans, start_ms=(1 << 30) - 3000)  # crosses the tick counter wrap
    ref = Rig(fans, start_ms=(1 << 30) - 3000)
    ref.fb = PerTickFanBank(fans, ref.hal, ref.sig, ref.q, TICK)
    duties = (0, 100, 250, 600, 1000)
    for name, i, n in actions:
        for r in (new, ref):
            if name == "duty":
                r.fb.set_duty(i, duties[n % 5])
            elif name == "rate":
                r.hal.tach[i] = n % 7
            elif name == "late":  # a tick that comes n ms late
                r.now = ticks_add(r.now, n)
            elif name == "back":  # the clock steps back (not with ticks_ms; handled anyway)
                r.now = ticks_add(r.now, -(n % 50) - TICK)
        for _ in range(n if name == "ticks" else 1):
            new.tick()
            ref.tick()
            assert observable(new) == observable(ref)


# -- MicroPython: zero allocation on the tick path ---------------------------------------------

ALLOC_SCRIPT = r"""
import gc, micropython
from fake_hal import FakeHal
from metal.core.config import Fan
from metal.core.signals import Signals
from metal.core.events import EventQueue
from metal.core.drivers.fans import FanBank
from metal.core.compat import ticks_add

fans = (Fan("a", 0, 0, 0, 12000, spinup_ms=300), Fan("b", 1, 1, 0, 12000, min_duty=300),
        Fan("c", 2, 2, 1, 12000, pulses_per_rev=4), Fan("d", 3, 3, 1, 12000, spinup_ms=0))
hal = FakeHal()
hal.recording = False
q = EventQueue(16)
fb = FanBank(fans, hal, Signals(0, 4, 0), q, 10)
rate = [0, 0, 0, 0]
seen = [0, 0, 0, 0]  # ticks in FAN_OK, STALLED, SPINUP, OFF (any fan)
st = [(1 << 30) - 5000]  # now: wraps during the run

def run(ticks):
    for k in range(ticks):
        now = ticks_add(st[0], 10)
        st[0] = now
        for i in range(4):
            hal.tach[i] += rate[i]  # the board counts; tach_pulses takes and clears
        ph = k % 400
        if ph == 0:
            for i in range(4):
                fb.set_duty(i, 600)
                rate[i] = 2
        elif ph == 150:
            rate[0] = 0  # stalls
            fb.set_duty(1, 250)  # below min_duty: not judged
        elif ph == 250:
            rate[0] = 3
            fb.set_duty(2, 0)
        elif ph == 300:
            for i in range(4):
                fb.set_duty(i, 0)
        fb.step(now)
        fb.apply()
        for i in range(4):
            seen[fb.state[i]] += 1
        while q.count:
            q.pop()

run(800)
gc.collect()
gc.disable()
a = gc.mem_alloc()
micropython.heap_lock()
try:
    run(4000)
finally:
    micropython.heap_unlock()
d = gc.mem_alloc() - a
gc.enable()
print("alloc", d, "seen", seen[0], seen[1], seen[2], seen[3])
"""


@pytest.mark.micropython
@pytest.mark.parametrize("vm", ["unix", "wasm"])
def test_zero_allocation_under_micropython(vm):
    if vm not in micropython_vms():
        pytest.skip("MicroPython %s VM not installed" % vm)
    code, out, err = run_micropython(ALLOC_SCRIPT, vm)
    assert code == 0, err
    words = out.split()
    assert words[0] == "alloc", out
    assert int(words[1]) == 0, "the fan tick allocated %s bytes" % words[1]
    assert all(int(w) > 0 for w in words[3:7]), out  # every state was visited
