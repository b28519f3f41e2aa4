"""`metal bench api`: one JSON object with the documented keys, from a short run.

The short form (few commands, 1-2 s of load, 10 WebSocket subscribers) only checks that
every figure is there and sane -- the targets are the benchmark's business, not the
suite's -- and that the processes it started (sim helper, firmware, bridge) are gone.
"""

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from metal.host.cli.main import cli

pytestmark = pytest.mark.timeout(180)


def _bench_pids() -> set[int]:
    """Processes of a bench stack: the sim helper / firmware and the bench bridge."""
    out = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"metal.host.bench.api" in cmd or b"bench=/dev/" in cmd:
            out.add(int(d.name))
    return out


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc and ptys (Linux)")
def test_api_bench_short_run_keys_and_sane_values():
    before = _bench_pids()
    r = CliRunner().invoke(cli, ["bench", "api", "--json", "--requests", "30", "--duration",
                                 "1", "--ws-duration", "2", "--ws-clients", "10"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1, "--json prints one line"
    got = json.loads(lines[0])
    for key in ("command_rtt_ms_p50", "command_rtt_ms_p99", "command_rtt_ms_max"):
        assert isinstance(got[key], float) and 0 < got[key] < 5000, (key, got)
    assert got["command_rtt_ms_p50"] <= got["command_rtt_ms_p99"] <= got["command_rtt_ms_max"]
    assert got["commands"] == 30
    assert isinstance(got["get_device_rps"], float) and got["get_device_rps"] > 50, got
    assert got["get_device_errors"] == 0 and got["get_device_requests"] > 50
    assert got["get_device_ms_p50"] <= got["get_device_ms_p99"]
    assert got["connections"] == 16 and got["duration_s"] == 1.0
    assert isinstance(got["ws_fanout_p99_ms"], float), got
    assert 0 <= got["ws_fanout_p50_ms"] <= got["ws_fanout_p99_ms"] <= got["ws_fanout_max_ms"]
    assert got["ws_fanout_p99_ms"] < 5000
    assert got["ws_clients"] == 10 and got["ws_errors"] == 0 and got["ws_messages"] > 10
    assert 0 < got["ws_msgs_per_client_per_s"] <= 110  # 100 Hz telemetry, conflated
    assert got["telemetry_hz"] == 100
    assert set(got["targets"]) == {"command_rtt_ms_p99", "ws_fanout_p99_ms", "get_device_rps"}
    assert _bench_pids() - before == set(), "a bench process was left running"
