"""``/api/v1/devices``: the device list, the snapshot, and every mutation.

Handlers are thin: a pydantic body -> a :class:`CommandRequest` -> ``service.execute`` ->
the verdict. Errors are the service's typed ``BridgeError``s, mapped by ``errors.py``.

Status codes of a mutation:
  200  the board answered: ``{"command_id", "result": "applied" | "rejected", "reason"}``
       ("rejected" only when the service returns such a verdict instead of raising, see
       docs/api.md);
  409  ``refused`` -- an interlock or the policy refused (the service raised ``Refused``);
  404, 422, 502, 503, 504 as in errors.py.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response

from metal.host.bridge.api.idempotency import REPLAYED_HEADER, IdempotencyKeyHeader
from metal.host.bridge.api.schemas import (
    CommandResult,
    DeviceSnapshot,
    DeviceSummaryOut,
    ErrorBody,
    EstopBody,
    GpioBody,
    PowerBody,
    RailBody,
    RefusedBody,
    SecurityBody,
    SimFaultBody,
    ZoneBody,
)
from metal.host.bridge.model import BridgeService, CommandRequest

__all__ = ["router"]

router = APIRouter(prefix="/api/v1")

DeviceId = Annotated[str, Path(description="the device id (see GET /api/v1/devices)",
                               examples=["sim0"])]


def _desc(what: str) -> str:
    return f"the {what}'s name as the board describes it"


RailName = Annotated[str, Path(description=_desc("rail"), examples=["p3v3"])]
ZoneName = Annotated[str, Path(description=_desc("zone"), examples=["cpu"])]
LineName = Annotated[str, Path(description=_desc("GPIO line"), examples=["led"])]
InterlockName = Annotated[str, Path(description=_desc("interlock"), examples=["overtemp"])]


def _err(description: str, model: type = ErrorBody) -> dict[str, Any]:
    return {"model": model, "description": description}


_READ_ERRORS: dict[int | str, dict[str, Any]] = {
    404: _err("device_not_found"),
    422: _err("invalid_input"),
}
_COMMAND_ERRORS: dict[int | str, dict[str, Any]] = {
    404: _err("device_not_found, target_not_found, or not_supported"),
    409: _err("refused: an interlock or the policy refused; carries the verdict and reason",
              RefusedBody),
    422: _err("invalid_input (body, path or Idempotency-Key header) or idempotency_conflict"),
    502: _err("device_error: the board answered in a way the bridge cannot use"),
    503: _err("device_offline: the device is not connected"),
    504: _err("device_timeout: the board did not answer in time; the command may still apply"),
}


def _service(request: Request) -> BridgeService:
    service: BridgeService = request.app.state.service
    return service


async def _run(request: Request, device_id: str, command: CommandRequest,
               key: str | None) -> JSONResponse:
    verdict = await _service(request).execute(
        device_id, command, principal=request.app.state.settings.principal, idempotency_key=key)
    headers = {REPLAYED_HEADER: "true"} if verdict.replayed else None
    return JSONResponse(verdict.to_dict(), headers=headers)


def _command_route(path: str, operation_id: str, tag: str, summary: str) -> Any:
    return router.post(path, operation_id=operation_id, tags=[tag], summary=summary,
                       response_model=CommandResult, responses=_COMMAND_ERRORS)


# -- reads -------------------------------------------------------------------------------------


@router.get("/devices", operation_id="listDevices", tags=["devices"],
            summary="List the devices this bridge manages",
            response_model=list[DeviceSummaryOut])
async def list_devices(request: Request) -> JSONResponse:
    return JSONResponse([d.to_dict() for d in _service(request).list_devices()])


_SNAPSHOT_EXAMPLE = {
    "id": "sim0", "board": "sim", "online": True, "simulated": True,
    "firmware_version": "0.1.0", "boot_id": 7,
    "power": {"state": "on", "rails": [{"name": "p3v3", "state": "on", "voltage_v": 3.31,
                                        "current_a": 0.42, "fault": None, "nominal_v": 3.3,
                                        "parent": None}]},
    "thermal": {"sensors": [{"name": "cpu", "zone": "cpu", "temp_c": 41.5, "status": "ok",
                             "warn_c": 80.0, "crit_c": 95.0}],
                "fans": [{"name": "fan0", "zone": "cpu", "duty_pct": 35.0, "speed_rpm": 2100,
                          "status": "ok"}],
                "zones": [{"name": "cpu", "mode": "auto", "duty_pct": 35.0,
                           "setpoint_c": 45.0}]},
    "gpio": [{"name": "led", "direction": "out", "level": 1}],
    "security": {"armed": False, "locked": True, "door_open": False, "tamper": False,
                 "estop": False, "lockout": False,
                 "fitted": {"tamper": True, "lock": True, "door": True, "estop": True}},
    "interlocks": [{"id": 0, "name": "overtemp", "state": "ok", "latched": False,
                    "action": "overheat"}],
    "updated_at": 1767225600.25,
}


@router.get("/devices/{device_id}", operation_id="getDevice", tags=["devices"],
            summary="The device's full snapshot (readable units)",
            response_class=Response,
            responses={200: {"model": DeviceSnapshot, "content": {"application/json": {
                "example": _SNAPSHOT_EXAMPLE}}, "description": "the snapshot"},
                **_READ_ERRORS})
async def get_device(device_id: DeviceId, request: Request) -> Response:
    # The service's cached bytes, served as they are: no re-serialization, no validation.
    return Response(request.app.state.service.snapshot_json(device_id),
                    media_type="application/json")


# -- mutations --------------------------------------------------------------------------------


@_command_route("/devices/{device_id}/power/rails/{rail}", "setRail", "power",
                "Turn a rail on, off, or power-cycle it")
async def set_rail(device_id: DeviceId, rail: RailName, body: RailBody, request: Request,
                   key: IdempotencyKeyHeader) -> JSONResponse:
    return await _run(request, device_id, CommandRequest("rail", body.action, rail), key)


@_command_route("/devices/{device_id}/power", "setPower", "power",
                "Power the whole device on (dependency order) or off (orderly)")
async def set_power(device_id: DeviceId, body: PowerBody, request: Request,
                    key: IdempotencyKeyHeader) -> JSONResponse:
    return await _run(request, device_id, CommandRequest("power", body.action), key)


@_command_route("/devices/{device_id}/thermal/zones/{zone}", "setZone", "thermal",
                "Set a thermal zone to automatic, a manual fan duty, or a new setpoint")
async def set_zone(device_id: DeviceId, zone: ZoneName, body: ZoneBody, request: Request,
                   key: IdempotencyKeyHeader) -> JSONResponse:
    action, value = body.command()
    return await _run(request, device_id, CommandRequest("zone", action, zone, value), key)


@_command_route("/devices/{device_id}/gpio/{line}", "writeGpio", "gpio",
                "Drive an output GPIO line (not owned by the firmware) to 0 or 1")
async def write_gpio(device_id: DeviceId, line: LineName, body: GpioBody, request: Request,
                     key: IdempotencyKeyHeader) -> JSONResponse:
    return await _run(request, device_id, CommandRequest("gpio", "write", line, body.level), key)


@_command_route("/devices/{device_id}/security", "securityAction", "security",
                "Lock/unlock the door, arm/disarm tamper detection, clear the tamper flag")
async def security_action(device_id: DeviceId, body: SecurityBody, request: Request,
                          key: IdempotencyKeyHeader) -> JSONResponse:
    return await _run(request, device_id, CommandRequest("security", body.action), key)


@_command_route("/devices/{device_id}/interlocks/{interlock}/clear", "clearInterlock",
                "interlocks", "Clear a latched interlock (its condition must be gone)")
async def clear_interlock(device_id: DeviceId, interlock: InterlockName, request: Request,
                          key: IdempotencyKeyHeader) -> JSONResponse:
    return await _run(request, device_id, CommandRequest("interlock", "clear", interlock), key)


@_command_route("/devices/{device_id}/estop", "estop", "interlocks",
                "Assert or release the software emergency stop")
async def estop(device_id: DeviceId, body: EstopBody, request: Request,
                key: IdempotencyKeyHeader) -> JSONResponse:
    return await _run(request, device_id, CommandRequest("estop", body.action), key)


@_command_route("/devices/{device_id}/reboot", "rebootDevice", "devices",
                "Reboot the controller board")
async def reboot(device_id: DeviceId, request: Request,
                 key: IdempotencyKeyHeader) -> JSONResponse:
    return await _run(request, device_id, CommandRequest("board", "reboot"), key)


@_command_route("/devices/{device_id}/sim/faults", "injectSimFault", "simulator",
                "Inject or clear a simulated-plant fault (simulated boards only)")
async def sim_fault(device_id: DeviceId, body: SimFaultBody, request: Request,
                    key: IdempotencyKeyHeader) -> JSONResponse:
    target, value, extra = body.command()
    return await _run(request, device_id, CommandRequest("sim", body.kind, target, value, extra),
                      key)
