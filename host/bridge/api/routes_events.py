"""``GET /api/v1/events``: pages of stored events, oldest first.

``since`` is an ISO-8601 time (a time without offset is UTC) or epoch seconds; ``cursor`` is
the ``next_cursor`` of the previous page (an event id: the page starts after it); ``type``
is an exact type (``interlock.trip``) or a namespace (``hardware.*``).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from typing import Annotated, Final

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from metal.host.bridge.api.schemas import ErrorBody, EventsPage
from metal.host.bridge.model import BridgeService, InvalidInput

__all__ = ["parse_since", "router"]

router = APIRouter(prefix="/api/v1")

MAX_LIMIT: Final = 1000
DEFAULT_LIMIT: Final = 100
_TYPE: Final = re.compile(r"\*|[a-z0-9_-]+(\.[a-z0-9_-]+)*(\.\*)?")
_NUMBER: Final = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def parse_since(value: str) -> float:
    """Epoch seconds from ``"1767225600.5"`` or ``"2026-01-01T00:00:00Z"`` (naive = UTC)."""
    text = value.strip()
    if _NUMBER.fullmatch(text):
        seconds = float(text)
        if not math.isfinite(seconds) or seconds < 0:
            raise InvalidInput(f"query parameter since: epoch seconds must be a finite, "
                               f"non-negative number, got {value!r}", field="since")
        return seconds
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"query parameter since: expected an ISO-8601 time (e.g. "
                           f"2026-01-01T12:00:00Z) or epoch seconds, got {value!r}",
                           field="since") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


@router.get("/events", operation_id="queryEvents", tags=["events"],
            summary="Stored events, oldest first, one page at a time",
            response_model=EventsPage,
            responses={422: {"model": ErrorBody, "description": "invalid_input"}})
async def query_events(
    request: Request,
    device: Annotated[str | None, Query(min_length=1, max_length=128,
                                        description="only this device's events")] = None,
    type: Annotated[str | None, Query(  # noqa: A002
        min_length=1, max_length=128,
        description='an exact type ("interlock.trip") or a namespace ("hardware.*")')] = None,
    since: Annotated[str | None, Query(
        max_length=64, description="only events received at or after this time: ISO-8601 "
        "(no offset = UTC) or epoch seconds", examples=["2026-01-01T00:00:00Z"])] = None,
    cursor: Annotated[int | None, Query(
        ge=0, description="next_cursor of the previous page: start after this event id")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="page size")] = DEFAULT_LIMIT,
) -> JSONResponse:
    if type is not None and not _TYPE.fullmatch(type):
        raise InvalidInput(f"query parameter type: expected an event type like "
                           f"'interlock.trip' or a namespace like 'hardware.*', got {type!r}",
                           field="type")
    since_time = parse_since(since) if since is not None else None
    service: BridgeService = request.app.state.service
    events, next_cursor = await service.query_events(
        device_id=device, type=type, since_id=cursor, since_time=since_time, limit=limit)
    return JSONResponse({"events": events, "next_cursor": next_cursor})
