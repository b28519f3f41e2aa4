"""ThermalController with real SensorBank and FanBank on the fake HAL: boot,
auto/stepwise, failsafe, manual/auto/setpoint commands, forced max, the
overheat timer across the tick wrap, and the zero-allocation check of every
thermal tick path under both MicroPython VMs."""

import os
import shutil
import subprocess

import pytest

from metal.core.compat import ticks_add, ticks_diff
from metal.core.config import (
    SENSOR_LM75,
    SENSOR_NTC,
    SENSOR_TMP117,
    Fan,
    Limits,
    Sensor,
    Zone,
)
from metal.core.drivers.fans import FanBank
from metal.core.drivers.sensors import SensorBank
from metal.core.drivers.thermal import (
    MODE_AUTO,
    MODE_FAILSAFE,
    MODE_MANUAL,
    MODE_MAX,
    ThermalController,
)
from metal.core.events import EventQueue
from metal.core.hal import READ_ERROR
from metal.core.proto import (
    EV_OVERHEAT_CANCEL,
    EV_OVERHEAT_POWER_DOWN,
    EV_OVERHEAT_START,
    EV_ZONE_MODE,
    R_INVALID_ARGUMENT,
    R_OK,
    R_UNKNOWN_TARGET,
)
from metal.core.signals import Signals

from .thermal_fake_hal import ThermalFakeHal

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TICK = 10
STALE = 5
SETTLE = 250  # ticks for the cpu zone's PID to reach its 200 ‰ floor at 25 °C
TMP117_25C = 0x0C80
LM75_72C = 72 << 8


def events_of(q, kind):
    out = []
    for k in range(q.count):
        i = (q.head + k) % q.size
        if q.kind[i] == kind:
            out.append((q.source[i], q.value[i], q.aux[i], q.ms[i]))
    return out


class Rig:
    """Two zones: cpu (NTC + TMP117, two fans), io (LM75, one fan, a step table)."""

    def __init__(self, start_ms=0, failsafe_duty=1000, overheat_ms=60000):
        self.sensors = [
            Sensor("ntc0", SENSOR_NTC, 0, 0, 80000, 95000),
            Sensor("tmp1", SENSOR_TMP117, 1, 0, 80000, 90000),
            Sensor("lm2", SENSOR_LM75, 2, 1, 80000, 85000),
        ]
        self.fans = [
            Fan("f0", pwm_ch=0, tach_ch=0, zone=0, max_rpm=12000, min_duty=200),
            Fan("f1", pwm_ch=1, tach_ch=1, zone=0, max_rpm=12000, min_duty=300),
            Fan("f2", pwm_ch=2, tach_ch=2, zone=1, max_rpm=12000, min_duty=250),
        ]
        self.zones = [
            Zone("cpu", 60000, kp=20000, ki=2000, min_duty=200, max_duty=1000,
                 failsafe_duty=failsafe_duty, boot_duty=600, slew_permille_per_tick=20),
            Zone("io", 80000, min_duty=150, max_duty=900, boot_duty=500,
                 steps=((70000, 500), (84000, 1000))),
        ]
        self.limits = Limits(tick_us=TICK * 1000, stale_ticks=STALE,
                             overheat_timer_ms=overheat_ms)
        self.hal = ThermalFakeHal()
        self.hal.adc[0] = 32768  # 25 °C
        self.hal.i2c[1] = TMP117_25C
        self.hal.i2c[2] = LM75_72C
        self.sig = Signals(3, 3, 0)
        self.q = EventQueue(64)
        self.sb = SensorBank(self.sensors, self.hal, self.sig, self.q, STALE)
        self.fb = FanBank(self.fans, self.hal, self.sig, self.q, TICK)
        self.tc = ThermalController(self.zones, self.sb, self.fb, self.sig, self.q, self.limits)
        self.now = start_ms

    def tick(self):
        self.now = ticks_add(self.now, TICK)
        self.q.now_ms = self.now
        self.sb.step(self.now)
        self.fb.step(self.now)
        self.tc.step(self.now)

    def ticks(self, n):
        for _ in range(n):
            self.tick()

    def pwm(self):
        return list(self.hal.pwm[:3])


