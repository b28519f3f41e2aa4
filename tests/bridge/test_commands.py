"""commands.translate: names -> indexes, API units -> board units, precise errors;
verdict_error: RESULT codes -> the model's error types."""

from __future__ import annotations

import math
from typing import Any

import pytest

from metal.boards.sim.board import make_config
from metal.core import proto as P
from metal.core.describe import build_parts
from metal.host.bridge.commands import (
    ACTIONS,
    BoardCommand,
    request_to_dict,
    result_name,
    translate,
    verdict_error,
)
from metal.host.bridge.model import (
    CommandRequest,
    CommandVerdict,
    DeviceError,
    InvalidInput,
    NotSupported,
    Refused,
    TargetNotFound,
)
from metal.host.telemetry_view import Layout, decode_describe

LAYOUT = decode_describe(build_parts(make_config()))


def tr(kind: str, action: str, target: Any = None, value: Any = None, sim: bool = True,
       layout: Layout = LAYOUT, **extra: Any) -> BoardCommand:
    return translate(CommandRequest(kind, action, target, value, extra), layout, simulated=sim)


def test_rail_ops_and_desired_chain() -> None:
    c = tr("rail", "on", "p3v3")
    assert (c.op, c.target, c.arg, c.arg2) == (P.OP_RAIL_ON, 2, None, None)
    assert c.desired == (("rail:p12v_main", "on"), ("rail:p5v", "on"), ("rail:p3v3", "on"))
    c = tr("rail", "off", "p5v")
    assert c.op == P.OP_RAIL_OFF and c.target == 1
    assert dict(c.desired) == {"rail:p5v": "off", "rail:p3v3": "off", "rail:p1v8": "off",
                               "rail:p1v0_core": "off"}
    assert tr("rail", "cycle", "p12v_fans").op == P.OP_RAIL_CYCLE
    assert c.payload(7) == {P.CMD_ID: 7, P.CMD_OP: P.OP_RAIL_OFF, P.CMD_TARGET: 1}


def test_power() -> None:
    c = tr("power", "on")
    assert c.op == P.OP_POWER_ON and c.target is None and len(c.desired) == 6
    assert tr("power", "off").op == P.OP_POWER_OFF
    with pytest.raises(InvalidInput, match="takes no target"):
        tr("power", "on", "p5v")


def test_unknown_names_are_404_with_the_known_names() -> None:
    with pytest.raises(TargetNotFound) as e:
        tr("rail", "on", "p48v")
    assert e.value.status == 404 and "p12v_main" in e.value.message
    assert e.value.details["target"] == "p48v"
    for kind, action in (("zone", "auto"), ("gpio", "write"), ("interlock", "clear")):
        with pytest.raises(TargetNotFound):
            tr(kind, action, "nope", 1 if kind == "gpio" else None)
    with pytest.raises(InvalidInput, match="name is required"):
        tr("rail", "on", None)


def test_zone_manual_units_and_validation() -> None:
    c = tr("zone", "manual", "memory", 42.5)
    assert (c.op, c.target, c.arg) == (P.OP_ZONE_MANUAL, 1, 425)
    assert c.desired == (("zone:memory", {"mode": "manual", "duty_pct": 42.5}),)
    assert tr("zone", "manual", "cpu", 100).arg == 1000
    assert tr("zone", "manual", "cpu", 0).arg == 0
    for bad, msg in ((150, "between 0 and 100, got 150"), (-1, "got -1"),
                     (True, "must be a number"), ("50", "must be a number"),
                     (math.nan, "finite"), (None, "needs value duty_pct")):
        with pytest.raises(InvalidInput, match=msg):
            tr("zone", "manual", "cpu", bad)
    c = tr("zone", "auto", "io")
    assert c.op == P.OP_ZONE_AUTO and c.target == 2 and c.desired == (("zone:io",
                                                                        {"mode": "auto"}),)


def test_zone_setpoint_in_millidegrees_below_critical() -> None:
    c = tr("zone", "setpoint", "cpu", 55.25)
    assert (c.op, c.target, c.arg) == (P.OP_ZONE_SETPOINT, 0, 55250)
    assert c.desired == (("setpoint:cpu", 55.25),)  # re-applied after a board reboot
    with pytest.raises(InvalidInput, match="below the lowest critical limit of its sensors, 95"):
        tr("zone", "setpoint", "cpu", 95)
    with pytest.raises(InvalidInput, match=r"75 °C"):  # io_board crit 75 °C
        tr("zone", "setpoint", "io", 80)
    with pytest.raises(InvalidInput, match="between 0 and 120"):
        tr("zone", "setpoint", "memory", -5)


def test_gpio() -> None:
    c = tr("gpio", "write", "led_fault", True)
    assert (c.op, c.target, c.arg) == (P.OP_GPIO_WRITE, 1, 1)
    assert c.desired == (("gpio:led_fault", 1),)
    assert tr("gpio", "write", "aux_out_1", 0).arg == 0
    with pytest.raises(InvalidInput, match="'gpio_in_0' is an input"):
        tr("gpio", "write", "gpio_in_0", 1)
    with pytest.raises(InvalidInput, match="0, 1, true or false, got 2"):
        tr("gpio", "write", "led_status", 2)
    lay = decode_describe(build_parts(make_config()))
    lay.gpio[0]["owned"] = True
    with pytest.raises(InvalidInput, match="owned by the board"):
        tr("gpio", "write", "led_status", 1, layout=lay)


