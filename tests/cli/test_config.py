"""metal.host.config: precedence (flags > env > file > defaults) and every validation error."""

from __future__ import annotations

from pathlib import Path

import pytest

from metal.host.config import (
    BridgeConfig,
    ConfigError,
    DeviceConfig,
    default_state_dir,
    load_config,
    normalize_power_restore,
    parse_device_list,
    validate_device_url,
    validate_host,
)

KNOWN = ("host, port, state_dir, devices, heartbeat_interval_ms, command_timeout_ms, "
         "log_level")
LOOPBACK_ONLY = ("the API has no authentication yet, so it binds loopback only "
                 "(127.0.0.0/8, ::1 or localhost)")


def write(tmp_path: Path, text: str, name: str = "metal.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def error(**kw: object) -> str:
    with pytest.raises(ConfigError) as ei:
        load_config(**kw)  # type: ignore[arg-type]
    return str(ei.value)


# -- defaults and precedence ------------------------------------------------------------------


def test_defaults_need_no_source() -> None:
    cfg = load_config(env={})
    assert cfg == BridgeConfig()
    assert (cfg.host, cfg.port, cfg.state_dir, cfg.devices) == ("127.0.0.1", 8080,
                                                                Path(".state"), ())
    assert (cfg.heartbeat_interval_ms, cfg.command_timeout_ms, cfg.log_level) == (500, 5000, "info")
    assert cfg.database_path == Path(".state/bridge.sqlite3")
    assert cfg.api_url == "http://127.0.0.1:8080"
    assert cfg.heartbeat_interval_s == 0.5 and cfg.command_timeout_s == 5.0
    assert cfg.log_level_number == 20


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    f = write(tmp_path, 'port = 9001\nlog_level = "warning"\nstate_dir = "/srv/file"\n'
                        'command_timeout_ms = 1000\n'
                        '[[devices]]\nurl = "/dev/ttyACM0"\nname = "filedev"\n')
    env = {"METAL_PORT": "9002", "METAL_LOG_LEVEL": "ERROR", "METAL_DEVICES": "envdev=/dev/ttyUSB0"}
    flags = {"port": 9003, "devices": ["flagdev=socket://127.0.0.1:4000"]}

    cfg = load_config(config_file=f, env=env, flags=flags)
    assert cfg.port == 9003
    assert [(d.name, d.url) for d in cfg.devices] == [("flagdev", "socket://127.0.0.1:4000")]
    assert cfg.log_level == "error"  # env over file
    assert cfg.state_dir == Path("/srv/file")  # file over default
    assert cfg.command_timeout_ms == 1000
    assert cfg.heartbeat_interval_ms == 500  # default
    assert cfg.config_file == f

    cfg = load_config(config_file=f, env=env)
    assert cfg.port == 9002
    assert [(d.name, d.url) for d in cfg.devices] == [("envdev", "/dev/ttyUSB0")]

    cfg = load_config(config_file=f, env={})
    assert (cfg.port, cfg.log_level) == (9001, "warning")
    assert [(d.name, d.url) for d in cfg.devices] == [("filedev", "/dev/ttyACM0")]


def test_flags_none_and_empty_device_list_do_not_override() -> None:
    cfg = load_config(env={"METAL_PORT": "9100", "METAL_DEVICES": "/dev/ttyACM0"},
                      flags={"port": None, "devices": ()})
    assert cfg.port == 9100
    assert [d.url for d in cfg.devices] == ["/dev/ttyACM0"]


def test_empty_env_value_is_no_override(tmp_path: Path) -> None:
    f = write(tmp_path, "port = 9001\n")
    assert load_config(config_file=f, env={"METAL_PORT": "  "}).port == 9001


def test_metal_config_env_names_the_file_and_the_flag_wins(tmp_path: Path) -> None:
    a = write(tmp_path, "port = 7001\n", "a.toml")
    b = write(tmp_path, "port = 7002\n", "b.toml")
    assert load_config(env={"METAL_CONFIG": str(a)}).port == 7001
    assert load_config(config_file=b, env={"METAL_CONFIG": str(a)}).port == 7002
    assert load_config(env={"METAL_CONFIG": str(a)}, use_env_config_file=False).port == 8080


def test_defaults_argument_is_the_base(tmp_path: Path) -> None:
    cfg = load_config(env={}, defaults=BridgeConfig(state_dir=Path("/var/lib/metal")))
    assert cfg.state_dir == Path("/var/lib/metal")


def test_every_setting_from_env() -> None:
    cfg = load_config(env={
        "METAL_HOST": "::1", "METAL_PORT": "0", "METAL_STATE_DIR": "/tmp/st",
        "METAL_HEARTBEAT_INTERVAL_MS": "250", "METAL_COMMAND_TIMEOUT_MS": "2500",
        "METAL_LOG_LEVEL": "Debug",
        "METAL_DEVICES": "a=socket://127.0.0.1:4000, /dev/ttyACM1\nrfc2217://10.0.0.5:2217"})
    assert cfg.host == "::1" and cfg.port == 0 and cfg.state_dir == Path("/tmp/st")
    assert (cfg.heartbeat_interval_ms, cfg.command_timeout_ms) == (250, 2500)
    assert cfg.log_level == "debug" and cfg.log_level_number == 10
    assert [(d.name, d.url) for d in cfg.devices] == [
        ("a", "socket://127.0.0.1:4000"), (None, "/dev/ttyACM1"), (None, "rfc2217://10.0.0.5:2217")]
    assert cfg.api_url == "http://[::1]:0"


def test_file_devices_and_relative_state_dir(tmp_path: Path) -> None:
    f = write(tmp_path, 'state_dir = "state"\n\n[[devices]]\nurl = "/dev/ttyACM0"\n'
                        'power_restore = "AlwaysOn"\nbaudrate = 9600\n\n'
                        '[[devices]]\nurl = "loop://"\nname = "bench.1"\n')
    cfg = load_config(config_file=f, env={})
    assert cfg.state_dir == tmp_path / "state"  # relative to the file, not the cwd
    assert cfg.devices == (
        DeviceConfig(url="/dev/ttyACM0", power_restore="always_on", baudrate=9600),
        DeviceConfig(url="loop://", name="bench.1", power_restore="last_state"))


def test_state_dir_from_env_and_flag_is_relative_to_cwd() -> None:
    assert load_config(env={"METAL_STATE_DIR": "here"}).state_dir == Path("here")
    assert load_config(env={}, flags={"state_dir": "there"}).state_dir == Path("there")


def test_default_state_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_state_dir() == tmp_path / "metal"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_state_dir() == Path.home() / ".local" / "state" / "metal"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")  # the spec: must be absolute
    assert default_state_dir() == Path.home() / ".local" / "state" / "metal"


@pytest.mark.parametrize("text,expected", [
    ("AlwaysOff", "always_off"), ("LastState", "last_state"), ("AlwaysOn", "always_on"),
    ("always_on", "always_on"), ("last-state", "last_state"), ("ALWAYSOFF", "always_off"),
])
def test_power_restore_spellings(text: str, expected: str) -> None:
    assert normalize_power_restore(text) == expected


def test_device_list_parsing_leaves_query_strings_alone() -> None:
    devs = parse_device_list("socket://127.0.0.1:4000?logging=debug  x_1=loop://")
    assert [(d.name, d.url) for d in devs] == [
        (None, "socket://127.0.0.1:4000?logging=debug"), ("x_1", "loop://")]


# -- host: loopback only -------------------------------------------------------------------------


@pytest.mark.parametrize("host,expected", [
    ("127.0.0.1", "127.0.0.1"), ("127.1.2.3", "127.1.2.3"), ("::1", "::1"), ("[::1]", "::1"),
    ("localhost", "localhost"), ("LOCALHOST", "localhost"),
])
def test_loopback_hosts_are_accepted(host: str, expected: str) -> None:
    assert validate_host(host) == expected


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "10.0.0.1", "example.com"])
def test_non_loopback_host_is_refused(host: str) -> None:
    assert error(env={}, flags={"host": host}) == (
        f"--host: refusing to bind {host!r}: {LOOPBACK_ONLY}")


