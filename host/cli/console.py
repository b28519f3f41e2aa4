"""`metal console URL`: watch a board's frames live and talk to its REPL."""

from __future__ import annotations

import signal
from types import FrameType

import click

from metal.host.console import run_console

__all__ = ["console"]


@click.command("console")
@click.argument("url")
@click.option("--connect", is_flag=True,
              help="Act as the host: do the HELLO handshake and send heartbeats, so "
                   "DESCRIBE and telemetry flow without a bridge. Without it the console "
                   "only watches (and never sends a frame).")
@click.option("--raw", is_flag=True,
              help="Print one JSON object per frame (and per text chunk) instead of the table.")
@click.option("--baudrate", "-b", type=int, default=115200, show_default=True,
              help="For serial devices; ignored by socket:// URLs.")
@click.option("--duration", type=float, default=None, metavar="SECONDS",
              help="Exit after this many seconds (for scripts).")
def console(url: str, connect: bool, raw: bool, baudrate: int, duration: float | None) -> None:
    """Show a board's link live: HELLO, DESCRIBE, a telemetry table, events,
    results and logs. URL is anything pyserial opens: /dev/ttyACM0,
    socket://HOST:PORT, rfc2217://HOST:PORT.

    Bytes that are not frames (a MicroPython REPL, a traceback) are printed as
    they are, and keys typed on a terminal go to the device. Press Ctrl-] to quit.
    """
    import serial

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # leave through run_console's cleanup (terminal modes)

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        status = run_console(url, connect=connect, raw=raw, baudrate=baudrate,
                             duration=duration)
    except (serial.SerialException, ValueError) as e:
        raise click.ClickException(f"cannot open {url}: {e}") from None
    finally:
        signal.signal(signal.SIGTERM, old)
    if status:
        raise SystemExit(status)


if __name__ == "__main__":  # python -m metal.host.cli.console (before registration)
    console()
