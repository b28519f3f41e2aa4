"""Request bodies and documented response shapes of the REST API (pydantic v2).

Request models forbid unknown fields and reject what the board could never accept before a
command is built: numbers are strict (no ``"5"``, no ``true`` for a number) and finite. What
only the device layout can decide (does rail ``p3v3`` exist, is a setpoint below the zone's
critical limit) is the service's job; it answers with a typed ``BridgeError``.

Response models document the JSON the routes return. The snapshot route returns the
service's pre-serialized bytes untouched, so :class:`DeviceSnapshot` is documentation only.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

__all__ = [
    "CommandResult",
    "DeviceSnapshot",
    "DeviceSummaryOut",
    "ErrorBody",
    "EstopBody",
    "Event",
    "EventsPage",
    "GpioBody",
    "Health",
    "PowerBody",
    "RailBody",
    "Readiness",
    "RefusedBody",
    "SIM_FAULT_KINDS",
    "SecurityBody",
    "SimFaultBody",
    "ZoneBody",
]

Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- request bodies ----------------------------------------------------------------------


class RailBody(_Body):
    action: Literal["on", "off", "cycle"] = Field(
        description="on: parents first; off: dependents first; cycle: off, 1 s, on")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"action": "on"}]})


class PowerBody(_Body):
    action: Literal["on", "off"] = Field(
        description="on: every rail in dependency order; off: orderly, reverse order")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"action": "off"}]})


class ZoneBody(_Body):
    """Exactly one of three forms: ``{"mode": "auto"}``, ``{"mode": "manual", "duty_pct": x}``
    or ``{"setpoint_c": x}``."""

    mode: Literal["auto", "manual"] | None = Field(
        None, description="auto: the zone's controller; manual: a fixed fan duty")
    duty_pct: Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0, le=100)] | None = (
        Field(None, description="fan duty in percent, 0..100; only with mode manual"))
    setpoint_c: Finite | None = Field(
        None, description="new regulation setpoint in °C; must lie below the lowest critical "
        "limit of the zone's sensors (checked by the bridge against the board's layout)")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"mode": "auto"}, {"mode": "manual", "duty_pct": 60}, {"setpoint_c": 45.0}]})

    @model_validator(mode="after")
    def _one_form(self) -> ZoneBody:
        if self.setpoint_c is not None:
            if self.mode is not None or self.duty_pct is not None:
                raise ValueError("setpoint_c cannot be combined with mode or duty_pct")
            return self
        if self.mode is None:
            if self.duty_pct is not None:
                raise ValueError("duty_pct needs mode 'manual'")
            raise ValueError("give mode ('auto' or 'manual' with duty_pct) or setpoint_c")
        if self.mode == "manual" and self.duty_pct is None:
            raise ValueError("duty_pct is required with mode 'manual'")
        if self.mode == "auto" and self.duty_pct is not None:
            raise ValueError("duty_pct is only allowed with mode 'manual'")
        return self

    def command(self) -> tuple[str, float | None]:
        """(action, value) of the CommandRequest."""
        if self.setpoint_c is not None:
            return "setpoint", self.setpoint_c
        if self.mode == "manual":
            return "manual", self.duty_pct
        return "auto", None


class GpioBody(_Body):
    level: StrictInt = Field(description="0 or 1", json_schema_extra={"enum": [0, 1]})

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"level": 1}]})

    @model_validator(mode="after")
    def _bit(self) -> GpioBody:
        if self.level not in (0, 1):
            raise ValueError(f"level must be 0 or 1, got {self.level}")
        return self


class SecurityBody(_Body):
    action: Literal["lock", "unlock", "arm", "disarm", "clear_tamper"] = Field(
        description="lock/unlock the door, arm/disarm tamper detection, clear the latched "
        "tamper flag (the switch must be closed)")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"action": "lock"}]})


class EstopBody(_Body):
    action: Literal["assert", "release"] = Field(description="software emergency stop")

    model_config = ConfigDict(extra="forbid",
                              json_schema_extra={"examples": [{"action": "assert"}]})


SimFaultKind = Literal["sensor_stuck", "sensor_open", "sensor_short", "fan_stall", "rail_short",
                       "pg_glitch", "tamper", "estop", "door", "clear"]
SIM_FAULT_KINDS: tuple[str, ...] = ("sensor_stuck", "sensor_open", "sensor_short", "fan_stall",
                                    "rail_short", "pg_glitch", "tamper", "estop", "door", "clear")

#: kind -> (target: "required" | "forbidden" | "optional", the value field it takes or None)
_SIM_SHAPE: dict[str, tuple[str, str | None]] = {
    "sensor_stuck": ("required", "value_c"),
    "sensor_open": ("required", None),
    "sensor_short": ("required", None),
    "fan_stall": ("required", None),
    "rail_short": ("required", None),
    "pg_glitch": ("required", "duration_ms"),
    "tamper": ("forbidden", "active"),
    "estop": ("forbidden", "active"),
    "door": ("forbidden", "active"),
    "clear": ("optional", None),
}
_SIM_VALUE_FIELDS = ("value_c", "duration_ms", "active")


class SimFaultBody(_Body):
    """A simulated-plant fault (simulated boards only).

    ``target`` names a sensor (sensor_*), fan (fan_stall) or rail (rail_short, pg_glitch);
    tamper/estop/door take no target and ``active`` (default true: switch open/pressed).
    ``clear`` without target clears every fault; with a target it needs ``fault``, the kind
    to clear there (for a switch fault: ``fault`` without target).
    """

    kind: SimFaultKind
    target: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    value_c: Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-100, le=200)] | None = (
        Field(None, description="sensor_stuck: the temperature the sensor reads, °C"))
    duration_ms: Annotated[int, Field(strict=True, ge=1, le=60000)] | None = Field(
        None, description="pg_glitch: how long power-good drops, ms")
    active: StrictBool | None = Field(
        None, description="tamper/estop/door: switch open or pressed (true, the default) or "
        "closed/released (false)")
    fault: SimFaultKind | None = Field(
        None, description="clear: which fault kind to clear on the target")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"kind": "sensor_stuck", "target": "cpu", "value_c": 95.0},
        {"kind": "fan_stall", "target": "fan0"},
        {"kind": "pg_glitch", "target": "p3v3", "duration_ms": 50},
        {"kind": "tamper", "active": True},
        {"kind": "clear", "target": None},
    ]})

    @model_validator(mode="after")
    def _shape(self) -> SimFaultBody:
        target_rule, value_field = _SIM_SHAPE[self.kind]
        if target_rule == "required" and self.target is None:
            raise ValueError(f"kind {self.kind!r} needs a target")
        if target_rule == "forbidden" and self.target is not None:
            raise ValueError(f"kind {self.kind!r} takes no target")
        for name in _SIM_VALUE_FIELDS:
            if name != value_field and getattr(self, name) is not None:
                raise ValueError(f"{name} is not used with kind {self.kind!r}")
        if value_field in ("value_c", "duration_ms") and getattr(self, value_field) is None:
            raise ValueError(f"kind {self.kind!r} needs {value_field}")
        if self.kind == "clear":
            if self.fault == "clear":
                raise ValueError("fault must name the fault kind to clear, not 'clear'")
            if self.target is not None and self.fault is None:
                raise ValueError("kind 'clear' with a target needs fault (the kind to clear)")
        elif self.fault is not None:
            raise ValueError(f"fault is only used with kind 'clear', not {self.kind!r}")
        return self

    def command(self) -> tuple[str | None, float | int | None, dict[str, Any]]:
        """(target, value, extra) of the CommandRequest."""
        extra: dict[str, Any] = {}
        value: float | int | None = None
        if self.kind == "sensor_stuck":
            value = self.value_c
        elif self.kind == "pg_glitch":
            value = self.duration_ms
        elif self.kind in ("tamper", "estop", "door"):
            value = 0 if self.active is False else 1
        elif self.kind == "clear" and self.fault is not None:
            extra["fault"] = self.fault
        return self.target, value, extra


# -- responses --------------------------------------------------------------------------


class CommandResult(BaseModel):
    command_id: int = Field(description="the command's id on the device link")
    result: Literal["applied", "rejected"]
    reason: str | None = Field(None, description="the board's result name when rejected, "
                               "e.g. 'busy'")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"command_id": 42, "result": "applied", "reason": None}]})


class DeviceSummaryOut(BaseModel):
    id: str
    board: str
    online: bool
    firmware_version: str | None
    simulated: bool = False

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"id": "sim0", "board": "sim", "online": True, "firmware_version": "0.1.0",
         "simulated": True}]})


class DeviceSnapshot(BaseModel):
    """Everything an operator reads about one device, in readable units (documentation only:
    the route serves the bridge's cached JSON bytes as they are)."""

    id: str
    board: str | None = None
    online: bool
    simulated: bool = False
    firmware_version: str | None = None
    boot_id: int | None = None
    power: dict[str, Any] = Field(description='{"state", "rails": [{"name", "state", '
                                  '"voltage_v", "current_a", "fault", "nominal_v", "parent"}]}')
    thermal: dict[str, Any] = Field(description='{"sensors": [...], "fans": [...], '
                                    '"zones": [...]}')
    gpio: list[dict[str, Any]] = Field(description='[{"name", "direction", "level"}]')
    security: dict[str, Any]
    interlocks: list[dict[str, Any]]
    loop: dict[str, Any] | None = None
    link: dict[str, Any] | None = None
    updated_at: float | None = Field(None, description="epoch seconds of the telemetry")

    model_config = ConfigDict(extra="allow")


class Event(BaseModel):
    id: int | None = Field(description="store id: the cursor for resuming")
    type: str = Field(description='e.g. "hardware.rail_state", "interlock.trip", "events.gap"')
    device: str | None
    time: float = Field(description="when the bridge received it, epoch seconds")
    boot_id: int | None = None
    seq: int | None = Field(None, description="the board's event sequence number")
    data: dict[str, Any] = Field(default_factory=dict)

    model_config = ConfigDict(extra="allow")


class EventsPage(BaseModel):
    events: list[Event]
    next_cursor: int | None = Field(
        description="pass as ?cursor= to get the next page; null when this is the last page")


class ErrorBody(BaseModel):
    code: str = Field(description="machine-readable, e.g. device_not_found, invalid_input")
    message: str
    details: dict[str, Any] | None = None

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"code": "target_not_found", "message": "no rail named 'p9v' on this board",
         "details": {"target": "p9v", "kind": "rail"}}]})


class RefusedBody(ErrorBody):
    """409: the board (an interlock) or the policy refused; also carries the verdict."""

    command_id: int | None = None
    result: Literal["rejected"] = "rejected"
    reason: str

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"code": "refused", "message": "rail on p3v3: refused by an interlock on the board",
         "command_id": 43, "result": "rejected", "reason": "rejected_by_interlock",
         "details": {"reason": "rejected_by_interlock", "command_id": 43}}]})


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    ready: bool
    store: bool | None = None
    devices: dict[str, Any] = Field(default_factory=dict)

    model_config = ConfigDict(extra="allow")
