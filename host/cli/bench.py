"""``metal bench ...``: benchmarks that print one JSON object each."""

from __future__ import annotations

import json
from typing import Any

import click


def _emit(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))
    else:
        click.echo(json.dumps(result, indent=2, sort_keys=True))


@click.group()
def bench() -> None:
    """Benchmarks; each prints one JSON object (--json: on one line)."""


@bench.command("codec")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on one line.")
@click.option("--iterations", default=20_000, show_default=True, type=click.IntRange(100),
              help="Frames per timing round on the host codec.")
@click.option("--vm-iterations", default=2_000, show_default=True, type=click.IntRange(10),
              help="Frames per measurement in each board-codec runtime.")
@click.option("--no-vms", is_flag=True, help="Skip the MicroPython VMs (CPython figures only).")
def codec_cmd(as_json: bool, iterations: int, vm_iterations: int, no_vms: bool) -> None:
    """Telemetry frame size and codec speed (host codec; board codec per runtime)."""
    from metal.host.bench import codec

    _emit(codec.run(iterations, vm_iterations, vms=not no_vms), as_json)


@bench.command("loop")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on one line.")
@click.option("--ticks", default=10_000, show_default=True, type=click.IntRange(100),
              help="Ticks under heap_lock per MicroPython VM (allocs_per_tick).")
@click.option("--timed-ticks", default=3_000, show_default=True, type=click.IntRange(100),
              help="Ticks timed one by one per runtime.")
@click.option("--jitter-seconds", default=2.0, show_default=True, type=click.FloatRange(0.1),
              help="Real-time run per rate (100 Hz, 1 kHz) for the CPython jitter figures.")
@click.option("--no-vms", is_flag=True, help="Skip the MicroPython VMs (CPython figures only).")
@click.option("--command-every", default=7, show_default=True, type=click.IntRange(0),
              help="The host sends a command every N ticks (0: none, heartbeats and "
                   "telemetry only).")
def loop_cmd(as_json: bool, ticks: int, timed_ticks: int, jitter_seconds: float,
             no_vms: bool, command_every: int) -> None:
    """Per-tick cost of the reference sim board per runtime, allocations, jitter."""
    from metal.host.bench import loop

    _emit(loop.run(ticks, timed_ticks, jitter_seconds, vms=not no_vms,
                   command_every=command_every), as_json)


@bench.command("api")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on one line.")
@click.option("--requests", default=1_000, show_default=True, type=click.IntRange(10),
              help="Commands (REST POST -> board -> response) timed one at a time.")
@click.option("--duration", default=10.0, show_default=True, type=click.FloatRange(0.5),
              help="Seconds of GET /api/v1/devices/{id} load for get_device_rps.")
@click.option("--connections", default=16, show_default=True, type=click.IntRange(1, 1024),
              help="Concurrent keep-alive connections of the GET load.")
@click.option("--ws-duration", default=30.0, show_default=True, type=click.FloatRange(0.5),
              help="Seconds of 100 Hz telemetry fan-out measured.")
@click.option("--ws-clients", default=100, show_default=True, type=click.IntRange(1, 2000),
              help="WebSocket telemetry subscribers.")
def api_cmd(as_json: bool, requests: int, duration: float, connections: int,
            ws_duration: float, ws_clients: int) -> None:
    """The bridge's API end to end: command round trip, snapshot reads per second,
    WebSocket telemetry fan-out latency (sim board over a pty, bridge in its own process)."""
    from metal.host.bench import api

    _emit(api.run(requests, duration, ws_duration, connections, ws_clients), as_json)
