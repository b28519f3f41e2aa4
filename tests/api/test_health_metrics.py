"""/healthz, /readyz, /metrics (API histogram by route template + the service's text)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from api.fake_bridge import FakeBridge
from metal.host.bridge.api import create_app


def test_healthz(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_readyz_ready(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "ready": True, "store": True,
                        "devices": {"sim0": "connected", "rack1": "connected"}}


def test_readyz_not_ready_503(client: TestClient, fake: FakeBridge) -> None:
    fake.ready = {"ready": False, "store": False, "devices": {"sim0": "connecting"}}
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {"status": "not_ready", "ready": False, "store": False,
                        "devices": {"sim0": "connecting"}}


def test_readyz_truthy_but_not_true_is_not_ready(client: TestClient, fake: FakeBridge) -> None:
    fake.ready = {"ready": "yes"}
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["ready"] is False


def test_readyz_when_readiness_raises_503(client: TestClient, fake: FakeBridge) -> None:
    def broken() -> dict:
        raise OSError("store unreachable")

    fake.readiness = broken  # type: ignore[method-assign]
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {"status": "not_ready", "ready": False,
                        "error": "OSError: store unreachable", "devices": {}}


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_metrics_histogram_by_route_template(client: TestClient) -> None:
    client.get("/api/v1/devices/sim0")
    client.get("/api/v1/devices/rack1")
    client.get("/api/v1/devices/ghost")
    client.post("/api/v1/devices/sim0/power/rails/p3v3", json={"action": "off"})
    client.post("/api/v1/devices/sim0/power/rails/p3v3", json={"action": "nope"})
    client.get("/no/such/path")
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = _samples(r.text)
    counts = {(lb["method"], lb["route"], lb["status"]): v
              for lb, v in samples["metal_api_request_duration_seconds_count"]}
    assert counts[("GET", "/api/v1/devices/{device_id}", "200")] == 2
    assert counts[("GET", "/api/v1/devices/{device_id}", "404")] == 1
    assert counts[("POST", "/api/v1/devices/{device_id}/power/rails/{rail}", "200")] == 1
    assert counts[("POST", "/api/v1/devices/{device_id}/power/rails/{rail}", "422")] == 1
    assert counts[("GET", "<unmatched>", "404")] == 1
    # never a raw path as a label
    assert not any("sim0" in route or "rack1" in route or "ghost" in route
                   for _, route, _ in counts)
    buckets = [lb for lb, _ in samples["metal_api_request_duration_seconds_bucket"]
               if lb["route"] == "/api/v1/devices/{device_id}" and lb["status"] == "200"]
    assert {b["le"] for b in buckets} >= {"0.0005", "0.001", "0.01", "1.0", "+Inf"}
    sums = {(lb["route"], lb["status"]): v
            for lb, v in samples["metal_api_request_duration_seconds_sum"]}
    assert sums[("/api/v1/devices/{device_id}", "200")] > 0


def test_metrics_include_the_service_metrics(client: TestClient, fake: FakeBridge) -> None:
    text = client.get("/metrics").text
    assert text.endswith("\n")
    assert 'metal_temperature_celsius{device="sim0",sensor="cpu"} 41.5\n' in text
    # API metrics first, the device's after
    assert text.index("metal_api_request_duration_seconds") < text.index(
        "metal_temperature_celsius")
    samples = _samples(text)  # the concatenation parses as one exposition
    assert samples["metal_temperature_celsius"] == [({"device": "sim0", "sensor": "cpu"}, 41.5)]
    assert samples["metal_api_websocket_streams"] == [({}, 0.0)]


def test_metrics_service_text_without_trailing_newline(client: TestClient,
                                                       fake: FakeBridge) -> None:
    fake.device_metrics = b"metal_up 1"
    text = client.get("/metrics").text
    assert text.endswith("\nmetal_up 1\n")


def test_metrics_count_websocket_closes(client: TestClient, fake: FakeBridge) -> None:
    fake.stream_end = "slow_consumer"
    with client.websocket_connect("/api/v1/stream?topics=events") as ws:
        try:
            while True:
                ws.receive_json()
        except Exception:
            pass
    with client.websocket_connect("/api/v1/stream?topics=bogus") as ws:
        try:
            ws.receive_json()
        except Exception:
            pass
    samples = _samples(client.get("/metrics").text)
    closed = {lb["reason"]: v for lb, v in samples["metal_api_websocket_closed_total"]}
    assert closed == {"slow_consumer": 1.0, "invalid": 1.0}


def test_each_app_has_its_own_registry(fake: FakeBridge) -> None:
    before = {m.name for m in REGISTRY.collect()}
    a, b = create_app(fake), create_app(FakeBridge())
    assert a.state.metrics.registry is not b.state.metrics.registry
    assert "metal_api_request_duration_seconds" not in before
    assert not any(m.name.startswith("metal_api") for m in REGISTRY.collect())
    with TestClient(a) as ca:
        ca.get("/healthz")
    with TestClient(b) as cb:
        text = cb.get("/metrics").text
    assert not re.search(r'route="/healthz"', text)  # b never served /healthz
