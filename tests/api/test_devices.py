"""GET /api/v1/devices and GET /api/v1/devices/{id}; unknown routes and methods."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from api.fake_bridge import FakeBridge


def test_list_devices(client: TestClient) -> None:
    r = client.get("/api/v1/devices")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == [
        {"id": "sim0", "board": "sim", "online": True, "firmware_version": "0.1.0",
         "simulated": True},
        {"id": "rack1", "board": "rp2040", "online": True,
         "firmware_version": "0.1.0+rp2040", "simulated": False},
    ]


def test_list_devices_shows_offline(client: TestClient, fake: FakeBridge) -> None:
    fake.devices["rack1"].online = False
    fake.devices["rack1"].firmware_version = None
    rack = client.get("/api/v1/devices").json()[1]
    assert rack["online"] is False
    assert rack["firmware_version"] is None


def test_snapshot_is_the_services_bytes_untouched(client: TestClient, fake: FakeBridge) -> None:
    r = client.get("/api/v1/devices/sim0")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    # the fake serializes with ", " / ": " separators: any re-serialization would differ
    assert r.content == fake.snapshot_json("sim0")
    assert b'"id": "sim0"' in r.content
    snap = r.json()
    assert snap["power"]["rails"][1] == {
        "name": "p3v3", "state": "on", "voltage_v": 3.3, "current_a": 0.4, "fault": None,
        "nominal_v": 3.3, "parent": "main"}
    assert [z["name"] for z in snap["thermal"]["zones"]] == ["cpu", "chassis"]


def test_snapshot_not_validated_by_the_api(client: TestClient, fake: FakeBridge) -> None:
    """Whatever the service serves goes out as is (no response model on this route)."""
    fake._snapshots["sim0"] = b'{"id":"sim0","extra_field":[1,2,3]}'
    r = client.get("/api/v1/devices/sim0")
    assert r.status_code == 200
    assert r.content == b'{"id":"sim0","extra_field":[1,2,3]}'


def test_snapshot_follows_commands(client: TestClient) -> None:
    assert client.post("/api/v1/devices/sim0/power/rails/p1v8",
                       json={"action": "off"}).status_code == 200
    snap = client.get("/api/v1/devices/sim0").json()
    states = {r["name"]: r["state"] for r in snap["power"]["rails"]}
    assert states == {"main": "on", "p3v3": "on", "p1v8": "off"}
    assert snap["power"]["state"] == "partial"


def test_snapshot_unknown_device_404(client: TestClient) -> None:
    r = client.get("/api/v1/devices/nope")
    assert r.status_code == 404
    assert r.json() == {"code": "device_not_found", "message": "no device 'nope'",
                        "details": {"device": "nope"}}


def test_unknown_route_is_json_404(client: TestClient) -> None:
    r = client.get("/api/v1/no/such/thing")
    assert r.status_code == 404
    assert r.json() == {"code": "not_found",
                        "message": "no such resource: GET /api/v1/no/such/thing"}
    r = client.get("/api/v2/devices")
    assert r.status_code == 404
    assert r.json()["code"] == "not_found"


def test_wrong_method_is_json_405(client: TestClient) -> None:
    r = client.delete("/api/v1/devices/sim0")
    assert r.status_code == 405
    assert r.json() == {"code": "method_not_allowed",
                        "message": "method DELETE is not allowed on /api/v1/devices/sim0"}
    r = client.get("/api/v1/devices/sim0/reboot")
    assert r.status_code == 405
    assert r.json()["code"] == "method_not_allowed"


def test_unexpected_service_error_is_json_500(fake: FakeBridge) -> None:
    from metal.host.bridge.api import create_app

    def boom() -> list[object]:
        raise RuntimeError("database on fire")

    fake.list_devices = boom  # type: ignore[method-assign]
    with TestClient(create_app(fake), raise_server_exceptions=False) as c:
        r = c.get("/api/v1/devices")
    assert r.status_code == 500
    assert r.json() == {"code": "internal_error", "message": "internal error; see the bridge log"}
    assert "fire" not in r.text


def test_snapshot_json_parses(client: TestClient) -> None:
    for dev in ("sim0", "rack1"):
        body = json.loads(client.get(f"/api/v1/devices/{dev}").content)
        assert body["id"] == dev


# -- the snapshot fast path (BridgeApi.__call__) -------------------------------------------------


def test_fast_path_does_not_touch_fastapi_routing(client: TestClient, fake: FakeBridge,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The snapshot is answered before FastAPI's stack: a broken stack does not matter."""

    async def no_stack(*_a: object) -> None:
        raise AssertionError("the snapshot must not go through the middleware stack")

    monkeypatch.setattr(client.app, "middleware_stack", no_stack)
    r = client.get("/api/v1/devices/sim0?ignored=1")
    assert r.status_code == 200
    assert r.content == fake.snapshot_json("sim0")
    assert r.headers["content-length"] == str(len(r.content))
    r = client.get("/api/v1/devices/ghost")
    assert r.status_code == 404
    assert r.json() == {"code": "device_not_found", "message": "no device 'ghost'",
                        "details": {"device": "ghost"}}


def test_fast_path_falls_back_to_the_route_on_unexpected_errors(fake: FakeBridge) -> None:
    from metal.host.bridge.api import create_app

    calls = []

    def flaky(device_id: str) -> bytes:
        calls.append(device_id)
        raise RuntimeError("cache corrupted")

    fake.snapshot_json = flaky  # type: ignore[method-assign]
    with TestClient(create_app(fake), raise_server_exceptions=False) as c:
        r = c.get("/api/v1/devices/sim0")
    assert r.status_code == 500
    assert r.json()["code"] == "internal_error"
    assert calls == ["sim0", "sim0"]  # fast path, then the regular route


def test_fast_path_only_for_the_exact_route(client: TestClient) -> None:
    r = client.get("/api/v1/devices/", follow_redirects=False)
    assert r.status_code == 307  # Starlette's trailing-slash redirect to the list
    assert r.headers["location"].endswith("/api/v1/devices")
    assert client.get("/api/v1/devices/sim0/power").status_code == 405
    r = client.post("/api/v1/devices/sim0")
    assert r.status_code == 405
    assert r.json()["code"] == "method_not_allowed"
