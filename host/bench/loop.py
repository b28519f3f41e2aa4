"""``metal bench loop``: the reference sim board's tick, per runtime.

Shape (stable keys, other tools read them)::

    {"runtimes": {
        "cpython":          {tick_us_mean, tick_us_p50, tick_us_p99, tick_us_max,
                             calibration_us, jitter_us_p99_100hz, jitter_us_p99_1khz,
                             calibration_us_min, tick_ratio_p50, tick_ratio_p99,
                             noise_p99_over_p50},
        "micropython-unix": {tick_us_*, calibration_us, calibration_us_min, allocs_per_tick,
                             tick_ratio_p50, tick_ratio_p99, noise_p99_over_p50},
        "micropython-wasm": {... same ...}},
     "ticks": N, "timed_ticks": M, "command_every": K, "targets": {...}}

Each runtime runs the sim firmware with a host link in the same process
(commands, heartbeats, telemetry, events: see ``vm_scripts.FIRMWARE_SCRIPT``); the
host sends a command every ``command_every`` ticks (default 7; 0: none, the steady
state of heartbeats and telemetry).
``allocs_per_tick`` is the heap growth over ``ticks`` ticks under heap_lock
with the collector off, divided by ``ticks`` (0.0 means none at all; a
MemoryError under the lock is reported as ``"memory_error": true``).
``calibration_us`` times 100,000 iterations of ``x = x ^ i`` in a function in the
same VM: the timed ticks run in chunks of 250 with a calibration (best of 2 back to
back) after each chunk; ``calibration_us`` is the median of those and
``calibration_us_min`` the fastest. ``tick_ratio_p50``/``tick_ratio_p99`` are the
percentiles of each tick's µs divided by its own chunk's calibration, so the ratio
carries to a real board even when the machine drifts between speed regimes during
the run (shared runners do; a ratio of two figures taken minutes apart would measure
the drift). ``noise_p99_over_p50`` is the machine's own spread: p99 / p50 of one
fixed piece of work about a tick's size (700 turns of the calibration loop) timed
1,000 times the same way; a tick that always did the same work would still show
about that p99 / p50. Jitter: tick-start lateness against the drift-free schedule
of ``Loop.run_forever`` on CPython, at 100 Hz and 1 kHz.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

from metal.host import mpvm
from metal.host.bench.vm_scripts import firmware_script, parse

VM_RUNTIMES = {"micropython-unix": "unix", "micropython-wasm": "wasm"}
TARGETS = {"micropython-wasm": {"tick_us_p99": 300, "tick_ratio_p50": 0.015}}
_TIMING_KEYS = ("tick_us_mean", "tick_us_p50", "tick_us_p99", "tick_us_max", "calibration_us")


def _timing(got: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {k: got[k] for k in _TIMING_KEYS if k in got}
    for q in ("p50", "p99"):
        if f"tick_ratio_{q}_e6" in got:
            out[f"tick_ratio_{q}"] = round(got[f"tick_ratio_{q}_e6"] / 1e6, 4)
    if "calibration_us_min" in got:
        out["calibration_us_min"] = got["calibration_us_min"]
    if "noise_p99_over_p50_e3" in got:
        out["noise_p99_over_p50"] = round(got["noise_p99_over_p50_e3"] / 1000, 2)
    return out


def run_cpython(timed_ticks: int, jitter_s: float, command_every: int = 7) -> dict[str, Any]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(firmware_script(0, timed_ticks, command_every=command_every),  # noqa: S102
                     "firmware_script", "exec"),
             {"__name__": "__bench__"})
    out = _timing(parse(buf.getvalue()))
    out["jitter_us_p99_100hz"] = jitter_p99(10_000, jitter_s)
    out["jitter_us_p99_1khz"] = jitter_p99(1_000, jitter_s)
    return out


def run_vm(vm: str, ticks: int, timed_ticks: int, command_every: int = 7) -> dict[str, Any]:
    reason = mpvm.missing(vm)
    if reason:
        return {"error": reason}
    r = mpvm.run(vm, firmware_script(ticks, timed_ticks, command_every=command_every),
                 timeout=900, heapsize="2M")
    if r.rc != 0:
        return {"error": f"{vm} VM failed (rc {r.rc}): {r.stderr.strip()[-400:]}"}
    got = parse(r.stdout)
    out = _timing(got)
    out["allocs_per_tick"] = round(got["alloc_bytes"] / ticks, 3) if ticks else None
    out["memory_error"] = bool(got.get("memory_error"))
    return out


def jitter_p99(tick_us: int, seconds: float) -> int:
    """p99 of tick-start lateness (µs) of the sim firmware's own Loop.run_forever."""
    from metal.boards.sim.board import make_config
    from metal.boards.sim.hal import SimHal
    from metal.core.config import Limits
    from metal.core.firmware import Firmware

    cfg = make_config()
    lim = cfg.limits
    cfg.limits = Limits(tick_us=tick_us, heartbeat_timeout_ms=lim.heartbeat_timeout_ms,
                        stale_ticks=lim.stale_ticks, overheat_timer_ms=lim.overheat_timer_ms,
                        telemetry_every=lim.telemetry_every, overrun_limit=lim.overrun_limit,
                        host_lost_action=lim.host_lost_action, serial_budget=lim.serial_budget)
    fw = Firmware(cfg, SimHal(cfg), 1, "sim-jitter")
    lateness: list[int] = []
    tick = fw.loop.tick

    def recording_tick(now_us: int, late_us: int = -1) -> int:
        lateness.append(late_us)
        return tick(now_us, late_us)

    fw.loop.tick = recording_tick  # type: ignore[method-assign]
    n = max(100, int(seconds * 1_000_000 / tick_us))
    fw.loop.run_forever(n)
    lateness.sort()
    return lateness[(len(lateness) * 99) // 100]


def run(ticks: int = 10_000, timed_ticks: int = 3_000, jitter_s: float = 2.0,
        vms: bool = True, command_every: int = 7) -> dict[str, Any]:
    runtimes: dict[str, Any] = {"cpython": run_cpython(timed_ticks, jitter_s, command_every)}
    if vms:
        for name, vm in VM_RUNTIMES.items():
            runtimes[name] = run_vm(vm, ticks, timed_ticks, command_every)
    return {"runtimes": runtimes, "ticks": ticks, "timed_ticks": timed_ticks,
            "command_every": command_every, "targets": TARGETS}
