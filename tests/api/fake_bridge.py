"""A fake ``BridgeService`` for the API tests: realistic devices, verdicts, errors, a store of
events and an async event/telemetry/state stream -- no serial link, no board.

Two devices by default:

* ``sim0`` -- a simulated board: rails ``main`` -> ``p3v3`` -> ``p1v8`` (parent chain),
  sensors ``cpu``/``inlet`` in zones ``cpu``/``chassis``, fans ``fan0``/``fan1``, GPIO ``led``
  (out), ``button`` (in), ``pg_main`` (out, owned by the firmware), interlocks ``overtemp``,
  ``lockout``; every security switch fitted.
* ``rack1`` -- a real (not simulated) board of the same layout, online.

Behaviour, like the bridge's: unknown names -> ``TargetNotFound`` listing the known ones;
out-of-range values -> ``InvalidInput``; simulator faults on a real board -> ``NotSupported``;
an offline device -> ``DeviceOffline``; rail/power on while the e-stop is asserted or an
interlock is latched -> ``Refused(reason="rejected_by_interlock")``; clearing an interlock
whose condition is still present -> ``Refused``. Idempotency keys: the first verdict per
(device, key) is replayed (``replayed=True``) for the same request; a different request with
the same key -> ``IdempotencyConflict``. ``script(device, outcome)`` forces the next
command's outcome (a BridgeError to raise, or a CommandVerdict to return).

Applied commands change the snapshot and publish an ``events`` message (stored, with an id)
and a ``state`` message to live subscribers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from metal.host.bridge.events import SubscriptionClosed
from metal.host.bridge.model import (
    BridgeError,
    CommandRequest,
    CommandVerdict,
    DeviceNotFound,
    DeviceOffline,
    DeviceSummary,
    IdempotencyConflict,
    InvalidInput,
    NotSupported,
    Refused,
    TargetNotFound,
)

SIM_FAULTS = ("sensor_stuck", "sensor_open", "sensor_short", "fan_stall", "rail_short",
              "pg_glitch", "tamper", "estop", "door", "clear")
SIM_TABLE = {"sensor_stuck": "sensors", "sensor_open": "sensors", "sensor_short": "sensors",
             "fan_stall": "fans", "rail_short": "rails", "pg_glitch": "rails"}


@dataclass
class FakeDevice:
    id: str
    board: str = "sim"
    simulated: bool = True
    online: bool = True
    firmware_version: str | None = "0.1.0"
    boot_id: int = 7
    rails: dict[str, str | None] = field(
        default_factory=lambda: {"main": None, "p3v3": "main", "p1v8": "p3v3"})
    sensors: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "cpu": {"zone": "cpu", "temp_c": 41.5, "warn_c": 80.0, "crit_c": 95.0},
        "inlet": {"zone": "chassis", "temp_c": 24.0, "warn_c": 45.0, "crit_c": 60.0}})
    fans: dict[str, str] = field(default_factory=lambda: {"fan0": "cpu", "fan1": "chassis"})
    zones: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "cpu": {"mode": "auto", "duty_pct": 35.0, "setpoint_c": 45.0},
        "chassis": {"mode": "auto", "duty_pct": 20.0, "setpoint_c": 30.0}})
    gpio: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "led": {"direction": "out", "owned": False, "level": 0},
        "button": {"direction": "in", "owned": False, "level": 1},
        "pg_main": {"direction": "out", "owned": True, "level": 1}})
    interlocks: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "overtemp": {"state": "ok", "latched": False, "action": "overheat", "active": False},
        "lockout": {"state": "ok", "latched": False, "action": "lockout", "active": False}})
    security: dict[str, Any] = field(default_factory=lambda: {
        "armed": False, "locked": True, "door_open": False, "tamper": False, "estop": False,
        "lockout": False,
        "fitted": {"tamper": True, "lock": True, "door": True, "estop": True}})
    rail_state: dict[str, str] = field(default_factory=dict)
    faults: list[tuple[str, str | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in self.rails:
            self.rail_state.setdefault(name, "on")

    def summary(self) -> DeviceSummary:
        return DeviceSummary(self.id, self.board, self.online, self.firmware_version,
                             self.simulated, self.boot_id,
                             "connected" if self.online else "disconnected")

    def power_state(self) -> str:
        states = set(self.rail_state.values())
        if states == {"on"}:
            return "on"
        if states == {"off"}:
            return "off"
        return "partial"

    def snapshot(self) -> dict[str, Any]:
        return {
            "id": self.id, "board": self.board, "online": self.online,
            "simulated": self.simulated, "firmware_version": self.firmware_version,
            "boot_id": self.boot_id,
            "power": {"state": self.power_state(), "rails": [
                {"name": n, "state": self.rail_state[n], "voltage_v": 3.3 if
                 self.rail_state[n] == "on" else 0.0, "current_a": 0.4, "fault": None,
                 "nominal_v": 3.3, "parent": p} for n, p in self.rails.items()]},
            "thermal": {
                "sensors": [{"name": n, "zone": s["zone"], "temp_c": s["temp_c"],
                             "status": "ok", "warn_c": s["warn_c"], "crit_c": s["crit_c"]}
                            for n, s in self.sensors.items()],
                "fans": [{"name": n, "zone": z, "duty_pct": self.zones[z]["duty_pct"],
                          "speed_rpm": 2000, "status": "ok"} for n, z in self.fans.items()],
                "zones": [{"name": n, **z} for n, z in self.zones.items()]},
            "gpio": [{"name": n, "direction": g["direction"], "level": g["level"]}
                     for n, g in self.gpio.items()],
            "security": self.security,
            "interlocks": [{"id": i, "name": n, "state": il["state"], "latched": il["latched"],
                            "action": il["action"]}
                           for i, (n, il) in enumerate(self.interlocks.items())],
            "updated_at": 1767225600.25,
        }


@dataclass
class ExecuteCall:
    device_id: str
    request: CommandRequest
    principal: str
    idempotency_key: str | None


def _event_type_matches(pattern: str, event_type: str) -> bool:
    if pattern in ("*", event_type):
        return True
    return pattern.endswith(".*") and event_type.startswith(pattern[:-1])


class FakeBridge:
    """Implements metal.host.bridge.model.BridgeService (structurally)."""

    def __init__(self) -> None:
        self.devices: dict[str, FakeDevice] = {
            "sim0": FakeDevice("sim0"),
            "rack1": FakeDevice("rack1", board="rp2040", simulated=False,
                                firmware_version="0.1.0+rp2040"),
        }
        self.calls: list[ExecuteCall] = []
        self.query_calls: list[dict[str, Any]] = []
        self.subscribe_calls: list[tuple[frozenset[str], str | None, int | None]] = []
        self.streams_closed = 0
        self.snapshot_calls = 0
        self.ready: dict[str, Any] = {"ready": True, "store": True,
                                      "devices": {"sim0": "connected", "rack1": "connected"}}
        self.device_metrics = (
            b"# HELP metal_temperature_celsius Sensor temperature\n"
            b"# TYPE metal_temperature_celsius gauge\n"
            b'metal_temperature_celsius{device="sim0",sensor="cpu"} 41.5\n')
        #: messages every new stream yields after its backlog (filtered like live ones)
        self.stream_script: list[dict[str, Any]] = []
        #: after the script: None = go live and wait; "end" = stop; "slow_consumer" = raise
        #: SubscriptionClosed; "closed_message" = yield {"topic": "closed", ...}
        self.stream_end: str | None = None
        self.events: list[dict[str, Any]] = []
        self._next_command_id = 100
        self._keys: dict[tuple[str, str], tuple[CommandRequest, CommandVerdict | BridgeError]] = {}
        self._scripted: dict[str, deque[CommandVerdict | BridgeError]] = {}
        self._snapshots: dict[str, bytes] = {}
        self._subscribers: list[tuple[frozenset[str], str | None, asyncio.Queue[Any]]] = []
        self._event_seq = 0
        t0 = 1767225600.0  # 2026-01-01T00:00:00Z
        for i, (dev, typ, data) in enumerate([
            ("sim0", "hardware.boot", {"source": None, "value": 0}),
            ("sim0", "hardware.rail_state", {"source": "main", "value": 2}),
            ("rack1", "hardware.boot", {"source": None, "value": 1}),
            ("sim0", "interlock.trip", {"source": "overtemp", "value": 96000}),
            ("sim0", "interlock.clear", {"source": "overtemp"}),
            ("rack1", "security.tamper", {"value": 1}),
            ("sim0", "events.gap", {"first_missing": 5, "last_missing": 6, "missing": 2}),
        ]):
            self._store_event(dev, typ, data, time_=t0 + 60 * i)

    # -- test controls ------------------------------------------------------------------------

    def script(self, device_id: str, outcome: CommandVerdict | BridgeError) -> None:
        self._scripted.setdefault(device_id, deque()).append(outcome)

    def changed(self, device_id: str) -> None:
        self._snapshots.pop(device_id, None)

    def _store_event(self, device: str, type_: str, data: dict[str, Any],
                     time_: float | None = None) -> dict[str, Any]:
        self._event_seq += 1
        event = {"id": len(self.events) + 1, "type": type_, "device": device,
                 "time": time_ if time_ is not None else time.time(),
                 "boot_id": self.devices[device].boot_id, "seq": self._event_seq, "data": data}
        self.events.append(event)
        return event

    async def publish(self, message: dict[str, Any]) -> None:
        """Hand a message to every live subscriber whose filters match (in the app's loop)."""
        for topics, device, queue in list(self._subscribers):
            if message["topic"] not in topics:
                continue
            if device is not None and message.get("device") != device:
                continue
            await queue.put(message)

    # -- BridgeService ---------------------------------------------------------------------

    def list_devices(self) -> list[DeviceSummary]:
        return [d.summary() for d in self.devices.values()]

    def _device(self, device_id: str) -> FakeDevice:
        dev = self.devices.get(device_id)
        if dev is None:
            raise DeviceNotFound(f"no device {device_id!r}", device=device_id)
        return dev

    def snapshot_json(self, device_id: str) -> bytes:
        self.snapshot_calls += 1
        cached = self._snapshots.get(device_id)
        if cached is None:
            # default separators on purpose: a re-serializing API would change the bytes
            cached = json.dumps(self._device(device_id).snapshot()).encode()
            self._snapshots[device_id] = cached
        return cached

    async def execute(self, device_id: str, request: CommandRequest, *, principal: str,
                      idempotency_key: str | None) -> CommandVerdict:
        self.calls.append(ExecuteCall(device_id, request, principal, idempotency_key))
        dev = self._device(device_id)
        if idempotency_key is not None:
            seen = self._keys.get((device_id, idempotency_key))
            if seen is not None:
                first_request, outcome = seen
                if first_request != request:
                    raise IdempotencyConflict(
                        f"Idempotency-Key {idempotency_key!r} was used for a different request",
                        key=idempotency_key)
                if isinstance(outcome, BridgeError):
                    raise outcome
                return dataclasses.replace(outcome, replayed=True)
        if not dev.online:
            raise DeviceOffline(f"device {device_id!r} is not connected", device=device_id)
        outcome: CommandVerdict | BridgeError
        scripted = self._scripted.get(device_id)
        if scripted:
            outcome = scripted.popleft()
        else:
            self._validate(dev, request)
            outcome = await self._apply(dev, request)
        if idempotency_key is not None and (
                isinstance(outcome, CommandVerdict) or isinstance(outcome, Refused)):
            self._keys[(device_id, idempotency_key)] = (request, outcome)
        if isinstance(outcome, BridgeError):
            raise outcome
        return outcome

    def _new_id(self) -> int:
        self._next_command_id += 1
        return self._next_command_id

    def _target(self, dev: FakeDevice, table: str, name: str | None, what: str) -> str:
        names = list(getattr(dev, table))
        if name is None:
            raise InvalidInput(f"a {what} name is required", field="target")
        if name not in names:
            raise TargetNotFound(f"no {what} named {name!r} on this board (known: "
                                 f"{', '.join(names)})", target=name, kind=what)
        return name

    def _validate(self, dev: FakeDevice, req: CommandRequest) -> None:
        kind = req.kind
        if kind == "rail":
            self._target(dev, "rails", req.target, "rail")
        elif kind == "zone":
            name = self._target(dev, "zones", req.target, "zone")
            if req.action == "manual" and not 0 <= float(req.value or 0) <= 100:
                raise InvalidInput(f"duty_pct must be between 0 and 100, got {req.value}",
                                   field="value")
            if req.action == "setpoint":
                crit = min(s["crit_c"] for s in dev.sensors.values() if s["zone"] == name)
                assert isinstance(req.value, float | int)
                if not 0 <= req.value < crit:
                    raise InvalidInput(
                        f"setpoint_c {req.value:g} for zone {name!r} must be below the lowest "
                        f"critical limit of its sensors, {crit:g} °C", field="value")
        elif kind == "gpio":
            name = self._target(dev, "gpio", req.target, "gpio line")
            line = dev.gpio[name]
            if line["direction"] != "out":
                raise InvalidInput(f"gpio line {name!r} is an input and cannot be written",
                                   field="target")
            if line["owned"]:
                raise InvalidInput(f"gpio line {name!r} is owned by the board firmware and "
                                   f"cannot be written", field="target")
        elif kind == "interlock":
            self._target(dev, "interlocks", req.target, "interlock")
        elif kind == "sim":
            if not dev.simulated:
                raise NotSupported("simulator faults exist only on simulated boards")
            if req.action not in SIM_FAULTS:
                raise InvalidInput(f"unknown fault {req.action!r}", field="action")
            table = SIM_TABLE.get(req.action)
            if table is not None:
                self._target(dev, table, req.target, table.rstrip("s"))
            elif req.action == "clear" and req.target is not None:
                fault_table = SIM_TABLE.get(str(req.extra.get("fault")))
                if fault_table is not None:
                    self._target(dev, fault_table, req.target, fault_table.rstrip("s"))

    def _refused(self, text: str, reason: str = "rejected_by_interlock") -> Refused:
        command_id = self._new_id()
        verdict = CommandVerdict(command_id, "rejected", reason)
        return Refused(f"{text}: refused by an interlock on the board", command_id=command_id,
                       reason=reason, verdict=verdict.to_dict(), replayed=False)

    async def _apply(self, dev: FakeDevice, req: CommandRequest) -> CommandVerdict | Refused:
        kind, action = req.kind, req.action
        blocked = dev.security["estop"] or any(il["latched"] for il in dev.interlocks.values())
        changes: list[tuple[str, str, Any, dict[str, Any]]] = []  # (event type, path, value, data)
        if kind in ("rail", "power") and action in ("on", "cycle") and blocked:
            return self._refused(f"{kind} {action} {req.target or ''}".strip())
        if kind == "rail":
            assert req.target is not None
            state = "off" if action == "off" else "on"
            dev.rail_state[req.target] = state
            changes.append(("hardware.rail_state", f"power.rails.{req.target}.state", state,
                            {"source": req.target, "value": state}))
        elif kind == "power":
            for name in dev.rails:
                dev.rail_state[name] = action
            changes.append(("hardware.power_state", "power.state", action, {"value": action}))
        elif kind == "zone":
            assert req.target is not None
            zone = dev.zones[req.target]
            if action == "setpoint":
                zone["setpoint_c"] = req.value
            else:
                zone["mode"] = action
                if action == "manual":
                    zone["duty_pct"] = req.value
            changes.append(("hardware.zone_mode", f"thermal.zones.{req.target}",
                            dict(zone), {"source": req.target, "value": zone["mode"]}))
        elif kind == "gpio":
            assert req.target is not None
            dev.gpio[req.target]["level"] = req.value
            changes.append(("hardware.gpio_change", f"gpio.{req.target}.level", req.value,
                            {"source": req.target, "value": req.value}))
        elif kind == "security":
            key, value = {"lock": ("locked", True), "unlock": ("locked", False),
                          "arm": ("armed", True), "disarm": ("armed", False),
                          "clear_tamper": ("tamper", False)}[action]
            dev.security[key] = value
            changes.append((f"security.{key}", f"security.{key}", value, {"value": value}))
        elif kind == "interlock":
            assert req.target is not None
            il = dev.interlocks[req.target]
            if il["active"]:
                return self._refused(f"interlock clear {req.target}")
            il.update(state="ok", latched=False)
            changes.append(("interlock.clear", f"interlocks.{req.target}.latched", False,
                            {"source": req.target}))
        elif kind == "estop":
            dev.security["estop"] = action == "assert"
            if action == "assert":
                for name in dev.rails:
                    dev.rail_state[name] = "off"
            changes.append(("interlock.estop", "security.estop", action == "assert",
                            {"value": 1 if action == "assert" else 0}))
        elif kind == "board":
            dev.boot_id += 1
            changes.append(("hardware.boot", "boot_id", dev.boot_id, {"value": 1}))
        elif kind == "sim":
            if action == "clear":
                dev.faults.clear()
            else:
                dev.faults.append((action, req.target))
            changes.append(("sim.fault", "sim.faults", list(dev.faults),
                            {"kind": action, "target": req.target, "value": req.value}))
        self.changed(dev.id)
        verdict = CommandVerdict(self._new_id(), "applied")
        for event_type, path, value, data in changes:
            event = self._store_event(dev.id, event_type, data)
            await self.publish({"topic": "events", **event})
            await self.publish({"topic": "state", "device": dev.id, "path": path,
                                "value": value})
        return verdict

    async def subscribe(self, topics: frozenset[str], device_id: str | None,
                        resume_from: int | None) -> AsyncIterator[dict[str, Any]]:
        self.subscribe_calls.append((topics, device_id, resume_from))
        queue: asyncio.Queue[Any] = asyncio.Queue()
        entry = (topics, device_id, queue)
        self._subscribers.append(entry)
        last_id = resume_from
        try:
            if resume_from is not None and "events" in topics:
                for event in self.events:
                    if event["id"] > resume_from and device_id in (None, event["device"]):
                        last_id = event["id"]
                        yield {"topic": "events", **event}
            for message in self.stream_script:
                if message["topic"] in topics and device_id in (None, message.get("device")):
                    if message["topic"] == "events":
                        last_id = message["id"]
                    yield message
            if self.stream_end == "end":
                return
            if self.stream_end == "slow_consumer":
                raise SubscriptionClosed("slow_consumer", last_id)
            if self.stream_end == "closed_message":
                yield {"topic": "closed", "reason": "slow_consumer", "last_id": last_id}
                return
            while True:
                yield await queue.get()
        finally:
            self._subscribers.remove(entry)
            self.streams_closed += 1

    async def query_events(self, *, device_id: str | None, type: str | None,  # noqa: A002
                           since_id: int | None, since_time: float | None,
                           limit: int) -> tuple[list[dict[str, Any]], int | None]:
        self.query_calls.append({"device_id": device_id, "type": type, "since_id": since_id,
                                 "since_time": since_time, "limit": limit})
        matching = [
            e for e in self.events
            if (device_id is None or e["device"] == device_id)
            and (type is None or _event_type_matches(type, e["type"]))
            and (since_id is None or e["id"] > since_id)
            and (since_time is None or e["time"] >= since_time)
        ]
        page = matching[:limit]
        next_cursor = page[-1]["id"] if len(matching) > limit else None
        return page, next_cursor

    def readiness(self) -> dict[str, Any]:
        return self.ready

    def metrics_text(self) -> bytes:
        return self.device_metrics
