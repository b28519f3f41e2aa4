"""The bridge's HTTP API: ``create_app(service, settings=...)`` builds the ASGI app.

The app reaches the hardware only through a :class:`~metal.host.bridge.model.BridgeService`.
It serves REST under ``/api/v1`` (OpenAPI document at ``/openapi.json``), the WebSocket
stream at ``/api/v1/stream``, and ``/healthz``, ``/readyz``, ``/metrics``.

No authentication yet: whoever runs it must bind it to loopback only (the CLI does; see
docs/api.md). Every mutation is executed as ``settings.principal``.
"""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass
from typing import Any, Final

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from metal.host.bridge.api import routes_devices, routes_events, routes_health, routes_stream
from metal.host.bridge.api.errors import bridge_error_body, install_error_handlers
from metal.host.bridge.api.metrics import ApiMetrics, MetricsMiddleware
from metal.host.bridge.model import BridgeError, BridgeService

__all__ = ["API_VERSION", "ApiSettings", "BridgeApi", "create_app"]

API_VERSION = "1.0.0"

TAGS = [
    {"name": "devices", "description": "The managed devices and their snapshots"},
    {"name": "power", "description": "Power rails and whole-device power"},
    {"name": "thermal", "description": "Thermal zones: automatic, manual duty, setpoint"},
    {"name": "gpio", "description": "General-purpose output lines"},
    {"name": "security", "description": "Door lock and tamper detection"},
    {"name": "interlocks", "description": "Safety interlocks and the emergency stop"},
    {"name": "simulator", "description": "Fault injection on simulated boards"},
    {"name": "events", "description": "The stored event log"},
    {"name": "health", "description": "Liveness, readiness and Prometheus metrics"},
]

DESCRIPTION = """\
Open hardware management: power rails, thermal zones, GPIO, security and interlocks of the
controller boards this bridge talks to.

* Units are readable and suffixed (`temp_c`, `voltage_v`, `duty_pct`, ...).
* Every error is `{"code", "message", "details"?}`.
* Mutations return the board's verdict `{"command_id", "result", "reason"}`; send an
  `Idempotency-Key` header to make a retry safe.
* Live telemetry, events and state changes: WebSocket
  `/api/v1/stream?topics=telemetry,events,state&device=ID&resume_from=EVENT_ID`
  (see docs/api.md for close codes; 4008 `slow_consumer` means: reconnect with
  `resume_from`).
* No authentication yet: the API must only listen on loopback.
"""


@dataclass(frozen=True)
class ApiSettings:
    #: who mutations are executed as, until authentication lands
    principal: str = "local"
    #: a single WebSocket send that takes longer closes the stream as slow_consumer
    ws_send_timeout_s: float = 10.0
    #: serve the Swagger UI at /docs
    docs: bool = True
    title: str = "metal bridge API"


SNAPSHOT_PREFIX: Final = "/api/v1/devices/"
SNAPSHOT_ROUTE: Final = "/api/v1/devices/{device_id}"
_JSON: Final = b"application/json"
#: FastAPI's built-in OpenTelemetry instrumentation: off (we export Prometheus metrics)
_NO_TELEMETRY: Final = {"tracing": False, "metrics": False, "logs": False}


class BridgeApi(FastAPI):
    """FastAPI with one fast path: ``GET /api/v1/devices/{device_id}``.

    The snapshot is the hottest read (target: thousands of requests per second). FastAPI's
    routing and dependency machinery cost several times the work of the request itself, so
    this route is answered here, before the middleware stack: the service's pre-serialized
    bytes go out as they are, the latency is recorded under the same route template, and a
    ``BridgeError`` becomes the same JSON error the error handlers produce. Anything else
    (another exception, another method or path) goes through the normal stack, where the
    identical FastAPI route (documented in the OpenAPI document) serves it.
    """

    service: BridgeService
    metrics: ApiMetrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path: str = scope["path"]
            root = scope.get("root_path") or ""
            if root and path.startswith(root):
                path = path[len(root):]
            if path.startswith(SNAPSHOT_PREFIX):
                device_id = path[len(SNAPSHOT_PREFIX):]
                if device_id and "/" not in device_id:
                    if await self._snapshot(device_id, send):
                        return
        await super().__call__(scope, receive, send)

    async def _snapshot(self, device_id: str, send: Send) -> bool:
        start = time.perf_counter()
        try:
            body = self.service.snapshot_json(device_id)
            status = 200
        except BridgeError as err:
            body = json.dumps(bridge_error_body(err), separators=(",", ":")).encode()
            status = err.status
        except Exception:
            return False  # the regular route answers (and logs) it
        headers: list[tuple[bytes, bytes]] = [
            (b"content-type", _JSON), (b"content-length", str(len(body)).encode())]
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            self.metrics.observe("GET", SNAPSHOT_ROUTE, status, time.perf_counter() - start)
        return True


def create_app(service: BridgeService, *, settings: ApiSettings | None = None) -> BridgeApi:
    settings = settings or ApiSettings()
    extra: dict[str, Any] = {}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        extra["telemetry"] = dict(_NO_TELEMETRY)  # FastAPI >= 0.16x: built-in OpenTelemetry
    app = BridgeApi(
        **extra,
        title=settings.title,
        version=API_VERSION,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        openapi_url="/openapi.json",
        docs_url="/docs" if settings.docs else None,
        redoc_url=None,
    )
    metrics = ApiMetrics()
    app.service = service
    app.metrics = metrics
    app.state.service = service
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(routes_devices.router)
    app.include_router(routes_events.router)
    app.include_router(routes_stream.router)
    app.include_router(routes_health.router)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
