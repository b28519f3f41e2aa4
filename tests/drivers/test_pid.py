"""Integer PID: closed-loop behaviour on a first-order plant, windup, slew,
clamps, bumpless reset, and the ±2**30 bound on every intermediate."""

import pytest

from metal.core.drivers.pid import (
    D_MAX,
    E_MAX,
    GAIN_MAX,
    Pid,
    steps_table,
    stepwise,
)

AMBIENT_MC = 25000
LIMIT = 1 << 30


def plant_step(temp_mc, duty, heat_mc_per_tick=20):
    """A first-order thermal mass in integers: constant heat in, cooling
    proportional to (T - ambient) and to (100 + duty) airflow. Time constant
    about 1e5 / (100 + duty) ticks; at heat 20 the equilibrium needs duty 300
    for 30 °C and cannot go below ~26.8 °C even at full duty."""
    return temp_mc + heat_mc_per_tick - (temp_mc - AMBIENT_MC) * (100 + duty) // 100000


def run(pid, temp_mc, setpoint_mc, ticks, heat=20):
    temps = []
    outs = []
    for _ in range(ticks):
        d = pid.update(setpoint_mc, temp_mc)
        outs.append(d)
        temp_mc = plant_step(temp_mc, d, heat)
        temps.append(temp_mc)
    return temp_mc, temps, outs


def assert_slew_and_clamp(pid, outs, start):
    prev = start
    for d in outs:
        assert isinstance(d, int)
        assert pid.out_min <= d <= pid.out_max
        assert abs(d - prev) <= pid.slew
        prev = d


def test_step_response_converges_to_setpoint():
    pid = Pid(50000, 20000, 0, 200, 1000, 20, 10)
    pid.reset(600)
    temp, temps, outs = run(pid, 40000, 30000, 6000)
    assert_slew_and_clamp(pid, outs, 600)
    # settles within ±50 m°C and stays there for the last 10 s
    assert all(abs(t - 30000) <= 50 for t in temps[-1000:])
    # the duty the plant needs at 30 °C is 300 ‰ (see plant_step)
    assert 295 <= outs[-1] <= 305
    # from 40 °C the first move is up, limited by the slew
    assert outs[0] == 620


def test_hot_plant_drives_duty_up_cold_plant_down():
    pid = Pid(20000, 2000, 0, 0, 1000, 1000, 10)
    pid.reset(500)
    assert pid.update(30000, 30000) == 500  # on setpoint: I holds 500 ‰
    assert pid.update(30000, 40000) == 700  # 10 °C above: P = +200 ‰
    pid.reset(500)
    assert pid.update(30000, 30000) == 500
    assert pid.update(30000, 20000) == 300
    # and the integral keeps pushing the same way while the error persists
    outs = [pid.update(30000, 20000) for _ in range(100)]
    # ki 2 ‰ per °C·s × -10 °C × 101 ticks of 10 ms = -20.2 ‰
    assert outs[-1] == 280


def test_no_windup_after_long_saturation():
    # 26 °C is out of reach (needs more than full airflow): the output sits at
    # max for 200 s while the error stays positive.
    pid = Pid(50000, 20000, 0, 200, 1000, 20, 10)
    pid.reset(600)
    temp, temps, outs = run(pid, 30000, 26000, 20000)
    assert outs[-3000:] == [1000] * 3000
    # Conditional integration: the integral only filled up to what holds the
    # output at the clamp, not beyond (an unconditional one would sit at
    # 1000 ‰ or run away without a clamp).
    unclamped_mpm = pid.p + pid.i // 100 + pid.d
    assert unclamped_mpm <= 1000 * 1000 + 500
    assert pid.i < 1000 * 100000
    i_saturated = pid.i
    run(pid, temp, 26000, 1000)
    assert pid.i == i_saturated  # held while pinned

    # Now a reachable setpoint: the output leaves max on the very first tick
    # and the temperature rises to 30 °C without overshoot.
    temp2, temps2, outs2 = run(pid, temp, 30000, 6000)
    assert outs2[0] == 980
    assert max(temps2) <= 30000 + 50
    assert all(abs(t - 30000) <= 50 for t in temps2[-1000:])
    assert_slew_and_clamp(pid, outs2, 1000)


def test_slew_limits_every_tick_both_ways():
    pid = Pid(GAIN_MAX, 0, 0, 0, 1000, 7, 10)
    pid.reset(500)
    outs = [pid.update(30000, 90000) for _ in range(100)]
    assert outs[:3] == [507, 514, 521]
    assert outs[-1] == 1000
    outs2 = [pid.update(30000, 0) for _ in range(200)]
    assert outs2[:2] == [993, 986]
    assert outs2[-1] == 0
    assert_slew_and_clamp(pid, outs + outs2, 500)


def test_output_clamped_to_range():
    pid = Pid(20000, 0, 0, 250, 800, 1000, 10)
    assert pid.update(30000, 200000) == 800
    assert pid.update(30000, -100000) == 250


def test_reset_is_bumpless():
    pid = Pid(20000, 2000, 5000, 200, 1000, 20, 10)
    for _ in range(50):
        pid.update(30000, 35000)
    pid.reset(700)  # e.g. leaving manual at 700 ‰
    # 5 °C above setpoint: a plain restart would jump P by +100 ‰; bumpless
    # holds 700 on the first update and then integrates from there.
    assert pid.update(30000, 35000) == 700
    assert pid.update(30000, 35000) == 700  # integral adds 0.1 ‰ per tick here
    later = [pid.update(30000, 35000) for _ in range(200)]
    assert later[-1] > 700


