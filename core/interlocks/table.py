"""The interlock table: compare signals with thresholds, trip, latch, clear.

Each row of the board's ``config.Interlock`` tuple watches one signal of
``metal.core.signals`` and, once its condition has held long enough, trips and
asks for an action (fans to full, shed a rail, power down, lock out, overheat).
The table only decides; the firmware reads the aggregate attributes after
``evaluate()`` and applies them, so this module touches no hardware.

Per-row state machine (one evaluation per tick)::

               cond true and delay 0: EV_INTERLOCK_TRIP
      +------------------------------------------------------+
      |                                                      |
      |                   cond true, count <= delay          |
      |                       +-------+                      |
      |                       |       v                      v
    +------+  cond true   +-----------+  count > delay  +-----------+
    | IDLE |------------->|  PENDING  |---------------->|  TRIPPED  |
    +------+<-------------+-----------+ EV_INTERLOCK_   +-----------+
     ^   ^     cond false                  TRIP           |       |
     |   |                                                |       | latched row
     |   +-- not latched, clear cond: EV_INTERLOCK_CLEAR -+       v
     |                                                      +-----------+
     |                                                      |  LATCHED  |
     |                                                      +-----------+
     |                                                            |
     +---- clear(i) with clear cond: EV_INTERLOCK_CLEAR, R_OK ----+
           (clear cond false: R_REJECTED_BY_INTERLOCK, stays LATCHED)

``cond`` is the trip condition, ``clear cond`` the release condition; they
differ by the hysteresis band, inside which a tripped row stays tripped and an
untripped row counts as "condition false" (so it never chatters):

    CMP_GE  trips at  v >= threshold         clears at v < threshold - hysteresis
    CMP_LE  trips at  v <= threshold         clears at v > threshold + hysteresis
    CMP_NE  trips at  v != threshold         clears at v == threshold (no hysteresis)

An invalid sensor publishes TEMP_INVALID (far below zero): a GE row on it
never trips, an LE (under-temperature) row on it does.

Delay: ``delay_ticks = N`` means the condition must have held on N
consecutive evaluations before the one that trips, i.e. the row trips on the
(N+1)-th consecutive evaluation with the condition true: N ticks after the
tick that first saw it. ``delay_ticks = 0`` trips on the first.

Aggregates, valid after each ``evaluate()`` (and refreshed by ``clear()``):

    tripped         bit i = row i tripped (telemetry position 2)
    latched         bit i = row i tripped and latched (telemetry position 3)
    fans_max        1 while any tripped row's action is ACT_FANS_MAX or
                    ACT_OVERHEAT. Power-down and lockout rows do not force the
                    fans: they remove the heat source, and a board that wants
                    full airflow as well configures a second row (or uses
                    ACT_OVERHEAT, which ends in a power-down anyway).
    overheat        the signal index (e.g. the sensor number of a
                    (SIG_TEMP, i) row) of the first tripped ACT_OVERHEAT row,
                    or -1: the thermal driver starts/cancels its overheat timer
                    from this and names the sensor in EV_OVERHEAT_START.
    lockout         1 while any ACT_LOCKOUT row is tripped.
    new_power_down  1 on the tick an ACT_POWER_DOWN or ACT_LOCKOUT row tripped
                    (edge: the power driver starts one orderly power-down).
    new_shed_mask   rails to shed because an ACT_SHED_RAIL row tripped this
                    tick (bit r = rail r; edge, like new_power_down).

``blocks_power_on()`` is 1 while any tripped row has a POWER_DOWN, LOCKOUT or
SHED_RAIL action: a power-on command is then answered rejected_by_interlock.

Speed: the prototype's evaluator spent most of its time in an if/elif chain
over comparison and action codes. Here ``evaluate`` runs in two passes:

1. Scan, per *signal*, not per row. At start-up the watched signals are
   grouped by comparison kind, each with one precomputed bound: for the GE
   rows on a signal the lowest threshold (``_ge_min``), for the LE rows the
   highest (``_le_max``), for an NE row its value (``_ne_val``; two NE rows
   with different values on one signal make it a GE signal with bound
   ``_V_MIN``, always a candidate). The inner loop iterates the group's signal
   array directly: one load, one load of the bound, one compare, no branch on
   a code, no index arithmetic. A signal past its bound makes every row on it
   a candidate (``_rows_of``): no row whose trip condition holds is missed.
2. Rows to act on: ``candidates | tripped | pending``, visited in row order
   (so events come out in row order, as before), each judged exactly on its
   own inclusive windows (``v`` inside the *safe* window = trip condition
   false; inside the *clear* window = release condition true). A row not in
   that mask is IDLE with its trip condition false, which leaves it IDLE
   with nothing to do.

This is not a "nothing changed" shortcut: every watched signal is compared
on every tick, so delays still count every evaluation. When the mask is
empty (the steady state: every row quiet) the aggregates are left as they
are (they depend on ``tripped`` alone, which did not change) and only the
two edge outputs are reset. Actions are folded into bitmasks at start-up and
applied with a few ANDs. Signals are small ints (within ``_V_MIN ..
_V_MAX``). Nothing here allocates after ``__init__``.
"""

