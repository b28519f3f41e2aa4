"""Security: debounced inputs, tamper latch and clear refusal, arming and the
tamper action, door lock with its timeout, soft e-stop, signals, status flags,
the input image (din_mask) and its channel check, the steady-state fast path
against a tick-by-tick reference model, and zero allocation under MicroPython."""

import random

import pytest

from metal.core.config import ACT_LOCKOUT, ACT_NONE, ACT_POWER_DOWN, Security
from metal.core.drivers.security import SecurityController
from metal.core.events import EventQueue
from metal.core.proto import (
    EV_ARMED,
    EV_DOOR,
    EV_ESTOP,
    EV_LOCK_FAULT,
    EV_LOCK_STATE,
    EV_TAMPER,
    R_INVALID_ARGUMENT,
    R_OK,
    R_REJECTED_BY_INTERLOCK,
    R_UNKNOWN_TARGET,
    STF_ARMED,
    STF_DOOR_OPEN,
    STF_ESTOP,
    STF_LOCKED,
    STF_TAMPER,
)
from metal.core.signals import G_DOOR_OPEN, G_ESTOP, G_TAMPER, Signals

from .fake_hal import FakeHal, micropython_vms, run_micropython

TAMPER, LOCK, SENSE, DOOR, ESTOP = 1, 2, 3, 4, 5  # channels
TICK = 10


def full_cfg(**kw):
    args = dict(tamper_ch=TAMPER, lock_ch=LOCK, lock_sense_ch=SENSE, door_ch=DOOR,
                estop_ch=ESTOP, tamper_action=ACT_POWER_DOWN, lock_timeout_ms=100,
                debounce_ticks=3)
    args.update(kw)
    return Security(**args)


class Bench:
    def __init__(self, cfg=None, sensed_locked=1):
        self.hal = FakeHal()
        self.hal.din[SENSE] = sensed_locked
        self.sig = Signals(1, 1, 1)
        self.ev = EventQueue(64)
        self.s = SecurityController(cfg or full_cfg(), self.hal, self.sig, self.ev)
        self.t = 0

    def step(self, n=1):
        for _ in range(n):
            self.s.step(self.t)
            self.t += TICK

    def events(self):
        out = []
        q = self.ev
        while q.count:
            i = q.head
            out.append((q.kind[i], q.source[i], q.value[i], q.aux[i]))
            q.pop()
        return out

    def g(self, which):
        return self.sig.v[self.sig.global0 + which]

    def settle(self, ch, level):
        """Set an input and step exactly the debounce time."""
        self.hal.din[ch] = level
        self.step(3)


def primed():
    b = Bench()
    b.step()
    b.events()
    b.hal.clear_log()
    return b


# -- boot ---------------------------------------------------------------------------------


def test_boot_all_clear_no_events_and_bolt_held():
    b = Bench()
    assert b.hal.log == []  # nothing is driven before the first tick
    b.step()
    assert b.events() == []
    assert b.hal.log == [("digital_out", LOCK, 1)]  # held where the sense says it is
    assert b.s.status_flags() == STF_LOCKED
    assert (b.g(G_TAMPER), b.g(G_DOOR_OPEN), b.g(G_ESTOP)) == (0, 0, 0)


def test_boot_with_unlocked_bolt_keeps_it_unlocked():
    b = Bench(sensed_locked=0)
    b.step()
    assert b.hal.log == [("digital_out", LOCK, 0)]
    assert b.s.lock_cmd == 0
    b.step(20)
    assert b.s.lock_fault == 0 and b.events() == []


def test_boot_with_everything_asserted_reports_it_at_the_first_tick():
    b = Bench()
    b.hal.din[TAMPER] = 1
    b.hal.din[DOOR] = 1
    b.hal.din[ESTOP] = 1
    b.step()
    assert b.events() == [(EV_TAMPER, 0, 1, 0), (EV_DOOR, 0, 1, 0), (EV_ESTOP, 0, 1, 1)]
    assert b.s.tamper_latched == 1
    assert b.s.tamper_action_pending == ACT_NONE  # the board boots disarmed
    assert (b.g(G_TAMPER), b.g(G_DOOR_OPEN), b.g(G_ESTOP)) == (1, 1, 1)


