"""The device snapshot: one JSON document with everything an operator reads.

:func:`build_snapshot` is pure: it combines the board's layout (DESCRIBE), the last decoded
telemetry (``metal.host.telemetry_view.decode_telemetry``), what the session learned from
events (zone modes, setpoints, rail fault reasons) and the link statistics into a dict in
readable units with suffixed names (``temp_c``, ``voltage_v``, ``current_a``, ``duty_pct``,
``speed_rpm``); the board's scaled integers never appear. :class:`SnapshotCache` keeps that
dict together with its JSON bytes, serialized once per update, so serving ``GET`` costs a
reference copy (the bridge serves thousands of requests per second from it).

Shape::

    {"id", "board", "online", "simulated", "firmware_version", "boot_id",
     "power": {"state", "rails": [{"name", "state", "voltage_v", "current_a", "fault",
                                   "nominal_v", "parent"}]},
     "thermal": {"sensors": [{"name", "zone", "temp_c", "status", "warn_c", "crit_c"}],
                 "fans": [{"name", "zone", "duty_pct", "speed_rpm", "status"}],
                 "zones": [{"name", "mode", "duty_pct", "setpoint_c"}]},
     "gpio": [{"name", "direction", "level"}],
     "security": {"armed", "locked", "door_open", "tamper", "estop", "lockout",
                  "fitted": {"tamper", "lock", "door", "estop"}},
     "interlocks": [{"id", "name", "state", "latched", "action"}],
     "loop": {"tick_us", "tick_max_us", "tick_budget_us", "overruns", "queue_overflows",
              "fault", "host_lost", "overheat_timer", "failsafe", "status"},
     "link": {...},
     "updated_at"}

Rules: sensor ``status`` is the sensor state when it is not ``ok`` (``stale``, ``open``,
``short``, ``out_of_range``), else ``critical`` / ``warning`` / ``ok`` against the sensor's
limits; a rail's ``fault`` is the last fault reason (``overcurrent``, ``pg_timeout`` ...)
while its state is ``fault``, else null; an interlock's ``state`` is ``tripped`` or ``ok``;
a zone's ``duty_pct`` is the highest duty among its fans. Values the board has not reported
yet are null. ``updated_at`` is the wall-clock time (epoch s) of the telemetry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from metal.host.telemetry_view import Layout

__all__ = ["SnapshotCache", "build_snapshot", "encode_snapshot"]


def _sensor_status(state: str | None, temp: float | None, warn: Any, crit: Any) -> str | None:
    if state is None:
        return None
    if state != "ok":
        return state
    if temp is not None:
        if isinstance(crit, (int, float)) and temp >= crit:
            return "critical"
        if isinstance(warn, (int, float)) and temp >= warn:
            return "warning"
    return "ok"


def _at(seq: Sequence[dict[str, Any]] | None, i: int) -> dict[str, Any]:
    if seq is None or i >= len(seq):
        return {}
    return seq[i]


def build_snapshot(
    *,
    device_id: str,
    board: str | None,
    online: bool,
    simulated: bool,
    firmware_version: str | None,
    boot_id: int | None,
    layout: Layout | None,
    telemetry: Mapping[str, Any] | None,
    zone_modes: Sequence[str | None] = (),
    zone_setpoints_c: Sequence[float | None] = (),
    rail_faults: Sequence[str | None] = (),
    link: Mapping[str, Any] | None = None,
    updated_at: float | None = None,
) -> dict[str, Any]:
    """The snapshot dict (see the module docstring)."""
    lay = layout if layout is not None else Layout()
    tel: Mapping[str, Any] = telemetry or {}
    t_rails = tel.get("rails")
    t_sensors = tel.get("sensors")
    t_fans = tel.get("fans")

    rails = []
    for i, r in enumerate(lay.rails):
        t = _at(t_rails, i)
        state = t.get("state")
        fault = None
        if state == "fault":
            fault = (rail_faults[i] if i < len(rail_faults) else None) or "fault"
        rails.append({
            "name": r["name"],
            "state": state,
            "voltage_v": t.get("voltage_v"),
            "current_a": t.get("current_a"),
            "fault": fault,
            "nominal_v": r.get("nominal_v"),
            "parent": r.get("parent"),
        })

    sensors = []
    for i, s in enumerate(lay.sensors):
        t = _at(t_sensors, i)
        temp = t.get("temp_c")
        sensors.append({
            "name": s["name"],
            "zone": s.get("zone"),
            "temp_c": temp,
            "status": _sensor_status(t.get("state"), temp, s.get("warn_c"), s.get("crit_c")),
            "warn_c": s.get("warn_c"),
            "crit_c": s.get("crit_c"),
        })

    fans = []
    zone_duty: dict[Any, float] = {}
    for i, f in enumerate(lay.fans):
        t = _at(t_fans, i)
        duty = t.get("duty_pct")
        if isinstance(duty, (int, float)):
            z = f.get("zone")
            zone_duty[z] = max(zone_duty.get(z, 0.0), float(duty))
        fans.append({
            "name": f["name"],
            "zone": f.get("zone"),
            "duty_pct": duty,
            "speed_rpm": t.get("speed_rpm"),
            "status": t.get("state"),
        })

    zones = []
    for i, z in enumerate(lay.zones):
        mode = zone_modes[i] if i < len(zone_modes) else None
        sp = zone_setpoints_c[i] if i < len(zone_setpoints_c) else None
        zones.append({
            "name": z["name"],
            "mode": mode,
            "duty_pct": zone_duty.get(z["name"]) if telemetry else None,
            "setpoint_c": sp if sp is not None else z.get("setpoint_c"),
        })

    gpio_t = tel.get("gpio") or {}
    levels = gpio_t.get("levels")
    gpio = [
        {
            "name": g["name"],
            "direction": g.get("direction"),
            "level": ((levels >> i) & 1) if isinstance(levels, int) else None,
        }
        for i, g in enumerate(lay.gpio)
    ]

    il_t = tel.get("interlocks") or {}
    tripped = set(il_t.get("tripped") or ())
    latched = set(il_t.get("latched") or ())
    interlocks = [
        {
            "id": i,
            "name": il["name"],
            "state": (("tripped" if il["name"] in tripped else "ok") if telemetry else None),
            "latched": (il["name"] in latched) if telemetry else None,
            "action": il.get("action"),
        }
        for i, il in enumerate(lay.interlocks)
    ]

    status = list(tel.get("status") or ())
    flags = set(status)
    have = bool(telemetry)

    def flag(name: str) -> bool | None:
        return (name in flags) if have else None

    fitted = lay.security or {}
    security = {
        "armed": flag("armed"),
        "locked": flag("locked"),
        "door_open": flag("door_open"),
        "tamper": flag("tamper"),
        "estop": flag("estop"),
        "lockout": flag("lockout"),
        "fitted": {k: bool(fitted.get(k)) for k in ("tamper", "lock", "door", "estop")},
    }
    tick_budget = lay.limits.get("tick_us") if lay.limits else None
    loop = {
        "tick_us": tel.get("tick_us"),
        "tick_max_us": tel.get("tick_max_us"),
        "tick_budget_us": tick_budget,
        "overruns": tel.get("overruns"),
        "queue_overflows": tel.get("queue_overflows"),
        "fault": flag("loop_fault"),
        "host_lost": flag("host_lost"),
        "overheat_timer": flag("overheat"),
        "failsafe": flag("failsafe"),
        "status": status,
    }
    return {
        "id": device_id,
        "board": board,
        "online": online,
        "simulated": simulated,
        "firmware_version": firmware_version,
        "boot_id": boot_id,
        "power": {"state": tel.get("power_state"), "rails": rails},
        "thermal": {"sensors": sensors, "fans": fans, "zones": zones},
        "gpio": gpio,
        "security": security,
        "interlocks": interlocks,
        "loop": loop,
        "link": dict(link or {}),
        "updated_at": updated_at,
    }


def encode_snapshot(snapshot: Mapping[str, Any]) -> bytes:
    """Compact JSON bytes (UTF-8, no NaN: the board cannot produce one)."""
    return json.dumps(snapshot, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


class SnapshotCache:
    """The latest snapshot of one device and its pre-serialized JSON.

    ``json`` is replaced as a whole on :meth:`update` (one attribute store), so a reader on
    the loop or in another thread always sees a complete document.
    """

    __slots__ = ("data", "json", "version")

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.json: bytes = b"{}"
        self.version = 0

    def update(self, snapshot: dict[str, Any]) -> bytes:
        raw = encode_snapshot(snapshot)
        self.data = snapshot
        self.json = raw
        self.version += 1
        return raw