from array import array

from metal.core.compat import const
from metal.core.config import (
    ACT_FANS_MAX,
    ACT_LOCKOUT,
    ACT_OVERHEAT,
    ACT_POWER_DOWN,
    ACT_SHED_RAIL,
    CMP_GE,
    CMP_LE,
)
from metal.core.proto import (
    EV_INTERLOCK_CLEAR,
    EV_INTERLOCK_TRIP,
    R_OK,
    R_REJECTED_BY_INTERLOCK,
    R_UNKNOWN_TARGET,
)

# Signals stay within the board's small-int range; these bound the windows.
_V_MIN = const(-0x40000000)
_V_MAX = const(0x3FFFFFFF)
_MAX_ROWS = const(30)  # bitmask words stay below 2**30

# row states reported by row_state()
ST_IDLE = const(0)
ST_PENDING = const(1)
ST_TRIPPED = const(2)
ST_LATCHED = const(3)


def _windows(row):
    """(safe_lo, safe_hi, clear_lo, clear_hi) for one row; start-up only."""
    t = row.threshold
    h = row.hysteresis
    if row.cmp == CMP_GE:
        w = (_V_MIN, t - 1, _V_MIN, t - h - 1)
    elif row.cmp == CMP_LE:
        w = (t + 1, _V_MAX, t + h + 1, _V_MAX)
    else:  # CMP_NE: hysteresis has no meaning for a flag
        w = (t, t, t, t)
    for x in w:
        if not _V_MIN <= x <= _V_MAX:
            raise ValueError("interlock " + row.name + ": threshold/hysteresis out of range")
    # An empty window would make the row trip forever (safe) or never clear.
    if w[0] > w[1] or w[2] > w[3]:
        raise ValueError("interlock " + row.name + ": threshold/hysteresis out of range")
    return w


