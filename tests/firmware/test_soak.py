"""Soak: random faults and random operator commands, the safety invariant at every tick.

The sim-board firmware runs on the simulated 10 ms clock with the host
stand-in connected (heartbeats, commands, telemetry). A seeded RNG injects
plant faults of every kind -- sensors stuck hot / open / shorted, fan
stalls, rail shorts, power-good glitches, tamper, e-stop, door, heartbeat
pauses -- and clears each after a random time (some stuck-hot sensors last
past the 60 s overheat timer), while an "operator" sends random commands and
now and then tries to bring the board back (RAIL_OFF on FAULT rails,
INTERLOCK_CLEAR, TAMPER_CLEAR, ESTOP 0, POWER_ON: one batch, unchecked).

Checked after every tick (``SafetyMonitor``):

* no rail enable output rises while a critical interlock (a row whose action
  is a power-down or a lockout: the rail-fault rows and the e-stop) was
  tripped at the end of the previous tick, nor while the overheat timer had
  expired, nor while the e-stop signal was asserted (a software e-stop is
  asserted one tick before its row trips);
* once such a row is tripped, or the overheat timer has expired, every rail
  is OFF or FAULT with its enable low within ``power_down_bound_ticks`` and
  stays so while the condition lasts;
* the board never stops sending TELEMETRY (gap between frames bounded) and
  every command gets a RESULT;
* the firmware never raises (an exception fails the test) and the power
  driver never attempts an illegal rail transition.

The run also has to *cover* the dangerous cases (rails on when a critical
interlock trips, an overheat expiry with rails on...), so the invariant is
not vacuously true.

Duration, measured on CPython on the shared 2-core test machine: the bare
firmware + harness takes 212-292 µs per tick (76-105 s for the hour of
360,000 ticks), 285-500 µs with the monitor and the chaos (100-190 s per
hour), more than the ~60 s budget. So the default suite runs 10 simulated
minutes (60,000 ticks, 17-35 s) and the full hour, with two seeds, is marked
``slow`` (``pytest --run-slow``). The µs tick clock starts 30 s before its
2**30 wrap, so every run crosses it at least once (the hour, three times).
"""

import random
import time

import pytest

from metal.core.config import ACT_FANS_MAX, ACT_LOCKOUT, ACT_OVERHEAT, ACT_POWER_DOWN
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
    OP_ARM,
    OP_DISARM,
    OP_ESTOP,
    OP_GPIO_WRITE,
    OP_INTERLOCK_CLEAR,
    OP_LOCK,
    OP_POWER_OFF,
    OP_POWER_ON,
    OP_RAIL_CYCLE,
    OP_RAIL_OFF,
    OP_RAIL_ON,
    OP_SET_HB_TIMEOUT,
    OP_SIM_FAULT,
    OP_TAMPER_CLEAR,
    OP_UNLOCK,
    OP_ZONE_AUTO,
    OP_ZONE_MANUAL,
    OP_ZONE_SETPOINT,
    R_OK,
    RAIL_FAULT,
    RAIL_OFF,
)
from metal.core.signals import G_ESTOP

from .harness import TICK_MS, SimBoard, power_down_bound_ticks

TICKS_PER_S = 1000 // TICK_MS
DEFAULT_SECONDS = 600
FULL_SECONDS = 3600
START_US = (1 << 30) - 30_000_000  # 30 s before the µs tick clock wraps