def test_bad_debounce_config_is_refused():
    with pytest.raises(ValueError):
        SecurityController(full_cfg(debounce_ticks=0), FakeHal(), Signals(0, 0, 0), EventQueue())


# -- debounced inputs ---------------------------------------------------------------------


def test_door_debounce_to_the_tick():
    b = primed()
    b.hal.din[DOOR] = 1
    b.step(2)
    assert b.g(G_DOOR_OPEN) == 0 and b.events() == []
    b.step()
    assert b.g(G_DOOR_OPEN) == 1
    assert b.events() == [(EV_DOOR, 0, 1, 0)]
    assert b.s.status_flags() & STF_DOOR_OPEN
    b.hal.din[DOOR] = 0
    b.step(2)
    assert b.g(G_DOOR_OPEN) == 1
    b.step()
    assert b.g(G_DOOR_OPEN) == 0
    assert b.events() == [(EV_DOOR, 0, 0, 0)]


def test_glitch_shorter_than_debounce_is_ignored():
    b = primed()
    for _ in range(10):
        b.hal.din[ESTOP] = 1
        b.step()
        b.hal.din[ESTOP] = 0
        b.step()
    assert b.g(G_ESTOP) == 0 and b.events() == []


def test_unfitted_inputs_are_ignored():
    cfg = Security()  # nothing fitted
    b = Bench(cfg)
    for ch in range(30):
        b.hal.din[ch] = 1  # whatever the image says
    b.step(5)
    assert b.hal.calls == 0  # nothing driven
    assert b.events() == []
    assert (b.g(G_TAMPER), b.g(G_DOOR_OPEN), b.g(G_ESTOP)) == (0, 0, 0)
    assert b.s.status_flags() == 0
    assert b.s.lock() == R_UNKNOWN_TARGET
    assert b.s.unlock() == R_UNKNOWN_TARGET


# -- tamper -------------------------------------------------------------------------------


def test_tamper_opening_latches_until_cleared_after_closing():
    b = primed()
    b.settle(TAMPER, 1)
    assert b.s.tamper_latched == 1
    assert b.events() == [(EV_TAMPER, 0, 1, 0)]
    assert b.g(G_TAMPER) == 1
    assert b.s.status_flags() & STF_TAMPER
    assert b.s.clear_tamper() == R_REJECTED_BY_INTERLOCK  # still open
    assert b.s.tamper_latched == 1
    b.settle(TAMPER, 0)
    assert b.events() == [(EV_TAMPER, 0, 0, 0)]
    assert b.g(G_TAMPER) == 0
    assert b.s.tamper_latched == 1  # closing does not clear the latch
    assert b.s.clear_tamper() == R_OK
    assert b.s.tamper_latched == 0
    assert not b.s.status_flags() & STF_TAMPER


def test_clear_refused_while_open_even_mid_debounce_of_closing():
    b = primed()
    b.settle(TAMPER, 1)
    b.hal.din[TAMPER] = 0
    b.step(2)  # not yet debounced closed
    assert b.s.clear_tamper() == R_REJECTED_BY_INTERLOCK
    b.step()
    assert b.s.clear_tamper() == R_OK


def test_tamper_while_disarmed_latches_without_action():
    b = primed()
    b.settle(TAMPER, 1)
    assert b.s.tamper_latched == 1
    assert b.s.take_action() == ACT_NONE


def test_tamper_while_armed_sets_the_action_once():
    b = primed()
    assert b.s.arm() == R_OK
    assert b.events() == [(EV_ARMED, 0, 1, 0)]
    b.settle(TAMPER, 1)
    assert b.s.tamper_action_pending == ACT_POWER_DOWN
    assert b.s.take_action() == ACT_POWER_DOWN
    assert b.s.take_action() == ACT_NONE  # consumed
    b.step(10)
    assert b.s.take_action() == ACT_NONE  # staying open does not repeat it
    b.settle(TAMPER, 0)
    b.settle(TAMPER, 1)  # a new opening does
    assert b.s.take_action() == ACT_POWER_DOWN


