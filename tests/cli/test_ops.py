"""metal status / power / events against a stub bridge API on 127.0.0.1 (REST + WebSocket).

The stub is a real HTTP server in a thread (http.server), so the client's urllib requests
and its hand-written WebSocket handshake and framing are exercised for real.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from metal.host.cli import ops
from metal.host.cli.client import ApiError, Client, error_from_body, resolve_url

# -- the stub API ------------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


WsScript = list[tuple[Any, ...]]  # ("text", obj) | ("ping", bytes) | ("close", code, reason)


@dataclass
class Stub:
    routes: dict[tuple[str, str], Any] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    ws_scripts: list[WsScript] = field(default_factory=list)
    ws_queries: list[dict[str, list[str]]] = field(default_factory=list)
    pongs: list[bytes] = field(default_factory=list)
    url: str = ""

    def on(self, method: str, path: str, status: int, body: Any,
           *, raw: bool = False) -> None:
        self.routes[(method, path)] = (status, body, raw)

    def last(self) -> Seen:
        return self.seen[-1]


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 126]) + struct.pack("!H", n)
    else:
        head = bytes([0x80 | opcode, 127]) + struct.pack("!Q", n)
    return head + payload


def _read_client_frame(rfile: Any) -> tuple[int, bytes]:
    b0, b1 = rfile.read(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", rfile.read(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", rfile.read(8))[0]
    assert b1 & 0x80, "client frames must be masked"
    mask = rfile.read(4)
    data = bytes(c ^ mask[i & 3] for i, c in enumerate(rfile.read(n)))
    return b0 & 0x0F, data


def _handler(stub: Stub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _serve(self, method: str) -> None:
            parts = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(parts.query)
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            body = json.loads(raw) if raw else None
            stub.seen.append(Seen(method, parts.path, query, dict(self.headers), body))
            if self.headers.get("Upgrade", "").lower() == "websocket" and stub.ws_scripts:
                self._websocket(query)
                return
            status, doc, is_raw = stub.routes.get(
                (method, parts.path),
                (404, {"code": "not_found", "message": f"no such resource: {method} {parts.path}"},
                 False))
            data = doc if is_raw else json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if is_raw else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _websocket(self, query: dict[str, list[str]]) -> None:
            stub.ws_queries.append(query)
            script = stub.ws_scripts.pop(0)
            key = self.headers["Sec-WebSocket-Key"]
            accept = base64.b64encode(hashlib.sha1(
                (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", accept)
            self.end_headers()
            self.wfile.flush()
            for step in script:
                if step[0] == "text":
                    self.wfile.write(_ws_frame(0x1, json.dumps(step[1]).encode()))
                elif step[0] == "fragmented":  # one message in two frames
                    text = json.dumps(step[1]).encode()
                    self.wfile.write(bytes([0x01, len(text[:5])]) + text[:5])
                    self.wfile.write(_ws_frame(0x0, text[5:]))
                elif step[0] == "ping":
                    self.wfile.write(_ws_frame(0x9, step[1]))
                    self.wfile.flush()
                    op, data = _read_client_frame(self.rfile)
                    if op == 0xA:
                        stub.pongs.append(data)
                elif step[0] == "close":
                    self.wfile.write(_ws_frame(0x8, struct.pack("!H", step[1]) + step[2].encode()))
                    self.wfile.flush()
                    try:  # the client answers with its close frame
                        _read_client_frame(self.rfile)
                    except (ValueError, OSError):
                        pass
                elif step[0] == "drop":
                    break
                self.wfile.flush()
            self.close_connection = True

        def do_GET(self) -> None:  # noqa: N802
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

    return Handler


@pytest.fixture
def stub() -> Iterator[Stub]:
    s = Stub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(s))
    server.daemon_threads = True
    t = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    t.start()
    s.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield s
    server.shutdown()
    server.server_close()


def run(cmd: click.Command, args: list[str], stub: Stub | None = None,
        env: dict[str, str] | None = None) -> Result:
    full = list(args) + (["--url", stub.url] if stub is not None else [])
    return CliRunner().invoke(cmd, full, env={"METAL_URL": "", **(env or {})},
                              catch_exceptions=False)


# -- fixtures: documents in the API's shapes ---------------------------------------------------

DEVICES = [
    {"id": "sim-0001", "board": "sim", "online": True, "firmware_version": "0.1.0",
     "simulated": True},
    {"id": "rack1", "board": "rp2040", "online": False, "firmware_version": None,
     "simulated": False},
]

SNAPSHOT = {
    "id": "sim-0001", "board": "sim", "online": True, "simulated": True,
    "firmware_version": "0.1.0", "boot_id": 7,
    "power": {"state": "on", "rails": [
        {"name": "p12v", "state": "on", "voltage_v": 12.04, "current_a": 1.5, "fault": None,
         "nominal_v": 12.0, "parent": None},
        {"name": "p3v3", "state": "fault", "voltage_v": 0.0, "current_a": 0.0,
         "fault": "overcurrent", "nominal_v": 3.3, "parent": "p12v"}]},
    "thermal": {
        "sensors": [{"name": "cpu", "zone": "cpu", "temp_c": 41.53, "status": "ok",
                     "warn_c": 80.0, "crit_c": 95.0},
                    {"name": "inlet", "zone": "cpu", "temp_c": None, "status": "open",
                     "warn_c": 40.0, "crit_c": 50.0}],
        "fans": [{"name": "fan0", "zone": "cpu", "duty_pct": 35.0, "speed_rpm": 2100,
                  "status": "ok"}],
        "zones": [{"name": "cpu", "mode": "auto", "duty_pct": 35.0, "setpoint_c": 45.0}]},
    "gpio": [],
    "security": {"armed": True, "locked": True, "door_open": False, "tamper": False,
                 "estop": False, "lockout": False, "fitted": {}},
    "interlocks": [{"id": 0, "name": "overtemp", "state": "tripped", "latched": True,
                    "action": "overheat"}],
    "updated_at": None,
}


def ev(i: int, typ: str = "hardware.rail_state", device: str = "sim-0001",
       data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": i, "type": typ, "device": device, "time": 1767225600.0 + i, "boot_id": 7,
            "seq": i, "data": data if data is not None else {"source": 0, "value": 2, "aux": 0,
                                                             "board_ms": 100, "kind": 2,
                                                             "source_name": "p12v",
                                                             "value_name": "on"}}


# -- status ------------------------------------------------------------------------------------


def test_status_lists_devices(stub: Stub) -> None:
    stub.on("GET", "/api/v1/devices", 200, DEVICES)
    r = run(ops.status, [], stub)
    assert r.exit_code == 0
    assert r.stdout == (
        "DEVICE    BOARD   STATE    FIRMWARE  SIMULATED\n"
        "sim-0001  sim     online   0.1.0     yes\n"
        "rack1     rp2040  offline  -         no\n")
    assert stub.last().headers["Accept"] == "application/json"


def test_status_json_is_the_api_document(stub: Stub) -> None:
    stub.on("GET", "/api/v1/devices", 200, DEVICES)
    r = run(ops.status, ["--json"], stub)
    assert r.exit_code == 0
    assert json.loads(r.stdout) == DEVICES


def test_status_of_no_devices(stub: Stub) -> None:
    stub.on("GET", "/api/v1/devices", 200, [])
    assert run(ops.status, [], stub).stdout == "no devices\n"


def test_status_of_one_device(stub: Stub) -> None:
    stub.on("GET", "/api/v1/devices/sim-0001", 200, SNAPSHOT)
    r = run(ops.status, ["sim-0001"], stub)
    assert r.exit_code == 0, r.output
    assert r.stdout == (
        "device:    sim-0001\n"
        "board:     sim\n"
        "state:     online\n"
        "firmware:  0.1.0\n"
        "boot id:   7\n"
        "power:     on\n"
        "simulated: yes\n"
        "\n"
        "RAILS\n"
        "  NAME  STATE  VOLTAGE  CURRENT  NOMINAL  FAULT\n"
        "  p12v  on     12.04 V  1.50 A   12.00 V  -\n"
        "  p3v3  fault  0.00 V   0.00 A   3.30 V   overcurrent\n"
        "\n"
        "SENSORS\n"
        "  NAME   ZONE  TEMP     STATUS  WARN     CRIT\n"
        "  cpu    cpu   41.5 °C  ok      80.0 °C  95.0 °C\n"
        "  inlet  cpu   -        open    40.0 °C  50.0 °C\n"
        "\n"
        "FANS\n"
        "  NAME  ZONE  DUTY  SPEED     STATUS\n"
        "  fan0  cpu   35 %  2100 rpm  ok\n"
        "\n"
        "ZONES\n"
        "  NAME  MODE  DUTY  SETPOINT\n"
        "  cpu   auto  35 %  45.0 °C\n"
        "\n"
        "INTERLOCKS\n"
        "  NAME      STATE    LATCHED  ACTION\n"
        "  overtemp  tripped  yes      overheat\n"
        "\n"
        "SECURITY: armed, locked\n")


def test_status_of_one_device_json(stub: Stub) -> None:
    stub.on("GET", "/api/v1/devices/sim-0001", 200, SNAPSHOT)
    r = run(ops.status, ["sim-0001", "--json"], stub)
    assert json.loads(r.stdout) == SNAPSHOT


def test_status_device_id_is_quoted_in_the_path(stub: Stub) -> None:
    run(ops.status, ["a/b c"], stub)
    assert stub.last().path == "/api/v1/devices/a%2Fb%20c"


def test_status_unknown_device_shows_the_api_error(stub: Stub) -> None:
    stub.on("GET", "/api/v1/devices/nope", 404,
            {"code": "device_not_found", "message": "no device 'nope'"})
    r = run(ops.status, ["nope"], stub)
    assert r.exit_code == 2
    assert r.stdout == ""
    assert r.stderr == "error: no device 'nope' (device_not_found)\n"


def test_unreachable_bridge(stub: Stub) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    r = CliRunner().invoke(ops.status, ["--url", f"http://127.0.0.1:{port}"])
    assert r.exit_code == 2
    assert r.stderr == (f"error: cannot reach the bridge at http://127.0.0.1:{port}: "
                        "Connection refused (unreachable)\n")


def test_non_json_error_body(stub: Stub) -> None:
    stub.on("GET", "/api/v1/devices", 502, b"Bad Gateway from a proxy", raw=True)
    r = run(ops.status, [], stub)
    assert r.exit_code == 2
    assert r.stderr == "error: Bad Gateway from a proxy (http_502)\n"


def test_non_json_success_body(stub: Stub) -> None:
    stub.on("GET", "/api/v1/devices", 200, b"<html>", raw=True)
    r = run(ops.status, [], stub)
    assert r.exit_code == 2
    assert r.stderr == ("error: GET /api/v1/devices: HTTP 200 answer is not JSON: b'<html>' "
                        "(bad_response)\n")


def test_url_from_env_and_flag_precedence(stub: Stub) -> None:
    stub.on("GET", "/api/v1/devices", 200, DEVICES[:1])
    r = CliRunner().invoke(ops.status, ["--json"], env={"METAL_URL": stub.url})
    assert r.exit_code == 0 and json.loads(r.stdout) == DEVICES[:1]
    r = CliRunner().invoke(ops.status, ["--json", "--url", stub.url],
                           env={"METAL_URL": "http://127.0.0.1:1"})
    assert r.exit_code == 0


def test_resolve_url() -> None:
    assert resolve_url(None, {}) == "http://127.0.0.1:8080"
    assert resolve_url(None, {"METAL_URL": "http://127.0.0.1:9000/"}) == "http://127.0.0.1:9000"
    assert resolve_url("127.0.0.1:9001", {"METAL_URL": "x"}) == "http://127.0.0.1:9001"
    with pytest.raises(ApiError) as ei:
        resolve_url("ftp://x", {})
    assert (ei.value.code, ei.value.message) == ("invalid_url",
                                                 "bridge URL 'ftp://x': use http:// or https://")


def test_error_body_shapes() -> None:
    e = error_from_body(422, {"detail": [{"loc": ["body", "action"], "msg": "bad"}]}, "x")
    assert (e.code, e.message) == ("invalid_input", "action: bad")
    e = error_from_body(500, {"error": {"code": "boom", "message": "it broke"}}, "x")
    assert (e.code, e.message, e.status) == ("boom", "it broke", 500)
    e = error_from_body(404, {"detail": "Not Found"}, "x")
    assert (e.code, e.message) == ("http_404", "Not Found")
    e = error_from_body(None, None, "fallback")
    assert (e.code, e.message) == ("error", "fallback")


# -- power -------------------------------------------------------------------------------------


def test_power_applied(stub: Stub) -> None:
    stub.on("POST", "/api/v1/devices/sim-0001/power/rails/p12v", 200,
            {"command_id": 42, "result": "applied", "reason": None})
    r = run(ops.power, ["on", "sim-0001", "p12v"], stub)
    assert r.exit_code == 0
    assert r.stdout == "applied: power on p12v on sim-0001 (command 42)\n"
    seen = stub.last()
    assert seen.body == {"action": "on"}
    assert seen.headers["Content-Type"] == "application/json"
    assert "Idempotency-Key" not in seen.headers


@pytest.mark.parametrize("action", ["off", "cycle"])
def test_power_actions_and_idempotency_key(stub: Stub, action: str) -> None:
    stub.on("POST", "/api/v1/devices/d/power/rails/r", 200,
            {"command_id": 1, "result": "applied", "reason": None})
    r = run(ops.power, [action, "d", "r", "--idempotency-key", "k-1"], stub)
    assert r.exit_code == 0
    assert stub.last().body == {"action": action}
    assert stub.last().headers["Idempotency-Key"] == "k-1"


def test_power_rejected_verdict_exits_1(stub: Stub) -> None:
    stub.on("POST", "/api/v1/devices/sim-0001/power/rails/p3v3", 200,
            {"command_id": 43, "result": "rejected", "reason": "busy"})
    r = run(ops.power, ["on", "sim-0001", "p3v3"], stub)
    assert r.exit_code == 1
    assert r.stdout == "rejected: power on p3v3 on sim-0001 (command 43): busy\n"


def test_power_refused_409_exits_1_with_the_api_message(stub: Stub) -> None:
    body = {"code": "refused", "message": "rail on p3v3: refused by an interlock on the board",
            "command_id": 43, "result": "rejected", "reason": "rejected_by_interlock"}
    stub.on("POST", "/api/v1/devices/sim-0001/power/rails/p3v3", 409, body)
    r = run(ops.power, ["on", "sim-0001", "p3v3"], stub)
    assert r.exit_code == 1
    assert r.stdout == ""
    assert r.stderr == "error: rail on p3v3: refused by an interlock on the board (refused)\n"
    r = run(ops.power, ["on", "sim-0001", "p3v3", "--json"], stub)
    assert r.exit_code == 1
    assert json.loads(r.stdout) == body


def test_power_json(stub: Stub) -> None:
    verdict = {"command_id": 42, "result": "applied", "reason": None}
    stub.on("POST", "/api/v1/devices/d/power/rails/r", 200, verdict)
    r = run(ops.power, ["on", "d", "r", "--json"], stub)
    assert r.exit_code == 0 and json.loads(r.stdout) == verdict


@pytest.mark.parametrize("status,code,message", [
    (404, "target_not_found", "no rail named 'p9v' on this board"),
    (503, "device_offline", "device sim-0001 is not connected"),
    (504, "device_timeout", "no verdict within 5 s; the command may still apply"),
    (422, "invalid_input", "action: input should be 'on', 'off' or 'cycle'"),
])
def test_power_errors_exit_2(stub: Stub, status: int, code: str, message: str) -> None:
    stub.on("POST", "/api/v1/devices/sim-0001/power/rails/p9v", status,
            {"code": code, "message": message})
    r = run(ops.power, ["on", "sim-0001", "p9v"], stub)
    assert r.exit_code == 2
    assert r.stdout == ""
    assert r.stderr == f"error: {message} ({code})\n"


def test_power_bad_action_is_a_usage_error(stub: Stub) -> None:
    r = run(ops.power, ["toggle", "d", "r"], stub)
    assert r.exit_code == 2
    assert "Invalid value for '{on|off|cycle}'" in r.stderr
    assert stub.seen == []


def test_power_unexpected_answer(stub: Stub) -> None:
    stub.on("POST", "/api/v1/devices/d/power/rails/r", 200, {"ok": True})
    r = run(ops.power, ["on", "d", "r"], stub)
    assert r.exit_code == 2
    assert r.stderr == "error: unexpected answer to power on: {'ok': True} (bad_response)\n"


# -- events (stored) ---------------------------------------------------------------------------


def test_events_table(stub: Stub) -> None:
    stub.on("GET", "/api/v1/events", 200, {"events": [
        ev(1),
        ev(2, "link.status", data={"previous": "connecting", "state": "connected"}),
        ev(3, "hardware.host_lost", data={"source": 0, "value": 1, "aux": 5, "board_ms": 9,
                                          "kind": 18, "name": "host_lost"}),
    ], "next_cursor": None})
    r = run(ops.events, [], stub)
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("     1  ")
    assert lines[0].endswith("  hardware.rail_state  sim-0001  p12v: on")
    assert lines[1].endswith("  link.status  sim-0001  previous=connecting state=connected")
    assert lines[2].endswith("  hardware.host_lost  sim-0001  value=1 aux=5")
    assert r.stderr == ""
    assert stub.last().query == {"limit": ["100"]}


def test_events_filters_are_sent_and_json_output(stub: Stub) -> None:
    stub.on("GET", "/api/v1/events", 200, {"events": [ev(5)], "next_cursor": None})
    r = run(ops.events, ["--device", "sim-0001", "--type", "hardware.*", "--since",
                         "2026-01-01T00:00:00Z", "--after", "4", "-n", "10", "--json"], stub)
    assert r.exit_code == 0
    assert json.loads(r.stdout) == [ev(5)]
    assert stub.last().query == {"device": ["sim-0001"], "type": ["hardware.*"],
                                 "since": ["2026-01-01T00:00:00Z"], "cursor": ["4"],
                                 "limit": ["10"]}


def test_events_pages_up_to_the_limit_and_says_there_is_more(stub: Stub) -> None:
    stub.on("GET", "/api/v1/events", 200, {"events": [ev(1), ev(2)], "next_cursor": 2})
    r = run(ops.events, ["-n", "2", "--json"], stub)
    assert r.exit_code == 0
    assert [e["id"] for e in json.loads(r.stdout)] == [1, 2]
    assert r.stderr == "more events: add --after 2\n"


def test_events_follow_cursor_pages(stub: Stub, monkeypatch: pytest.MonkeyPatch) -> None:
    pages = {None: ([ev(1), ev(2)], 2), 2: ([ev(3)], None)}
    calls: list[Any] = []

    def fake_events(self: Client, **kw: Any) -> Any:
        calls.append(kw)
        return pages[kw["cursor"]]

    monkeypatch.setattr(Client, "events", fake_events)
    items, more = ops._stored(Client(stub.url), None, None, None, None, 100)
    assert [e["id"] for e in items] == [1, 2, 3] and more is None
    assert [c["cursor"] for c in calls] == [None, 2]
    assert calls[0]["limit"] == 100


def test_events_none(stub: Stub) -> None:
    stub.on("GET", "/api/v1/events", 200, {"events": [], "next_cursor": None})
    assert run(ops.events, [], stub).stdout == "no events\n"


def test_events_bad_query_shows_the_api_error(stub: Stub) -> None:
    stub.on("GET", "/api/v1/events", 422,
            {"code": "invalid_input", "message": "query parameter since: expected an ISO-8601 "
             "time (e.g. 2026-01-01T12:00:00Z) or epoch seconds, got 'yesterday'"})
    r = run(ops.events, ["--since", "yesterday"], stub)
    assert r.exit_code == 2
    assert r.stderr == ("error: query parameter since: expected an ISO-8601 time (e.g. "
                        "2026-01-01T12:00:00Z) or epoch seconds, got 'yesterday' "
                        "(invalid_input)\n")


@pytest.mark.parametrize("pattern,typ,match", [
    (None, "a.b", True), ("*", "a.b", True), ("a.b", "a.b", True), ("a.b", "a.bc", False),
    ("hardware.*", "hardware.boot", True), ("hardware.*", "hardwarex.boot", False),
    ("hardware.*", None, False),
])
def test_type_matches(pattern: str | None, typ: Any, match: bool) -> None:
    assert ops.type_matches(pattern, typ) is match


# -- events --follow (WebSocket) ---------------------------------------------------------------


def test_follow_resumes_after_the_last_event_and_ends_on_a_policy_close(stub: Stub) -> None:
    stub.ws_scripts = [
        [("text", {"topic": "events", **ev(1)}),
         ("text", {"topic": "telemetry", "device": "sim-0001", "data": {}}),
         ("ping", b"hi"),
         ("fragmented", {"topic": "events", **ev(2)}),
         ("close", 1001, "shutdown")],
        [("text", {"topic": "events", **ev(2)}),  # a resume overlap: printed once only
         ("text", {"topic": "events", **ev(3, "interlock.trip")}),
         ("text", {"topic": "closed", "reason": "slow_consumer", "last_id": 3}),
         ("close", 4008, "slow_consumer")],
        [("drop",)],  # the connection breaks without a close frame
        [("close", 1008, "device_not_found: no device 'sim-0001'")],
    ]
    r = run(ops.events, ["--follow", "--json", "--after", "0", "-d", "sim-0001"], stub)
    assert r.exit_code == 2
    assert [json.loads(line) for line in r.stdout.splitlines()] == [
        ev(1), ev(2), ev(3, "interlock.trip")]
    assert stub.pongs == [b"hi"]
    assert [q.get("resume_from") for q in stub.ws_queries] == [["0"], ["2"], ["3"], ["3"]]
    assert all(q["topics"] == ["events"] and q["device"] == ["sim-0001"]
               for q in stub.ws_queries)
    err = r.stderr.splitlines()
    assert err[0] == ("stream: closed by the bridge (1001: shutdown); reconnecting in 0.2 s "
                      "(resuming after event 2)")
    assert err[1] == ("stream: closed by the bridge (4008: slow_consumer); reconnecting in "
                      "0.2 s (resuming after event 3)")
    assert err[2] == ("stream: connection closed by the bridge; reconnecting in 0.4 s "
                      "(resuming after event 3)")
    assert err[3] == "error: no device 'sim-0001' (device_not_found)"
    assert len(err) == 4
    assert not any(s.method == "GET" and s.path == "/api/v1/events" for s in stub.seen)


def test_follow_table_output_and_type_filter(stub: Stub) -> None:
    stub.ws_scripts = [[
        ("text", {"topic": "events", **ev(7)}),
        ("text", {"topic": "events", **ev(8, "interlock.trip", data={"name": "overtemp"})}),
        ("close", 1008, "invalid topic 'x' (expected telemetry, events, state)"),
    ]]
    r = run(ops.events, ["-f", "--type", "interlock.*"], stub)
    assert r.exit_code == 2
    lines = r.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("     8  ")
    assert lines[0].endswith("  interlock.trip  sim-0001  name=overtemp")
    assert stub.ws_queries[0].get("resume_from") is None  # no --since/--after: live only
    assert r.stderr == ("error: invalid topic 'x' (expected telemetry, events, state) "
                        "(invalid_input)\n")


def test_follow_with_since_prints_stored_then_resumes(stub: Stub) -> None:
    stub.on("GET", "/api/v1/events", 200, {"events": [ev(10), ev(11)], "next_cursor": None})
    stub.ws_scripts = [[("text", {"topic": "events", **ev(12)}),
                        ("close", 1008, "device_not_found: no device 'x'")]]
    r = run(ops.events, ["-f", "--json", "--since", "1767225600"], stub)
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == [10, 11, 12]
    assert stub.ws_queries[0]["resume_from"] == ["11"]
    get = [s for s in stub.seen if s.path == "/api/v1/events"][0]
    assert get.query["since"] == ["1767225600"] and get.query["limit"] == ["1000"]


def test_follow_handshake_http_error_is_an_api_error(stub: Stub) -> None:
    # no WebSocket support on the server: an ordinary 404 JSON answer to the upgrade
    r = run(ops.events, ["-f", "--after", "5"], stub)
    assert r.exit_code == 2
    assert r.stderr == "error: no such resource: GET /api/v1/stream (not_found)\n"


def test_follow_gives_up_after_max_reconnects_when_nothing_listens(stub: Stub) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    slept: list[float] = []
    runner = CliRunner()
    with runner.isolation() as (_out, err, _x):
        last = ops.follow_events(Client(f"http://127.0.0.1:{port}"), device=None, type_=None,
                                 last_id=9, as_json=True, max_reconnects=4,
                                 sleep=slept.append)
        text = err.getvalue().decode() if err is not None else ""
    assert last == 9
    assert slept == [0.2, 0.4, 0.8, 1.6]  # capped exponential back-off
    assert text.count("Connection refused") == 4
    assert "resuming after event 9" in text
