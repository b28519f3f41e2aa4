"""Power rails: sequencing, monitoring and fault handling.

Every rail has an enable output, a power-good input and (optionally) a current
monitor. Rails form a forest: ``Rail.parent`` names the rail a rail depends on,
always an earlier one, so ascending index order is a valid power-up order and
descending index order a valid power-down order (dependents first).

Per-rail state machine::

                              turn due, parent ON
     +-----+ --------------------------------------------> +--------+
     | OFF |                                               | SEQ_ON |
     +-----+ <------+                                      +--------+
       ^            | off_delay_ms                 abort     |  |  |
       |            | elapsed              (not wanted)      |  |  | power-good
       |       +---------+ <---------------------------------+  |  v
       |       | SEQ_OFF |                                      |  +----+
       |       +---------+ <------------------------------------+--| ON |
       |                     turn due (disabled)                |  +----+
       |                                             pg timeout |    |
       | explicit off                                           v    | pg lost /
       |                                                  +-------+  | overcurrent
       +--------------------------------------------------| FAULT |<-+
                                                          +-------+
                                   explicit on (retry): FAULT -> SEQ_ON

     At once, from SEQ_ON, ON or SEQ_OFF to OFF: parent failed (RF_PARENT),
     emergency_off. Every change is an EV_RAIL_STATE event (aux = RF_*).

Legal transitions (anything else is refused and counted in
``illegal_transitions``, which stays 0 unless this module has a bug):
OFF->SEQ_ON; SEQ_ON->ON|SEQ_OFF|FAULT|OFF; ON->SEQ_OFF|FAULT|OFF;
SEQ_OFF->OFF; FAULT->OFF|SEQ_ON.

How requests work. Each rail has a wanted level (``want``). Requests only
change wanted levels, keeping two invariants: a rail wanted on has every
ancestor wanted on, and a rail wanted off has every dependent wanted off. The
sequencer in ``step()`` moves one rail at a time toward its wanted level:

* a rail in SEQ_ON/SEQ_OFF is ``active``; nothing else starts until it settles
  (SEQ_ON ends at power-good, pg timeout, or an abort when it is no longer
  wanted; SEQ_OFF ends after the rail's ``off_delay_ms``);
* otherwise downs go first: the highest-index rail that is ON and wanted off
  is disabled (SEQ_OFF) -- its dependents, having higher indices, went before;
* then ups: the lowest-index rail wanted on, OFF or FAULT, whose parent is ON
  is enabled (SEQ_ON) -- so missing parents come up first, in order.

When a rail settles the next one starts in the same tick, so the system state
does not flicker through PARTIAL mid-sequence.

Faults act at once, outside the sequencer: the failing rail is disabled and
goes FAULT, then every dependent still enabled or settling is disabled in the
same tick, deepest first (descending index), and goes OFF with RF_PARENT:
their supply is gone, and "a rail is only ON while its parent is ON" must hold
at the end of every tick. Overcurrent is checked only in ON (soft-start inrush
in SEQ_ON is normal; a short there shows up as a pg timeout). Power-good is
not filtered: a board with a noisy PG line filters it in its HAL.

A FAULT rail stays FAULT (disabled, reason in ``fault``) until an explicit
``request_off`` (-> OFF) or ``request_on``/``request_cycle``/``power_on_all``
(a retry). Orderly downs (``power_off_all``, ``shed``) leave FAULT rails alone.

Result codes: requests are checked in this order: R_UNKNOWN_TARGET (bad
index), R_INVALID_ARGUMENT (bad cycle off time), R_REJECTED_BY_INTERLOCK
(power-on while ``lockout`` is set or the caller passes ``veto``), R_BUSY (a
rail the request would touch is settling, pending in the sequencer, or part of
a running cycle), else R_OK. ``shed``, ``power_off_all`` and ``emergency_off``
are safety actions: they never return R_BUSY, they preempt (a pending power-up
in their scope is dropped, a rail in SEQ_ON is aborted, running cycles are
cancelled).

Cycle: ``request_cycle(i, off_ms)`` takes rail i and its dependents down in
order, keeps rail i OFF for ``off_ms`` after it reached OFF, then brings back
rail i, the dependents that were on or wanted on at the request, and any
missing parents (like ``request_on``). A lockout active when the off time ends
cancels the way back up.

Measurements: ``step()`` takes every rail's mV and mA from the HAL's input
image (``hal.mv[ch]``, ``hal.ma[ch]``, refreshed by ``hal.sample``) once per
tick into ``mv``/``ma`` (clamped to 0..65535 for the uint16 telemetry fields),
and power-good from ``hal.pg_mask`` (bit ``ch``). A read error (READ_ERROR)
reports 0 and counts in ``read_errors`` (once per failed reading per tick); it
never faults a rail -- a dead current monitor must not power the machine down,
and power-good still protects the rail. ``publish()`` copies rail states and
fault reasons into the signal board (``rail_fault`` is the RF_* reason while
the rail is in FAULT, else RF_NONE); call it every tick after ``step()``.

Steady-state cost. Most ticks nothing moves: every rail settled, power-good
present, currents under their limits. ``step()`` is then O(1) in the number of
rails, and every skip rests on an invariant:

* measurements: the image arrays are compared with a copy of what the last
  measurement read (one C-level compare each). Equal images give the same
  ``mv``/``ma`` and the same read errors as last tick, so only the error
  count is added again. (Monitors that are absent or refreshed slower than
  the tick leave the image unchanged between refreshes.)
* power-good: one mask compare, ``pg_mask & need == need``, where ``need``
  has the power-good bit of every rail in ON (kept by ``_set_state``).
* overcurrent: a new image is compared with the limits while it is copied
  (one compare per rail); an unchanged image only needs a look when the set
  of ON rails changed (a loop over the monitored rails, ``overcurrent_ma`` >
  0), since every rail ON at the last check passed with these currents.
  Any doubt -- a missing power-good bit or a current over a limit -- runs
  the exact per-rail monitor pass in index order, so who is blamed and in
  what order is the same.
* sequencer (lockout, transition, cycles, next start): runs only while
  ``_seq_dirty`` (set by every request, every state change, a transition or
  cycle in progress) or when ``lockout`` changed; a pass that finds nothing
  to do clears it. Those sections only depend on time while a rail is
  settling or a cycle runs, and both keep the flag set.
* ``publish()`` writes the signals only after a state or reason changed.
"""

