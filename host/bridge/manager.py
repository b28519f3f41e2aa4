"""The bridge: devices, store, event bus and sessions behind :class:`BridgeService`.

``Bridge(BridgeConfig(devices=[...], state_dir=...))`` opens the SQLite store in the state
directory, builds an :class:`~metal.host.bridge.events.EventBus` and one
:class:`~metal.host.bridge.session.DeviceSession` per device URL, and implements the
operator-facing contract of ``metal.host.bridge.model.BridgeService`` for the REST API,
the WebSocket stream and the CLI::

    bridge = Bridge(BridgeConfig(devices=["socket://127.0.0.1:7000"], state_dir="state"))
    await bridge.start()
    ...
    await bridge.stop()

Device ids
----------
A device's id names it in the API and keys everything it stored (events, commands, desired
state), so it must be stable across restarts. It is ``DeviceConfig.id`` when given
(``--device cpu-shelf=/dev/ttyACM0``), else derived from the URL:
``/dev/ttyACM0`` -> ``ttyACM0``, ``socket://10.0.0.5:7000`` -> ``10.0.0.5-7000``.

Persistence and recovery
------------------------
Desired state, the last boot id and DESCRIBE of every device, commands and events live in
the store. After a restart the sessions reload them: desired state is served at once, an
offline device still has its layout and names, and a board that rebooted while the bridge
was down is recognised by its new boot id and re-synced per its power-restore policy.

Streams
-------
:meth:`Bridge.subscribe` merges three topics for one client: ``events`` (every persisted
bus event that is not ``state.*``: board events, gaps, link status, reboots ...),
``state`` (``state.*``: reported changes, desired writes, drift) and ``telemetry``.
Events come from a bus subscription (with ``resume_from``: the stored backlog after that
id, then live, exactly once); they are never dropped silently: a client that falls more
than ``subscriber_queue`` events behind gets every event queued before the overflow, then
a final ``{"topic": "closed", "reason": "slow_consumer", "last_id": <id of the last event
delivered>}`` and the stream ends; ``resume_from=last_id`` continues without a loss.
Telemetry is conflated per subscriber and device: only the latest snapshot waits, a slow
client skips intermediate frames instead of falling behind.

Metrics
-------
:meth:`Bridge.metrics_text` renders a private ``prometheus_client`` CollectorRegistry whose
collector reads the sessions' current state at scrape time (nothing is updated per frame).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlparse

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from metal.host.bridge.events import EventBus, SubscriptionClosed
from metal.host.bridge.model import (
    POWER_RESTORE_POLICIES,
    CommandRequest,
    CommandVerdict,
    DeviceNotFound,
    DeviceSummary,
    InvalidInput,
)
from metal.host.bridge.session import DeviceSession, SessionConfig
from metal.host.bridge.store import Store
from metal.host.bridge.transport import Transport

__all__ = [
    "Bridge",
    "BridgeConfig",
    "DeviceConfig",
    "TOPICS",
    "device_id_from_url",
    "parse_device_spec",
]

log = logging.getLogger(__name__)

TOPICS: Final = frozenset({"telemetry", "events", "state"})
STORE_FILE: Final = "bridge.sqlite3"
_ID_OK: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class DeviceConfig:
    url: str
    id: str | None = None
    #: "always_off" | "last_state" | "always_on"
    power_restore: str = "last_state"
    #: None: decided by the board's name ("sim" is simulated)
    simulated: bool | None = None
    baudrate: int = 115200
    proto_min: int | None = None
    proto_max: int | None = None

    def __post_init__(self) -> None:
        if self.power_restore not in POWER_RESTORE_POLICIES:
            raise ValueError(f"power_restore must be one of {', '.join(POWER_RESTORE_POLICIES)}")
        if self.id is None:
            self.id = device_id_from_url(self.url)
        if not _ID_OK.match(self.id):
            raise ValueError(f"device id {self.id!r}: use letters, digits, '.', '_' and '-' "
                             "(at most 64, starting with a letter or digit)")


@dataclass
class BridgeConfig:
    devices: Sequence[DeviceConfig | str] = ()
    state_dir: str | Path = "metal-state"
    command_timeout_s: float = 5.0
    heartbeat_interval_s: float = 0.5
    link_timeout_s: float = 3.0
    command_ttl_s: float = 30.0
    restart_settle_s: float = 3.0
    subscriber_queue: int = 1000
    #: extra SessionConfig fields applied to every device (tests)
    session_overrides: dict[str, Any] = field(default_factory=dict)

    def device_configs(self) -> list[DeviceConfig]:
        out = [d if isinstance(d, DeviceConfig) else parse_device_spec(d) for d in self.devices]
        seen: set[str] = set()
        for d in out:
            assert d.id is not None
            if d.id in seen:
                raise ValueError(f"two devices have the id {d.id!r}; name them with ID=URL")
            seen.add(d.id)
        return out


def device_id_from_url(url: str) -> str:
    """A stable id for a device URL (see the module docstring)."""
    parsed = urlparse(url)
    if parsed.scheme and parsed.scheme not in ("file",) and "://" in url:
        base = parsed.netloc or parsed.path
        text = base.replace(":", "-")
    else:
        text = Path(url).name or url
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._") or "device"
    return text[:64]


def parse_device_spec(spec: str) -> DeviceConfig:
    """``URL`` or ``ID=URL`` (the CLI's ``--device``)."""
    if "=" in spec and "://" not in spec.split("=", 1)[0]:
        ident, url = spec.split("=", 1)
        return DeviceConfig(url=url, id=ident)
    return DeviceConfig(url=spec)


class Bridge:
    """The bridge daemon's core; implements ``BridgeService``."""

    def __init__(
        self,
        config: BridgeConfig,
        *,
        transport_factory: Callable[[DeviceConfig], Transport] | None = None,
    ) -> None:
        self.config = config
        self.device_configs = config.device_configs()
        self._transport_factory = transport_factory
        self.store: Store | None = None
        self.bus: EventBus | None = None
        self.sessions: dict[str, DeviceSession] = {}
        self.started = False
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_BridgeCollector(self))

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self.started:
            return
        state_dir = Path(self.config.state_dir)
        await asyncio.to_thread(state_dir.mkdir, parents=True, exist_ok=True)
        self.store = await asyncio.to_thread(Store, state_dir / STORE_FILE)
        self.bus = EventBus(self.store)
        c = self.config
        for d in self.device_configs:
            assert d.id is not None
            sc = SessionConfig(
                device_id=d.id, url=d.url, power_restore=d.power_restore,
                simulated=d.simulated, baudrate=d.baudrate,
                heartbeat_interval_s=c.heartbeat_interval_s, link_timeout_s=c.link_timeout_s,
                command_timeout_s=c.command_timeout_s, command_ttl_s=c.command_ttl_s,
                restart_settle_s=c.restart_settle_s,
            )
            if d.proto_min is not None:
                sc.proto_min = d.proto_min
            if d.proto_max is not None:
                sc.proto_max = d.proto_max
            for k, v in c.session_overrides.items():
                setattr(sc, k, v)
            transport = self._transport_factory(d) if self._transport_factory else None
            self.sessions[d.id] = DeviceSession(sc, self.store, self.bus, transport=transport)
        self.started = True
        try:
            for s in self.sessions.values():
                await s.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.store is None:
            return
        self.started = False
        for s in self.sessions.values():
            with contextlib.suppress(Exception):
                await s.stop()
        if self.bus is not None:
            await self.bus.close()
        store, self.store = self.store, None
        await asyncio.to_thread(store.close)

    async def __aenter__(self) -> Bridge:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- lookups -------------------------------------------------------------------------

    def session(self, device_id: str) -> DeviceSession:
        s = self.sessions.get(device_id)
        if s is None:
            known = ", ".join(self.sessions) or "none"
            raise DeviceNotFound(f"no device {device_id!r} (known: {known})", device=device_id)
        return s

    # -- BridgeService ---------------------------------------------------------------------

    def list_devices(self) -> list[DeviceSummary]:
        return [s.summary() for s in self.sessions.values()]

    def snapshot_json(self, device_id: str) -> bytes:
        s = self.sessions.get(device_id)
        if s is None:
            raise DeviceNotFound(f"no device {device_id!r}", device=device_id)
        return s.snapshot.json

    async def execute(
        self,
        device_id: str,
        request: CommandRequest,
        *,
        principal: str,
        idempotency_key: str | None,
    ) -> CommandVerdict:
        return await self.session(device_id).execute(
            request, principal=principal, idempotency_key=idempotency_key)

    def subscribe(
        self,
        topics: frozenset[str],
        device_id: str | None,
        resume_from: int | None,
    ) -> AsyncIterator[dict[str, Any]]:
        wanted = frozenset(topics) if topics else TOPICS
        unknown = wanted - TOPICS
        if unknown:
            raise InvalidInput(f"unknown topics {sorted(unknown)} (expected "
                               f"{', '.join(sorted(TOPICS))})", field="topics")
        if device_id is not None:
            self.session(device_id)
        if resume_from is not None and (type(resume_from) is not int or resume_from < 0):
            raise InvalidInput(f"resume_from must be an event id >= 0, got {resume_from!r}",
                               field="resume_from")
        return self._stream(wanted, device_id, resume_from)

    async def _stream(
        self, topics: frozenset[str], device_id: str | None, resume_from: int | None
    ) -> AsyncIterator[dict[str, Any]]:
        bus = self.bus
        if bus is None:
            return
        want_events = "events" in topics
        want_state = "state" in topics

        def match(ev: Any) -> bool:
            if device_id is not None and ev.device != device_id:
                return False
            return want_state if ev.type.startswith("state.") else want_events

        sub = None
        if want_events or want_state:
            if resume_from is not None:
                sub = await bus.resume(resume_from, match, maxsize=self.config.subscriber_queue)
            else:
                sub = bus.subscribe(match, maxsize=self.config.subscriber_queue)
        slots: dict[str, dict[str, Any]] = {}
        ready = asyncio.Event()
        sessions = [s for s in self.sessions.values()
                    if device_id is None or s.device_id == device_id]
        by_id = {s.device_id: s for s in sessions}

        def on_telemetry(dev: str, snap: dict[str, Any]) -> None:
            slots[dev] = snap  # latest wins
            ready.set()

        if "telemetry" in topics:
            for s in sessions:
                s.add_listener(on_telemetry)
        get_task: asyncio.Task[Any] | None = None
        tel_task: asyncio.Task[Any] | None = None
        try:
            while True:
                waits: set[asyncio.Task[Any]] = set()
                if sub is not None:
                    if get_task is None:
                        get_task = asyncio.ensure_future(sub.get())
                    waits.add(get_task)
                if "telemetry" in topics:
                    if tel_task is None:
                        tel_task = asyncio.ensure_future(ready.wait())
                    waits.add(tel_task)
                if not waits:
                    return
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if get_task is not None and get_task in done:
                    task, get_task = get_task, None
                    try:
                        ev = task.result()
                    except SubscriptionClosed as closed:
                        yield {"topic": "closed", "reason": closed.reason,
                               "last_id": closed.last_id}
                        return
                    msg = ev.to_dict()
                    msg["topic"] = "state" if ev.type.startswith("state.") else "events"
                    yield msg
                if tel_task is not None and tel_task in done:
                    tel_task = None
                    ready.clear()
                    items = list(slots.items())
                    slots.clear()
                    for dev, _snap in items:
                        yield by_id[dev].telemetry_message()
        finally:
            for t in (get_task, tel_task):
                if t is not None:
                    t.cancel()
                    with contextlib.suppress(BaseException):
                        await t
            if sub is not None:
                sub.close()
            for s in sessions:
                s.remove_listener(on_telemetry)

    async def query_events(
        self,
        *,
        device_id: str | None,
        type: str | None,  # noqa: A002 - the API's name for it
        since_id: int | None,
        since_time: float | None,
        limit: int,
    ) -> tuple[list[dict[str, Any]], int | None]:
        from metal.host.bridge.events import BusEvent

        if device_id is not None:
            self.session(device_id)
        store = self.store
        if store is None:
            return [], None
        page = await asyncio.to_thread(store.query_events, device=device_id, type=type,
                                       since_id=since_id, since_time=since_time, limit=limit)
        return [BusEvent.from_row(r).to_dict() for r in page.events], page.next_cursor

    def readiness(self) -> dict[str, Any]:
        store_ok = False
        if self.store is not None:
            try:
                store_ok = self.store.schema_version > 0
            except Exception:
                store_ok = False
        return {
            "ready": self.started and store_ok,
            "store": store_ok,
            "devices": {d: s.status for d, s in self.sessions.items()},
        }

    def metrics_text(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data


# -- metrics ---------------------------------------------------------------------------------

_RAIL_STATES: Final = ("off", "seq_on", "on", "seq_off", "fault")


class _BridgeCollector(Collector):
    """Reads the bridge at scrape time (Prometheus naming: base units, ``_total``)."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        b = self.bridge
        dl = ["device"]
        up = GaugeMetricFamily("metal_device_online", "1 when the board is connected and "
                               "described", labels=dl)
        info = GaugeMetricFamily("metal_device_info", "Board identity (value 1)",
                                 labels=["device", "board", "firmware_version", "uid"])
        boot = GaugeMetricFamily("metal_device_boot_id", "Boot id of the board", labels=dl)
        temp = GaugeMetricFamily("metal_sensor_temperature_celsius", "Sensor temperature",
                                 labels=["device", "sensor"])
        s_ok = GaugeMetricFamily("metal_sensor_ok", "1 when the sensor reads valid",
                                 labels=["device", "sensor"])
        rpm = GaugeMetricFamily("metal_fan_speed_rpm", "Fan speed", labels=["device", "fan"])
        duty = GaugeMetricFamily("metal_fan_duty_ratio", "Fan PWM duty, 0..1",
                                 labels=["device", "fan"])
        volt = GaugeMetricFamily("metal_rail_voltage_volts", "Rail voltage",
                                 labels=["device", "rail"])
        amp = GaugeMetricFamily("metal_rail_current_amperes", "Rail current",
                                labels=["device", "rail"])
        rstate = GaugeMetricFamily("metal_rail_state", "1 for the rail's current state",
                                   labels=["device", "rail", "state"])
        ron = GaugeMetricFamily("metal_rail_on", "1 when the rail is on", labels=["device", "rail"])
        il_t = GaugeMetricFamily("metal_interlock_tripped", "1 while the interlock is tripped",
                                 labels=["device", "interlock"])
        il_l = GaugeMetricFamily("metal_interlock_latched", "1 while the interlock is latched",
                                 labels=["device", "interlock"])
        tick = GaugeMetricFamily("metal_loop_tick_seconds", "Duration of the last tick",
                                 labels=dl)
        tick_max = GaugeMetricFamily("metal_loop_tick_max_seconds",
                                     "Longest tick since the previous telemetry", labels=dl)
        overruns = CounterMetricFamily("metal_loop_overruns", "Loop overruns since boot",
                                       labels=dl)
        qovf = CounterMetricFamily("metal_board_queue_overflows",
                                   "Board events that could not be queued, since boot",
                                   labels=dl)
        frames = CounterMetricFamily("metal_link_frames", "Link frames",
                                     labels=["device", "direction"])
        lbytes = CounterMetricFamily("metal_link_bytes", "Link bytes",
                                     labels=["device", "direction"])
        rtx = CounterMetricFamily("metal_link_retransmits", "Reliable frames sent again",
                                  labels=dl)
        lerr = CounterMetricFamily("metal_link_errors", "Frames dropped on receive, by kind",
                                   labels=["device", "kind"])
        tlost = CounterMetricFamily("metal_link_telemetry_lost", "Telemetry frames lost",
                                    labels=dl)
        sess = CounterMetricFamily("metal_link_sessions", "Sessions established", labels=dl)
        rto = CounterMetricFamily("metal_link_timeouts", "Retransmission timeouts", labels=dl)
        rtt = GaugeMetricFamily("metal_link_rtt_seconds", "Heartbeat round-trip time",
                                labels=dl)
        reconn = CounterMetricFamily("metal_transport_reconnects", "Port reopened", labels=dl)
        terr = CounterMetricFamily("metal_transport_errors", "Port errors", labels=dl)
        cmds = CounterMetricFamily("metal_commands", "Command verdicts",
                                   labels=["device", "result"])
        evs = CounterMetricFamily("metal_board_events_received", "Board events stored",
                                  labels=dl)
        for dev, s in list(b.sessions.items()):
            up.add_metric([dev], 1.0 if s.online else 0.0)
            info.add_metric([dev, s.board or "", s.firmware_version or "", s.uid or ""], 1.0)
            if s.boot_id is not None:
                boot.add_metric([dev], float(s.boot_id))
            snap = s.snapshot.data
            tel = s.telemetry
            if tel is not None and snap:
                for x in snap["thermal"]["sensors"]:
                    if x["temp_c"] is not None:
                        temp.add_metric([dev, x["name"]], float(x["temp_c"]))
                    s_ok.add_metric([dev, x["name"]], 1.0 if x["status"] in
                                    ("ok", "warning", "critical") else 0.0)
                for x in snap["thermal"]["fans"]:
                    if x["speed_rpm"] is not None:
                        rpm.add_metric([dev, x["name"]], float(x["speed_rpm"]))
                    if x["duty_pct"] is not None:
                        duty.add_metric([dev, x["name"]], float(x["duty_pct"]) / 100.0)
                for x in snap["power"]["rails"]:
                    if x["voltage_v"] is not None:
                        volt.add_metric([dev, x["name"]], float(x["voltage_v"]))
                    if x["current_a"] is not None:
                        amp.add_metric([dev, x["name"]], float(x["current_a"]))
                    for rs in _RAIL_STATES:
                        rstate.add_metric([dev, x["name"], rs], 1.0 if x["state"] == rs else 0.0)
                    ron.add_metric([dev, x["name"]], 1.0 if x["state"] == "on" else 0.0)
                for x in snap["interlocks"]:
                    il_t.add_metric([dev, x["name"]], 1.0 if x["state"] == "tripped" else 0.0)
                    il_l.add_metric([dev, x["name"]], 1.0 if x["latched"] else 0.0)
                lp = snap["loop"]
                if lp["tick_us"] is not None:
                    tick.add_metric([dev], lp["tick_us"] / 1e6)
                if lp["tick_max_us"] is not None:
                    tick_max.add_metric([dev], lp["tick_max_us"] / 1e6)
                if lp["overruns"] is not None:
                    overruns.add_metric([dev], float(lp["overruns"]))
                if lp["queue_overflows"] is not None:
                    qovf.add_metric([dev], float(lp["queue_overflows"]))
            st = s.link_stats()
            frames.add_metric([dev, "tx"], float(st["frames_tx"]))
            frames.add_metric([dev, "rx"], float(st["frames_rx"]))
            lbytes.add_metric([dev, "tx"], float(st["bytes_tx"]))
            lbytes.add_metric([dev, "rx"], float(st["bytes_rx"]))
            rtx.add_metric([dev], float(st["retransmits"]))
            for kind in ("crc_errors", "cobs_errors", "other_frame_errors", "payload_errors",
                         "duplicates", "out_of_order"):
                lerr.add_metric([dev, kind.removesuffix("_errors")], float(st[kind]))
            tlost.add_metric([dev], float(st["telemetry_lost"]))
            sess.add_metric([dev], float(st["sessions"]))
            rto.add_metric([dev], float(st["timeouts"]))
            if s.rtt_ms is not None:
                rtt.add_metric([dev], s.rtt_ms / 1000.0)
            ts = s.transport.stats
            reconn.add_metric([dev], float(ts.reconnects))
            terr.add_metric([dev], float(ts.errors))
            for result, n in sorted(s.commands_total.items()):
                cmds.add_metric([dev, result], float(n))
            evs.add_metric([dev], float(s.events_received))
        yield from (up, info, boot, temp, s_ok, rpm, duty, volt, amp, rstate, ron, il_t, il_l,
                    tick, tick_max, overruns, qovf, frames, lbytes, rtx, lerr, tlost, sess, rto,
                    rtt, reconn, terr, cmds, evs)
        bus = b.bus
        if bus is not None:
            m = bus.metrics
            subs = GaugeMetricFamily("metal_bus_subscribers", "Live bus subscriptions")
            subs.add_metric([], float(len(bus.subscriptions)))
            depth = GaugeMetricFamily("metal_bus_queue_depth",
                                      "Events waiting per subscription", labels=["subscription"])
            deepest = GaugeMetricFamily("metal_bus_queue_depth_max",
                                        "Deepest subscription queue right now")
            depths = bus.queue_depths()
            for sid, d in depths.items():
                depth.add_metric([str(sid)], float(d))
            deepest.add_metric([], float(max(depths.values(), default=0)))
            yield subs
            yield depth
            yield deepest
            for name, value, text in (
                ("metal_bus_events_published", m.published, "Events fanned out"),
                ("metal_bus_board_events", m.board_events, "New board events stored"),
                ("metal_bus_duplicates_dropped", m.duplicates_dropped,
                 "Board events received again and dropped"),
                ("metal_bus_gaps", m.gaps_detected, "Gaps in board event sequences"),
                ("metal_bus_events_missing", m.events_missing, "Board events lost in gaps"),
                ("metal_bus_slow_consumers", m.slow_consumers,
                 "Subscriptions closed for falling behind"),
            ):
                c = CounterMetricFamily(name, text)
                c.add_metric([], float(value))
                yield c
