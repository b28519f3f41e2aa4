"""The event bus: persist first, then fan out; never lose, never hide a loss.

Every event the bridge knows about flows through :class:`EventBus`:

* **Board events** (protocol §7) arrive through :meth:`EventBus.publish_board_event`
  keyed by (device, boot id, seq). They are stored (deduplicated on that key) *before*
  the call returns, so the device session acknowledges the board only after
  ``await bus.publish_board_event(...)`` -- an acked event is on disk.
* **Host events** (``events.gap``, ``state.drift``, ``link.status``, ``alert``, later
  ``policy.*`` and ``audit.*``) come in through :meth:`EventBus.publish`; persisted
  by default, or transient (``id`` None, never replayed) for high-rate state.

Gap detection, per (device, boot id)::

    seq arrives, last = last stored seq (or 0 for a boot never seen: the first seq is 1)
    d = (seq - last) mod 2**30
      d == 0 or already stored       -> duplicate: dropped, counted, no write
      1 <= d < 2**29                 -> in order; d > 1 means d-1 events were dropped on
                                        the board (its queue overflowed): one persisted
                                        "events.gap" {first_missing, last_missing, missing}
                                        committed in the same transaction as the event
      d >= 2**29                     -> behind the last one (should not happen on an
                                        in-order channel): stored if new, counted, no gap

The last seq is kept in the store's ``board_sequences`` table, updated in the same
transaction as the event, so after a restart gaps are neither reported twice nor missed.

Fan-out: each :class:`Subscription` has a bounded queue. A subscriber more than
``maxsize`` events behind is *closed* with ``close_reason == "slow_consumer"``: it still
receives every event queued before the overflow, then the :data:`CLOSED` sentinel
(``get()`` raises :class:`SubscriptionClosed`); nothing in the middle is skipped. It
resumes with ``await bus.resume(sub.last_id, ...)`` (store backlog, then live) or reads
the store with :meth:`EventBus.replay`. Transient events are live-only.

Concurrency: all methods run on one asyncio loop. Store writes run in a worker thread
(``asyncio.to_thread``) under one ``asyncio.Lock`` so that events are fanned out in id
order; a publish whose caller is cancelled still completes (persist and fan-out are
shielded), so the store and the subscribers never disagree.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from metal.core import proto as P
from metal.host.bridge.store import EventRow, Store

SEQ_MODULUS: Final = P.INT_LIMIT  # board sequence numbers wrap at 2**30
_HALF: Final = SEQ_MODULUS // 2

SLOW_CONSUMER: Final = "slow_consumer"
UNSUBSCRIBED: Final = "unsubscribed"
SHUTDOWN: Final = "shutdown"

#: Bus type of each board event kind (protocol §7, core/proto.py EV_*).
BOARD_EVENT_TYPES: Final[Mapping[int, str]] = {
    P.EV_BOOT: "hardware.boot",
    P.EV_RAIL_STATE: "hardware.rail_state",
    P.EV_POWER_STATE: "hardware.power_state",
    P.EV_SENSOR_STATE: "hardware.sensor_state",
    P.EV_FAN_STATE: "hardware.fan_state",
    P.EV_ZONE_MODE: "hardware.zone_mode",
    P.EV_INTERLOCK_TRIP: "interlock.trip",
    P.EV_INTERLOCK_CLEAR: "interlock.clear",
    P.EV_OVERHEAT_START: "thermal.overheat_start",
    P.EV_OVERHEAT_CANCEL: "thermal.overheat_cancel",
    P.EV_OVERHEAT_POWER_DOWN: "thermal.overheat_power_down",
    P.EV_TAMPER: "security.tamper",
    P.EV_LOCK_STATE: "security.lock_state",
    P.EV_LOCK_FAULT: "security.lock_fault",
    P.EV_ARMED: "security.armed",
    P.EV_ESTOP: "interlock.estop",
    P.EV_DOOR: "security.door",
    P.EV_HOST_LOST: "hardware.host_lost",
    P.EV_LOOP_FAULT: "hardware.loop_fault",
    P.EV_GPIO_CHANGE: "hardware.gpio_change",
    P.EV_SAFE_STATE: "hardware.safe_state",
}


def board_event_type(kind: int) -> str:
    """The bus type for a wire event kind; unknown kinds stay visible, not dropped."""
    return BOARD_EVENT_TYPES.get(kind, f"hardware.kind_{kind}")


@dataclass(frozen=True, slots=True)
class BusEvent:
    id: int | None  # store id (the resume cursor); None for a transient event
    type: str  # "hardware.rail_state", "events.gap", "state.drift", ...
    device: str | None
    time: float  # when the bridge received/created it, epoch seconds
    data: dict[str, Any]
    boot_id: int | None = None
    seq: int | None = None  # board sequence number (board events only)

    @property
    def persisted(self) -> bool:
        return self.id is not None

    @classmethod
    def from_row(cls, row: EventRow) -> BusEvent:
        data: dict[str, Any] = {}
        if row.seq is not None:  # a board event: its wire fields are columns
            data.update(source=row.source, value=row.value, aux=row.aux, board_ms=row.board_ms)
        data.update(row.payload)
        return cls(row.id, row.kind, row.device, row.received_at, data, row.boot_id, row.seq)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the API/WebSocket layer."""
        return {
            "id": self.id,
            "type": self.type,
            "device": self.device,
            "time": self.time,
            "boot_id": self.boot_id,
            "seq": self.seq,
            "data": self.data,
        }


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a subscriber wants. Empty tuples match everything.

    ``types`` holds exact types (``"events.gap"``) or namespaces (``"hardware.*"``).
    """

    types: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()

    def matches(self, event: BusEvent) -> bool:
        if self.devices and event.device not in self.devices:
            return False
        if not self.types:
            return True
        for pattern in self.types:
            if pattern == "*" or pattern == event.type:
                return True
            if pattern.endswith(".*") and event.type.startswith(pattern[:-1]):
                return True
        return False


FilterLike = EventFilter | Callable[[BusEvent], bool] | None


def _matcher(flt: FilterLike) -> Callable[[BusEvent], bool]:
    if flt is None:
        return lambda _event: True
    if isinstance(flt, EventFilter):
        return flt.matches
    return flt


class _Closed:
    __slots__ = ()

    def __repr__(self) -> str:
        return "CLOSED"


#: Put in a subscription's queue after its last event when it is closed.
CLOSED: Final = _Closed()


class SubscriptionClosed(Exception):
    def __init__(self, reason: str, last_id: int | None) -> None:
        super().__init__(f"subscription closed: {reason} (resume after event id {last_id})")
        self.reason = reason
        self.last_id = last_id


@dataclass(slots=True)
class BusMetrics:
    published: int = 0  # events fanned out (board + host, persisted + transient)
    board_events: int = 0  # new board events stored
    duplicates_dropped: int = 0
    gaps_detected: int = 0
    events_missing: int = 0  # sum of the sizes of the gaps
    out_of_order: int = 0  # board events behind the last seq (stored, not a gap)
    slow_consumers: int = 0  # subscriptions closed for falling behind


_sub_ids = itertools.count(1)


class Subscription:
    """A subscriber's bounded queue. Read with ``await get()`` or ``async for``."""

    def __init__(
        self,
        bus: EventBus,
        flt: FilterLike,
        maxsize: int,
        *,
        backlog_after: int | None = None,
        backlog_until: int = 0,
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.id = next(_sub_ids)
        self.filter = flt
        self.maxsize = maxsize
        self.closed = False
        self.close_reason: str | None = None
        #: Id of the last persisted event handed to the consumer: resume after it.
        self.last_id: int | None = backlog_after
        self.delivered = 0
        self.max_depth = 0
        self._bus = bus
        self._matches = _matcher(flt)
        # One slot more than maxsize, reserved for the CLOSED sentinel.
        self._queue: asyncio.Queue[BusEvent | _Closed] = asyncio.Queue(maxsize + 1)
        self._ended = False
        # Backlog from the store: ids in (cursor, backlog_until], read before the queue.
        self._backlog_cursor = backlog_after if backlog_after is not None else None
        self._backlog_until = backlog_until
        self._backlog: deque[BusEvent] = deque()

    @property
    def depth(self) -> int:
        """Events waiting in the live queue (the sentinel not counted)."""
        n = self._queue.qsize()
        return n - 1 if self.closed and n and not self._ended else n

    def _offer(self, event: BusEvent) -> None:
        """Called by the bus for every published event, in order (never blocks)."""
        if self.closed or not self._matches(event):
            return
        if self._queue.qsize() >= self.maxsize:
            self._bus.metrics.slow_consumers += 1
            self.close(SLOW_CONSUMER)
            return
        self._queue.put_nowait(event)
        self.max_depth = max(self.max_depth, self._queue.qsize())

    def close(self, reason: str = UNSUBSCRIBED) -> None:
        """Stop receiving; events already queued are still delivered, then CLOSED."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._queue.put_nowait(CLOSED)  # the reserved slot: never full
        self._bus._forget(self)

    async def get(self) -> BusEvent:
        """The next event; raises :class:`SubscriptionClosed` after the last one."""
        while True:
            if self._backlog_cursor is not None:
                event = await self._next_backlog()
                if event is not None:
                    return self._deliver(event)
                continue
            if self._ended:
                raise SubscriptionClosed(self.close_reason or UNSUBSCRIBED, self.last_id)
            item = await self._queue.get()
            if isinstance(item, _Closed):
                self._ended = True
                continue
            if item.id is not None and self.last_id is not None and item.id <= self.last_id:
                continue  # already delivered from the backlog
            return self._deliver(item)

    async def _next_backlog(self) -> BusEvent | None:
        """One backlog event, or None when the step only advanced the cursor."""
        if not self._backlog:
            assert self._backlog_cursor is not None
            if self._backlog_cursor >= self._backlog_until:
                self._backlog_cursor = None  # caught up: switch to the live queue
                return None
            page = await self._bus._read_page(self._backlog_cursor, self.filter)
            rows = [e for e in page if e.id is not None and e.id <= self._backlog_until]
            if not rows:
                self._backlog_cursor = None
                return None
            self._backlog.extend(rows)
        event = self._backlog.popleft()
        assert event.id is not None
        self._backlog_cursor = event.id
        return event if self._matches(event) else None

    def _deliver(self, event: BusEvent) -> BusEvent:
        if event.id is not None:
            self.last_id = event.id
        self.delivered += 1
        return event

    def __aiter__(self) -> AsyncIterator[BusEvent]:
        return self

    async def __anext__(self) -> BusEvent:
        try:
            return await self.get()
        except SubscriptionClosed:
            raise StopAsyncIteration from None


@dataclass(slots=True)
class _Outcome:
    rows: list[EventRow] = field(default_factory=list)  # to fan out, in id order
    duplicate: bool = False
    gap_missing: int = 0
    out_of_order: bool = False
    event: BusEvent | None = None


class EventBus:
    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.metrics = BusMetrics()
        self._clock = clock
        self._lock = asyncio.Lock()  # orders persist+fan-out; binds to a loop on first use
        self._subs: dict[int, Subscription] = {}
        self._last_seq: dict[tuple[str, int], int] = {}  # cache of store.board_sequences
        self._inflight: set[asyncio.Future[Any]] = set()

    # -- publishing ------------------------------------------------------------------

    async def publish_board_event(
        self,
        device: str,
        boot_id: int,
        seq: int,
        kind: int | str,
        source: int | None,
        value: int | None,
        aux: int | None = None,
        board_ms: int | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> BusEvent | None:
        """Store and fan out one board event; None when it was a duplicate.

        ``kind`` is the wire kind (EV_*), mapped with :func:`board_event_type`, or a bus
        type string. ``data`` holds decoded extras (names, units) for the payload. When
        this returns the event (and any gap it revealed) is durably committed.
        """
        if not 0 <= seq < SEQ_MODULUS:
            raise ValueError(f"event seq {seq} outside 0 .. 2**30-1")
        etype = board_event_type(kind) if isinstance(kind, int) else kind
        payload: dict[str, Any] = {}
        if isinstance(kind, int):
            payload["kind"] = kind
        if data:
            payload.update(data)

        def persist() -> _Outcome:
            return self._persist_board(device, boot_id, seq, etype, source, value, aux,
                                       board_ms, payload)

        outcome = await self._serialized(persist)
        return outcome.event

    async def publish(
        self,
        type: str,  # noqa: A002 - the bus's name for it
        device: str | None = None,
        data: Mapping[str, Any] | None = None,
        *,
        boot_id: int | None = None,
        persist: bool = True,
    ) -> BusEvent:
        """Publish a host-generated event; stored unless ``persist`` is False."""
        payload = dict(data or {})
        if not persist:
            event = BusEvent(None, type, device, self._clock(), payload, boot_id)

            def transient() -> _Outcome:
                return _Outcome(event=event)

            await self._serialized(transient, offload=False)
            return event

        def store_it() -> _Outcome:
            at = self._clock()
            event_id, _ = self.store.insert_event(
                device=device, kind=type, boot_id=boot_id, received_at=at, payload=payload
            )
            row = EventRow(event_id, device, boot_id, None, type, None, None, None, None, at,
                           payload)
            return _Outcome(rows=[row])

        outcome = await self._serialized(store_it)
        assert outcome.event is not None
        return outcome.event

    async def _serialized(self, work: Callable[[], _Outcome], *, offload: bool = True) -> _Outcome:
        """Run ``work`` (in a thread) and fan out its result, one publish at a time.

        Shielded: once started it completes even if the caller is cancelled, so an event
        is never committed without being fanned out.
        """

        async def run() -> _Outcome:
            async with self._lock:
                outcome = await asyncio.to_thread(work) if offload else work()
                self._account(outcome)
                return outcome

        task = asyncio.ensure_future(run())
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return await asyncio.shield(task)

    def _persist_board(
        self,
        device: str,
        boot_id: int,
        seq: int,
        etype: str,
        source: int | None,
        value: int | None,
        aux: int | None,
        board_ms: int | None,
        payload: dict[str, Any],
    ) -> _Outcome:
        """Worker-thread part of publish_board_event (serialized by the bus lock)."""
        store = self.store
        key = (device, boot_id)
        last = self._last_seq.get(key)
        if last is None:
            last = store.get_last_seq(device, boot_id)
        outcome = _Outcome()
        if last is not None:
            self._last_seq[key] = last
        if store.find_board_event(device, boot_id, seq) is not None:
            outcome.duplicate = True  # a re-delivery: nothing to write, nothing to fsync
            return outcome
        with store.transaction():
            previous = 0 if last is None else last  # a new boot starts at seq 1
            distance = (seq - previous) % SEQ_MODULUS
            advance = last is None or 0 < distance < _HALF
            at = self._clock()
            if last is not None and not advance:
                outcome.out_of_order = True
            elif distance > 1:
                first_missing = (previous + 1) % SEQ_MODULUS
                last_missing = (seq - 1) % SEQ_MODULUS
                missing = distance - 1
                gap_payload = {
                    "first_missing": first_missing,
                    "last_missing": last_missing,
                    "missing": missing,
                }
                gap_id, _ = store.insert_event(
                    device=device, kind="events.gap", boot_id=boot_id, received_at=at,
                    payload=gap_payload,
                )
                outcome.rows.append(EventRow(gap_id, device, boot_id, None, "events.gap", None,
                                             None, None, None, at, gap_payload))
                outcome.gap_missing = missing
            event_id, _ = store.insert_event(
                device=device, kind=etype, boot_id=boot_id, seq=seq, source=source,
                value=value, aux=aux, board_ms=board_ms, received_at=at, payload=payload,
            )
            outcome.rows.append(EventRow(event_id, device, boot_id, seq, etype, source, value,
                                         aux, board_ms, at, payload))
            if advance:
                store.set_last_seq(device, boot_id, seq, at=at)
        # Committed: only now does the cache move.
        if advance:
            self._last_seq[key] = seq
        return outcome

    def _account(self, outcome: _Outcome) -> None:
        """Loop-thread part: metrics and fan-out, in id order."""
        m = self.metrics
        if outcome.duplicate:
            m.duplicates_dropped += 1
            return
        if outcome.gap_missing:
            m.gaps_detected += 1
            m.events_missing += outcome.gap_missing
        if outcome.out_of_order:
            m.out_of_order += 1
        events = [BusEvent.from_row(r) for r in outcome.rows]
        for r in outcome.rows:
            if r.seq is not None:
                m.board_events += 1
        if outcome.event is not None and outcome.event.id is None:
            events.append(outcome.event)  # transient
        for event in events:
            self._fanout(event)
        if events:
            outcome.event = events[-1]

    def _fanout(self, event: BusEvent) -> None:
        self.metrics.published += 1
        for sub in list(self._subs.values()):
            sub._offer(event)

    # -- subscribing -----------------------------------------------------------------

    def subscribe(self, filter: FilterLike = None, *, maxsize: int = 1000) -> Subscription:  # noqa: A002
        """A live subscription from now on (no history)."""
        sub = Subscription(self, filter, maxsize)
        self._subs[sub.id] = sub
        return sub

    async def resume(
        self, since_id: int, filter: FilterLike = None, *, maxsize: int = 1000  # noqa: A002
    ) -> Subscription:
        """A subscription that first delivers stored events after ``since_id``, then live.

        The switch-over is exact: registration happens under the publish lock, at a known
        last stored id, so no event is missed or delivered twice.
        """
        async with self._lock:
            until = await asyncio.to_thread(self.store.last_event_id)
            # A cursor beyond the store (a wiped database) must not hide new events.
            sub = Subscription(self, filter, maxsize, backlog_after=min(since_id, until),
                               backlog_until=until)
            self._subs[sub.id] = sub
        return sub

    async def replay(
        self, since_id: int | None = None, filter: FilterLike = None, *, limit: int = 1000  # noqa: A002
    ) -> list[BusEvent]:
        """Up to ``limit`` stored events after ``since_id`` that match ``filter``."""
        out: list[BusEvent] = []
        matches = _matcher(filter)
        cursor = since_id or 0
        while len(out) < limit:
            page = await self._read_page(cursor, filter)
            if not page:
                break
            for event in page:
                if matches(event):
                    out.append(event)
                    if len(out) == limit:
                        break
            assert page[-1].id is not None
            cursor = page[-1].id
        return out

    async def _read_page(self, after: int, flt: FilterLike, size: int = 500) -> list[BusEvent]:
        device = None
        type_ = None
        if isinstance(flt, EventFilter):
            if len(flt.devices) == 1:
                device = flt.devices[0]
            if len(flt.types) == 1:
                type_ = flt.types[0]
        page = await asyncio.to_thread(
            self.store.query_events, device=device, type=type_, since_id=after, limit=size
        )
        return [BusEvent.from_row(r) for r in page.events]

    def _forget(self, sub: Subscription) -> None:
        self._subs.pop(sub.id, None)

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subs.values())

    def queue_depths(self) -> dict[int, int]:
        """Subscription id -> events waiting (for /metrics)."""
        return {sub.id: sub.depth for sub in self._subs.values()}

    async def close(self) -> None:
        """Finish in-flight publishes and close every subscription (reason "shutdown")."""
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        for sub in list(self._subs.values()):
            sub.close(SHUTDOWN)

    # -- helpers for the tests and the session ------------------------------------------

    def last_seq(self, device: str, boot_id: int) -> int | None:
        """The last board seq stored for (device, boot id) (from the store)."""
        cached = self._last_seq.get((device, boot_id))
        return cached if cached is not None else self.store.get_last_seq(device, boot_id)
