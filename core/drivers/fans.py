"""Fans: PWM duty out, tachometer speed in, stall detection.

``set_duty`` only records the wanted duty; ``apply`` writes the changed ones
to ``hal.pwm_set`` once per tick (output phase). ``step(now_ms)`` (input
phase) measures each fan over a window of at least ``window_ms`` (500 ms,
rounded up to whole ticks); ``hal.tach_pulses`` returns the pulses the board
counted since the previous call, so it is called only when a fan's window
closes (to measure) and when the state machine restarts a window (to drop the
pulses before it). When the window closes the speed is ::

    rpm = pulses * 60000 / (pulses_per_rev * elapsed_ms)      (rounded)

with the real elapsed time (a late tick does not inflate the speed). Pulses
are capped at 16 000 per window and the elapsed time at 100 s, so
``pulses * 60000`` <= 9.6e8 and ``pulses_per_rev * elapsed`` <= 8e5 stay
small ints.

States, judged on the duty the HAL is actually driving (the last ``apply``)::

                 duty > 0                     spinup_ms passed
        OFF ---------------------> SPINUP ----------------------> OK
         ^                                (window restarted)     |  ^
         |  duty 0 (from any state)                              |  | a window with
         +-------------------------------------------------------+  | rpm >= stall_rpm
                                                 a window with    v  |
                                         rpm < stall_rpm while   STALLED
                                         duty >= min_duty

* Spin-up grace: after a start from 0 the fan has ``spinup_ms`` to reach
  speed; the measuring window restarts when the grace ends, so the first
  verdict uses a full window of a fan that should be at speed. A fan that
  never starts is therefore STALLED ``spinup_ms + window_ms`` after the duty
  was applied; one that stops while running, within two windows.
* Below ``min_duty`` a fan may legitimately stand still, so it is not judged
  (state OK). The thermal controller never drives a fan between 0 and its
  ``min_duty``.
* EV_FAN_STATE(source=fan, value=new state) is pushed when a fan enters or
  leaves STALLED, the news an operator needs; the routine OFF/SPINUP/OK
  cycle of a zone that switches its fans off is only in telemetry.

Steady-state cost: O(1) per bank. Between two events nothing above can
change: a state moves only when the applied duty turns on or off (``apply``
marks that; the stall verdict reads the duty applied when the window closes),
when a spin-up grace ends or when a window closes (both at known times), and
the published rpm/state/stalled signals change only with them. So a full pass
over the fans, which also works out when the next event is due, runs only on
such a tick; every other tick is one compare against the time left. A clock
that stepped back (``now`` before the last pass; cannot happen with ticks_ms)
also runs a full pass, which restarts the windows it affects.
"""

from array import array

from metal.core.compat import const, ticks_diff
from metal.core.proto import (
    EV_FAN_STATE,
    FAN_OK,
    FAN_STALLED,
    FAN_SPINUP,
    FAN_OFF,
    R_OK,
    R_UNKNOWN_TARGET,
)

WINDOW_MS = const(500)
_PULSES_MAX = const(16000)  # per window: * 60000 stays below 2**30
_ELAPSED_MAX = const(100000)  # ms: * pulses_per_rev (<= 8) stays small


