"""The distribution: one wheel, one import namespace.

Builds the wheel from a clean copy of the tree, installs it with its dependencies into a
fresh venv, and there imports every module of metal.core / metal.host / metal.boards
(walked from the installed package dirs) and runs `metal --help`. Also: nothing generic
(`core`, `host`, `boards`) lands top-level in site-packages, `metal` stays a namespace
package, and every source module of the tree made it into the wheel (a subpackage missing
from pyproject.toml's package list shows up here). The editable install in the dev venv
gets the same import walk. Needs PyPI (pip's configured indexes) for the dependencies.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import mpvm as harness

pytestmark = pytest.mark.timeout(240)

REPO = harness.REPO
GENERIC = {"core", "host", "boards"}
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "node_modules", ".stubs", ".mypy_cache", ".pytest_cache", ".hypothesis",
    ".state", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", "*.mpy")

# Run by the interpreter under test: walks metal.{core,host,boards}.__path__, imports every
# module (of the boards only the portable modules; the others import `machine`), prints JSON.
WALK = r"""
import importlib, json, os, sys, traceback
portable = set(json.loads(sys.argv[1]))
out = {"modules": [], "failed": {}, "files": {}, "metal_path": []}
import metal
out["metal_path"] = list(metal.__path__)
out["metal_file"] = getattr(metal, "__file__", None)
for sub in ("core", "host", "boards"):
    pkg = importlib.import_module("metal." + sub)
    for root in pkg.__path__:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for f in sorted(filenames):
                if not f.endswith(".py"):
                    continue
                parts = os.path.relpath(os.path.join(dirpath, f), root)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts.pop()
                out["modules"].append(".".join(["metal", sub, *parts]))
for name in out["modules"]:
    parts = name.split(".")
    if parts[1] == "boards" and len(parts) > 2 and name not in portable:
        continue
    try:
        mod = importlib.import_module(name)
        out["files"][name] = getattr(mod, "__file__", None)
    except BaseException:
        out["failed"][name] = traceback.format_exc()
print(json.dumps(out))
"""


def expected_modules(root: Path = REPO) -> list[str]:
    """The modules the tree at root has (the wheel is built from a copy: compare with that
    copy, as colleagues may be adding files meanwhile)."""
    return sorted(harness.module_names(root / "core", "metal.core")
                  + harness.module_names(root / "host", "metal.host")
                  + harness.module_names(root / "boards", "metal.boards"))


def _run(cmd: list[str], timeout: float = 180, **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} failed (rc={proc.returncode}):\n"
                    f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}", pytrace=False)
    return proc


def walk_and_import(python: Path | str) -> dict:
    portable = [m for b in harness.all_boards() for m in harness.portable_modules(b)]
    proc = _run([str(python), "-c", WALK, json.dumps(portable)], timeout=120,
                cwd=os.path.expanduser("~") if os.path.isdir(os.path.expanduser("~")) else "/")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _assert_walk(got: dict, where: str, before: list[str], after: list[str]) -> None:
    """before/after: the tree's modules listed before and after the walk (the tree may be
    edited meanwhile): what was there before must be found, nothing beyond what is there after."""
    assert got["failed"] == {}, f"imports failed in {where}:\n" + "\n".join(
        f"--- {name}\n{tb}" for name, tb in got["failed"].items())
    missing = sorted(set(before) - set(got["modules"]))
    extra = sorted(set(got["modules"]) - set(after))
    assert not missing, (f"modules of the tree missing in {where} (add their packages to "
                         f"[tool.setuptools] packages in pyproject.toml): {missing}")
    assert not extra, f"modules in {where} that the tree does not have: {extra}"
    assert got["metal_file"] is None, f"metal must stay a namespace package, got {got['metal_file']}"


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tree: the build neither writes build/ or *.egg-info into the shared
    tree nor picks up stale files from an old build/."""
    src = tmp_path_factory.mktemp("packaging") / "src"
    shutil.copytree(REPO, src, ignore=COPY_IGNORE, symlinks=True)
    return src


@pytest.fixture(scope="module")
def wheel(src: Path) -> Path:
    dist = src.parent / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(src)])
    wheels = list(dist.glob("metal-*.whl"))
    assert len(wheels) == 1, f"expected one metal wheel, got {[w.name for w in dist.iterdir()]}"
    return wheels[0]


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    env_dir = tmp_path_factory.mktemp("venv") / "v"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)])
    py = env_dir / "bin" / "python"
    # This venv's pip installs into the new one (no ensurepip: faster).
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet", str(wheel)], timeout=240)
    return env_dir


def test_wheel_holds_only_the_metal_namespace(wheel: Path, src: Path):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    top = {n.split("/")[0] for n in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert len(dist_info) == 1
    assert top - dist_info == {"metal"}, f"top-level entries in the wheel: {sorted(top)}"
    assert "metal/__init__.py" not in names, "metal must stay a namespace package (no __init__.py)"
    packaged = set()
    for n in names:
        if n.endswith(".py") and n.startswith("metal/"):
            parts = n[:-3].split("/")
            if parts[-1] == "__init__":
                parts.pop()
            packaged.add(".".join(parts))
    missing = sorted(set(expected_modules(src)) - packaged)
    assert not missing, ("source modules not in the wheel (add their packages to [tool.setuptools] "
                         f"packages in pyproject.toml): {missing}")
    entry_points = z_read(wheel, f"{next(iter(dist_info))}/entry_points.txt")
    assert "metal = metal.host.cli.main:cli" in entry_points


def z_read(wheel: Path, name: str) -> str:
    with zipfile.ZipFile(wheel) as z:
        return z.read(name).decode()


def test_fresh_venv_imports_everything(venv: Path, src: Path):
    mods = expected_modules(src)
    _assert_walk(walk_and_import(venv / "bin" / "python"), "the installed wheel", mods, mods)


def test_fresh_venv_site_packages_has_nothing_generic(venv: Path):
    (site,) = list((venv / "lib").glob("python3*/site-packages"))
    entries = {p.name for p in site.iterdir()}
    assert "metal" in entries
    assert not GENERIC & entries, f"generic top-level names in site-packages: {sorted(GENERIC & entries)}"
    (dist_info,) = [p for p in site.glob("metal-*.dist-info")]
    record_tops = {line.split(",")[0].split("/")[0] for line in (dist_info / "RECORD").read_text().splitlines()
                   if line and not line.startswith("..")}
    assert record_tops == {"metal", dist_info.name}, f"the metal wheel installed: {sorted(record_tops)}"


def test_fresh_venv_cli_help(venv: Path):
    proc = _run([str(venv / "bin" / "metal"), "--help"], timeout=60)
    assert "Usage:" in proc.stdout and "metal" in proc.stdout, proc.stdout


def test_editable_install_imports_everything():
    before = expected_modules()
    got = walk_and_import(sys.executable)
    _assert_walk(got, "the editable install", before, expected_modules())
    for name, f in got["files"].items():
        assert f is None or Path(f).resolve().is_relative_to(REPO), f"{name} imported from {f}, not the tree"
    exe = Path(sys.executable).parent / "metal"
    if not exe.exists():
        pytest.fail(f"no `metal` script next to {sys.executable}: is the editable install there? "
                    "(make install)", pytrace=False)
    proc = _run([str(exe), "--help"], timeout=60)
    assert "Usage:" in proc.stdout, proc.stdout
