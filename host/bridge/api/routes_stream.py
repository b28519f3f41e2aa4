"""``WS /api/v1/stream?topics=telemetry,events,state&device=ID&resume_from=EVENT_ID``.

Every message is a JSON object with a ``topic`` field, exactly as ``BridgeService.subscribe``
yields it (``telemetry`` is conflated by the service: latest wins). Both filters are
optional: no ``topics`` means all three, no ``device`` means every device. ``resume_from``
(an event id) replays the stored events after it, then goes live.

The sender awaits each send (at most ``ApiSettings.ws_send_timeout_s``), so nothing piles up
in the API: a consumer that cannot keep up is the service's to detect.

How a stream ends (close code, reason):

  1008 ``invalid topic ...`` / ``invalid resume_from ...`` / ``device_not_found ...``
       -- bad query parameters (the socket is accepted first so the reason reaches the client)
  4008 ``slow_consumer`` -- the service dropped the subscription because the client fell
       behind (it raised ``SubscriptionClosed("slow_consumer", last_id)`` or yielded a final
       ``{"topic": "closed", "reason": "slow_consumer"}``), or one send took longer than the
       send timeout. Before the close the client gets
       ``{"topic": "closed", "reason": "slow_consumer", "last_id": N}``; reconnect with
       ``resume_from=N`` (its last event id) to get everything after it.
  1001 ``shutdown`` -- the bridge is stopping.
  1000 ``end`` -- the service ended the stream normally.
  1011 ``internal_error`` -- an unexpected error (logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from metal.host.bridge.api.metrics import ApiMetrics
from metal.host.bridge.events import SubscriptionClosed
from metal.host.bridge.model import BridgeError, BridgeService

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_SLOW_CONSUMER",
    "STREAM_TOPICS",
    "parse_stream_query",
    "pump",
    "router",
]

log = logging.getLogger("metal.api")

router = APIRouter(prefix="/api/v1")

STREAM_TOPICS: Final = ("telemetry", "events", "state")
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_POLICY: Final = 1008
CLOSE_INTERNAL: Final = 1011
CLOSE_SLOW_CONSUMER: Final = 4008
SLOW_CONSUMER: Final = "slow_consumer"
_MAX_REASON_BYTES: Final = 123  # RFC 6455: a close frame's payload is at most 125 bytes

_CLOSE_CODES: Final = {SLOW_CONSUMER: CLOSE_SLOW_CONSUMER, "shutdown": CLOSE_GOING_AWAY}


class StreamQueryError(ValueError):
    pass


def _reason(text: str) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= _MAX_REASON_BYTES:
        return text
    return raw[: _MAX_REASON_BYTES - 3].decode("utf-8", "ignore") + "..."


def parse_stream_query(topic_values: list[str], device: str | None,
                       resume_from: str | None) -> tuple[frozenset[str], str | None, int | None]:
    """Validate the query; raises StreamQueryError with the close reason."""
    topics: set[str] = set()
    for value in topic_values:
        for part in value.split(","):
            name = part.strip()
            if not name:
                continue
            if name not in STREAM_TOPICS:
                raise StreamQueryError(f"invalid topic {name!r} (expected "
                                       f"{', '.join(STREAM_TOPICS)})")
            topics.add(name)
    if not topics:
        topics = set(STREAM_TOPICS)
    if device is not None and not device:
        raise StreamQueryError("invalid device: empty")
    resume: int | None = None
    if resume_from is not None:
        text = resume_from.strip()
        if not text.isdigit() or len(text) > 18:
            raise StreamQueryError(f"invalid resume_from {resume_from!r} (expected an event "
                                   f"id, a non-negative integer)")
        resume = int(text)
    return frozenset(topics), device, resume


async def pump(
    stream: AsyncIterator[dict[str, Any]],
    send_text: Callable[[str], Awaitable[None]],
    *,
    send_timeout: float,
    last_id: int | None = None,
) -> tuple[int, str, int | None]:
    """Forward ``stream`` to ``send_text`` one awaited message at a time.

    Returns (close code, close reason, last event id sent) once the stream ends.
    """
    reason = "end"
    try:
        async for message in stream:
            if message.get("topic") == "closed":  # the service's own end-of-stream marker
                reason = str(message.get("reason") or "end")
                break
            text = getattr(message, "text", None)  # PreSerialized: encoded once for all clients
            if text is None:
                text = json.dumps(message, separators=(",", ":"), default=str)
            try:
                # asyncio.timeout rather than wait_for: no extra task per message
                async with asyncio.timeout(send_timeout):
                    await send_text(text)
            except TimeoutError:
                return CLOSE_SLOW_CONSUMER, SLOW_CONSUMER, last_id
            if message.get("topic") == "events":
                event_id = message.get("id")
                if isinstance(event_id, int) and not isinstance(event_id, bool):
                    last_id = event_id
    except SubscriptionClosed as exc:
        reason = exc.reason
        if last_id is None:
            last_id = exc.last_id
    except BridgeError as exc:
        code = CLOSE_POLICY if exc.status < 500 else CLOSE_INTERNAL
        return code, _reason(f"{exc.code}: {exc.message}"), last_id
    code = _CLOSE_CODES.get(reason, CLOSE_NORMAL)
    if code == CLOSE_SLOW_CONSUMER:
        closing = json.dumps({"topic": "closed", "reason": reason, "last_id": last_id},
                             separators=(",", ":"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(send_text(closing), send_timeout)
    return code, _reason(reason), last_id


async def _until_disconnect(websocket: WebSocket) -> None:
    """Read (and ignore) client messages until the client goes away."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return


