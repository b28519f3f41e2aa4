"""API-side Prometheus metrics, in a registry of their own (never the process-global one).

* ``metal_api_request_duration_seconds{method,route,status}`` -- a histogram of HTTP request
  latency. ``route`` is the route *template* (``/api/v1/devices/{device_id}``), never the raw
  path, so label cardinality stays bounded; requests that match no route count under
  ``route="<unmatched>"``.
* ``metal_api_websocket_streams`` -- open WebSocket streams (gauge).
* ``metal_api_websocket_closed_total{reason}`` -- streams closed, by reason
  (``client``, ``end``, ``slow_consumer``, ``shutdown``, ``error``, ``invalid``).

``/metrics`` serves this registry followed by ``BridgeService.metrics_text()``.
:class:`MetricsMiddleware` is plain ASGI (no BaseHTTPMiddleware): it adds a few µs per
request, which the snapshot route's throughput target allows.
"""

from __future__ import annotations

import time
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ApiMetrics", "CONTENT_TYPE", "MetricsMiddleware", "UNMATCHED"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED: Final = "<unmatched>"
BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                  5.0, 10.0, 30.0)
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_duration = Histogram(
            "metal_api_request_duration_seconds",
            "HTTP request latency of the bridge API, by method, route template and status",
            ("method", "route", "status"), buckets=BUCKETS, registry=self.registry)
        self.ws_streams = Gauge("metal_api_websocket_streams", "Open WebSocket streams",
                                registry=self.registry)
        self.ws_closed = Counter("metal_api_websocket_closed",
                                 "WebSocket streams closed, by reason", ("reason",),
                                 registry=self.registry)
        self._children: dict[tuple[str, str, int], Any] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        child = self._children.get(key)
        if child is None:
            child = self.request_duration.labels(method, route, str(status))
            self._children[key] = child
        child.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) else UNMATCHED


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            method = scope.get("method", "GET")
            self.metrics.observe(method if method in _METHODS else "OTHER",
                                 route_template(scope), status, time.perf_counter() - start)
