"""Integer PID for a cooling loop, plus a stepwise fan table.

Pure math: no HAL, no clock, no allocation in ``update``. One ``Pid`` per
thermal zone (phosphor-pid-control style): the measured temperature above the
setpoint asks for more fan duty. ``ThermalController`` builds one per zone to
validate the gains and take the limits below, and runs this same arithmetic
written out on a flat array per zone (a call per zone per tick cost more than
the math); tests/drivers/test_thermal.py checks the two agree tick for tick.

Units and scaling
-----------------
Inputs are m°C, the output is fan duty in per-mille (‰). Gains follow
``config.Zone``: ``kp`` is ‰ per °C ×1000 (so it is "m‰ per °C"), ``ki`` m‰
per °C·s, ``kd`` m‰ per °C/s. Every gain must be in ``0 .. GAIN_MAX``
(1 000 000 = a full 1000 ‰ output per 1 °C, per 1 °C·s or per 1 °C/s), and
``dt_ms`` in ``1 .. 1000``.

On a 32-bit MicroPython every intermediate must stay inside ±2**30
(1 073 741 824) or it becomes a heap-allocated long. The terms are::

    e   = clamp(measured - setpoint, ±E_MAX)              m°C, |e| <= 200 000
    P   = kp * clamp(e, ±ep_lim) // 1000                   m‰
    I  += (ki * clamp(e, ±ei_lim) // 1000) * dt_ms // 10   units of 1e-5 ‰ (10 µ‰)
    D   = clamp(kd * clamp(dm, ±ed_lim) // dt_ms, ±D_MAX)   m‰, dm = measured - previous
    out = round((P + I // 100 + D) / 1000)                 ‰

``ep_lim = PRODUCT_MAX // kp`` (and likewise for ``ei_lim``/``ed_lim``) with
``PRODUCT_MAX`` = 10**9, so every gain × error product is at most 10**9 < 2**30.
The clamps never change a result that matters: at ``ep_lim`` the P term alone
is already 1000 ‰ (the whole output span), at ``ei_lim`` the integral moves a
full 1 ‰ per millisecond (the whole span in one second), and at ``ed_lim`` the
D term is at least the whole span for any ``dt_ms <= 1000``. The integral is
kept within ``[out_min, out_max]`` (at most 10**8 units) and one step adds at
most 10**8 units, so ``I + step`` stays below 2.1e8; P (<= 1.08e6 m‰), I // 100
(<= 1e6) and D (<= D_MAX = 2e6) sum to well under 2**30. The integral is held
in 10 µ‰ so that small errors still integrate at a 10 ms tick: ki = 2000 with
1 m°C of error adds 2 units (0.02 m‰) per 10 ms tick instead of rounding to 0.

Anti-windup: conditional integration. The integral is not advanced in the
direction the output is already pinned (by the [out_min, out_max] clamp or by
the slew limit), and it is clamped to [out_min, out_max] itself, so a long
saturation does not store error that must later be unwound as overshoot.

Derivative acts on the measurement, not on the error, so a setpoint change
does not kick the output. The first update after ``reset`` has no previous
sample and uses D = 0.

Bumpless transfer: ``reset(duty)`` (e.g. when a zone leaves manual or
failsafe) makes the next ``update`` return ``duty`` by back-computing the
integral from that update's P and D terms. When that would need an integral
outside [out_min, out_max] (P alone asks for far less or far more), the
integral takes the bound and the slew limit still moves the output at most
``slew_per_tick`` away from ``duty``: never a jump.
"""

from array import array

from metal.core.compat import const

GAIN_MAX = const(1000000)
E_MAX = const(200000)  # m°C: errors beyond ±200 °C are sensor garbage, not heat
PRODUCT_MAX = const(1000000000)  # the largest gain × error product we form
D_MAX = const(2000000)  # m‰: twice the output span is plenty for D
_I_PER_PERMILLE = const(100000)  # integral units (10 µ‰) per ‰
_I_PER_MPERMILLE = const(100)  # integral units per m‰


def _clamp(x, lim):
    if x > lim:
        return lim
    if x < -lim:
        return -lim
    return x


def _lim(gain):
    # Largest |error| whose product with ``gain`` stays within PRODUCT_MAX.
    if gain == 0:
        return E_MAX
    lim = PRODUCT_MAX // gain
    if lim > E_MAX:
        return E_MAX
    return lim


