"""The mutating routes: body -> CommandRequest -> verdict, and every error mapping."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.fake_bridge import FakeBridge
from metal.host.bridge.model import (
    CommandRequest,
    CommandVerdict,
    DeviceError,
    DeviceTimeout,
    InvalidInput,
    Refused,
)

D = "/api/v1/devices"

# (path, body, the CommandRequest the service must get)
ROUTES: list[tuple[str, dict[str, Any] | None, CommandRequest]] = [
    ("sim0/power/rails/p3v3", {"action": "off"}, CommandRequest("rail", "off", "p3v3")),
    ("sim0/power/rails/main", {"action": "on"}, CommandRequest("rail", "on", "main")),
    ("sim0/power/rails/p1v8", {"action": "cycle"}, CommandRequest("rail", "cycle", "p1v8")),
    ("sim0/power", {"action": "off"}, CommandRequest("power", "off")),
    ("sim0/power", {"action": "on"}, CommandRequest("power", "on")),
    ("sim0/thermal/zones/cpu", {"mode": "auto"}, CommandRequest("zone", "auto", "cpu")),
    ("sim0/thermal/zones/cpu", {"mode": "manual", "duty_pct": 60},
     CommandRequest("zone", "manual", "cpu", 60.0)),
    ("sim0/thermal/zones/chassis", {"mode": "manual", "duty_pct": 0},
     CommandRequest("zone", "manual", "chassis", 0.0)),
    ("sim0/thermal/zones/cpu", {"setpoint_c": 50.5},
     CommandRequest("zone", "setpoint", "cpu", 50.5)),
    ("sim0/gpio/led", {"level": 1}, CommandRequest("gpio", "write", "led", 1)),
    ("sim0/gpio/led", {"level": 0}, CommandRequest("gpio", "write", "led", 0)),
    ("sim0/security", {"action": "lock"}, CommandRequest("security", "lock")),
    ("sim0/security", {"action": "unlock"}, CommandRequest("security", "unlock")),
    ("sim0/security", {"action": "arm"}, CommandRequest("security", "arm")),
    ("sim0/security", {"action": "disarm"}, CommandRequest("security", "disarm")),
    ("sim0/security", {"action": "clear_tamper"}, CommandRequest("security", "clear_tamper")),
    ("sim0/interlocks/overtemp/clear", None, CommandRequest("interlock", "clear", "overtemp")),
    ("sim0/estop", {"action": "release"}, CommandRequest("estop", "release")),
    ("sim0/estop", {"action": "assert"}, CommandRequest("estop", "assert")),
    ("sim0/reboot", None, CommandRequest("board", "reboot")),
    ("sim0/sim/faults", {"kind": "sensor_stuck", "target": "cpu", "value_c": 97.5},
     CommandRequest("sim", "sensor_stuck", "cpu", 97.5)),
    ("sim0/sim/faults", {"kind": "sensor_open", "target": "inlet"},
     CommandRequest("sim", "sensor_open", "inlet")),
    ("sim0/sim/faults", {"kind": "sensor_short", "target": "inlet"},
     CommandRequest("sim", "sensor_short", "inlet")),
    ("sim0/sim/faults", {"kind": "fan_stall", "target": "fan0"},
     CommandRequest("sim", "fan_stall", "fan0")),
    ("sim0/sim/faults", {"kind": "rail_short", "target": "p1v8"},
     CommandRequest("sim", "rail_short", "p1v8")),
    ("sim0/sim/faults", {"kind": "pg_glitch", "target": "p3v3", "duration_ms": 50},
     CommandRequest("sim", "pg_glitch", "p3v3", 50)),
    ("sim0/sim/faults", {"kind": "tamper"}, CommandRequest("sim", "tamper", None, 1)),
    ("sim0/sim/faults", {"kind": "door", "active": False}, CommandRequest("sim", "door", None, 0)),
    ("sim0/sim/faults", {"kind": "estop", "active": True}, CommandRequest("sim", "estop", None, 1)),
    ("sim0/sim/faults", {"kind": "clear"}, CommandRequest("sim", "clear")),
    ("sim0/sim/faults", {"kind": "clear", "target": None}, CommandRequest("sim", "clear")),
    ("sim0/sim/faults", {"kind": "clear", "target": "fan0", "fault": "fan_stall"},
     CommandRequest("sim", "clear", "fan0", None, {"fault": "fan_stall"})),
]


@pytest.mark.parametrize(("path", "body", "expected"), ROUTES,
                         ids=[f"{p}:{b}" for p, b, _ in ROUTES])
def test_route_builds_the_request_and_returns_the_verdict(
        client: TestClient, fake: FakeBridge, path: str, body: dict[str, Any] | None,
        expected: CommandRequest) -> None:
    r = client.post(f"{D}/{path}", json=body) if body is not None else client.post(f"{D}/{path}")
    assert r.status_code == 200, r.text
    assert r.json() == {"command_id": 101, "result": "applied", "reason": None}
    assert "Idempotent-Replayed" not in r.headers
    assert len(fake.calls) == 1
    call = fake.calls[0]
    assert call.device_id == "sim0"
    assert call.request == expected
    assert call.principal == "local"
    assert call.idempotency_key is None


def test_command_changes_state(client: TestClient) -> None:
    r = client.post(f"{D}/sim0/thermal/zones/cpu", json={"mode": "manual", "duty_pct": 75})
    assert r.status_code == 200
    zone = client.get(f"{D}/sim0").json()["thermal"]["zones"][0]
    assert zone == {"name": "cpu", "mode": "manual", "duty_pct": 75.0, "setpoint_c": 45.0}


# -- body validation: 422 invalid_input naming the field ------------------------------------

INVALID: list[tuple[str, Any, str]] = [
    ("sim0/power/rails/p3v3", {"action": "toggle"},
     "action: input should be 'on', 'off' or 'cycle' (got 'toggle')"),
    ("sim0/power/rails/p3v3", {}, "action: field required"),
    ("sim0/power/rails/p3v3", {"action": "on", "force": True},
     "force: unknown field (not allowed here)"),
    ("sim0/power", {"action": "cycle"}, "action: input should be 'on' or 'off' (got 'cycle')"),
    ("sim0/thermal/zones/cpu", {"mode": "manual"}, "duty_pct is required with mode 'manual'"),
    ("sim0/thermal/zones/cpu", {"mode": "manual", "duty_pct": 100.5},
     "duty_pct: input should be less than or equal to 100 (got 100.5)"),
    ("sim0/thermal/zones/cpu", {"mode": "manual", "duty_pct": -1},
     "duty_pct: input should be greater than or equal to 0 (got -1)"),
    ("sim0/thermal/zones/cpu", {"mode": "manual", "duty_pct": "50"},
     "duty_pct: input should be a valid number (got '50')"),
    ("sim0/thermal/zones/cpu", {"mode": "manual", "duty_pct": True},
     "duty_pct: input should be a valid number (got true)"),
    ("sim0/thermal/zones/cpu", {"mode": "auto", "duty_pct": 50},
     "duty_pct is only allowed with mode 'manual'"),
    ("sim0/thermal/zones/cpu", {"duty_pct": 50}, "duty_pct needs mode 'manual'"),
    ("sim0/thermal/zones/cpu", {},
     "give mode ('auto' or 'manual' with duty_pct) or setpoint_c"),
    ("sim0/thermal/zones/cpu", {"setpoint_c": 40, "mode": "auto"},
     "setpoint_c cannot be combined with mode or duty_pct"),
    ("sim0/thermal/zones/cpu", {"mode": "eco"},
     "mode: input should be 'auto' or 'manual' (got 'eco')"),
    ("sim0/gpio/led", {"level": 2}, "level must be 0 or 1, got 2"),
    ("sim0/gpio/led", {"level": "1"}, "level: input should be a valid integer (got '1')"),
    ("sim0/gpio/led", {"level": 1.0}, "level: input should be a valid integer (got 1.0)"),
    ("sim0/gpio/led", {}, "level: field required"),
    ("sim0/security", {"action": "open"},
     "action: input should be 'lock', 'unlock', 'arm', 'disarm' or 'clear_tamper' (got 'open')"),
    ("sim0/estop", {"action": "on"}, "action: input should be 'assert' or 'release' (got 'on')"),
    ("sim0/sim/faults", {"kind": "meteor"}, "kind: input should be"),
    ("sim0/sim/faults", {"kind": "sensor_stuck", "target": "cpu"},
     "kind 'sensor_stuck' needs value_c"),
    ("sim0/sim/faults", {"kind": "sensor_stuck", "value_c": 90},
     "kind 'sensor_stuck' needs a target"),
    ("sim0/sim/faults", {"kind": "sensor_stuck", "target": "cpu", "value_c": 500},
     "value_c: input should be less than or equal to 200 (got 500)"),
    ("sim0/sim/faults", {"kind": "pg_glitch", "target": "p3v3"},
     "kind 'pg_glitch' needs duration_ms"),
    ("sim0/sim/faults", {"kind": "pg_glitch", "target": "p3v3", "duration_ms": 0},
     "duration_ms: input should be greater than or equal to 1 (got 0)"),
    ("sim0/sim/faults", {"kind": "fan_stall", "target": "fan0", "value_c": 3},
     "value_c is not used with kind 'fan_stall'"),
    ("sim0/sim/faults", {"kind": "tamper", "target": "x"}, "kind 'tamper' takes no target"),
    ("sim0/sim/faults", {"kind": "tamper", "active": 1},
     "active: input should be a valid boolean (got 1)"),
    ("sim0/sim/faults", {"kind": "clear", "target": "fan0"},
     "kind 'clear' with a target needs fault (the kind to clear)"),
    ("sim0/sim/faults", {"kind": "fan_stall", "target": "fan0", "fault": "fan_stall"},
     "fault is only used with kind 'clear', not 'fan_stall'"),
]


@pytest.mark.parametrize(("path", "body", "message"), INVALID,
                         ids=[f"{p}:{b}" for p, b, _ in INVALID])
def test_invalid_body_422(client: TestClient, fake: FakeBridge, path: str, body: Any,
                          message: str) -> None:
    r = client.post(f"{D}/{path}", json=body)
    assert r.status_code == 422, r.text
    err = r.json()
    assert err["code"] == "invalid_input"
    assert err["message"].startswith(message), err["message"]
    assert err["details"]["errors"]
    assert fake.calls == []  # never reached the service


def test_invalid_body_details_name_the_field(client: TestClient) -> None:
    r = client.post(f"{D}/sim0/power/rails/p3v3", json={"action": "x", "extra": 1})
    assert r.status_code == 422
    errors = r.json()["details"]["errors"]
    assert [(e["field"], e["in"], e["type"]) for e in errors] == [
        ("action", "body", "literal_error"), ("extra", "body", "extra_forbidden")]
    assert r.json()["message"] == ("action: input should be 'on', 'off' or 'cycle' (got 'x'); "
                                   "extra: unknown field (not allowed here)")


@pytest.mark.parametrize(("content", "ctype", "message"), [
    (b"{nope", "application/json",
     "request body is not valid JSON (Expecting property name enclosed in double quotes)"),
    (b"[1, 2]", "application/json", "the request body must be a JSON object"),
    (b'"on"', "application/json", "the request body must be a JSON object"),
    (b"", None, "a JSON request body is required"),
    (b'{"action": "on"}', "text/plain",
     "the request body must be JSON (Content-Type: application/json), got text/plain"),
])
def test_malformed_body_422(client: TestClient, content: bytes, ctype: str | None,
                            message: str) -> None:
    headers = {"content-type": ctype} if ctype else {}
    r = client.post(f"{D}/sim0/power", content=content, headers=headers)
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_input"
    assert r.json()["message"] == message


def test_nan_is_rejected(client: TestClient) -> None:
    r = client.post(f"{D}/sim0/thermal/zones/cpu", content=b'{"setpoint_c": NaN}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["message"] == "setpoint_c: input should be a finite number (got nan)"


# -- the service's errors ---------------------------------------------------------------------


def test_unknown_device_404(client: TestClient) -> None:
    r = client.post(f"{D}/nope/power", json={"action": "on"})
    assert r.status_code == 404
    assert r.json() == {"code": "device_not_found", "message": "no device 'nope'",
                        "details": {"device": "nope"}}


@pytest.mark.parametrize(("path", "body", "message"), [
    ("sim0/power/rails/p9v", {"action": "on"},
     "no rail named 'p9v' on this board (known: main, p3v3, p1v8)"),
    ("sim0/thermal/zones/gpu", {"mode": "auto"},
     "no zone named 'gpu' on this board (known: cpu, chassis)"),
    ("sim0/gpio/relay", {"level": 1},
     "no gpio line named 'relay' on this board (known: led, button, pg_main)"),
    ("sim0/interlocks/flood/clear", None,
     "no interlock named 'flood' on this board (known: overtemp, lockout)"),
    ("sim0/sim/faults", {"kind": "fan_stall", "target": "fan9"},
     "no fan named 'fan9' on this board (known: fan0, fan1)"),
])
def test_unknown_target_404(client: TestClient, path: str, body: Any, message: str) -> None:
    r = client.post(f"{D}/{path}", json=body) if body is not None else client.post(f"{D}/{path}")
    assert r.status_code == 404
    assert r.json()["code"] == "target_not_found"
    assert r.json()["message"] == message


@pytest.mark.parametrize(("path", "body", "message"), [
    ("sim0/gpio/button", {"level": 1}, "gpio line 'button' is an input and cannot be written"),
    ("sim0/gpio/pg_main", {"level": 0},
     "gpio line 'pg_main' is owned by the board firmware and cannot be written"),
    ("sim0/thermal/zones/chassis", {"setpoint_c": 65},
     "setpoint_c 65 for zone 'chassis' must be below the lowest critical limit of its "
     "sensors, 60 °C"),
])
def test_service_invalid_input_422(client: TestClient, path: str, body: Any,
                                   message: str) -> None:
    r = client.post(f"{D}/{path}", json=body)
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_input"
    assert r.json()["message"] == message
    assert r.json()["details"]["field"] in ("target", "value")


def test_sim_faults_on_a_real_board_404_not_supported(client: TestClient) -> None:
    r = client.post(f"{D}/rack1/sim/faults", json={"kind": "fan_stall", "target": "fan0"})
    assert r.status_code == 404
    assert r.json() == {"code": "not_supported",
                        "message": "simulator faults exist only on simulated boards"}


def test_refused_by_interlock_409_with_reason(client: TestClient, fake: FakeBridge) -> None:
    assert client.post(f"{D}/sim0/estop", json={"action": "assert"}).status_code == 200
    r = client.post(f"{D}/sim0/power/rails/main", json={"action": "on"})
    assert r.status_code == 409
    body = r.json()
    assert body["code"] == "refused"
    assert body["message"] == "rail on main: refused by an interlock on the board"
    assert body["result"] == "rejected"
    assert body["reason"] == "rejected_by_interlock"
    assert body["command_id"] == 102
    assert body["details"]["verdict"] == {"command_id": 102, "result": "rejected",
                                          "reason": "rejected_by_interlock"}
    # the rail stayed off
    rails = client.get(f"{D}/sim0").json()["power"]["rails"]
    assert {r["name"]: r["state"] for r in rails}["main"] == "off"


def test_refused_interlock_clear_while_condition_present(client: TestClient,
                                                         fake: FakeBridge) -> None:
    fake.devices["sim0"].interlocks["overtemp"].update(state="tripped", latched=True,
                                                       active=True)
    r = client.post(f"{D}/sim0/interlocks/overtemp/clear")
    assert r.status_code == 409
    assert r.json()["reason"] == "rejected_by_interlock"
    fake.devices["sim0"].interlocks["overtemp"]["active"] = False
    r = client.post(f"{D}/sim0/interlocks/overtemp/clear")
    assert r.status_code == 200
    assert r.json()["result"] == "applied"


def test_refused_by_policy_without_verdict_details(client: TestClient, fake: FakeBridge) -> None:
    fake.script("sim0", Refused("rail off main: refused by the policy", reason="policy:keep-on"))
    r = client.post(f"{D}/sim0/power/rails/main", json={"action": "off"})
    assert r.status_code == 409
    assert r.json() == {"code": "refused", "message": "rail off main: refused by the policy",
                        "details": {"reason": "policy:keep-on"}, "command_id": None,
                        "result": "rejected", "reason": "policy:keep-on"}


def test_rejected_verdict_without_exception_is_200(client: TestClient, fake: FakeBridge) -> None:
    fake.script("sim0", CommandVerdict(555, "rejected", "busy"))
    r = client.post(f"{D}/sim0/power", json={"action": "on"})
    assert r.status_code == 200
    assert r.json() == {"command_id": 555, "result": "rejected", "reason": "busy"}


def test_offline_503(client: TestClient, fake: FakeBridge) -> None:
    fake.devices["rack1"].online = False
    r = client.post(f"{D}/rack1/reboot")
    assert r.status_code == 503
    assert r.json() == {"code": "device_offline", "message": "device 'rack1' is not connected",
                        "details": {"device": "rack1"}}


def test_timeout_504(client: TestClient, fake: FakeBridge) -> None:
    fake.script("rack1", DeviceTimeout("no verdict from the board within 2 s; the command "
                                       "may still apply", command_id=77))
    r = client.post(f"{D}/rack1/power", json={"action": "off"})
    assert r.status_code == 504
    assert r.json() == {"code": "device_timeout",
                        "message": "no verdict from the board within 2 s; the command may "
                        "still apply", "details": {"command_id": 77}}


def test_device_error_502(client: TestClient, fake: FakeBridge) -> None:
    fake.script("sim0", DeviceError("the board answered malformed", reason="malformed"))
    r = client.post(f"{D}/sim0/reboot")
    assert r.status_code == 502
    assert r.json()["code"] == "device_error"


def test_service_invalid_input_from_board_422(client: TestClient, fake: FakeBridge) -> None:
    fake.script("sim0", InvalidInput("gpio led = 1: the board rejected the argument as invalid",
                                     reason="invalid_argument", command_id=9))
    r = client.post(f"{D}/sim0/gpio/led", json={"level": 1})
    assert r.status_code == 422
    assert r.json()["details"] == {"reason": "invalid_argument", "command_id": 9}


# -- Idempotency-Key --------------------------------------------------------------------------


def test_idempotency_key_passes_through_and_replays(client: TestClient, fake: FakeBridge) -> None:
    h = {"Idempotency-Key": "reboot-2026-01-01"}
    first = client.post(f"{D}/sim0/reboot", headers=h)
    assert first.status_code == 200
    assert fake.calls[0].idempotency_key == "reboot-2026-01-01"
    assert "Idempotent-Replayed" not in first.headers
    second = client.post(f"{D}/sim0/reboot", headers=h)
    assert second.status_code == 200
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert fake.devices["sim0"].boot_id == 8  # rebooted once, not twice
    # no key: a new command
    third = client.post(f"{D}/sim0/reboot")
    assert third.json()["command_id"] != first.json()["command_id"]
    assert fake.devices["sim0"].boot_id == 9


def test_idempotency_replays_a_refusal(client: TestClient) -> None:
    client.post(f"{D}/sim0/estop", json={"action": "assert"})
    h = {"Idempotency-Key": "k1"}
    first = client.post(f"{D}/sim0/power", json={"action": "on"}, headers=h)
    client.post(f"{D}/sim0/estop", json={"action": "release"})
    again = client.post(f"{D}/sim0/power", json={"action": "on"}, headers=h)
    assert first.status_code == again.status_code == 409
    assert again.json() == first.json()


def test_idempotency_conflict_422(client: TestClient) -> None:
    h = {"Idempotency-Key": "same"}
    assert client.post(f"{D}/sim0/power", json={"action": "off"}, headers=h).status_code == 200
    r = client.post(f"{D}/sim0/power", json={"action": "on"}, headers=h)
    assert r.status_code == 422
    assert r.json() == {"code": "idempotency_conflict",
                        "message": "Idempotency-Key 'same' was used for a different request",
                        "details": {"key": "same"}}


def test_idempotency_key_is_per_device(client: TestClient, fake: FakeBridge) -> None:
    h = {"Idempotency-Key": "k"}
    assert client.post(f"{D}/sim0/reboot", headers=h).status_code == 200
    r = client.post(f"{D}/rack1/reboot", headers=h)
    assert r.status_code == 200
    assert "Idempotent-Replayed" not in r.headers
    assert fake.devices["rack1"].boot_id == 8


def test_idempotency_key_max_length_ok(client: TestClient, fake: FakeBridge) -> None:
    key = "k" * 128
    assert client.post(f"{D}/sim0/reboot", headers={"Idempotency-Key": key}).status_code == 200
    assert fake.calls[0].idempotency_key == key


@pytest.mark.parametrize(("key", "message"), [
    ("", "header Idempotency-Key must be 1 to 128 characters long, got 0"),
    ("k" * 129, "header Idempotency-Key must be 1 to 128 characters long, got 129"),
    ("tab\there", "header Idempotency-Key must contain printable ASCII characters only "
                  "(0x20..0x7e)"),
    ("caf\u00e9", "header Idempotency-Key must contain printable ASCII characters only "
                  "(0x20..0x7e)"),
])
def test_malformed_idempotency_key_422(client: TestClient, fake: FakeBridge, key: str,
                                       message: str) -> None:
    r = client.post(f"{D}/sim0/power", json={"action": "off"},
                    headers={"Idempotency-Key": key.encode("latin-1")})  # type: ignore[dict-item]
    assert r.status_code == 422
    assert r.json() == {"code": "invalid_input", "message": message,
                        "details": {"field": "Idempotency-Key"}}
    assert fake.calls == []
