"""Event bus: dedup, gaps (wrap, new boot, restart), fan-out, slow consumers, resume."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from metal.core import proto as P
from metal.host.bridge.events import (
    CLOSED,
    SEQ_MODULUS,
    SLOW_CONSUMER,
    BusEvent,
    EventBus,
    EventFilter,
    Subscription,
    SubscriptionClosed,
    board_event_type,
)
from metal.host.bridge.store import Store

T = TypeVar("T")
TOP = SEQ_MODULUS - 1


def run(fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(fn(), timeout=10)

    return asyncio.run(main())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "bus.sqlite3")
    yield s
    s.close()


async def board(bus: EventBus, seq: int, *, device: str = "d", boot: int = 100,
                kind: int = P.EV_RAIL_STATE, value: int = 2) -> BusEvent | None:
    return await bus.publish_board_event(device, boot, seq, kind, 0, value, 0, seq * 10,
                                         {"rail": "p3v3"})


def drain(sub: Subscription) -> list[BusEvent]:
    """Everything queued right now (live mode only)."""
    out = []
    while not sub._queue.empty():
        item = sub._queue.get_nowait()
        if item is CLOSED:
            break
        assert isinstance(item, BusEvent)
        out.append(item)
    return out


def gaps(store: Store, device: str = "d") -> list[dict[str, Any]]:
    return [e.payload for e in store.query_events(device=device, type="events.gap", limit=1000).events]


def test_board_event_is_persisted_typed_and_fanned_out(store: Store) -> None:
    async def go() -> None:
        bus = EventBus(store)
        sub = bus.subscribe()
        ev = await board(bus, 1)
        assert ev is not None and ev.id is not None
        assert ev.type == "hardware.rail_state" == board_event_type(P.EV_RAIL_STATE)
        assert (ev.device, ev.boot_id, ev.seq) == ("d", 100, 1)
        assert ev.data == {"kind": P.EV_RAIL_STATE, "source": 0, "value": 2, "aux": 0,
                           "board_ms": 10, "rail": "p3v3"}
        got = await sub.get()
        assert got == ev
        # what is replayed from the store equals what was delivered live
        assert await bus.replay(0) == [ev]
        assert bus.metrics.board_events == 1 and bus.metrics.published == 1
        assert board_event_type(P.EV_INTERLOCK_TRIP) == "interlock.trip"
        assert board_event_type(250) == "hardware.kind_250"

    run(go)


def test_duplicates_dropped_silently_and_counted(store: Store) -> None:
    async def go() -> None:
        bus = EventBus(store)
        sub = bus.subscribe()
        first = await board(bus, 1)
        assert await board(bus, 1) is None
        assert await board(bus, 1) is None
        second = await board(bus, 2)
        assert bus.metrics.duplicates_dropped == 2
        assert [e.id for e in drain(sub)] == [first.id, second.id]  # type: ignore[union-attr]
        assert len(store.query_events(limit=100).events) == 2

    run(go)


def test_gap_detected_and_ordered_before_the_event(store: Store) -> None:
    async def go() -> None:
        bus = EventBus(store)
        sub = bus.subscribe()
        for seq in (1, 2, 5, 6, 10):
            await board(bus, seq)
        types = [(e.type, e.seq, e.data.get("first_missing"), e.data.get("last_missing"))
                 for e in drain(sub)]
        assert types == [
            ("hardware.rail_state", 1, None, None),
            ("hardware.rail_state", 2, None, None),
            ("events.gap", None, 3, 4),
            ("hardware.rail_state", 5, None, None),
            ("hardware.rail_state", 6, None, None),
            ("events.gap", None, 7, 9),
            ("hardware.rail_state", 10, None, None),
        ]
        assert gaps(store) == [
            {"first_missing": 3, "last_missing": 4, "missing": 2},
            {"first_missing": 7, "last_missing": 9, "missing": 3},
        ]
        gap_rows = store.query_events(type="events.gap", limit=10).events
        assert all(g.boot_id == 100 and g.device == "d" for g in gap_rows)
        assert bus.metrics.gaps_detected == 2 and bus.metrics.events_missing == 5

    run(go)


def test_first_event_of_a_boot_not_1_is_a_gap_from_1(store: Store) -> None:
    async def go() -> None:
        bus = EventBus(store)
        await board(bus, 4, boot=7)
        assert gaps(store) == [{"first_missing": 1, "last_missing": 3, "missing": 3}]

    run(go)


def test_new_boot_starts_a_new_sequence(store: Store) -> None:
    async def go() -> None:
        bus = EventBus(store)
        for seq in (1, 2, 3):
            await board(bus, seq, boot=1)
        assert await board(bus, 1, boot=2) is not None  # not a duplicate, not a gap
        await board(bus, 2, boot=2)
        assert gaps(store) == []
        assert bus.last_seq("d", 1) == 3 and bus.last_seq("d", 2) == 2
        # another device's boot is independent too
        await board(bus, 1, device="e", boot=1)
        assert bus.metrics.duplicates_dropped == 0 and bus.metrics.gaps_detected == 0

    run(go)


def test_sequence_wraps_at_2_30(store: Store) -> None:
    async def go() -> None:
        bus = EventBus(store)
        store.set_last_seq("d", 9, TOP - 2)  # as if the boot had run for a long time
        for seq in (TOP - 1, TOP, 0, 1, 2):
            assert await board(bus, seq, boot=9) is not None
        assert gaps(store) == []
        await board(bus, 5, boot=9)  # 3, 4 lost
        store.set_last_seq("d", 10, TOP - 1)
        await board(bus, 1, boot=10)  # TOP and 0 lost across the wrap
        assert gaps(store) == [
            {"first_missing": 3, "last_missing": 4, "missing": 2},
            {"first_missing": TOP, "last_missing": 0, "missing": 2},
        ]
        assert bus.last_seq("d", 10) == 1
        with pytest.raises(ValueError):
            await board(bus, SEQ_MODULUS, boot=10)

    run(go)


def test_restart_neither_rereports_nor_misses_gaps(tmp_path: Path) -> None:
    path = tmp_path / "restart.sqlite3"

    async def before() -> None:
        with Store(path) as s:
            bus = EventBus(s)
            for seq in (1, 2, 4):
                await board(bus, seq)
            await bus.close()

    async def after() -> None:
        with Store(path) as s:
            bus = EventBus(s)
            assert await board(bus, 4) is None  # re-delivered after a session reset
            assert await board(bus, 2) is None
            await board(bus, 5)  # no gap: 4 was the last
            await board(bus, 7)  # 6 lost
            assert gaps(s) == [
                {"first_missing": 3, "last_missing": 3, "missing": 1},
                {"first_missing": 6, "last_missing": 6, "missing": 1},
            ]
            assert bus.metrics.gaps_detected == 1 and bus.metrics.duplicates_dropped == 2

    run(before)
    run(after)


def test_event_behind_the_last_is_stored_without_a_gap(store: Store) -> None:
    async def go() -> None:
        bus = EventBus(store)
        await board(bus, 1)
        await board(bus, 10)  # gap 2..9
        late = await board(bus, 5)
        assert late is not None and late.seq == 5
        assert bus.metrics.out_of_order == 1 and bus.metrics.gaps_detected == 1
        assert bus.last_seq("d", 100) == 10
        await board(bus, 11)
        assert bus.metrics.gaps_detected == 1

    run(go)


def test_host_events_persisted_and_transient(store: Store) -> None:
    async def go() -> None:
        bus = EventBus(store)
        sub = bus.subscribe()
        alert = await bus.publish("alert", "d", {"message": "fan 2 stalled"})
        tele = await bus.publish("state.changed", "d", {"reported": {"rail:a": "on"}}, persist=False)
        assert alert.id is not None and tele.id is None and not tele.persisted
        assert drain(sub) == [alert, tele]
        assert [e.id for e in await bus.replay(0)] == [alert.id]
        assert bus.metrics.published == 2

    run(go)


def test_filters(store: Store) -> None:
    async def go() -> None:
        bus = EventBus(store)
        hw_a = bus.subscribe(EventFilter(types=("hardware.*",), devices=("a",)))
        gap_any = bus.subscribe(EventFilter(types=("events.gap",)))
        odd = bus.subscribe(lambda e: e.seq is not None and e.seq % 2 == 1)
        await board(bus, 1, device="a")
        await board(bus, 3, device="b")  # gap 1..2 on b
        await board(bus, 2, device="a", kind=P.EV_INTERLOCK_TRIP)
        await bus.publish("alert", "a", {})
        assert [(e.device, e.seq) for e in drain(hw_a)] == [("a", 1)]
        assert [(e.device, e.data["first_missing"]) for e in drain(gap_any)] == [("b", 1)]
        assert [(e.device, e.seq) for e in drain(odd)] == [("a", 1), ("b", 3)]
        assert [e.type for e in await bus.replay(0, EventFilter(types=("interlock.*",)))] == [
            "interlock.trip"]
        assert len(await bus.replay(0, limit=2)) == 2

    run(go)


def test_slow_consumer_is_closed_never_skipped_and_resumes(store: Store) -> None:
    async def go() -> None:
        bus = EventBus(store)
        slow = bus.subscribe(maxsize=3)
        fast = bus.subscribe(maxsize=100)
        published = [await board(bus, seq) for seq in range(1, 7)]
        ids = [e.id for e in published]  # type: ignore[union-attr]
        assert slow.closed and slow.close_reason == SLOW_CONSUMER
        assert slow.depth == 3 and slow.max_depth == 3  # bounded
        assert bus.metrics.slow_consumers == 1
        assert slow not in bus.subscriptions and fast in bus.subscriptions
        # the slow one still gets everything queued before the overflow, then the close
        got = [await slow.get() for _ in range(3)]
        assert [e.id for e in got] == ids[:3]
        with pytest.raises(SubscriptionClosed) as closed:
            await slow.get()
        assert closed.value.reason == SLOW_CONSUMER and closed.value.last_id == ids[2]
        with pytest.raises(SubscriptionClosed):  # stays closed
            await slow.get()
        # it never received anything after a hole: resume from its last id
        resumed = await bus.resume(slow.last_id, maxsize=100)  # type: ignore[arg-type]
        live = await board(bus, 7)
        again = [await resumed.get() for _ in range(4)]
        assert [e.id for e in again] == ids[3:] + [live.id]  # type: ignore[union-attr]
        assert resumed.depth == 0
        # the fast subscriber was unaffected
        assert [e.id for e in drain(fast)] == ids + [live.id]  # type: ignore[union-attr]

    run(go)


def test_resume_switches_from_backlog_to_live_exactly(store: Store) -> None:
    async def go() -> None:
        bus = EventBus(store)
        for seq in range(1, 41):
            await board(bus, seq)
        sub = await bus.resume(10, EventFilter(devices=("d",)), maxsize=50)
        # events published while the consumer is still in the backlog
        for seq in range(41, 51):
            await board(bus, seq)
        seqs = [(await sub.get()).seq for _ in range(40)]
        assert seqs == list(range(11, 51))  # 10 excluded, no duplicates, no holes
        assert sub.last_id == store.last_event_id()
        pending = asyncio.ensure_future(sub.get())
        await asyncio.sleep(0)
        assert not pending.done()
        await board(bus, 51)
        assert (await pending).seq == 51

    run(go)


def test_async_iteration_and_shutdown(store: Store) -> None:
    async def go() -> None:
        bus = EventBus(store)
        sub = bus.subscribe()
        await board(bus, 1)
        await board(bus, 2)
        await bus.close()
        assert sub.closed and sub.close_reason == "shutdown"
        assert [e.seq async for e in sub] == [1, 2]

    run(go)


def test_cancelled_publish_still_persists_and_fans_out(store: Store) -> None:
    async def go() -> None:
        bus = EventBus(store)
        sub = bus.subscribe()
        task = asyncio.ensure_future(board(bus, 1))
        await asyncio.sleep(0)  # the publish started
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await bus.close()  # waits for in-flight publishes
        assert store.find_board_event("d", 100, 1) is not None
        assert [e.seq for e in drain(sub)] == [1]

    run(go)


def test_concurrent_publishers_keep_id_order(store: Store) -> None:
    async def go() -> None:
        bus = EventBus(store)
        sub = bus.subscribe(maxsize=500)
        await asyncio.gather(*(board(bus, 1, device=f"dev{i}") for i in range(20)),
                             *(bus.publish("alert", None, {"n": i}) for i in range(20)))
        got = drain(sub)
        ids = [e.id for e in got]
        assert len(ids) == 40 and ids == sorted(ids)
        assert bus.queue_depths() == {sub.id: 0}

    run(go)
