"""Operator requests -> board commands, and board verdicts -> API results/errors.

:func:`translate` turns a :class:`~metal.host.bridge.model.CommandRequest` (names and API
units) into a :class:`BoardCommand` (``op``, target index, ``arg``, ``arg2`` in board units)
using the device's :class:`~metal.host.telemetry_view.Layout`, the board's own description
of itself. Everything that can be checked on the host is checked here, with a message that
names the exact problem:

* names -> indexes in the section's table order; an unknown name is
  :class:`TargetNotFound` (404) and lists the valid names;
* API units -> board units: ``duty_pct`` 0..100 -> per-mille, ``temp_c`` / ``setpoint_c``
  -> m°C, ``level`` 0/1, ``ms``; out of range, wrong type, NaN, bool-for-number ->
  :class:`InvalidInput` (422);
* a zone setpoint must lie below the lowest critical limit of the zone's sensors (the
  board refuses it otherwise, protocol §8 ops table);
* GPIO writes only to output lines the board does not own;
* simulator faults only on simulated boards, else :class:`NotSupported`.

The board still has the last word: it validates again and may refuse
(``rejected_by_interlock`` ...). :func:`verdict_error` maps a board RESULT code onto the
model's error types.

Request vocabulary (``kind``, ``action``, ``target``, ``value``, ``extra``)::

    rail       on | off | cycle          target rail
    power      on | off
    zone       auto                      target zone
               manual                    target zone, value duty_pct (0..100)
               setpoint                  target zone, value setpoint_c
    gpio       write                     target line, value level (0/1, bool)
    security   lock | unlock | arm | disarm | clear_tamper
    interlock  clear                     target interlock
    estop      assert | release
    board      reboot
               set_heartbeat_timeout     value ms (100..600000)
    sim        clear                     target None: every fault; else extra["fault"] names
                                         the fault kind to clear on that target
               sensor_stuck              target sensor, value temp_c (-100..200)
               sensor_open | sensor_short  target sensor
               fan_stall                 target fan
               rail_short                target rail
               pg_glitch                 target rail, value ms (1..60000)
               tamper | estop | door     value 1 (open/pressed) / 0, or a bool
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from metal.core import proto as P
from metal.host.bridge.model import (
    BridgeError,
    CommandRequest,
    CommandVerdict,
    DeviceError,
    InvalidInput,
    NotSupported,
    Refused,
    TargetNotFound,
)
from metal.host.telemetry_view import RESULT_CODES, Layout

__all__ = [
    "ACTIONS",
    "BoardCommand",
    "SIM_FAULTS",
    "request_to_dict",
    "result_name",
    "translate",
    "verdict_error",
]

HB_TIMEOUT_MIN_MS: Final = 100
HB_TIMEOUT_MAX_MS: Final = 600000
SETPOINT_MIN_C: Final = 0.0
SETPOINT_MAX_C: Final = 120.0
STUCK_MIN_C: Final = -100.0
STUCK_MAX_C: Final = 200.0
GLITCH_MAX_MS: Final = 60000

#: simulator fault name -> (fault kind, table the target indexes or None, value kind)
SIM_FAULTS: Final[dict[str, tuple[int, str | None, str | None]]] = {
    "clear": (P.FAULT_CLEAR, None, None),
    "sensor_stuck": (P.FAULT_SENSOR_STUCK, "sensors", "temp_c"),
    "sensor_open": (P.FAULT_SENSOR_OPEN, "sensors", None),
    "sensor_short": (P.FAULT_SENSOR_SHORT, "sensors", None),
    "fan_stall": (P.FAULT_FAN_STALL, "fans", None),
    "rail_short": (P.FAULT_RAIL_SHORT, "rails", None),
    "pg_glitch": (P.FAULT_PG_GLITCH, "rails", "ms"),
    "tamper": (P.FAULT_TAMPER, None, "switch"),
    "estop": (P.FAULT_ESTOP, None, "switch"),
    "door": (P.FAULT_DOOR, None, "switch"),
}

#: kind -> actions it accepts
ACTIONS: Final[dict[str, tuple[str, ...]]] = {
    "rail": ("on", "off", "cycle"),
    "power": ("on", "off"),
    "zone": ("auto", "manual", "setpoint"),
    "gpio": ("write",),
    "security": ("lock", "unlock", "arm", "disarm", "clear_tamper"),
    "interlock": ("clear",),
    "estop": ("assert", "release"),
    "board": ("reboot", "set_heartbeat_timeout"),
    "sim": tuple(SIM_FAULTS),
}


@dataclass(frozen=True)
class BoardCommand:
    """A CMD ready for the wire (protocol §8), plus what it means for desired state."""

    op: int
    target: int | None = None
    arg: int | None = None
    arg2: int | None = None
    #: desired-state writes to make once the board says "applied": (key, value)
    desired: tuple[tuple[str, Any], ...] = ()
    #: a short human description, e.g. "rail on p3v3"
    text: str = ""
    #: extra context for logs/verdicts (resolved names ...)
    meta: dict[str, Any] = field(default_factory=dict)

    def payload(self, command_id: int) -> dict[int, int]:
        """The CMD map: {0: id, 1: op, 2: target, 3: arg, 4: arg2} (absent keys left out)."""
        p = {P.CMD_ID: command_id, P.CMD_OP: self.op}
        if self.target is not None:
            p[P.CMD_TARGET] = self.target
        if self.arg is not None:
            p[P.CMD_ARG] = self.arg
        if self.arg2 is not None:
            p[P.CMD_ARG2] = self.arg2
        return p


def request_to_dict(request: CommandRequest) -> dict[str, Any]:
    """The request as stored with the command (idempotency compares these)."""
    out: dict[str, Any] = {"kind": request.kind, "action": request.action}
    if request.target is not None:
        out["target"] = request.target
    if request.value is not None:
        out["value"] = request.value
    if request.extra:
        out["extra"] = dict(request.extra)
    return out


# -- helpers ----------------------------------------------------------------------------


def _index(layout: Layout, table: str, name: Any, what: str) -> int:
    items: Sequence[dict[str, Any]] = getattr(layout, table)
    if name is None:
        raise InvalidInput(f"a {what} name is required", field="target")
    if not isinstance(name, str):
        raise InvalidInput(f"the {what} name must be a string, got {name!r}", field="target")
    for i, item in enumerate(items):
        if item.get("name") == name:
            return i
    names = ", ".join(str(x.get("name")) for x in items) or "none"
    raise TargetNotFound(f"no {what} named {name!r} on this board (known: {names})",
                         target=name, kind=what)


def _no_target(request: CommandRequest) -> None:
    if request.target is not None:
        raise InvalidInput(
            f"{request.kind} {request.action} takes no target, got {request.target!r}",
            field="target")


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"{name} must be a number, got {value!r}", field="value")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(f"{name} must be a finite number, got {value!r}", field="value")
    return float(value)


def _int(value: Any, name: str) -> int:
    v = _number(value, name)
    if v != int(v):
        raise InvalidInput(f"{name} must be a whole number, got {value!r}", field="value")
    return int(v)


def _level(value: Any, name: str = "level") -> int:
    if value is True or value is False:
        return int(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1):
        return int(value)
    raise InvalidInput(f"{name} must be 0, 1, true or false, got {value!r}", field="value")


def _no_value(request: CommandRequest) -> None:
    if request.value is not None:
        raise InvalidInput(
            f"{request.kind} {request.action} takes no value, got {request.value!r}",
            field="value")


def _fmt(x: float) -> str:
    return f"{x:g}"


# -- translate ------------------------------------------------------------------------------


def translate(request: CommandRequest, layout: Layout, *, simulated: bool) -> BoardCommand:
    """Validate ``request`` against ``layout`` and build the board command.

    Raises InvalidInput, TargetNotFound or NotSupported with a precise message.
    """
    kind, action = request.kind, request.action
    actions = ACTIONS.get(kind)
    if actions is None:
        raise InvalidInput(f"unknown command kind {kind!r} (expected one of "
                           f"{', '.join(ACTIONS)})", field="kind")
    if action not in actions:
        if kind == "sim" and not simulated:
            raise NotSupported("simulator faults exist only on simulated boards")
        raise InvalidInput(f"unknown action {action!r} for {kind} (expected one of "
                           f"{', '.join(actions)})", field="action")
    fn = _TRANSLATORS[kind]
    return fn(request, layout, simulated)


def _rail(req: CommandRequest, lay: Layout, sim: bool) -> BoardCommand:
    idx = _index(lay, "rails", req.target, "rail")
    _no_value(req)
    name = lay.rails[idx]["name"]
    op = {"on": P.OP_RAIL_ON, "off": P.OP_RAIL_OFF, "cycle": P.OP_RAIL_CYCLE}[req.action]
    # a rail turned on brings its parents up first; turned off, its dependents go down
    if req.action == "off":
        desired = tuple((f"rail:{n}", "off") for n in _dependents(lay, name))
    else:
        desired = tuple((f"rail:{n}", "on") for n in _ancestors(lay, name))
    return BoardCommand(op, idx, desired=desired, text=f"rail {req.action} {name}",
                        meta={"rail": name})


def _ancestors(lay: Layout, name: str) -> list[str]:
    by_name = {r["name"]: r for r in lay.rails}
    chain = []
    cur: str | None = name
    seen: set[str] = set()
    while cur is not None and cur in by_name and cur not in seen:
        seen.add(cur)
        chain.append(cur)
        cur = by_name[cur].get("parent")
    return list(reversed(chain))


def _dependents(lay: Layout, name: str) -> list[str]:
    out = [name]
    changed = True
    while changed:
        changed = False
        for r in lay.rails:
            if r.get("parent") in out and r["name"] not in out:
                out.append(r["name"])
                changed = True
    return out


def _power(req: CommandRequest, lay: Layout, sim: bool) -> BoardCommand:
    _no_target(req)
    _no_value(req)
    state = req.action
    desired = tuple((f"rail:{r['name']}", state) for r in lay.rails)
    op = P.OP_POWER_ON if state == "on" else P.OP_POWER_OFF
    return BoardCommand(op, None, desired=desired, text=f"power {state}")


def _zone(req: CommandRequest, lay: Layout, sim: bool) -> BoardCommand:
    idx = _index(lay, "zones", req.target, "zone")
    zone = lay.zones[idx]
    name = zone["name"]
    if req.action == "auto":
        _no_value(req)
        return BoardCommand(P.OP_ZONE_AUTO, idx, desired=((f"zone:{name}", {"mode": "auto"}),),
                            text=f"zone {name} auto", meta={"zone": name})
    if req.action == "manual":
        if req.value is None:
            raise InvalidInput("zone manual needs value duty_pct (0..100)", field="value")
        duty = _number(req.value, "duty_pct")
        if not 0 <= duty <= 100:
            raise InvalidInput(f"duty_pct must be between 0 and 100, got {_fmt(duty)}",
                               field="value")
        permille = int(round(duty * 10))
        return BoardCommand(
            P.OP_ZONE_MANUAL, idx, permille,
            desired=((f"zone:{name}", {"mode": "manual", "duty_pct": duty}),),
            text=f"zone {name} manual {_fmt(duty)} %", meta={"zone": name, "duty_pct": duty})
    # setpoint
    if req.value is None:
        raise InvalidInput("zone setpoint needs value setpoint_c", field="value")
    sp = _number(req.value, "setpoint_c")
    if not SETPOINT_MIN_C <= sp <= SETPOINT_MAX_C:
        raise InvalidInput(f"setpoint_c must be between {_fmt(SETPOINT_MIN_C)} and "
                           f"{_fmt(SETPOINT_MAX_C)} °C, got {_fmt(sp)}", field="value")
    crit = [s["crit_c"] for s in lay.sensors
            if s.get("zone") == name and isinstance(s.get("crit_c"), (int, float))]
    if crit and sp >= min(crit):
        raise InvalidInput(
            f"setpoint_c {_fmt(sp)} for zone {name!r} must be below the lowest critical "
            f"limit of its sensors, {_fmt(min(crit))} °C", field="value")
    mc = int(round(sp * 1000))
    return BoardCommand(P.OP_ZONE_SETPOINT, idx, mc, desired=((f"setpoint:{name}", sp),),
                        text=f"zone {name} setpoint {_fmt(sp)} °C",
                        meta={"zone": name, "setpoint_c": sp})


def _gpio(req: CommandRequest, lay: Layout, sim: bool) -> BoardCommand:
    idx = _index(lay, "gpio", req.target, "gpio line")
    line = lay.gpio[idx]
    name = line["name"]
    if line.get("direction") != "out":
        raise InvalidInput(f"gpio line {name!r} is an input and cannot be written",
                           field="target")
    if line.get("owned"):
        raise InvalidInput(f"gpio line {name!r} is owned by the board firmware and cannot be "
                           f"written", field="target")
    if req.value is None:
        raise InvalidInput("gpio write needs value level (0 or 1)", field="value")
    level = _level(req.value)
    return BoardCommand(P.OP_GPIO_WRITE, idx, level, desired=((f"gpio:{name}", level),),
                        text=f"gpio {name} = {level}", meta={"line": name})


def _security(req: CommandRequest, lay: Layout, sim: bool) -> BoardCommand:
    _no_target(req)
    _no_value(req)
    sec = lay.security or {}
    a = req.action
    if a in ("lock", "unlock") and sec and not sec.get("lock"):
        raise NotSupported("this board has no door lock fitted")
    if a in ("arm", "disarm", "clear_tamper") and sec and not sec.get("tamper"):
        raise NotSupported("this board has no tamper switch fitted")
    op, desired = {
        "lock": (P.OP_LOCK, (("security.lock", "locked"),)),
        "unlock": (P.OP_UNLOCK, (("security.lock", "unlocked"),)),
        "arm": (P.OP_ARM, (("security.armed", True),)),
        "disarm": (P.OP_DISARM, (("security.armed", False),)),
        "clear_tamper": (P.OP_TAMPER_CLEAR, ()),
    }[a]
    return BoardCommand(op, None, desired=desired, text=f"security {a}")


def _interlock(req: CommandRequest, lay: Layout, sim: bool) -> BoardCommand:
    idx = _index(lay, "interlocks", req.target, "interlock")
    _no_value(req)
    name = lay.interlocks[idx]["name"]
    return BoardCommand(P.OP_INTERLOCK_CLEAR, idx, text=f"interlock clear {name}",
                        meta={"interlock": name})


def _estop(req: CommandRequest, lay: Layout, sim: bool) -> BoardCommand:
    _no_target(req)
    _no_value(req)
    arg = 1 if req.action == "assert" else 0
    return BoardCommand(P.OP_ESTOP, None, arg, text=f"estop {req.action}")


def _board(req: CommandRequest, lay: Layout, sim: bool) -> BoardCommand:
    _no_target(req)
    if req.action == "reboot":
        _no_value(req)
        return BoardCommand(P.OP_REBOOT, None, text="board reboot")
    if req.value is None:
        raise InvalidInput("set_heartbeat_timeout needs value ms", field="value")
    ms = _int(req.value, "ms")
    if not HB_TIMEOUT_MIN_MS <= ms <= HB_TIMEOUT_MAX_MS:
        raise InvalidInput(f"heartbeat timeout must be between {HB_TIMEOUT_MIN_MS} and "
                           f"{HB_TIMEOUT_MAX_MS} ms, got {ms}", field="value")
    return BoardCommand(P.OP_SET_HB_TIMEOUT, None, ms, text=f"heartbeat timeout {ms} ms")


def _sim(req: CommandRequest, lay: Layout, sim: bool) -> BoardCommand:
    if not sim:
        raise NotSupported("simulator faults exist only on simulated boards (board 'sim')")
    fault, table, vkind = SIM_FAULTS[req.action]
    text = f"sim {req.action}"
    if req.action == "clear":
        _no_value(req)
        which = req.extra.get("fault") if req.extra else None
        if req.target is None and which is None:
            return BoardCommand(P.OP_SIM_FAULT, -1, P.FAULT_CLEAR, 0, text="sim clear all")
        if which not in SIM_FAULTS or which == "clear":
            raise InvalidInput("sim clear on a target needs extra.fault naming the fault "
                               f"kind to clear (one of {', '.join(list(SIM_FAULTS)[1:])})",
                               field="extra.fault")
        kind2, table2, _ = SIM_FAULTS[which]
        if table2 is None:
            if req.target is not None:
                raise InvalidInput(f"sim clear {which} takes no target, got {req.target!r}",
                                   field="target")
            target = 0  # the switch
        else:
            target = _index(lay, table2, req.target, table2.rstrip("s"))
        return BoardCommand(P.OP_SIM_FAULT, target, P.FAULT_CLEAR, kind2,
                            text=f"sim clear {which} {req.target}")
    if table is None:
        if req.target is not None:
            raise InvalidInput(f"sim {req.action} takes no target, got {req.target!r}",
                               field="target")
        target = -1
    else:
        target = _index(lay, table, req.target, table.rstrip("s"))
        text += f" {req.target}"
    arg2 = 0
    if vkind == "temp_c":
        if req.value is None:
            raise InvalidInput("sensor_stuck needs value temp_c", field="value")
        t = _number(req.value, "temp_c")
        if not STUCK_MIN_C <= t <= STUCK_MAX_C:
            raise InvalidInput(f"temp_c must be between {_fmt(STUCK_MIN_C)} and "
                               f"{_fmt(STUCK_MAX_C)} °C, got {_fmt(t)}", field="value")
        arg2 = int(round(t * 1000))
    elif vkind == "ms":
        if req.value is None:
            raise InvalidInput("pg_glitch needs value ms", field="value")
        ms = _int(req.value, "ms")
        if not 1 <= ms <= GLITCH_MAX_MS:
            raise InvalidInput(f"ms must be between 1 and {GLITCH_MAX_MS}, got {ms}",
                               field="value")
        arg2 = ms
    elif vkind == "switch":
        arg2 = 1 if req.value is None else _level(req.value, "value")
    else:
        _no_value(req)
    return BoardCommand(P.OP_SIM_FAULT, target, fault, arg2, text=text)


_TRANSLATORS: Final = {
    "rail": _rail,
    "power": _power,
    "zone": _zone,
    "gpio": _gpio,
    "security": _security,
    "interlock": _interlock,
    "estop": _estop,
    "board": _board,
    "sim": _sim,
}


# -- verdicts -------------------------------------------------------------------------------


def result_name(code: int) -> str:
    return RESULT_CODES.get(code, f"unknown({code})")


def verdict_error(verdict: CommandVerdict, code: int, text: str = "") -> BridgeError | None:
    """The error a rejected verdict maps onto (None for "applied").

    rejected_by_interlock / rejected_by_policy / busy -> Refused (409, ``reason``);
    invalid_argument -> InvalidInput (422); unknown_target -> TargetNotFound (404);
    unknown_op -> NotSupported; malformed and unknown codes -> DeviceError (502).
    """
    if verdict.result == "applied":
        return None
    reason = verdict.reason or result_name(code)
    what = f"{text}: " if text else ""
    details = {"command_id": verdict.command_id, "reason": reason, "verdict": verdict.to_dict(),
               "replayed": verdict.replayed}
    if code in (P.R_REJECTED_BY_INTERLOCK, P.R_REJECTED_BY_POLICY):
        by = "an interlock" if code == P.R_REJECTED_BY_INTERLOCK else "the board policy"
        return Refused(f"{what}refused by {by} on the board", **details)
    if code == P.R_BUSY:
        return Refused(f"{what}the board is busy (a sequence is running); retry later",
                       **details)
    if code == P.R_INVALID_ARGUMENT:
        return InvalidInput(f"{what}the board rejected the argument as invalid", **details)
    if code == P.R_UNKNOWN_TARGET:
        return TargetNotFound(f"{what}the board does not know this target", **details)
    if code == P.R_UNKNOWN_OP:
        return NotSupported(f"{what}the board firmware does not support this command",
                            **details)
    return DeviceError(f"{what}the board answered {reason}", **details)