def test_security_estop_interlock_board() -> None:
    assert tr("security", "lock").desired == (("security.lock", "locked"),)
    assert tr("security", "disarm").op == P.OP_DISARM
    assert tr("security", "clear_tamper").op == P.OP_TAMPER_CLEAR
    lay = decode_describe(build_parts(make_config()))
    lay.security["lock"] = False
    with pytest.raises(NotSupported, match="no door lock"):
        tr("security", "unlock", layout=lay)
    assert (tr("estop", "assert").op, tr("estop", "assert").arg) == (P.OP_ESTOP, 1)
    assert tr("estop", "release").arg == 0
    c = tr("interlock", "clear", "estop")
    assert c.op == P.OP_INTERLOCK_CLEAR and c.target == 18
    assert tr("board", "reboot").op == P.OP_REBOOT
    c = tr("board", "set_heartbeat_timeout", None, 5000)
    assert (c.op, c.arg) == (P.OP_SET_HB_TIMEOUT, 5000)
    with pytest.raises(InvalidInput, match="between 100 and 600000 ms, got 50"):
        tr("board", "set_heartbeat_timeout", None, 50)
    with pytest.raises(InvalidInput, match="whole number"):
        tr("board", "set_heartbeat_timeout", None, 1000.5)


def test_sim_faults() -> None:
    c = tr("sim", "sensor_stuck", "dimm_a", 91.5)
    assert (c.op, c.target, c.arg, c.arg2) == (P.OP_SIM_FAULT, 3, P.FAULT_SENSOR_STUCK, 91500)
    c = tr("sim", "estop", None, True)
    assert (c.target, c.arg, c.arg2) == (-1, P.FAULT_ESTOP, 1)
    assert tr("sim", "door", None, 0).arg2 == 0
    assert tr("sim", "tamper").arg2 == 1
    c = tr("sim", "pg_glitch", "p5v", 20)
    assert (c.target, c.arg, c.arg2) == (1, P.FAULT_PG_GLITCH, 20)
    assert tr("sim", "fan_stall", "io_fan").target == 3
    assert tr("sim", "rail_short", "p1v8").target == 3
    c = tr("sim", "clear")
    assert (c.target, c.arg) == (-1, P.FAULT_CLEAR)
    c = tr("sim", "clear", "cpu_fan1", fault="fan_stall")
    assert (c.target, c.arg, c.arg2) == (1, P.FAULT_CLEAR, P.FAULT_FAN_STALL)
    c = tr("sim", "clear", None, fault="estop")
    assert (c.target, c.arg2) == (0, P.FAULT_ESTOP)
    with pytest.raises(InvalidInput, match="extra.fault"):
        tr("sim", "clear", "cpu_fan1")
    with pytest.raises(TargetNotFound):
        tr("sim", "sensor_open", "gpu_die")
    with pytest.raises(InvalidInput, match="between -100 and 200"):
        tr("sim", "sensor_stuck", "dimm_a", 500)
    with pytest.raises(NotSupported, match="simulated boards"):
        tr("sim", "estop", None, 1, sim=False)
    with pytest.raises(NotSupported):
        tr("sim", "whatever", sim=False)
    with pytest.raises(InvalidInput, match="unknown action 'whatever'"):
        tr("sim", "whatever")


def test_unknown_kind_and_action() -> None:
    with pytest.raises(InvalidInput, match="unknown command kind 'fan'"):
        tr("fan", "on")
    with pytest.raises(InvalidInput, match="expected one of on, off, cycle"):
        tr("rail", "toggle", "p5v")
    assert set(ACTIONS) == {"rail", "power", "zone", "gpio", "security", "interlock", "estop",
                            "board", "sim"}


def test_request_to_dict() -> None:
    assert request_to_dict(CommandRequest("rail", "on", "p5v")) == {
        "kind": "rail", "action": "on", "target": "p5v"}
    assert request_to_dict(CommandRequest("sim", "clear", "x", None, {"fault": "fan_stall"})) == {
        "kind": "sim", "action": "clear", "target": "x", "extra": {"fault": "fan_stall"}}


@pytest.mark.parametrize("code,cls,status", [
    (P.R_REJECTED_BY_INTERLOCK, Refused, 409),
    (P.R_REJECTED_BY_POLICY, Refused, 409),
    (P.R_BUSY, Refused, 409),
    (P.R_INVALID_ARGUMENT, InvalidInput, 422),
    (P.R_UNKNOWN_TARGET, TargetNotFound, 404),
    (P.R_UNKNOWN_OP, NotSupported, 404),
    (P.R_MALFORMED, DeviceError, 502),
    (99, DeviceError, 502),
])
def test_verdict_errors(code: int, cls: type, status: int) -> None:
    v = CommandVerdict(12, "rejected", result_name(code))
    err = verdict_error(v, code, "rail on p5v")
    assert isinstance(err, cls) and err.status == status
    assert err.details["command_id"] == 12 and err.details["reason"] == result_name(code)
    assert err.details["verdict"] == {"command_id": 12, "result": "rejected",
                                      "reason": result_name(code)}
    assert err.message.startswith("rail on p5v: ")
    assert verdict_error(CommandVerdict(1, "applied"), 0) is None
    assert result_name(P.R_BUSY) == "busy" and result_name(99) == "unknown(99)"