def test_non_loopback_host_from_env_and_file(tmp_path: Path) -> None:
    assert error(env={"METAL_HOST": "0.0.0.0"}) == (
        f"METAL_HOST: refusing to bind '0.0.0.0': {LOOPBACK_ONLY}")
    f = write(tmp_path, 'port = 1\nhost = "0.0.0.0"\n')
    assert error(config_file=f, env={}) == (
        f"{f}:2: host: refusing to bind '0.0.0.0': {LOOPBACK_ONLY}")


def test_empty_host() -> None:
    assert error(env={}, flags={"host": " "}) == "--host: empty address"


# -- file errors --------------------------------------------------------------------------------


def test_unknown_top_level_key_names_key_file_and_line(tmp_path: Path) -> None:
    f = write(tmp_path, 'host = "127.0.0.1"\n# a comment\nprot = 8080\n')
    assert error(config_file=f, env={}) == (
        f"{f}:3: unknown key 'prot'; known keys: {KNOWN}")


def test_unknown_table_gets_a_hint(tmp_path: Path) -> None:
    f = write(tmp_path, 'port = 1\n\n[bridge]\nport = 2\n')
    assert error(config_file=f, env={}) == (
        f"{f}:3: unknown key 'bridge' (tables are not used: write the keys at the top level, "
        f"or [[devices]] for a device); known keys: {KNOWN}")


