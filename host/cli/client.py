"""A small client for the bridge's REST API and WebSocket stream, for the operator commands.

Standard library only (``urllib`` and a minimal RFC 6455 WebSocket client), so the
``metal`` command needs nothing beyond the package itself to talk to a bridge.

The base URL comes from ``--url``, else ``METAL_URL``, else ``http://127.0.0.1:8080``.
Errors the API reports as JSON ``{"code", "message"}`` (also accepted: ``{"error":
{...}}`` and FastAPI's ``{"detail": ...}``) become :class:`ApiError` with that code and
message; a bridge that cannot be reached is ``ApiError(code="unreachable")``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any, Final

__all__ = [
    "ApiError",
    "Client",
    "DEFAULT_URL",
    "ENV_URL",
    "StreamClosed",
    "WebSocket",
    "resolve_url",
]

DEFAULT_URL: Final = "http://127.0.0.1:8080"
ENV_URL: Final = "METAL_URL"
API: Final = "/api/v1"
_WS_GUID: Final = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_FRAME: Final = 16 * 1024 * 1024


class ApiError(Exception):
    """A request failed: the API's ``code`` and ``message``, and the HTTP status (None
    when no HTTP answer came back). ``body`` is the parsed error document, if any."""

    def __init__(self, code: str, message: str, status: int | None = None,
                 body: Any = None) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message
        self.status = status
        self.body = body


class StreamClosed(Exception):
    """The WebSocket ended (close frame, EOF or a socket error); ``reason`` says why."""

    def __init__(self, reason: str, code: int | None = None, close_reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code  # the close frame's status code, if one came
        self.close_reason = close_reason  # the close frame's reason text


def resolve_url(url: str | None, env: Mapping[str, str] | None = None) -> str:
    """``--url`` > ``METAL_URL`` > the default; ``host:port`` gets ``http://``."""
    env = os.environ if env is None else env
    u = (url or env.get(ENV_URL, "") or DEFAULT_URL).strip().rstrip("/")
    if "://" not in u:
        u = "http://" + u
    scheme = u.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise ApiError("invalid_url", f"bridge URL {u!r}: use http:// or https://")
    return u


def error_from_body(status: int | None, body: Any, fallback: str) -> ApiError:
    """The API's error document -> ApiError (tolerant of the shapes listed above)."""
    code, message = None, None
    doc = body
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        doc = doc["error"]
    if isinstance(doc, dict):
        if isinstance(doc.get("code"), str):
            code = doc["code"]
        if isinstance(doc.get("message"), str):
            message = doc["message"]
        detail = doc.get("detail")
        if message is None and isinstance(detail, str):
            message = detail
        elif message is None and isinstance(detail, dict):
            code = code or detail.get("code")
            message = detail.get("message")
        elif message is None and isinstance(detail, list):  # FastAPI validation errors
            parts = []
            for d in detail:
                if isinstance(d, dict):
                    loc = ".".join(str(x) for x in d.get("loc", ()) if x != "body")
                    parts.append(f"{loc}: {d.get('msg')}" if loc else str(d.get("msg")))
            message = "; ".join(parts) or None
            code = code or "invalid_input"
    elif isinstance(doc, str) and doc.strip():
        message = doc.strip()
    return ApiError(code or (f"http_{status}" if status else "error"), message or fallback,
                    status, body)


