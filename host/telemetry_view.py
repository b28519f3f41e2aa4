"""Host-side decoding of the board's self-description and telemetry into readable units.

The board speaks scaled integers (centi-°C, per-mille, mV, mA) and small enums; the
operator and the API want °C, %, V, A and names. This module is the one place that
converts, so the console, the bridge and scripts agree:

* :func:`decode_describe` -- DESCRIBE parts (protocol.md §4) -> :class:`Layout`;
* :func:`decode_telemetry` -- one TELEMETRY payload (§6) + a Layout -> a dict with
  ``temp_c``, ``duty_pct``, ``speed_rpm``, ``voltage_v``, ``current_a`` and state names;
* :func:`decode_hello`, :func:`decode_event`, :func:`decode_result`, :func:`decode_log`
  -- the other board -> host messages, with numbers turned into names.

Every function is pure (no I/O, no clocks) and accepts payloads as the host codec
decodes them (``metal.host.codec.decode_payload``: dicts with int keys, lists, bytes).
Names of enums come from ``metal.core.proto``; state names are lowercase, as the
bridge uses them (``"seq_on"``, ``"stalled"``, ``"rejected_by_interlock"``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from metal.core import proto
from metal.core.describe import (
    SEC_FANS,
    SEC_GPIO,
    SEC_INTERLOCKS,
    SEC_LIMITS,
    SEC_RAILS,
    SEC_SECURITY,
    SEC_SENSORS,
    SEC_ZONES,
)
from metal.core.telemetry import TEMP_NONE

__all__ = [
    "EVENT_KINDS",
    "FAN_STATES",
    "LOG_LEVELS",
    "MESSAGE_TYPES",
    "OPS",
    "POWER_STATES",
    "RAIL_FAULT_REASONS",
    "RAIL_STATES",
    "RESULT_CODES",
    "SENSOR_STATES",
    "STATUS_FLAGS",
    "Layout",
    "ZONE_MODES",
    "TelemetryError",
    "decode_describe",
    "decode_event",
    "decode_hello",
    "decode_log",
    "decode_result",
    "decode_telemetry",
    "event_value_name",
    "flag_names",
    "source_name",
]


# -- names ------------------------------------------------------------------------


def _names(prefix: str, skip: tuple[str, ...] = ()) -> dict[int, str]:
    """``{value: lowercase name}`` of the proto constants starting with ``prefix``."""
    out: dict[int, str] = {}
    for name, value in vars(proto).items():
        if name.startswith(prefix) and name not in skip and type(value) is int:
            out.setdefault(value, name[len(prefix):].lower())
    return out


MESSAGE_TYPES: Final = {v: n.upper() for v, n in _names("T_", ("T_MAX",)).items()}
EVENT_KINDS: Final = _names("EV_")
OPS: Final = _names("OP_")
RESULT_CODES: Final = _names("R_")
RAIL_FAULT_REASONS: Final = _names("RF_")
STATUS_FLAGS: Final = _names("STF_")  # bit value -> name
# Spelled out rather than derived: these are the API's words (the bridge matches them).
SENSOR_STATES: Final = ("ok", "stale", "open", "short", "out_of_range")
FAN_STATES: Final = ("ok", "stalled", "spinning_up", "off")
RAIL_STATES: Final = ("off", "seq_on", "on", "seq_off", "fault")
POWER_STATES: Final = ("off", "seq_on", "on", "seq_off", "fault", "partial")
ZONE_MODES: Final = ("auto", "manual", "failsafe", "max")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
SENSOR_KINDS: Final = {1: "ntc", 2: "tmp117", 3: "lm75"}  # metal.core.config SENSOR_*
ACTIONS: Final = ("none", "fans_max", "shed_rail", "power_down", "lockout", "overheat")
SAFE_ACTIONS: Final = ("hold", "power_down")
COMPARISONS: Final = {1: ">=", 2: "<=", 3: "!="}
SIGNAL_KINDS: Final = {1: "temp", 2: "sensor_state", 3: "fan_rpm", 4: "fan_state",
                       5: "rail_state", 6: "rail_fault", 7: "global", 8: "fan_stalled"}
GLOBAL_SIGNALS: Final = ("estop", "tamper", "door_open", "host_lost", "loop_fault", "max_temp")

SECTION_NAMES: Final = {
    SEC_LIMITS: "limits",
    SEC_RAILS: "rails",
    SEC_SENSORS: "sensors",
    SEC_FANS: "fans",
    SEC_ZONES: "zones",
    SEC_GPIO: "gpio",
    SEC_INTERLOCKS: "interlocks",
    SEC_SECURITY: "security",
}


def _name(table: Any, value: Any) -> str:
    """``table[value]`` or ``"unknown(<value>)"`` (a newer board may send more values)."""
    try:
        if isinstance(table, Mapping):
            return str(table[value])
        if type(value) is int and 0 <= value < len(table):
            return str(table[value])
    except (KeyError, TypeError):
        pass
    return f"unknown({value})"


def flag_names(bits: int, table: Mapping[int, str] = STATUS_FLAGS) -> list[str]:
    """Names of the set bits of ``bits`` (lowest first); unknown bits as ``bit<n>``."""
    out: list[str] = []
    n = 0
    while bits >> n:
        b = 1 << n
        if bits & b:
            out.append(table.get(b, f"bit{n}"))
        n += 1
    return out


# -- DESCRIBE ---------------------------------------------------------------------


def _c(centi_or_milli: Any, div: int) -> float | None:
    return None if type(centi_or_milli) is not int else round(centi_or_milli / div, 3)


def _field(item: list[Any], i: int) -> Any:
    return item[i] if i < len(item) else None


def _pct(permille: Any) -> float | None:
    return None if type(permille) is not int else round(permille / 10, 1)


@dataclass
class Layout:
    """What a board told us about itself. Lists hold one dict per item, in the
    board's table order (telemetry and event sources index into them)."""

    parts_total: int = 0
    parts_seen: set[int] = field(default_factory=set)
    limits: dict[str, Any] = field(default_factory=dict)
    rails: list[dict[str, Any]] = field(default_factory=list)
    sensors: list[dict[str, Any]] = field(default_factory=list)
    fans: list[dict[str, Any]] = field(default_factory=list)
    zones: list[dict[str, Any]] = field(default_factory=list)
    gpio: list[dict[str, Any]] = field(default_factory=list)
    interlocks: list[dict[str, Any]] = field(default_factory=list)
    security: dict[str, Any] = field(default_factory=dict)
    unknown_sections: dict[int, list[Any]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every part 0..parts_total-1 arrived."""
        return self.parts_total > 0 and len(self.parts_seen) >= self.parts_total

    @property
    def counts(self) -> tuple[int, int, int]:
        """(sensors, fans, rails): what the TELEMETRY analog block is sized by."""
        return len(self.sensors), len(self.fans), len(self.rails)

    def analog_len(self) -> int:
        s, f, r = self.counts
        return 2 * (s + 2 * f + 2 * r) + (s + f + r + 1) // 2

    def summary(self) -> str:
        """One line: counts and names, e.g. for a console."""
        bits = []
        for key in ("sensors", "fans", "rails", "zones", "gpio", "interlocks"):
            items = getattr(self, key)
            bits.append(f"{len(items)} {key}")
        text = ", ".join(bits)
        if not self.complete:
            text += f" (parts {len(self.parts_seen)}/{self.parts_total or '?'})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "complete": self.complete,
            "limits": dict(self.limits),
            "security": dict(self.security),
            "rails": [dict(x) for x in self.rails],
            "sensors": [dict(x) for x in self.sensors],
            "fans": [dict(x) for x in self.fans],
            "zones": [dict(x) for x in self.zones],
            "gpio": [dict(x) for x in self.gpio],
            "interlocks": [dict(x) for x in self.interlocks],
        }


def _limits(item: list[Any]) -> dict[str, Any]:
    keys = ("tick_us", "heartbeat_timeout_ms", "stale_ticks", "overheat_timer_ms",
            "telemetry_every", "overrun_limit")
    out: dict[str, Any] = {k: _field(item, i + 1) for i, k in enumerate(keys)}
    act = _field(item, 7)
    out["host_lost_action"] = None if act is None else _name(SAFE_ACTIONS, act)
    return out


def _rail(item: list[Any]) -> dict[str, Any]:
    return {
        "name": item[0],
        "nominal_v": _c(_field(item, 1), 1000),
        "parent": _field(item, 2),  # index; resolved to a name once all rails are known
        "pg_timeout_ms": _field(item, 3),
        "overcurrent_a": _c(_field(item, 4), 1000),
    }


def _sensor(item: list[Any]) -> dict[str, Any]:
    kind = _field(item, 1)
    return {
        "name": item[0],
        "kind": None if kind is None else _name(SENSOR_KINDS, kind),
        "zone": _field(item, 2),
        "warn_c": _c(_field(item, 3), 1000),
        "crit_c": _c(_field(item, 4), 1000),
        "min_c": _c(_field(item, 5), 1000),
        "max_c": _c(_field(item, 6), 1000),
    }


def _fan(item: list[Any]) -> dict[str, Any]:
    return {
        "name": item[0],
        "zone": _field(item, 1),
        "max_rpm": _field(item, 2),
        "stall_rpm": _field(item, 3),
        "min_duty_pct": _pct(_field(item, 4)),
    }


def _zone(item: list[Any]) -> dict[str, Any]:
    return {
        "name": item[0],
        "setpoint_c": _c(_field(item, 1), 1000),
        "min_duty_pct": _pct(_field(item, 2)),
        "max_duty_pct": _pct(_field(item, 3)),
        "failsafe_duty_pct": _pct(_field(item, 4)),
    }


def _gpio(item: list[Any]) -> dict[str, Any]:
    d = _field(item, 1)
    p = _field(item, 2)
    return {
        "name": item[0],
        "direction": None if d is None else _name(("in", "out"), d),
        "pull": None if p is None else _name(("none", "up", "down"), p),
        "owned": bool(_field(item, 3)),
    }


def _interlock(item: list[Any]) -> dict[str, Any]:
    cmp_ = _field(item, 3)
    act = _field(item, 8)
    kind = _field(item, 1)
    return {
        "name": item[0],
        "signal": None if kind is None else _name(SIGNAL_KINDS, kind),
        "signal_index": _field(item, 2),
        "cmp": None if cmp_ is None else _name(COMPARISONS, cmp_),
        "threshold": _field(item, 4),
        "hysteresis": _field(item, 5),
        "delay_ticks": _field(item, 6),
        "latch": bool(_field(item, 7)),
        "action": None if act is None else _name(ACTIONS, act),
        "target": _field(item, 9),
    }


def _security(item: list[Any]) -> dict[str, Any]:
    act = _field(item, 5)
    return {
        "tamper": bool(_field(item, 1)),
        "lock": bool(_field(item, 2)),
        "door": bool(_field(item, 3)),
        "estop": bool(_field(item, 4)),
        "tamper_action": None if act is None else _name(ACTIONS, act),
    }


_ITEM_DECODERS: Final = {
    SEC_RAILS: ("rails", _rail),
    SEC_SENSORS: ("sensors", _sensor),
    SEC_FANS: ("fans", _fan),
    SEC_ZONES: ("zones", _zone),
    SEC_GPIO: ("gpio", _gpio),
    SEC_INTERLOCKS: ("interlocks", _interlock),
}


def _as_payload(part: Any) -> Any:
    if isinstance(part, (bytes, bytearray, memoryview)):
        from metal.host.codec import decode_payload

        return decode_payload(bytes(part))
    return part


def decode_describe(parts: Iterable[Any]) -> Layout:
    """Build a :class:`Layout` from DESCRIBE payloads (decoded maps or raw CBOR bytes).

    Parts may come in any order and repeat (a reconnect re-sends them); they are
    applied in part-index order and a repeated index counts once. Items are arrays
    whose first element is the name; missing trailing fields decode to None, extra
    fields are ignored, unknown sections are kept in ``unknown_sections``. A part
    that is not a map with keys 0..3 raises ValueError.
    """
    by_index: dict[int, Mapping[int, Any]] = {}
    total = 0
    for raw in parts:
        p = _as_payload(raw)
        if not isinstance(p, Mapping) or not all(k in p for k in (0, 1, 2, 3)):
            raise ValueError(f"DESCRIBE part is not a map with keys 0..3: {p!r}")
        idx, n = p[proto.DESC_PART], p[proto.DESC_PARTS]
        if type(idx) is not int or type(n) is not int or not 0 <= idx < n:
            raise ValueError(f"DESCRIBE part index {idx!r} of {n!r} is out of range")
        if not isinstance(p[proto.DESC_ITEMS], list):
            raise ValueError(f"DESCRIBE part {idx}: items are not an array")
        by_index[idx] = p
        total = max(total, n)
    lay = Layout(parts_total=total, parts_seen=set(by_index))
    for idx in sorted(by_index):
        p = by_index[idx]
        sec = p[proto.DESC_SECTION]
        for item in p[proto.DESC_ITEMS]:
            if not isinstance(item, list) or not item or not isinstance(item[0], str):
                raise ValueError(f"DESCRIBE part {idx}: item {item!r} is not [name, ...]")
            if sec == SEC_LIMITS:
                lay.limits = _limits(item)
            elif sec == SEC_SECURITY:
                lay.security = _security(item)
            elif sec in _ITEM_DECODERS:
                key, dec = _ITEM_DECODERS[sec]
                getattr(lay, key).append(dec(item))
            else:
                lay.unknown_sections.setdefault(sec, []).append(item)
    # indices -> names, now that every table is known
    for r in lay.rails:
        par = r["parent"]
        r["parent"] = lay.rails[par]["name"] if type(par) is int and 0 <= par < len(lay.rails) else None
    for tbl in (lay.sensors, lay.fans):
        for x in tbl:
            z = x["zone"]
            x["zone"] = lay.zones[z]["name"] if type(z) is int and 0 <= z < len(lay.zones) else z
    return lay


# -- TELEMETRY --------------------------------------------------------------------


class TelemetryError(ValueError):
    """A TELEMETRY payload that does not fit the layout (or is not telemetry)."""


def _u16(b: bytes, p: int) -> int:
    return b[p] | (b[p + 1] << 8)


def _pos(payload: list[Any], i: int) -> Any:
    return payload[i] if i < len(payload) else None


def decode_telemetry(layout: Layout, payload: Any) -> dict[str, Any]:
    """One TELEMETRY payload in readable units.

    Returns::

        {"sensors": [{"name", "temp_c" (None without a valid reading), "state"}],
         "fans": [{"name", "duty_pct", "speed_rpm", "state"}],
         "rails": [{"name", "state", "voltage_v", "current_a"}],
         "gpio": {"levels": int, "high": [names of lines at 1]},
         "interlocks": {"tripped": [names], "latched": [names]},
         "status": [flag names], "status_bits": int,
         "power_state": name, "tick_us": int, "tick_max_us": int,
         "overruns": int, "queue_overflows": int}

    Positions the board did not send are None; trailing positions this host does
    not know are ignored. Raises TelemetryError when the analog block is shorter
    than the layout needs.
    """
    if not isinstance(payload, list) or not payload or not isinstance(payload[0], (bytes, bytearray)):
        raise TelemetryError("TELEMETRY payload is not an array starting with a byte string")
    b = bytes(payload[0])
    ns, nf, nr = layout.counts
    need = layout.analog_len()
    if len(b) < need:
        raise TelemetryError(
            f"TELEMETRY analog block is {len(b)} bytes; the layout ({ns} sensors, {nf} fans, "
            f"{nr} rails) needs {need}"
        )
    p = 0
    temps = []
    for _ in range(ns):
        v = _u16(b, p)
        p += 2
        temps.append(None if v == TEMP_NONE else (v - 0x10000 if v & 0x8000 else v) / 100)
    duty = [_u16(b, p + 2 * i) for i in range(nf)]
    p += 2 * nf
    rpm = [_u16(b, p + 2 * i) for i in range(nf)]
    p += 2 * nf
    mv = [_u16(b, p + 2 * i) for i in range(nr)]
    p += 2 * nr
    ma = [_u16(b, p + 2 * i) for i in range(nr)]
    p += 2 * nr
    nibbles = []
    for i in range(ns + nf + nr):
        byte = b[p + i // 2]
        nibbles.append(byte & 0x0F if i % 2 == 0 else byte >> 4)

    sensors = [
        {"name": s["name"], "temp_c": temps[i], "state": _name(SENSOR_STATES, nibbles[i])}
        for i, s in enumerate(layout.sensors)
    ]
    fans = [
        {
            "name": f["name"],
            "duty_pct": round(duty[i] / 10, 1),
            "speed_rpm": rpm[i],
            "state": _name(FAN_STATES, nibbles[ns + i]),
        }
        for i, f in enumerate(layout.fans)
    ]
    rails = [
        {
            "name": r["name"],
            "state": _name(RAIL_STATES, nibbles[ns + nf + i]),
            "voltage_v": mv[i] / 1000,
            "current_a": ma[i] / 1000,
        }
        for i, r in enumerate(layout.rails)
    ]
    levels = _pos(payload, 1)
    tripped = _pos(payload, 2)
    latched = _pos(payload, 3)
    status = _pos(payload, 4)
    power = _pos(payload, 5)
    return {
        "sensors": sensors,
        "fans": fans,
        "rails": rails,
        "gpio": {
            "levels": levels,
            "high": _bit_names(levels, layout.gpio, "line"),
        },
        "interlocks": {
            "tripped": _bit_names(tripped, layout.interlocks, "interlock"),
            "latched": _bit_names(latched, layout.interlocks, "interlock"),
        },
        "status": flag_names(status) if type(status) is int else [],
        "status_bits": status,
        "power_state": None if power is None else _name(POWER_STATES, power),
        "tick_us": _pos(payload, 6),
        "tick_max_us": _pos(payload, 7),
        "overruns": _pos(payload, 8),
        "queue_overflows": _pos(payload, 9),
    }


def _bit_names(bits: Any, table: list[dict[str, Any]], what: str) -> list[str]:
    if type(bits) is not int:
        return []
    out = []
    n = 0
    while bits >> n:
        if bits & (1 << n):
            out.append(table[n]["name"] if n < len(table) else f"{what}{n}")
        n += 1
    return out


# -- HELLO / EVENT / RESULT / LOG ------------------------------------------------------


def decode_hello(payload: Mapping[int, Any]) -> dict[str, Any]:
    """A HELLO map (either direction) with named keys; absent keys are left out."""
    keys = {
        proto.HELLO_PROTO_MIN: "proto_min",  # host HELLO: key 0 is the chosen proto
        proto.HELLO_PROTO_MAX: "proto_max",
        proto.HELLO_BOOT_ID: "boot_id",
        proto.HELLO_SESSION: "session",
        proto.HELLO_BOARD: "board",
        proto.HELLO_FW_VERSION: "fw_version",
        proto.HELLO_UID: "uid",
        proto.HELLO_POLICY_VERSION: "policy_version",
        proto.HELLO_DESCRIBE_PARTS: "describe_parts",
        proto.HELLO_REASON: "reason",
    }
    return {name: payload[k] for k, name in keys.items() if k in payload}


# source table per event kind: which Layout list the event's source indexes
_EVENT_SOURCE: Final = {
    proto.EV_RAIL_STATE: "rails",
    proto.EV_SENSOR_STATE: "sensors",
    proto.EV_FAN_STATE: "fans",
    proto.EV_ZONE_MODE: "zones",
    proto.EV_INTERLOCK_TRIP: "interlocks",
    proto.EV_INTERLOCK_CLEAR: "interlocks",
    proto.EV_OVERHEAT_START: "sensors",
    proto.EV_GPIO_CHANGE: "gpio",
}
_EVENT_VALUE: Final = {
    proto.EV_BOOT: ("power_on", "commanded"),  # reset cause
    proto.EV_RAIL_STATE: RAIL_STATES,
    proto.EV_POWER_STATE: POWER_STATES,
    proto.EV_SENSOR_STATE: SENSOR_STATES,
    proto.EV_FAN_STATE: FAN_STATES,
    proto.EV_ZONE_MODE: ZONE_MODES,
}


# kinds whose source is a fixed list rather than a board table (docs/describe.md)
_EVENT_FIXED_SOURCE: Final = {
    proto.EV_SAFE_STATE: ("host_lost", "loop_fault", "tamper"),
}


def source_name(layout: Layout | None, kind: int, source: Any) -> str | None:
    """The name of an event's source (rail, sensor, fan, zone, interlock, gpio line, or
    the reason of a safe state) if the kind has one and the index is known; else None."""
    fixed = _EVENT_FIXED_SOURCE.get(kind)
    if fixed is not None:
        return fixed[source] if type(source) is int and 0 <= source < len(fixed) else None
    key = _EVENT_SOURCE.get(kind)
    if layout is None or key is None or type(source) is not int:
        return None
    table = getattr(layout, key)
    return table[source]["name"] if 0 <= source < len(table) else None


def event_value_name(kind: int, value: Any) -> str | None:
    """The name of an event's value for kinds whose value is a state; else None."""
    table = _EVENT_VALUE.get(kind)
    return None if table is None else _name(table, value)


