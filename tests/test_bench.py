"""`metal bench codec|loop`: one JSON object with the documented, stable keys.

The suite runs short forms (few iterations); the figures themselves are the
benchmark's business, so only their presence, type and basic sanity are
asserted here, plus the frame-size budget, which is a property of the format.
"""

import json

from click.testing import CliRunner

from metal.host.cli.main import cli


def _bench(*args: str) -> dict:
    r = CliRunner().invoke(cli, ["bench", *args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1, "--json prints one line"
    return json.loads(lines[0])


def test_codec_bench_keys_and_frame_budget():
    got = _bench("codec", "--json", "--iterations", "200", "--vm-iterations", "20")
    assert 60 <= got["telemetry_frame_bytes"] <= 96  # the budget for the sim board
    assert got["telemetry_payload_bytes"] < got["telemetry_frame_bytes"]
    assert 0 < got["framing_overhead_pct"] < 20
    assert got["host_decode_us"] > 0 and got["host_encode_us"] > 0
    for key in ("core_encode_us", "core_decode_us"):
        assert set(got[key]) == {"cpython", "micropython-unix", "micropython-wasm"}
        assert all(isinstance(v, float) and v > 0 for v in got[key].values()), got


def test_loop_bench_shape():
    got = _bench("loop", "--json", "--ticks", "300", "--timed-ticks", "200",
                 "--jitter-seconds", "0.3")
    rt = got["runtimes"]
    assert set(rt) == {"cpython", "micropython-unix", "micropython-wasm"}
    for name, r in rt.items():
        assert "error" not in r, r
        for key in ("tick_us_mean", "tick_us_p50", "tick_us_p99", "tick_us_max", "calibration_us"):
            assert isinstance(r[key], int) and r[key] >= 0, (name, key, r)
        assert r["tick_us_p50"] <= r["tick_us_p99"] <= r["tick_us_max"]
        # ratios: each tick against its own chunk's calibration (see host/bench/loop.py)
        assert 0 < r["tick_ratio_p50"] <= r["tick_ratio_p99"], (name, r)
        assert 0 < r["calibration_us_min"] <= r["calibration_us"], (name, r)
        # the machine's own spread for fixed work: p99 >= p50, so the ratio is >= 1
        assert isinstance(r["noise_p99_over_p50"], float) and r["noise_p99_over_p50"] >= 1.0
    for name in ("micropython-unix", "micropython-wasm"):
        assert rt[name]["allocs_per_tick"] == 0.0
        assert rt[name]["memory_error"] is False
    assert rt["cpython"]["jitter_us_p99_100hz"] >= 0
    assert rt["cpython"]["jitter_us_p99_1khz"] >= 0


def test_loop_bench_command_rate():
    """--command-every sets the host's command period (0: none at all)."""
    import contextlib
    import io

    from metal.host.bench.vm_scripts import firmware_script, parse

    def sent(every):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(compile(firmware_script(0, 100, warmup=300, command_every=every), "fw", "exec"),
                 {"__name__": "__bench__"})
        return parse(buf.getvalue())

    none, some = sent(0), sent(7)
    assert none["cmds_sent"] == 0 and none["connected"] == 1 and none["telemetry"] > 0
    assert some["cmds_sent"] >= 300 // 7 and some["results"] == some["cmds_sent"]
    got = _bench("loop", "--json", "--ticks", "300", "--timed-ticks", "200",
                 "--jitter-seconds", "0.3", "--no-vms", "--command-every", "0")
    assert got["command_every"] == 0 and "error" not in got["runtimes"]["cpython"]
