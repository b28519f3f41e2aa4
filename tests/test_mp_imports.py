"""Every firmware module (metal.core.*, portable boards) imports under both MicroPython VMs.

The module list is walked from the tree at collection time, so a new module is covered
without touching this file. All modules of one VM are imported in a single VM run (start-up
costs ~0.5 s on WASM); each module still gets its own test item and its own traceback.
"""

from __future__ import annotations

import pytest

import mpvm as harness

MODULES = harness.firmware_modules()

# Fresh import of each module in turn; a failure is reported with its traceback between
# markers, then the module and whatever it half-imported are dropped from sys.modules so
# the next one starts clean.
_SCRIPT = """
import gc
import sys

MODULES = {modules!r}

for name in MODULES:
    before = set(sys.modules)
    try:
        __import__(name)
        print("@@ok", name)
    except BaseException as e:
        print("@@fail", name)
        sys.print_exception(e, sys.stdout)
        print("@@end")
        for m in list(sys.modules):
            if m not in before:
                del sys.modules[m]
    gc.collect()
print("@@done")
"""

_results: dict[str, dict[str, str | None]] = {}


def _import_all(vm: harness.VM) -> dict[str, str | None]:
    """module -> None (imported) or the failure text; one VM run per VM per session."""
    if vm.name in _results:
        return _results[vm.name]
    r = vm.run(_SCRIPT.format(modules=MODULES), timeout=120)
    if r.timed_out or "@@done" not in r.lines:
        raise AssertionError("the import run did not finish:\n" + r.describe())
    got: dict[str, str | None] = {}
    lines = iter(r.lines)
    for line in lines:
        if line.startswith("@@ok "):
            got[line[5:]] = None
        elif line.startswith("@@fail "):
            tb = []
            for inner in lines:
                if inner == "@@end":
                    break
                tb.append(inner)
            got[line[7:]] = "\n".join(tb)
    _results[vm.name] = got
    return got


def test_module_list_is_walked_from_the_tree():
    # Guards against a vacuous pass: the walk must find what is known to be there.
    assert "metal.core" in MODULES
    assert "metal.core.compat" in MODULES
    assert "metal.core.proto" in MODULES
    assert "metal.core.drivers" in MODULES
    assert "metal.boards.sim" in MODULES
    assert len(MODULES) == len(set(MODULES))


@pytest.mark.parametrize("module", MODULES)
def test_imports_under_micropython(mpvm, module):
    got = _import_all(mpvm)
    assert module in got, f"{module} was never attempted in the {mpvm.name} VM run"
    failure = got[module]
    if failure is not None:
        pytest.fail(f"import {module} failed in the MicroPython {mpvm.name} VM:\n{failure}",
                    pytrace=False)
