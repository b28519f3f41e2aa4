"""``/healthz`` (the process is alive), ``/readyz`` (the bridge can serve: store open, devices
known; 200 or 503 with ``BridgeService.readiness()``), ``/metrics`` (Prometheus text: the
API's registry, then ``BridgeService.metrics_text()``)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from metal.host.bridge.api.metrics import CONTENT_TYPE, ApiMetrics
from metal.host.bridge.api.schemas import Health, Readiness
from metal.host.bridge.model import BridgeService

__all__ = ["router"]

log = logging.getLogger("metal.api")

router = APIRouter(tags=["health"])


@router.get("/healthz", operation_id="healthz", summary="Liveness: the process answers",
            response_model=Health)
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/readyz", operation_id="readyz",
            summary="Readiness: 200 when the bridge can serve, else 503",
            response_model=Readiness,
            responses={503: {"model": Readiness, "description": "not ready"}})
async def readyz(request: Request) -> JSONResponse:
    service: BridgeService = request.app.state.service
    try:
        state = dict(service.readiness())
    except Exception as exc:  # a readiness probe must answer, not crash
        log.exception("readiness check failed")
        state = {"ready": False, "error": f"{type(exc).__name__}: {exc}"}
    ready = state.get("ready") is True
    body = {"status": "ready" if ready else "not_ready", **state, "ready": ready}
    body.setdefault("devices", {})
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", operation_id="metrics",
            summary="Prometheus metrics: the API's, then the devices'",
            response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition format 0.0.4"}})
async def metrics(request: Request) -> Response:
    api: ApiMetrics = request.app.state.metrics
    service: BridgeService = request.app.state.service
    text = api.render()
    device_text = service.metrics_text()
    if device_text:
        if not text.endswith(b"\n"):
            text += b"\n"
        text += device_text
        if not text.endswith(b"\n"):
            text += b"\n"
    return Response(text, media_type=CONTENT_TYPE)
