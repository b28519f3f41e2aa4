"""The bridge's configuration: defaults < TOML file < environment < command-line flags.

:func:`load_config` merges the four sources into one frozen :class:`BridgeConfig` and
validates every value, naming where a bad value came from (``FILE:LINE``, the environment
variable, or the flag). Nothing is required: ``BridgeConfig()`` is a working configuration
for a bridge on ``127.0.0.1:8080`` (``metal up`` runs on it without any file).

The TOML file (``--config FILE`` or ``METAL_CONFIG``)::

    host = "127.0.0.1"            # loopback only until the API has authentication
    port = 8080                   # 0 = any free port
    state_dir = "/var/lib/metal"  # relative paths are relative to this file's directory
    heartbeat_interval_ms = 500
    command_timeout_ms = 5000
    log_level = "info"

    [[devices]]
    url = "/dev/ttyACM0"          # anything pyserial's serial_for_url opens
    name = "rack1-bmc"            # optional: the device id in the API
    power_restore = "LastState"   # AlwaysOff | LastState (default) | AlwaysOn
    baudrate = 115200             # real UARTs only

Environment variables (each overrides the file, each is overridden by its flag):

=============================  ==========================================================
``METAL_CONFIG``               path of the TOML file (flag ``--config``)
``METAL_HOST``                 API bind address (``--host``)
``METAL_PORT``                 API port, 0 = any free port (``--port``)
``METAL_STATE_DIR``            state directory (``--state-dir``)
``METAL_DEVICES``              device URLs separated by commas or whitespace, each
                               ``URL`` or ``NAME=URL`` (``--device``, repeatable)
``METAL_HEARTBEAT_INTERVAL_MS``  host heartbeat period (``--heartbeat-interval-ms``)
``METAL_COMMAND_TIMEOUT_MS``   how long to wait for a board's verdict (``--command-timeout-ms``)
``METAL_LOG_LEVEL``            debug | info | warning | error | critical (``--log-level``)
=============================  ==========================================================

A device list from a higher source replaces the lower one (no merging), so
``--device X`` means exactly X.

The API has no authentication yet, so :func:`validate_host` refuses any address outside
loopback (127.0.0.0/8, ::1, ``localhost``).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from metal.host.bridge.model import POWER_RESTORE_POLICIES

__all__ = [
    "BridgeConfig",
    "ConfigError",
    "DeviceConfig",
    "ENV_VARS",
    "LOG_LEVELS",
    "default_state_dir",
    "load_config",
    "normalize_power_restore",
    "parse_device_list",
    "validate_device_url",
    "validate_host",
]

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8080
DEFAULT_STATE_DIR: Final = Path(".state")
DEFAULT_HEARTBEAT_INTERVAL_MS: Final = 500  # protocol §5: host -> board every 500 ms
DEFAULT_COMMAND_TIMEOUT_MS: Final = 5000
DEFAULT_LOG_LEVEL: Final = "info"
DEFAULT_POWER_RESTORE: Final = "last_state"  # as metal.host.bridge.session.SessionConfig
DEFAULT_BAUDRATE: Final = 115200

LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
HEARTBEAT_RANGE_MS: Final = (50, 60_000)
COMMAND_TIMEOUT_RANGE_MS: Final = (100, 600_000)
DEVICE_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

#: Environment variable -> BridgeConfig field (METAL_CONFIG names the file itself).
ENV_VARS: Final[Mapping[str, str]] = {
    "METAL_HOST": "host",
    "METAL_PORT": "port",
    "METAL_STATE_DIR": "state_dir",
    "METAL_DEVICES": "devices",
    "METAL_HEARTBEAT_INTERVAL_MS": "heartbeat_interval_ms",
    "METAL_COMMAND_TIMEOUT_MS": "command_timeout_ms",
    "METAL_LOG_LEVEL": "log_level",
}
ENV_CONFIG: Final = "METAL_CONFIG"

_TOP_KEYS: Final = ("host", "port", "state_dir", "devices", "heartbeat_interval_ms",
                    "command_timeout_ms", "log_level")
_DEVICE_KEYS: Final = ("url", "name", "power_restore", "baudrate")
_FLAG_NAMES: Final[Mapping[str, str]] = {
    "host": "--host",
    "port": "--port",
    "state_dir": "--state-dir",
    "devices": "--device",
    "heartbeat_interval_ms": "--heartbeat-interval-ms",
    "command_timeout_ms": "--command-timeout-ms",
    "log_level": "--log-level",
}


class ConfigError(ValueError):
    """A configuration value is missing or wrong; ``str(err)`` names where it came from."""


# -- the configuration -------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceConfig:
    """One board the bridge connects to."""

    #: Anything pyserial's ``serial.serial_for_url`` opens: ``/dev/ttyACM0``, ``COM3``,
    #: ``socket://127.0.0.1:4000``, ``rfc2217://host:port``, ``loop://``.
    url: str
    #: The device id used in the API (``/api/v1/devices/<name>``). None: the bridge picks
    #: one (e.g. the board's uid from HELLO).
    name: str | None = None
    #: What the bridge brings the board's power back to after the board reboots, one of
    #: ``metal.host.bridge.model.POWER_RESTORE_POLICIES``: "always_off" | "last_state" |
    #: "always_on" (the Redfish names AlwaysOff/LastState/AlwaysOn are accepted on input).
    power_restore: str = DEFAULT_POWER_RESTORE
    #: Serial speed for real UARTs (ignored by socket://, USB CDC ignores it too).
    baudrate: int = DEFAULT_BAUDRATE
    #: True for the simulated boards ``metal up`` starts; None: decide from the board
    #: (simulated when it calls itself "sim"), as SessionConfig.simulated.
    simulated: bool | None = None


@dataclass(frozen=True)
class BridgeConfig:
    """Everything ``Bridge(config)`` and the API server need. All fields have working
    defaults; build one with :func:`load_config` to get validation and the sources merged."""

    #: The API's bind address. Loopback only (see :func:`validate_host`).
    host: str = DEFAULT_HOST
    #: The API's TCP port; 0 = any free port (``metal up`` prints the real one).
    port: int = DEFAULT_PORT
    #: Where the bridge keeps its state (SQLite database, WAL files). Created on start.
    state_dir: Path = DEFAULT_STATE_DIR
    #: The boards to connect to, in order.
    devices: tuple[DeviceConfig, ...] = ()
    #: Host -> board HEARTBEAT period (protocol §5). Must stay well under the board's
    #: host-lost timeout (2 s by default).
    heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS
    #: How long ``execute()`` waits for a board's verdict before DeviceTimeout.
    command_timeout_ms: int = DEFAULT_COMMAND_TIMEOUT_MS
    #: Python logging level name, lower case: one of LOG_LEVELS.
    log_level: str = DEFAULT_LOG_LEVEL
    #: The TOML file this came from, if any (for messages only).
    config_file: Path | None = field(default=None, compare=False)

    @property
    def database_path(self) -> Path:
        """The bridge's SQLite database: ``<state_dir>/bridge.sqlite3``."""
        return self.state_dir / "bridge.sqlite3"

    @property
    def heartbeat_interval_s(self) -> float:
        return self.heartbeat_interval_ms / 1000.0

    @property
    def command_timeout_s(self) -> float:
        return self.command_timeout_ms / 1000.0

    @property
    def log_level_number(self) -> int:
        """The ``logging`` module's number for ``log_level`` (e.g. 20 for "info")."""
        import logging

        return int(logging.getLevelName(self.log_level.upper()))

    @property
    def api_url(self) -> str:
        """``http://HOST:PORT`` (IPv6 literals in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def default_state_dir() -> Path:
    """For a long-running daemon (``metal bridge``): ``$XDG_STATE_HOME/metal``, else
    ``~/.local/state/metal`` (the XDG default). ``metal up`` uses ``./.state`` instead."""
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "metal"


# -- validation of single values --------------------------------------------------------------


def validate_host(host: str, where: str = "host") -> str:
    """The API bind address, if it is loopback; ConfigError otherwise."""
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if not h:
        raise ConfigError(f"{where}: empty address")
    if h.lower() == "localhost":
        return "localhost"
    try:
        addr = ipaddress.ip_address(h)
    except ValueError:
        addr = None
    if addr is None or not addr.is_loopback:
        raise ConfigError(
            f"{where}: refusing to bind {host!r}: the API has no authentication yet, so it "
            "binds loopback only (127.0.0.0/8, ::1 or localhost)")
    return str(addr)


def _schemes() -> str:
    return "socket://, rfc2217://, loop://, spy://, alt://, hwgrep://"


def validate_device_url(url: str, where: str = "device url") -> str:
    """A pyserial URL or device path. A ``scheme://`` must be one pyserial handles
    (``serial.urlhandler.protocol_<scheme>``); socket:// and rfc2217:// need HOST:PORT."""
    u = url.strip()
    if not u:
        raise ConfigError(f"{where}: empty URL")
    if "://" not in u:
        return u  # a device path: /dev/ttyACM0, /dev/pts/7, COM3
    scheme, _, rest = u.partition("://")
    scheme_l = scheme.lower()
    known = bool(re.fullmatch(r"[a-z][a-z0-9]*", scheme_l)) and (
        importlib.util.find_spec(f"serial.urlhandler.protocol_{scheme_l}") is not None)
    if not known:
        raise ConfigError(
            f"{where}: {url!r}: unsupported URL scheme {scheme!r} "
            f"(use a device path such as /dev/ttyACM0, or {_schemes()})")
    if scheme_l in ("socket", "rfc2217"):
        netloc = rest.split("?", 1)[0].rstrip("/")
        host, sep, port_s = netloc.rpartition(":")
        if not sep or not host or not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
            raise ConfigError(
                f"{where}: {url!r}: {scheme_l}:// needs HOST:PORT with a port 1..65535")
    return u