def _div_toward_zero(a, b):
    # Python's // floors; truncating toward zero keeps the integral symmetric
    # (a floor would add a tiny downward bias to every negative step).
    if a < 0:
        return -((-a) // b)
    return a // b


class Pid:
    def __init__(self, kp, ki, kd, out_min, out_max, slew_per_tick, dt_ms):
        for g in (kp, ki, kd):
            if not 0 <= g <= GAIN_MAX:
                raise ValueError("pid gain out of range 0..%d" % GAIN_MAX)
        if not 0 <= out_min <= out_max <= 1000:
            raise ValueError("pid: need 0 <= out_min <= out_max <= 1000")
        if slew_per_tick <= 0:
            raise ValueError("pid: slew_per_tick must be positive")
        if not 1 <= dt_ms <= 1000:
            raise ValueError("pid: dt_ms out of range 1..1000")
        self.kp = kp
        self.ki = ki
        self.kd = kd
        self.out_min = out_min
        self.out_max = out_max
        self.slew = slew_per_tick
        self.dt_ms = dt_ms
        self._ep_lim = _lim(kp)
        self._ei_lim = _lim(ki)
        self._ed_lim = _lim(kd)
        self._i_min = out_min * _I_PER_PERMILLE
        self._i_max = out_max * _I_PER_PERMILLE
        # Last terms, kept for telemetry and for the range test.
        self.p = 0  # m‰
        self.i = 0  # integral, 10 µ‰ units
        self.d = 0  # m‰
        self.out = out_min  # ‰, the last output
        self._prev_mc = 0
        self._have_prev = 0
        self._bumpless = 0
        self.reset(out_min)

    def reset(self, duty):
        """Restart from ``duty`` ‰: the next update outputs it (clamped)."""
        if duty < self.out_min:
            duty = self.out_min
        elif duty > self.out_max:
            duty = self.out_max
        self.out = duty
        self.i = duty * _I_PER_PERMILLE
        self.d = 0
        self._have_prev = 0
        self._bumpless = 1

    def _output(self):
        # Unclamped output in ‰, rounded half up (P, D and I are all small).
        return (self.p + self.i // _I_PER_MPERMILLE + self.d + 500) // 1000

    def update(self, setpoint_mc, measured_mc):
        """One control step; returns the duty in ‰ for this tick.

        Both inputs are m°C within ±2**29 (sensor readings and setpoints are
        within ±200 000), so their difference is still a small int."""
        # Every zone runs this on every tick. The clamps, the truncating
        # divisions and the output formula are the module helpers (_clamp,
        # _div_toward_zero, _output) written out in place: on the 32-bit VM the
        # nine calls cost more than all the arithmetic.
        e = measured_mc - setpoint_mc
        if e > E_MAX:
            e = E_MAX
        elif e < -E_MAX:
            e = -E_MAX
        lim = self._ep_lim
        x = e
        if x > lim:
            x = lim
        elif x < -lim:
            x = -lim
        p = self.kp * x // 1000
        self.p = p

        m = measured_mc
        if m > E_MAX:
            m = E_MAX
        elif m < -E_MAX:
            m = -E_MAX
        kd = self.kd
        if self._have_prev and kd:  # (kd 0, the usual tuning: D is 0 anyway)
            # one clamp to ±ed_lim does both of the documented clamps
            # (±E_MAX, then ±ed_lim): _lim() never returns more than E_MAX
            dm = measured_mc - self._prev_mc
            lim = self._ed_lim
            if dm > lim:
                dm = lim
            elif dm < -lim:
                dm = -lim
            d = kd * dm // self.dt_ms
            if d > D_MAX:
                d = D_MAX
            elif d < -D_MAX:
                d = -D_MAX
        else:
            d = 0
        self.d = d
        self._prev_mc = m
        self._have_prev = 1

        out_min = self.out_min
        out_max = self.out_max
        slew = self.slew
        last = self.out
        if self._bumpless:
            # Choose the integral so that P + I + D equals the held output.
            self._bumpless = 0
            i = (last * 1000 - p - d) * _I_PER_MPERMILLE
            if i < self._i_min:
                i = self._i_min
            elif i > self._i_max:
                i = self._i_max
            self.i = i
        else:
            lim = self._ei_lim
            x = e
            if x > lim:
                x = lim
            elif x < -lim:
                x = -lim
            # two divisions truncating toward zero (see _div_toward_zero)
            step = self.ki * x
            step = -((-step) // 1000) if step < 0 else step // 1000
            step = step * self.dt_ms
            step = -((-step) // 10) if step < 0 else step // 10
            if step != 0:
                # Where would the output go without integrating this tick?
                want = (p + self.i // _I_PER_MPERMILLE + d + 500) // 1000
                pinned_high = want >= out_max or want > last + slew
                pinned_low = want <= out_min or want < last - slew
                if (step > 0 and not pinned_high) or (step < 0 and not pinned_low):
                    i = self.i + step
                    if i < self._i_min:
                        i = self._i_min
                    elif i > self._i_max:
                        i = self._i_max
                    self.i = i

        out = (p + self.i // _I_PER_MPERMILLE + d + 500) // 1000  # _output()
        if out > last + slew:
            out = last + slew
        elif out < last - slew:
            out = last - slew
        if out > out_max:
            out = out_max
        elif out < out_min:
            out = out_min
        self.out = out
        return out


def steps_table(steps):
    """Compile ``config.Zone.steps`` ((m°C, ‰), ... ascending) into the flat
    ``array('i')`` [t0, d0, t1, d1, ...] that ``stepwise`` reads (start-up only)."""
    flat = array("i", [0] * (2 * len(steps)))
    prev = None
    for k in range(len(steps)):
        t = steps[k][0]
        d = steps[k][1]
        if prev is not None and t <= prev:
            raise ValueError("steps must ascend in temperature")
        if not 0 <= d <= 1000:
            raise ValueError("step duty out of range 0..1000")
        flat[2 * k] = t
        flat[2 * k + 1] = d
        prev = t
    return flat


def stepwise(table, temp_mc):
    """Duty of the highest step whose temperature ``temp_mc`` has reached,
    0 below the first step. ``table`` comes from ``steps_table``. Piecewise
    constant without hysteresis: the PID alongside smooths the output."""
    duty = 0
    n = len(table)
    k = 0
    while k < n:
        if temp_mc < table[k]:
            break
        duty = table[k + 1]
        k += 2
    return duty
