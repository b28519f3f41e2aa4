"""Physical security: tamper switch, door, e-stop, door lock, arming.

Inputs (channels from ``config.Security``, -1 = not fitted, 0..29 otherwise,
checked in ``__init__``; active-high after the HAL): tamper (1 = switch open),
door (1 = open), e-stop (1 = pressed), lock sense (1 = bolt locked). The raw
sample is bit ``ch`` of the HAL's input image ``hal.din_mask`` (refreshed by
``hal.sample()`` at the start of the tick; a HAL that reports a dead input as
1 asserts it -- fail-safe for e-stop and tamper). Each is debounced with the
integrator used by ``gpio.GpioBank`` (counter 0..``debounce_ticks``, the level
flips only at the ends: a clean edge shows after exactly ``debounce_ticks``
samples). The first ``step()`` primes every input at its sample; the assumed
previous state is "all clear" (0), so a tamper switch open at boot is latched
and reported, and an open door or a pressed e-stop at boot is reported, at
the first tick.

Steady state (why most ticks cost a handful of int operations): the
controller keeps ``_hi_ch`` / ``_lo_ch`` (channel masks of the fitted inputs
whose debounced level is 1 / 0) and ``_settling`` (bit k: input k's counter
is strictly between its ends; bit ``_UNPRIMED`` until the first step). An
input that is not settling has its counter at the end matching its level, so
a sample equal to the level changes nothing. With no lock drive pending and
no lock sense awaited (``lock_drive``, ``lock_waiting``), a tick where::

    ((d & _lo_ch) | (_hi_ch & ~d) | _settling) == 0      (d = hal.din_mask)

changes no counter, level, flag or signal and ``step()`` returns at once.
The lock fault needs no per-tick look either: it is set only while the sense
differs from the command, and only a level change (slow path) or a new
command (which clears it) can make them agree. The three signals are written
only by this controller (here and in ``set_soft_estop``), so they stay
current without a store on the quiet ticks.

Tamper latch::

               switch opens (EV_TAMPER 1; if armed: action pending)
    +-------+ ------------------------------------------------> +---------+
    | clear |                                                   | latched |
    +-------+ <------------------------------------------------ +---------+
               clear_tamper() with the switch closed
               (refused with R_REJECTED_BY_INTERLOCK while open)

The switch closing emits EV_TAMPER 0 but does not clear the latch. ``G_TAMPER``
in the signal board is the (debounced) switch itself, "1 while open", so
interlocks see the live condition; the telemetry flag STF_TAMPER is the latch.

Tamper action: a tamper opening while armed sets ``tamper_action_pending`` to
``cfg.tamper_action`` (an ACT_* code; nothing when it is ACT_NONE). The
firmware consumes it with ``take_action()``, which returns the code once and
resets it to ACT_NONE, and applies it (e.g. ACT_POWER_DOWN -> an orderly
power-down). A second opening before it is taken just sets the same code.

Arming: ``arm()`` is refused (R_REJECTED_BY_INTERLOCK) while the tamper switch
is open -- an armed board that cannot see the next opening protects nothing.
The board boots disarmed. EV_ARMED on each change.

E-stop: ``G_ESTOP``/STF_ESTOP = debounced input OR software e-stop
(``set_soft_estop``). EV_ESTOP (value 1 asserted / 0 released, aux bit 0 =
input, bit 1 = software) on each change of the combined signal; the software
side takes effect in the call itself (signal and event), so the interlocks of
the same tick see it.

Door lock::

    lock()/unlock(): commanded level recorded; step() drives hal.digital_out
    (lock_ch, 1 locked / 0 unlocked) and, with a lock sense fitted, expects the
    debounced sense to equal it within lock_timeout_ms:

      drive --(sense == commanded)--> settled
        |
        +----(lock_timeout_ms elapsed)--> EV_LOCK_FAULT (value commanded,
                                          aux sensed); lock_fault = 1 until the
                                          next lock()/unlock() or the sense
                                          reaching the commanded level

    The debounce delay counts inside the timeout. EV_LOCK_STATE reports every
    debounced change of the sense (also a bolt moved by hand). Without a sense
    input the commanded level stands in for it: EV_LOCK_STATE when it is driven
    to a new level and STF_LOCKED from it.

Boot: nothing moves the bolt. At the first tick the commanded level becomes
the sensed one (or "locked" when no sense is fitted: fail-secure after a
reboot) and the output is driven to it.

``step(now_ms)`` runs once per tick and keeps G_TAMPER, G_DOOR_OPEN and
G_ESTOP in the signal board current (written on every tick that does work).
"""

from array import array