class SafetyMonitor:
    """The safety invariant, checked after every harness step."""

    def __init__(self, b):
        cfg = b.config
        self.crit_mask = 0
        for i, row in enumerate(cfg.interlocks):
            if row.action in (ACT_POWER_DOWN, ACT_LOCKOUT):
                self.crit_mask |= 1 << i
        self.bound = power_down_bound_ticks(cfg)
        self.max_tel_gap = 2 * cfg.limits.telemetry_every
        self.prev_crit = 0
        self.prev_expired = 0
        self.prev_estop = 0
        self.estop_sig = b.fw.signals.global0 + G_ESTOP
        self.crit_since = None
        self.expired_since = None
        self.seen_enables = 0
        self.seen_tel = 0
        self.last_tel_tick = 0
        # coverage
        self.ticks = 0
        self.ticks_rails_on = 0
        self.crit_trips_with_rails_on = 0
        self.expiries_with_rails_on = 0
        self.max_down_ticks = 0
        self.max_seen_tel_gap = 0
        self.rows_tripped = 0
        self._was_on = False
        self.crit_down = False
        self.expired_down = False

    def __call__(self, b):
        fw = b.fw
        k = b.tick - 1  # the tick that just ran
        self.ticks += 1
        state = fw.power.state
        any_on = any(s != RAIL_OFF and s != RAIL_FAULT for s in state)
        if any_on:
            self.ticks_rails_on += 1
        crit = fw.interlocks.tripped & self.crit_mask
        self.rows_tripped |= fw.interlocks.tripped
        expired = fw.thermal.overheat_expired

        # 1. no rail rises while a critical row was tripped / the timer had expired
        enables = b.hal.enables
        for j in range(self.seen_enables, len(enables)):
            t, r, level = enables[j]
            if level:
                assert not self.prev_crit, (
                    "rail %d enabled in tick %d with critical interlocks 0x%x tripped"
                    % (r, t, self.prev_crit))
                assert not self.prev_expired, (
                    "rail %d enabled in tick %d after the overheat timer expired" % (r, t))
                assert not self.prev_estop, (
                    "rail %d enabled in tick %d with the e-stop asserted" % (r, t))
        self.seen_enables = len(enables)

        # 2. every rail down within the bound, and kept down
        if crit:
            if self.crit_since is None:
                self.crit_since = k
                self.crit_down = not self._was_on
                if self._was_on:
                    self.crit_trips_with_rails_on += 1
            self.crit_down = self._check_down(b, k - self.crit_since, self.crit_down,
                                              "critical interlocks 0x%x" % crit)
        else:
            self.crit_since = None
        if expired:
            if self.expired_since is None:
                self.expired_since = k
                self.expired_down = not self._was_on
                if self._was_on:
                    self.expiries_with_rails_on += 1
            self.expired_down = self._check_down(b, k - self.expired_since, self.expired_down,
                                                 "overheat expired")
        else:
            self.expired_since = None

        # 3. telemetry keeps coming
        if len(b.telemetry) > self.seen_tel:
            self.seen_tel = len(b.telemetry)
            self.last_tel_tick = k
        gap = k - self.last_tel_tick
        self.max_seen_tel_gap = max(self.max_seen_tel_gap, gap)
        assert gap <= self.max_tel_gap, "no TELEMETRY for %d ticks (tick %d)" % (gap, k)

        assert fw.power.illegal_transitions == 0
        self.prev_crit = crit
        self.prev_expired = expired
        self.prev_estop = fw.signals.v[self.estop_sig]
        self._was_on = any_on

    def _check_down(self, b, age, was_down, why):
        """Returns whether every rail is down now (and records how long the
        first power-down of an episode took)."""
        state = b.fw.power.state
        down = all(s == RAIL_OFF or s == RAIL_FAULT for s in state)
        if age >= self.bound:
            assert down, "%s for %d ticks and rails still up: %r" % (why, age, list(state))
            assert not any(b.hal.enable_level), "%s: an enable output is still high" % why
        if down and not was_down:
            self.max_down_ticks = max(self.max_down_ticks, age)
        return down