class FanBank:
    def __init__(self, fans, hal, signals, events, tick_ms):
        n = len(fans)
        if tick_ms <= 0:
            raise ValueError("tick_ms must be positive")
        self.n = n
        self.tick_ms = tick_ms
        # whole ticks, at least WINDOW_MS
        self.window_ms = ((WINDOW_MS + tick_ms - 1) // tick_ms) * tick_ms
        self._pwm_set = hal.pwm_set
        self._tach = hal.tach_pulses
        self._push = events.push
        self._v = signals.v
        self._rpm0 = signals.fan_rpm0
        self._state0 = signals.fan_state0
        self._stalled0 = signals.fan_stalled0

        self.pwm_ch = array("i", [0] * n)
        self.tach_ch = array("i", [0] * n)
        self.ppr = bytearray(n)
        self.stall_rpm = array("i", [0] * n)
        self.spinup_ms = array("i", [0] * n)
        self.min_duty = array("i", [0] * n)
        self.zone = bytearray(n)
        for i in range(n):
            f = fans[i]
            self.pwm_ch[i] = f.pwm_ch
            self.tach_ch[i] = f.tach_ch
            self.ppr[i] = f.pulses_per_rev
            self.stall_rpm[i] = f.stall_rpm
            self.spinup_ms[i] = f.spinup_ms
            self.min_duty[i] = f.min_duty
            self.zone[i] = f.zone

        self.duty = array("i", [0] * n)  # wanted, per-mille
        self.applied = array("i", [-1] * n)  # last written to the HAL (-1: never)
        self.rpm = array("i", [0] * n)
        self.state = bytearray([FAN_OFF] * n)
        self._win_start = array("i", [0] * n)
        self._spin_start = array("i", [0] * n)
        self._started = 0  # first step() sets the window starts
        self._pass_ms = 0  # time of the last full pass
        self._wait = 0  # ms after _pass_ms until the next event; 0: pass next step
        for i in range(n):
            self._v[self._rpm0 + i] = 0
            self._v[self._state0 + i] = FAN_OFF

    def set_duty(self, i, permille):
        """Record the duty for fan ``i`` (clamped to 0..1000); ``apply`` writes it."""
        if not 0 <= i < self.n:
            return R_UNKNOWN_TARGET
        if permille < 0:
            permille = 0
        elif permille > 1000:
            permille = 1000
        self.duty[i] = permille
        return R_OK

    def apply(self):
        """Write every changed duty to the PWM outputs (output phase)."""
        duty = self.duty
        applied = self.applied
        for i in range(self.n):
            d = duty[i]
            a = applied[i]
            if d != a:
                self._pwm_set(self.pwm_ch[i], d)
                applied[i] = d
                if d <= 0 or a <= 0:
                    # on/off changed: the next step moves the state. (Another
                    # duty > 0 changes nothing before the window's verdict,
                    # which reads the duty applied then.)
                    self._wait = 0

    def _set_state(self, i, st):
        old = self.state[i]
        if old != st:
            self.state[i] = st
            if old == FAN_STALLED or st == FAN_STALLED:
                self._push(EV_FAN_STATE, i, st, 0)

    def step(self, now_ms):
        """Close finished windows, update states and signals (input phase)."""
        # O(1) unless an event is due (module docstring): `d < 0` is a clock
        # that stepped back, `_wait` is 0 after apply() changed a duty.
        d = ticks_diff(now_ms, self._pass_ms)
        if d < 0 or d >= self._wait:
            self._update(now_ms)

    def _update(self, now_ms):
        """The full pass: every fan's state machine and window, its signals,
        and the time until the next event."""
        n = self.n
        tach = self._tach
        tach_ch = self.tach_ch
        win_start = self._win_start
        spin_start = self._spin_start
        if not self._started:
            # The first window starts now and counts what the board counted
            # before it (no tach read to drop them).
            self._started = 1
            for i in range(n):
                win_start[i] = now_ms
        v = self._v
        rpm0 = self._rpm0
        state0 = self._state0
        stalled0 = self._stalled0
        applied = self.applied
        state = self.state
        rpms = self.rpm
        window = self.window_ms
        wait = window
        for i in range(n):
            d = applied[i]
            st = state[i]
            if d <= 0:
                if st != FAN_OFF:
                    self._set_state(i, FAN_OFF)
            elif st == FAN_OFF:
                self._set_state(i, FAN_SPINUP)
                spin_start[i] = now_ms
                win_start[i] = now_ms
                tach(tach_ch[i])  # drop the pulses before the new window
            elif st == FAN_SPINUP:
                if ticks_diff(now_ms, spin_start[i]) >= self.spinup_ms[i]:
                    self._set_state(i, FAN_OK)
                    # judge only on a window of a fan that should be at speed
                    win_start[i] = now_ms
                    tach(tach_ch[i])

            elapsed = ticks_diff(now_ms, win_start[i])
            if elapsed >= window:
                if elapsed > _ELAPSED_MAX:
                    elapsed = _ELAPSED_MAX
                p = tach(tach_ch[i])  # every pulse of this window
                if p < 0:  # READ_ERROR (no such channel): no pulses
                    p = 0
                elif p > _PULSES_MAX:
                    p = _PULSES_MAX
                den = self.ppr[i] * elapsed
                rpm = (p * 60000 + (den >> 1)) // den
                rpms[i] = rpm
                win_start[i] = now_ms
                elapsed = 0
                st = state[i]
                if st == FAN_OK or st == FAN_STALLED:
                    if d >= self.min_duty[i] and rpm < self.stall_rpm[i]:
                        self._set_state(i, FAN_STALLED)
                    else:
                        self._set_state(i, FAN_OK)
            elif elapsed < 0:
                # the clock stepped back (cannot happen with ticks_ms): restart
                win_start[i] = now_ms
                tach(tach_ch[i])
                elapsed = 0
            left = window - elapsed
            if left < wait:
                wait = left

            st = state[i]
            if st == FAN_SPINUP:
                left = self.spinup_ms[i] - ticks_diff(now_ms, spin_start[i])
                if left < wait:
                    wait = left
            v[rpm0 + i] = rpms[i]
            v[state0 + i] = st
            v[stalled0 + i] = 1 if st == FAN_STALLED else 0
        self._pass_ms = now_ms
        self._wait = wait