# -- boot -------------------------------------------------------------------------------------

def test_fans_at_boot_duty_before_the_first_tick():
    r = Rig()
    assert r.pwm() == [600, 600, 500]
    assert list(r.tc.duty) == [600, 500]


def test_boot_hands_over_bumplessly_to_auto():
    r = Rig()
    r.tick()
    # cpu zone at 25 °C, setpoint 60 °C: the PID takes over from the boot
    # duty and walks down one slew step per tick (35 °C below setpoint asks
    # for less than the integral can hold, so it cannot stay at 600)
    assert r.tc.duty[0] == 580
    r.tick()
    assert r.tc.duty[0] == 560
    r.ticks(SETTLE)
    assert r.tc.duty[0] == 200
    assert r.tc.mode[0] == MODE_AUTO
    assert events_of(r.q, EV_ZONE_MODE) == []
    assert r.tc.failsafe_any == 0


def test_sensor_dead_at_boot_holds_boot_duty_then_failsafe_on_the_stale_tick():
    r = Rig()
    r.hal.i2c[1] = READ_ERROR
    for _ in range(STALE - 1):
        r.tick()
        assert r.tc.duty[0] == 600
        assert r.pwm()[:2] == [600, 600]
    r.tick()
    assert r.tc.mode[0] == MODE_FAILSAFE
    assert r.tc.duty[0] == 1000
    assert r.pwm() [:2] == [1000, 1000]
    assert r.tc.failsafe_any == 1
    assert [(s, v) for s, v, _, _ in events_of(r.q, EV_ZONE_MODE)] == [(0, MODE_FAILSAFE)]
    assert r.tc.mode[1] == MODE_AUTO  # the other zone is unaffected


def test_zone_without_sensors_is_failsafe_from_the_first_tick():
    sensors = [Sensor("tmp", SENSOR_TMP117, 1, 0, 80000, 90000)]
    fans = [Fan("f0", 0, 0, 0, 12000), Fan("f1", 1, 1, 1, 12000)]
    zones = [Zone("a", 60000), Zone("b", 60000, failsafe_duty=800)]
    hal = ThermalFakeHal()
    sig = Signals(1, 2, 0)
    q = EventQueue(16)
    sb = SensorBank(sensors, hal, sig, q, STALE)
    fb = FanBank(fans, hal, sig, q, TICK)
    tc = ThermalController(zones, sb, fb, sig, q, Limits(stale_ticks=STALE))
    sb.step(10)
    fb.step(10)
    tc.step(10)
    assert tc.mode[1] == MODE_FAILSAFE and tc.duty[1] == 800
    assert tc.mode[0] == MODE_AUTO
    assert tc.failsafe_any == 1


# -- auto ---------------------------------------------------------------------------------

def test_zone_duty_is_the_max_of_pid_and_steps_and_fans_follow():
    r = Rig()
    r.ticks(50)
    # io zone: 72 °C is below its 80 °C setpoint (PID at its minimum) but
    # above the 70 °C step: the step table wins
    assert r.tc.duty[1] == 500
    assert r.pwm()[2] == 500
    r.hal.i2c[2] = 86 << 8  # above the 84 °C step (1000) but zone max_duty is 900
    r.tick()
    assert r.tc.duty[1] == 900


def test_hot_zone_raises_duty_and_fan_min_duty_is_respected():
    r = Rig()
    r.ticks(SETTLE)
    assert r.tc.duty[0] == 200
    assert r.pwm()[:2] == [200, 300]  # f1 never below its own min_duty 300
    r.hal.i2c[1] = 70 << 7  # TMP117 70 °C (10 °C above setpoint)
    r.tick()
    assert r.sb.zone_max(0) == 70000
    assert r.tc.duty[0] == 220  # slew 20 per tick
    r.ticks(40)
    assert r.tc.duty[0] >= 400
    assert r.pwm()[0] == r.tc.duty[0] and r.pwm()[1] == r.tc.duty[0]


