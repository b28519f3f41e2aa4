"""boards/common/board.py (plain data the real boards share) and the standard interlock
set of core/interlocks/defaults.py that sim, rp2040 and esp32 build their tables from.

(The defaults test would sit in tests/interlocks/ by the mirror rule; it is here because it
is about what the boards build, and this change was limited to tests/boards/.)
"""

from __future__ import annotations

import ast
import sys

import pytest

from metal.boards.common import board as common
from metal.boards.esp32 import board as esp32
from metal.boards.rp2040 import board as rp2040
from metal.boards.sim import board as sim
from metal.core.config import (
    ACT_FANS_MAX,
    ACT_LOCKOUT,
    ACT_OVERHEAT,
    ACT_POWER_DOWN,
    CMP_GE,
    CMP_NE,
    DIR_IN,
    DIR_OUT,
    PULL_NONE,
    PULL_UP,
    Fan,
    Limits,
    Rail,
    Sensor,
    SENSOR_NTC,
)
from metal.core.interlocks.defaults import FAN_WATCH_STALLED, FAN_WATCH_STATE, default_interlocks
from metal.core.proto import FAN_OK
from metal.core.signals import (
    G_ESTOP,
    SIG_FAN_STALLED,
    SIG_FAN_STATE,
    SIG_GLOBAL,
    SIG_RAIL_FAULT,
    SIG_TEMP,
)

# -- boards/common/board.py --------------------------------------------------------------------


