"""`metal up`: the embedded default -- simulated boards plus the bridge on 127.0.0.1.

Starts ``--boards N`` simulator processes (``metal.host.sim_process.SimProcess``, uids
``sim-0001``, ``sim-0002`` ...; each is also its device id), the bridge connected to them,
and the REST API / WebSocket stream on ``http://127.0.0.1:PORT`` (uvicorn, on the same
asyncio loop as the bridge). Needs no configuration; state lives in ``./.state`` unless
``--state-dir`` (or ``METAL_STATE_DIR``) says otherwise.

The first line on stdout is the API's URL, for people and for tools that start this
command::

    metal up: http://127.0.0.1:8080

then, once the boards are online (at most ~10 s), their device ids and how to use them.
Runs until Ctrl-C / SIGTERM; then stops the bridge and the simulators (exit status 0). If a
simulator dies, its stderr is shown and the command exits with status 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from metal.host.cli.bridge import (
    BridgeRun,
    CliError,
    bind_socket,
    config_error,
    manager_config,
    run_bridge,
    setup_logging,
)
from metal.host.config import (
    DEFAULT_STATE_DIR,
    ENV_VARS,
    LOG_LEVELS,
    ConfigError,
    DeviceConfig,
    load_config,
)
from metal.host.sim_process import RUNTIMES

__all__ = ["sim_uid", "up"]

ONLINE_WAIT_S = 10.0


def sim_uid(i: int) -> str:
    """The uid (and device id) of the i-th simulated board, from 0: sim-0001, sim-0002 ..."""
    return f"sim-{i + 1:04d}"


def _up_env() -> dict[str, str]:
    """The environment settings ``metal up`` honours: all but the device list and the
    bind address (its devices are its simulators; it binds 127.0.0.1)."""
    ignore = {"METAL_DEVICES", "METAL_HOST"}
    return {k: v for k, v in os.environ.items() if k in ENV_VARS and k not in ignore}


def _banner(run: BridgeRun, sims: list[Any], runtime: str) -> None:
    """Device ids, where their serial ports are, and what to try."""
    devices = {d.id: d for d in run.bridge.list_devices()}
    url = run.url
    default_url = url == "http://127.0.0.1:8080"
    use = "" if default_url else f" --url {url}"
    click.echo("devices:")
    first = None
    rail = None
    for sim in sims:
        d = devices.get(sim.uid)
        state = "online" if d is not None and d.online else (
            getattr(d, "link_state", None) or "offline")
        click.echo(f"  {sim.uid}  {state:<9} simulated board ({runtime}, serial {sim.url})")
        if first is None:
            first = sim.uid
            rail = _first_rail(run, sim.uid)
    click.echo(f"state: {run.config.state_dir}")
    click.echo("")
    click.echo("try:")
    click.echo(f"  metal status{use}")
    if first is not None:
        click.echo(f"  metal status {first}{use}")
        click.echo(f"  metal power on {first} {rail or '<RAIL>'}{use}")
    click.echo(f"  metal events --follow{use}")
    click.echo(f"  curl {url}/api/v1/devices")
    click.echo(f"  API docs: {url}/docs")
    click.echo("login: none -- there is no authentication yet, so the API listens on "
               "127.0.0.1 (loopback) only.")
    click.echo("Ctrl-C to stop.")
    sys.stdout.flush()


def _first_rail(run: BridgeRun, device_id: str) -> str | None:
    try:
        snap = json.loads(run.bridge.snapshot_json(device_id))
        rails = (snap.get("power") or {}).get("rails") or []
        return str(rails[0]["name"]) if rails else None
    except Exception:  # a hint only
        return None


async def _wait_online(run: BridgeRun, ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not run.stop.is_set():
        online = {d.id for d in run.bridge.list_devices() if d.online}
        if all(i in online for i in ids):
            # the layout (rail names) arrives with DESCRIBE, just after HELLO
            if all(_first_rail(run, i) is not None for i in ids[:1]):
                return
        await asyncio.sleep(0.1)


@click.command("up")
@click.option("--boards", type=click.IntRange(1, 32), default=1, show_default=True,
              help="How many simulated boards to start.")
@click.option("--port", type=int, default=None,
              help="API port on 127.0.0.1 (default 8080; 0 = any free port). [env METAL_PORT]")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help=f"State directory (default ./{DEFAULT_STATE_DIR}). [env METAL_STATE_DIR]")
@click.option("--runtime", type=click.Choice(RUNTIMES), default="cpython", show_default=True,
              help="Run the simulated firmware under CPython or the MicroPython unix port.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default=None,
              help="Log level (default info). [env METAL_LOG_LEVEL]")
def up(boards: int, port: int | None, state_dir: Path | None, runtime: str,
       log_level: str | None) -> None:
    """Start simulated boards and the bridge on 127.0.0.1: the whole stack, no setup."""
    from metal.host.sim_process import SimError, SimProcess  # noqa: PLC0415

    try:
        cfg = load_config(
            env=_up_env(), use_env_config_file=False,
            flags={"host": "127.0.0.1", "port": port, "state_dir": state_dir,
                   "log_level": log_level})
        sock = bind_socket(cfg.host, cfg.port)
    except ConfigError as e:
        raise config_error(e) from None
    setup_logging(cfg.log_level)

    sims: list[Any] = []
    try:
        try:
            for i in range(boards):
                sims.append(SimProcess(runtime, sim_uid(i)).start())
        except SimError as e:
            raise CliError(f"cannot start the simulator: {e}") from None
        cfg = replace(cfg, devices=tuple(
            DeviceConfig(url=s.url, name=s.uid, simulated=True) for s in sims))
        try:
            manager_config(cfg)
        except ConfigError as e:
            raise config_error(e) from None

        def started(run: BridgeRun) -> Any:
            click.echo(f"metal up: {run.url}")
            sys.stdout.flush()

            async def rest() -> None:
                await _wait_online(run, [s.uid for s in sims], ONLINE_WAIT_S)
                _banner(run, sims, runtime)

            return rest()

        async def watch_sims(run: BridgeRun) -> None:
            while not run.stop.is_set():
                for s in sims:
                    if s.died:
                        err = s.stderr_text().rstrip()
                        click.echo(f"error: simulated board {s.uid} exited with status "
                                   f"{s.returncode}" + (":\n" + err if err else ""), err=True)
                        run.request_stop(1)
                        return
                await asyncio.sleep(0.2)

        code = asyncio.run(run_bridge(cfg, sock=sock, on_started=started, watchdog=watch_sims))
    finally:
        for s in sims:
            s.stop()
        sock.close()
    if code == 0:
        click.echo("metal up: stopped", err=True)
    sys.exit(code)


if __name__ == "__main__":  # python -m metal.host.cli.up (before registration in main.py)
    up()