def decode_event(layout: Layout | None, payload: Mapping[int, Any]) -> dict[str, Any]:
    """An EVENT map with names: ``seq, kind, source, source_name, value, value_name,
    board_ms, aux`` (+ ``reason`` for a rail fault, ``value_c`` for an overheat)."""
    kind = payload.get(proto.EK_KIND)
    src = payload.get(proto.EK_SOURCE)
    val = payload.get(proto.EK_VALUE)
    aux = payload.get(proto.EK_AUX)
    out: dict[str, Any] = {
        "seq": payload.get(proto.EK_SEQ),
        "kind": _name(EVENT_KINDS, kind),
        "source": src,
        "source_name": source_name(layout, kind, src) if type(kind) is int else None,
        "value": val,
        "value_name": event_value_name(kind, val) if type(kind) is int else None,
        "board_ms": payload.get(proto.EK_BOARD_MS),
        "aux": aux,
    }
    if kind == proto.EV_RAIL_STATE and type(aux) is int and aux:
        out["reason"] = _name(RAIL_FAULT_REASONS, aux)
    if kind == proto.EV_OVERHEAT_START and type(val) is int:
        out["value_c"] = val / 1000
    return out


def decode_result(payload: Mapping[int, Any]) -> dict[str, Any]:
    """A RESULT map: ``id, code, result`` (name) and ``value`` when present."""
    code = payload.get(proto.RES_CODE)
    out = {"id": payload.get(proto.RES_ID), "code": code, "result": _name(RESULT_CODES, code)}
    if proto.RES_VALUE in payload:
        out["value"] = payload[proto.RES_VALUE]
    return out


def decode_log(payload: Mapping[int, Any]) -> dict[str, Any]:
    lvl = payload.get(proto.LOG_LEVEL)
    return {"level": _name(LOG_LEVELS, lvl), "text": payload.get(proto.LOG_TEXT)}
