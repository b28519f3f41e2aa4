"""mypy over the three sides of the project, each against the right library stubs.

(a) metal.core against the *portable* MicroPython stubs: the unix port's stubs less every
    module some board lacks (only modules the rp2 and esp32 stubs also have) and less the
    hardware modules (machine). So a board API -- machine, rp2, esp32, network -- or a
    CPython-only module cannot leak into the portable core: its import is an error.
(b) each board under boards/ against its own port's stubs (mpvm.BOARD_TARGETS; portable
    boards such as sim against the same portable view as core).
(c) metal.host against CPython's typeshed, with pyproject.toml's [tool.mypy].

Stubs come from the Makefile (`make .stubs/.installed`, pip --target .stubs/<port>); the
board-side settings are in tests/mypy-micropython.ini. mypy cannot follow setuptools'
editable finder (core/ -> metal.core), so it runs in a staging dir holding metal/{core,
boards,host} symlinks; paths in its output are mapped back to core/, boards/, host/.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mpvm as harness

REPO = harness.REPO
STUBS = REPO / ".stubs"
TYPESHED = STUBS / "stdlib"  # micropython-stdlib-stubs: stdlib/ (typeshed layout) + _mpy_shed/
MP_CONFIG = REPO / "tests" / "mypy-micropython.ini"
CACHE = REPO / ".mypy_cache"
BOARD_STUBS = ("rp2", "esp32")  # the board ports whose module sets bound the portable view
HARDWARE = frozenset({"machine", "umachine"})  # in every port's stubs, never in portable code

# The stubs model tick values as opaque classes (_TicksMs, ...). In MicroPython they are
# small ints, and metal's sans-I/O core keeps them as ints (stored in arrays, passed in as
# `now`, and compat's CPython fallback returns ints), so the views type them as int.
TICKS_AS_INT = '''"""metal test overlay of micropython-stdlib-stubs' _mpy_shed/time_mp.pyi: ticks are ints."""
from typing import Tuple
from typing_extensions import TypeAlias

