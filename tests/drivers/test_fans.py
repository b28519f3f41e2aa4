"""FanBank: duty caching, RPM from tach pulses, spin-up grace, stall
detection and recovery, published signals."""

from metal.core.compat import ticks_add
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

from .thermal_fake_hal import ThermalFakeHal

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
        self.fb = FanBank(fans, self.hal, self.sig, self.q, tick_ms)
        self.now = start_ms
        self.tick_ms = tick_ms

    def tick(self):
        """One loop tick: input phase (step), output phase (apply)."""
        self.now = ticks_add(self.now, self.tick_ms)
        self.q.now_ms = self.now
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
