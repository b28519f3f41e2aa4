"""Reported versus desired state of a device, and the drift between them.

* :class:`ReportedState` -- what the board says now, fed from decoded telemetry and
  events. In memory only (the board re-reports after a restart); a ``version`` counter
  increases on every change so readers can tell a snapshot is stale.
* :class:`DesiredState` -- what operators and policy asked for: key -> value with a
  generation (monotonic per device + key) and a source. Persisted in the store before
  it is visible, recovered from the store on restart.
* :func:`check_drift` -- a pure comparison of the two.
* :class:`DriftTracker` -- turns successive drift lists into events: ``state.drift``
  once when a drift appears, ``state.drift_cleared`` once when it goes away.
* :class:`DeviceState` -- the three together for one device, wired to the bus.

Keys are generic, names come from the board's DESCRIBE::

    "rail:<name>"     desired "on" | "off"       reported "off" | "seq_on" | "on" |
                                                          "seq_off" | "fault"
    "zone:<name>"     desired {"mode": "auto"} | {"mode": "manual", "duty_pct": 0..100}
                      reported {"mode": "auto"|"manual"|"failsafe"|"max", "duty_pct": x}
    "gpio:<name>"     0 | 1
    "setpoint:<zone>" the zone's setpoint in °C (a number)
    "security.lock"   "locked" | "unlocked"
    "security.armed"  True | False

Drift rules (``check_drift``), per desired key with a non-None value:

* no reported value yet -> no verdict (no drift);
* within ``grace_s`` of the desired write -> no drift (the command is still in flight);
* rail "on": "on" or "seq_on" (sequencing) satisfy it; rail "off": "off", "seq_off"
  or "fault" (a faulted rail is unpowered) satisfy it;
* zone "auto": reported mode "auto"; zone "manual": mode "manual" and
  ``|duty_pct - desired| <= duty_tolerance_pct``; a board override ("failsafe", "max")
  is drift with reason "override";
* setpoint: the reported setpoint (the one applied this boot, else the board's configured
  default) within 0.0005 °C;
* anything else: equality.
"""

from __future__ import annotations

import asyncio
import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from metal.host.bridge.events import EventBus
from metal.host.bridge.store import DesiredRow, Store

RAIL_STATES: Final = ("off", "seq_on", "on", "seq_off", "fault")
ZONE_MODES: Final = ("auto", "manual", "failsafe", "max")
DEFAULT_GRACE_S: Final = 5.0
DEFAULT_DUTY_TOLERANCE_PCT: Final = 1.0

_RAIL_SATISFIES: Final[Mapping[str, frozenset[str]]] = {
    "on": frozenset({"on", "seq_on"}),
    "off": frozenset({"off", "seq_off", "fault"}),
}


# -- validation ----------------------------------------------------------------------


def _named(key: str, prefix: str) -> bool:
    return key.startswith(prefix) and len(key) > len(prefix)