# -- failsafe ------------------------------------------------------------------------------

def test_sensor_lost_while_running_drives_zone_to_failsafe_and_back():
    r = Rig()
    r.ticks(SETTLE)
    assert r.tc.duty[0] == 200
    r.hal.adc[0] = 65535  # NTC open
    for _ in range(STALE - 1):
        r.tick()
        assert r.tc.mode[0] == MODE_AUTO
    r.tick()
    assert r.tc.mode[0] == MODE_FAILSAFE
    assert r.tc.duty[0] == 1000 and r.pwm()[:2] == [1000, 1000]
    assert r.tc.failsafe_any == 1
    r.ticks(10)
    r.hal.adc[0] = 32768
    r.tick()
    assert r.tc.mode[0] == MODE_AUTO
    assert r.tc.failsafe_any == 0
    assert r.tc.duty[0] == 980  # from failsafe down by the slew
    r.tick()
    assert r.tc.duty[0] == 960
    assert [(s, v) for s, v, _, _ in events_of(r.q, EV_ZONE_MODE)] == [
        (0, MODE_FAILSAFE), (0, MODE_AUTO)]


def test_failsafe_never_lowers_a_higher_manual_duty():
    r = Rig(failsafe_duty=700)
    r.ticks(10)
    assert r.tc.set_manual(0, 900) == R_OK
    r.tick()
    r.hal.i2c[1] = READ_ERROR
    r.ticks(STALE)
    assert r.tc.mode[0] == MODE_FAILSAFE
    assert r.tc.duty[0] == 900
    assert r.tc.set_manual(0, 300) == R_OK  # accepted, but failsafe rules
    r.tick()
    assert r.tc.duty[0] == 700
    r.hal.i2c[1] = TMP117_25C
    r.tick()
    assert r.tc.mode[0] == MODE_MANUAL
    assert r.tc.duty[0] == 300


# -- commands ----------------------------------------------------------------------------------

def snapshot(tc):
    return (bytes(tc.requested), list(tc.manual_duty), list(tc.setpoint), bytes(tc.mode))


def test_manual_and_auto_commands():
    r = Rig()
    r.ticks(SETTLE)
    assert r.tc.set_manual(0, 450) == R_OK
    r.tick()
    assert r.tc.mode[0] == MODE_MANUAL
    assert r.tc.duty[0] == 450 and r.pwm()[:2] == [450, 450]
    assert r.tc.set_manual(0, 100) == R_OK
    r.tick()
    assert r.pwm()[:2] == [200, 300]  # fans' own minimums
    assert r.tc.set_manual(0, 0) == R_OK
    r.tick()
    assert r.pwm()[:2] == [0, 0]  # 0 really stops them
    assert r.tc.set_manual(0, 800) == R_OK
    r.tick()
    assert r.tc.set_auto(0) == R_OK
    r.tick()
    assert r.tc.mode[0] == MODE_AUTO
    assert r.tc.duty[0] == 780  # from manual down by the slew
    r.tick()
    assert r.tc.duty[0] == 760
    assert [(s, v) for s, v, _, _ in events_of(r.q, EV_ZONE_MODE)] == [
        (0, MODE_MANUAL), (0, MODE_AUTO)]


def test_setpoint_command_changes_the_control_target():
    r = Rig()
    r.ticks(SETTLE)
    assert r.tc.duty[0] == 200
    assert r.tc.set_setpoint(0, 20000) == R_OK  # 25 °C is now 5 °C too hot
    assert r.tc.setpoint[0] == 20000
    r.ticks(20)
    assert r.tc.duty[0] > 250