def test_tamper_action_follows_config_and_none_means_report_only():
    b = Bench(full_cfg(tamper_action=ACT_LOCKOUT))
    b.step()
    b.s.arm()
    b.settle(TAMPER, 1)
    assert b.s.take_action() == ACT_LOCKOUT
    b = Bench(full_cfg(tamper_action=ACT_NONE))
    b.step()
    b.s.arm()
    b.settle(TAMPER, 1)
    assert b.s.tamper_latched == 1
    assert b.s.take_action() == ACT_NONE


# -- arming -------------------------------------------------------------------------------


def test_arm_disarm_events_only_on_change():
    b = primed()
    assert b.s.arm() == R_OK
    assert b.s.arm() == R_OK
    assert b.s.status_flags() & STF_ARMED
    assert b.s.disarm() == R_OK
    assert b.s.disarm() == R_OK
    assert b.events() == [(EV_ARMED, 0, 1, 0), (EV_ARMED, 0, 0, 0)]
    assert not b.s.status_flags() & STF_ARMED


def test_arm_refused_while_tamper_switch_open():
    b = primed()
    b.settle(TAMPER, 1)
    b.events()
    assert b.s.arm() == R_REJECTED_BY_INTERLOCK
    assert b.s.armed == 0 and b.events() == []
    b.settle(TAMPER, 0)
    assert b.s.arm() == R_OK  # a latched (but closed) tamper does not block arming


# -- e-stop -------------------------------------------------------------------------------


def test_soft_estop_ors_into_the_signal_at_once():
    b = primed()
    assert b.s.set_soft_estop(1) == R_OK
    assert b.g(G_ESTOP) == 1  # in the call, before any tick
    assert b.events() == [(EV_ESTOP, 0, 1, 2)]
    assert b.s.status_flags() & STF_ESTOP
    b.settle(ESTOP, 1)  # the input too: no new event, the combined signal is unchanged
    assert b.events() == []
    assert b.s.set_soft_estop(0) == R_OK
    assert b.g(G_ESTOP) == 1 and b.events() == []  # the button still holds it
    b.settle(ESTOP, 0)
    assert b.g(G_ESTOP) == 0
    assert b.events() == [(EV_ESTOP, 0, 0, 0)]


def test_input_estop_event_and_release():
    b = primed()
    b.settle(ESTOP, 1)
    assert b.events() == [(EV_ESTOP, 0, 1, 1)]
    assert b.g(G_ESTOP) == 1
    b.settle(ESTOP, 0)
    assert b.events() == [(EV_ESTOP, 0, 0, 0)]


@pytest.mark.parametrize("bad", [-1, 2, 100])
def test_soft_estop_bad_argument_changes_nothing(bad):
    b = primed()
    assert b.s.set_soft_estop(bad) == R_INVALID_ARGUMENT
    assert b.s.soft_estop == 0 and b.g(G_ESTOP) == 0 and b.events() == []


# -- door lock ----------------------------------------------------------------------------


def test_unlock_drives_output_and_sense_follows_in_time():
    b = primed()
    assert b.s.unlock() == R_OK
    assert b.hal.log == []  # applied at the next tick
    b.step()
    assert b.hal.log == [("digital_out", LOCK, 0)]
    b.step(2)
    b.settle(SENSE, 0)  # bolt moves after 2 ticks, debounced after 3 more
    assert b.events() == [(EV_LOCK_STATE, 0, 0, 0)]
    assert b.s.lock_fault == 0 and b.s.lock_waiting == 0
    assert not b.s.status_flags() & STF_LOCKED
    b.step(20)
    assert b.events() == []