from array import array

from metal.core.compat import const, ticks_diff
from metal.core.hal import READ_ERROR, check_channel, check_mask_channel
from metal.core.proto import (
    EV_POWER_STATE,
    EV_RAIL_STATE,
    PWR_FAULT,
    PWR_OFF,
    PWR_ON,
    PWR_PARTIAL,
    PWR_SEQ_OFF,
    PWR_SEQ_ON,
    R_BUSY,
    R_INVALID_ARGUMENT,
    R_OK,
    R_REJECTED_BY_INTERLOCK,
    R_UNKNOWN_TARGET,
    RAIL_FAULT,
    RAIL_OFF,
    RAIL_ON,
    RAIL_SEQ_OFF,
    RAIL_SEQ_ON,
    RF_NONE,
    RF_OVERCURRENT,
    RF_PARENT,
    RF_PG_LOST,
    RF_PG_TIMEOUT,
    RF_SHED,
)

# Bit ``new`` of _LEGAL[old] is set when old -> new is a legal rail transition.
_LEGAL = b"\x02\x1d\x19\x01\x03"

DEFAULT_CYCLE_OFF_MS = const(1000)
# Longest accepted cycle off time: well inside ticks_diff's half range (2**29 ms).
MAX_CYCLE_OFF_MS = const(3600000)
_MV_MAX = const(65535)


class _SliceOf:
    def __getitem__(self, s):
        return s


# A reusable ``[:]``: ``a[_ALL] = b`` copies b into a in C without building a
# slice object per call (``a[:] = b`` allocates one).
_ALL = _SliceOf()[:]


# cycle phases (per cycle root rail)
_CYC_NONE = const(0)
_CYC_DOWN = const(1)  # waiting for the root to reach OFF
_CYC_WAIT = const(2)  # root OFF, timing the off time