def test_unknown_device_key_names_the_right_table(tmp_path: Path) -> None:
    f = write(tmp_path, '[[devices]]\nurl = "/dev/ttyACM0"\n\n[[devices]]\n'
                        'url = "/dev/ttyACM1"\nbaud = 9600\n')
    assert error(config_file=f, env={}) == (
        f"{f}:6: unknown key 'baud' in [[devices]] #2; known keys: url, name, power_restore, "
        "baudrate")


def test_device_without_url(tmp_path: Path) -> None:
    f = write(tmp_path, 'port = 1\n[[devices]]\nname = "a"\n')
    assert error(config_file=f, env={}) == f"{f}:2: devices[0]: missing key 'url'"


def test_devices_not_an_array_of_tables(tmp_path: Path) -> None:
    f = write(tmp_path, 'devices = "/dev/ttyACM0"\n')
    assert error(config_file=f, env={}) == (
        f"{f}:1: devices: expected an array of tables ([[devices]] with url = ...), "
        "got '/dev/ttyACM0'")
    f = write(tmp_path, 'devices = [1]\n')
    assert error(config_file=f, env={}) == (
        f"{f}:1: devices[0]: expected a table with url = ..., got 1")


def test_invalid_toml(tmp_path: Path) -> None:
    f = write(tmp_path, "port = \n")
    assert error(config_file=f, env={}) == (
        f"{f}: invalid TOML: Invalid value (at line 1, column 8)")


def test_missing_file(tmp_path: Path) -> None:
    assert error(config_file=tmp_path / "nope.toml", env={}) == (
        f"config file not found: {tmp_path / 'nope.toml'}")


def test_not_utf8(tmp_path: Path) -> None:
    f = tmp_path / "bin.toml"
    f.write_bytes(b"port = \xff\n")
    assert error(config_file=f, env={}) == f"{f}: not UTF-8 text"


# -- value errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("value,shown", [("70000", "70000"), ("-1", "-1"), ("true", "True"),
                                        ('"80"', "'80'"), ("8080.5", "8080.5")])
def test_bad_port_in_file(tmp_path: Path, value: str, shown: str) -> None:
    f = write(tmp_path, f'host = "127.0.0.1"\nport = {value}\n')
    assert error(config_file=f, env={}) == (
        f"{f}:2: port: expected an integer 0..65535, got {shown}")


def test_bad_port_from_env_and_flag() -> None:
    assert error(env={"METAL_PORT": "http"}) == (
        "METAL_PORT: expected an integer 0..65535, got 'http'")
    assert error(env={"METAL_PORT": "65536"}) == (
        "METAL_PORT: expected an integer 0..65535, got 65536")
    assert error(env={}, flags={"port": 99999}) == (
        "--port: expected an integer 0..65535, got 99999")


def test_env_numbers_are_text() -> None:
    assert load_config(env={"METAL_PORT": " 8081 "}).port == 8081
    assert load_config(env={"METAL_COMMAND_TIMEOUT_MS": "+700"}).command_timeout_ms == 700


@pytest.mark.parametrize("url,message", [
    ("http://example.com", "unsupported URL scheme 'http' (use a device path such as "
     "/dev/ttyACM0, or socket://, rfc2217://, loop://, spy://, alt://, hwgrep://)"),
    ("tcp://127.0.0.1:4000", "unsupported URL scheme 'tcp' (use a device path such as "
     "/dev/ttyACM0, or socket://, rfc2217://, loop://, spy://, alt://, hwgrep://)"),
    ("socket://127.0.0.1", "socket:// needs HOST:PORT with a port 1..65535"),
    ("socket://127.0.0.1:0", "socket:// needs HOST:PORT with a port 1..65535"),
    ("rfc2217://:2217", "rfc2217:// needs HOST:PORT with a port 1..65535"),
])
def test_bad_device_url(url: str, message: str) -> None:
    assert error(env={}, flags={"devices": [url]}) == f"--device: {url!r}: {message}"


