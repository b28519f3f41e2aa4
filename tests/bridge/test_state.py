"""State model: validation, reported versions, desired generations, drift raised/cleared once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from metal.host.bridge.events import EventBus
from metal.host.bridge.state import (
    DesiredState,
    DeviceState,
    ReportedState,
    check_drift,
    drift_reason,
    validate_desired,
)
from metal.host.bridge.store import DesiredRow, GenerationConflict, Store

T = TypeVar("T")


def run(fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(fn(), timeout=10)

    return asyncio.run(main())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "state.sqlite3")
    yield s
    s.close()


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def row(key: str, value: Any, *, at: float = 0.0, gen: int = 1) -> DesiredRow:
    return DesiredRow("d", key, value, gen, "test", at)


# -- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "normal"),
    [
        ("rail:p3v3", "on", "on"),
        ("rail:p12v", "off", "off"),
        ("zone:cpu", {"mode": "auto"}, {"mode": "auto"}),
        ("zone:cpu", {"mode": "manual", "duty_pct": 42.5}, {"mode": "manual", "duty_pct": 42.5}),
        ("gpio:led", 1, 1),
        ("gpio:led", 0, 0),
        ("security.lock", "locked", "locked"),
        ("security.armed", True, True),
        ("rail:p3v3", None, None),
        ("setpoint:cpu", 55, 55.0),
        ("setpoint:cpu", 55.25, 55.25),
        ("setpoint:cpu", None, None),
    ],
)
def test_validate_accepts(key: str, value: Any, normal: Any) -> None:
    assert validate_desired(key, value) == normal


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("rail:p3v3", "ON"),
        ("rail:", "on"),
        ("zone:cpu", {"mode": "manual", "duty_pct": 101}),
        ("zone:cpu", {"mode": "manual"}),
        ("zone:cpu", {"mode": "auto", "duty_pct": 10}),
        ("zone:cpu", {"mode": "failsafe"}),
        ("zone:cpu", "auto"),
        ("gpio:led", 2),
        ("gpio:led", True),
        ("security.lock", "open"),
        ("security.armed", 1),
        ("fan:x", 1),
        ("fan:x", None),
        ("setpoint:cpu", "55"),
        ("setpoint:cpu", True),
        ("setpoint:cpu", float("nan")),
        ("setpoint:", 50),
    ],
)
def test_validate_rejects(key: str, value: Any) -> None:
    with pytest.raises(ValueError):
        validate_desired(key, value)


# -- reported --------------------------------------------------------------------------


def test_reported_version_moves_only_on_change() -> None:
    rep = ReportedState("d", clock=Clock(5.0))
    assert rep.update({"rail:a": "off", "zone:cpu": {"mode": "auto", "duty_pct": 30}}) == [
        "rail:a", "zone:cpu"]
    assert rep.version == 1
    assert rep.update({"rail:a": "off"}) == []
    assert rep.version == 1
    assert rep.update({"rail:a": "seq_on", "gpio:x": 0}, at=9.0) == ["rail:a", "gpio:x"]
    assert rep.version == 2 and rep.changed_at("rail:a") == 9.0 and rep.changed_at("zone:cpu") == 5.0
    version, snap = rep.snapshot()
    snap["zone:cpu"]["duty_pct"] = 99  # a copy: the state is not aliased
    assert version == 2 and rep["zone:cpu"]["duty_pct"] == 30
    assert dict(rep) == {"rail:a": "seq_on", "zone:cpu": {"mode": "auto", "duty_pct": 30}, "gpio:x": 0}
    rep.clear()
    assert len(rep) == 0 and rep.version == 3


# -- desired ---------------------------------------------------------------------------


def test_desired_state_persists_and_generations_are_monotonic(tmp_path: Path) -> None:
    path = tmp_path / "desired.sqlite3"
    with Store(path) as s:
        des = DesiredState(s, "d")
        assert [des.set("rail:a", v, "api:alice").generation for v in ("on", "off", "on")] == [1, 2, 3]
        des.set("zone:cpu", {"mode": "manual", "duty_pct": 40}, "policy")
        with pytest.raises(ValueError):
            des.set("rail:a", "maybe", "api:alice")
        with pytest.raises(GenerationConflict):
            des.set("rail:a", "off", "api:bob", expected_generation=1)
        des.set("gpio:led", 1, "api:bob")
        tomb = des.set("gpio:led", None, "api:bob")
        assert tomb.generation == 2 and "gpio:led" not in des
    with Store(path) as s:
        des = DesiredState(s, "d")
        assert dict(des) == {"rail:a": "on", "zone:cpu": {"mode": "manual", "duty_pct": 40}}
        entry = des.entry("rail:a")
        assert entry is not None and (entry.generation, entry.source) == (3, "api:alice")
        assert des.entry("gpio:led").generation == 2  # type: ignore[union-attr]
        assert des.set("gpio:led", 0, "api:carol").generation == 3  # continues after the tombstone

        async def concurrent() -> list[int]:
            rows = await asyncio.gather(*(des.set_async("rail:a", "on", f"api:{i}") for i in range(5)))
            return sorted(r.generation for r in rows)

        assert run(concurrent) == [4, 5, 6, 7, 8]
        assert des.entry("rail:a").generation == 8  # type: ignore[union-attr]
        assert DesiredState(s, "other").entries() == []


# -- check_drift -----------------------------------------------------------------------


def test_rail_drift_allows_sequencing() -> None:
    assert drift_reason("rail:a", "on", "on") is None
    assert drift_reason("setpoint:cpu", 55.5, 55.5) is None
    assert drift_reason("setpoint:cpu", 55.5, 60) == "mismatch"
    assert drift_reason("setpoint:cpu", 55.5, None) == "mismatch"
    assert drift_reason("rail:a", "on", "seq_on") is None
    assert drift_reason("rail:a", "on", "seq_off") == "mismatch"
    assert drift_reason("rail:a", "on", "fault") == "mismatch"
    assert drift_reason("rail:a", "on", "off") == "mismatch"
    assert drift_reason("rail:a", "off", "seq_off") is None
    assert drift_reason("rail:a", "off", "fault") is None
    assert drift_reason("rail:a", "off", "on") == "mismatch"


def test_zone_gpio_security_drift() -> None:
    manual = {"mode": "manual", "duty_pct": 40}
    assert drift_reason("zone:z", manual, {"mode": "manual", "duty_pct": 40.8}) is None
    assert drift_reason("zone:z", manual, {"mode": "manual", "duty_pct": 45}) == "mismatch"
    assert drift_reason("zone:z", manual, {"mode": "auto", "duty_pct": 40}) == "mismatch"
    assert drift_reason("zone:z", manual, {"mode": "failsafe", "duty_pct": 100}) == "override"
    assert drift_reason("zone:z", {"mode": "auto"}, {"mode": "auto", "duty_pct": 73}) is None
    assert drift_reason("zone:z", {"mode": "auto"}, {"mode": "max", "duty_pct": 100}) == "override"
    assert drift_reason("gpio:x", 1, 1) is None
    assert drift_reason("gpio:x", 1, 0) == "mismatch"
    assert drift_reason("security.lock", "locked", "unlocked") == "mismatch"
    assert drift_reason("security.armed", True, True) is None


def test_check_drift_grace_and_unknown() -> None:
    desired = [row("rail:a", "on", at=100.0, gen=4), row("rail:b", "off", at=0.0),
               row("gpio:x", 1, at=0.0), row("rail:c", None, at=0.0)]
    reported = {"rail:a": "off", "rail:b": "on", "rail:c": "on"}  # gpio:x not reported yet
    within = check_drift(reported, desired, now=103.0, grace_s=5.0)
    assert [d.key for d in within] == ["rail:b"]  # rail:a still in its grace period
    after = check_drift(reported, desired, now=106.0, grace_s=5.0)
    assert [(d.key, d.desired, d.reported, d.generation) for d in after] == [
        ("rail:a", "on", "off", 4), ("rail:b", "off", "on", 1)]


# -- drift events ----------------------------------------------------------------------


def test_drift_raised_once_and_cleared_once(store: Store) -> None:
    clock = Clock(1000.0)

    def events(t: str) -> list[dict[str, Any]]:
        return [e.payload for e in store.query_events(device="d", type=t, limit=100).events]

    async def go() -> None:
        bus = EventBus(store, clock=clock)
        dev = DeviceState("d", store, bus, grace_s=5.0, clock=clock)
        await dev.apply_reported({"rail:a": "off", "zone:cpu": {"mode": "auto", "duty_pct": 20}})
        await dev.set_desired("rail:a", "on", "api:alice")
        clock.t += 1
        await dev.apply_reported({"rail:a": "seq_on"})
        clock.t += 1
        await dev.apply_reported({"rail:a": "fault"})  # the rail failed, still in grace
        assert events("state.drift") == []
        clock.t += 10
        assert [d.key for d in await dev.evaluate()] == ["rail:a"]
        for duty in range(21, 40):  # many telemetry frames while the drift persists
            clock.t += 0.1
            await dev.apply_reported({"zone:cpu": {"mode": "auto", "duty_pct": duty}})
        await dev.evaluate()
        assert events("state.drift") == [
            {"key": "rail:a", "desired": "on", "reported": "fault", "generation": 1,
             "reason": "mismatch"}]
        assert list(dev.drift.active) == ["rail:a"]
        assert dev.drift.active["rail:a"].reported == "fault"
        clock.t += 1
        await dev.apply_reported({"rail:a": "on"})
        await dev.apply_reported({"rail:a": "on"})
        cleared = events("state.drift_cleared")
        assert len(cleared) == 1 and cleared[0]["key"] == "rail:a"
        assert cleared[0]["duration_s"] == pytest.approx(2.9, abs=0.01)
        assert dev.drift.active == {}
        assert len(events("state.drift")) == 1
        # desired changes persist a state.changed event with generation and source
        changed = events("state.changed")
        assert changed == [{"key": "rail:a", "desired": "on", "generation": 1, "source": "api:alice"}]

    run(go)


def test_new_desired_generation_replaces_the_drift(store: Store) -> None:
    clock = Clock(0.0)

    async def go() -> tuple[list[str], int]:
        bus = EventBus(store, clock=clock)
        sub = bus.subscribe(lambda e: e.type.startswith("state.drift"))
        dev = DeviceState("d", store, bus, grace_s=2.0, clock=clock)
        await dev.apply_reported({"zone:cpu": {"mode": "failsafe", "duty_pct": 100}})
        await dev.set_desired("zone:cpu", {"mode": "manual", "duty_pct": 30}, "api:a")
        clock.t = 5.0
        await dev.evaluate()
        await dev.set_desired("zone:cpu", {"mode": "auto"}, "policy")  # gen 2, still failsafe
        await dev.evaluate()  # in grace: gen 1's drift is gone, gen 2 not raised yet
        clock.t = 10.0
        await dev.evaluate()
        await dev.evaluate()
        out = []
        while sub.depth:
            ev = await sub.get()
            out.append(f"{ev.type}:{ev.data['generation']}:{ev.data['reason']}")
        return out, dev.drift.active["zone:cpu"].generation

    seen, active_gen = run(go)
    assert seen == ["state.drift:1:override", "state.drift_cleared:1:override",
                    "state.drift:2:override"]
    assert active_gen == 2


def test_desired_recovered_by_device_state_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "dev.sqlite3"
    clock = Clock(0.0)

    async def first() -> None:
        with Store(path) as s:
            dev = DeviceState("d", s, EventBus(s, clock=clock), clock=clock)
            await dev.set_desired("rail:a", "off", "api:a")
            await dev.set_desired("security.armed", True, "policy")

    async def second() -> list[str]:
        with Store(path) as s:
            clock.t = 100.0
            dev = DeviceState("d", s, EventBus(s, clock=clock), clock=clock)
            assert dict(dev.desired) == {"rail:a": "off", "security.armed": True}
            await dev.apply_reported({"rail:a": "on", "security.armed": True})
            return list(dev.drift.active)

    run(first)
    assert run(second) == ["rail:a"]