def test_lock_timeout_raises_lock_fault_to_the_tick():
    b = primed()
    b.s.unlock()
    b.step()  # t0: driven
    b.step(9)  # t0+10..t0+90: still waiting (timeout 100 ms)
    assert b.s.lock_fault == 0 and b.events() == []
    b.step()  # t0+100
    assert b.s.lock_fault == 1
    assert b.events() == [(EV_LOCK_FAULT, 0, 0, 1)]  # commanded unlocked, sensed locked
    assert b.s.status_flags() & STF_LOCKED  # the flag reports the sensed bolt
    b.step(20)
    assert b.events() == []  # one fault event per command


def test_lock_fault_clears_when_the_bolt_arrives_late_or_on_a_new_command():
    b = primed()
    b.s.unlock()
    b.step(11)
    assert b.s.lock_fault == 1
    b.settle(SENSE, 0)
    assert b.s.lock_fault == 0
    b.s.lock()
    b.step(11)
    assert b.s.lock_fault == 1
    b.events()
    assert b.s.lock() == R_OK  # retry: a new drive and a new timeout
    assert b.s.lock_fault == 0
    b.hal.clear_log()
    b.step()
    assert b.hal.log == [("digital_out", LOCK, 1)]


def test_bolt_moved_by_hand_is_reported():
    b = primed()
    b.settle(SENSE, 0)
    assert b.events() == [(EV_LOCK_STATE, 0, 0, 0)]


def test_lock_without_sense_uses_the_commanded_level():
    b = Bench(full_cfg(lock_sense_ch=-1))
    b.step()
    assert b.hal.log == [("digital_out", LOCK, 1)]  # fail-secure at boot
    assert b.s.status_flags() & STF_LOCKED
    assert b.events() == []
    b.s.unlock()
    b.step()
    assert b.events() == [(EV_LOCK_STATE, 0, 0, 0)]
    assert not b.s.status_flags() & STF_LOCKED
    b.step(30)
    assert b.s.lock_fault == 0  # nothing to time out against


def test_command_before_the_first_tick_wins_over_the_boot_hold():
    b = Bench()
    b.s.unlock()
    b.step()
    assert b.hal.log == [("digital_out", LOCK, 0)]


# -- flags --------------------------------------------------------------------------------


def test_status_flags_all_set():
    b = primed()
    b.s.arm()
    b.hal.din[TAMPER] = 1
    b.hal.din[DOOR] = 1
    b.hal.din[ESTOP] = 1
    b.step(3)
    assert b.s.status_flags() == STF_ESTOP | STF_TAMPER | STF_ARMED | STF_LOCKED | STF_DOOR_OPEN


# -- input image and the steady-state fast path -----------------------------------------------


@pytest.mark.parametrize("field", ["tamper_ch", "door_ch", "estop_ch", "lock_sense_ch"])
@pytest.mark.parametrize("ch", [30, 31, 99])
def test_input_channel_outside_the_mask_is_refused(field, ch):
    with pytest.raises(ValueError):
        SecurityController(full_cfg(**{field: ch}), FakeHal(), Signals(0, 0, 0), EventQueue())


def test_inputs_are_read_from_the_input_image_only():
    b = primed()
    calls = b.hal.calls
    b.settle(DOOR, 1)
    assert b.events() == [(EV_DOOR, 0, 1, 0)]
    assert b.hal.calls == calls  # no per-input HAL call: din_mask is the input


def test_quiet_tick_takes_the_fast_path():
    b = primed()
    b.step()  # the boot drive's sense check is done (sensed == commanded)
    slow = []
    update = b.s._update
    b.s._update = lambda d, now: (slow.append(now), update(d, now))
    b.step(5)
    assert slow == []  # inputs at their levels, nothing settling, lock settled
    b.settle(DOOR, 1)
    assert len(slow) == 3  # settling ticks
    b.step(5)
    assert len(slow) == 3
    b.s.unlock()
    b.step()
    assert len(slow) == 4  # the drive
    b.step(2)
    assert len(slow) == 6  # waiting for the sense
    b.settle(SENSE, 0)
    b.step(5)
    assert len(slow) == 9 and b.s.lock_waiting == 0
    b.s.set_soft_estop(1)  # in the call: no tick needed
    b.step(3)
    assert len(slow) == 9 and b.g(G_ESTOP) == 1
    assert b.events() == [(EV_DOOR, 0, 1, 0), (EV_LOCK_STATE, 0, 0, 0), (EV_ESTOP, 0, 1, 2)]