class InterlockTable:
    def __init__(self, rows, signals, events):
        n = len(rows)
        if n > _MAX_ROWS:
            raise ValueError("at most 30 interlocks (bitmask words)")
        self.n = n
        self.names = tuple(r.name for r in rows)
        self._v = signals.v
        self._push = events.push
        self._sig = array("i", [0] * n)  # flat index into signals.v
        self._src = array("i", [0] * n)  # the row's (kind, i) i, for `overheat`
        self._safe_lo = array("i", [0] * n)  # trip condition false inside [lo, hi]
        self._safe_hi = array("i", [0] * n)
        self._clr_lo = array("i", [0] * n)  # release condition true inside [lo, hi]
        self._clr_hi = array("i", [0] * n)
        self._delay = array("i", [0] * n)
        self._count = array("i", [0] * n)  # consecutive evaluations with cond true (PENDING)
        self._pending = 0  # bit i = row i in PENDING; its count is valid only then
        self._shed_bit = array("i", [0] * n)  # 1 << target for ACT_SHED_RAIL rows
        latch_mask = 0
        fans_mask = 0
        overheat_mask = 0
        lockout_mask = 0
        power_down_mask = 0
        block_mask = 0
        for i in range(n):
            r = rows[i]
            try:
                kind, idx = r.signal
                self._sig[i] = signals.index(kind, idx)
            except (TypeError, ValueError) as e:
                raise ValueError("interlock " + r.name + ": bad signal " + repr(r.signal)
                                 + " (" + str(e) + ")")
            self._src[i] = idx
            w = _windows(r)
            self._safe_lo[i] = w[0]
            self._safe_hi[i] = w[1]
            self._clr_lo[i] = w[2]
            self._clr_hi[i] = w[3]
            self._delay[i] = r.delay_ticks
            bit = 1 << i
            a = r.action
            if r.latch:
                latch_mask |= bit
            if a == ACT_FANS_MAX or a == ACT_OVERHEAT:
                fans_mask |= bit
            if a == ACT_OVERHEAT:
                overheat_mask |= bit
            if a == ACT_LOCKOUT:
                lockout_mask |= bit
            if a == ACT_POWER_DOWN or a == ACT_LOCKOUT:
                power_down_mask |= bit
                block_mask |= bit
            if a == ACT_SHED_RAIL:
                if not 0 <= r.target < signals.n_rails:
                    raise ValueError("interlock " + r.name + ": shed target is not a rail")
                self._shed_bit[i] = 1 << r.target
                block_mask |= bit
        # The scan (see the module docstring), indexed by signal: the rows on
        # each signal and one bound per comparison kind.
        nv = len(signals.v)
        self._rows_of = array("i", [0] * nv)
        self._ge_min = array("i", [_V_MAX] * nv)
        self._le_max = array("i", [_V_MIN] * nv)
        self._ne_val = array("i", [0] * nv)
        ge = []
        le = []
        ne = []
        for i in range(n):
            r = rows[i]
            s = self._sig[i]
            t = r.threshold
            self._rows_of[s] |= 1 << i
            if r.cmp == CMP_GE:
                if t < self._ge_min[s]:
                    self._ge_min[s] = t
                if s not in ge:
                    ge.append(s)
            elif r.cmp == CMP_LE:
                if t > self._le_max[s]:
                    self._le_max[s] = t
                if s not in le:
                    le.append(s)
            elif s not in ne:
                self._ne_val[s] = t
                ne.append(s)
            elif self._ne_val[s] != t:
                # never equal to both values: some NE row on it always holds
                self._ge_min[s] = _V_MIN
                if s not in ge:
                    ge.append(s)
        self._ge_sigs = array("i", ge)
        self._le_sigs = array("i", le)
        self._ne_sigs = array("i", ne)
        self._latch_mask = latch_mask
        self._fans_mask = fans_mask
        self._overheat_mask = overheat_mask
        self._lockout_mask = lockout_mask
        self._power_down_mask = power_down_mask
        self._block_mask = block_mask
        # aggregates the firmware reads after evaluate()
        self.tripped = 0
        self.latched = 0
        self.fans_max = 0
        self.overheat = -1
        self.lockout = 0
        self.new_power_down = 0
        self.new_shed_mask = 0

    def evaluate(self):
        """Run every row once (one tick); update the aggregates. Returns the
        ``tripped`` mask."""
        # Pass 1, the scan: the rows of every signal past its bound.
        v = self._v
        rows_of = self._rows_of
        cand = 0
        bound = self._ge_min
        for s in self._ge_sigs:
            if v[s] >= bound[s]:
                cand |= rows_of[s]
        bound = self._le_max
        for s in self._le_sigs:
            if v[s] <= bound[s]:
                cand |= rows_of[s]
        bound = self._ne_val
        for s in self._ne_sigs:
            if v[s] != bound[s]:
                cand |= rows_of[s]

        tripped = self.tripped
        pending = self._pending
        todo = cand | tripped | pending
        if not todo:
            # Every row IDLE with its condition false: no row changes state,
            # `tripped` (and so every aggregate) stays; only the edges end.
            self.new_power_down = 0
            self.new_shed_mask = 0
            return tripped

        # Pass 2: the candidate, pending and tripped rows, in row order.
        sig = self._sig
        safe_lo = self._safe_lo
        safe_hi = self._safe_hi
        count = self._count
        latch_mask = self._latch_mask
        newly = 0
        shed = 0
        i = 0
        while todo:
            if todo & 1:
                # computed, not shifted along: `bit <<= 1` after row 29 would
                # reach 2**30, a heap-allocated int on a 32-bit board
                bit = 1 << i
                x = v[sig[i]]
                if tripped & bit:
                    # Latched rows wait for clear(); the others release past
                    # the hysteresis band.
                    if not (latch_mask & bit) and self._clr_lo[i] <= x <= self._clr_hi[i]:
                        tripped ^= bit
                        self._push(EV_INTERLOCK_CLEAR, i, x, 0)
                elif safe_lo[i] <= x <= safe_hi[i]:
                    pending &= ~bit  # condition false: (back to) IDLE
                else:
                    c = count[i] + 1 if pending & bit else 1
                    if c > self._delay[i]:
                        if pending & bit:
                            pending ^= bit
                        tripped |= bit
                        newly |= bit
                        shed |= self._shed_bit[i]
                        self._push(EV_INTERLOCK_TRIP, i, x, 0)
                    else:
                        pending |= bit
                        count[i] = c
            todo >>= 1
            i += 1
        self._pending = pending
        self.new_power_down = 1 if newly & self._power_down_mask else 0
        self.new_shed_mask = shed
        self._aggregate(tripped)
        return tripped

    def clear(self, i):
        """Operator clear of row ``i`` (OP_INTERLOCK_CLEAR).

        R_OK when the row is not tripped or its release condition holds now
        (the row goes back to IDLE and EV_INTERLOCK_CLEAR is pushed);
        R_REJECTED_BY_INTERLOCK while the condition (or the hysteresis band)
        still holds; R_UNKNOWN_TARGET for an index outside the table.
        """
        if i < 0 or i >= self.n:
            return R_UNKNOWN_TARGET
        bit = 1 << i
        if not self.tripped & bit:
            return R_OK
        x = self._v[self._sig[i]]
        if not self._clr_lo[i] <= x <= self._clr_hi[i]:
            return R_REJECTED_BY_INTERLOCK
        self._aggregate(self.tripped ^ bit)
        self._push(EV_INTERLOCK_CLEAR, i, x, 0)
        return R_OK

    def blocks_power_on(self):
        """1 while a tripped row forbids powering rails on, else 0."""
        return 1 if self.tripped & self._block_mask else 0

    def row_state(self, i):
        """ST_IDLE / ST_PENDING / ST_TRIPPED / ST_LATCHED of row ``i``, or -1
        for an index outside the table."""
        if i < 0 or i >= self.n:
            return -1
        bit = 1 << i
        if self.tripped & bit:
            return ST_LATCHED if self._latch_mask & bit else ST_TRIPPED
        return ST_PENDING if self._pending & bit else ST_IDLE

    def _aggregate(self, tripped):
        self.tripped = tripped
        self.latched = tripped & self._latch_mask
        self.fans_max = 1 if tripped & self._fans_mask else 0
        self.lockout = 1 if tripped & self._lockout_mask else 0
        oh = tripped & self._overheat_mask
        self.overheat = -1
        if oh:
            # rare (a thermal emergency): find the lowest tripped overheat row
            i = 0
            while not (oh & 1):
                oh >>= 1
                i += 1
            self.overheat = self._src[i]