from metal.core.compat import const, ticks_diff
from metal.core.config import ACT_NONE
from metal.core.hal import check_mask_channel
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
from metal.core.signals import G_DOOR_OPEN, G_ESTOP, G_TAMPER

# input slots
IN_TAMPER = const(0)
IN_DOOR = const(1)
IN_ESTOP = const(2)
IN_LOCK = const(3)
_N_IN = const(4)
_UNPRIMED = const(1 << _N_IN)  # _settling bit: the first step has not run
_NAMES = ("tamper", "door", "estop", "lock sense")


class SecurityController:
    def __init__(self, security_cfg, hal, signals, events):
        cfg = security_cfg
        if not 0 < cfg.debounce_ticks < 64:
            raise ValueError("security: debounce_ticks out of range")
        if cfg.lock_timeout_ms <= 0:
            raise ValueError("security: lock_timeout_ms must be positive")
        self.ch = array("i", [cfg.tamper_ch, cfg.door_ch, cfg.estop_ch, cfg.lock_sense_ch])
        for k in range(_N_IN):
            if self.ch[k] >= 0:  # (any negative channel reads as not fitted, as in step)
                check_mask_channel(self.ch[k], "security " + _NAMES[k])
        self.debounce_ticks = cfg.debounce_ticks
        self.count = bytearray(_N_IN)
        self.level = bytearray(_N_IN)  # debounced, 0 for an input not fitted
        self.lock_ch = cfg.lock_ch
        self.lock_timeout_ms = cfg.lock_timeout_ms
        self.tamper_action = cfg.tamper_action
        self.tamper_latched = 0
        self.tamper_action_pending = ACT_NONE
        self.armed = 0
        self.soft_estop = 0
        self.estop = 0  # input OR software
        self.lock_cmd = 1  # commanded: 1 locked, 0 unlocked
        self.lock_drive = 0  # 1 = drive lock_cmd at the next step
        self.lock_waiting = 0  # 1 while the sense has to follow
        self.lock_t0 = 0
        self.lock_fault = 0
        self._hal = hal  # din_mask is read through it: sample() reassigns the int
        # the steady-state masks (see the module docstring)
        self._hi_ch = 0
        self._lo_ch = 0
        self._settling = _UNPRIMED
        self._dout = hal.digital_out
        self._push = events.push
        self._sig = signals.v
        self._g_tamper = signals.global0 + G_TAMPER
        self._g_door = signals.global0 + G_DOOR_OPEN
        self._g_estop = signals.global0 + G_ESTOP

    # -- commands -----------------------------------------------------------------
    def arm(self):
        if self.level[IN_TAMPER]:
            return R_REJECTED_BY_INTERLOCK
        if not self.armed:
            self.armed = 1
            self._push(EV_ARMED, 0, 1, 0)
        return R_OK

    def disarm(self):
        if self.armed:
            self.armed = 0
            self._push(EV_ARMED, 0, 0, 0)
        return R_OK

    def clear_tamper(self):
        if self.level[IN_TAMPER]:
            return R_REJECTED_BY_INTERLOCK
        self.tamper_latched = 0
        return R_OK

    def lock(self):
        return self._command_lock(1)

    def unlock(self):
        return self._command_lock(0)

    def set_soft_estop(self, on):
        if on != 0 and on != 1:
            return R_INVALID_ARGUMENT
        self.soft_estop = on
        self._update_estop()
        return R_OK

    def take_action(self):
        """The pending tamper action (ACT_*), once; ACT_NONE when none."""
        a = self.tamper_action_pending
        self.tamper_action_pending = ACT_NONE
        return a

    def status_flags(self):
        f = 0
        if self.estop:
            f |= STF_ESTOP
        if self.tamper_latched:
            f |= STF_TAMPER
        if self.armed:
            f |= STF_ARMED
        if self.locked():
            f |= STF_LOCKED
        if self.level[IN_DOOR]:
            f |= STF_DOOR_OPEN
        return f

    def locked(self):
        """1 when the bolt is sensed locked (commanded, without a sense input)."""
        return self.level[IN_LOCK]

    # -- tick -----------------------------------------------------------------------
    def step(self, now_ms):
        # Fast path: every fitted input equals its debounced level, no
        # integrator is between its ends, the lock is neither to be driven nor
        # awaited -- then the work below would change nothing (module
        # docstring, "Steady state").
        d = self._hal.din_mask
        if ((d & self._lo_ch) | (self._hi_ch & ~d) | self._settling
                | self.lock_drive | self.lock_waiting):
            self._update(d, now_ms)

    def _update(self, d, now_ms):
        """The work of a tick where an input differs or settles, or the lock moves."""
        if self._settling & _UNPRIMED:
            self._prime(d)
        else:
            # only the inputs that differ from their level or are settling
            top = self.debounce_ticks
            chs = self.ch
            count = self.count
            level = self.level
            settling = self._settling
            changed = 0
            for k in range(_N_IN):
                ch = chs[k]
                if ch < 0:
                    continue
                bit = 1 << k
                raw = (d >> ch) & 1
                if raw == level[k] and not settling & bit:
                    continue  # at the end matching the sample: nothing moves
                c = count[k]
                if raw:
                    if c < top:
                        c += 1
                elif c > 0:
                    c -= 1
                count[k] = c
                if c == top:
                    settling &= ~bit
                    if not level[k]:
                        self._changed(k, 1)
                        changed = 1
                elif c == 0:
                    settling &= ~bit
                    if level[k]:
                        self._changed(k, 0)
                        changed = 1
                else:
                    settling |= bit
            self._settling = settling
            if changed:
                self._rebuild_channel_masks()

        if self.lock_drive:
            self.lock_drive = 0
            self._dout(self.lock_ch, self.lock_cmd)
            if self.ch[IN_LOCK] >= 0:
                self.lock_waiting = 1
                self.lock_t0 = now_ms
            elif self.level[IN_LOCK] != self.lock_cmd:
                # no sense input: the commanded level stands in for it
                self.level[IN_LOCK] = self.lock_cmd
                self._push(EV_LOCK_STATE, 0, self.lock_cmd, 0)
        if self.lock_waiting:
            sensed = self.level[IN_LOCK]
            if sensed == self.lock_cmd:
                self.lock_waiting = 0
            elif ticks_diff(now_ms, self.lock_t0) >= self.lock_timeout_ms:
                self.lock_waiting = 0
                self.lock_fault = 1
                self._push(EV_LOCK_FAULT, 0, self.lock_cmd, sensed)
        if self.lock_fault and self.level[IN_LOCK] == self.lock_cmd and self.ch[IN_LOCK] >= 0:
            self.lock_fault = 0

        v = self._sig
        level = self.level
        v[self._g_tamper] = level[IN_TAMPER]
        v[self._g_door] = level[IN_DOOR]
        v[self._g_estop] = self.estop

    # -- internals --------------------------------------------------------------------
    def _command_lock(self, level):
        if self.lock_ch < 0:
            return R_UNKNOWN_TARGET
        self.lock_cmd = level
        self.lock_drive = 1
        self.lock_waiting = 0
        self.lock_fault = 0
        return R_OK

    def _prime(self, d):
        top = self.debounce_ticks
        for k in range(_N_IN):
            ch = self.ch[k]
            if ch < 0:
                continue
            if (d >> ch) & 1:
                self.count[k] = top
                if k == IN_LOCK:
                    self.level[k] = 1  # the bolt's boot position is not a change
                else:
                    self._changed(k, 1)
        if self.lock_ch >= 0:
            if not self.lock_drive:
                # no command before the first tick: hold the bolt where it is
                if self.ch[IN_LOCK] >= 0:
                    self.lock_cmd = self.level[IN_LOCK]
                else:
                    self.lock_cmd = 1
                self.lock_drive = 1
            if self.ch[IN_LOCK] < 0:
                self.level[IN_LOCK] = self.lock_cmd  # stands in for the sense, no event at boot
        self._settling = 0  # every fitted counter is at an end now
        self._rebuild_channel_masks()

    def _rebuild_channel_masks(self):
        hi = 0
        lo = 0
        for k in range(_N_IN):
            ch = self.ch[k]
            if ch < 0:
                continue
            if self.level[k]:
                hi |= 1 << ch
            else:
                lo |= 1 << ch
        self._hi_ch = hi
        self._lo_ch = lo

    def _changed(self, k, v):
        self.level[k] = v
        if k == IN_TAMPER:
            self._push(EV_TAMPER, 0, v, 0)
            if v:
                self.tamper_latched = 1
                if self.armed and self.tamper_action != ACT_NONE:
                    self.tamper_action_pending = self.tamper_action
        elif k == IN_DOOR:
            self._push(EV_DOOR, 0, v, 0)
        elif k == IN_ESTOP:
            self._update_estop()
        else:
            self._push(EV_LOCK_STATE, 0, v, 0)

    def _update_estop(self):
        e = self.level[IN_ESTOP] | self.soft_estop
        if e != self.estop:
            self.estop = e
            self._push(EV_ESTOP, 0, e, self.level[IN_ESTOP] | (self.soft_estop << 1))
        self._sig[self._g_estop] = e