class Client:
    """Blocking JSON-over-HTTP client for ``/api/v1``."""

    def __init__(self, base_url: str | None = None, *, timeout: float = 10.0) -> None:
        self.base_url = resolve_url(base_url)
        self.timeout = timeout

    # -- plumbing -------------------------------------------------------------------------

    def url(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        q = {k: v for k, v in (params or {}).items() if v is not None}
        u = self.base_url + path
        return u + ("?" + urllib.parse.urlencode(q) if q else "")

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                body: Any = None, headers: Mapping[str, str] | None = None) -> Any:
        """One request; the parsed JSON answer (None for an empty body). Raises ApiError."""
        data = None
        hdrs = {"Accept": "application/json", "User-Agent": "metal-cli"}
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        hdrs.update(headers or {})
        req = urllib.request.Request(self.url(path, params), data=data, method=method,
                                     headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as e:
            raw = e.read() if e.fp is not None else b""
            try:
                doc: Any = json.loads(raw) if raw else None
            except ValueError:
                doc = raw.decode("utf-8", "replace")
            raise error_from_body(e.code, doc, f"HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            reason = e.reason
            text = getattr(reason, "strerror", None) or str(reason)
            raise ApiError("unreachable",
                           f"cannot reach the bridge at {self.base_url}: {text}") from None
        except (TimeoutError, socket.timeout):
            raise ApiError("timeout", f"no answer from the bridge at {self.base_url} within "
                                      f"{self.timeout:g} s") from None
        except (ConnectionError, OSError) as e:
            raise ApiError("unreachable", f"cannot reach the bridge at {self.base_url}: "
                                          f"{e.strerror or e}") from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError("bad_response", f"{method} {path}: HTTP {status} answer is not JSON: "
                                           f"{raw[:200]!r}", status) from None

    # -- resources --------------------------------------------------------------------------

    def list_devices(self) -> list[dict[str, Any]]:
        doc = self.request("GET", f"{API}/devices")
        return _items(doc, "devices")

    def device(self, device_id: str) -> dict[str, Any]:
        doc = self.request("GET", f"{API}/devices/{_seg(device_id)}")
        if not isinstance(doc, dict):
            raise ApiError("bad_response", f"device {device_id}: expected a JSON object")
        return doc

    def rail_action(self, device_id: str, rail: str, action: str, *,
                    idempotency_key: str | None = None) -> Any:
        """POST a rail command; the verdict document."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self.request(
            "POST", f"{API}/devices/{_seg(device_id)}/power/rails/{_seg(rail)}",
            body={"action": action}, headers=headers)

    def events(self, *, device: str | None = None, type: str | None = None,  # noqa: A002
               since: str | None = None, cursor: int | None = None,
               limit: int | None = None) -> tuple[list[dict[str, Any]], int | None]:
        """One page of stored events (oldest first) and the page's ``next_cursor`` (None
        on the last page). ``since``: ISO-8601 time or epoch seconds; ``cursor``: start
        after this event id; ``type``: exact or a namespace (``hardware.*``)."""
        doc = self.request("GET", f"{API}/events", params={
            "device": device, "type": type, "since": since, "cursor": cursor, "limit": limit})
        items = _items(doc, "events")
        nxt = doc.get("next_cursor") if isinstance(doc, dict) else None
        return items, nxt if isinstance(nxt, int) else None

    def stream_url(self, topics: str, *, device: str | None = None,
                   resume_from: int | None = None) -> str:
        u = self.url(f"{API}/stream", {"topics": topics, "device": device,
                                       "resume_from": resume_from})
        return "ws" + u[len("http"):]

    def stream(self, topics: str, *, device: str | None = None,
               resume_from: int | None = None) -> WebSocket:
        return WebSocket.connect(self.stream_url(topics, device=device, resume_from=resume_from),
                                 timeout=self.timeout)


def _seg(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def _items(doc: Any, key: str) -> list[dict[str, Any]]:
    """A JSON list, or the list under ``key`` / ``items`` / ``members`` of an object."""
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        for k in (key, "items", "members", "data"):
            if isinstance(doc.get(k), list):
                return list(doc[k])
    raise ApiError("bad_response", f"expected a list of {key}, got {str(doc)[:200]}")


# -- WebSocket -------------------------------------------------------------------------------


class WebSocket:
    """A minimal blocking RFC 6455 client: text messages in, pings answered, close
    handled. Enough for the API's JSON stream; no extensions, no subprotocols."""

    def __init__(self, sock: socket.socket, buffered: bytes = b"") -> None:
        self.sock = sock
        self._buf = bytearray(buffered)
        self.closed = False

    @classmethod
    def connect(cls, url: str, *, timeout: float = 10.0) -> WebSocket:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise ApiError("invalid_url", f"{url!r}: not a ws:// URL")
        if parts.scheme == "wss":
            raise ApiError("invalid_url", "wss:// is not supported by this client")
        host = parts.hostname or "127.0.0.1"
        port = parts.port or 80
        path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise StreamClosed(f"cannot connect to {host}:{port}: {e.strerror or e}") from None
        key = base64.b64encode(os.urandom(16)).decode()
        hosthdr = f"[{host}]" if ":" in host else host
        req = (f"GET {path} HTTP/1.1\r\nHost: {hosthdr}:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\nUser-Agent: metal-cli\r\n\r\n")
        try:
            sock.sendall(req.encode())
            head, rest = _read_head(sock)
        except OSError as e:
            sock.close()
            raise StreamClosed(f"handshake failed: {e.strerror or e}") from None
        lines = head.decode("iso-8859-1").split("\r\n")
        status_line = lines[0].split(" ", 2)
        status = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else 0
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if status != 101:
            body = bytearray(rest)
            n = int(headers.get("content-length", "0") or 0)
            try:
                while len(body) < n:
                    chunk = sock.recv(n - len(body))
                    if not chunk:
                        break
                    body += chunk
            except OSError:
                pass
            sock.close()
            try:
                doc: Any = json.loads(bytes(body)) if body else None
            except ValueError:
                doc = bytes(body).decode("utf-8", "replace")
            raise error_from_body(status or None, doc, f"WebSocket handshake: HTTP {status}")
        expect = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != expect:
            sock.close()
            raise StreamClosed("handshake failed: bad Sec-WebSocket-Accept")
        sock.settimeout(None)
        return cls(sock, rest)

    def _recv_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except OSError as e:
                raise StreamClosed(f"connection lost: {e.strerror or e}") from None
            if not chunk:
                raise StreamClosed("connection closed by the bridge")
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _frame(self) -> tuple[bool, int, bytes]:
        b0, b1 = self._recv_exact(2)
        fin, opcode = bool(b0 & 0x80), b0 & 0x0F
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._recv_exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._recv_exact(8))[0]
        if n > _MAX_FRAME:
            raise StreamClosed(f"frame too large ({n} bytes)")
        mask = self._recv_exact(4) if b1 & 0x80 else None
        payload = self._recv_exact(n)
        if mask:
            payload = bytes(c ^ mask[i & 3] for i, c in enumerate(payload))
        return fin, opcode, payload

    def recv(self) -> str:
        """The next text (or binary, decoded) message. Raises StreamClosed."""
        if self.closed:
            raise StreamClosed("closed")
        parts: list[bytes] = []
        while True:
            fin, opcode, payload = self._frame()
            if opcode == 0x8:  # close
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                reason = payload[2:].decode("utf-8", "replace")
                try:
                    self._send(0x8, payload[:2])
                except OSError:
                    pass
                self._shutdown()
                shown = f" ({code}: {reason})" if reason else f" ({code})" if code else ""
                raise StreamClosed(f"closed by the bridge{shown}", code, reason)
            if opcode == 0x9:  # ping
                self._send(0xA, payload)
                continue
            if opcode == 0xA:  # pong
                continue
            parts.append(payload)
            if fin:
                return b"".join(parts).decode("utf-8", "replace")

    def __iter__(self) -> Iterator[Any]:
        """Parsed JSON messages until the stream ends (StreamClosed propagates)."""
        while True:
            text = self.recv()
            try:
                yield json.loads(text)
            except ValueError:
                continue

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        body = bytes(c ^ mask[i & 3] for i, c in enumerate(payload))
        self.sock.sendall(head + mask + body)

    def send_text(self, text: str) -> None:
        self._send(0x1, text.encode())

    def close(self) -> None:
        if not self.closed:
            try:
                self._send(0x8, struct.pack("!H", 1000))
            except OSError:
                pass
            self._shutdown()

    def _shutdown(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> WebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("connection closed during the handshake")
        buf += chunk
        if len(buf) > 65536:
            raise ConnectionError("handshake answer too long")
    i = buf.index(b"\r\n\r\n")
    return bytes(buf[:i]), bytes(buf[i + 4:])
