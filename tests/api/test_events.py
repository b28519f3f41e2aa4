"""GET /api/v1/events: filters, since (ISO-8601 / epoch), cursor paging, validation."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.fake_bridge import FakeBridge
from metal.host.bridge.api.routes_events import parse_since
from metal.host.bridge.model import InvalidInput

E = "/api/v1/events"
T0 = 1767225600.0  # 2026-01-01T00:00:00Z, the fake's first event; one a minute after


def ids(body: dict) -> list[int]:
    return [e["id"] for e in body["events"]]


def test_all_events_oldest_first(client: TestClient, fake: FakeBridge) -> None:
    r = client.get(E)
    assert r.status_code == 200
    body = r.json()
    assert ids(body) == [1, 2, 3, 4, 5, 6, 7]
    assert body["next_cursor"] is None
    assert body["events"][0] == {"id": 1, "type": "hardware.boot", "device": "sim0",
                                 "time": T0, "boot_id": 7, "seq": 1,
                                 "data": {"source": None, "value": 0}}
    assert fake.query_calls == [{"device_id": None, "type": None, "since_id": None,
                                 "since_time": None, "limit": 100}]


def test_device_filter(client: TestClient, fake: FakeBridge) -> None:
    body = client.get(E, params={"device": "rack1"}).json()
    assert ids(body) == [3, 6]
    assert fake.query_calls[-1]["device_id"] == "rack1"


def test_type_exact_and_namespace(client: TestClient, fake: FakeBridge) -> None:
    assert ids(client.get(E, params={"type": "interlock.trip"}).json()) == [4]
    assert ids(client.get(E, params={"type": "interlock.*"}).json()) == [4, 5]
    assert ids(client.get(E, params={"type": "hardware.*", "device": "sim0"}).json()) == [1, 2]
    assert fake.query_calls[-1]["type"] == "hardware.*"


@pytest.mark.parametrize("since", [
    "2026-01-01T00:03:00Z", "2026-01-01T00:03:00+00:00", "2026-01-01T01:03:00+01:00",
    "2026-01-01T00:03:00", str(T0 + 180), f"{T0 + 180:.3f}"])
def test_since_iso_or_epoch(client: TestClient, fake: FakeBridge, since: str) -> None:
    body = client.get(E, params={"since": since}).json()
    assert ids(body) == [4, 5, 6, 7]
    assert fake.query_calls[-1]["since_time"] == T0 + 180


def test_cursor_paging(client: TestClient, fake: FakeBridge) -> None:
    page1 = client.get(E, params={"limit": 3}).json()
    assert ids(page1) == [1, 2, 3]
    assert page1["next_cursor"] == 3
    page2 = client.get(E, params={"limit": 3, "cursor": page1["next_cursor"]}).json()
    assert ids(page2) == [4, 5, 6]
    assert fake.query_calls[-1]["since_id"] == 3
    page3 = client.get(E, params={"limit": 3, "cursor": page2["next_cursor"]}).json()
    assert ids(page3) == [7]
    assert page3["next_cursor"] is None


def test_cursor_with_filters(client: TestClient) -> None:
    page = client.get(E, params={"device": "sim0", "limit": 2}).json()
    assert ids(page) == [1, 2]
    page = client.get(E, params={"device": "sim0", "limit": 2,
                                 "cursor": page["next_cursor"]}).json()
    assert ids(page) == [4, 5]


def test_limit_bounds(client: TestClient, fake: FakeBridge) -> None:
    assert client.get(E, params={"limit": 1}).status_code == 200
    assert client.get(E, params={"limit": 1000}).status_code == 200
    assert [c["limit"] for c in fake.query_calls] == [1, 1000]


def test_commands_show_up_as_events(client: TestClient) -> None:
    client.post("/api/v1/devices/sim0/gpio/led", json={"level": 1})
    body = client.get(E, params={"type": "hardware.gpio_change"}).json()
    assert len(body["events"]) == 1
    assert body["events"][0]["data"] == {"source": "led", "value": 1}


@pytest.mark.parametrize(("params", "message"), [
    ({"limit": 0}, "query parameter limit: input should be greater than or equal to 1 (got '0')"),
    ({"limit": 1001},
     "query parameter limit: input should be less than or equal to 1000 (got '1001')"),
    ({"limit": "ten"},
     "query parameter limit: input should be a valid integer, unable to parse string as an "
     "integer (got 'ten')"),
    ({"cursor": -1},
     "query parameter cursor: input should be greater than or equal to 0 (got '-1')"),
    ({"cursor": "abc"},
     "query parameter cursor: input should be a valid integer, unable to parse string as an "
     "integer (got 'abc')"),
    ({"since": "yesterday"},
     "query parameter since: expected an ISO-8601 time (e.g. 2026-01-01T12:00:00Z) or epoch "
     "seconds, got 'yesterday'"),
    ({"since": "-5"},
     "query parameter since: epoch seconds must be a finite, non-negative number, got '-5'"),
    ({"type": "Hardware Boot"},
     "query parameter type: expected an event type like 'interlock.trip' or a namespace like "
     "'hardware.*', got 'Hardware Boot'"),
    ({"type": "hardware.*.x"},
     "query parameter type: expected an event type like 'interlock.trip' or a namespace like "
     "'hardware.*', got 'hardware.*.x'"),
    ({"device": ""},
     "query parameter device: string should have at least 1 character (got '')"),
])
def test_invalid_query_422(client: TestClient, fake: FakeBridge, params: dict,
                           message: str) -> None:
    r = client.get(E, params=params)
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_input"
    assert r.json()["message"] == message
    assert fake.query_calls == []


def test_parse_since() -> None:
    assert parse_since("0") == 0.0
    assert parse_since("1767225600") == T0
    assert parse_since(" 1767225600.5 ") == T0 + 0.5
    assert parse_since("2026-01-01") == T0
    assert parse_since("2026-01-01T00:00:00.250Z") == T0 + 0.25
    with pytest.raises(InvalidInput):
        parse_since("1e999")
    with pytest.raises(InvalidInput):
        parse_since("nan")