def validate_desired(key: str, value: Any) -> Any:
    """Check a desired (key, value) and return its normal form; raises ValueError.

    ``None`` is always allowed: it withdraws the desire (a tombstone).
    """
    if value is None:
        if not any(_named(key, p) for p in ("rail:", "zone:", "gpio:", "setpoint:")) and key not in (
            "security.lock",
            "security.armed",
        ):
            raise ValueError(f"unknown desired-state key {key!r}")
        return None
    if _named(key, "rail:"):
        if value not in ("on", "off"):
            raise ValueError(f"{key}: expected 'on' or 'off', got {value!r}")
        return value
    if _named(key, "zone:"):
        if not isinstance(value, Mapping):
            raise ValueError(f"{key}: expected an object with 'mode'")
        mode = value.get("mode")
        if mode == "auto":
            if set(value) - {"mode"}:
                raise ValueError(f"{key}: mode 'auto' takes no other fields")
            return {"mode": "auto"}
        if mode == "manual":
            if set(value) - {"mode", "duty_pct"}:
                raise ValueError(f"{key}: unexpected fields {sorted(set(value) - {'mode', 'duty_pct'})}")
            duty = value.get("duty_pct")
            if isinstance(duty, bool) or not isinstance(duty, (int, float)) or not 0 <= duty <= 100:
                raise ValueError(f"{key}: duty_pct must be a number 0..100, got {duty!r}")
            return {"mode": "manual", "duty_pct": duty}
        raise ValueError(f"{key}: mode must be 'auto' or 'manual', got {mode!r}")
    if _named(key, "setpoint:"):
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value)):
            raise ValueError(f"{key}: expected a setpoint in °C, got {value!r}")
        return float(value)
    if _named(key, "gpio:"):
        if value is True or value is False or value not in (0, 1):
            raise ValueError(f"{key}: expected 0 or 1, got {value!r}")
        return int(value)
    if key == "security.lock":
        if value not in ("locked", "unlocked"):
            raise ValueError(f"{key}: expected 'locked' or 'unlocked', got {value!r}")
        return value
    if key == "security.armed":
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true or false, got {value!r}")
        return value
    raise ValueError(f"unknown desired-state key {key!r}")


# -- reported ------------------------------------------------------------------------


class ReportedState(Mapping[str, Any]):
    """The device's last reported state: a versioned key -> value map."""

    def __init__(self, device: str, *, clock: Callable[[], float] = time.time) -> None:
        self.device = device
        self.version = 0  # +1 on every update that changes something
        self._values: dict[str, Any] = {}
        self._changed_at: dict[str, float] = {}
        self._clock = clock

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def update(self, values: Mapping[str, Any], *, at: float | None = None) -> list[str]:
        """Apply reported values; returns the keys whose value changed."""
        now = self._clock() if at is None else at
        changed: list[str] = []
        for key, value in values.items():
            if key in self._values and self._values[key] == value:
                continue
            self._values[key] = copy.deepcopy(value)
            self._changed_at[key] = now
            changed.append(key)
        if changed:
            self.version += 1
        return changed

    def clear(self) -> None:
        """Forget everything (the board rebooted: its old state no longer holds)."""
        if self._values:
            self._values.clear()
            self._changed_at.clear()
            self.version += 1

    def changed_at(self, key: str) -> float | None:
        return self._changed_at.get(key)

    def snapshot(self) -> tuple[int, dict[str, Any]]:
        """(version, a deep copy of the values)."""
        return self.version, copy.deepcopy(self._values)


# -- desired -------------------------------------------------------------------------


class DesiredState(Mapping[str, Any]):
    """Desired values of one device, persisted through the store.

    Reads are from memory; a write goes to the store first (durably) and becomes visible
    only after it committed. Maps key -> value, skipping tombstones; :meth:`entry`
    gives the full row with generation and source.
    """

    def __init__(self, store: Store, device: str) -> None:
        self.store = store
        self.device = device
        self._rows: dict[str, DesiredRow] = {}
        self.reload()

    def reload(self) -> None:
        self._rows = {row.key: row for row in self.store.list_desired(self.device)}

    def __getitem__(self, key: str) -> Any:
        row = self._rows[key]
        if row.value is None:
            raise KeyError(key)
        return row.value

    def __iter__(self) -> Iterator[str]:
        return (k for k, row in self._rows.items() if row.value is not None)

    def __len__(self) -> int:
        return sum(1 for row in self._rows.values() if row.value is not None)

    def entry(self, key: str) -> DesiredRow | None:
        """The row for ``key`` (a tombstone included), or None if never set."""
        return self._rows.get(key)

    def entries(self) -> list[DesiredRow]:
        """Every row with a value (no tombstones), ordered by key."""
        return [self._rows[k] for k in sorted(self._rows) if self._rows[k].value is not None]

    def set(
        self,
        key: str,
        value: Any,
        source: str,
        *,
        expected_generation: int | None = None,
        at: float | None = None,
    ) -> DesiredRow:
        """Validate and persist; returns the new row (generation = previous + 1).

        Blocking (one fsync): from the event loop use :meth:`set_async`.
        """
        normal = validate_desired(key, value)
        row = self.store.set_desired(
            self.device, key, normal, source,
            expected_generation=expected_generation, updated_at=at,
        )
        self._rows[key] = row
        return row

    async def set_async(
        self,
        key: str,
        value: Any,
        source: str,
        *,
        expected_generation: int | None = None,
        at: float | None = None,
    ) -> DesiredRow:
        """:meth:`set` with the store write in a worker thread."""
        normal = validate_desired(key, value)
        row = await asyncio.to_thread(
            self.store.set_desired, self.device, key, normal, source,
            expected_generation=expected_generation, updated_at=at,
        )
        # Writes to one key are not reordered by the threads: keep the newest generation.
        current = self._rows.get(key)
        if current is None or row.generation > current.generation:
            self._rows[key] = row
        return row


