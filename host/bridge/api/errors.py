"""Every error the API returns is JSON: ``{"code", "message"}`` plus ``details`` when there are
any.

* :class:`~metal.host.bridge.model.BridgeError` -> its ``status`` and ``code`` (404
  device_not_found / target_not_found / not_supported, 409 refused, 422 invalid_input /
  idempotency_conflict, 502 device_error, 503 device_offline, 504 device_timeout).
  A 409 ``refused`` body also carries the verdict's fields at the top level:
  ``command_id``, ``result: "rejected"`` and ``reason``.
* FastAPI's request validation -> 422 ``invalid_input`` with a message naming each field.
* Starlette's HTTP errors (an unknown route, a wrong method) -> ``not_found`` (404),
  ``method_not_allowed`` (405), else ``http_<status>``.
* Anything else -> 500 ``internal_error`` (the exception itself is logged, not returned).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from metal.host.bridge.model import BridgeError, Refused

__all__ = [
    "error_body",
    "error_response",
    "install_error_handlers",
    "validation_message",
]

log = logging.getLogger("metal.api")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
               415: "unsupported_media_type"}
_MAX_GOT = 60


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = jsonable_encoder(details)
    return body


def bridge_error_body(err: BridgeError) -> dict[str, Any]:
    body = error_body(err.code, err.message, err.details)
    if isinstance(err, Refused):
        verdict = err.details.get("verdict")
        verdict = verdict if isinstance(verdict, dict) else {}
        body["command_id"] = err.details.get("command_id", verdict.get("command_id"))
        body["result"] = "rejected"
        body["reason"] = err.details.get("reason") or verdict.get("reason") or "refused"
    return body


def error_response(err: BridgeError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(bridge_error_body(err), status_code=err.status, headers=headers)


# -- validation messages -------------------------------------------------------------------


def _field(loc: Sequence[Any]) -> tuple[str, str]:
    """(where, dotted field name) of a pydantic/FastAPI error location."""
    where = str(loc[0]) if loc else "body"
    parts: list[str] = []
    for part in loc[1:]:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + str(part))
    return where, "".join(parts)


def _got(err: dict[str, Any]) -> str:
    if err.get("type") in ("missing", "extra_forbidden", "value_error", "assertion_error"):
        return ""
    if "input" not in err:
        return ""
    value = err["input"]
    if not isinstance(value, (str, int, float, bool)) and value is not None:
        return f" (got {type(value).__name__ if not isinstance(value, dict) else 'an object'})"
    text = repr(value) if not isinstance(value, bool) else ("true" if value else "false")
    if value is None:
        text = "null"
    if len(text) > _MAX_GOT:
        text = text[: _MAX_GOT - 3] + "..."
    return f" (got {text})"


def _one(err: dict[str, Any]) -> tuple[str, str, str]:
    """(field, where, message) for one error."""
    where, name = _field(err.get("loc") or ())
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid"))
    if kind == "json_invalid":
        ctx = err.get("ctx") or {}
        reason = ctx.get("error") or msg
        return "body", "body", f"request body is not valid JSON ({reason})"
    if kind == "missing" and not name:
        if where == "body":
            return "body", where, "a JSON request body is required"
        return where, where, f"{where} is required"
    if where == "body" and not name and kind in ("model_attributes_type", "dict_type",
                                                  "model_type"):
        return "body", where, "the request body must be a JSON object"
    if kind == "extra_forbidden":
        return name, where, f"{name}: unknown field (not allowed here)"
    if kind == "missing":
        label = {"header": "header", "query": "query parameter", "path": "path parameter"}
        what = label.get(where)
        return name, where, f"{what} {name} is required" if what else f"{name}: field required"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    elif msg and msg[0].isupper() and not msg[:2].isupper():
        msg = msg[0].lower() + msg[1:]
    if where == "body" and not name:  # a model-level check: the message names the fields
        return "body", where, msg
    prefix = {"query": "query parameter ", "header": "header ", "path": "path parameter "}
    return name, where, f"{prefix.get(where, '')}{name}: {msg}{_got(err)}"


def validation_message(errors: Sequence[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    items = []
    messages = []
    for err in errors:
        field, where, message = _one(err)
        if message not in messages:
            messages.append(message)
        items.append({"field": field, "in": where, "message": message,
                      "type": err.get("type", "")})
    return "; ".join(messages) or "invalid input", items


# -- handlers --------------------------------------------------------------------------------


async def _bridge_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BridgeError)
    return error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, items = validation_message(list(exc.errors()))
    ctype = request.headers.get("content-type")
    if ctype and "json" not in ctype.lower() and any(
            i["in"] == "body" and i["field"] == "body" for i in items):
        message = f"the request body must be JSON (Content-Type: application/json), got {ctype}"
    return JSONResponse(error_body("invalid_input", message, {"errors": items}), status_code=422)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    code = _HTTP_CODES.get(status, f"http_{status}")
    if status == 404:
        message = f"no such resource: {request.method} {request.url.path}"
    elif status == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return JSONResponse(error_body(code, message), status_code=status,
                        headers=getattr(exc, "headers", None))


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error_body("internal_error", "internal error; see the bridge log"),
                        status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(BridgeError, _bridge_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