@pytest.mark.parametrize("call, expected", [
    (lambda tc: tc.set_manual(0, 1001), R_INVALID_ARGUMENT),
    (lambda tc: tc.set_manual(0, -1), R_INVALID_ARGUMENT),
    (lambda tc: tc.set_manual(2, 500), R_UNKNOWN_TARGET),
    (lambda tc: tc.set_manual(-1, 500), R_UNKNOWN_TARGET),
    (lambda tc: tc.set_auto(2), R_UNKNOWN_TARGET),
    (lambda tc: tc.set_auto(-1), R_UNKNOWN_TARGET),
    (lambda tc: tc.set_setpoint(0, -1), R_INVALID_ARGUMENT),
    (lambda tc: tc.set_setpoint(0, 120001), R_INVALID_ARGUMENT),
    (lambda tc: tc.set_setpoint(0, 90000), R_INVALID_ARGUMENT),  # = lowest crit of zone 0
    (lambda tc: tc.set_setpoint(1, 85000), R_INVALID_ARGUMENT),  # = crit of lm2
    (lambda tc: tc.set_setpoint(5, 50000), R_UNKNOWN_TARGET),
])
def test_bad_commands_are_refused_and_change_nothing(call, expected):
    r = Rig()
    r.ticks(30)
    before = snapshot(r.tc)
    duty_before = list(r.tc.duty)
    assert call(r.tc) == expected
    assert snapshot(r.tc) == before
    r.tick()
    assert r.tc.mode[0] == MODE_AUTO and r.tc.mode[1] == MODE_AUTO
    assert abs(r.tc.duty[0] - duty_before[0]) <= 20
    assert events_of(r.q, EV_ZONE_MODE) == []


def test_setpoint_just_below_crit_is_accepted():
    r = Rig()
    assert r.tc.set_setpoint(0, 89999) == R_OK
    assert r.tc.set_setpoint(1, 0) == R_OK


# -- forced max ------------------------------------------------------------------------------

def test_force_max_overrides_every_mode_and_releases_bumplessly():
    r = Rig()
    r.ticks(SETTLE)
    r.tc.set_manual(1, 300)
    r.tick()
    r.tc.force_max = 1
    r.tick()
    assert bytes(r.tc.mode) == bytes([MODE_MAX, MODE_MAX])
    assert list(r.tc.duty) == [1000, 1000]
    assert r.pwm() == [1000, 1000, 1000]
    r.tc.force_max = 0
    r.tick()
    assert bytes(r.tc.mode) == bytes([MODE_AUTO, MODE_MANUAL])
    assert list(r.tc.duty) == [980, 300]  # down from max by the slew
    r.tick()
    assert r.tc.duty[0] == 960
    modes = [(s, v) for s, v, _, _ in events_of(r.q, EV_ZONE_MODE)]
    assert modes == [(1, MODE_MANUAL), (0, MODE_MAX), (1, MODE_MAX), (0, MODE_AUTO),
                     (1, MODE_MANUAL)]


# -- overheat timer --------------------------------------------------------------------------

def test_overheat_expires_exactly_on_time_across_the_tick_wrap():
    start = (1 << 30) - 100
    r = Rig(start_ms=start - TICK * 20)
    r.ticks(20)
    assert r.now == start
    r.hal.i2c[1] = 91 << 7  # 91 °C
    r.tick()
    t0 = r.now
    assert r.tc.overheat_start(1, t0) == R_OK
    assert r.tc.overheat_running == 1
    assert r.tc.overheat_ms_left(t0) == 60000
    assert events_of(r.q, EV_OVERHEAT_START) == [(1, 91000, 60000, t0)]
    r.tick()
    assert list(r.tc.duty) == [1000, 1000] and r.pwm() == [1000, 1000, 1000]
    # idempotent while running: the countdown is not restarted
    assert r.tc.overheat_start(1, r.now) == R_OK
    assert len(events_of(r.q, EV_OVERHEAT_START)) == 1
    while ticks_diff(r.now, t0) < 60000 - TICK:
        r.tick()
        assert r.tc.overheat_expired == 0
    assert r.tc.overheat_ms_left(r.now) == TICK
    r.tick()
    assert r.now < t0  # the tick counter wrapped on the way
    assert ticks_diff(r.now, t0) == 60000
    assert r.tc.overheat_expired == 1
    assert r.tc.overheat_running == 0
    assert events_of(r.q, EV_OVERHEAT_POWER_DOWN) == [(1, 91000, 0, r.now)]
    # fans stay at max after expiry; a new start does not re-arm the timer
    r.ticks(10)
    assert r.pwm() == [1000, 1000, 1000]
    r.tc.overheat_start(1, r.now)
    assert r.tc.overheat_running == 0 and len(events_of(r.q, EV_OVERHEAT_START)) == 1
    r.tc.overheat_cancel()
    assert r.tc.overheat_expired == 0
    assert len(events_of(r.q, EV_OVERHEAT_CANCEL)) == 1


