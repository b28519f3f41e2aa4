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

A debounced change emits EV_GPIO_CHANGE (source line, value level). The raw
sample is bit ``ch`` of the HAL's input image ``hal.din_mask`` (refreshed by
``hal.sample()`` at the start of the tick; what a dead input reads as is the
HAL's choice, the bank sees only the bit). Input channels must be 0..29 (checked in
``__init__``). The first ``step()`` primes every input at its sampled level
with the counter at that end, without an event: the boot state is not a
change (telemetry carries it). Priming waits for the first tick because
boards latch their inputs in ``hal.sample()`` at the start of a tick.

Steady state (why most ticks cost a handful of int operations): the bank
keeps, besides the per-line arrays,

    _hi_ch / _lo_ch   channel masks of the inputs whose debounced level is
                      1 / 0
    _settling         line mask of the inputs whose counter is strictly
                      between its ends (and, before priming, every input)
    _want / _applied  line masks of the wanted / last written output levels

An input that is not settling has its counter at the end that matches its
level (the level only flips when the counter reaches an end, and priming
puts it there), so a sample equal to that level leaves counter and level
exactly as they are. ``step()`` therefore checks all lines at once::

    d = hal.din_mask
    ((d & _lo_ch) | (_hi_ch & ~d) | _settling | (_want ^ _applied)) == 0
        -> nothing to do this tick
    otherwise -> per-line integrator for the inputs that differ from their
                 level or are settling (in line order), then the outputs
                 that differ (in line order)

Two lines on one channel with different levels put the channel in both
``_hi_ch`` and ``_lo_ch``, which keeps the slow path running until they agree.

Pulls are configured by the board's HAL when it sets its pins up (the HAL has
no per-line configure call); the bank keeps ``pull`` for DESCRIBE only.

Outputs are driven to ``initial`` in ``__init__`` (defined levels from boot).
``write()`` (commands) and ``drive_owned()`` (firmware) only record the wanted
level (in ``wanted`` and the ``_want`` mask: set it through them, never in
``wanted`` directly); ``step()`` applies it with ``hal.digital_out`` when it differs from the
level last written -- on change, not every tick, so a HAL whose pin write is
slow (an I2C expander) does not pay for it every tick. Outputs do not emit
EV_GPIO_CHANGE (the command's RESULT and telemetry report them).

Ownership: a line with ``owned`` is driven by firmware (a lock actuator, a
reset line): ``write()`` refuses it with R_BUSY, ``drive_owned()`` is the only
way to set it, and ``drive_owned()`` refuses lines that are not owned.

``levels`` is the telemetry bitmask: bit i = debounced level of input i or the
applied level of output i (at most 30 lines, so it stays a small int). It is
current after every ``step()``.
"""

from array import array

from metal.core.config import DIR_IN, DIR_OUT
from metal.core.hal import check_mask_channel
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
        self._hal = hal  # din_mask is read through it: sample() reassigns the int
        self._dout = hal.digital_out
        self._push = events.push
        # the steady-state masks (see the module docstring)
        self._hi_ch = 0
        self._lo_ch = 0
        self._settling = 0
        self._want = 0
        self._applied = 0
        n_in = 0
        for i in range(n):
            if lines[i].direction == DIR_IN:
                n_in += 1
        self._inputs = bytearray(n_in)  # input line indexes, ascending
        n_in = 0
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
                    self._want |= 1 << i
                    self._applied |= 1 << i
            else:
                check_mask_channel(ln.ch, "gpio " + ln.name)
                self._inputs[n_in] = i
                n_in += 1
                self._settling |= 1 << i  # not primed yet

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
        self._set_wanted(i, level)
        return R_OK

    def drive_owned(self, i, level):
        """Firmware path: set owned output ``i`` (applied at the next step)."""
        if i < 0 or i >= self.n:
            return R_UNKNOWN_TARGET
        if self.direction[i] != DIR_OUT or not self.owned[i]:
            return R_INVALID_ARGUMENT
        if level != 0 and level != 1:
            return R_INVALID_ARGUMENT
        self._set_wanted(i, level)
        return R_OK

    def step(self):
        """Sample and debounce inputs, apply changed outputs."""
        # Fast path: every input equals its debounced level, no integrator is
        # between its ends and no output waits -- then the per-line logic
        # would change nothing (module docstring, "Steady state").
        d = self._hal.din_mask
        if (d & self._lo_ch) | (self._hi_ch & ~d) | self._settling | (self._want ^ self._applied):
            self._update(d)

    # -- internals ------------------------------------------------------------------
    def _set_wanted(self, i, level):
        self.wanted[i] = level
        if level:
            self._want |= 1 << i
        else:
            self._want &= ~(1 << i)

    def _update(self, d):
        """The per-line work of a tick where something differs or settles."""
        chs = self.ch
        tops = self.debounce_ticks
        counts = self.count
        level = self.level
        if not self._primed:
            self._prime(d)
        elif self._inputs:
            settling = self._settling
            levels = self.levels
            changed = 0
            for i in self._inputs:
                bit = 1 << i
                raw = (d >> chs[i]) & 1
                if raw == level[i] and not settling & bit:
                    continue  # at the end matching the sample: nothing moves
                top = tops[i]
                c = counts[i]
                if raw:
                    if c < top:
                        c += 1
                elif c > 0:
                    c -= 1
                counts[i] = c
                if c == top:
                    settling &= ~bit
                    if not level[i]:
                        level[i] = 1
                        levels |= bit
                        changed = 1
                        self._push(EV_GPIO_CHANGE, i, 1, 0)
                elif c == 0:
                    settling &= ~bit
                    if level[i]:
                        level[i] = 0
                        levels &= ~bit
                        changed = 1
                        self._push(EV_GPIO_CHANGE, i, 0, 0)
                else:
                    settling |= bit
            self._settling = settling
            self.levels = levels
            if changed:
                self._rebuild_channel_masks()
        diff = self._want ^ self._applied
        if diff:
            wanted = self.wanted
            levels = self.levels
            applied = self._applied
            i = 0
            while diff:
                if diff & 1:
                    w = wanted[i]
                    self._dout(chs[i], w)
                    level[i] = w
                    if w:
                        levels |= 1 << i
                        applied |= 1 << i
                    else:
                        levels &= ~(1 << i)
                        applied &= ~(1 << i)
                diff >>= 1
                i += 1
            self.levels = levels
            self._applied = applied

    def _prime(self, d):
        """First tick: every input takes its sampled level, counter at that end."""
        for i in self._inputs:
            if (d >> self.ch[i]) & 1:
                self.count[i] = self.debounce_ticks[i]
                self.level[i] = 1
                self.levels |= 1 << i
            else:
                self.count[i] = 0
                self.level[i] = 0
                self.levels &= ~(1 << i)
        self._settling = 0
        self._rebuild_channel_masks()
        self._primed = 1

    def _rebuild_channel_masks(self):
        hi = 0
        lo = 0
        for i in self._inputs:
            if self.level[i]:
                hi |= 1 << self.ch[i]
            else:
                lo |= 1 << self.ch[i]
        self._hi_ch = hi
        self._lo_ch = lo
