"""The fixed-rate loop: tick phases, timing stats, watchdog and overrun policy.

One tick calls the runner's phases in a fixed order::

    inputs -> interlocks -> controllers -> policy -> outputs -> link -> stats

then measures how long that took, updates the stats, applies the overrun
policy and, if the tick was complete and healthy, feeds the hardware watchdog.
``run_forever`` schedules ticks on a drift-free grid of deadlines.

Overrun policy (``overrun_limit`` from ``config.Limits``)::

                 tick overran                     streak reaches overrun_limit
    +--------+  (dur > tick_us or   +---------+   EV_LOOP_FAULT, fault = 1,    +-------+
    |   OK   |--late >= tick_us)--->| OVERRUN |-- runner.enter_safe_state() -->| FAULT |
    +--------+                      | streak  |   (once per episode)           +-------+
        ^  ^     a tick that did    +---------+                                    |
        |  +---- not overrun -----------+         further overruns are counted,    |
        |        (streak = 0)                     never escalated again            |
        +------------------- clear_fault() (explicit command) ---------------------+

* A tick overran when its phases took longer than one period, or when it
  started at least one whole period after its deadline (``late_us``, given by
  ``run_forever``). Each overrunning tick counts once in ``overruns``.
* ``fault`` stays set until ``clear_fault()``; the streak restarts from zero
  then, so a loop that is still too slow faults again after another
  ``overrun_limit`` overruns (a new episode, a new EV_LOOP_FAULT).

Watchdog rule: ``hal.watchdog_feed()`` is called only after a *complete,
healthy* tick: every phase returned (a phase that raises leaves ``tick()``
before the feed), and the runner's ``healthy`` attribute, read after the
phases and after any ``enter_safe_state`` call, is non-zero. A loop fault on
its own does not starve the watchdog: the fault already sends the board to its
safe state, and a reset would throw that state away. The runner reports
``healthy = 0`` when it cannot keep the hardware safe (e.g. the safe state
could not be reached); the watchdog then resets the board.

Time: ``now_us`` is a ticks_us value (wraps at 2**30). ``now_ms`` handed to the
phases is a separate millisecond counter that advances by the elapsed µs
(remainder carried), so it wraps at 2**30 like ``ticks_ms`` instead of jumping
when the µs counter wraps. It starts at ``now_us // 1000`` of the first tick
and never goes backwards. ``events.now_ms`` is set to it before the phases.

Stats: ``last_us``, ``max_us`` (since boot), ``window_max_us`` (since the
previous ``take_window_max()``, telemetry position 7), ``mean_us`` (EWMA with
weight 1/16, integer), ``ticks`` and ``overruns`` (mod 2**30), ``skipped``
(periods dropped by re-anchoring), ``jitter_hist`` (start lateness, buckets
<50, <100, <250, <500, <1000, <2500, <5000, >=5000 µs). The stats are
computed after ``phase_stats`` runs, so that phase sees the previous tick's.

Scheduling (``run_forever``)::

    deadlines  D0         D0+P       D0+2P      D0+3P      D0+4P     (D += P, never now + P)
    ticks      [==]~sleep~[=====]~~~~~[==========]=[==]~~~~~[==]
                                                |-late-|
    A late start runs at once (catch-up); more than ``max_behind`` periods late,
    the missed deadlines are dropped (``skipped``) and the grid keeps its phase.

``clock_us`` (default ``compat.ticks_us``) times the ticks and the schedule;
``sleep_us`` (default ``time.sleep_us``, or ``time.sleep`` with a float on
CPython: only in the idle wait, never in ``tick()``) waits for a deadline. Both
are injectable so tests can drive a fake clock.

Hal.sample() is not called here: it belongs to the runner's input phase.
"""

from array import array

from metal.core.compat import const, ticks_add, ticks_diff, ticks_us
from metal.core.proto import EV_LOOP_FAULT, R_OK

_MASK = const(0x3FFFFFFF)
_EWMA_SHIFT = const(4)  # mean weight 1/16
_EWMA_CLAMP = const(0x3FFFFFF)  # keeps mean << 4 below 2**30
JITTER_EDGES = (50, 100, 250, 500, 1000, 2500, 5000)  # µs, upper bounds (exclusive)
_N_EDGES = const(7)
N_JITTER_BUCKETS = const(8)
MAX_BEHIND = const(2)  # periods late before run_forever re-anchors instead of catching up

_PHASES = ("phase_inputs", "phase_interlocks", "phase_controllers", "phase_policy",
           "phase_outputs", "phase_link", "phase_stats")


def _default_sleep_us():
    import time

    s = getattr(time, "sleep_us", None)
    if s is not None:
        return s

    def sleep_us(us):  # CPython: the idle wait is the one place a float is fine
        time.sleep(us / 1000000)

    return sleep_us