# -- drift ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Drift:
    device: str
    key: str
    desired: Any
    reported: Any
    generation: int  # of the desired value that is not met
    reason: str  # "mismatch" | "override"
    desired_at: float  # when the desired value was written

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "desired": self.desired,
            "reported": self.reported,
            "generation": self.generation,
            "reason": self.reason,
        }


def _zone_drift(desired: Mapping[str, Any], reported: Any, tolerance: float) -> str | None:
    if not isinstance(reported, Mapping):
        return "mismatch"
    mode = reported.get("mode")
    if mode in ("failsafe", "max"):
        return "override"
    if desired.get("mode") == "auto":
        return None if mode == "auto" else "mismatch"
    if mode != "manual":
        return "mismatch"
    duty = reported.get("duty_pct")
    if not isinstance(duty, (int, float)):
        return "mismatch"
    return None if abs(duty - desired.get("duty_pct", 0)) <= tolerance else "mismatch"


def drift_reason(
    key: str, desired: Any, reported: Any, *, duty_tolerance_pct: float = DEFAULT_DUTY_TOLERANCE_PCT
) -> str | None:
    """Why ``reported`` does not satisfy ``desired`` for ``key``; None if it does."""
    if key.startswith("rail:") and desired in _RAIL_SATISFIES:
        return None if reported in _RAIL_SATISFIES[desired] else "mismatch"
    if key.startswith("zone:") and isinstance(desired, Mapping):
        return _zone_drift(desired, reported, duty_tolerance_pct)
    if key.startswith("setpoint:"):
        try:
            return None if abs(float(reported) - float(desired)) < 0.0005 else "mismatch"
        except (TypeError, ValueError):
            return "mismatch"
    if key.startswith("gpio:"):
        try:
            return None if int(reported) == int(desired) else "mismatch"
        except (TypeError, ValueError):
            return "mismatch"
    return None if reported == desired else "mismatch"


def check_drift(
    reported: Mapping[str, Any],
    desired: DesiredState | Iterable[DesiredRow],
    *,
    now: float | None = None,
    grace_s: float = DEFAULT_GRACE_S,
    duty_tolerance_pct: float = DEFAULT_DUTY_TOLERANCE_PCT,
) -> list[Drift]:
    """Every desired value the reported state does not meet (see the module rules)."""
    at = time.time() if now is None else now
    rows = desired.entries() if isinstance(desired, DesiredState) else list(desired)
    drifts: list[Drift] = []
    for row in rows:
        if row.value is None or row.key not in reported:
            continue
        if at - row.updated_at < grace_s:
            continue
        actual = reported[row.key]
        reason = drift_reason(row.key, row.value, actual, duty_tolerance_pct=duty_tolerance_pct)
        if reason is not None:
            drifts.append(
                Drift(row.device, row.key, row.value, copy.deepcopy(actual), row.generation,
                      reason, row.updated_at)
            )
    return drifts