def test_bad_device_url_in_file_and_env(tmp_path: Path) -> None:
    f = write(tmp_path, '[[devices]]\nname = "a"\nurl = "https://x"\n')
    assert error(config_file=f, env={}) == (
        f"{f}:3: devices[0].url: 'https://x': unsupported URL scheme 'https' (use a device "
        "path such as /dev/ttyACM0, or socket://, rfc2217://, loop://, spy://, alt://, "
        "hwgrep://)")
    assert error(env={"METAL_DEVICES": "/dev/ttyACM0,socket://h"}) == (
        "METAL_DEVICES: 'socket://h': socket:// needs HOST:PORT with a port 1..65535")


def test_good_device_urls() -> None:
    for url in ("/dev/ttyACM0", "COM3", "socket://127.0.0.1:4000", "rfc2217://host:2217",
                "loop://", "socket://[::1]:4000", "spy:///dev/ttyUSB0"):
        assert validate_device_url(url) == url


def test_bad_power_restore(tmp_path: Path) -> None:
    f = write(tmp_path, '[[devices]]\nurl = "/dev/a"\npower_restore = "sometimes"\n')
    assert error(config_file=f, env={}) == (
        f"{f}:3: devices[0].power_restore: expected one of AlwaysOff, LastState, AlwaysOn, "
        "got 'sometimes'")


def test_bad_device_name(tmp_path: Path) -> None:
    f = write(tmp_path, '[[devices]]\nurl = "/dev/a"\nname = "rack 1"\n')
    assert error(config_file=f, env={}) == (
        f"{f}:3: devices[0].name: expected 1-64 characters of letters, digits, '_', '.', '-' "
        "(starting with a letter or digit), got 'rack 1'")


def test_bad_baudrate(tmp_path: Path) -> None:
    f = write(tmp_path, '[[devices]]\nurl = "/dev/a"\nbaudrate = 0\n')
    assert error(config_file=f, env={}) == (
        f"{f}:3: devices[0].baudrate: expected an integer 50..10000000, got 0")


def test_duplicate_devices(tmp_path: Path) -> None:
    f = write(tmp_path, '[[devices]]\nurl = "/dev/a"\nname = "x"\n'
                        '[[devices]]\nurl = "/dev/b"\nname = "x"\n')
    assert error(config_file=f, env={}) == (
        f"{f}:6: devices[1].name: duplicate device name 'x'")
    f = write(tmp_path, '[[devices]]\nurl = "/dev/a"\n[[devices]]\nname = "y"\nurl = "/dev/a"\n')
    assert error(config_file=f, env={}) == (
        f"{f}:5: devices[1].url: device '/dev/a' is listed twice")
    assert error(env={}, flags={"devices": ["x=/dev/a", "x=/dev/b"]}) == (
        "--device: duplicate device name 'x'")
    assert error(env={"METAL_DEVICES": "/dev/a /dev/a"}) == (
        "METAL_DEVICES: device '/dev/a' is listed twice")


def test_bad_intervals_and_log_level(tmp_path: Path) -> None:
    assert error(env={"METAL_HEARTBEAT_INTERVAL_MS": "5"}) == (
        "METAL_HEARTBEAT_INTERVAL_MS: expected an integer 50..60000, got 5")
    assert error(env={"METAL_COMMAND_TIMEOUT_MS": "soon"}) == (
        "METAL_COMMAND_TIMEOUT_MS: expected an integer 100..600000, got 'soon'")
    f = write(tmp_path, 'log_level = "loud"\n')
    assert error(config_file=f, env={}) == (
        f"{f}:1: log_level: expected one of debug, info, warning, error, critical, got 'loud'")
    f = write(tmp_path, 'heartbeat_interval_ms = 1.5\n')
    assert error(config_file=f, env={}) == (
        f"{f}:1: heartbeat_interval_ms: expected an integer 50..60000, got 1.5")


def test_wrong_type_for_strings(tmp_path: Path) -> None:
    f = write(tmp_path, 'host = 127\n')
    assert error(config_file=f, env={}) == f"{f}:1: host: expected a string, got 127"
    f = write(tmp_path, 'state_dir = 3\n')
    assert error(config_file=f, env={}) == f"{f}:1: state_dir: expected a string, got 3"


def test_unknown_flag_name() -> None:
    assert error(env={}, flags={"colour": "red"}) == "unknown setting 'colour'"