class PowerController:
    def __init__(self, rails, hal, signals, events):
        n = len(rails)
        if n > 30:
            raise ValueError("power: at most 30 rails")
        self.n = n
        self.ch = array("i", [0] * n)
        self.parent = array("i", [0] * n)
        self.pg_timeout_ms = array("i", [0] * n)
        self.overcurrent_ma = array("i", [0] * n)
        self.off_delay_ms = array("i", [0] * n)
        for i in range(n):
            r = rails[i]
            if not -1 <= r.parent < i:
                raise ValueError("power: " + r.name + ".parent must name an earlier rail")
            self.ch[i] = r.ch
            self.parent[i] = r.parent
            self.pg_timeout_ms[i] = r.pg_timeout_ms
            self.overcurrent_ma[i] = r.overcurrent_ma
            self.off_delay_ms[i] = r.off_delay_ms
        self.state = bytearray(n)  # RAIL_*
        self.fault = bytearray(n)  # RF_* while FAULT, else RF_NONE
        self.want = bytearray(n)  # 1 = should be on
        self.down_reason = bytearray(n)  # RF_* carried by the events of a pending down
        self.t0 = array("i", [0] * n)  # when the rail entered SEQ_ON / SEQ_OFF
        self.mv = array("i", [0] * n)
        self.ma = array("i", [0] * n)
        self.cyc = bytearray(n)  # _CYC_* for a cycle rooted at this rail
        self.cyc_root = bytearray(n)  # root index + 1 of the cycle a rail belongs to, 0 none
        self.cyc_back = bytearray(n)  # 1 = comes back on when its cycle's off time ends
        self.cyc_off_ms = array("i", [0] * n)
        self.cyc_t0 = array("i", [0] * n)
        self._mark = bytearray(n)  # scratch: subtree membership
        self.active = -1  # the rail in SEQ_ON/SEQ_OFF, -1 none
        self.power_state = PWR_OFF
        self._state_changed = 0  # a rail state changed since _update_power_state ran
        self.lockout = 0  # set by the firmware while a lockout interlock is active
        self.illegal_transitions = 0
        self.read_errors = 0
        self.now_ms = 0  # time of the last step()

        # the input image (the HAL never replaces these arrays; pg_mask is an
        # int that sample() reassigns, so it is read through the hal each tick)
        self._hal = hal
        self._hmv = hal.mv
        self._hma = hal.ma
        for i in range(n):
            c = self.ch[i]
            check_channel(self._hmv, c, "power: " + rails[i].name + " mv")
            check_channel(self._hma, c, "power: " + rails[i].name + " ma")
            check_mask_channel(c, "power: " + rails[i].name + " power-good")
        # fast-path bookkeeping (see the module docstring)
        self._snap_mv = self._hmv[:]  # the image as the last measurement read it
        self._snap_ma = self._hma[:]
        self._measured = 0  # the snapshots are valid (set by the first step)
        self._errs = 0  # read errors in the last measured image
        n_oc = 0
        for i in range(n):
            if self.overcurrent_ma[i] > 0:
                n_oc += 1
        self._oc_i = bytearray(n_oc)  # monitored rails, ascending
        self._oc_lim = array("i", [0] * n_oc)
        # per rail: the current above which it may be over its limit (a
        # limit of 0 is "not monitored": never)
        self._oc_max = array("i", [0x3FFFFFFF] * n)
        k = 0
        for i in range(n):
            if self.overcurrent_ma[i] > 0:
                self._oc_i[k] = i
                self._oc_lim[k] = self.overcurrent_ma[i]
                self._oc_max[i] = self.overcurrent_ma[i]
                k += 1
        self._on_rails = 0  # bit i: rail i is ON
        self._on_pg = 0  # bit ch: the power-good a rail in ON needs
        self._oc_on = 0  # _on_rails when overcurrent was last checked
        self._seq_dirty = 0  # the sequencer sections may have work
        self._lockout_seen = 0  # lockout as the sequencer last saw it
        self._pub_dirty = 1  # a state or reason changed since publish()

        self._enable = hal.rail_enable
        self._push = events.push
        self._sig = signals.v
        self._sig_state0 = signals.rail_state0
        self._sig_fault0 = signals.rail_fault0

        # Boot: every rail disabled, dependents first, whatever the pins did before.
        for i in range(n - 1, -1, -1):
            self._enable(self.ch[i], 0)

    # -- requests (command path) ---------------------------------------------------
    def request_on(self, i, veto=0):
        """Power rail ``i`` on, bringing up missing parents first, in order."""
        if i < 0 or i >= self.n:
            return R_UNKNOWN_TARGET
        if self.lockout or veto:
            return R_REJECTED_BY_INTERLOCK
        j = i
        while j >= 0:
            if self._busy(j):
                return R_BUSY
            j = self.parent[j]
        self._want_chain_on(i)
        return R_OK

    def request_off(self, i):
        """Power rail ``i`` off, its dependents first; clears a FAULT on ``i``."""
        if i < 0 or i >= self.n:
            return R_UNKNOWN_TARGET
        self._mark_subtree(i)
        m = self._mark
        for j in range(i, self.n):
            if m[j] and self._busy(j):
                return R_BUSY
        self._want_subtree_off(RF_NONE)
        if self.state[i] == RAIL_FAULT:
            self._set_state(i, RAIL_OFF, RF_NONE)
            self._update_power_state()
        return R_OK

    def request_cycle(self, i, off_ms=DEFAULT_CYCLE_OFF_MS, veto=0):
        """Off (dependents first), ``off_ms`` off, then on again (see module doc)."""
        if i < 0 or i >= self.n:
            return R_UNKNOWN_TARGET
        if off_ms < 0 or off_ms > MAX_CYCLE_OFF_MS:
            return R_INVALID_ARGUMENT
        if self.lockout or veto:
            return R_REJECTED_BY_INTERLOCK
        j = self.parent[i]
        while j >= 0:
            if self._busy(j):
                return R_BUSY
            j = self.parent[j]
        self._mark_subtree(i)
        m = self._mark
        for j in range(i, self.n):
            if m[j] and self._busy(j):
                return R_BUSY
        for j in range(i, self.n):
            if m[j]:
                self.cyc_back[j] = self.want[j]
                self.cyc_root[j] = i + 1
        self.cyc_back[i] = 1
        self._want_subtree_off(RF_NONE)
        self.cyc[i] = _CYC_DOWN  # (_want_subtree_off woke the sequencer)
        self.cyc_off_ms[i] = off_ms
        if self.state[i] == RAIL_FAULT:
            self._set_state(i, RAIL_OFF, RF_NONE)
            self._update_power_state()
        return R_OK

    def power_on_all(self, veto=0):
        """Every rail on, in dependency order (FAULT rails are retried)."""
        if self.lockout or veto:
            return R_REJECTED_BY_INTERLOCK
        for j in range(self.n):
            if self._busy(j):
                return R_BUSY
        for j in range(self.n):
            self.want[j] = 1
        self._seq_dirty = 1
        return R_OK

    def power_off_all(self, reason=RF_NONE):
        """Orderly power-down of every rail, in reverse order. Never busy."""
        for j in range(self.n):
            self.want[j] = 0
            self.down_reason[j] = reason
            self.cyc[j] = _CYC_NONE
            self.cyc_root[j] = 0
            self.cyc_back[j] = 0
        self._seq_dirty = 1
        return R_OK

    def shed(self, i, reason=RF_SHED):
        """Interlock action: rail ``i`` and its dependents down in order. Never busy."""
        if i < 0 or i >= self.n:
            return R_UNKNOWN_TARGET
        self._mark_subtree(i)
        self._want_subtree_off(reason)
        self._cancel_cycles_in_mark()
        return R_OK

    def emergency_off(self, reason=RF_SHED):
        """E-stop: disable every rail now, dependents first, in this call.

        Every enable is driven low, even for rails already OFF or FAULT, so the
        pins match whatever the state says. FAULT rails keep their FAULT.
        """
        st = self.state
        for j in range(self.n - 1, -1, -1):
            self._enable(self.ch[j], 0)
            s = st[j]
            if s == RAIL_ON or s == RAIL_SEQ_ON or s == RAIL_SEQ_OFF:
                self._set_state(j, RAIL_OFF, reason)
            self.want[j] = 0
            self.cyc[j] = _CYC_NONE
            self.cyc_root[j] = 0
            self.cyc_back[j] = 0
        self.active = -1
        self._seq_dirty = 1
        self._update_power_state()
        return R_OK

    # -- tick ---------------------------------------------------------------------
    def step(self, now_ms):
        # Runs every tick: arrays in locals, and every part that only matters
        # when something moved costs one compare when nothing did (module doc).
        self.now_ms = now_ms
        hmv = self._hmv
        hma = self._hma
        mas = self.ma

        # 1. measure and monitor, parents before dependents (ascending index), so a
        #    collapsed parent is the one blamed and its dependents go RF_PARENT.
        # Every ON rail needs its power-good bit, and a rail over its current
        # limit may need a fault: either doubt runs the exact per-rail pass.
        over = 0
        if self._measured and hma == self._snap_ma and hmv == self._snap_mv:
            # same image as last tick: mv/ma already hold it; its errors count again
            errors = self._errs
            if self._on_rails != self._oc_on:  # rails newly ON: check them
                oci = self._oc_i
                ocl = self._oc_lim
                for k in range(len(oci)):
                    if mas[oci[k]] > ocl[k]:
                        over = 1
                        break
        else:
            chs = self.ch
            mvs = self.mv
            lim = self._oc_max
            seen = 0
            for i in range(self.n):
                c = chs[i]
                v = hmv[c]
                a = hma[c]
                mvs[i] = v
                mas[i] = a
                seen |= v | a
                if a > lim[i]:  # (raw: the same verdict as the clamped value)
                    over = 1
            errors = 0
            if seen >> 16:  # a reading outside 0..65535 (READ_ERROR is negative)
                errors = self._clamp()
            self._errs = errors
            self._snap_mv[_ALL] = hmv
            self._snap_ma[_ALL] = hma
            self._measured = 1
        if errors:
            self.read_errors = (self.read_errors + errors) & 0x3FFFFFFF
        pg = self._hal.pg_mask
        need = self._on_pg
        if over or (pg & need) != need:
            self._monitor(pg)
        self._oc_on = self._on_rails  # every rail ON now passed with these currents

        # 2.-5. lockout, transition, cycles, next start: only while something moves
        lk = self.lockout
        if self._seq_dirty or lk != self._lockout_seen:
            self._lockout_seen = lk
            self._sequence(now_ms)

        if self._state_changed:
            self._update_power_state()

    def publish(self):
        """Rail states and fault reasons into the signal board (written only
        after a change: every change of either goes through ``_set_state`` or
        ``_fault``, which mark them)."""
        if not self._pub_dirty:
            return
        self._pub_dirty = 0
        v = self._sig
        s0 = self._sig_state0
        f0 = self._sig_fault0
        st = self.state
        fault = self.fault
        for i in range(self.n):
            v[s0 + i] = st[i]
            v[f0 + i] = fault[i]

    # -- monitoring and sequencing (the parts of step() that run on change) ----------
    def _clamp(self):
        """Clamp the raw readings just copied into mv/ma to 0..65535; return how
        many were READ_ERROR."""
        errors = 0
        mvs = self.mv
        mas = self.ma
        for i in range(self.n):
            v = mvs[i]
            if v < 0:
                if v == READ_ERROR:
                    errors += 1
                mvs[i] = 0
            elif v > _MV_MAX:
                mvs[i] = _MV_MAX
            a = mas[i]
            if a < 0:
                if a == READ_ERROR:
                    errors += 1
                mas[i] = 0
            elif a > _MV_MAX:
                mas[i] = _MV_MAX
        return errors

    def _monitor(self, pg):
        """The per-rail check: an ON rail without power-good faults RF_PG_LOST,
        else one over its current limit RF_OVERCURRENT. A READ_ERROR current
        reads 0 here and the limits are > 0, so a dead monitor never faults."""
        st = self.state
        chs = self.ch
        ocs = self.overcurrent_ma
        mas = self.ma
        for i in range(self.n):
            if st[i] == RAIL_ON:
                if not (pg >> chs[i]) & 1:
                    self._fault(i, RF_PG_LOST)
                elif ocs[i] and mas[i] > ocs[i]:
                    self._fault(i, RF_OVERCURRENT)

    def _sequence(self, now_ms):
        # Cleared first: a state change below marks it again (one more pass
        # next tick), and a rail settling or a cycle running keeps it set.
        self._seq_dirty = 0
        n = self.n
        st = self.state
        want = self.want

        # 2. a lockout drops every power-up not yet done (rails already ON stay:
        #    powering down is the firmware's separate lockout action).
        if self.lockout:
            for j in range(n):
                if want[j] and st[j] != RAIL_ON:
                    want[j] = 0
                    self.down_reason[j] = RF_SHED

        # 3. the rail in transition
        a = self.active
        if a >= 0:
            s = st[a]
            if s == RAIL_SEQ_ON:
                if not want[a]:
                    self._enable(self.ch[a], 0)
                    self._set_state(a, RAIL_SEQ_OFF, self.down_reason[a])
                    self.t0[a] = now_ms
                elif (self._hal.pg_mask >> self.ch[a]) & 1:
                    self._set_state(a, RAIL_ON, RF_NONE)
                    self.active = -1
                elif ticks_diff(now_ms, self.t0[a]) >= self.pg_timeout_ms[a]:
                    self._fault(a, RF_PG_TIMEOUT)
            elif s == RAIL_SEQ_OFF:
                if ticks_diff(now_ms, self.t0[a]) >= self.off_delay_ms[a]:
                    self._set_state(a, RAIL_OFF, self.down_reason[a])
                    self.active = -1
            else:
                self.active = -1

        # 4. cycles: start the off timer when the root is OFF, come back when it ends
        #    (sum() runs in C: the scan costs nothing while no cycle is running)
        cyc = self.cyc
        if sum(cyc):
            for r in range(n):
                c = cyc[r]
                if c == _CYC_DOWN:
                    if st[r] == RAIL_OFF:
                        cyc[r] = _CYC_WAIT
                        self.cyc_t0[r] = now_ms
                        c = _CYC_WAIT
                if c == _CYC_WAIT and ticks_diff(now_ms, self.cyc_t0[r]) >= self.cyc_off_ms[r]:
                    self._finish_cycle(r)

        # 5. start the next transition
        if self.active < 0:
            self._start_next(now_ms)

        # time still matters while a rail settles or a cycle runs
        if self.active >= 0:
            self._seq_dirty = 1
        elif sum(cyc):
            self._seq_dirty = 1

    # -- internals ------------------------------------------------------------------
    def _busy(self, j):
        """True while rail ``j`` is settling, pending in the sequencer, or cycling."""
        s = self.state[j]
        if s == RAIL_SEQ_ON or s == RAIL_SEQ_OFF:
            return True
        if self.cyc_root[j]:
            return True
        if self.want[j]:
            return s != RAIL_ON
        return s == RAIL_ON

    def _set_state(self, i, new, reason):
        old = self.state[i]
        if old == new:
            return
        if not (_LEGAL[old] >> new) & 1:
            self.illegal_transitions += 1
            return
        self.state[i] = new
        self._state_changed = 1
        self._seq_dirty = 1
        self._pub_dirty = 1
        if new == RAIL_ON or old == RAIL_ON:
            self._track_on()
        if new != RAIL_FAULT:
            self.fault[i] = RF_NONE
        self._push(EV_RAIL_STATE, i, new, reason)

    def _track_on(self):
        """Masks of the rails in ON (by index) and of the power-good bits they need."""
        st = self.state
        chs = self.ch
        on = 0
        need = 0
        for j in range(self.n):
            if st[j] == RAIL_ON:
                on |= 1 << j
                need |= 1 << chs[j]
        self._on_rails = on
        self._on_pg = need

    def _mark_subtree(self, i):
        """_mark[j] = 1 for rail i and every rail that depends on it."""
        m = self._mark
        p = self.parent
        for j in range(self.n):
            m[j] = 0
        m[i] = 1
        for j in range(i + 1, self.n):
            if p[j] >= 0 and m[p[j]]:
                m[j] = 1

    def _want_chain_on(self, i):
        self._seq_dirty = 1
        j = i
        while j >= 0:
            self.want[j] = 1
            j = self.parent[j]

    def _want_subtree_off(self, reason):
        """Want off every rail in _mark."""
        self._seq_dirty = 1
        m = self._mark
        for j in range(self.n):
            if m[j]:
                self.want[j] = 0
                self.down_reason[j] = reason

    def _cancel_cycles_in_mark(self):
        """Rails in _mark will not come back from a cycle; cycles rooted there end."""
        self._seq_dirty = 1
        m = self._mark
        n = self.n
        for j in range(n):
            if m[j]:
                self.cyc_back[j] = 0
                if self.cyc[j]:
                    self.cyc[j] = _CYC_NONE
                    root = j + 1
                    for k in range(n):
                        if self.cyc_root[k] == root:
                            self.cyc_root[k] = 0

    def _finish_cycle(self, r):
        self._seq_dirty = 1
        self.cyc[r] = _CYC_NONE
        root = r + 1
        back = 0
        if not self.lockout:
            back = 1
        for k in range(self.n):
            if self.cyc_root[k] == root:
                self.cyc_root[k] = 0
                if back and self.cyc_back[k]:
                    self.want[k] = 1
                self.cyc_back[k] = 0
        if back:
            self._want_chain_on(r)

    def _fault(self, i, reason):
        """Disable rail ``i`` now (FAULT), then its dependents deepest first (OFF)."""
        self._enable(self.ch[i], 0)
        self._set_state(i, RAIL_FAULT, reason)
        self.fault[i] = reason
        self._pub_dirty = 1
        self._seq_dirty = 1
        self.want[i] = 0
        self._mark_subtree(i)
        m = self._mark
        st = self.state
        for j in range(self.n - 1, i, -1):
            if m[j]:
                self.want[j] = 0
                s = st[j]
                if s == RAIL_ON or s == RAIL_SEQ_ON:
                    self._enable(self.ch[j], 0)
                    self._set_state(j, RAIL_OFF, RF_PARENT)
                elif s == RAIL_SEQ_OFF:
                    self._set_state(j, RAIL_OFF, RF_PARENT)
        self._cancel_cycles_in_mark()
        if self.active >= 0 and m[self.active]:
            self.active = -1

    def _start_next(self, now_ms):
        # One pass finds both candidates (this runs on every idle tick): downs
        # first, the highest-index rail ON and wanted off (its dependents, with
        # higher indices, went before); else the lowest-index rail wanted on,
        # OFF or FAULT, whose parent is ON. (No lockout check needed here:
        # step() already dropped every pending power-up while it is set.)
        st = self.state
        want = self.want
        parent = self.parent
        down = -1
        up = -1
        for j in range(self.n):
            s = st[j]
            if want[j]:
                if up < 0 and (s == RAIL_OFF or s == RAIL_FAULT):
                    p = parent[j]
                    if p < 0 or st[p] == RAIL_ON:
                        up = j
            elif s == RAIL_ON:
                down = j
        if down >= 0:
            self._enable(self.ch[down], 0)
            self._set_state(down, RAIL_SEQ_OFF, self.down_reason[down])
            self.t0[down] = now_ms
            self.active = down
        elif up >= 0:
            self._set_state(up, RAIL_SEQ_ON, RF_NONE)
            self._enable(self.ch[up], 1)
            self.t0[up] = now_ms
            self.active = up

    def _update_power_state(self):
        self._state_changed = 0
        st = self.state
        n_on = 0
        n_off = 0
        seq_on = 0
        seq_off = 0
        fault = 0
        for j in range(self.n):
            s = st[j]
            if s == RAIL_ON:
                n_on += 1
            elif s == RAIL_OFF:
                n_off += 1
            elif s == RAIL_SEQ_ON:
                seq_on = 1
            elif s == RAIL_SEQ_OFF:
                seq_off = 1
            else:
                fault = 1
        if fault:
            p = PWR_FAULT
        elif seq_on:
            p = PWR_SEQ_ON
        elif seq_off:
            p = PWR_SEQ_OFF
        elif n_off == self.n:
            p = PWR_OFF
        elif n_on == self.n:
            p = PWR_ON
        else:
            p = PWR_PARTIAL
        if p != self.power_state:
            self.power_state = p
            self._push(EV_POWER_STATE, 0, p, 0)