def normalize_power_restore(value: Any, where: str = "power_restore") -> str:
    """"AlwaysOff" / "always_off" / "always-off" (any case) -> "always_off"."""
    if isinstance(value, str):
        key = re.sub(r"[^a-z]", "", value.lower())
        for p in POWER_RESTORE_POLICIES:
            if p.replace("_", "") == key:
                return p
    raise ConfigError(
        f"{where}: expected one of AlwaysOff, LastState, AlwaysOn, got {value!r}")


def _device_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not DEVICE_NAME_RE.match(value):
        raise ConfigError(
            f"{where}: expected 1-64 characters of letters, digits, '_', '.', '-' "
            f"(starting with a letter or digit), got {value!r}")
    return value


def _int_in(value: Any, lo: int, hi: int, where: str, *, text: bool = False) -> int:
    """An int in lo..hi; ``text``: the value is text from the environment (TOML values
    and flags are typed, so a TOML string "80" is an error)."""
    if text and isinstance(value, str):
        s = value.strip()
        if re.fullmatch(r"[+-]?\d+", s):
            value = int(s)
        else:
            raise ConfigError(f"{where}: expected an integer {lo}..{hi}, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer {lo}..{hi}, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{where}: expected an integer {lo}..{hi}, got {value}")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _log_level(value: Any, where: str) -> str:
    if isinstance(value, str) and value.strip().lower() in LOG_LEVELS:
        return value.strip().lower()
    raise ConfigError(f"{where}: expected one of {', '.join(LOG_LEVELS)}, got {value!r}")