def test_overheat_cancel_before_expiry_recovers():
    r = Rig(start_ms=(1 << 30) - 100)
    r.ticks(SETTLE)
    r.tc.overheat_start(0, r.now)
    r.ticks(3000)  # 30 s
    assert r.tc.overheat_running == 1
    assert r.tc.overheat_cancel() == R_OK
    assert r.tc.overheat_running == 0
    assert [(s, v) for s, v, _, _ in events_of(r.q, EV_OVERHEAT_CANCEL)] == [(0, 25000)]
    r.tick()
    assert r.tc.mode[0] == MODE_AUTO
    r.ticks(4000)  # well past the original deadline
    assert r.tc.overheat_expired == 0
    assert events_of(r.q, EV_OVERHEAT_POWER_DOWN) == []
    assert r.tc.duty[0] == 200  # back under control
    # cancel when idle: nothing happens
    assert r.tc.overheat_cancel() == R_OK
    assert len(events_of(r.q, EV_OVERHEAT_CANCEL)) == 1


# -- the zone PID is pid.Pid, written out -------------------------------------------------

class ZoneSummaries:
    """Just the per-zone summaries of a SensorBank (what step() reads), set
    directly so a zone's PID can see any temperature, not only a sensor's."""

    def __init__(self, n_zones):
        self.n = 0
        self.zone = []
        self.crit_mc = []
        self.mc = []
        self.n_zones = n_zones
        self.zone_count = bytearray([1] * n_zones)
        self.zone_bad = bytearray(n_zones)
        self.zone_pending = bytearray(n_zones)
        self.zone_max_mc = [0] * n_zones


@pytest.mark.parametrize("kp, ki, kd, slew, tick_ms", [
    (20000, 2000, 0, 20, 10),  # the default tuning
    (20000, 2000, 5000, 20, 10),  # with a D term
    (1000000, 1000000, 1000000, 1000, 1),  # every gain at GAIN_MAX
    (1, 1, 1, 1, 1000),
    (0, 50000, 0, 7, 3),
    (300000, 0, 0, 1000, 10),
    (0, 0, 0, 20, 10),
])
def test_zone_pid_matches_pid_update_tick_for_tick(kp, ki, kd, slew, tick_ms):
    # The controller runs each zone's PID written out on flat arrays, with a
    # shortcut while the output and integral sit pinned at a bound. Drive a
    # zone through cold and hot stretches (long enough to pin both ways),
    # extremes, setpoint changes and manual/auto switches (bumpless resets),
    # and check every output against the reference Pid fed the same inputs.
    import random

    from metal.core.drivers.pid import Pid

    rnd = random.Random(kp * 7 + ki * 3 + kd + slew + tick_ms)
    zones = [Zone("z", 40000, kp=kp, ki=ki, kd=kd, min_duty=150, max_duty=900,
                  slew_permille_per_tick=slew)]
    sb = ZoneSummaries(1)
    hal = ThermalFakeHal()
    sig = Signals(0, 1, 0)
    q = EventQueue(64)
    fb = FanBank([Fan("f", 0, 0, 0, 12000, min_duty=0)], hal, sig, q, tick_ms)
    tc = ThermalController(zones, sb, fb, sig, q, Limits(tick_us=tick_ms * 1000))
    ref = Pid(kp, ki, kd, 150, 900, slew, tick_ms)
    t = 40000
    seen = set()
    for k in range(4000):
        if k % 250 == 0:  # a new stretch: cold, hot, near the setpoint, wandering
            kind = rnd.choice(("cold", "hot", "near", "near", "walk"))
        sp = tc.setpoint[0]
        if kind == "cold":
            t = sp - 20000 + rnd.randint(-100, 100)
        elif kind == "hot":
            t = sp + 20000 + rnd.randint(-100, 100)
        elif kind == "near":  # just either side of it, e.g. right after a pinned stretch
            t = sp + rnd.randint(-300, 300)
        else:
            t = max(-200000, min(200000, t + rnd.randint(-400, 400)))
        if rnd.random() < 0.01:
            t = rnd.choice((-200000, 200000, -(1 << 29) + 1, (1 << 29) - 1))
        sb.zone_max_mc[0] = t
        if rnd.random() < 0.005:
            assert tc.set_setpoint(0, rnd.randint(0, 120000)) == R_OK
        if rnd.random() < 0.01:
            tc.set_manual(0, rnd.randint(0, 1000))
        elif rnd.random() < 0.03:
            tc.set_auto(0)
        entering = tc.mode[0] != MODE_AUTO or tc.booting[0]
        held = tc.duty[0]
        tc.step(k * tick_ms)
        if tc.mode[0] != MODE_AUTO:
            continue
        if entering:
            ref.reset(held)  # what the controller does on entering AUTO (or leaving boot)
        out = ref.update(tc.setpoint[0], t)
        assert tc.duty[0] == out, k
        assert tc.pid[0].out == ref.out and tc.pid[0].i == ref.i, k
        assert fb.duty[0] == out and hal.pwm[0] == out, k
        seen.add(out)
        while q.count:
            q.pop()
    assert len(seen) > 3  # the output did move