def _label(code: int, reason: str) -> str:
    if code == CLOSE_SLOW_CONSUMER:
        return SLOW_CONSUMER
    if code == CLOSE_GOING_AWAY:
        return "shutdown"
    if code == CLOSE_NORMAL:
        return "end"
    if code == CLOSE_POLICY:
        return "invalid"
    return "error"


async def _close(websocket: WebSocket, code: int, reason: str, timeout: float) -> None:
    # bounded: a client that stopped reading may never let the close frame out
    with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError, TimeoutError):
        await asyncio.wait_for(websocket.close(code, _reason(reason)), timeout)


@router.websocket("/stream", name="stream")
async def stream(websocket: WebSocket) -> None:
    service: BridgeService = websocket.app.state.service
    metrics: ApiMetrics = websocket.app.state.metrics
    send_timeout: float = websocket.app.state.settings.ws_send_timeout_s
    query = websocket.query_params
    await websocket.accept()
    try:
        topics, device, resume = parse_stream_query(
            query.getlist("topics"), query.get("device"), query.get("resume_from"))
        if device is not None and device not in {d.id for d in service.list_devices()}:
            raise StreamQueryError(f"device_not_found: no device {device!r}")
    except StreamQueryError as exc:
        metrics.ws_closed.labels("invalid").inc()
        await _close(websocket, CLOSE_POLICY, str(exc), send_timeout)
        return

    try:
        source: Any = service.subscribe(topics, device, resume)
        if inspect.isawaitable(source):  # tolerate an ``async def`` returning the iterator
            source = await source
    except BridgeError as exc:
        metrics.ws_closed.labels("invalid").inc()
        await _close(websocket, CLOSE_POLICY, f"{exc.code}: {exc.message}", send_timeout)
        return

    metrics.ws_streams.inc()
    pump_task = asyncio.ensure_future(
        pump(source, websocket.send_text, send_timeout=send_timeout, last_id=resume))
    reader = asyncio.ensure_future(_until_disconnect(websocket))
    label = "client"
    try:
        done, _ = await asyncio.wait({pump_task, reader}, return_when=asyncio.FIRST_COMPLETED)
        if pump_task in done:
            reader.cancel()
            try:
                code, reason, _last = pump_task.result()
            except (WebSocketDisconnect, OSError):
                code, reason = 0, ""  # the client went away mid-send
            except Exception:
                log.exception("WebSocket stream failed")
                code, reason = CLOSE_INTERNAL, "internal_error"
            if code:
                label = _label(code, reason)
                await _close(websocket, code, reason, send_timeout)
        else:
            pump_task.cancel()
    finally:
        for task in (pump_task, reader):
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
        metrics.ws_streams.dec()
        metrics.ws_closed.labels(label).inc()