class Chaos:
    """Seeded fault injection and operator behaviour."""

    FAULT_RATE = 1.0 / (12 * TICKS_PER_S)  # a new fault every ~12 s
    COMMAND_RATE = 1.0 / (2 * TICKS_PER_S)  # an operator action every ~2 s
    HB_PAUSE_RATE = 1.0 / (240 * TICKS_PER_S)

    def __init__(self, b, seed):
        self.b = b
        self.rng = random.Random(seed)
        self.clears = []  # (tick, kind, target)
        self.hb_resume = None
        self.sent = []
        self.faults = {}

    def __call__(self, b):
        rng = self.rng
        k = b.tick
        for item in [c for c in self.clears if c[0] <= k]:
            self.clears.remove(item)
            _, kind, target = item
            if kind in (FAULT_TAMPER, FAULT_ESTOP, FAULT_DOOR):
                assert b.plant.inject(kind, 0, 0) == R_OK
            else:
                assert b.plant.inject(FAULT_CLEAR, target, kind) == R_OK
        if self.hb_resume is not None and k >= self.hb_resume:
            b.heartbeat = True
            self.hb_resume = None
        if rng.random() < self.FAULT_RATE:
            self.inject(k)
        if rng.random() < self.COMMAND_RATE:
            self.operate()
        if self.hb_resume is None and rng.random() < self.HB_PAUSE_RATE:
            b.heartbeat = False
            self.hb_resume = k + rng.randint(15, 40) * TICKS_PER_S // 10

    def inject(self, k):
        rng = self.rng
        b = self.b
        kind = rng.choice((FAULT_SENSOR_STUCK, FAULT_SENSOR_STUCK, FAULT_SENSOR_STUCK,
                           FAULT_SENSOR_OPEN,
                           FAULT_SENSOR_SHORT, FAULT_FAN_STALL, FAULT_RAIL_SHORT,
                           FAULT_RAIL_SHORT, FAULT_PG_GLITCH, FAULT_TAMPER, FAULT_ESTOP,
                           FAULT_DOOR))
        secs = rng.uniform(0.05, 20)
        if kind == FAULT_SENSOR_STUCK:
            target = rng.randrange(len(b.config.sensors))
            crit = b.config.sensors[target].crit_mc
            if rng.random() < 0.8:
                value = crit + rng.randint(0, 10000)  # hot
                secs = rng.uniform(2, 120)  # often past the overheat timer
            else:
                value = rng.randint(20000, crit - 5000)
            code = b.plant.inject(kind, target, value)
        elif kind in (FAULT_SENSOR_OPEN, FAULT_SENSOR_SHORT):
            target = rng.randrange(len(b.config.sensors))
            code = b.plant.inject(kind, target, 0)
        elif kind == FAULT_FAN_STALL:
            target = rng.randrange(len(b.config.fans))
            code = b.plant.inject(kind, target, 0)
        elif kind == FAULT_RAIL_SHORT:
            target = rng.randrange(len(b.config.rails))
            code = b.plant.inject(kind, target, 0)
        elif kind == FAULT_PG_GLITCH:
            target = rng.randrange(len(b.config.rails))
            code = b.plant.inject(kind, target, rng.randint(1, 500))
        else:
            target = 0
            if rng.random() < 0.3:  # through the command path instead of the plant
                b.send_cmd(OP_SIM_FAULT, 0, kind, 1)
                code = R_OK
            else:
                code = b.plant.inject(kind, 0, 1)
        assert code == R_OK
        self.faults[kind] = self.faults.get(kind, 0) + 1
        self.clears.append((k + max(1, int(secs * TICKS_PER_S)), kind, target))

    def send(self, op, target=0, arg=0, arg2=0):
        self.sent.append(self.b.send_cmd(op, target, arg, arg2))

    def operate(self):
        rng = self.rng
        b = self.b
        fw = b.fw
        if rng.random() < 0.35:
            # try to bring the board back, in one batch
            for r, s in enumerate(fw.power.state):
                if s == RAIL_FAULT:
                    self.send(OP_RAIL_OFF, r)
            latched = fw.interlocks.latched
            for i in range(fw.interlocks.n):
                if latched >> i & 1:
                    self.send(OP_INTERLOCK_CLEAR, i)
            self.send(OP_TAMPER_CLEAR)
            self.send(OP_ESTOP, 0, 0)
            self.send(OP_POWER_ON)
            return
        n_rails = len(b.config.rails)
        c = rng.randrange(16)
        if c == 0:
            self.send(OP_POWER_ON)
        elif c == 1:
            self.send(OP_POWER_OFF)
        elif c == 2:
            self.send(OP_RAIL_ON, rng.randrange(n_rails))
        elif c == 3:
            self.send(OP_RAIL_OFF, rng.randrange(n_rails))
        elif c == 4:
            self.send(OP_RAIL_CYCLE, rng.randrange(n_rails))
        elif c == 5:
            self.send(OP_INTERLOCK_CLEAR, rng.randrange(fw.interlocks.n))
        elif c == 6:
            self.send(OP_ZONE_MANUAL, rng.randrange(3), rng.choice((0, 100, 300, 700, 1000)))
        elif c == 7:
            self.send(OP_ZONE_AUTO, rng.randrange(3))
        elif c == 8:
            self.send(OP_ZONE_SETPOINT, rng.randrange(3), rng.randint(30000, 70000))
        elif c == 9:
            self.send(OP_GPIO_WRITE, rng.randrange(8), rng.randrange(2))
        elif c == 10:
            self.send(rng.choice((OP_ARM, OP_DISARM)))
        elif c == 11:
            self.send(rng.choice((OP_LOCK, OP_UNLOCK)))
        elif c == 12:
            on = 1 if rng.random() < 0.3 else 0
            self.send(OP_ESTOP, 0, on)
            if on and rng.random() < 0.5:
                self.send(OP_POWER_ON)  # in the same batch as the e-stop
        elif c == 13:
            self.send(OP_TAMPER_CLEAR)
        elif c == 14:
            self.send(OP_SET_HB_TIMEOUT, 0, rng.choice((1000, 2000, 5000)))
        else:
            # anything at all, except a reboot and raw fault injection
            op = rng.choice([o for o in range(100) if o not in (50, 60)])
            self.send(op, rng.randrange(-2, 30), rng.randrange(-5, 2000))


