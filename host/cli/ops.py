"""Operator commands over the bridge's REST API: ``metal status``, ``metal power``,
``metal events``.

Each talks to a running bridge (``metal up`` or ``metal bridge``) at ``--url``, else
``METAL_URL``, else ``http://127.0.0.1:8080``, and prints readable tables, or with
``--json`` one JSON document (``events --follow --json``: one JSON line per event).

Exit codes: 0 success; 1 the board or the policy rejected a command (``power``);
2 an error: the API's ``{code, message}`` is printed as ``error: <message> (<code>)`` on
stderr (also when the bridge cannot be reached: code ``unreachable``).
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import click

from metal.host.cli.client import ApiError, Client, StreamClosed

__all__ = ["events", "power", "render_device", "render_devices", "render_event", "status"]

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_ERROR = 2

F = TypeVar("F", bound=Callable[..., Any])


# -- shared options and error display ----------------------------------------------------------


def _common(f: F) -> F:
    f = click.option("--json", "as_json", is_flag=True,
                     help="Print JSON for scripts instead of tables.")(f)
    f = click.option("--url", metavar="URL", default=None,
                     help="The bridge's base URL (default: $METAL_URL, else "
                          "http://127.0.0.1:8080).")(f)
    return f


def print_error(err: ApiError) -> None:
    click.echo(f"error: {err.message} ({err.code})", err=True)


def _api_errors(f: F) -> F:
    """ApiError -> ``error: <message> (<code>)`` on stderr, exit 2."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except ApiError as e:
            print_error(e)
            sys.exit(EXIT_ERROR)

    return wrapper  # type: ignore[return-value]


def _dump(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, ensure_ascii=False))


# -- formatting -------------------------------------------------------------------------------


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ",".join(_cell(x) for x in v) or "-"
    return str(v)


def _num(v: Any, unit: str, digits: int) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "-"
    return f"{v:.{digits}f} {unit}".rstrip()


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces; None -> "-"."""
    body = [[_cell(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in body:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    for r in body:
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    return "\n".join(lines)


def render_devices(devices: Sequence[dict[str, Any]]) -> str:
    if not devices:
        return "no devices"
    rows = []
    for d in devices:
        online = d.get("online")
        state = d.get("link_state")
        rows.append([
            d.get("id"),
            d.get("board"),
            "online" if online else (state or "offline") if online is not None else state,
            d.get("firmware_version"),
            d.get("simulated"),
        ])
    return table(["DEVICE", "BOARD", "STATE", "FIRMWARE", "SIMULATED"], rows)


def _section(title: str, headers: Sequence[str], rows: list[list[Any]]) -> str:
    if not rows:
        return f"{title}: none"
    return f"{title}\n" + "\n".join("  " + line for line in table(headers, rows).splitlines())


def render_device(snap: dict[str, Any]) -> str:
    """One device's snapshot: identity, rails, sensors, fans, interlocks, security."""
    power = snap.get("power") or {}
    thermal = snap.get("thermal") or {}
    ident: list[tuple[str, Any]] = [
        ("device", snap.get("id")),
        ("board", snap.get("board")),
        ("state", "online" if snap.get("online") else "offline"),
        ("firmware", snap.get("firmware_version")),
        ("boot id", snap.get("boot_id")),
        ("power", power.get("state")),
    ]
    if snap.get("simulated"):
        ident.append(("simulated", True))
    updated = snap.get("updated_at")
    if isinstance(updated, (int, float)):
        ident.append(("updated", _when(updated)))
    out = ["\n".join(f"{k + ':':<11}{_cell(v)}" for k, v in ident)]
    out.append(_section("RAILS", ["NAME", "STATE", "VOLTAGE", "CURRENT", "NOMINAL", "FAULT"], [
        [r.get("name"), r.get("state"), _num(r.get("voltage_v"), "V", 2),
         _num(r.get("current_a"), "A", 2), _num(r.get("nominal_v"), "V", 2), r.get("fault")]
        for r in power.get("rails") or ()]))
    out.append(_section("SENSORS", ["NAME", "ZONE", "TEMP", "STATUS", "WARN", "CRIT"], [
        [s.get("name"), s.get("zone"), _num(s.get("temp_c"), "°C", 1), s.get("status"),
         _num(s.get("warn_c"), "°C", 1), _num(s.get("crit_c"), "°C", 1)]
        for s in thermal.get("sensors") or ()]))
    out.append(_section("FANS", ["NAME", "ZONE", "DUTY", "SPEED", "STATUS"], [
        [f.get("name"), f.get("zone"), _num(f.get("duty_pct"), "%", 0),
         _num(f.get("speed_rpm"), "rpm", 0), f.get("status")]
        for f in thermal.get("fans") or ()]))
    zones = thermal.get("zones") or ()
    if zones:
        out.append(_section("ZONES", ["NAME", "MODE", "DUTY", "SETPOINT"], [
            [z.get("name"), z.get("mode"), _num(z.get("duty_pct"), "%", 0),
             _num(z.get("setpoint_c"), "°C", 1)] for z in zones]))
    out.append(_section("INTERLOCKS", ["NAME", "STATE", "LATCHED", "ACTION"], [
        [i.get("name"), i.get("state"), i.get("latched"), i.get("action")]
        for i in snap.get("interlocks") or ()]))
    sec = snap.get("security")
    if isinstance(sec, dict):
        flags = [k for k in ("armed", "locked", "door_open", "tamper", "estop", "lockout")
                 if sec.get(k)]
        out.append("SECURITY: " + (", ".join(flags) if flags else "nothing set"))
    return "\n\n".join(out)


