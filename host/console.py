"""`metal console`: watch a board's link live, and talk to its REPL.

Three layers, the first two pure (no terminal, no port, no clock of their own) so
tests drive them with recorded bytes:

* :class:`StreamDemux` splits the byte stream from the board into *frames*
  (protocol.md §1), *text* (anything that is not a frame: a MicroPython REPL, a
  traceback, a boot banner) and *bad frames* (damaged on the line).
* :class:`ConsoleView` turns decoded messages into lines (HELLO identity, DESCRIBE
  summary, EVENT/RESULT/LOG) and keeps the latest telemetry, which
  :func:`render_table` draws as a compact table; :func:`frame_json` gives the one
  JSON object per frame that ``--raw`` prints.
* :class:`Console` + :func:`run_console`: the terminal loop. Bytes typed are sent
  to the device (REPL passthrough); **Ctrl-]** leaves, like miniterm.

By default the console is a passive observer: it never speaks the protocol, so it
shows what the board sends on its own (HELLO every second while no host is
connected, plus whatever a REPL prints). With ``connect=True`` it becomes the host
end of the link itself (:class:`HostSession`: a ``ROLE_HOST`` ``metal.core.link.Link``
plus a HEARTBEAT every 500 ms), so DESCRIBE and TELEMETRY flow without a bridge.

Stream demultiplexing
---------------------
::

    bytes ──> pending ──0x00──> chunk ── decode_frame ok ───────────> frame
                 │                 │
                 │                 └─ fails: a frame at its tail? ──> text/bad + frame
                 │                           (text printed before a frame without
                 │                            a 0x00 between them)
                 │                    else: printable ──> text, otherwise ──> bad frame
                 └── idle >= idle_s, printable ──> text (a REPL prompt has no 0x00)
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import IO, Any, Final, NamedTuple

from metal.core import proto
from metal.core.compat import ticks_diff, ticks_ms
from metal.core.link import EV_MESSAGE, ROLE_HOST, ST_CONNECTED, Link
from metal.host.codec import (
    ERROR_NAMES,
    Frame,
    ProtocolError,
    decode_frame,
    decode_payload,
    encode_payload,
)
from metal.host.telemetry_view import (
    MESSAGE_TYPES,
    Layout,
    TelemetryError,
    decode_describe,
    decode_event,
    decode_hello,
    decode_log,
    decode_result,
    decode_telemetry,
)

__all__ = [
    "EXIT_KEY",
    "BadFrame",
    "Console",
    "ConsoleView",
    "FrameItem",
    "HostSession",
    "Message",
    "StreamDemux",
    "TextItem",
    "frame_json",
    "render_table",
    "run_console",
]

EXIT_KEY: Final = 0x1D  # Ctrl-]
HEARTBEAT_MS: Final = 500
_MAX_FRAME: Final = 255  # encoded frame without its delimiter


# -- host end of the link ---------------------------------------------------------


class Message(NamedTuple):
    """One message the link delivered: type, decoded payload (None if empty or
    undecodable), header seq."""

    ftype: int
    payload: Any
    seq: int


class HostSession:
    """The host end of a link for tools and tests: ``Link(ROLE_HOST)`` + heartbeats.

    Sans-I/O like the Link: give it received bytes with :meth:`feed`, write what
    :meth:`output` returns to the port. ``clock`` returns ticks in ms (mod 2**30).
    """

    def __init__(self, clock: Callable[[], int] = ticks_ms, heartbeat_ms: int = HEARTBEAT_MS) -> None:
        self.link = Link(ROLE_HOST)
        self.clock = clock
        self.heartbeat_ms = heartbeat_ms
        self.rtt_ms: int | None = None  # from the latest heartbeat echo
        self.board_ms: int | None = None
        self.sessions = 0  # sessions established (the board's echo seen)
        self._out = bytearray(256)
        self._next_hb: int | None = None
        self._next_cmd = 1

    @property
    def connected(self) -> bool:
        return self.link.state == ST_CONNECTED

    def feed(self, data: bytes | bytearray, now: int | None = None) -> list[Message]:
        """Consume received bytes; return the messages the link delivered, in order."""
        now = self.clock() if now is None else now
        link = self.link
        out: list[Message] = []
        i, end = 0, len(data)
        while i < end:
            i = link.feed(data, i, end, now)
            if link.session_started:
                self.sessions += 1
                self._next_hb = now  # first heartbeat at once: the board's timer starts
            if link.ev == EV_MESSAGE:
                raw = bytes(link.rx_buf[link.rx_off : link.rx_off + link.rx_len])
                try:
                    payload = decode_payload(raw) if raw else None
                except ProtocolError:
                    payload = None
                t = link.rx_type
                if t == proto.T_HEARTBEAT and isinstance(payload, dict):
                    self._on_heartbeat(payload, now)
                out.append(Message(t, payload, link.rx_seq))
        return out

    def _on_heartbeat(self, payload: Mapping[int, Any], now: int) -> None:
        echoed = payload.get(proto.HB_HOST_MS)
        if type(echoed) is int:
            self.rtt_ms = ticks_diff(now, echoed)
        bm = payload.get(proto.HB_BOARD_MS)
        if type(bm) is int:
            self.board_ms = bm

    def send(self, ftype: int, payload: Any) -> bool:
        """Queue a message (reliable or latest-wins per its type); False if refused."""
        b = encode_payload(payload) if payload is not None else b""
        return bool(self.link.send(ftype, b, 0, len(b)))

    def command(self, op: int, target: int = 0, arg: int | None = None,
                arg2: int | None = None) -> int:
        """Queue a CMD and return its id (its RESULT carries the same id)."""
        cid = self._next_cmd
        self._next_cmd = cid + 1 if cid < 0x3FFFFFFF else 1
        p: dict[int, int] = {proto.CMD_ID: cid, proto.CMD_OP: op, proto.CMD_TARGET: target}
        if arg is not None:
            p[proto.CMD_ARG] = arg
        if arg2 is not None:
            p[proto.CMD_ARG2] = arg2
        if not self.send(proto.T_CMD, p):
            raise RuntimeError("reliable queue full")
        return cid

    def output(self, now: int | None = None) -> bytes:
        """Every frame due now (a heartbeat too, while connected), concatenated."""
        now = self.clock() if now is None else now
        if self.connected and (self._next_hb is None or ticks_diff(now, self._next_hb) >= 0):
            self.send(proto.T_HEARTBEAT, {proto.HB_HOST_MS: now})
            self._next_hb = (now + self.heartbeat_ms) & 0x3FFFFFFF
        chunks = []
        for _ in range(64):  # bounded: the link has at most a window + a few slots due
            n = self.link.poll(now, self._out, 0)
            if n <= 0:
                break
            chunks.append(bytes(self._out[:n]))
        return b"".join(chunks)


# -- demultiplexing frames from text --------------------------------------------------


@dataclass(frozen=True)
class FrameItem:
    frame: Frame
    wire: bytes  # encoded, without the delimiter


@dataclass(frozen=True)
class TextItem:
    data: bytes


@dataclass(frozen=True)
class BadFrame:
    error: ProtocolError
    wire: bytes


Item = FrameItem | TextItem | BadFrame

_TEXT_CONTROLS: Final = frozenset("\t\n\r\b\x07\x1b\x04\x03\x01\x02\x05")


def is_text(data: bytes) -> bool:
    """UTF-8 made of printable characters and the controls a REPL/terminal uses."""
    try:
        s = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in _TEXT_CONTROLS for c in s)


def _frame_at_tail(chunk: bytes) -> int:
    """Index where a valid frame starts inside ``chunk`` (after some text), or -1.

    A frame's second encoded byte is its version/type byte 0x11..0x1B (a COBS code
    byte of 1 would mean a zero header byte, which no frame has), so only those
    positions are tried.
    """
    n = len(chunk)
    for i in range(max(1, n - _MAX_FRAME), n - 6):
        if 0x11 <= chunk[i + 1] <= 0x1B:
            try:
                decode_frame(chunk[i:])
            except ProtocolError:
                continue
            return i
    return -1


class StreamDemux:
    """Split received bytes into :class:`FrameItem`, :class:`TextItem` and
    :class:`BadFrame` (see the module docstring). ``idle_s``: how long bytes
    without a delimiter wait before they are shown as text."""

    def __init__(self, idle_s: float = 0.05) -> None:
        self.idle_s = idle_s
        self._pending = bytearray()
        self._since = 0.0

    def feed(self, data: bytes, now: float) -> list[Item]:
        out: list[Item] = []
        if not data:
            return out
        self._since = now  # idle is measured from the latest byte
        parts = bytes(data).split(b"\x00")
        last = len(parts) - 1
        for i, part in enumerate(parts):
            self._pending += part
            if i == last:
                if len(self._pending) > 4096:  # a long text without delimiters, or noise
                    self._flush_pending(out)
            elif self._pending:
                self._chunk(bytes(self._pending), out)
                self._pending.clear()
        return out

    def flush(self, now: float) -> list[Item]:
        """Show pending bytes as text once no byte came for ``idle_s`` (if they are text)."""
        out: list[Item] = []
        if self._pending and now - self._since >= self.idle_s and is_text(bytes(self._pending)):
            out.append(TextItem(bytes(self._pending)))
            self._pending.clear()
        return out

    def _flush_pending(self, out: list[Item]) -> None:
        data = bytes(self._pending)
        self._pending.clear()
        out.append(TextItem(data) if is_text(data) else BadFrame(
            ProtocolError(proto.E_OVERSIZE, f"{len(data)} bytes without a delimiter"), data))

    def _chunk(self, chunk: bytes, out: list[Item]) -> None:
        try:
            out.append(FrameItem(decode_frame(chunk), chunk))
            return
        except ProtocolError as e:
            err = e
        i = _frame_at_tail(chunk)
        if i > 0:
            head, tail = chunk[:i], chunk[i:]
            out.append(TextItem(head) if is_text(head) else BadFrame(
                ProtocolError(proto.E_COBS, f"{len(head)} bytes of line noise"), head))
            out.append(FrameItem(decode_frame(tail), tail))
            return
        out.append(TextItem(chunk) if is_text(chunk) else BadFrame(err, chunk))


# -- rendering --------------------------------------------------------------------


def _fmt(v: Any, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def _block(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    """Columns padded to their widest cell; ``align`` has one '<' or '>' per column."""
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]
    return [
        " ".join(format(c, a + str(w)) for c, a, w in zip(r, align, widths)).rstrip()
        for r in [header, *rows]
    ]


def render_table(tel: Mapping[str, Any], *, hello: Mapping[str, Any] | None = None,
                 counters: Mapping[str, Any] | None = None, width: int | None = None) -> str:
    """The telemetry table (a decoded TELEMETRY dict from ``decode_telemetry``).

    Sensors, fans and rails side by side (stacked when ``width`` is too small),
    then gpio lines at 1, status flags and interlocks by name.
    """
    lines: list[str] = []
    head = []
    if hello:
        head.append(f"{hello.get('board', '?')} {hello.get('uid', '?')}")
    head.append(f"power {tel.get('power_state') or '?'}")
    head.append(f"loop {_fmt(tel.get('tick_us'), 'd')} µs (max {_fmt(tel.get('tick_max_us'), 'd')})")
    head.append(f"overruns {_fmt(tel.get('overruns'), 'd')}")
    if tel.get("queue_overflows"):
        head.append(f"queue overflows {tel['queue_overflows']}")
    for k, v in (counters or {}).items():
        head.append(f"{k} {v}")
    lines.append("  ".join(head))

    sensors = _block(
        ["SENSOR", "°C", "STATE"],
        [[s["name"], _fmt(s["temp_c"], ".2f"), s["state"]] for s in tel.get("sensors", [])],
        "<><",
    )
    fans = _block(
        ["FAN", "DUTY%", "RPM", "STATE"],
        [[f["name"], _fmt(f["duty_pct"], ".1f"), str(f["speed_rpm"]), f["state"]]
         for f in tel.get("fans", [])],
        "<>><",
    )
    rails = _block(
        ["RAIL", "STATE", "V", "A"],
        [[r["name"], r["state"], _fmt(r["voltage_v"], ".3f"), _fmt(r["current_a"], ".3f")]
         for r in tel.get("rails", [])],
        "<<>>",
    )
    blocks = [b for b in (sensors, fans, rails) if len(b) > 1]
    widths = [max(len(ln) for ln in b) for b in blocks]
    side = sum(widths) + 3 * (len(blocks) - 1)
    if blocks and (width is None or side <= width):
        rows = max(len(b) for b in blocks)
        for i in range(rows):
            cells = [(b[i] if i < len(b) else "").ljust(w) for b, w in zip(blocks, widths)]
            lines.append(" │ ".join(cells).rstrip())
    else:
        for b in blocks:
            lines.extend(b)

    gpio = tel.get("gpio") or {}
    levels = gpio.get("levels")
    high = " ".join(gpio.get("high") or []) or "-"
    lines.append(f"gpio    {_fmt(levels, '#06x')}  high: {high}")
    status = tel.get("status") or []
    lines.append(f"status  {' '.join(status) if status else '-'}")
    il = tel.get("interlocks") or {}
    lines.append(
        f"interlocks tripped: {' '.join(il.get('tripped') or []) or '-'}"
        f"  latched: {' '.join(il.get('latched') or []) or '-'}"
    )
    return "\n".join(lines)


def _jsonable(x: Any) -> Any:
    if isinstance(x, (bytes, bytearray)):
        return bytes(x).hex()
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _type_name(t: int) -> str:
    return MESSAGE_TYPES.get(t, f"TYPE{t}")


class ConsoleView:
    """What the console knows about the board, built from the messages it saw.

    :meth:`apply` takes one message and returns the lines to print for it (often
    none: telemetry only updates the table, a repeated HELLO is not shown again).
    """

    def __init__(self) -> None:
        self.hello: dict[str, Any] | None = None
        self.layout: Layout | None = None
        self.telemetry: dict[str, Any] | None = None
        self.telemetry_frames = 0
        self.telemetry_lost = 0
        self.bad_frames = 0
        self._parts: dict[int, Any] = {}
        self._tel_seq: int | None = None
        self._seen_events: set[int] = set()
        self._seen_results: set[int] = set()
        self.last_decoded: Any = None  # what apply() decoded last (for --raw)

    # -- one message --------------------------------------------------------------

    def apply(self, ftype: int, payload: Any, seq: int = 0) -> list[str]:
        self.last_decoded = None
        try:
            handler = _HANDLERS.get(ftype)
            return handler(self, payload, seq) if handler else []
        except (TypeError, KeyError, AttributeError, ValueError) as e:
            return [f"! {_type_name(ftype)} payload not understood ({e}): {payload!r}"]

    def bad(self, err: ProtocolError) -> list[str]:
        self.bad_frames += 1
        return [f"! bad frame ({ERROR_NAMES.get(err.code, err.code)}): {err.args[0]}"]

    def _hello(self, payload: Any, seq: int) -> list[str]:
        h = decode_hello(payload)
        self.last_decoded = h
        if "board" not in h:  # a host's HELLO (another tool on the line)
            return [f"HELLO from a host: proto {h.get('proto_min')} session {h.get('session')}"
                    + (f" refused: {h['reason']}" if "reason" in h else "")]
        prev = self.hello
        self.hello = h
        if prev is not None and (prev.get("boot_id"), prev.get("session")) != (
            h.get("boot_id"), h.get("session")):
            self._parts.clear()  # a new session re-sends DESCRIBE
            self._seen_results.clear()
            if prev.get("boot_id") != h.get("boot_id"):
                self._seen_events.clear()  # event numbers restart at 1 each boot
        if prev == h:
            return []
        return [
            f"HELLO {h.get('board')} uid {h.get('uid')} fw {h.get('fw_version')} "
            f"proto {h.get('proto_min')}..{h.get('proto_max')} boot {h.get('boot_id')} "
            f"session {h.get('session')} policy {h.get('policy_version')} "
            f"describe {h.get('describe_parts')} parts"
        ]

    def _describe(self, payload: Any, seq: int) -> list[str]:
        idx, n = payload[proto.DESC_PART], payload[proto.DESC_PARTS]
        self._parts[idx] = payload
        self.last_decoded = {"part": idx, "parts": n, "section": payload[proto.DESC_SECTION],
                             "items": len(payload[proto.DESC_ITEMS])}
        if len(self._parts) < n or any(i not in self._parts for i in range(n)):
            return []
        lay = decode_describe(self._parts[i] for i in range(n))
        self._parts.clear()
        if self.layout is not None and self.layout.to_dict() == lay.to_dict():
            self.layout = lay
            return []
        self.layout = lay
        self.last_decoded["layout"] = lay.to_dict()
        out = [f"DESCRIBE {lay.summary()}"]
        out.append("  sensors: " + " ".join(
            f"{s['name']}(crit {_fmt(s['crit_c'], 'g')}°C)" for s in lay.sensors))
        out.append("  fans:    " + " ".join(f"{f['name']}" for f in lay.fans))
        out.append("  rails:   " + " ".join(
            f"{r['name']}({_fmt(r['nominal_v'], 'g')}V)" for r in lay.rails))
        out.append("  zones:   " + " ".join(z["name"] for z in lay.zones))
        out.append("  gpio:    " + " ".join(
            f"{g['name']}({g['direction']})" for g in lay.gpio))
        return out

    def _telemetry(self, payload: Any, seq: int) -> list[str]:
        self.telemetry_frames += 1
        if self._tel_seq is not None:
            gap = (seq - self._tel_seq) & 0xFF
            if 1 < gap < 128:
                self.telemetry_lost += gap - 1
        self._tel_seq = seq
        if self.layout is None:
            self.last_decoded = None
            if self.telemetry_frames == 1:
                return ["TELEMETRY arriving, but no DESCRIBE seen yet, so its layout is unknown "
                        "(another host opened the session; --connect starts a new one)"]
            return []
        try:
            self.telemetry = decode_telemetry(self.layout, payload)
        except TelemetryError as e:
            return [f"! TELEMETRY: {e}"]
        self.last_decoded = self.telemetry
        return []

    def _event(self, payload: Any, seq: int) -> list[str]:
        ev = decode_event(self.layout, payload)
        self.last_decoded = ev
        s = ev["seq"]
        if type(s) is int:
            if s in self._seen_events:
                return []  # a retransmission seen by a passive observer
            self._seen_events.add(s)
        src = ev["source"]
        text = f"EVENT #{s} {ev['kind']}"
        if ev["source_name"]:
            text += f" {ev['source_name']}({src})"
        elif src:  # kinds without a source table send 0
            text += f" source {src}"
        val = ev["value_name"] or ev["value"]
        text += f" value {val}"
        if "reason" in ev:
            text += f" reason {ev['reason']}"
        elif ev["aux"]:
            text += f" aux {ev['aux']}"
        if ev["board_ms"] is not None:
            text += f" @{ev['board_ms']}ms"
        return [text]

    def _result(self, payload: Any, seq: int) -> list[str]:
        r = decode_result(payload)
        self.last_decoded = r
        if type(r["id"]) is int:
            if r["id"] in self._seen_results:
                return []
            self._seen_results.add(r["id"])
        text = f"RESULT id {r['id']} {r['result']}"
        if "value" in r:
            text += f" value {r['value']}"
        return [text]

    def _log(self, payload: Any, seq: int) -> list[str]:
        lg = decode_log(payload)
        self.last_decoded = lg
        return [f"LOG {lg['level']}: {lg['text']}"]

    # -- the table ------------------------------------------------------------------

    def table(self, width: int | None = None) -> str | None:
        """The telemetry table, or None before the first decodable telemetry."""
        if self.telemetry is None:
            return None
        counters = {"telemetry": self.telemetry_frames, "lost": self.telemetry_lost}
        if self.bad_frames:
            counters["bad frames"] = self.bad_frames
        return render_table(self.telemetry, hello=self.hello, counters=counters, width=width)


_HANDLERS: Final[dict[int, Callable[[ConsoleView, Any, int], list[str]]]] = {
    proto.T_HELLO: ConsoleView._hello,
    proto.T_DESCRIBE: ConsoleView._describe,
    proto.T_TELEMETRY: ConsoleView._telemetry,
    proto.T_EVENT: ConsoleView._event,
    proto.T_RESULT: ConsoleView._result,
    proto.T_LOG: ConsoleView._log,
}


def frame_json(ftype: int, payload: Any, seq: int, *, decoded: Any = None,
               t: float | None = None) -> str:
    """One ``--raw`` line: ``{"t", "type", "seq", "payload", "decoded"}``; bytes as hex."""
    obj: dict[str, Any] = {}
    if t is not None:
        obj["t"] = round(t, 3)
    obj["type"] = _type_name(ftype)
    obj["seq"] = seq
    obj["payload"] = _jsonable(payload)
    if decoded is not None:
        obj["decoded"] = _jsonable(decoded)
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


# -- the terminal loop -------------------------------------------------------------------


class Console:
    """Wires a port, the demux, the view and an output stream together.

    ``port`` needs ``write(bytes)``; ``out`` is a text stream. ``tty`` selects
    in-place table redraws (ANSI); otherwise the table is printed every
    ``table_every_s``. Drive it with :meth:`on_bytes`, :meth:`on_keys` and
    :meth:`tick` (the loop in :func:`run_console` does).
    """

    def __init__(self, port: Any, out: IO[str], *, connect: bool = False, raw: bool = False,
                 tty: bool = False, width: int | None = None,
                 clock: Callable[[], float] = time.monotonic, table_every_s: float = 1.0) -> None:
        self.port = port
        self.out = out
        self.raw = raw
        self.tty = tty
        self.width = width
        self.clock = clock
        self.t0 = clock()
        self.table_every_s = table_every_s if not tty else 0.2
        self.demux = StreamDemux()
        self.view = ConsoleView()
        self.session = HostSession() if connect else None
        self._table_lines = 0  # lines of the table on screen (tty)
        self._bol = True  # the cursor is at the start of a line
        self._table_dirty = False
        self._last_table = 0.0

    # -- input ----------------------------------------------------------------------

    def on_bytes(self, data: bytes) -> None:
        now = self.clock()
        self._items(self.demux.feed(data, now))

    def on_keys(self, data: bytes) -> bool:
        """Send typed bytes to the device; True when the exit key was typed."""
        i = data.find(bytes([EXIT_KEY]))
        if i >= 0:
            data = data[:i]
        if data:
            self.port.write(data)
        return i >= 0

    def tick(self) -> None:
        now = self.clock()
        self._items(self.demux.flush(now))
        if self.session is not None:
            out = self.session.output()
            if out:
                self.port.write(out)
        if (not self.raw and self._table_dirty and self._bol
                and now - self._last_table >= self.table_every_s):
            self._draw_table()
            self._last_table = now

    # -- output ---------------------------------------------------------------------

    def _items(self, items: Iterable[Item]) -> None:
        for it in items:
            if isinstance(it, TextItem):
                self._text(it.data)
            elif isinstance(it, BadFrame):
                if self.session is not None:
                    self.session.feed(it.wire + b"\x00")  # the link NAKs a damaged frame
                if self.raw:
                    self._line(json.dumps({"t": round(self.clock() - self.t0, 3), "type": "ERROR",
                                           "code": ERROR_NAMES.get(it.error.code, it.error.code),
                                           "message": it.error.args[0]}))
                else:
                    self._lines(self.view.bad(it.error))
            elif self.session is not None:
                for m in self.session.feed(it.wire + b"\x00"):
                    self._message(m.ftype, m.payload, m.seq)
            else:
                f = it.frame
                if f.ftype in (proto.T_ACK, proto.T_NAK) and not self.raw:
                    continue
                self._message(f.ftype, f.payload, f.seq)

    def _message(self, ftype: int, payload: Any, seq: int) -> None:
        lines = self.view.apply(ftype, payload, seq)
        if self.raw:
            self._line(frame_json(ftype, payload, seq, decoded=self.view.last_decoded,
                                  t=self.clock() - self.t0))
            return
        if ftype == proto.T_TELEMETRY:
            self._table_dirty = True
        self._lines(lines)

    def _erase_table(self) -> None:
        if self.tty and self._table_lines:
            self.out.write(f"\x1b[{self._table_lines}F\x1b[J")
            self._table_lines = 0
            self._table_dirty = True

    def _text(self, data: bytes) -> None:
        if self.raw:
            self._line(json.dumps({"t": round(self.clock() - self.t0, 3), "type": "TEXT",
                                   "text": data.decode("utf-8", "replace")}, ensure_ascii=False))
            return
        self._erase_table()
        s = data.decode("utf-8", "replace")
        self.out.write(s)
        self.out.flush()
        self._bol = s.endswith(("\n", "\r"))

    def _lines(self, lines: list[str]) -> None:
        if not lines:
            return
        self._erase_table()
        if not self._bol:
            self.out.write("\r\n" if self.tty else "\n")
        for ln in lines:
            self._line(ln)

    def _line(self, text: str) -> None:
        self.out.write(text + ("\r\n" if self.tty and not self.raw else "\n"))
        self.out.flush()
        self._bol = True

    def _draw_table(self) -> None:
        t = self.view.table(self.width)
        if t is None:
            return
        self._erase_table()
        rows = t.split("\n")
        if self.tty:
            if self.width:  # a wrapped row would throw off the redraw's line count
                rows = [r[: self.width - 1] for r in rows]
            self.out.write("\r\n".join(rows) + "\r\n")
            self._table_lines = len(rows)
        else:
            self.out.write(t + "\n\n")
        self.out.flush()
        self._table_dirty = False


def _terminal_width(out: IO[str]) -> int | None:
    try:
        return os.get_terminal_size(out.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return None


def run_console(url: str, *, connect: bool = False, raw: bool = False, baudrate: int = 115200,
                duration: float | None = None, out: IO[str] | None = None,
                keys: IO[bytes] | None = None) -> int:
    """Open ``url`` with pyserial's ``serial_for_url`` and run the console until
    Ctrl-] (typed on a terminal stdin), ``duration`` seconds, Ctrl-C, or the
    connection closing. Returns the exit status (0, or 1 if the port went away)."""
    import serial

    out = sys.stdout if out is None else out
    if keys is None and sys.stdin is not None and sys.stdin.isatty():
        keys = sys.stdin.buffer
    out_tty = out.isatty() if hasattr(out, "isatty") else False
    port = serial.serial_for_url(url, baudrate=baudrate, timeout=0.02)
    con = Console(port, out, connect=connect, raw=raw, tty=out_tty and not raw,
                  width=_terminal_width(out) if out_tty else None)
    restore = _raw_keys(keys)
    if keys is not None and not raw:
        sys.stderr.write("--- metal console on %s --- Ctrl-] to quit ---\r\n" % url)
        sys.stderr.flush()
    end = None if duration is None else time.monotonic() + duration
    status = 0
    try:
        import select

        while end is None or time.monotonic() < end:
            try:
                data = port.read(max(1, port.in_waiting))
            except serial.SerialException as e:
                sys.stderr.write(f"\r\n--- connection closed: {e} ---\r\n")
                status = 1
                break
            if data:
                con.on_bytes(data)
            if keys is not None:
                r, _, _ = select.select([keys], [], [], 0)
                if r:
                    typed = os.read(keys.fileno(), 1024)
                    if not typed or con.on_keys(typed):
                        break
            con.tick()
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `metal console --raw URL | head`: the reader is done
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - interpreter exit flushes it
        except OSError:
            pass
    finally:
        if restore is not None:
            restore()
        port.close()
    return status


def _raw_keys(keys: IO[bytes] | None) -> Callable[[], None] | None:
    """Put a terminal stdin into character mode without signals (Ctrl-C goes to
    the device, as in miniterm); returns the function that restores it."""
    if keys is None:
        return None
    try:
        import termios

        fd = keys.fileno()
        if not os.isatty(fd):
            return None
        old = termios.tcgetattr(fd)
    except (ImportError, OSError, ValueError, AttributeError):
        return None
    new = termios.tcgetattr(fd)
    new[0] &= ~(termios.IXON | termios.ICRNL | termios.INLCR)
    new[3] &= ~(termios.ICANON | termios.ECHO | termios.ISIG | termios.IEXTEN)
    new[6][termios.VMIN] = 1
    new[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, new)
    return lambda: termios.tcsetattr(fd, termios.TCSAFLUSH, old)