class ReferenceSecurity:
    """The inputs, e-stop and lock rules of the module docstring evaluated in full
    on every tick, with no fast path: what SecurityController must match."""

    def __init__(self, cfg):
        self.chs = [cfg.tamper_ch, cfg.door_ch, cfg.estop_ch, cfg.lock_sense_ch]
        self.top = cfg.debounce_ticks
        self.lock_ch = cfg.lock_ch
        self.timeout = cfg.lock_timeout_ms
        self.count = [0] * 4
        self.level = [0] * 4
        self.soft = 0
        self.estop = 0
        self.cmd, self.drive, self.waiting, self.t0, self.fault = 1, 0, 0, 0, 0
        self.primed = False
        self.events = []
        self.writes = []

    def command(self, level):
        self.cmd, self.drive, self.waiting, self.fault = level, 1, 0, 0

    def soft_estop(self, on):
        self.soft = on
        self._estop()

    def _estop(self):
        e = self.level[2] | self.soft
        if e != self.estop:
            self.estop = e
            self.events.append((EV_ESTOP, 0, e, self.level[2] | (self.soft << 1)))

    def _changed(self, k, v):
        self.level[k] = v
        if k == 2:
            self._estop()
        else:
            self.events.append(((EV_TAMPER, EV_DOOR, None, EV_LOCK_STATE)[k], 0, v, 0))

    def step(self, din, now):
        sense = self.chs[3] >= 0
        for k, ch in enumerate(self.chs):
            if ch < 0:
                continue
            raw = 1 if din[ch] else 0
            if not self.primed:
                if raw:
                    self.count[k] = self.top
                    if k == 3:
                        self.level[k] = 1
                    else:
                        self._changed(k, 1)
                continue
            c = self.count[k]
            c = min(c + 1, self.top) if raw else max(c - 1, 0)
            self.count[k] = c
            if c == self.top and not self.level[k]:
                self._changed(k, 1)
            elif c == 0 and self.level[k]:
                self._changed(k, 0)
        if not self.primed and self.lock_ch >= 0:
            if not self.drive:
                self.cmd, self.drive = (self.level[3] if sense else 1), 1
            if not sense:
                self.level[3] = self.cmd
        self.primed = True
        if self.drive:
            self.drive = 0
            self.writes.append(("digital_out", self.lock_ch, self.cmd))
            if sense:
                self.waiting, self.t0 = 1, now
            elif self.level[3] != self.cmd:
                self.level[3] = self.cmd
                self.events.append((EV_LOCK_STATE, 0, self.cmd, 0))
        if self.waiting:
            if self.level[3] == self.cmd:
                self.waiting = 0
            elif now - self.t0 >= self.timeout:
                self.waiting, self.fault = 0, 1
                self.events.append((EV_LOCK_FAULT, 0, self.cmd, self.level[3]))
        if self.fault and sense and self.level[3] == self.cmd:
            self.fault = 0