def _when(t: float) -> str:
    return _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


_BOARD_FIELDS = ("source", "value", "aux", "board_ms", "kind", "name", "source_name",
                 "value_name")


def _kv(data: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else _cell(v)}"
            for k, v in data.items()]


def _details(data: Any) -> str:
    """Board events (they carry ``kind`` and ``board_ms``) read as ``SOURCE: VALUE``
    with the names the bridge decoded; other events as ``key=value`` pairs."""
    if not isinstance(data, dict):
        return _cell(data)
    if "kind" not in data or "board_ms" not in data:
        return " ".join(_kv(data))
    src = data.get("source_name")
    val = data.get("value_name")
    what = str(val) if val is not None else f"value={_cell(data.get('value'))}"
    parts = [f"{src}: {what}" if src else what]
    if data.get("aux"):
        parts.append(f"aux={_cell(data['aux'])}")
    parts += _kv({k: v for k, v in data.items() if k not in _BOARD_FIELDS})
    return " ".join(parts)


def render_event(ev: dict[str, Any]) -> str:
    """One line: id, local time, type, device, data as key=value."""
    t = ev.get("time")
    when = _when(t) if isinstance(t, (int, float)) else _cell(t)
    return "  ".join([_cell(ev.get("id")).rjust(6), when, str(ev.get("type") or "-"),
                      _cell(ev.get("device")), _details(ev.get("data"))]).rstrip()


# -- status -----------------------------------------------------------------------------------


@click.command("status")
@click.argument("device", required=False)
@_common
@_api_errors
def status(device: str | None, url: str | None, as_json: bool) -> None:
    """Show the devices, or one DEVICE's rails, sensors, fans and interlocks."""
    client = Client(url)
    if device is None:
        devices = client.list_devices()
        if as_json:
            _dump(devices)
        else:
            click.echo(render_devices(devices))
        return
    snap = client.device(device)
    if as_json:
        _dump(snap)
    else:
        click.echo(render_device(snap))


# -- power ------------------------------------------------------------------------------------


@click.command("power")
@click.argument("action", type=click.Choice(["on", "off", "cycle"]))
@click.argument("device")
@click.argument("rail")
@click.option("--idempotency-key", metavar="KEY", default=None,
              help="Send as Idempotency-Key: a retry with the same key never runs twice.")
