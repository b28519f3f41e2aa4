"""The MicroPython VM harness itself (tests/mpvm): output, exit status, word size, heap
probes, and that a hung VM is killed rather than hanging the suite."""

from __future__ import annotations

import re
import time

import pytest

import mpvm as harness


def test_print_and_implementation(mpvm):
    r = mpvm.run("""
        import sys
        print("hello from", sys.implementation.name)
        print("lines", 1, 2)
    """).check()
    assert r.lines == ["hello from micropython", "lines 1 2"]
    assert r.stderr == ""


def test_word_size(mpvm):
    r = mpvm.run("""
        import sys
        print(sys.maxsize)
        # the largest small int: a multiplication past it needs a heap-allocated big int
        import micropython
        big = (1 << 29) if sys.maxsize == 2**31 - 1 else (1 << 61)
        print(big - 1 + big)
    """).check()
    maxsize, small_max = (int(x) for x in r.lines)
    if mpvm.name == "wasm":
        # The 32-bit VM is the one that behaves like a microcontroller.
        assert maxsize == 2**31 - 1
        assert small_max == 2**30 - 1
        assert mpvm.word_bits == 32
    else:
        assert maxsize == 2**63 - 1
        assert small_max == 2**62 - 1
        assert mpvm.word_bits == 64


def test_firmware_tree_is_importable(mpvm):
    r = mpvm.run("""
        from metal.core import compat
        from metal.core.proto import MAX_WIRE
        import metal.boards.sim
        print(compat.IS_MICROPYTHON, MAX_WIRE, compat.ticks_diff(compat.ticks_add(5, 10), 5))
    """).check()
    assert r.lines == ["True 256 10"]


def test_exception_gives_nonzero_rc_and_traceback(mpvm):
    r = mpvm.run("""
        print("before")
        def inner():
            raise ValueError("boom 42")
        inner()
        print("never")
    """)
    assert not r.timed_out
    assert r.rc != 0
    assert r.lines == ["before"]
    assert "Traceback (most recent call last)" in r.stderr
    assert "ValueError: boom 42" in r.stderr
    assert "in inner" in r.stderr
    with pytest.raises(AssertionError, match="boom 42"):
        r.check()


def test_prelude_keeps_script_line_numbers(mpvm):
    r = mpvm.run("""
        print(callable(measure_allocs))
        raise KeyError("line 3")
    """, prelude=True)
    assert r.rc == 1 and r.lines == ["True"], r.describe()
    assert re.search(r'script\.py", line 3', r.stderr), r.stderr


def test_sys_exit_status(mpvm):
    r = mpvm.run("import sys\nprint('x')\nsys.exit(3)\n")
    assert (r.rc, r.lines, r.timed_out) == (3, ["x"], False)
    assert mpvm.run("import sys\nsys.exit()\n").rc == 0


def test_stdin_is_a_byte_pipe(mpvm):
    r = mpvm.run("""
        import sys
        print(repr(sys.stdin.readline()))
        print(repr(sys.stdin.read(3)))
    """, stdin=b"first line\nabcdef").check()
    assert r.lines == ["'first line\\n'", "'abc'"]


def test_memory_error_under_heap_lock_is_reported(mpvm):
    # The script unlocks in `finally`, so even the WASM VM reports the error and exits.
    r = mpvm.run("""
        import micropython
        print("locking")
        micropython.heap_lock()
        try:
            x = [1, 2, 3]
        finally:
            micropython.heap_unlock()
        print("unreachable")
    """, timeout=30)
    assert not r.timed_out, r.describe()
    assert r.rc != 0
    assert r.lines == ["locking"]
    assert "MemoryError" in r.stderr


def test_measure_allocs_sees_allocations(mpvm):
    r = mpvm.run("""
        noop = lambda: None
        alloc = lambda: [1, 2]
        class C:
            def m(self):
                return 1
        c = C()
        bound = c.m                       # cached bound method: calling it is free
        def raise_and_catch():            # not caught by heap_lock, seen by mem_alloc
            try:
                raise ValueError
            except ValueError:
                pass
        for name, fn in (("noop", noop), ("alloc", alloc), ("bound", bound), ("raise", raise_and_catch)):
            nbytes, err = measure_allocs(fn, 50)
            print(name, nbytes, type(err).__name__)
    """, prelude=True).check()
    got = {name: (int(nbytes), err) for name, nbytes, err in (line.split() for line in r.lines)}
    assert got["noop"] == (0, "NoneType")
    assert got["bound"] == (0, "NoneType")
    assert got["alloc"][1] == "MemoryError"
    assert got["alloc"][0] >= 50 * 8
    assert got["raise"][1] == "NoneType"
    assert got["raise"][0] > 0


