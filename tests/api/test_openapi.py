"""The OpenAPI document: valid, complete, with ids, tags and the JSON error model."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

OPERATIONS = {
    ("get", "/api/v1/devices"): ("listDevices", "devices"),
    ("get", "/api/v1/devices/{device_id}"): ("getDevice", "devices"),
    ("post", "/api/v1/devices/{device_id}/power/rails/{rail}"): ("setRail", "power"),
    ("post", "/api/v1/devices/{device_id}/power"): ("setPower", "power"),
    ("post", "/api/v1/devices/{device_id}/thermal/zones/{zone}"): ("setZone", "thermal"),
    ("post", "/api/v1/devices/{device_id}/gpio/{line}"): ("writeGpio", "gpio"),
    ("post", "/api/v1/devices/{device_id}/security"): ("securityAction", "security"),
    ("post", "/api/v1/devices/{device_id}/interlocks/{interlock}/clear"):
        ("clearInterlock", "interlocks"),
    ("post", "/api/v1/devices/{device_id}/estop"): ("estop", "interlocks"),
    ("post", "/api/v1/devices/{device_id}/reboot"): ("rebootDevice", "devices"),
    ("post", "/api/v1/devices/{device_id}/sim/faults"): ("injectSimFault", "simulator"),
    ("get", "/api/v1/events"): ("queryEvents", "events"),
    ("get", "/healthz"): ("healthz", "health"),
    ("get", "/readyz"): ("readyz", "health"),
    ("get", "/metrics"): ("metrics", "health"),
}
COMMANDS = [k for k in OPERATIONS if k[0] == "post"]


@pytest.fixture
def spec(client: TestClient) -> dict[str, Any]:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


def test_document_is_valid(spec: dict[str, Any]) -> None:
    validate(spec)
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["title"] == "metal bridge API"


def test_every_route_with_id_and_tag(spec: dict[str, Any]) -> None:
    found = {(method, path): (op["operationId"], op["tags"][0])
             for path, item in spec["paths"].items() for method, op in item.items()}
    assert found == OPERATIONS
    tags = {t["name"] for t in spec["tags"]}
    assert {tag for _, tag in OPERATIONS.values()} <= tags


def test_commands_document_verdict_and_errors(spec: dict[str, Any]) -> None:
    for method, path in COMMANDS:
        op = spec["paths"][path][method]
        responses = op["responses"]
        assert set(responses) == {"200", "404", "409", "422", "502", "503", "504"}, path
        ok = responses["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": "#/components/schemas/CommandResult"}
        assert responses["409"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/RefusedBody"}
        for status in ("404", "422", "502", "503", "504"):
            assert responses[status]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorBody"}, (path, status)
        headers = [p for p in op["parameters"] if p["in"] == "header"]
        assert [h["name"] for h in headers] == ["Idempotency-Key"]


def test_no_fastapi_default_validation_schema(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert {"ErrorBody", "RefusedBody", "CommandResult", "EventsPage",
            "DeviceSummaryOut", "DeviceSnapshot"} <= set(schemas)
    assert schemas["ErrorBody"]["required"] == ["code", "message"]


def test_request_bodies_forbid_extra_fields(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    for name in ("RailBody", "PowerBody", "ZoneBody", "GpioBody", "SecurityBody",
                 "EstopBody", "SimFaultBody"):
        assert schemas[name]["additionalProperties"] is False, name
        assert schemas[name].get("examples"), name
    assert schemas["RailBody"]["properties"]["action"]["enum"] == ["on", "off", "cycle"]
    duty = schemas["ZoneBody"]["properties"]["duty_pct"]["anyOf"][0]
    assert (duty["minimum"], duty["maximum"]) == (0, 100)


def test_snapshot_and_events_documented(spec: dict[str, Any]) -> None:
    snap = spec["paths"]["/api/v1/devices/{device_id}"]["get"]["responses"]["200"]
    content = snap["content"]["application/json"]
    assert content["schema"] == {"$ref": "#/components/schemas/DeviceSnapshot"}
    assert content["example"]["id"] == "sim0"
    params = {p["name"]: p for p in spec["paths"]["/api/v1/events"]["get"]["parameters"]}
    assert set(params) == {"device", "type", "since", "cursor", "limit"}
    limit = params["limit"]["schema"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 1000, 100)


def test_docs_ui_can_be_disabled(fake: Any) -> None:
    from metal.host.bridge.api import ApiSettings, create_app

    with TestClient(create_app(fake)) as c:
        assert c.get("/docs").status_code == 200
    with TestClient(create_app(fake, settings=ApiSettings(docs=False))) as c:
        assert c.get("/docs").status_code == 404
        assert c.get("/openapi.json").status_code == 200