def test_common_board_is_plain_data():
    tree = ast.parse(open(common.__file__, encoding="utf-8").read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert imported == {"metal.core.config", "metal.core.interlocks.defaults"}, imported
    assert "machine" not in sys.modules


def test_boards_share_one_set_of_reset_codes():
    names = ("RESET_POWER_ON", "RESET_COMMANDED", "RESET_WATCHDOG", "RESET_EXTERNAL",
             "RESET_WAKE", "RESET_OTHER")
    codes = [getattr(common, n) for n in names]
    assert codes == list(range(6))
    for b in (rp2040, esp32):
        assert [getattr(b, n) for n in names] == codes, b.NAME
    assert rp2040.DigitalPin is esp32.DigitalPin is common.DigitalPin
    assert rp2040.used_gpios is esp32.used_gpios is common.used_gpios


class _Pins:
    def __init__(self, uart=None):
        self.adc = (26,)
        self.i2c_sda = 4
        self.i2c_scl = 5
        self.pwm = (6,)
        self.tach = (7,)
        self.rail_en = (12,)
        self.rail_pg = (15,)
        self.digital = (
            common.DigitalPin("led", 25, DIR_OUT, initial=1),
            common.DigitalPin("btn_n", 3, DIR_IN, pull=PULL_UP),
            common.DigitalPin("estop", 20, DIR_IN, invert=True),
        )
        self.uart = uart


def test_used_gpios_lists_every_claimed_pin():
    assert common.used_gpios(_Pins()) == [26, 4, 5, 6, 7, 12, 15, 25, 3, 20]
    assert common.used_gpios(_Pins(uart=(0, 0, 1, 115200)))[-2:] == [0, 1]


def test_gpio_lines_are_the_first_digital_channels():
    lines = common.gpio_lines(_Pins(), 2)
    assert [(g.name, g.ch, g.direction, g.pull, g.initial) for g in lines] == [
        ("led", 0, DIR_OUT, PULL_NONE, 1), ("btn_n", 1, DIR_IN, PULL_UP, 0)]
    assert common.gpio_lines(_Pins(), 0) == ()


# -- core/interlocks/defaults.py ---------------------------------------------------------------


def _parts():
    sensors = (Sensor("cpu", SENSOR_NTC, 0, 0, warn_mc=80000, crit_mc=90000),
               Sensor("inlet", SENSOR_NTC, 1, 0, warn_mc=40000, crit_mc=50000))
    fans = (Fan("f0", 0, 0, 0, max_rpm=5000),)
    rails = (Rail("p12v", 0, 12000), Rail("p5v", 1, 5000, parent=0))
    return sensors, fans, rails


def _row(il):
    return (il.name, il.signal, il.cmp, il.threshold, il.hysteresis, il.delay_ticks, il.latch,
            il.action)


def test_default_set_with_stall_rows():
    rows = default_interlocks(*_parts(), 3000, 3)
    assert [_row(il) for il in rows] == [
        ("cpu_crit", (SIG_TEMP, 0), CMP_GE, 90000, 3000, 3, False, ACT_OVERHEAT),
        ("inlet_crit", (SIG_TEMP, 1), CMP_GE, 50000, 3000, 3, False, ACT_OVERHEAT),
        ("f0_stall", (SIG_FAN_STALLED, 0), CMP_GE, 1, 0, 0, False, ACT_FANS_MAX),
        ("p12v_fault", (SIG_RAIL_FAULT, 0), CMP_GE, 1, 0, 0, True, ACT_POWER_DOWN),
        ("p5v_fault", (SIG_RAIL_FAULT, 1), CMP_GE, 1, 0, 0, True, ACT_POWER_DOWN),
        ("estop", (SIG_GLOBAL, G_ESTOP), CMP_GE, 1, 0, 0, True, ACT_LOCKOUT),
    ]
    assert isinstance(rows, tuple)


def test_default_set_with_state_rows_and_no_estop():
    rows = default_interlocks(*_parts(), 1000, 7, fan_watch=FAN_WATCH_STATE, fan_delay_ticks=300,
                              estop=False)
    assert [il.name for il in rows] == ["cpu_crit", "inlet_crit", "f0_fault", "p12v_fault", "p5v_fault"]
    assert _row(rows[0])[4:6] == (1000, 7)
    assert _row(rows[2]) == ("f0_fault", (SIG_FAN_STATE, 0), CMP_NE, FAN_OK, 0, 300, False, ACT_FANS_MAX)


def test_unknown_fan_watch_is_rejected():
    with pytest.raises(ValueError, match="fan_watch"):
        default_interlocks(*_parts(), 3000, 3, fan_watch=7)
    with pytest.raises(ValueError, match="fan_watch"):  # even without fans: a config error
        default_interlocks((), (), (), 3000, 3, fan_watch=7)


@pytest.mark.parametrize("mod, policy, watch, delay", [
    (sim, sim, FAN_WATCH_STALLED, 0),
    (rp2040, common, FAN_WATCH_STALLED, 300),  # 3 s of 10 ms ticks
    (esp32, common, FAN_WATCH_STALLED, 300),
])
def test_every_board_builds_the_default_set(mod, policy, watch, delay):
    c = mod.make_config()
    assert (policy.CRIT_HYSTERESIS_MC, policy.CRIT_DELAY_TICKS) == (3000, 3)
    want = default_interlocks(c.sensors, c.fans, c.rails, 3000, 3, fan_watch=watch,
                              fan_delay_ticks=delay)
    assert [_row(il) for il in c.interlocks] == [_row(il) for il in want]


def test_fan_fault_delay_follows_the_tick():
    """The real boards' fan rows wait FAN_STALL_DELAY_MS whatever the tick."""
    c = rp2040.make_config()
    c20 = common.board_config("t", "0", rp2040.PINS, rp2040.N_GPIO, c.zones, c.sensors, c.fans,
                              c.rails, c.security,
                              Limits(tick_us=20000, serial_budget=128))
    fan_rows = [il for il in c20.interlocks if il.signal[0] == SIG_FAN_STALLED]
    assert [il.name for il in fan_rows] == [f.name + "_stall" for f in c.fans]
    assert [il.delay_ticks for il in fan_rows] == [150] * len(c.fans)
    assert [g.name for g in c20.gpio] == [d.name for d in rp2040.PINS.digital[:rp2040.N_GPIO]]


@pytest.mark.parametrize("mod", [rp2040, esp32])
def test_real_boards_fan_rows_ignore_a_fan_switched_off_and_trip_on_a_stall(mod):
    """A real board's fan driver and fan rows together: a fan its zone switched
    off (duty 0: OFF) trips nothing however long; a fan driven but giving no
    pulses is STALLED after its spin-up and a window, and its row trips
    FAN_STALL_DELAY_MS later (ACT_FANS_MAX), not before."""
    from drivers.thermal_fake_hal import ThermalFakeHal
    from metal.core.drivers.fans import FanBank
    from metal.core.events import EventQueue
    from metal.core.interlocks.table import InterlockTable
    from metal.core.proto import FAN_OFF, FAN_STALLED
    from metal.core.signals import Signals

    c = mod.make_config()
    tick_ms = c.limits.tick_us // 1000
    hal = ThermalFakeHal()
    sig = Signals(len(c.sensors), len(c.fans), len(c.rails))
    q = EventQueue(64)
    fans = FanBank(c.fans, hal, sig, q, tick_ms)
    rows = tuple(il for il in c.interlocks if il.signal[0] in (SIG_FAN_STALLED, SIG_FAN_STATE))
    assert len(rows) == len(c.fans) and all(il.action == ACT_FANS_MAX for il in rows)
    table = InterlockTable(rows, sig, q)
    now = [0]

    def tick():
        now[0] += tick_ms
        q.now_ms = now[0]
        hal.sample(now[0] * 1000)
        fans.step(now[0])
        fans.apply()
        return table.evaluate()

    for i in range(len(c.fans)):
        fans.set_duty(i, 0)
    for _ in range(2 * common.FAN_STALL_DELAY_MS // tick_ms):
        assert tick() == 0
    assert all(st == FAN_OFF for st in fans.state)

    fans.set_duty(0, 1000)  # driven, but its tach gives nothing: a locked rotor
    ticks = 0
    while fans.state[0] != FAN_STALLED:
        assert tick() == 0
        ticks += 1
        assert ticks * tick_ms <= c.fans[0].spinup_ms + 2 * fans.window_ms
    stalled_at = ticks
    while not table.tripped:
        tick()
        ticks += 1
    assert (ticks - stalled_at) * tick_ms == common.FAN_STALL_DELAY_MS
    assert table.tripped == 1  # row 0: the first fan's