class DriftTracker:
    """Remembers the open drifts of a device and reports only their changes.

    A drift is identified by (key, desired generation): a new desired value that is not
    met either is a new drift (the old one is cleared). Open drifts live in memory; after
    a bridge restart a drift that still holds is raised once more.
    """

    def __init__(self, bus: EventBus, device: str, *, clock: Callable[[], float] = time.time) -> None:
        self.bus = bus
        self.device = device
        self.active: dict[str, Drift] = {}
        self._since: dict[str, float] = {}
        self._clock = clock

    async def update(self, drifts: Sequence[Drift]) -> tuple[list[Drift], list[Drift]]:
        """Publish what changed; returns (raised, cleared)."""
        now = self._clock()
        current = {d.key: d for d in drifts}
        raised: list[Drift] = []
        cleared: list[Drift] = []
        for key, old in list(self.active.items()):
            new = current.get(key)
            if new is None or new.generation != old.generation:
                cleared.append(old)
                del self.active[key]
        for key, drift in current.items():
            if key not in self.active:
                raised.append(drift)
            self.active[key] = drift  # keep the latest reported value
        for old in cleared:
            since = self._since.pop(old.key, now)
            data = old.to_dict()
            data["duration_s"] = round(max(0.0, now - since), 3)
            await self.bus.publish("state.drift_cleared", self.device, data)
        for drift in raised:
            self._since[drift.key] = now
            await self.bus.publish("state.drift", self.device, drift.to_dict())
        return raised, cleared


# -- one device ----------------------------------------------------------------------


class DeviceState:
    """Reported + desired + drift tracking of one device, publishing on the bus.

    * ``apply_reported`` -> transient ``state.changed`` {"reported": changes, "version"}
    * ``set_desired``    -> persisted ``state.changed`` {"key", "desired", "generation",
      "source"}
    * both re-check drift; call :meth:`evaluate` periodically too, so a drift whose grace
      period expires is raised even when nothing new arrives.
    """

    def __init__(
        self,
        device: str,
        store: Store,
        bus: EventBus,
        *,
        grace_s: float = DEFAULT_GRACE_S,
        duty_tolerance_pct: float = DEFAULT_DUTY_TOLERANCE_PCT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.device = device
        self.bus = bus
        self.grace_s = grace_s
        self.duty_tolerance_pct = duty_tolerance_pct
        self._clock = clock
        self.reported = ReportedState(device, clock=clock)
        self.desired = DesiredState(store, device)
        self.drift = DriftTracker(bus, device, clock=clock)

    async def apply_reported(self, values: Mapping[str, Any]) -> list[str]:
        """Update the reported state; returns the changed keys."""
        changed = self.reported.update(values)
        if changed:
            await self.bus.publish(
                "state.changed",
                self.device,
                {"reported": {k: self.reported[k] for k in changed},
                 "version": self.reported.version},
                persist=False,
            )
            await self.evaluate()
        return changed

    async def set_desired(
        self, key: str, value: Any, source: str, *, expected_generation: int | None = None
    ) -> DesiredRow:
        row = await self.desired.set_async(
            key, value, source, expected_generation=expected_generation, at=self._clock()
        )
        await self.bus.publish(
            "state.changed",
            self.device,
            {"key": key, "desired": row.value, "generation": row.generation,
             "source": row.source},
        )
        await self.evaluate()
        return row

    async def evaluate(self) -> list[Drift]:
        """Re-check drift now; returns the open drifts."""
        drifts = check_drift(
            self.reported, self.desired, now=self._clock(), grace_s=self.grace_s,
            duty_tolerance_pct=self.duty_tolerance_pct,
        )
        await self.drift.update(drifts)
        return drifts


__all__ = [
    "DesiredState",
    "DeviceState",
    "Drift",
    "DriftTracker",
    "ReportedState",
    "check_drift",
    "drift_reason",
    "validate_desired",
]
