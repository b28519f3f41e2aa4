"""Shared pytest configuration: command-line options, markers, fixtures.

Sections: options & markers | MicroPython VMs. Keep each fixture small; helpers live in
tests/mpvm (importable as ``mpvm``: tests/ is on pythonpath, see pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import mpvm as harness

# -- options & markers ------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run tests marked slow (soaks, full benchmark runs)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip_slow)


# -- MicroPython VMs ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mpvm_stage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<tmp>/metal/{core,boards/<portable>}``: what a board has in /lib (symlinks)."""
    return harness.stage_tree(tmp_path_factory.mktemp("mpvm-stage"))


@pytest.fixture(params=[pytest.param(vm, marks=pytest.mark.micropython) for vm in harness.VMS])
def mpvm(request: pytest.FixtureRequest, mpvm_stage: Path) -> harness.VM:
    """One MicroPython VM per test run: the test runs once under "unix" and once under
    "wasm" (marked ``micropython``). ``mpvm.run(script, timeout=60, heapsize=512*1024,
    prelude=False) -> Result``. A missing VM skips the test, or fails it when CI=true."""
    reason = harness.missing(request.param)
    if reason:
        harness.unavailable(reason)
    return harness.VM(request.param, mpvm_stage)
