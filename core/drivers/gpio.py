"""General-purpose I/O lines: debounced inputs and owned/commanded outputs.

Inputs: integrator debounce. Each tick the raw sample moves a counter one
step toward its end (high: +1 up to ``debounce_ticks``; low: -1 down to 0).
The debounced level only changes when the counter reaches an end: it becomes
1 at ``debounce_ticks`` and 0 at 0, and holds anywhere in between. A clean
edge therefore shows after exactly ``debounce_ticks`` samples of the new
level (the edge sampled at step k flips the level at step k+N-1); chatter
shorter than that only moves the counter and never the level::

    raw      0 0 1 0 1 1 1 1 1 0 1 1 ...      (N = 4)
    counter  0 0 1 0 1 2 3 4 4 3 4 4
    level    0 0 0 0 0 0 0 1 1 1 1 1          EV_GPIO_CHANGE at the 4

A debounced change emits EV_GPIO_CHANGE (source line, value level). Any
nonzero sample (including READ_ERROR from a HAL that reports one) reads as 1.
The first ``step()`` primes every input at its sampled level with the counter
at that end, without an event: the boot state is not a change (telemetry
carries it). Priming waits for the first tick because boards latch their
inputs in ``hal.sample()`` at the start of a tick.

Pulls are configured by the board's HAL when it sets its pins up (the HAL has
no per-line configure call); the bank keeps ``pull`` for DESCRIBE only.

Outputs are driven to ``initial`` in ``__init__`` (defined levels from boot).
``write()`` (commands) and ``drive_owned()`` (firmware) only record the wanted
level; ``step()`` applies it with ``hal.digital_out`` when it differs from the
level last written -- on change, not every tick, so a HAL whose pin write is
slow (an I2C expander) does not pay for it every tick. Outputs do not emit
EV_GPIO_CHANGE (the command's RESULT and telemetry report them).

Ownership: a line with ``owned`` is driven by firmware (a lock actuator, a
reset line): ``write()`` refuses it with R_BUSY, ``drive_owned()`` is the only
way to set it, and ``drive_owned()`` refuses lines that are not owned.

``levels`` is the telemetry bitmask: bit i = debounced level of input i or the
applied level of output i (at most 30 lines, so it stays a small int).
"""

from array import array

from metal.core.config import DIR_IN, DIR_OUT
from metal.core.proto import (
    EV_GPIO_CHANGE,
    R_BUSY,
    R_INVALID_ARGUMENT,
    R_OK,
    R_UNKNOWN_TARGET,
)


class GpioBank:
    def __init__(self, lines, hal, events):
        n = len(lines)
        if n > 30:
            raise ValueError("gpio: at most 30 lines")
        self.n = n
        self.ch = array("i", [0] * n)
        self.direction = bytearray(n)
        self.pull = bytearray(n)
        self.owned = bytearray(n)
        self.debounce_ticks = bytearray(n)
        self.count = bytearray(n)  # integrator, 0..debounce_ticks
        self.level = bytearray(n)  # debounced input / applied output
        self.wanted = bytearray(n)  # output level to apply at the next step
        self.levels = 0
        self._primed = 0
        self._din = hal.digital_in
        self._dout = hal.digital_out
        self._push = events.push
        for i in range(n):
            ln = lines[i]
            if ln.initial != 0 and ln.initial != 1:
                raise ValueError("gpio: " + ln.name + ".initial must be 0 or 1")
            self.ch[i] = ln.ch
            self.direction[i] = ln.direction
            self.pull[i] = ln.pull
            self.owned[i] = 1 if ln.owned else 0
            self.debounce_ticks[i] = ln.debounce_ticks
            if ln.direction == DIR_OUT:
                self.wanted[i] = ln.initial
                self.level[i] = ln.initial
                self._dout(ln.ch, ln.initial)
                if ln.initial:
                    self.levels |= 1 << i

    def write(self, i, level):
        """Command path: set output ``i`` (applied at the next step)."""
        if i < 0 or i >= self.n:
            return R_UNKNOWN_TARGET
        if self.direction[i] != DIR_OUT:
            return R_INVALID_ARGUMENT
        if level != 0 and level != 1:
            return R_INVALID_ARGUMENT
        if self.owned[i]:
            return R_BUSY  # a line a driver uses cannot be driven by a command
        self.wanted[i] = level
        return R_OK

    def drive_owned(self, i, level):
        """Firmware path: set owned output ``i`` (applied at the next step)."""
        if i < 0 or i >= self.n:
            return R_UNKNOWN_TARGET
        if self.direction[i] != DIR_OUT or not self.owned[i]:
            return R_INVALID_ARGUMENT
        if level != 0 and level != 1:
            return R_INVALID_ARGUMENT
        self.wanted[i] = level
        return R_OK

    def step(self):
        """Sample and debounce inputs, apply changed outputs."""
        # every line on every tick: arrays and the HAL read in locals
        primed = self._primed
        chs = self.ch
        dirs = self.direction
        tops = self.debounce_ticks
        counts = self.count
        level = self.level
        wanted = self.wanted
        din = self._din
        for i in range(self.n):
            if dirs[i] == DIR_IN:
                raw = din(chs[i])
                top = tops[i]
                if not primed:
                    if raw:
                        counts[i] = top
                        self._set_level(i, 1)
                    else:
                        counts[i] = 0
                        self._set_level(i, 0)
                    continue
                c = counts[i]
                if raw:
                    if c < top:
                        c += 1
                elif c > 0:
                    c -= 1
                counts[i] = c
                if c == top:
                    if not level[i]:
                        self._set_level(i, 1)
                        self._push(EV_GPIO_CHANGE, i, 1, 0)
                elif c == 0 and level[i]:
                    self._set_level(i, 0)
                    self._push(EV_GPIO_CHANGE, i, 0, 0)
            else:
                w = wanted[i]
                if w != level[i]:
                    self._dout(chs[i], w)
                    self._set_level(i, w)
        self._primed = 1

    def _set_level(self, i, v):
        self.level[i] = v
        if v:
            self.levels |= 1 << i
        else:
            self.levels &= ~(1 << i)