@_common
@_api_errors
def power(action: str, device: str, rail: str, idempotency_key: str | None,
          url: str | None, as_json: bool) -> None:
    """Switch a power RAIL of DEVICE on, off, or cycle it, and print the board's verdict.

    Exit status: 0 applied, 1 rejected (by an interlock, the board or the policy),
    2 error.
    """
    client = Client(url)
    try:
        verdict = client.rail_action(device, rail, action, idempotency_key=idempotency_key)
    except ApiError as e:
        if e.code != "refused":
            raise
        if as_json:
            _dump(e.body)
        print_error(e)
        sys.exit(EXIT_REJECTED)
    if not isinstance(verdict, dict) or verdict.get("result") not in ("applied", "rejected"):
        raise ApiError("bad_response", f"unexpected answer to power {action}: {verdict!r}")
    applied = verdict["result"] == "applied"
    if as_json:
        _dump(verdict)
    else:
        cid = verdict.get("command_id")
        line = f"{verdict['result']}: power {action} {rail} on {device}"
        if cid is not None:
            line += f" (command {cid})"
        if not applied:
            line += f": {verdict.get('reason') or 'no reason given'}"
        click.echo(line)
    sys.exit(EXIT_OK if applied else EXIT_REJECTED)


# -- events -----------------------------------------------------------------------------------


def _event_of(msg: Any) -> dict[str, Any] | None:
    """A stream message -> the event dict, or None for messages that are not events."""
    if not isinstance(msg, dict):
        return None
    topic = msg.get("topic")
    if topic not in (None, "events", "event"):
        return None
    inner = msg.get("event")
    if isinstance(inner, dict):
        return inner
    if "type" not in msg:
        return None
    return {k: v for k, v in msg.items() if k != "topic"}


PAGE_MAX = 1000  # the API's largest page


@click.command("events")
@click.option("--device", "-d", metavar="DEVICE", default=None, help="Only this device's events.")
@click.option("--type", "-t", "type_", metavar="TYPE", default=None,
              help="Only events of this type (interlock.trip) or namespace (hardware.*).")
@click.option("--since", metavar="TIME", default=None,
              help="Only events at or after TIME: ISO-8601 (no offset = UTC) or epoch seconds.")
@click.option("--after", "after_id", type=click.IntRange(min=0), metavar="ID", default=None,
              help="Only events after the event with this id.")
@click.option("--limit", "-n", type=click.IntRange(1, 100000), default=100, show_default=True,
              help="At most this many stored events (without --follow).")
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing events as they happen (WebSocket stream; reconnects and "
                   "resumes after the last event seen). Without --since/--after it starts "
                   "with new events; with them, stored events from there come first. "
                   "Ctrl-C to stop.")
@_common
@_api_errors
def events(device: str | None, type_: str | None, since: str | None, after_id: int | None,
           limit: int, follow: bool, url: str | None, as_json: bool) -> None:
    """List stored events, oldest first, or follow them live.

    Without --follow: at most --limit events; if more match, a hint on stderr tells how
    to get the next ones (--after ID). With --follow --json: one JSON line per event.
    """
    client = Client(url)
    if not follow:
        items, more = _stored(client, device, type_, since, after_id, limit)
        if as_json:
            _dump(items)
        elif items:
            click.echo("\n".join(render_event(e) for e in items))
        else:
            click.echo("no events")
        if more is not None:
            click.echo(f"more events: add --after {more}", err=True)
        return
    last_id: int | None = after_id
    if since is not None:
        # the stored events from TIME on, all of them, then the stream after the last one
        cursor = after_id
        while True:
            page, nxt = client.events(device=device, type=type_, since=since, cursor=cursor,
                                      limit=PAGE_MAX)
            for e in page:
                if isinstance(e.get("id"), int):
                    last_id = e["id"] if last_id is None else max(last_id, e["id"])
                _emit(e, as_json)
            if nxt is None or not page:
                break
            cursor = nxt
        if last_id is None:
            last_id = cursor
    try:
        follow_events(client, device=device, type_=type_, last_id=last_id, as_json=as_json)
    except KeyboardInterrupt:
        pass