def test_fans_are_written_only_when_a_zone_duty_changes():
    r = Rig()
    r.ticks(SETTLE)  # the cpu zone at its 200 ‰ floor, io held by its step table
    duty = list(r.tc.duty)
    writes = r.hal.pwm_writes
    r.ticks(50)
    assert list(r.tc.duty) == duty and r.hal.pwm_writes == writes
    r.tc.set_manual(0, 450)
    r.tick()  # the change reaches the PWM on the tick it is made
    assert r.pwm() == [450, 450, duty[1]]
    assert r.hal.pwm_writes == writes + 2


# -- zero allocation under MicroPython ------------------------------------------------

ALLOC_SCRIPT = r'''
import gc
import micropython
from metal.core.config import Sensor, Fan, Zone, Limits, SENSOR_NTC, SENSOR_TMP117, SENSOR_LM75
from metal.core.signals import Signals
from metal.core.events import EventQueue
from metal.core.hal import READ_ERROR
from metal.core.compat import ticks_add
from metal.core.drivers.sensors import SensorBank
from metal.core.drivers.fans import FanBank
from metal.core.drivers.thermal import ThermalController
from metal.core.drivers.pid import Pid, stepwise, steps_table
from thermal_fake_hal import ThermalFakeHal

sensors = [Sensor("n0", SENSOR_NTC, 0, 0, 70000, 90000),
           Sensor("t1", SENSOR_TMP117, 1, 0, 70000, 90000),
           Sensor("l2", SENSOR_LM75, 2, 1, 70000, 85000)]
fans = [Fan("f0", 0, 0, 0, 12000), Fan("f1", 1, 1, 0, 12000, min_duty=300),
        Fan("f2", 2, 2, 1, 12000, spinup_ms=300)]
zones = [Zone("cpu", 60000), Zone("io", 50000, kd=5000, steps=((40000, 400), (60000, 800)))]
hal = ThermalFakeHal()
sig = Signals(3, 3, 0)
q = EventQueue(32)
sb = SensorBank(sensors, hal, sig, q, 5)
fb = FanBank(fans, hal, sig, q, 10)
tc = ThermalController(zones, sb, fb, sig, q, Limits(stale_ticks=5, overheat_timer_ms=3000))
pid = Pid(1000000, 1000000, 1000000, 0, 1000, 1000, 1)
tbl = steps_table(((40000, 400), (60000, 800)))
NTC_RAWS = (32768, 65535, 0, 20000, READ_ERROR, 7387)
I2C_RAWS = (0x0C80, 0xFF80, READ_ERROR, 0x7FFF, 0x8000, 0x2800, 0xE480)
EXT = (0, 200000, -200000, 300000, -300000, 30000, 1 << 29, -(1 << 29))
state = [(1 << 30) - 5000, 0]  # now (wraps during the run), tick count
# ticks seen in: auto, manual, failsafe, max, a sensor down, a fan stalled,
# overheat running, overheat expired
paths = [0] * 8


def one_tick():
    now = ticks_add(state[0], 10)
    state[0] = now
    k = state[1] + 1
    state[1] = k
    q.now_ms = now
    if k % 37 == 0:
        hal.adc[0] = NTC_RAWS[(k // 37) % 6]
    if k % 23 == 0:
        hal.i2c[1] = I2C_RAWS[(k // 23) % 7]
        hal.i2c[2] = I2C_RAWS[(k // 23 + 3) % 7]
    if k % 50 == 0:
        hal.tach[0] = (k // 50) % 3
        hal.tach[2] = (k // 50) % 2
    hal.tach[1] = 1
    sb.step(now)
    fb.step(now)
    if k % 97 == 0:
        tc.set_manual(0, (k * 7) % 1001)
        tc.set_setpoint(1, 45000)
        tc.set_manual(9, 5)
        tc.set_setpoint(0, 999999)
    if k % 131 == 0:
        tc.set_auto(0)
    r = k % 1000
    if r == 100:
        tc.force_max = 1
    elif r == 150:
        tc.force_max = 0
    elif r == 500 or r == 600:
        tc.overheat_start(1, now)  # the second call is a no-op
    elif r == 950:
        tc.overheat_cancel()
    tc.step(now)
    e = EXT[k % 8]
    pid.update(30000, e)
    stepwise(tbl, e)
    if k % 100 == 0:
        pid.reset(k % 1001)
    paths[tc.mode[0]] += 1
    if sb.state[0] or sb.state[1] or sb.state[2]:
        paths[4] += 1
    if fb.state[0] == 1 or fb.state[2] == 1:
        paths[5] += 1
    if tc.overheat_running:
        paths[6] += 1
    if tc.overheat_expired:
        paths[7] += 1
    while q.count > 20:
        q.pop()


def run(n):
    for _ in range(n):
        one_tick()


run(3000)  # every path once, unlocked
for i in range(8):
    paths[i] = 0
N = 5000
gc.collect()
gc.disable()
a = gc.mem_alloc()
micropython.heap_lock()
try:
    run(N)
finally:
    micropython.heap_unlock()
b = gc.mem_alloc()
gc.enable()
print("RESULT", N, b - a, q.next_seq - 1, " ".join([str(x) for x in paths]))
'''


def _stage(tmp_path):
    import mpvm as harness

    stage = harness.stage_tree(tmp_path / "stage", boards=())
    shutil.copy(os.path.join(HERE, "thermal_fake_hal.py"), str(stage / "thermal_fake_hal.py"))
    return stage


def _check_result(stdout):
    line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT")]
    assert line, stdout
    parts = line[0].split()
    ticks, delta, n_events = int(parts[1]), int(parts[2]), int(parts[3])
    paths = [int(x) for x in parts[4:]]
    assert ticks == 5000
    assert delta == 0, "the thermal tick allocated %d bytes" % delta
    assert n_events > 100
    # every path really ran while the heap was locked
    assert all(p > 0 for p in paths), paths


def test_thermal_tick_allocates_nothing(mpvm, tmp_path):
    # Runs in both VMs. The 32-bit one also turns any intermediate >= 2**30 into
    # a heap long, so this run with extreme PID inputs proves the scaling, too.
    r = mpvm.run(ALLOC_SCRIPT, timeout=180, stage=_stage(tmp_path)).check()
    _check_result(r.stdout)
