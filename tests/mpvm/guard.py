# MicroPython, not CPython: the wrapper both VMs run a test script in (mpvm.run, guard=True).
#
# It runs the script as __main__ and, if an exception escapes, first unlocks the heap
# completely (an uncaught MemoryError under heap_lock hangs the WASM VM, and nothing can
# format a traceback while the heap is locked), then prints the traceback on stderr (the
# unix port would print it on stdout) and exits with status 1. SystemExit passes through.
#
# unix:  micropython guard.py SCRIPT      wasm: wasm_driver.mjs runs this text, then
#                                               _metal_guard(SCRIPT)
import sys

import micropython


def _metal_unlock():
    # heap_lock() returns None on these VMs; heap_unlock() returns the depth left and at
    # depth 0 it would wrap the counter, so lock once more and unlock down to 0.
    micropython.heap_lock()
    while micropython.heap_unlock():
        pass


def _metal_guard(path):
    with open(path) as f:
        src = f.read()
    code = compile(src, path, "exec")
    del src
    try:
        exec(code, {"__name__": "__main__", "__file__": path})
    except SystemExit:
        _metal_unlock()
        raise
    except BaseException as e:  # noqa: B036 - report everything, like the top level would
        _metal_unlock()
        sys.print_exception(e, sys.stderr)
        sys.exit(1)


if __name__ == "__main__" and len(sys.argv) > 1:
    _metal_script = sys.argv[1]
    del sys.argv[0]
    _metal_guard(_metal_script)