def test_infinite_loop_is_killed_by_timeout(mpvm):
    t0 = time.monotonic()
    r = mpvm.run("""
        print("spinning")
        while True:
            pass
    """, timeout=2)
    elapsed = time.monotonic() - t0
    assert r.timed_out
    assert not r.ok
    assert elapsed < 12
    assert "timed out" in r.describe()
    # Output written before the kill is kept (it says how far a hung script got).
    assert r.lines == ["spinning"]


@pytest.mark.micropython
def test_wasm_unguarded_memory_error_hangs_and_is_killed():
    """The measured WASM behaviour the guard and the timeout exist for: without the driver's
    guard an uncaught MemoryError under heap_lock never returns. If this starts passing
    quickly, the VM was fixed and the guard can go."""
    if harness.missing("wasm"):
        harness.unavailable(harness.missing("wasm") or "")
    r = harness.run("wasm", """
        import micropython
        print("locking")
        micropython.heap_lock()
        x = [1, 2, 3]
    """, timeout=3, guard=False)
    assert r.timed_out, r.describe()
    assert r.lines == ["locking"]  # it got as far as the allocation, then hung


def test_unknown_vm_is_rejected():
    with pytest.raises(ValueError):
        harness.run("cpython", "print(1)")
    with pytest.raises(ValueError):
        harness.missing("cpython")


def test_stage_tree_layout(tmp_path):
    root = harness.stage_tree(tmp_path, host=True)
    assert (root / "metal" / "core" / "compat.py").is_file()
    assert (root / "metal" / "boards" / "__init__.py").is_file()
    assert (root / "metal" / "boards" / "sim" / "__init__.py").is_file()
    assert (root / "metal" / "host" / "cli" / "main.py").is_file()
    assert not (root / "metal" / "__init__.py").exists()  # namespace package, as on a board
    assert "sim" in harness.portable_boards()
    names = harness.firmware_modules()
    assert "metal.core.compat" in names and "metal.boards.sim" in names
    assert all(not n.startswith("metal.host") for n in names)


def test_portable_marker(tmp_path, monkeypatch):
    boards = tmp_path / "boards"
    (boards / "sim" / "sub").mkdir(parents=True)
    (boards / "sim" / "__init__.py").write_text("")
    (boards / "sim" / "plant.py").write_text("")
    (boards / "sim" / "sub" / "__init__.py").write_text("")
    (boards / "rp2040").mkdir()
    (boards / "rp2040" / "__init__.py").write_text('"""pins"""\n# metal: portable\n')
    (boards / "rp2040" / "board.py").write_text("# metal: portable\nLED = 25\n")
    (boards / "rp2040" / "hal.py").write_text("import machine\n")
    (boards / "esp32").mkdir()
    (boards / "esp32" / "__init__.py").write_text("import machine  # metal: portable? no\n")
    (boards / "bench.py").write_text("# metal: portable\n")
    import metal.host.mpvm as impl  # where the functions look BOARDS up

    monkeypatch.setattr(impl, "BOARDS", boards)
    assert harness.all_boards() == ["bench", "esp32", "rp2040", "sim"]
    assert harness.portable_modules("sim") == ["metal.boards.sim", "metal.boards.sim.plant", "metal.boards.sim.sub"]
    assert harness.portable_modules("rp2040") == ["metal.boards.rp2040", "metal.boards.rp2040.board"]
    assert harness.portable_modules("esp32") == []
    assert harness.portable_modules("bench") == ["metal.boards.bench"]
    assert harness.portable_boards() == ["bench", "rp2040", "sim"]
    assert [b for b in harness.all_boards() if harness.is_portable_board(b)] == ["bench", "sim"]
    stage = harness.stage_tree(tmp_path / "stage")
    assert sorted(p.name for p in (stage / "metal" / "boards").iterdir()) == [
        "__init__.py", "bench.py", "rp2040", "sim"]