@pytest.mark.parametrize("seed", range(12))
def test_fast_path_matches_the_tick_by_tick_reference(seed):
    rnd = random.Random(seed)
    chs = rnd.sample(range(30), 5)
    fitted = [c if rnd.random() < 0.8 else -1 for c in chs]
    cfg = full_cfg(tamper_ch=fitted[0], door_ch=fitted[1], estop_ch=fitted[2],
                   lock_sense_ch=fitted[3], lock_ch=chs[4] if rnd.random() < 0.8 else -1,
                   debounce_ticks=rnd.randint(1, 5), lock_timeout_ms=rnd.choice([30, 100]))
    b = Bench(cfg)
    ref = ReferenceSecurity(cfg)
    for ch in range(30):
        b.hal.din[ch] = rnd.randint(0, 1)
    events = []
    for tick in range(600):
        # long quiet stretches, bursts of chatter, single flips, lock and e-stop commands
        burst = (tick // 40) % 3 == 1
        for ch in fitted:
            if ch >= 0 and rnd.random() < (0.4 if burst else 0.02):
                b.hal.din[ch] ^= 1
        r = rnd.random()
        if r < 0.03:
            lv = rnd.randint(0, 1)
            if (b.s.lock() if lv else b.s.unlock()) == R_OK:
                ref.command(lv)
        elif r < 0.05:
            on = rnd.randint(0, 1)
            b.s.set_soft_estop(on)
            ref.soft_estop(on)
        b.step()
        ref.step(b.hal.din, b.t - TICK)
        events += b.events()
        s = b.s
        assert list(s.count) == ref.count, tick
        assert list(s.level) == ref.level, tick
        assert (s.estop, s.lock_cmd, s.lock_waiting, s.lock_fault) == \
            (ref.estop, ref.cmd, ref.waiting, ref.fault), tick
        assert (b.g(G_TAMPER), b.g(G_DOOR_OPEN), b.g(G_ESTOP)) == \
            (ref.level[0], ref.level[1], ref.estop), tick
    assert events == ref.events
    assert b.hal.log == ref.writes
    assert len(ref.events) > 5  # the run did move things


ALLOC_SCRIPT = r"""
import gc, micropython, time
from fake_hal import FakeHal
from metal.core.config import Security, ACT_POWER_DOWN
from metal.core.signals import Signals
from metal.core.events import EventQueue
from metal.core.drivers.security import SecurityController

cfg = Security(tamper_ch=1, lock_ch=2, lock_sense_ch=3, door_ch=4, estop_ch=5,
               tamper_action=ACT_POWER_DOWN, lock_timeout_ms=100, debounce_ticks=3)
hal = FakeHal()
hal.recording = False
s = SecurityController(cfg, hal, Signals(1, 1, 1), EventQueue(32))
res = [0] * 9

def run(ticks):
    t = 0
    for k in range(ticks):
        ph = k % 64
        hal.din[1] = 1 if 8 <= ph < 20 else 0
        hal.din[4] = 1 if 30 <= ph < 40 else 0
        hal.din[5] = (k >> 5) & 1
        hal.din[3] = 1 if ph < 50 else 0
        if ph == 2:
            res[0] = s.arm()
        elif ph == 12:
            res[1] = s.clear_tamper()
            res[2] = s.arm()
        elif ph == 25:
            res[3] = s.clear_tamper()
            res[4] = s.take_action()
        elif ph == 40:
            res[5] = s.unlock()
        elif ph == 45:
            res[6] = s.set_soft_estop(1)
            res[7] = s.set_soft_estop(3)
        elif ph == 55:
            s.set_soft_estop(0)
            s.lock()
            s.disarm()
        s.step(t)
        res[8] = s.status_flags()
        t = (t + 10) & 0x3FFFFFFF

def measure(ticks):
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    micropython.heap_lock()
    try:
        st = time.ticks_us()
        run(ticks)
        us = time.ticks_diff(time.ticks_us(), st)
    finally:
        micropython.heap_unlock()
    d = gc.mem_alloc() - a
    gc.enable()
    return d, us

d, us = measure(1000)
print("alloc", d, "us", us, "res", res[:8], "faults", s.lock_fault)
"""


@pytest.mark.micropython
@pytest.mark.parametrize("vm", ["unix", "wasm"])
def test_zero_allocation_under_micropython(vm):
    if vm not in micropython_vms():
        pytest.skip("MicroPython %s VM not installed" % vm)
    code, out, err = run_micropython(ALLOC_SCRIPT, vm)
    assert code == 0, err
    words = out.split()
    assert words[0] == "alloc" and int(words[1]) == 0, out
    # arm ok, clear refused while open, arm refused while open, clear ok, action taken,
    # unlock ok, soft e-stop ok, bad soft e-stop argument
    assert "res [0, 1, 1, 0, 3, 0, 0, 2]" in out, out