class Loop:
    def __init__(self, tick_us, runner, hal, events, overrun_limit, clock_us=None,
                 sleep_us=None, max_behind=MAX_BEHIND):
        if tick_us <= 0 or overrun_limit <= 0 or max_behind < 1:
            raise ValueError("loop: tick_us, overrun_limit and max_behind must be positive")
        missing = [n for n in _PHASES + ("enter_safe_state", "healthy") if not hasattr(runner, n)]
        if missing:
            raise ValueError("loop: runner lacks " + ", ".join(missing))
        self.tick_us = tick_us
        self.overrun_limit = overrun_limit
        self.max_behind = max_behind
        self._runner = runner
        self._events = events
        # bound methods cached once: creating them per tick would allocate
        self._inputs = runner.phase_inputs
        self._interlocks = runner.phase_interlocks
        self._controllers = runner.phase_controllers
        self._policy = runner.phase_policy
        self._outputs = runner.phase_outputs
        self._link = runner.phase_link
        self._stats = runner.phase_stats
        self._enter_safe_state = runner.enter_safe_state
        self._feed = hal.watchdog_feed
        self._push = events.push
        self._clock = clock_us if clock_us is not None else ticks_us
        self._sleep = sleep_us if sleep_us is not None else _default_sleep_us()
        # time
        self.now_us = 0
        self.now_ms = 0
        self._us_rem = 0  # µs not yet counted into now_ms
        self._started = 0
        # stats
        self.last_us = 0
        self.max_us = 0
        self.window_max_us = 0
        self.mean_us = 0
        self._mean_x16 = 0  # mean_us << 4, for an integer EWMA without rounding drift
        self._mean_primed = 0
        self.ticks = 0
        self.overruns = 0
        self.overrun_streak = 0
        self.skipped = 0
        self.jitter_hist = array("i", [0] * N_JITTER_BUCKETS)
        self.fault = 0
        self.watchdog_feeds = 0

    def tick(self, now_us, late_us=-1):
        """Run one tick scheduled at ``now_us``; ``late_us`` (>= 0) is how late
        it started, fed into the jitter histogram and the overrun check.
        Returns the tick's duration in µs."""
        # advance the ms clock by the elapsed scheduled time
        if self._started:
            d = ticks_diff(now_us, self.now_us)
            if d > 0:
                rem = self._us_rem + d
                if rem >= 1000:
                    adv = rem // 1000
                    rem -= adv * 1000
                    self.now_ms = ticks_add(self.now_ms, adv)
                self._us_rem = rem
        else:
            self._started = 1
            self.now_ms = now_us // 1000
            self._us_rem = now_us - self.now_ms * 1000
        self.now_us = now_us
        now_ms = self.now_ms
        self._events.now_ms = now_ms

        clock = self._clock
        t0 = clock()
        self._inputs(now_ms)
        self._interlocks(now_ms)
        self._controllers(now_ms)
        self._policy(now_ms)
        self._outputs(now_ms)
        self._link(now_ms)
        self._stats(now_ms)
        dur = ticks_diff(clock(), t0)
        if dur < 0:
            dur = 0

        self.last_us = dur
        # max_us >= window_max_us always (the window restarts at 0), so only a
        # new window maximum can be a new all-time maximum
        if dur > self.window_max_us:
            self.window_max_us = dur
            if dur > self.max_us:
                self.max_us = dur
        e = dur if dur < _EWMA_CLAMP else _EWMA_CLAMP
        m = self._mean_x16
        if self._mean_primed:
            m += e - (m >> _EWMA_SHIFT)
        else:
            self._mean_primed = 1
            m = e << _EWMA_SHIFT  # first tick: start at its value
        self._mean_x16 = m
        self.mean_us = m >> _EWMA_SHIFT
        self.ticks = (self.ticks + 1) & _MASK

        overran = dur > self.tick_us
        if late_us >= 0:
            # start lateness into its jitter bucket (run_forever passes it every tick)
            b = 0
            while b < _N_EDGES and late_us >= JITTER_EDGES[b]:
                b += 1
            hist = self.jitter_hist
            hist[b] = (hist[b] + 1) & _MASK
            if late_us >= self.tick_us:
                overran = 1
        if overran:
            self._overrun(dur)
        else:
            self.overrun_streak = 0

        if self._runner.healthy:
            self._feed()
            self.watchdog_feeds = (self.watchdog_feeds + 1) & _MASK
        return dur

    def _overrun(self, dur):
        self.overruns = (self.overruns + 1) & _MASK
        s = self.overrun_streak
        if s < _MASK:
            s += 1
            self.overrun_streak = s
        if s >= self.overrun_limit and not self.fault:
            self.fault = 1
            self._push(EV_LOOP_FAULT, 0, s, dur)
            self._enter_safe_state(EV_LOOP_FAULT)

    def take_window_max(self):
        """Longest tick since the previous call (telemetry), then reset."""
        m = self.window_max_us
        self.window_max_us = 0
        return m

    def clear_fault(self):
        """Leave the loop-fault state (explicit command); a new episode needs
        another ``overrun_limit`` consecutive overruns."""
        self.fault = 0
        self.overrun_streak = 0
        return R_OK

    def run_forever(self, max_ticks=-1):
        """Tick on a drift-free grid until ``max_ticks`` ticks ran (-1: never
        returns). Returns the number of ticks run.

        Deadlines advance by exactly ``tick_us`` from the first one, whatever
        each tick cost, so the rate has no drift. A tick that starts late runs
        at once (catch-up); if it is more than ``max_behind`` periods late the
        missed periods are dropped (``skipped``) and the grid moves on by
        whole periods, keeping its phase.
        """
        clock = self._clock
        sleep = self._sleep
        period = self.tick_us
        deadline = clock()
        n = 0
        while max_ticks < 0 or n < max_ticks:
            now = clock()
            wait = ticks_diff(deadline, now)
            while wait > 0:
                sleep(wait)
                now = clock()
                wait = ticks_diff(deadline, now)
            late = -wait
            scheduled = deadline
            behind = late // period
            if behind > self.max_behind:
                self.skipped = (self.skipped + behind) & _MASK
                scheduled = ticks_add(deadline, behind * period)
                deadline = scheduled
            self.tick(scheduled, late)
            deadline = ticks_add(deadline, period)
            n += 1
        return n
