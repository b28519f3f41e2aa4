"""`metal up` and `metal bridge`: wiring units, and `metal up` end to end.

The end-to-end test starts ``python -m metal.host.cli.up --port 0`` as a subprocess (the
real simulator process, bridge and uvicorn), waits for its printed URL, checks that the
simulated board comes online through the REST API, drives ``metal status`` and ``metal
power on`` against it, and stops it with SIGINT: exit status 0, no process left behind,
the port closed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from metal.host.cli.bridge import bind_socket, bridge, manager_config
from metal.host.cli.ops import power, status
from metal.host.cli.up import sim_uid, up
from metal.host.config import BridgeConfig, ConfigError, DeviceConfig

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("METAL_")}
#: for CliRunner: unset every METAL_* variable of the environment running the tests
NO_METAL_ENV: dict[str, str | None] = {k: None for k in os.environ if k.startswith("METAL_")}


def test_sim_uids() -> None:
    assert [sim_uid(i) for i in (0, 1, 9, 41)] == ["sim-0001", "sim-0002", "sim-0010",
                                                   "sim-0042"]


def test_manager_config_carries_every_field(tmp_path: Path) -> None:
    from metal.host.bridge import manager

    cfg = BridgeConfig(
        state_dir=tmp_path, heartbeat_interval_ms=250, command_timeout_ms=1500,
        devices=(DeviceConfig(url="socket://127.0.0.1:4000", name="a", power_restore="always_on",
                              simulated=True),
                 DeviceConfig(url="/dev/ttyACM0", baudrate=9600)))
    mc = manager_config(cfg)
    assert isinstance(mc, manager.BridgeConfig)
    assert Path(mc.state_dir) == tmp_path
    assert (mc.heartbeat_interval_s, mc.command_timeout_s) == (0.25, 1.5)
    devs = mc.device_configs()
    assert [(d.id, d.url, d.power_restore, d.simulated, d.baudrate) for d in devs] == [
        ("a", "socket://127.0.0.1:4000", "always_on", True, 115200),
        ("ttyACM0", "/dev/ttyACM0", "last_state", None, 9600)]


def test_manager_config_reports_clashing_derived_ids() -> None:
    cfg = BridgeConfig(devices=(DeviceConfig(url="/dev/a/ttyACM0"),
                                DeviceConfig(url="/dev/b/ttyACM0")))
    with pytest.raises(ConfigError) as ei:
        manager_config(cfg)
    assert str(ei.value) == ("devices: two devices have the id 'ttyACM0'; name them with "
                             "ID=URL")


def test_bind_socket_port_in_use() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(ConfigError) as ei:
            bind_socket("127.0.0.1", port)
        assert str(ei.value) == (f"cannot listen on 127.0.0.1:{port}: Address already in use "
                                 "(is another bridge running? choose another --port)")
    finally:
        taken.close()
    s = bind_socket("::1" if socket.has_ipv6 else "127.0.0.1", 0)
    try:
        assert s.getsockname()[1] > 0
    finally:
        s.close()


def test_bridge_needs_a_device(tmp_path: Path) -> None:
    r = CliRunner().invoke(bridge, ["--state-dir", str(tmp_path)], env=NO_METAL_ENV)
    assert r.exit_code == 2
    assert r.stderr == ("error: no devices: give --device URL (repeatable), METAL_DEVICES, "
                        "or [[devices]] url = ... in the --config file\n")


def test_bridge_refuses_a_public_address(tmp_path: Path) -> None:
    r = CliRunner().invoke(bridge, ["--device", "loop://", "--host", "0.0.0.0"],
                           env=NO_METAL_ENV)
    assert r.exit_code == 2
    assert r.stderr == ("error: --host: refusing to bind '0.0.0.0': the API has no "
                        "authentication yet, so it binds loopback only (127.0.0.0/8, ::1 or "
                        "localhost)\n")


def test_bridge_config_file_errors_name_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "metal.toml"
    f.write_text('[[devices]]\nurl = "loop://"\nspeed = 9600\n')
    r = CliRunner().invoke(bridge, ["--config", str(f)], env=NO_METAL_ENV)
    assert r.exit_code == 2
    assert r.stderr == (f"error: {f}:3: unknown key 'speed' in [[devices]] #1; known keys: "
                        "url, name, power_restore, baudrate\n")


def test_bridge_bad_device_scheme() -> None:
    r = CliRunner().invoke(bridge, ["--device", "http://example.com"], env=NO_METAL_ENV)
    assert r.exit_code == 2
    assert r.stderr.startswith("error: --device: 'http://example.com': unsupported URL "
                               "scheme 'http'")


def test_up_refuses_a_bad_port() -> None:
    r = CliRunner().invoke(up, ["--port", "70000"], env=NO_METAL_ENV)
    assert r.exit_code == 2
    assert r.stderr == "error: --port: expected an integer 0..65535, got 70000\n"


# -- end to end -------------------------------------------------------------------------------


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class _Lines:
    """Collects a pipe's lines in a thread (so the child never blocks on a full pipe)."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._cv = threading.Condition()
        self._t = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._t.start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            with self._cv:
                self.lines.append(line.rstrip("\n"))
                self._cv.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str] | None:
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for line in self.lines:
                    m = re.search(pattern, line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(left)

    def text(self) -> str:
        with self._cv:
            return "\n".join(self.lines)


@pytest.mark.timeout(60)
def test_metal_up_end_to_end(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "metal.host.cli.up", "--port", "0", "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env=CLEAN_ENV)
    out, err = _Lines(proc.stdout), _Lines(proc.stderr)
    children: list[int] = []
    try:
        m = out.wait_for(r"^metal up: (http://127\.0\.0\.1:(\d+))$", 20)
        assert m is not None, f"no URL printed\nstdout:\n{out.text()}\nstderr:\n{err.text()}"
        url, port = m.group(1), int(m.group(2))
        children = _children(proc.pid)  # the simulator, started before the URL is printed
        assert children, "the simulator should be a child process of metal up"

        # the simulated board comes online within ~10 s
        deadline = time.monotonic() + 10
        devices: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            devices = _get(f"{url}/api/v1/devices")
            if devices and devices[0]["online"]:
                break
            time.sleep(0.2)
        assert [(d["id"], d["online"], d["simulated"]) for d in devices] == [
            ("sim-0001", True, True)]

        # the banner names the device and says how to use it
        assert out.wait_for(r"^Ctrl-C to stop\.$", 15) is not None, out.text()
        banner = out.text()
        assert re.search(r"^  sim-0001  online ", banner, re.M), banner
        assert f"curl {url}/api/v1/devices" in banner
        assert "no authentication yet" in banner
        assert state.joinpath("bridge.sqlite3").is_file()

        r = CliRunner().invoke(status, ["--url", url], env={"METAL_URL": ""})
        assert r.exit_code == 0, r.output
        assert re.search(r"^sim-0001\s+sim\s+online\s", r.stdout, re.M), r.stdout

        r = CliRunner().invoke(status, ["sim-0001", "--url", url, "--json"])
        assert r.exit_code == 0, r.output
        snap = json.loads(r.stdout)
        rails = [x["name"] for x in snap["power"]["rails"]]
        assert rails, snap
        root = [x["name"] for x in snap["power"]["rails"] if x["parent"] is None][0]

        r = CliRunner().invoke(power, ["on", "sim-0001", root, "--url", url])
        assert r.exit_code == 0, r.output
        assert re.fullmatch(rf"applied: power on {root} on sim-0001 \(command \d+\)\n",
                            r.stdout), r.stdout

        deadline = time.monotonic() + 5
        rail_state = None
        while time.monotonic() < deadline:
            snap = _get(f"{url}/api/v1/devices/sim-0001")
            rail_state = [x["state"] for x in snap["power"]["rails"] if x["name"] == root][0]
            if rail_state == "on":
                break
            time.sleep(0.1)
        assert rail_state == "on"

        r = CliRunner().invoke(power, ["on", "sim-0001", "no_such_rail", "--url", url])
        assert r.exit_code == 2
        assert r.stderr.startswith("error: no rail named 'no_such_rail'")
        assert r.stderr.endswith("(target_not_found)\n")

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0, err.text()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(_alive(p) for p in children):
            time.sleep(0.05)
        assert [p for p in children if _alive(p)] == [], "simulator left running"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        leftover = [p for p in children if _alive(p)]
        for p in leftover:  # only after a failure: don't leave them running
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert "Traceback" not in err.text(), err.text()
