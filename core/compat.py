"""The few things that differ between MicroPython and CPython.

Everything in ``metal.core`` imports these names from here instead of from
``micropython``/``time`` so the same source runs on a board, in the MicroPython
VMs under test and in CPython (simulator, bridge).

On CPython the tick clock wraps at 2**30 like a 32-bit board, so wrap-around
bugs show up in host-side tests too.
"""

import sys

IS_MICROPYTHON = sys.implementation.name == "micropython"

if IS_MICROPYTHON:
    from micropython import const  # noqa: F401
    import micropython as _mp
    import time as _time

    heap_lock = _mp.heap_lock
    heap_unlock = _mp.heap_unlock
    ticks_ms = _time.ticks_ms
    ticks_us = _time.ticks_us
    ticks_add = _time.ticks_add
    ticks_diff = _time.ticks_diff
else:
    import time as _time

    _PERIOD = 1 << 30
    _MASK = _PERIOD - 1
    _HALF = _PERIOD >> 1

    def const(x):  # type: ignore[no-redef]
        return x

    def heap_lock():  # CPython has no allocation lock; tests prove it on MicroPython.
        return 0

    def heap_unlock():
        return 0

    def ticks_ms():
        return int(_time.monotonic_ns() // 1_000_000) & _MASK

    def ticks_us():
        return int(_time.monotonic_ns() // 1_000) & _MASK

    def ticks_add(ticks, delta):
        return (ticks + delta) & _MASK

    def ticks_diff(a, b):
        d = (a - b) & _MASK
        if d >= _HALF:
            d -= _PERIOD
        return d
