"""WS /api/v1/stream: filters, resume, live messages, query errors, slow consumers."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from api.fake_bridge import FakeBridge
from metal.host.bridge.api.routes_stream import (
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_SLOW_CONSUMER,
    parse_stream_query,
    pump,
)
from metal.host.bridge.events import SubscriptionClosed
from metal.host.bridge.model import DeviceOffline, InvalidInput

S = "/api/v1/stream"
ALL = frozenset({"telemetry", "events", "state"})

SCRIPT: list[dict[str, Any]] = [
    {"topic": "telemetry", "device": "sim0", "data": {"cpu_temp_c": 41.5}},
    {"topic": "telemetry", "device": "rack1", "data": {"cpu_temp_c": 38.0}},
    {"topic": "state", "device": "sim0", "path": "power.state", "value": "on"},
    {"topic": "events", "id": 50, "type": "hardware.boot", "device": "rack1", "time": 1.0,
     "boot_id": 1, "seq": 1, "data": {}},
    {"topic": "events", "id": 51, "type": "interlock.trip", "device": "sim0", "time": 2.0,
     "boot_id": 7, "seq": 9, "data": {"source": "overtemp"}},
]


def receive_all(ws: Any) -> tuple[list[dict[str, Any]], WebSocketDisconnect]:
    """Every message until the server closes; returns them and the close."""
    messages = []
    while True:
        try:
            messages.append(ws.receive_json())
        except WebSocketDisconnect as close:
            return messages, close


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def scripted(fake: FakeBridge) -> FakeBridge:
    fake.stream_script = [dict(m) for m in SCRIPT]
    fake.stream_end = "end"
    return fake


# -- filters and resume -----------------------------------------------------------------------


def test_all_topics_all_devices_by_default(client: TestClient, scripted: FakeBridge) -> None:
    with client.websocket_connect(S) as ws:
        messages, close = receive_all(ws)
    assert messages == SCRIPT
    assert (close.code, close.reason) == (CLOSE_NORMAL, "end")
    assert scripted.subscribe_calls == [(ALL, None, None)]


def test_topic_filter(client: TestClient, scripted: FakeBridge) -> None:
    with client.websocket_connect(f"{S}?topics=telemetry,state") as ws:
        messages, _ = receive_all(ws)
    assert [m["topic"] for m in messages] == ["telemetry", "telemetry", "state"]
    assert scripted.subscribe_calls == [(frozenset({"telemetry", "state"}), None, None)]


def test_topic_filter_repeated_param_and_spaces(client: TestClient, scripted: FakeBridge) -> None:
    with client.websocket_connect(f"{S}?topics=events&topics=%20state%20") as ws:
        receive_all(ws)
    assert scripted.subscribe_calls == [(frozenset({"events", "state"}), None, None)]


def test_device_filter(client: TestClient, scripted: FakeBridge) -> None:
    with client.websocket_connect(f"{S}?device=rack1") as ws:
        messages, _ = receive_all(ws)
    assert [m["device"] for m in messages] == ["rack1", "rack1"]
    assert scripted.subscribe_calls == [(ALL, "rack1", None)]


def test_resume_from_passes_through_and_replays(client: TestClient, scripted: FakeBridge) -> None:
    scripted.stream_script = []
    with client.websocket_connect(f"{S}?topics=events&resume_from=4") as ws:
        messages, _ = receive_all(ws)
    assert scripted.subscribe_calls == [(frozenset({"events"}), None, 4)]
    assert [m["id"] for m in messages] == [5, 6, 7]
    assert all(m["topic"] == "events" for m in messages)


def test_live_command_events_and_state(client: TestClient, fake: FakeBridge) -> None:
    fake.stream_script = [{"topic": "state", "device": "sim0", "path": "hello", "value": 1}]
    with client.websocket_connect(f"{S}?topics=events,state&device=sim0") as ws:
        assert ws.receive_json()["path"] == "hello"  # subscribed: live messages flow now
        r = client.post("/api/v1/devices/sim0/power/rails/p1v8", json={"action": "off"})
        assert r.status_code == 200
        client.post("/api/v1/devices/rack1/power/rails/p1v8", json={"action": "off"})
        event = ws.receive_json()
        state = ws.receive_json()
        client.post("/api/v1/devices/sim0/gpio/led", json={"level": 1})
        gpio_event = ws.receive_json()
    assert event["topic"] == "events"
    assert event["type"] == "hardware.rail_state"
    assert event["device"] == "sim0"
    assert event["data"] == {"source": "p1v8", "value": "off"}
    assert isinstance(event["id"], int)
    assert state == {"topic": "state", "device": "sim0", "path": "power.rails.p1v8.state",
                     "value": "off"}
    assert gpio_event["type"] == "hardware.gpio_change"  # rack1's event was filtered out


def test_client_disconnect_closes_the_service_stream(client: TestClient, fake: FakeBridge) -> None:
    fake.stream_script = [{"topic": "state", "device": "sim0", "path": "hello", "value": 1}]
    with client.websocket_connect(S) as ws:
        ws.receive_json()
        assert fake.streams_closed == 0
    wait_for(lambda: fake.streams_closed == 1)
    assert fake._subscribers == []


# -- invalid queries: 1008 with a reason ----------------------------------------------------------


@pytest.mark.parametrize(("query", "reason"), [
    ("topics=telemetry,alerts", "invalid topic 'alerts' (expected telemetry, events, state)"),
    ("topics=TELEMETRY", "invalid topic 'TELEMETRY' (expected telemetry, events, state)"),
    ("resume_from=abc", "invalid resume_from 'abc' (expected an event id, a non-negative "
                        "integer)"),
    ("resume_from=-3", "invalid resume_from '-3' (expected an event id, a non-negative "
                       "integer)"),
    ("device=ghost", "device_not_found: no device 'ghost'"),
    ("device=", "invalid device: empty"),
])
def test_invalid_query_closes_1008(client: TestClient, fake: FakeBridge, query: str,
                                   reason: str) -> None:
    with client.websocket_connect(f"{S}?{query}") as ws:
        messages, close = receive_all(ws)
    assert messages == []
    assert (close.code, close.reason) == (CLOSE_POLICY, reason)
    assert fake.subscribe_calls == []


def test_service_refusing_the_subscription_closes_1008(client: TestClient,
                                                       fake: FakeBridge) -> None:
    def refuse(*_a: Any) -> AsyncIterator[dict[str, Any]]:
        raise InvalidInput("resume_from 999 is beyond the last stored event 7")

    fake.subscribe = refuse  # type: ignore[method-assign]
    with client.websocket_connect(f"{S}?resume_from=999") as ws:
        _, close = receive_all(ws)
    assert (close.code, close.reason) == (
        CLOSE_POLICY, "invalid_input: resume_from 999 is beyond the last stored event 7")


def test_service_error_mid_stream_closes_1011(client: TestClient, fake: FakeBridge) -> None:
    async def failing(*_a: Any) -> AsyncIterator[dict[str, Any]]:
        yield {"topic": "state", "device": "sim0", "path": "x", "value": 1}
        raise DeviceOffline("device 'sim0' went away")

    fake.subscribe = failing  # type: ignore[method-assign]
    with client.websocket_connect(S) as ws:
        messages, close = receive_all(ws)
    assert len(messages) == 1
    assert (close.code, close.reason) == (CLOSE_INTERNAL,
                                          "device_offline: device 'sim0' went away")


# -- slow consumers ---------------------------------------------------------------------------


def test_slow_consumer_closes_4008_with_resume_point(client: TestClient,
                                                     scripted: FakeBridge) -> None:
    scripted.stream_end = "slow_consumer"
    with client.websocket_connect(f"{S}?topics=events") as ws:
        messages, close = receive_all(ws)
    assert (close.code, close.reason) == (CLOSE_SLOW_CONSUMER, "slow_consumer")
    assert [m.get("id") for m in messages[:-1]] == [50, 51]
    assert messages[-1] == {"topic": "closed", "reason": "slow_consumer", "last_id": 51}
    assert scripted.streams_closed == 1


def test_slow_consumer_as_a_final_message(client: TestClient, scripted: FakeBridge) -> None:
    scripted.stream_end = "closed_message"
    with client.websocket_connect(f"{S}?topics=events") as ws:
        messages, close = receive_all(ws)
    assert (close.code, close.reason) == (CLOSE_SLOW_CONSUMER, "slow_consumer")
    assert messages[-1] == {"topic": "closed", "reason": "slow_consumer", "last_id": 51}


def test_slow_consumer_resume_round_trip(client: TestClient, fake: FakeBridge) -> None:
    fake.stream_end = "slow_consumer"
    with client.websocket_connect(f"{S}?topics=events&resume_from=2") as ws:
        messages, close = receive_all(ws)
    assert close.code == CLOSE_SLOW_CONSUMER
    last = messages[-1]["last_id"]
    assert last == 7
    fake.stream_end = "end"
    fake._store_event("sim0", "hardware.fan_state", {"source": "fan0", "value": 1})
    with client.websocket_connect(f"{S}?topics=events&resume_from={last}") as ws:
        messages, close = receive_all(ws)
    assert [m["id"] for m in messages] == [8]
    assert fake.subscribe_calls[-1] == (frozenset({"events"}), None, 7)


async def _gen(messages: list[dict[str, Any]], end: BaseException | None = None
               ) -> AsyncIterator[dict[str, Any]]:
    for m in messages:
        yield m
    if end is not None:
        raise end


def test_pump_send_timeout_is_a_slow_consumer() -> None:
    sent: list[str] = []

    async def stuck_send(text: str) -> None:
        if sent:
            await asyncio.sleep(3600)  # the client stopped reading
        sent.append(text)

    stream = _gen([{"topic": "events", "id": 3}, {"topic": "events", "id": 4}])
    code, reason, last = asyncio.run(pump(stream, stuck_send, send_timeout=0.05))
    assert (code, reason, last) == (CLOSE_SLOW_CONSUMER, "slow_consumer", 3)
    assert [json.loads(t)["id"] for t in sent] == [3]


def test_pump_awaits_each_send_in_order() -> None:
    """Backpressure: the next message is pulled from the service only after the send."""
    log: list[str] = []

    async def source() -> AsyncIterator[dict[str, Any]]:
        for i in range(3):
            log.append(f"pull {i}")
            yield {"topic": "telemetry", "n": i}

    async def slow_send(text: str) -> None:
        await asyncio.sleep(0.001)
        log.append(f"sent {json.loads(text)['n']}")

    code, _, _ = asyncio.run(pump(source(), slow_send, send_timeout=1.0))
    assert code == CLOSE_NORMAL
    assert log == ["pull 0", "sent 0", "pull 1", "sent 1", "pull 2", "sent 2"]


def test_pump_shutdown_and_exception_last_id() -> None:
    async def send(_t: str) -> None:
        return None

    code, reason, last = asyncio.run(pump(_gen([], SubscriptionClosed("shutdown", 9)), send,
                                          send_timeout=1.0, last_id=None))
    assert (code, reason, last) == (1001, "shutdown", 9)


def test_parse_stream_query() -> None:
    assert parse_stream_query([], None, None) == (ALL, None, None)
    assert parse_stream_query(["events,,"], "sim0", "0") == (frozenset({"events"}), "sim0", 0)


# -- over a real socket (uvicorn + the websockets client) ------------------------------------------


@pytest.fixture
def server(fake: FakeBridge) -> Iterator[str]:
    import uvicorn

    from metal.host.bridge.api import create_app

    from metal.host.bridge.api import ApiSettings

    app = create_app(fake, settings=ApiSettings(ws_send_timeout_s=0.3))
    fake.app = app  # type: ignore[attr-defined]
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                            ws="websockets-sansio", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_for(lambda: srv.started and srv.servers, timeout=10)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def test_real_socket_slow_consumer_close_code(server: str, scripted: FakeBridge) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    scripted.stream_end = "slow_consumer"
    received = []
    with connect(f"ws://{server}{S}?topics=events") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                received.append(json.loads(ws.recv(timeout=5)))
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4008, "slow_consumer")
    assert received[-1] == {"topic": "closed", "reason": "slow_consumer", "last_id": 51}


def test_real_socket_invalid_topic_1008(server: str, fake: FakeBridge) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with connect(f"ws://{server}{S}?topics=nope") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
    assert closed.value.rcvd.reason == "invalid topic 'nope' (expected telemetry, events, state)"


def test_real_socket_client_that_stops_reading(server: str, fake: FakeBridge) -> None:
    """Real backpressure: a client that never reads blocks a send past the send timeout;
    the stream ends as slow_consumer and the service's subscription is released."""
    import base64
    import os
    import socket

    blob = "x" * 65536

    async def firehose(*_a: Any) -> AsyncIterator[dict[str, Any]]:
        try:
            n = 0
            while True:
                n += 1
                yield {"topic": "telemetry", "device": "sim0", "n": n, "pad": blob}
        finally:
            fake.streams_closed += 1

    fake.subscribe = firehose  # type: ignore[method-assign]
    host, port = server.split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET {S}?topics=telemetry HTTP/1.1\r\nHost: {server}\r\n"
                      "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                      ).encode())
        assert sock.recv(12) == b"HTTP/1.1 101"
        metrics = fake.app.state.metrics  # type: ignore[attr-defined]
        wait_for(lambda: fake.streams_closed == 1, timeout=20)  # never read a byte more
        wait_for(lambda: metrics.ws_closed.labels("slow_consumer")._value.get() == 1)
        assert metrics.ws_streams._value.get() == 0
    finally:
        sock.close()


def test_subscribe_as_coroutine_is_tolerated(client: TestClient, fake: FakeBridge) -> None:
    async def coro_subscribe(*_a: Any) -> AsyncIterator[dict[str, Any]]:
        return _gen([{"topic": "state", "device": "sim0", "path": "p", "value": 1}])

    fake.subscribe = coro_subscribe  # type: ignore[method-assign,assignment]
    with client.websocket_connect(S) as ws:
        messages, close = receive_all(ws)
    assert messages == [{"topic": "state", "device": "sim0", "path": "p", "value": 1}]
    assert close.code == CLOSE_NORMAL