def parse_device_list(text: str, where: str = "METAL_DEVICES") -> tuple[DeviceConfig, ...]:
    """``"URL, NAME=URL ..."`` (commas or whitespace) -> devices. A ``NAME=`` prefix is
    recognised only when NAME is a valid device name (so ``?a=b`` in a URL is left alone)."""
    out: list[DeviceConfig] = []
    for item in re.split(r"[,\s]+", text.strip()):
        if item:
            out.append(parse_device_spec(item, where))
    return tuple(out)


def parse_device_spec(spec: str, where: str = "--device") -> DeviceConfig:
    """``URL`` or ``NAME=URL`` -> DeviceConfig (validated)."""
    name: str | None = None
    url = spec
    m = re.match(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})=(.+)$", spec)
    if m:
        name, url = m.group(1), m.group(2)
    return DeviceConfig(url=validate_device_url(url, where), name=name)


# -- sources --------------------------------------------------------------------------------


class _Locator:
    """Best-effort ``FILE:LINE`` for a key in a TOML file (tomllib keeps no positions):
    scans the lines, tracking ``[table]`` / ``[[array]]`` headers."""

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*=""")

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        # (table, index of [[table]] occurrence or -1, key) -> line number
        self.keys: dict[tuple[str, int, str], int] = {}
        self.headers: dict[tuple[str, int], int] = {}
        table, index = "", -1
        counts: dict[str, int] = {}
        for n, line in enumerate(text.splitlines(), 1):
            h = self._HEADER.match(line)
            if h:
                table = h.group(2).strip()
                if h.group(1) == "[[":
                    index = counts.get(table, 0)
                    counts[table] = index + 1
                else:
                    index = -1
                self.headers.setdefault((table, index), n)
                continue
            k = self._KEY.match(line)
            if k:
                key = k.group(1).strip("\"'")
                self.keys.setdefault((table, index, key), n)

    def at(self, key: str, table: str = "", index: int = -1) -> str:
        n = (self.keys.get((table, index, key)) or self.headers.get((key, -1))
             or self.headers.get((key, 0)))
        if n is None and table:
            n = self.headers.get((table, index))
        return f"{self.path}:{n}" if n else str(self.path)


def _read_file(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The TOML file -> (raw values, field -> where) after checking its keys."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    loc = _Locator(path, text)
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    for key, value in data.items():
        if key not in _TOP_KEYS:
            hint = (" (tables are not used: write the keys at the top level, or "
                    "[[devices]] for a device)") if isinstance(value, dict) else ""
            raise ConfigError(
                f"{loc.at(key)}: unknown key {key!r}{hint}; known keys: {', '.join(_TOP_KEYS)}")
        where[key] = f"{loc.at(key)}: {key}"
        if key == "devices":
            values[key] = _file_devices(value, loc, path)
        elif key == "state_dir" and isinstance(value, str):
            p = Path(value).expanduser()
            values[key] = p if p.is_absolute() else path.parent / p
        else:
            values[key] = value
    return values, where


def _file_devices(value: Any, loc: _Locator, path: Path) -> tuple[DeviceConfig, ...]:
    if not isinstance(value, list):
        raise ConfigError(
            f"{loc.at('devices')}: devices: expected an array of tables ([[devices]] with "
            f"url = ...), got {value!r}")
    out: list[DeviceConfig] = []
    for i, dev in enumerate(value):
        if not isinstance(dev, dict):
            raise ConfigError(
                f"{loc.at('devices')}: devices[{i}]: expected a table with url = ..., got {dev!r}")
        for key in dev:
            if key not in _DEVICE_KEYS:
                raise ConfigError(
                    f"{loc.at(key, 'devices', i)}: unknown key {key!r} in [[devices]] #{i + 1}; "
                    f"known keys: {', '.join(_DEVICE_KEYS)}")
        if "url" not in dev:
            raise ConfigError(f"{loc.at('devices', 'devices', i)}: devices[{i}]: missing key 'url'")
        url = validate_device_url(
            _string(dev["url"], f"{loc.at('url', 'devices', i)}: devices[{i}].url"),
            f"{loc.at('url', 'devices', i)}: devices[{i}].url")
        name = None
        if "name" in dev:
            name = _device_name(dev["name"], f"{loc.at('name', 'devices', i)}: devices[{i}].name")
        restore = DEFAULT_POWER_RESTORE
        if "power_restore" in dev:
            restore = normalize_power_restore(
                dev["power_restore"],
                f"{loc.at('power_restore', 'devices', i)}: devices[{i}].power_restore")
        baud = DEFAULT_BAUDRATE
        if "baudrate" in dev:
            baud = _int_in(dev["baudrate"], 50, 10_000_000,
                           f"{loc.at('baudrate', 'devices', i)}: devices[{i}].baudrate")
        for other in out:
            if name is not None and other.name == name:
                raise ConfigError(f"{loc.at('name', 'devices', i)}: devices[{i}].name: "
                                  f"duplicate device name {name!r}")
            if other.url == url:
                raise ConfigError(f"{loc.at('url', 'devices', i)}: devices[{i}].url: "
                                  f"device {url!r} is listed twice")
        out.append(DeviceConfig(url=url, name=name, power_restore=restore, baudrate=baud))
    return tuple(out)


def _read_env(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    for var, key in ENV_VARS.items():
        text = env.get(var)
        if text is None or text.strip() == "":
            continue  # unset and empty mean the same: no override
        where[key] = var
        if key == "devices":
            values[key] = parse_device_list(text, var)
        elif key == "state_dir":
            values[key] = Path(text).expanduser()
        else:
            values[key] = text
    return values, where


# -- merge -----------------------------------------------------------------------------------


def load_config(
    *,
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    defaults: BridgeConfig | None = None,
    use_env_config_file: bool = True,
) -> BridgeConfig:
    """Merge defaults < file < env < flags and validate.

    ``config_file``: the ``--config`` flag (else ``METAL_CONFIG`` from ``env`` when
    ``use_env_config_file``). ``env``: the environment (``os.environ`` when None; pass
    ``{}`` to ignore it). ``flags``: field name -> value for the flags that were given
    (None values are ignored); ``devices`` may be a sequence of ``URL``/``NAME=URL``
    strings or DeviceConfig. ``defaults``: the base (``BridgeConfig()`` when None).
    Raises ConfigError.
    """
    env = os.environ if env is None else env
    base = defaults or BridgeConfig()
    path: Path | None = None
    if config_file is not None:
        path = Path(config_file).expanduser()
    elif use_env_config_file and env.get(ENV_CONFIG, "").strip():
        path = Path(env[ENV_CONFIG].strip()).expanduser()

    merged: dict[str, Any] = {}
    where: dict[str, str] = {}
    if path is not None:
        v, w = _read_file(path)
        merged.update(v)
        where.update(w)
    v, w = _read_env(env)
    merged.update(v)
    where.update(w)
    for key, value in (flags or {}).items():
        if key not in _FLAG_NAMES:
            raise ConfigError(f"unknown setting {key!r}")
        if value is None or (key == "devices" and not value):
            continue
        where[key] = _FLAG_NAMES[key]
        if key == "devices":
            merged[key] = tuple(
                d if isinstance(d, DeviceConfig) else parse_device_spec(str(d), "--device")
                for d in value)
        elif key == "state_dir":
            merged[key] = Path(value).expanduser()
        else:
            merged[key] = value

    def src(key: str) -> str:
        return where.get(key, key)

    def text(key: str) -> bool:  # the value is environment text
        return where.get(key) in ENV_VARS

    cfg = base
    if "host" in merged:
        cfg = replace(cfg, host=_string(merged["host"], src("host")))
    cfg = replace(cfg, host=validate_host(cfg.host, src("host")))
    if "port" in merged:
        cfg = replace(cfg, port=_int_in(merged["port"], 0, 65535, src("port"), text=text("port")))
    if "state_dir" in merged:
        sd = merged["state_dir"]
        if not isinstance(sd, Path):
            sd = Path(_string(sd, src("state_dir")))
        if str(sd) == "":
            raise ConfigError(f"{src('state_dir')}: empty path")
        cfg = replace(cfg, state_dir=sd)
    if "devices" in merged:
        cfg = replace(cfg, devices=tuple(merged["devices"]))
    if "heartbeat_interval_ms" in merged:
        cfg = replace(cfg, heartbeat_interval_ms=_int_in(
            merged["heartbeat_interval_ms"], *HEARTBEAT_RANGE_MS, src("heartbeat_interval_ms"),
            text=text("heartbeat_interval_ms")))
    if "command_timeout_ms" in merged:
        cfg = replace(cfg, command_timeout_ms=_int_in(
            merged["command_timeout_ms"], *COMMAND_TIMEOUT_RANGE_MS, src("command_timeout_ms"),
            text=text("command_timeout_ms")))
    if "log_level" in merged:
        cfg = replace(cfg, log_level=_log_level(merged["log_level"], src("log_level")))
    if path is not None:
        cfg = replace(cfg, config_file=path)
    _check_devices(cfg.devices, src("devices"))
    return cfg


def _check_devices(devices: Sequence[DeviceConfig], where: str) -> None:
    names: set[str] = set()
    urls: set[str] = set()
    for d in devices:
        if d.name is not None:
            if d.name in names:
                raise ConfigError(f"{where}: duplicate device name {d.name!r}")
            names.add(d.name)
        if d.url in urls:
            raise ConfigError(f"{where}: device {d.url!r} is listed twice")
        urls.add(d.url)