def soak(seconds, seed):
    b = SimBoard(start_us=START_US)
    monitor = SafetyMonitor(b)
    chaos = Chaos(b, seed)
    b.hooks.append(monitor)
    b.power_on()
    t = time.perf_counter()
    for _ in range(seconds * TICKS_PER_S):
        chaos(b)
        b.step()
    elapsed = time.perf_counter() - t
    b.heartbeat = True
    b.run(300)  # let the last commands be answered
    return b, monitor, chaos, elapsed


def check_run(b, monitor, chaos, seconds):
    fw = b.fw
    # every command was answered exactly once (or again as a duplicate: never)
    missing = [c for c in chaos.sent if c not in b.results]
    assert not missing, "commands without a RESULT: %r" % missing[:10]
    assert all(len(b.results[c]) == 1 for c in chaos.sent)
    assert fw.link.results_lost == 0
    assert fw.loop.fault == 0 and not fw.hal.reboot_requested
    # the run really exercised the dangerous paths
    assert monitor.ticks_rails_on > monitor.ticks // 4
    assert monitor.crit_trips_with_rails_on >= seconds // 120
    assert monitor.expiries_with_rails_on >= 1
    for action in (ACT_OVERHEAT, ACT_FANS_MAX, ACT_POWER_DOWN, ACT_LOCKOUT):
        rows = sum(1 << i for i, r in enumerate(b.config.interlocks) if r.action == action)
        assert monitor.rows_tripped & rows, "no interlock with action %d ever tripped" % action
    assert len(chaos.faults) >= 9
    n_tel = len(b.telemetry)
    assert n_tel >= (seconds * TICKS_PER_S) // b.config.limits.telemetry_every - 5


def test_soak_ten_minutes():
    """10 simulated minutes (60,000 ticks) under random faults and commands."""
    b, monitor, chaos, elapsed = soak(DEFAULT_SECONDS, seed=20260101)
    check_run(b, monitor, chaos, DEFAULT_SECONDS)


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("seed", [1, 2])
def test_soak_one_hour(seed):
    """The full hour (360,000 ticks) per seed; ``--run-slow``."""
    b, monitor, chaos, elapsed = soak(FULL_SECONDS, seed=seed)
    check_run(b, monitor, chaos, FULL_SECONDS)
