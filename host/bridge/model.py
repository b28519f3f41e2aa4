"""The contract between the bridge's device side and its operator side.

The REST/WebSocket API and the CLI talk to the bridge only through
``BridgeService``; device sessions implement it. Errors are typed so that
each maps onto one HTTP status (see ``http_status``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

# -- errors --------------------------------------------------------------------


class BridgeError(Exception):
    """Base of the errors a request can end in; ``code`` is machine-readable."""

    code = "error"
    status = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidInput(BridgeError):
    code = "invalid_input"
    status = 422


class DeviceNotFound(BridgeError):
    code = "device_not_found"
    status = 404


class TargetNotFound(BridgeError):
    code = "target_not_found"
    status = 404


class Refused(BridgeError):
    """The board (interlock) or the policy refused; ``reason`` says which."""

    code = "refused"
    status = 409


class IdempotencyConflict(BridgeError):
    code = "idempotency_conflict"
    status = 422


class DeviceOffline(BridgeError):
    code = "device_offline"
    status = 503


class DeviceTimeout(BridgeError):
    """The command went out but no verdict came back in time; it may still apply."""

    code = "device_timeout"
    status = 504


class NotSupported(BridgeError):
    """E.g. simulator faults on a real board."""

    code = "not_supported"
    status = 404


class DeviceError(BridgeError):
    """The board answered in a way the bridge cannot use (e.g. RESULT ``malformed``)."""

    code = "device_error"
    status = 502


def http_status(err: BridgeError) -> int:
    return err.status


# -- results ---------------------------------------------------------------------

Verdict = Literal["applied", "rejected"]

#: What a rebooted board is brought back to (added): see metal.host.bridge.session.
PowerRestore = Literal["always_off", "last_state", "always_on"]
POWER_RESTORE_POLICIES: tuple[str, ...] = ("always_off", "last_state", "always_on")


@dataclass(frozen=True)
class CommandVerdict:
    command_id: int
    result: Verdict
    reason: str | None = None  # board result name when rejected, e.g. "rejected_by_interlock"
    replayed: bool = False  # True when an Idempotency-Key returned an earlier verdict

    def to_dict(self) -> dict[str, Any]:
        return {"command_id": self.command_id, "result": self.result, "reason": self.reason}


@dataclass(frozen=True)
class DeviceSummary:
    id: str
    board: str
    online: bool
    firmware_version: str | None
    simulated: bool = False
    boot_id: int | None = None
    #: added: "connected" | "connecting" | "disconnected" | "refused" | "stopped"
    link_state: str | None = None
    #: added: the board's unique id from its HELLO
    uid: str | None = None
    #: added: the version refusal text when link_state is "refused"
    refusal: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "board": self.board,
            "online": self.online,
            "firmware_version": self.firmware_version,
            "simulated": self.simulated,
        }


@dataclass(frozen=True)
class CommandRequest:
    """A validated operator request, before it is turned into a board CMD.

    ``kind`` and ``action`` name the resource and the verb:
      ("rail", "on"|"off"|"cycle"), ("power", "on"|"off"),
      ("zone", "auto"|"manual"|"setpoint"), ("gpio", "write"),
      ("security", "lock"|"unlock"|"arm"|"disarm"|"clear_tamper"),
      ("interlock", "clear"), ("estop", "assert"|"release"),
      ("board", "reboot"|"set_heartbeat_timeout"), ("sim", <fault kind>)
    ``target`` is the resource's name (rail, zone, line, interlock, sensor,
    fan) or None; ``value`` the argument in API units (duty_pct, temp_c,
    level, ms, value_c ...).
    """

    kind: str
    action: str
    target: str | None = None
    value: float | int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class PreSerialized(dict[str, Any]):
    """A stream message that carries its own JSON text.

    Telemetry goes to every subscriber of a device: the bridge serializes it
    once per frame and the WebSocket sender uses ``text`` instead of encoding
    the dict again per client. It still reads like the plain dict it equals.
    """

    __slots__ = ("text",)

    def __init__(self, text: str, /, **fields: Any) -> None:
        super().__init__(**fields)
        self.text = text


class BridgeService(Protocol):
    """What the API and the CLI need from the bridge."""

    def list_devices(self) -> list[DeviceSummary]: ...

    def snapshot_json(self, device_id: str) -> bytes:
        """The device's full snapshot, pre-serialized JSON (refreshed by telemetry).
        Raises DeviceNotFound."""
        ...

    async def execute(
        self,
        device_id: str,
        request: CommandRequest,
        *,
        principal: str,
        idempotency_key: str | None,
    ) -> CommandVerdict:
        """Validate against the device layout, authorize/audit (later), send,
        wait for the board's verdict. Raises one of the BridgeError types."""
        ...

    def subscribe(
        self,
        topics: frozenset[str],
        device_id: str | None,
        resume_from: int | None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Messages for a WebSocket client: dicts with a ``topic`` field."""
        ...

    async def query_events(
        self,
        *,
        device_id: str | None,
        type: str | None,
        since_id: int | None,
        since_time: float | None,
        limit: int,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """A page of stored events (oldest first) and the cursor of the next page."""
        ...

    def readiness(self) -> dict[str, Any]:
        """{"ready": bool, "store": bool, "devices": {id: link state}}."""
        ...

    def metrics_text(self) -> bytes:
        """The device-side metrics in Prometheus text format (temperatures,
        fans, rails, interlocks, loop and link counters, bus queue depths)."""
        ...
