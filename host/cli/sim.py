"""`metal sim`: run the simulated board and expose its serial port.

The firmware runs as a child process (CPython or the MicroPython unix port) and its
stdio is relayed to a loopback TCP port or a pty. The first line on stdout says where
to connect, for people and for tools that start this command::

    listening on socket://127.0.0.1:40123
    pty /dev/pts/7

Stops on Ctrl-C / SIGTERM (the firmware is killed too). If the firmware dies, the
command exits with status 1 and prints the firmware's stderr.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

import click

from metal.host.sim_process import RUNTIMES, SimError, SimProcess

__all__ = ["sim"]


@click.command("sim")
@click.option("--listen", "listen", metavar="URL", default=None,
              help="TCP server for the board's serial port: socket://HOST:PORT "
                   "(default socket://127.0.0.1:0; port 0 picks a free port). "
                   "One client at a time; a new client replaces the old one.")
@click.option("--pty", "use_pty", is_flag=True,
              help="Relay to a pseudo-terminal instead; prints the slave path.")
@click.option("--uid", default=None, help="The board's unique id in HELLO (default sim-0001).")
@click.option("--runtime", type=click.Choice(RUNTIMES), default="cpython", show_default=True,
              help="Run the firmware under CPython or the MicroPython unix port.")
def sim(listen: str | None, use_pty: bool, uid: str | None, runtime: str) -> None:
    """Run the simulated board; relay its serial port to a TCP socket or a pty."""
    if listen and use_pty:
        raise click.UsageError("--listen and --pty are mutually exclusive")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            proc = SimProcess(runtime, uid, listen=listen, pty=use_pty).start()
        except SimError as e:
            raise click.ClickException(str(e)) from None
        try:
            host = proc.listen[0] if proc.listen else None
            if host is not None and host not in ("127.0.0.1", "localhost", "::1"):
                click.echo(f"warning: the simulator listens on {host}: anyone who can reach "
                           "it can command the board", err=True)
            click.echo(f"pty {proc.url}" if use_pty else f"listening on {proc.url}")
            sys.stdout.flush()
            click.echo(f"sim firmware pid {proc.pid} ({runtime}); Ctrl-C to stop", err=True)
            while not stop.is_set() and not proc.wait(0.2):
                pass
        finally:
            proc.stop()
        if proc.died:
            err = proc.stderr_text().rstrip()
            msg = f"sim firmware exited with status {proc.returncode}"
            raise click.ClickException(msg + (":\n" + err if err else " (no stderr output)"))
    finally:
        for s, h in old.items():
            signal.signal(s, h)


if __name__ == "__main__":  # python -m metal.host.cli.sim (before registration in main.py)
    sim()
