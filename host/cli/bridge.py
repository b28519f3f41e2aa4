"""`metal bridge`: the bridge daemon for real boards, and the runner `metal up` shares.

``metal bridge --device URL [--device URL ...]`` connects to each board (a URL is anything
pyserial's ``serial_for_url`` opens: ``/dev/ttyACM0``, ``socket://host:port``,
``rfc2217://host:port``; ``NAME=URL`` names the device), and serves the REST API and the
WebSocket stream on ``--host``/``--port`` (loopback only until the API has
authentication). Settings come from flags > ``METAL_*`` environment > ``--config`` TOML
file > defaults (``metal.host.config``).

:func:`run_bridge` is the life cycle, one asyncio loop for everything::

    bind the API socket (fails fast: port in use, address not loopback)
      -> Bridge(config).start()               (store, event bus, device sessions)
      -> uvicorn.Server(create_app(bridge)).serve(sockets=[the socket])
      -> on_started(...)                      (banner)
      -> wait: SIGINT/SIGTERM, the server ended, or a watchdog said stop
      -> server.should_exit; await it; bridge.stop()

Signals are handled here, not by uvicorn (whose handlers re-raise the signal after serving,
which would interrupt the bridge's own shutdown): a first Ctrl-C/SIGTERM stops gracefully,
a second one also ends open connections at once.

Where the modules of other parts are not importable (an older checkout), the command says
which one is missing instead of failing with a traceback: they are imported by name inside
the functions (``metal.host.bridge.manager.Bridge``, ``metal.host.bridge.api.app.create_app``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from metal.host.config import (
    LOG_LEVELS,
    BridgeConfig,
    ConfigError,
    default_state_dir,
    load_config,
)

__all__ = [
    "BridgeRun",
    "CliError",
    "ConfigUsageError",
    "bind_socket",
    "bridge",
    "make_app",
    "manager_config",
    "run_bridge",
    "setup_logging",
]

log = logging.getLogger("metal.cli")


class CliError(click.ClickException):
    """``error: <message>`` on stderr (the operator commands' style), exit status 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class ConfigUsageError(CliError):
    """A configuration error: ``error: <message>`` on stderr, exit status 2."""

    exit_code = 2


def config_error(e: ConfigError) -> ConfigUsageError:
    return ConfigUsageError(str(e))


# -- wiring to the bridge and the API (imported by name: other parts' modules) -------------


def _need(module: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        if e.name and module.startswith(e.name):
            raise CliError(
                f"{what} is not available in this installation ({module}: {e})") from None
        raise


def manager_config(cfg: BridgeConfig) -> Any:
    """Our BridgeConfig -> ``metal.host.bridge.manager.BridgeConfig`` (the Bridge's own).
    Device-level errors the Bridge detects (duplicate derived ids) become ConfigError."""
    manager = _need("metal.host.bridge.manager", "the bridge")
    devices = []
    for d in cfg.devices:
        try:
            devices.append(manager.DeviceConfig(
                url=d.url, id=d.name, power_restore=d.power_restore, simulated=d.simulated,
                baudrate=d.baudrate))
        except ValueError as e:
            raise ConfigError(f"device {d.url!r}: {e}") from None
    mc = manager.BridgeConfig(
        devices=devices, state_dir=cfg.state_dir,
        command_timeout_s=cfg.command_timeout_s, heartbeat_interval_s=cfg.heartbeat_interval_s)
    try:
        mc.device_configs()
    except ValueError as e:
        raise ConfigError(f"devices: {e}") from None
    return mc


def make_bridge(cfg: BridgeConfig) -> Any:
    manager = _need("metal.host.bridge.manager", "the bridge")
    return manager.Bridge(manager_config(cfg))


def make_app(service: Any, cfg: BridgeConfig) -> Any:
    """The FastAPI app for ``service``: ``create_app(service, settings=...)``, with the
    API module's own settings class (``ApiSettings``) at its defaults when it has one."""
    app_mod = _need("metal.host.bridge.api.app", "the REST API")
    settings_cls = getattr(app_mod, "ApiSettings", None)
    settings = settings_cls() if settings_cls is not None else None
    return app_mod.create_app(service, settings=settings)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket for the API (port 0: any free port). ConfigError when the
    address cannot be bound (in use, not on this machine)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConfigError(f"cannot resolve {host!r}: {e.strerror}") from None
    fam, stype, proto, _, addr = infos[0]
    sock = socket.socket(fam, stype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        hint = " (is another bridge running? choose another --port)" \
            if e.errno in (98, 48) else ""
        shown = f"[{host}]" if ":" in host else host
        raise ConfigError(f"cannot listen on {shown}:{port}: {e.strerror or e}{hint}") from None
    sock.setblocking(False)
    return sock


# -- the run -----------------------------------------------------------------------------


@dataclass
class BridgeRun:
    """What :func:`run_bridge` hands to ``on_started`` and the watchdog."""

    config: BridgeConfig
    bridge: Any  # metal.host.bridge.manager.Bridge (a BridgeService)
    url: str  # http://HOST:PORT, the real port
    stop: asyncio.Event
    exit_code: int = 0

    def request_stop(self, code: int = 0) -> None:
        self.exit_code = max(self.exit_code, code)
        self.stop.set()


def _server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn without its own signal handling (run_bridge owns the signals)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Any:  # uvicorn >= 0.29
            yield

        def install_signal_handlers(self) -> None:  # older uvicorn
            pass

    return Server


async def run_bridge(
    cfg: BridgeConfig,
    *,
    sock: socket.socket | None = None,
    on_started: Callable[[BridgeRun], Awaitable[None] | None] | None = None,
    watchdog: Callable[[BridgeRun], Awaitable[None]] | None = None,
) -> int:
    """Run the bridge and its API until a signal (or ``run.request_stop()``); the exit
    status. ``sock``: an already bound socket (else bound from ``cfg``)."""
    import uvicorn

    if sock is None:
        sock = bind_socket(cfg.host, cfg.port)
    port = sock.getsockname()[1]
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    url = f"http://{host}:{port}"
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    bridge = make_bridge(cfg)
    run = BridgeRun(cfg, bridge, url, stop)
    server: Any = None

    def on_signal(signum: int) -> None:
        if stop.is_set() and server is not None:
            server.force_exit = True  # a second Ctrl-C: don't wait for open connections
        stop.set()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
    tasks: list[asyncio.Task[Any]] = []
    try:
        try:
            await bridge.start()
        except (OSError, ValueError, RuntimeError) as e:  # state dir, store, a device URL
            with contextlib.suppress(Exception):
                await bridge.stop()
            raise CliError(f"cannot start the bridge: {e}") from None
        except Exception as e:
            # the store's own errors (SchemaTooNew ...) and sqlite3's carry their message
            if type(e).__module__.startswith(("sqlite3", "metal.")):
                with contextlib.suppress(Exception):
                    await bridge.stop()
                raise CliError(f"cannot start the bridge: {e}") from None
            raise
        try:
            app = make_app(bridge, cfg)
            # uvicorn's own "Started server process" lines only at debug level
            ucfg = uvicorn.Config(
                app, log_level="warning" if cfg.log_level == "info" else cfg.log_level,
                access_log=cfg.log_level == "debug",
                lifespan="auto", timeout_graceful_shutdown=3, log_config=None)
            server = _server_class()(ucfg)
            serve = asyncio.ensure_future(server.serve(sockets=[sock]))
            tasks.append(serve)
            while not server.started and not serve.done():
                await asyncio.sleep(0.02)
            if serve.done():
                serve.result()  # raises what stopped it
                raise CliError("the API server did not start (see the log above)")
            if on_started is not None:
                r = on_started(run)
                if r is not None:
                    await r
            if watchdog is not None:
                tasks.append(asyncio.ensure_future(watchdog(run)))
            stopper = asyncio.ensure_future(stop.wait())
            tasks.append(stopper)
            await asyncio.wait({serve, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if serve.done() and not stop.is_set():
                log.error("the API server stopped unexpectedly")
                run.exit_code = max(run.exit_code, 1)
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await serve
        finally:
            for t in tasks:
                if not t.done():
                    t.cancel()
                    with contextlib.suppress(BaseException):
                        await t
            await bridge.stop()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        sock.close()
    return run.exit_code


# -- the command ------------------------------------------------------------------------------


def _flags(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None and v != ()}


@click.command("bridge")
@click.option("--device", "devices", multiple=True, metavar="URL",
              help="A board: /dev/ttyACM0, socket://HOST:PORT, rfc2217://HOST:PORT (anything "
                   "pyserial's serial_for_url opens); NAME=URL sets its device id. Repeat for "
                   "more boards. [env METAL_DEVICES]")
@click.option("--host", default=None, metavar="ADDR",
              help="API bind address, loopback only until the API has authentication "
                   "(default 127.0.0.1). [env METAL_HOST]")
@click.option("--port", type=int, default=None,
              help="API port (default 8080; 0 = any free port). [env METAL_PORT]")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="State directory (SQLite database). Default $XDG_STATE_HOME/metal, else "
                   "~/.local/state/metal. [env METAL_STATE_DIR]")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="TOML configuration file. [env METAL_CONFIG]")
@click.option("--heartbeat-interval-ms", type=int, default=None,
              help="Host heartbeat period (default 500). [env METAL_HEARTBEAT_INTERVAL_MS]")
@click.option("--command-timeout-ms", type=int, default=None,
              help="How long to wait for a board's verdict (default 5000). "
                   "[env METAL_COMMAND_TIMEOUT_MS]")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default=None,
              help="Log level (default info). [env METAL_LOG_LEVEL]")
def bridge(devices: Sequence[str], host: str | None, port: int | None,
           state_dir: Path | None, config_file: Path | None,
           heartbeat_interval_ms: int | None, command_timeout_ms: int | None,
           log_level: str | None) -> None:
    """Run the bridge daemon for real boards: device sessions, the REST API under
    /api/v1 and the WebSocket stream. Runs until Ctrl-C or SIGTERM."""
    try:
        cfg = load_config(
            config_file=config_file, env=os.environ,
            defaults=BridgeConfig(state_dir=default_state_dir()),
            flags=_flags(devices=tuple(devices), host=host, port=port, state_dir=state_dir,
                         heartbeat_interval_ms=heartbeat_interval_ms,
                         command_timeout_ms=command_timeout_ms, log_level=log_level))
        if not cfg.devices:
            raise ConfigError("no devices: give --device URL (repeatable), METAL_DEVICES, "
                              "or [[devices]] url = ... in the --config file")
        manager_config(cfg)  # the Bridge's own checks, before anything starts
        sock = bind_socket(cfg.host, cfg.port)
    except ConfigError as e:
        raise config_error(e) from None
    setup_logging(cfg.log_level)

    def started(run: BridgeRun) -> None:
        click.echo(f"metal bridge: API on {run.url}/api/v1 (state in {cfg.state_dir})")
        for d in run.bridge.list_devices():
            click.echo(f"  device {d.id}")
        click.echo("no authentication yet: the API binds loopback only. Ctrl-C to stop.")
        sys.stdout.flush()

    code = asyncio.run(run_bridge(cfg, sock=sock, on_started=started))
    sys.exit(code)


if __name__ == "__main__":  # python -m metal.host.cli.bridge (before registration in main.py)
    bridge()
