"""One board, one session: the host end of the link, driven on the asyncio loop.

:class:`DeviceSession` owns a transport (``metal.host.bridge.transport``) and a host-role
``metal.core.link.Link`` and turns the board's messages into bridge state:

* **handshake** -- the link negotiates the version; a refusal ("board speaks protocol 2..3,
  bridge speaks 1..1") becomes the device's status ``refused`` with that text, and a
  persisted ``link.status`` event;
* **HEARTBEAT** ``{0: host_ms}`` every 500 ms while connected; the echo gives the RTT;
* **DESCRIBE** parts -> :class:`~metal.host.telemetry_view.Layout` (``decode_describe``),
  stored with the device so an offline device still has names;
* **TELEMETRY** -> decoded readings -> the reported state (``DeviceState``), the snapshot
  (rebuilt and serialized once per telemetry frame, see ``snapshot.py``) and the
  conflated telemetry stream;
* **EVENT** -> ``EventBus.publish_board_event`` keyed (device, boot id, seq);
* **CMD/RESULT** -> :meth:`DeviceSession.execute`, idempotent through the store.

The processing loop
-------------------
Everything that touches the link runs in one task, :meth:`DeviceSession._run`::

    wait for bytes (or 20 ms) -> feed, handling each delivered message in order
                              -> timers (heartbeat, liveness, drift)
                              -> poll the link until it has nothing to send -> write

Only this task calls ``Link.poll``; :meth:`execute` only calls ``Link.send`` (which queues)
and wakes the loop.

Ack after persist
-----------------
The link acknowledges a reliable message on the first frame it sends after delivering it,
i.e. on the next ``poll()``. The loop awaits the store write of an EVENT
(``publish_board_event``) or of a RESULT (``update_command``) *before* it feeds the next byte
or polls, so an acknowledged event or verdict is already on disk. If that write fails, the
session drops the link's session (``Link.disconnect``): the link forgets what it received
and did not ack, the board keeps the message queued, renumbers it into the next session and
sends it again (the bus de-duplicates by (device, boot id, seq)).

Commands across session resets and reboots
------------------------------------------
Invariants: a command never executes twice, and is never reported ``applied`` without the
board's RESULT saying so.

* Each command gets a durable id (``store.next_command_id``), is stored ``queued``, then
  ``sent`` (with the boot id) *before* it is handed to the link. At most
  ``max_outstanding`` (8) commands per device are unanswered at any time, so any id the
  board may still see again is within the 16 results it remembers.
* **New session, same boot** (host link reset, cable pulled and re-plugged, host HELLO
  lost ...): the link keeps unacknowledged CMDs and sends them again in the new session.
  The board de-duplicates by id (it answers a repeated id with its first verdict), so a
  command that did run is answered, one that never arrived runs once.
* **Reboot** (new boot id in the HELLO): the old boot's result memory is gone. A command
  that was *transmitted* to the old boot and never answered may or may not have run:
  re-sending could run it twice, so it is not re-sent; it ends as ``timeout``
  (:class:`DeviceTimeout`, "fate unknown"). The session replaces its link with a fresh one
  (which drops the old queue) and re-queues only the commands never transmitted, which the
  new boot runs once. Transmission is observed on the wire: every outgoing CMD frame is
  decoded and marks its command as transmitted to the current boot.
* **Expiry**: a command unanswered for ``command_ttl_s`` (30 s) when a new session starts
  is not carried into it (a "rail on" must not run minutes later with nobody waiting):
  transmitted ones end ``timeout``, never transmitted ones ``failed`` (not applied).
* **Client timeout**: :meth:`execute` gives up waiting after ``command_timeout_s`` with
  :class:`DeviceTimeout`, but the command stays pending: a late RESULT is still recorded
  and a retry with the same Idempotency-Key returns it.
* **Bridge restart**: commands stored ``queued`` were never handed to a link: ``failed``.
  Commands stored ``sent`` wait for a late RESULT (the board re-sends unacknowledged
  RESULTs into the new session) for ``restart_settle_s`` after the device is back, then end
  ``timeout``; after a reboot they end ``timeout`` at once. A late ``applied`` also records
  the command's desired state (unless a newer write to the same key happened).
* **Desired state**: an applied command's desired-state writes are committed in the same
  transaction as its verdict, so ``kill -9`` never leaves an applied command without them.

Reboots and power restore
-------------------------
A HELLO with a boot id other than the last one known (also across bridge restarts: the boot
id is stored) means the board restarted; it comes up with every rail off. The session
publishes ``device.reboot``, forgets the reported state of the old boot and, once the new
DESCRIBE is in, re-applies the desired state according to the device's power-restore
policy:

* ``always_off`` -- power off (explicitly), desired rails recorded "off";
* ``last_state`` (default) -- every rail desired "on" is switched on again (parents come up
  first; ``busy`` answers while a sequence runs are retried), zones in manual mode get their
  duty back;
* ``always_on`` -- power on, desired rails recorded "on".

In every policy zone setpoints, GPIO outputs and the lock/arm state are re-applied from the
desired state.
The outcome is published as ``state.resync``. Events continue under the new boot id (the
bus starts a new sequence space).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final

from metal.core import proto as P
from metal.core.compat import ticks_diff
from metal.core.link import (
    EV_MESSAGE,
    ROLE_HOST,
    S_COBS_ERRORS,
    S_CRC_ERRORS,
    S_DUPLICATES,
    S_IGNORED,
    S_NAKS_RX,
    S_NAKS_TX,
    S_OTHER_FRAME_ERRORS,
    S_OUT_OF_ORDER,
    S_PAYLOAD_ERRORS,
    S_QUEUE_OVERFLOWS,
    S_REFUSALS,
    S_RETRANSMITS,
    S_RX_BYTES,
    S_RX_FRAMES,
    S_SESSIONS,
    S_TELEMETRY_LOST,
    S_TIMEOUTS,
    S_TX_BYTES,
    S_TX_FRAMES,
    ST_CONNECTED,
    ST_CONNECTING,
    ST_IDLE,
    S_COUNT,
    Link,
)
from metal.host.bridge import store as store_mod
from metal.host.bridge.commands import (
    BoardCommand,
    request_to_dict,
    result_name,
    translate,
    verdict_error,
)
from metal.host.bridge.events import EventBus
from metal.host.bridge.model import (
    POWER_RESTORE_POLICIES,
    BridgeError,
    CommandRequest,
    CommandVerdict,
    DeviceError,
    DeviceNotFound,
    DeviceOffline,
    DeviceSummary,
    DeviceTimeout,
    IdempotencyConflict,
    InvalidInput,
    NotSupported,
    PreSerialized,
    Refused,
    TargetNotFound,
)
from metal.host.bridge.snapshot import SnapshotCache, build_snapshot
from metal.host.bridge.state import DeviceState
from metal.host.bridge.store import CommandRow, DesiredRow, Store
from metal.host.bridge.transport import SerialTransport, Transport
from metal.host.codec import ProtocolError, decode_frame, decode_payload, encode_payload
from metal.host.telemetry_view import (
    RAIL_FAULT_REASONS,
    ZONE_MODES,
    Layout,
    TelemetryError,
    decode_describe,
    decode_event,
    decode_hello,
    decode_log,
    decode_telemetry,
)

__all__ = ["DeviceSession", "SessionConfig", "LINK_STAT_NAMES"]

log = logging.getLogger(__name__)

_MASK: Final = P.INT_LIMIT - 1

#: Link.stats index -> name used in snapshots and metrics
LINK_STAT_NAMES: Final[dict[int, str]] = {
    S_TX_FRAMES: "frames_tx",
    S_RX_FRAMES: "frames_rx",
    S_TX_BYTES: "bytes_tx",
    S_RX_BYTES: "bytes_rx",
    S_RETRANSMITS: "retransmits",
    S_CRC_ERRORS: "crc_errors",
    S_COBS_ERRORS: "cobs_errors",
    S_OTHER_FRAME_ERRORS: "other_frame_errors",
    S_NAKS_TX: "naks_tx",
    S_NAKS_RX: "naks_rx",
    S_DUPLICATES: "duplicates",
    S_OUT_OF_ORDER: "out_of_order",
    S_QUEUE_OVERFLOWS: "queue_overflows",
    S_TELEMETRY_LOST: "telemetry_lost",
    S_PAYLOAD_ERRORS: "payload_errors",
    S_SESSIONS: "sessions",
    S_TIMEOUTS: "timeouts",
    S_REFUSALS: "refusals",
    S_IGNORED: "ignored",
}

_LINK_STATES: Final = {ST_IDLE: "idle", ST_CONNECTING: "connecting", ST_CONNECTED: "connected"}

_ERRORS: Final[dict[str, type[BridgeError]]] = {
    cls.code: cls
    for cls in (DeviceTimeout, DeviceOffline, Refused, InvalidInput, TargetNotFound,
                NotSupported, DeviceError, DeviceNotFound)
}


@dataclass
class SessionConfig:
    device_id: str
    url: str
    #: "always_off" | "last_state" | "always_on" (see the module docstring)
    power_restore: str = "last_state"
    #: None: simulated when the board calls itself "sim"
    simulated: bool | None = None
    baudrate: int = 115200
    heartbeat_interval_s: float = 0.5
    #: no frame from a connected board for this long: restart the handshake, offline
    link_timeout_s: float = 3.0
    command_timeout_s: float = 5.0
    command_ttl_s: float = 30.0
    max_outstanding: int = 8
    restart_settle_s: float = 3.0
    #: protocol versions this bridge offers (tests use another range to provoke a refusal)
    proto_min: int = P.PROTO_MIN
    proto_max: int = P.PROTO_MAX
    tick_s: float = 0.02
    drift_every_s: float = 1.0
    resync_busy_retry_s: float = 0.2
    resync_busy_tries: int = 50

    def __post_init__(self) -> None:
        if self.power_restore not in POWER_RESTORE_POLICIES:
            raise ValueError(f"power_restore must be one of {', '.join(POWER_RESTORE_POLICIES)}, "
                             f"got {self.power_restore!r}")
        if not 1 <= self.max_outstanding <= 8:
            raise ValueError("max_outstanding must be 1..8 (the board remembers 16 results)")


@dataclass(eq=False)
class _Pending:
    command_id: int
    cmd: BoardCommand
    payload: bytes
    created: float  # monotonic
    future: asyncio.Future[tuple[CommandVerdict, int]]
    internal: bool = False  # sent by the bridge itself (power restore)
    transmitted_boot: int | None = None  # boot id of the board the CMD went out to
    desired_source: str = ""


@dataclass
class _Orphans:
    """Commands left without a verdict by a previous bridge run."""

    rows: list[CommandRow] = field(default_factory=list)
    settle_task: asyncio.Task[None] | None = None


def _now_ms(mono: float) -> int:
    return int(mono * 1000) & _MASK


class DeviceSession:
    def __init__(
        self,
        config: SessionConfig,
        store: Store,
        bus: EventBus,
        *,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.device_id = config.device_id
        self.store = store
        self.bus = bus
        self.transport: Transport = transport if transport is not None else SerialTransport(
            config.url, baudrate=config.baudrate)
        self._clock = clock
        self._mono = monotonic
        self.state = DeviceState(self.device_id, store, bus, clock=clock)

        # identity (from HELLO), boot, layout
        self.board: str | None = None
        self.firmware_version: str | None = None
        self.uid: str | None = None
        self.boot_id: int | None = None  # the boot of the current/last conversation
        self.layout: Layout | None = None
        self._layout_boot: int | None = None
        self._describe_parts: dict[int, bytes] = {}
        self._describe_hex: list[str] | None = None

        # live state
        self.telemetry: dict[str, Any] | None = None
        self.telemetry_at: float | None = None
        self.zone_modes: list[str | None] = []
        self.zone_setpoints_c: list[float | None] = []
        self.zone_manual_duty: list[float | None] = []
        self.rail_faults: list[str | None] = []
        self.logs: deque[dict[str, Any]] = deque(maxlen=50)
        self.status = "stopped"
        self.status_reason: str | None = None
        self.refusal: str | None = None
        self.rtt_ms: int | None = None
        self.board_ms: int | None = None
        self.snapshot = SnapshotCache()
        self._tel_msg: PreSerialized | None = None
        self._tel_msg_version = -1
        self.commands_total: dict[str, int] = {}
        self.late_results = 0  # RESULTs for a command already settled (a repeat, or unknown)
        #: CMD frames written to the transport (first sends and retransmissions)
        self.cmd_frames_tx = 0
        self.events_received = 0

        # link
        self._link = self._new_link()
        self._retired = [0] * S_COUNT  # stats of replaced links
        self._out = bytearray(P.MAX_WIRE)
        self._rx: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._run_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._started = False
        self._had_session = False
        self._last_rx_frames = 0
        self._last_rx_mono = 0.0
        self._next_hb = 0.0
        self._next_drift = 0.0
        self._resync_due = False
        self._resync_task: asyncio.Task[None] | None = None
        self._drift_task: asyncio.Task[Any] | None = None
        self._restored_boot: int | None = None
        self._zones_live: set[int] = set()  # zone modes set by live events this process

        # commands
        self._pending: dict[int, _Pending] = {}
        self._slots = asyncio.Semaphore(config.max_outstanding)
        self._orphans = _Orphans()

        # reported-state worker (latest wins)
        self._reported_next: dict[str, Any] | None = None
        self._reported_task: asyncio.Task[None] | None = None

        self._listeners: set[Callable[[str, dict[str, Any]], None]] = set()

    # =========================================================================
    # life cycle
    # =========================================================================

    def _new_link(self) -> Link:
        return Link(ROLE_HOST, proto_min=self.config.proto_min, proto_max=self.config.proto_max)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._stopping = False
        row = await asyncio.to_thread(self.store.get_device, self.device_id)
        if row is not None:
            self.board = row.board
            self.uid = row.uid
            self.firmware_version = row.firmware_version
            self.boot_id = row.last_boot_id
            if row.describe and isinstance(row.describe.get("parts_hex"), list):
                with contextlib.suppress(Exception):
                    parts = [bytes.fromhex(h) for h in row.describe["parts_hex"]]
                    self._set_layout(decode_describe(parts), row.last_boot_id)
                    self._describe_hex = list(row.describe["parts_hex"])
        await self._load_orphans()
        self.status = "disconnected"
        self._rebuild_snapshot()
        self.transport.bind(self._on_open, self._on_data, self._on_close)
        self._run_task = asyncio.create_task(self._run(), name=f"session[{self.device_id}]")
        await self.transport.start()

    async def stop(self) -> None:
        if not self._started:
            return
        self._stopping = True
        self._wake.set()
        if self._run_task is not None:
            self._run_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._run_task
            self._run_task = None
        await self.transport.stop()
        for p in list(self._pending.values()):
            if not p.future.done():
                p.future.set_exception(DeviceOffline(
                    f"{self.device_id}: the bridge is stopping; command {p.command_id} has no "
                    "verdict yet", command_id=p.command_id))
                p.future.exception()  # retrieved: no "never retrieved" warning
        for t in list(self._tasks):
            if t is self._resync_task or t is self._orphans.settle_task:
                t.cancel()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self._started = False
        self.status = "stopped"
        self._rebuild_snapshot()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("%s: background task failed: %r", self.device_id, exc, exc_info=exc)

    # =========================================================================
    # transport callbacks (on the loop)
    # =========================================================================

    def _on_open(self) -> None:
        self._update_status()
        self._wake.set()

    def _on_data(self, data: bytes) -> None:
        self._rx.append(data)
        self._wake.set()

    def _on_close(self, reason: str) -> None:
        self._update_status(reason)
        self._wake.set()

    # =========================================================================
    # public state
    # =========================================================================

    @property
    def link(self) -> Link:
        return self._link

    @property
    def simulated(self) -> bool:
        if self.config.simulated is not None:
            return self.config.simulated
        return self.board == "sim"

    @property
    def online(self) -> bool:
        return self.status == "connected"

    def _compute_status(self) -> tuple[str, str | None]:
        if self._stopping or not self._started:
            return "stopped", None
        link = self._link
        if link.refused:
            return "refused", link.refusal
        if not self.transport.connected:
            return "disconnected", self.transport.stats.last_error
        if (link.state == ST_CONNECTED and self.layout is not None
                and self._layout_boot == self.boot_id and self.boot_id is not None):
            return "connected", None
        return "connecting", None

    def _update_status(self, reason: str | None = None) -> None:
        status, why = self._compute_status()
        if status == "refused":
            self.refusal = why
        if status == self.status:
            return
        previous = self.status
        self.status = status
        self.status_reason = why if why is not None else reason
        if status == "connected":
            self._last_rx_mono = self._mono()
        self._rebuild_snapshot()
        data: dict[str, Any] = {"state": status, "previous": previous}
        if self.status_reason:
            data["reason"] = self.status_reason
        if status == "refused":
            data["reason"] = why
            log.warning("%s: %s", self.device_id, why)
        if self._started and not self._stopping:
            self._spawn(self.bus.publish("link.status", self.device_id, data,
                                         boot_id=self.boot_id))

    def summary(self) -> DeviceSummary:
        return DeviceSummary(
            id=self.device_id,
            board=self.board or "unknown",
            online=self.online,
            firmware_version=self.firmware_version,
            simulated=self.simulated,
            boot_id=self.boot_id,
            link_state=self.status,
            uid=self.uid,
            refusal=self.refusal if self.status == "refused" else None,
        )

    def snapshot_json(self) -> bytes:
        return self.snapshot.json

    def link_stats(self) -> dict[str, int]:
        """Cumulative link counters (over every link this session used)."""
        s = self._link.stats
        r = self._retired
        return {name: r[i] + s[i] for i, name in LINK_STAT_NAMES.items()}

    def link_info(self) -> dict[str, Any]:
        link = self._link
        t = self.transport.stats
        info: dict[str, Any] = {
            "url": self.config.url,
            "state": self.status,
            "link_state": _LINK_STATES.get(link.state, str(link.state)),
            "session": link.session or None,
            "proto": link.proto or None,
            "refusal": self.refusal if self.status == "refused" else None,
            "rtt_ms": self.rtt_ms,
            "srtt_ms": link.srtt_ms,
            "rto_ms": link.rto_ms,
            "queued": link.queued(),
            "pending_commands": len(self._pending),
            "transport_connected": t.connected,
            "transport_bytes_rx": t.bytes_rx,
            "transport_bytes_tx": t.bytes_tx,
            "reconnects": t.reconnects,
            "transport_errors": t.errors,
            "write_drops": t.write_drops,
            "last_error": t.last_error,
        }
        info.update(self.link_stats())
        return info

    def add_listener(self, fn: Callable[[str, dict[str, Any]], None]) -> None:
        """``fn(device_id, snapshot_dict)`` on every telemetry (do not mutate the dict)."""
        self._listeners.add(fn)

    def remove_listener(self, fn: Callable[[str, dict[str, Any]], None]) -> None:
        self._listeners.discard(fn)

    def telemetry_message(self) -> PreSerialized:
        """The stream message for the latest snapshot, serialized once per frame
        however many clients it goes to (the snapshot's JSON is reused as is)."""
        snap = self.snapshot
        if self._tel_msg is None or self._tel_msg_version != snap.version:
            at = snap.data.get("updated_at")
            text = ('{"topic":"telemetry","device":' + json.dumps(self.device_id)
                    + ',"time":' + json.dumps(at) + ',"data":' + snap.json.decode() + "}")
            self._tel_msg = PreSerialized(text, topic="telemetry", device=self.device_id,
                                          time=at, data=snap.data)
            self._tel_msg_version = snap.version
        return self._tel_msg

    # =========================================================================
    # the loop
    # =========================================================================

    async def _run(self) -> None:
        tick = self.config.tick_s
        while not self._stopping:
            if not self._rx:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=tick)
                except TimeoutError:
                    pass
            self._wake.clear()
            try:
                await self._process_rx()
                self._timers()
                self._flush()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one bad message kill the device
                log.exception("%s: session loop error", self.device_id)
                await asyncio.sleep(tick)

    async def _process_rx(self) -> None:
        while self._rx and not self._stopping:
            data = self._rx.popleft()
            pos, end = 0, len(data)
            while pos < end:
                link = self._link
                pos = link.feed(data, pos, end, _now_ms(self._mono()))
                if link.ev == EV_MESSAGE:
                    await self._on_message(link)
        link = self._link
        frames = link.stats[S_RX_FRAMES]
        if frames != self._last_rx_frames:
            self._last_rx_frames = frames
            self._last_rx_mono = self._mono()

    def _timers(self) -> None:
        now = self._mono()
        link = self._link
        if link.state == ST_CONNECTED:
            if now - self._last_rx_mono > self.config.link_timeout_s:
                # the board went silent: start over (queued CMDs are kept, see docstring)
                log.info("%s: no frame for %.1f s, restarting the handshake", self.device_id,
                         now - self._last_rx_mono)
                self._link.disconnect()
            elif now >= self._next_hb:
                self._next_hb = now + self.config.heartbeat_interval_s
                p = encode_payload({P.HB_HOST_MS: _now_ms(now)})
                link.send(P.T_HEARTBEAT, p, 0, len(p))
        if now >= self._next_drift and self._started:
            self._next_drift = now + self.config.drift_every_s
            if self.online and (self._drift_task is None or self._drift_task.done()):
                self._drift_task = self._spawn(self.state.evaluate())
        self._update_status()

    def _flush(self) -> None:
        link = self._link
        now = _now_ms(self._mono())
        out = self._out
        chunks: list[bytes] = []
        cmd_frames: list[bytes] = []
        for _ in range(64):
            n = link.poll(now, out, 0)
            if n <= 0:
                break
            frame = bytes(out[:n])
            chunks.append(frame)
            if n > 2 and (frame[1] & 0x0F) == P.T_CMD:
                cmd_frames.append(frame)
        if chunks and self.transport.write(b"".join(chunks)):
            self.cmd_frames_tx += len(cmd_frames)
            for frame in cmd_frames:
                self._note_cmd_tx(frame)

    def _note_cmd_tx(self, frame: bytes) -> None:
        try:
            payload = decode_frame(frame).payload
            cid = payload[P.CMD_ID]
        except (ProtocolError, TypeError, KeyError, IndexError):
            return
        p = self._pending.get(cid)
        if p is not None and p.transmitted_boot is None:
            p.transmitted_boot = self.boot_id

    # =========================================================================
    # messages
    # =========================================================================

    async def _on_message(self, link: Link) -> None:
        t = link.rx_type
        raw = bytes(link.rx_buf[link.rx_off:link.rx_off + link.rx_len])
        started = link.session_started
        if link.rx_err != P.E_OK:
            log.warning("%s: %s payload failed to decode (error %d): dropped", self.device_id,
                        t, link.rx_err)
            return
        try:
            payload = decode_payload(raw) if raw else None
        except ProtocolError as exc:
            log.warning("%s: message type %d: %s", self.device_id, t, exc)
            return
        if t == P.T_HELLO:
            self._on_hello(link, payload, started)
        elif t == P.T_TELEMETRY:
            self._on_telemetry(payload)
        elif t == P.T_EVENT:
            await self._on_event(payload)
        elif t == P.T_RESULT:
            await self._on_result(payload)
        elif t == P.T_DESCRIBE:
            self._on_describe(raw, payload)
        elif t == P.T_HEARTBEAT:
            self._on_heartbeat(payload)
        elif t == P.T_LOG:
            self._on_log(payload)

    # -- HELLO / sessions -----------------------------------------------------

    def _on_hello(self, link: Link, payload: Any, started: bool) -> None:
        if isinstance(payload, dict):
            h = decode_hello(payload)
            changed = False
            for attr, key in (("board", "board"), ("firmware_version", "fw_version"),
                              ("uid", "uid")):
                v = h.get(key)
                if isinstance(v, str) and v != getattr(self, attr):
                    setattr(self, attr, v)
                    changed = True
            if changed:
                self._spawn(asyncio.to_thread(
                    self.store.upsert_device, self.device_id, board=self.board, uid=self.uid,
                    firmware_version=self.firmware_version))
        if started:
            self._on_session_started(link)
        self._update_status()

    def _on_session_started(self, link: Link) -> None:
        boot = link.peer_boot_id
        prev = self.boot_id
        rebooted = prev is not None and boot != prev
        first = not self._had_session
        self._had_session = True
        self._describe_parts.clear()
        self._last_rx_mono = self._mono()
        self._next_hb = 0.0  # a heartbeat at once: the board may be in host-lost
        self.boot_id = boot
        if prev != boot:
            self._spawn(asyncio.to_thread(self.store.upsert_device, self.device_id,
                                          boot_id=boot))
        if rebooted:
            log.info("%s: board rebooted (boot id %d -> %d)", self.device_id, prev, boot)
            self._reset_boot_state()
            self._resync_due = True
            self._spawn(self.bus.publish("device.reboot", self.device_id,
                                         {"previous_boot_id": prev, "boot_id": boot},
                                         boot_id=boot))
        elif first and prev == boot:
            self._spawn(self._restore_boot_state(boot))
        swap = self._settle_pending(boot, rebooted)
        if self._orphans.rows:
            if rebooted:
                self._spawn(self._finish_orphans("the board rebooted before answering; "
                                                 "the command may or may not have been applied"))
        if swap:
            self._swap_link()

    def _settle_pending(self, boot: int, rebooted: bool) -> bool:
        """Resolve the commands that must not be carried into the new session.

        Returns True when at least one of them sits in the link's queue, which then has to
        be replaced (the link would otherwise send it again).
        """
        now = self._mono()
        ttl = self.config.command_ttl_s
        drop = False
        for p in list(self._pending.values()):
            if p.future.done():
                continue
            if rebooted and p.transmitted_boot is not None:
                err: BridgeError = DeviceTimeout(
                    f"{self.device_id}: the board rebooted (boot {p.transmitted_boot} -> {boot}) "
                    f"before answering command {p.command_id} ({p.cmd.text}); it may or may not "
                    "have been applied", command_id=p.command_id)
                state = "timeout"
            elif now - p.created > ttl:
                if p.transmitted_boot is not None:
                    err = DeviceTimeout(
                        f"{self.device_id}: command {p.command_id} ({p.cmd.text}) got no answer "
                        f"within {ttl:g} s; it may or may not have been applied",
                        command_id=p.command_id)
                    state = "timeout"
                else:
                    err = DeviceOffline(
                        f"{self.device_id}: command {p.command_id} ({p.cmd.text}) could not be "
                        f"sent within {ttl:g} s; it was not applied", command_id=p.command_id)
                    state = "failed"
            else:
                continue
            drop = True
            self._pending.pop(p.command_id, None)
            self._spawn(self._fail_command(p, state, err))
        return drop

    def _swap_link(self) -> None:
        """Replace the link (dropping its queue) and re-queue the commands still pending."""
        old = self._link
        for i in range(S_COUNT):
            self._retired[i] += old.stats[i]
        link = self._new_link()
        self._link = link
        self._last_rx_frames = 0
        for p in self._pending.values():
            if not p.future.done():
                link.send(P.T_CMD, p.payload, 0, len(p.payload))
        self._wake.set()

    def _reset_boot_state(self) -> None:
        n = len(self.layout.zones) if self.layout else 0
        self.zone_modes = ["auto"] * n
        self._zones_live.clear()
        self.zone_setpoints_c = [None] * n
        self.zone_manual_duty = [None] * n
        self.rail_faults = [None] * (len(self.layout.rails) if self.layout else 0)
        self.telemetry = None
        self.telemetry_at = None
        self.state.reported.clear()
        self._rebuild_snapshot()

    async def _restore_boot_state(self, boot: int) -> None:
        """After a bridge restart, same boot: zone modes and setpoints from the store."""
        from metal.host.bridge.events import EventFilter

        self._restored_boot = boot
        modes = await self.bus.replay(
            0, EventFilter(types=("hardware.zone_mode",), devices=(self.device_id,)),
            limit=100000)
        sps = await self.bus.replay(
            0, EventFilter(types=("thermal.setpoint",), devices=(self.device_id,)),
            limit=100000)
        if self.boot_id != boot:
            return
        self._ensure_arrays()
        for ev in modes:
            if ev.boot_id == boot and isinstance(ev.data.get("source"), int):
                i = ev.data["source"]
                if i in self._zones_live:
                    continue  # a live event already told us something newer
                v = ev.data.get("value")
                if 0 <= i < len(self.zone_modes) and isinstance(v, int) and 0 <= v < len(ZONE_MODES):
                    self.zone_modes[i] = ZONE_MODES[v]
        for ev in sps:
            if ev.boot_id == boot:
                i = ev.data.get("zone_index")
                if isinstance(i, int) and 0 <= i < len(self.zone_setpoints_c):
                    self.zone_setpoints_c[i] = ev.data.get("setpoint_c")
        self._rebuild_snapshot()

    # -- DESCRIBE ---------------------------------------------------------------

    def _on_describe(self, raw: bytes, payload: Any) -> None:
        if not isinstance(payload, dict):
            return
        idx, n = payload.get(P.DESC_PART), payload.get(P.DESC_PARTS)
        if type(idx) is not int or type(n) is not int or not 0 <= idx < n:
            return
        self._describe_parts[idx] = raw
        if len(self._describe_parts) < n or any(i not in self._describe_parts for i in range(n)):
            return
        parts = [self._describe_parts[i] for i in range(n)]
        try:
            layout = decode_describe(parts)
        except ValueError as exc:
            log.error("%s: bad DESCRIBE: %s", self.device_id, exc)
            return
        hexes = [p.hex() for p in parts]
        self._set_layout(layout, self.boot_id)
        if hexes != self._describe_hex:
            self._describe_hex = hexes
            self._spawn(asyncio.to_thread(
                self.store.upsert_device, self.device_id,
                describe={"parts_hex": hexes, "layout": layout.to_dict()}))
        self._update_status()
        if self._resync_due and (self._resync_task is None or self._resync_task.done()):
            self._resync_due = False
            self._resync_task = self._spawn(self._resync())
        if self._orphans.rows and self._orphans.settle_task is None:
            self._orphans.settle_task = self._spawn(self._settle_orphans())

    def _set_layout(self, layout: Layout, boot: int | None) -> None:
        self.layout = layout
        self._layout_boot = boot
        self._ensure_arrays()  # per-zone/per-rail state is reset only if the sizes changed
        self._rebuild_snapshot()

    def _ensure_arrays(self) -> None:
        lay = self.layout
        if lay is None:
            return
        nz, nr = len(lay.zones), len(lay.rails)
        if len(self.zone_modes) != nz:
            self.zone_modes = ["auto"] * nz
            self.zone_setpoints_c = [None] * nz
            self.zone_manual_duty = [None] * nz
        if len(self.rail_faults) != nr:
            self.rail_faults = [None] * nr

    # -- TELEMETRY -----------------------------------------------------------------

    def _on_telemetry(self, payload: Any) -> None:
        lay = self.layout
        if lay is None or self._layout_boot != self.boot_id:
            return  # the numbers mean nothing without this boot's layout
        try:
            tel = decode_telemetry(lay, payload)
        except TelemetryError as exc:
            log.warning("%s: %s", self.device_id, exc)
            return
        self.telemetry = tel
        self.telemetry_at = self._clock()
        snap = self._rebuild_snapshot()
        self._queue_reported(self._reported_from(tel, snap))
        for fn in list(self._listeners):
            try:
                fn(self.device_id, snap)
            except Exception:
                log.exception("%s: telemetry listener failed", self.device_id)

    def _reported_from(self, tel: dict[str, Any], snap: dict[str, Any]) -> dict[str, Any]:
        rep: dict[str, Any] = {}
        for r in tel.get("rails", ()):
            rep[f"rail:{r['name']}"] = r["state"]
        for i, z in enumerate(snap["thermal"]["zones"]):
            mode = z["mode"]
            entry: dict[str, Any] = {"mode": mode}
            if mode == "manual":
                duty = self.zone_manual_duty[i] if i < len(self.zone_manual_duty) else None
                entry["duty_pct"] = duty if duty is not None else z["duty_pct"]
            rep[f"zone:{z['name']}"] = entry
            if isinstance(z.get("setpoint_c"), (int, float)):
                # what this boot was set to, else the board's configured default
                rep[f"setpoint:{z['name']}"] = z["setpoint_c"]
        for g in snap["gpio"]:
            if g["level"] is not None:
                rep[f"gpio:{g['name']}"] = g["level"]
        sec = snap["security"]
        fitted = sec.get("fitted") or {}
        if fitted.get("lock") and sec.get("locked") is not None:
            rep["security.lock"] = "locked" if sec["locked"] else "unlocked"
        if fitted.get("tamper") and sec.get("armed") is not None:
            rep["security.armed"] = bool(sec["armed"])
        return rep

    def _queue_reported(self, values: dict[str, Any]) -> None:
        self._reported_next = values
        if self._reported_task is None or self._reported_task.done():
            self._reported_task = self._spawn(self._reported_worker())

    async def _reported_worker(self) -> None:
        while self._reported_next is not None:
            values, self._reported_next = self._reported_next, None
            await self.state.apply_reported(values)

    def _rebuild_snapshot(self) -> dict[str, Any]:
        snap = build_snapshot(
            device_id=self.device_id,
            board=self.board,
            online=self.online,
            simulated=self.simulated,
            firmware_version=self.firmware_version,
            boot_id=self.boot_id,
            layout=self.layout,
            telemetry=self.telemetry,
            zone_modes=self.zone_modes,
            zone_setpoints_c=self.zone_setpoints_c,
            rail_faults=self.rail_faults,
            link=self.link_info(),
            updated_at=self.telemetry_at,
        )
        self.snapshot.update(snap)
        return snap

    # -- EVENT ------------------------------------------------------------------------

    async def _on_event(self, payload: Any) -> None:
        if not isinstance(payload, dict) or type(payload.get(P.EK_SEQ)) is not int:
            log.warning("%s: EVENT without a sequence number: %r", self.device_id, payload)
            return
        boot = self.boot_id
        if boot is None:
            return
        kind = payload.get(P.EK_KIND)
        info = decode_event(self.layout, payload)
        data = {k: info[k] for k in ("source_name", "value_name", "reason", "value_c")
                if info.get(k) is not None}
        data["name"] = info["kind"]
        try:
            await self.bus.publish_board_event(
                self.device_id, boot, payload[P.EK_SEQ], kind if type(kind) is int else str(kind),
                payload.get(P.EK_SOURCE), payload.get(P.EK_VALUE), payload.get(P.EK_AUX),
                payload.get(P.EK_BOARD_MS), data)
        except Exception:
            # Not stored: it must not be acknowledged. Dropping the session makes the board
            # send it again in the next one.
            log.exception("%s: could not store event seq %s; restarting the session",
                          self.device_id, payload.get(P.EK_SEQ))
            self._link.disconnect()
            self._rx.clear()
            return
        self.events_received += 1
        self._apply_event(kind, payload)

    def _apply_event(self, kind: Any, payload: dict[int, Any]) -> None:
        src = payload.get(P.EK_SOURCE)
        val = payload.get(P.EK_VALUE)
        if type(src) is not int or type(val) is not int:
            return
        if kind == P.EV_ZONE_MODE:
            self._ensure_arrays()
            if 0 <= src < len(self.zone_modes) and 0 <= val < len(ZONE_MODES):
                self.zone_modes[src] = ZONE_MODES[val]
                self._zones_live.add(src)
                self._rebuild_snapshot()
        elif kind == P.EV_RAIL_STATE:
            self._ensure_arrays()
            if 0 <= src < len(self.rail_faults):
                if val == P.RAIL_FAULT:
                    aux = payload.get(P.EK_AUX)
                    self.rail_faults[src] = RAIL_FAULT_REASONS.get(aux, "fault") if aux else "fault"
                else:
                    self.rail_faults[src] = None

    # -- RESULT -------------------------------------------------------------------------

    async def _on_result(self, payload: Any) -> None:
        if not isinstance(payload, dict):
            return
        cid, code = payload.get(P.RES_ID), payload.get(P.RES_CODE)
        if type(cid) is not int or type(code) is not int:
            log.warning("%s: RESULT without id/code: %r", self.device_id, payload)
            return
        name = result_name(code)
        result: dict[str, Any] = {"code": code, "result": name}
        if P.RES_VALUE in payload:
            result["value"] = payload[P.RES_VALUE]
        state = "applied" if code == P.R_OK else "rejected"
        p = self._pending.get(cid)
        orphan = next((r for r in self._orphans.rows if r.command_id == cid), None)
        # An applied command's desired state is committed with its verdict, in one
        # transaction: a kill -9 between two commits would leave the command "applied" and
        # its desired state missing. A command of a previous run (an orphan whose RESULT
        # came late) gets its desired state too.
        writes: list[tuple[str, Any]] = []
        source = ""
        if code == P.R_OK and p is not None:
            writes, source = list(p.cmd.desired), p.desired_source
        elif code == P.R_OK and orphan is not None:
            writes, source = self._orphan_desired(orphan), f"api:{orphan.principal}"
        try:
            rows = await asyncio.to_thread(self._store_result, cid, state, result, writes,
                                           source, orphan)
        except (store_mod.UnknownCommand, store_mod.InvalidTransition) as exc:
            log.info("%s: late or unknown RESULT for command %d (%s): %s", self.device_id, cid,
                     name, exc)
            # (a board answers a repeated CMD again; the command was counted once already)
            self.late_results += 1
            self._orphans.rows = [r for r in self._orphans.rows if r.command_id != cid]
            return
        except Exception:
            log.exception("%s: could not store the RESULT of command %d; restarting the "
                          "session", self.device_id, cid)
            self._link.disconnect()
            self._rx.clear()
            return
        self._orphans.rows = [r for r in self._orphans.rows if r.command_id != cid]
        self.commands_total[name] = self.commands_total.get(name, 0) + 1
        if p is None:
            if rows:
                self._spawn(self._publish_desired(rows))
            return
        self._pending.pop(cid, None)
        verdict = CommandVerdict(cid, "applied" if code == P.R_OK else "rejected",
                                 None if code == P.R_OK else name)
        if code == P.R_OK:
            self._apply_local(p.cmd)
        self._spawn(self._complete(p, verdict, code, rows))

    def _store_result(self, cid: int, state: str, result: dict[str, Any],
                      writes: list[tuple[str, Any]], source: str,
                      orphan: CommandRow | None) -> list[DesiredRow]:
        """Worker thread: the verdict and the desired state it implies, one commit."""
        rows: list[DesiredRow] = []
        desired = self.state.desired
        try:
            with self.store.transaction():
                self.store.update_command(self.device_id, cid, state, result=result)
                for key, value in writes:
                    entry = desired.entry(key)
                    if orphan is not None and entry is not None and \
                            entry.updated_at > orphan.created_at:
                        continue  # a newer desired write already happened
                    try:
                        rows.append(desired.set(key, value, source, at=self._clock()))
                    except ValueError as exc:
                        log.warning("%s: desired %s: %s", self.device_id, key, exc)
        except BaseException:
            with contextlib.suppress(Exception):
                desired.reload()  # the cache may hold rows of the rolled-back transaction
            raise
        return rows

    def _orphan_desired(self, row: CommandRow) -> list[tuple[str, Any]]:
        """The desired-state writes of a command stored by a previous bridge run."""
        req = row.request
        lay = self.layout
        if lay is None or not isinstance(req.get("kind"), str) or not isinstance(
                req.get("action"), str):
            return []
        try:
            cmd = translate(CommandRequest(req["kind"], req["action"], req.get("target"),
                                           req.get("value"), dict(req.get("extra") or {})),
                            lay, simulated=self.simulated)
        except BridgeError:
            return []  # e.g. the bridge's own power-restore commands (kind "resync")
        return list(cmd.desired)

    async def _publish_desired(self, rows: list[DesiredRow]) -> None:
        """``state.changed`` for desired rows already stored (as DeviceState.set_desired)."""
        for row in rows:
            await self.bus.publish(
                "state.changed", self.device_id,
                {"key": row.key, "desired": row.value, "generation": row.generation,
                 "source": row.source})
        if rows:
            await self.state.evaluate()

    def _apply_local(self, cmd: BoardCommand) -> None:
        """What an applied command tells us that telemetry does not (setpoints, duties)."""
        if cmd.op == P.OP_ZONE_SETPOINT and cmd.target is not None:
            self._ensure_arrays()
            if 0 <= cmd.target < len(self.zone_setpoints_c):
                sp = cmd.meta.get("setpoint_c")
                self.zone_setpoints_c[cmd.target] = sp
                self._spawn(self.bus.publish(
                    "thermal.setpoint", self.device_id,
                    {"zone": cmd.meta.get("zone"), "zone_index": cmd.target, "setpoint_c": sp},
                    boot_id=self.boot_id))
                self._rebuild_snapshot()
        elif cmd.op == P.OP_ZONE_MANUAL and cmd.target is not None:
            self._ensure_arrays()
            if 0 <= cmd.target < len(self.zone_manual_duty):
                self.zone_manual_duty[cmd.target] = cmd.meta.get("duty_pct")

    async def _complete(self, p: _Pending, verdict: CommandVerdict, code: int,
                        rows: list[DesiredRow]) -> None:
        try:
            await self._publish_desired(rows)
        finally:
            if not p.future.done():
                p.future.set_result((verdict, code))

    async def _fail_command(self, p: _Pending, state: str, err: BridgeError) -> None:
        with contextlib.suppress(store_mod.InvalidTransition, store_mod.UnknownCommand):
            await asyncio.to_thread(self.store.update_command, self.device_id, p.command_id,
                                    state, result={"error": err.code, "message": err.message})
        self.commands_total[state] = self.commands_total.get(state, 0) + 1
        if not p.future.done():
            p.future.set_exception(err)
            p.future.exception()

    # -- HEARTBEAT / LOG ----------------------------------------------------------------

    def _on_heartbeat(self, payload: Any) -> None:
        if not isinstance(payload, dict):
            return
        echoed = payload.get(P.HB_HOST_MS)
        if type(echoed) is int:
            rtt = ticks_diff(_now_ms(self._mono()), echoed)
            if 0 <= rtt < 60000:
                self.rtt_ms = rtt
        bms = payload.get(P.HB_BOARD_MS)
        if type(bms) is int:
            self.board_ms = bms

    def _on_log(self, payload: Any) -> None:
        if not isinstance(payload, dict):
            return
        entry = decode_log(payload)
        entry["time"] = self._clock()
        self.logs.append(entry)
        lvl = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
               "error": logging.ERROR}.get(entry["level"], logging.INFO)
        log.log(lvl, "%s board: %s", self.device_id, entry["text"])

    # =========================================================================
    # commands
    # =========================================================================

    async def execute(
        self,
        request: CommandRequest,
        *,
        principal: str,
        idempotency_key: str | None,
        timeout: float | None = None,
    ) -> CommandVerdict:
        """Validate, send and wait for the board's verdict (see the module docstring)."""
        req = request_to_dict(request)
        wait = self.config.command_timeout_s if timeout is None else timeout
        if idempotency_key is not None:
            row = await asyncio.to_thread(self.store.find_command, self.device_id,
                                          idempotency_key, principal=principal)
            if row is not None:
                return await self._replay(row, req, wait)
        layout = self.layout
        if layout is None:
            raise DeviceOffline(f"{self.device_id} has not described itself yet; it has never "
                                "been online", device=self.device_id)
        cmd = translate(request, layout, simulated=self.simulated)
        if not self.online:
            raise DeviceOffline(f"{self.device_id} is {self.status}"
                                + (f": {self.status_reason}" if self.status_reason else ""),
                                device=self.device_id)
        return await self._submit(cmd, req, principal=principal, key=idempotency_key,
                                  timeout=wait)

    async def _submit(
        self,
        cmd: BoardCommand,
        req: dict[str, Any],
        *,
        principal: str,
        key: str | None,
        timeout: float,
        internal: bool = False,
    ) -> CommandVerdict:
        deadline = self._mono() + timeout
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout)
        except TimeoutError:
            raise Refused(f"{self.device_id}: {self.config.max_outstanding} commands are "
                          "already waiting for the board; retry later", reason="busy") from None
        released = False

        def release(_f: Any = None) -> None:
            nonlocal released
            if not released:
                released = True
                self._slots.release()

        p: _Pending | None = None
        try:
            creating = asyncio.ensure_future(asyncio.to_thread(
                self.store.create_command, self.device_id, req, idempotency_key=key,
                principal=principal))
            try:
                row, created = await asyncio.shield(creating)
            except asyncio.CancelledError:
                # the caller left while the row was being written: it will never be sent
                creating.add_done_callback(self._abandoned_create)
                raise
            except store_mod.IdempotencyConflict as exc:
                raise IdempotencyConflict(str(exc), command_id=exc.existing.command_id) from None
            if not created:
                release()
                return await self._replay(row, req, max(0.0, deadline - self._mono()))
            cid = row.command_id
            payload = encode_payload(cmd.payload(cid))
            loop = asyncio.get_running_loop()
            p = _Pending(cid, cmd, payload, self._mono(), loop.create_future(), internal,
                         desired_source="power_restore" if internal else f"api:{principal}")
            p.future.add_done_callback(release)
            self._pending[cid] = p
            await asyncio.to_thread(self.store.update_command, self.device_id, cid, "sent",
                                    boot_id=self.boot_id)
            if not self._link.send(P.T_CMD, payload, 0, len(payload)):
                self._pending.pop(cid, None)
                err = Refused(f"{self.device_id}: the link queue is full; command {cid} was "
                              "not sent", reason="busy", command_id=cid)
                await self._fail_command(p, "failed", err)
                raise err
            self._wake.set()
        except BaseException:
            if p is None:
                release()
            elif not p.future.done():
                # cancelled or failed before the CMD reached the link: it was not sent
                self._pending.pop(p.command_id, None)
                self._spawn(self._fail_command(p, "failed", DeviceOffline(
                    f"command {p.command_id} was abandoned before it was sent; it was not "
                    "applied", command_id=p.command_id)))
            raise
        return await self._wait(p, max(0.0, deadline - self._mono()))

    def _abandoned_create(self, fut: asyncio.Future[tuple[CommandRow, bool]]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        row, created = fut.result()
        if created:
            err = DeviceOffline(f"command {row.command_id} was abandoned before it was sent; "
                                "it was not applied", command_id=row.command_id)
            self._spawn(asyncio.to_thread(self.store.update_command, self.device_id,
                                          row.command_id, "failed",
                                          result={"error": err.code, "message": err.message}))

    async def _wait(self, p: _Pending, timeout: float, replayed: bool = False) -> CommandVerdict:
        try:
            verdict, code = await asyncio.wait_for(asyncio.shield(p.future), timeout)
        except TimeoutError:
            raise DeviceTimeout(
                f"{self.device_id}: no verdict for command {p.command_id} ({p.cmd.text}) within "
                f"{timeout:.3g} s; it is still pending and may apply. Retry with the same "
                "Idempotency-Key to get its verdict", command_id=p.command_id,
                replayed=replayed) from None
        if replayed:
            verdict = CommandVerdict(verdict.command_id, verdict.result, verdict.reason, True)
        err = verdict_error(verdict, code, p.cmd.text)
        if err is not None:
            raise err
        return verdict

    async def _replay(self, row: CommandRow, req: dict[str, Any], timeout: float) -> CommandVerdict:
        if store_mod._dumps(row.request) != store_mod._dumps(req):
            raise IdempotencyConflict(
                f"idempotency key {row.idempotency_key!r} was already used for a different "
                f"request (command {row.command_id})", command_id=row.command_id)
        cid = row.command_id
        if row.state in ("applied", "rejected"):
            res = row.result or {}
            code = res.get("code", P.R_OK if row.state == "applied" else P.R_MALFORMED)
            verdict = CommandVerdict(cid, "applied" if row.state == "applied" else "rejected",
                                     None if row.state == "applied" else result_name(code), True)
            err = verdict_error(verdict, code)
            if err is not None:
                raise err
            return verdict
        if row.state in ("timeout", "failed"):
            res = row.result or {}
            cls = _ERRORS.get(str(res.get("error")), DeviceTimeout)
            raise cls(res.get("message") or f"command {cid} ended {row.state}",
                      command_id=cid, replayed=True)
        p = self._pending.get(cid)
        if p is not None:
            return await self._wait(p, timeout, replayed=True)
        raise DeviceTimeout(f"{self.device_id}: command {cid} has no verdict yet; retry later",
                            command_id=cid, replayed=True)

    # -- commands left by a previous bridge run ----------------------------------------------

    async def _load_orphans(self) -> None:
        rows = await asyncio.to_thread(self.store.list_commands, self.device_id,
                                       ("queued", "sent"))
        for row in rows:
            if row.state == "queued":
                err = DeviceOffline(f"command {row.command_id} was never sent: the bridge "
                                    "stopped first; it was not applied")
                with contextlib.suppress(store_mod.InvalidTransition):
                    await asyncio.to_thread(self.store.update_command, self.device_id,
                                            row.command_id, "failed",
                                            result={"error": err.code, "message": err.message})
            else:
                self._orphans.rows.append(row)

    async def _settle_orphans(self) -> None:
        await asyncio.sleep(self.config.restart_settle_s)
        await self._finish_orphans("no verdict arrived after the bridge restarted; the "
                                   "command may or may not have been applied")

    async def _finish_orphans(self, why: str) -> None:
        rows, self._orphans.rows = self._orphans.rows, []
        for row in rows:
            err = DeviceTimeout(f"command {row.command_id}: {why}")
            with contextlib.suppress(store_mod.InvalidTransition, store_mod.UnknownCommand):
                await asyncio.to_thread(self.store.update_command, self.device_id,
                                        row.command_id, "timeout",
                                        result={"error": err.code, "message": err.message})

    # -- power restore -------------------------------------------------------------------

    def resync_plan(self) -> list[BoardCommand]:
        """The commands that bring a freshly booted board back to the desired state."""
        lay = self.layout
        if lay is None:
            return []
        desired = self.state.desired
        policy = self.config.power_restore
        plan: list[BoardCommand] = []
        rails = [r["name"] for r in lay.rails]
        if policy == "always_on":
            plan.append(BoardCommand(P.OP_POWER_ON, desired=tuple((f"rail:{n}", "on")
                                                                  for n in rails),
                                     text="power on (always_on)"))
        elif policy == "always_off":
            plan.append(BoardCommand(P.OP_POWER_OFF, desired=tuple((f"rail:{n}", "off")
                                                                   for n in rails),
                                     text="power off (always_off)"))
        else:
            on = [n for n in rails if desired.get(f"rail:{n}") == "on"]
            if rails and len(on) == len(rails):
                plan.append(BoardCommand(P.OP_POWER_ON, text="power on (last_state)"))
            else:
                parents = {r["name"]: r.get("parent") for r in lay.rails}
                has_on_child = {parents[n] for n in on if parents.get(n)}
                for i, n in enumerate(rails):
                    if n in on and n not in has_on_child:
                        plan.append(BoardCommand(P.OP_RAIL_ON, i, text=f"rail on {n} (last_state)"))
        for i, z in enumerate(lay.zones):
            sp = desired.get(f"setpoint:{z['name']}")
            if isinstance(sp, (int, float)) and not isinstance(sp, bool):
                plan.append(BoardCommand(P.OP_ZONE_SETPOINT, i, int(round(sp * 1000)),
                                         text=f"zone {z['name']} setpoint {sp:g} °C",
                                         meta={"zone": z["name"], "setpoint_c": sp}))
            d = desired.get(f"zone:{z['name']}")
            if isinstance(d, dict) and d.get("mode") == "manual":
                duty = float(d.get("duty_pct", 0))
                plan.append(BoardCommand(P.OP_ZONE_MANUAL, i, int(round(duty * 10)),
                                         text=f"zone {z['name']} manual {duty:g} %",
                                         meta={"zone": z["name"], "duty_pct": duty}))
        for i, g in enumerate(lay.gpio):
            if g.get("direction") != "out" or g.get("owned"):
                continue
            v = desired.get(f"gpio:{g['name']}")
            if v in (0, 1):
                plan.append(BoardCommand(P.OP_GPIO_WRITE, i, int(v),
                                         text=f"gpio {g['name']} = {int(v)}"))
        sec = lay.security or {}
        lock = desired.get("security.lock")
        if sec.get("lock") and lock in ("locked", "unlocked"):
            plan.append(BoardCommand(P.OP_LOCK if lock == "locked" else P.OP_UNLOCK,
                                     text=f"security {lock}"))
        armed = desired.get("security.armed")
        if sec.get("tamper") and isinstance(armed, bool):
            plan.append(BoardCommand(P.OP_ARM if armed else P.OP_DISARM,
                                     text="security arm" if armed else "security disarm"))
        return plan

    async def _resync(self) -> None:
        boot = self.boot_id
        plan = self.resync_plan()
        outcome: list[dict[str, Any]] = []
        for cmd in plan:
            entry: dict[str, Any] = {"command": cmd.text}
            for _ in range(max(1, self.config.resync_busy_tries)):
                if self.boot_id != boot or self._stopping:
                    entry["result"] = "abandoned"
                    break
                try:
                    v = await self._submit(
                        cmd, {"kind": "resync", "op": cmd.op, "target": cmd.target,
                              "arg": cmd.arg, "boot_id": boot},
                        principal="bridge:power_restore", key=None,
                        timeout=self.config.command_timeout_s, internal=True)
                    entry["result"] = v.result
                    entry["command_id"] = v.command_id
                    break
                except Refused as exc:
                    entry["result"] = "rejected"
                    entry["reason"] = exc.details.get("reason")
                    entry["command_id"] = exc.details.get("command_id")
                    if exc.details.get("reason") != "busy":
                        break
                    await asyncio.sleep(self.config.resync_busy_retry_s)
                except BridgeError as exc:
                    entry["result"] = "error"
                    entry["reason"] = exc.code
                    entry["message"] = exc.message
                    break
            outcome.append(entry)
        log.info("%s: power restore (%s) after reboot: %s", self.device_id,
                 self.config.power_restore, outcome)
        await self.bus.publish("state.resync", self.device_id,
                               {"policy": self.config.power_restore, "boot_id": boot,
                                "actions": outcome}, boot_id=boot)