_Time8Tuple: TypeAlias = Tuple[int, int, int, int, int, int, int, int]
_Time9Tuple: TypeAlias = Tuple[int, int, int, int, int, int, int, int, int]
_TimeTuple: TypeAlias = _Time8Tuple | _Time9Tuple | Tuple[int, ...]
_TicksMs: TypeAlias = int
_TicksUs: TypeAlias = int
_TicksCPU: TypeAlias = int
_Ticks: TypeAlias = int
'''


def _stub_modules(d: Path) -> dict[str, Path]:
    """Top-level module name -> entry, for a pip --target stub dir."""
    out = {}
    for p in d.iterdir():
        if p.suffix == ".pyi":
            out[p.stem] = p
        elif p.is_dir() and (p / "__init__.pyi").is_file():
            out[p.name] = p
    return out


def _require_stubs() -> None:
    needed = [TYPESHED / "stdlib" / "VERSIONS", TYPESHED / "_mpy_shed"] + [
        STUBS / t for t in {"unix", *BOARD_STUBS, *(b.stubs for b in harness.BOARD_TARGETS.values())}]
    absent = [str(p.relative_to(REPO)) for p in needed if not p.exists()]
    if absent:
        harness.unavailable(f"MicroPython stubs missing ({', '.join(absent)}): run make .stubs/.installed")


def make_view(kind: str, dest: Path) -> Path:
    """A MYPYPATH dir for a target: symlinks to the chosen stub modules, plus _mpy_shed
    (the stubs' shared helpers) with the ticks-as-int overlay. kind "portable" = unix less
    HARDWARE less what any board port lacks; otherwise the .stubs/<kind> port as it is."""
    if kind == "portable":
        mods = _stub_modules(STUBS / "unix")
        for board in BOARD_STUBS:
            common = _stub_modules(STUBS / board)
            mods = {m: p for m, p in mods.items() if m in common}
        mods = {m: p for m, p in mods.items() if m not in HARDWARE}
    else:
        mods = _stub_modules(STUBS / kind)
    dest.mkdir(parents=True)
    for p in mods.values():
        (dest / p.name).symlink_to(p)
    shed = dest / "_mpy_shed"
    shed.mkdir()
    for p in (TYPESHED / "_mpy_shed").iterdir():
        if p.name != "time_mp.pyi":
            (shed / p.name).symlink_to(p)
    (shed / "time_mp.pyi").write_text(TICKS_AS_INT)
    return dest


def _relabel(text: str, stage: Path) -> str:
    text = text.replace(str(stage) + os.sep, "")
    return re.sub(r"(?m)^metal/(core|boards|host)/", r"\1/", text)


def run_mypy(stage: Path, target: str, args: list[str], *, view: Path | None) -> tuple[int, str]:
    env = dict(os.environ)
    env.pop("MYPYPATH", None)
    cmd = [sys.executable, "-m", "mypy", "--cache-dir", str(CACHE / f"metal-{target}"),
           "--show-error-codes", *args]
    if view is not None:
        env["MYPYPATH"] = str(view)
        cmd[3:3] = ["--config-file", str(MP_CONFIG), "--custom-typeshed-dir", str(TYPESHED)]
    else:
        cmd[3:3] = ["--config-file", str(REPO / "pyproject.toml")]
    proc = subprocess.run(cmd, cwd=stage, env=env, capture_output=True, text=True, timeout=300)
    shown = " ".join(cmd[3:])
    where = f"(cd {stage} && {'MYPYPATH=' + str(view) + ' ' if view else ''}mypy {shown})"
    return proc.returncode, f"{where}\n{_relabel(proc.stdout + proc.stderr, stage)}"


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return harness.stage_tree(tmp_path_factory.mktemp("typecheck-stage"), boards=harness.all_boards(), host=True)


@pytest.fixture(scope="module")
def views(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    _require_stubs()
    root = tmp_path_factory.mktemp("stub-views")
    kinds = {"portable", *BOARD_STUBS} | {b.stubs for b in harness.BOARD_TARGETS.values()} - {"unix"}
    return {k: make_view(k, root / k) for k in sorted(kinds)}


def _board_view(board: str) -> str:
    if harness.is_portable_board(board):
        return "portable"
    target = harness.board_target(board)
    if target is None:
        pytest.fail(f"boards/{board}: no stubs for it in mpvm.BOARD_TARGETS "
                    f"(known: {sorted(harness.BOARD_TARGETS)}); add it there", pytrace=False)
    return "portable" if target.stubs == "unix" else target.stubs


def test_core_against_portable_micropython_stubs(stage, views):
    rc, out = run_mypy(stage, "core", ["-p", "metal.core"], view=views["portable"])
    assert rc == 0, f"mypy (metal.core vs portable MicroPython stubs) failed:\n{out}"


@pytest.mark.parametrize("board", harness.all_boards())
def test_board_against_its_stubs(stage, views, board):
    kind = _board_view(board)
    pkg = f"metal.boards.{board}"
    rc, out = run_mypy(stage, f"board-{kind}", ["-p" if harness.board_path(board).is_dir() else "-m", pkg],
                       view=views[kind])
    assert rc == 0, f"mypy ({pkg} vs {kind} stubs) failed:\n{out}"


def test_host_against_cpython_typeshed(stage):
    rc, out = run_mypy(stage, "host", ["-p", "metal.host"], view=None)
    assert rc == 0, f"mypy (metal.host, CPython typeshed) failed:\n{out}"


def test_portable_view_keeps_board_apis_out(tmp_path, views):
    """The check can fail, and for the right reasons: in portable code, board-only and
    CPython-only imports are errors; what every port has is fine; ticks are ints."""
    pkg = tmp_path / "metal_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "leak.py").write_text(
        "import machine\n"  # 1: hardware
        "import rp2\n"  # 2: one port only
        "import socket\n"  # 3: not on every board
        "import dataclasses\n"  # 4: CPython only
        "import time, micropython, gc, struct, array\n"  # 5: fine
        "def tick(now):\n"
        "    t = time.ticks_add(now, 10)\n"  # 7: fine (int ticks)
        "    return time.ticks_diff(t, 5) + gc.mem_alloc() + micropython.const(3)\n"
        "def bad():\n"
        "    return time.monotonic_ns()\n"  # 10: MicroPython's time has no monotonic_ns
    )
    rc, out = run_mypy(tmp_path, "probe", ["-p", "metal_probe"], view=views["portable"])
    lines = {int(m.group(1)) for m in re.finditer(r"metal_probe/leak\.py:(\d+): error", out)}
    assert rc != 0, out
    assert lines == {1, 2, 3, 4, 10}, out


def test_board_view_allows_its_hardware(tmp_path, views):
    pkg = tmp_path / "metal_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "pins.py").write_text("import machine\nimport rp2\nLED = machine.Pin(25, machine.Pin.OUT)\n"
                                 "sm = rp2.StateMachine(0)\n")
    rc, out = run_mypy(tmp_path, "probe-rp2", ["-p", "metal_probe"], view=views["rp2"])
    assert rc == 0, out
    rc, out = run_mypy(tmp_path, "probe-esp32", ["-p", "metal_probe"], view=views["esp32"])
    assert rc != 0 and "rp2" in out, out  # no rp2 module on an ESP32