def _stored(client: Client, device: str | None, type_: str | None, since: str | None,
            after_id: int | None, limit: int) -> tuple[list[dict[str, Any]], int | None]:
    """Up to ``limit`` stored events (paging through the API) and the cursor for more."""
    out: list[dict[str, Any]] = []
    cursor = after_id
    while True:
        want = min(PAGE_MAX, limit - len(out))
        page, nxt = client.events(device=device, type=type_, since=since, cursor=cursor,
                                  limit=want)
        out.extend(page)
        if nxt is None or not page:
            return out, None
        if len(out) >= limit:
            return out, nxt
        cursor = nxt


def type_matches(pattern: str | None, event_type: Any) -> bool:
    """The API's type filter: exact, ``ns.*`` (namespace), or ``*``."""
    if pattern is None or pattern == "*":
        return True
    if not isinstance(event_type, str):
        return False
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1])
    return event_type == pattern


def _wanted(ev: dict[str, Any], device: str | None, type_: str | None) -> bool:
    if device is not None and ev.get("device") != device:
        return False
    return type_matches(type_, ev.get("type"))


def _emit(ev: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(ev, separators=(",", ":"), ensure_ascii=False))
    else:
        click.echo(render_event(ev))
    sys.stdout.flush()


CLOSE_POLICY = 1008  # the stream's "bad query" close code (routes_stream.py)


def _policy_error(reason: str) -> ApiError:
    """A 1008 close reason (``"device_not_found: no device 'x'"`` or ``"invalid topic
    ..."``) -> ApiError."""
    code, sep, message = reason.partition(": ")
    if sep and code.replace("_", "").isalnum() and code.islower():
        return ApiError(code, message)
    return ApiError("invalid_input", reason or "the bridge refused the stream")


def follow_events(client: Client, *, device: str | None, type_: str | None,
                  last_id: int | None, as_json: bool, max_reconnects: int | None = None,
                  sleep: Callable[[float], None] = time.sleep) -> int | None:
    """Print events from the WebSocket stream, resuming after ``last_id``; reconnect with
    capped back-off (0.2 s doubling to 5 s) when the stream ends. Returns the last id seen
    when ``max_reconnects`` is exhausted (tests); otherwise runs until interrupted. An
    ApiError from the handshake (e.g. device not found) ends it."""
    backoff = 0.2
    reconnects = 0
    while True:
        try:
            ws = client.stream("events", device=device, resume_from=last_id)
        except StreamClosed as e:
            reason = e.reason
        else:
            try:
                with ws:
                    for msg in ws:
                        backoff = 0.2
                        ev = _event_of(msg)
                        if ev is None:
                            continue
                        eid = ev.get("id")
                        if isinstance(eid, int):
                            if last_id is not None and eid <= last_id:
                                continue  # already printed (a resume overlap)
                            last_id = eid
                        if _wanted(ev, device, type_):
                            _emit(ev, as_json)
            except StreamClosed as e:
                if e.code == CLOSE_POLICY:  # the bridge refused the query: retrying won't help
                    raise _policy_error(e.close_reason) from None
                reason = e.reason
        if max_reconnects is not None and reconnects >= max_reconnects:
            return last_id
        reconnects += 1
        after = f" (resuming after event {last_id})" if last_id is not None else ""
        click.echo(f"stream: {reason}; reconnecting in {backoff:g} s{after}", err=True)
        sleep(backoff)
        backoff = min(backoff * 2, 5.0)


if __name__ == "__main__":  # python -m metal.host.cli.ops (before registration in main.py)
    status()