def test_derivative_on_measurement_no_setpoint_kick():
    pid = Pid(0, 0, 100000, 0, 1000, 1000, 10)
    pid.reset(500)
    assert pid.update(30000, 30000) == 500  # first sample: no derivative
    assert pid.update(20000, 30000) == 500  # setpoint change: no kick
    # measurement rising 100 m°C per 10 ms tick = 10 °C/s; kd 100 ‰ per °C/s
    assert pid.update(20000, 30100) == 1000
    assert pid.d == 100000 * 100 // 10


def test_constructor_rejects_bad_gains_and_ranges():
    with pytest.raises(ValueError):
        Pid(GAIN_MAX + 1, 0, 0, 0, 1000, 10, 10)
    with pytest.raises(ValueError):
        Pid(0, -1, 0, 0, 1000, 10, 10)
    with pytest.raises(ValueError):
        Pid(0, 0, 0, 600, 500, 10, 10)
    with pytest.raises(ValueError):
        Pid(0, 0, 0, 0, 1000, 0, 10)
    with pytest.raises(ValueError):
        Pid(0, 0, 0, 0, 1000, 10, 0)
    with pytest.raises(ValueError):
        Pid(0, 0, 0, 0, 1000, 10, 1001)


# -- the ±2**30 bound -----------------------------------------------------------

_seen = [0]


class Checked(int):
    """An int whose arithmetic results must stay inside ±2**30; every result
    is Checked again, so everything derived from the inputs is traced."""

    def _wrap(self, r):
        if r is NotImplemented:
            return r
        _seen[0] = max(_seen[0], abs(r))
        assert -LIMIT < r < LIMIT, "intermediate %d out of 30-bit range" % r
        return Checked(r)

    def __add__(self, o):
        return self._wrap(int.__add__(self, o))

    def __radd__(self, o):
        return self._wrap(int.__radd__(self, o))

    def __sub__(self, o):
        return self._wrap(int.__sub__(self, o))

    def __rsub__(self, o):
        return self._wrap(int.__rsub__(self, o))

    def __mul__(self, o):
        return self._wrap(int.__mul__(self, o))

    def __rmul__(self, o):
        return self._wrap(int.__rmul__(self, o))

    def __floordiv__(self, o):
        return self._wrap(int.__floordiv__(self, o))

    def __rfloordiv__(self, o):
        return self._wrap(int.__rfloordiv__(self, o))

    def __neg__(self):
        return self._wrap(int.__neg__(self))

    def __rshift__(self, o):
        return self._wrap(int.__rshift__(self, o))


EXTREME_INPUTS = [
    (0, 200000), (200000, 0), (-200000, 200000), (200000, -200000),
    (0, 10 ** 8), (0, -10 ** 8), (30000, 30000), (0, 200000), (0, -200000),
    (-(1 << 29) + 1, (1 << 29) - 1), ((1 << 29) - 1, -(1 << 29) + 1),
]


@pytest.mark.parametrize("gains", [
    (GAIN_MAX, GAIN_MAX, GAIN_MAX), (1, 1, 1), (0, 0, 0),
    (20000, 2000, 0), (GAIN_MAX, 0, 0), (0, GAIN_MAX, 0), (0, 0, GAIN_MAX),
])
@pytest.mark.parametrize("dt_ms", [1, 10, 1000])
def test_extreme_inputs_keep_every_intermediate_within_30_bits(gains, dt_ms):
    kp, ki, kd = gains
    pid = Pid(Checked(kp), Checked(ki), Checked(kd), Checked(0), Checked(1000),
              Checked(1000), Checked(dt_ms))
    pid.reset(Checked(500))
    seq = EXTREME_INPUTS * 20  # repeated: integral saturates, derivative swings
    prev = 500
    for sp, meas in seq:
        out = pid.update(Checked(sp), Checked(meas))
        assert isinstance(out, int)
        assert 0 <= out <= 1000
        assert abs(out - prev) <= 1000
        prev = out
        assert 0 <= pid.i <= 1000 * 100000
        assert abs(pid.p) <= 1 + 10 ** 9 // 1000 + 1  # kp * clamped error // 1000
        assert abs(pid.d) <= D_MAX
    # saturation makes sense: a huge positive error means full output
    pid.reset(Checked(0))
    for _ in range(3):
        out = pid.update(Checked(0), Checked(E_MAX))
    if kp == GAIN_MAX:
        assert out == 1000
    assert _seen[0] < LIMIT


def test_steps_table_and_stepwise():
    table = steps_table(((40000, 300), (60000, 600), (80000, 1000)))
    assert list(table) == [40000, 300, 60000, 600, 80000, 1000]
    assert stepwise(table, 39999) == 0
    assert stepwise(table, 40000) == 300
    assert stepwise(table, 59999) == 300
    assert stepwise(table, 60000) == 600
    assert stepwise(table, 200000) == 1000
    assert stepwise(steps_table(()), 100000) == 0
    with pytest.raises(ValueError):
        steps_table(((50000, 300), (40000, 600)))
    with pytest.raises(ValueError):
        steps_table(((50000, 1300),))
