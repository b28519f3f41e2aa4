"""Run the simulated board's firmware over stdin/stdout, in real time.

    python -m metal.boards.sim.main [--uid UID] [--seed N]
    micropython -m metal.boards.sim.main ...   (MICROPYPATH holding metal/)

stdin carries host -> board bytes, stdout board -> host bytes: the wire
protocol and nothing else (diagnostics go to stderr). ``metal sim`` wraps
this process and relays its stdio to a pty or a TCP socket; the firmware is
the same on CPython and on the MicroPython unix port.

A reboot command restarts the firmware in-process with a new boot id, like a
board coming out of reset (the plant keeps its temperatures).
"""

import sys

from metal.boards.sim.board import make_config
from metal.boards.sim.hal import SimHal
from metal.core.compat import IS_MICROPYTHON, ticks_us
from metal.core.firmware import Firmware

if IS_MICROPYTHON:
    import select

    _poll = select.poll()
    _poll.register(sys.stdin, select.POLLIN)
    _stdin = sys.stdin.buffer
    _stdout = sys.stdout.buffer
    _one = bytearray(1)

    def _read_into(buf, start, max_n):
        # readinto() on this port waits for the full count: take one byte per
        # readable poll so a tick never blocks.
        n = 0
        while n < max_n and _poll.poll(0):
            if _stdin.readinto(_one, 1) != 1:
                raise SystemExit(0)  # the host side closed the pipe
            buf[start + n] = _one[0]
            n += 1
        return n

    def _write(data):
        _stdout.write(data)
        _stdout.flush()

    def _boot_id():
        import random

        random.seed(ticks_us())
        return random.getrandbits(30)

else:
    import os
    import select as _select

    def _read_into(buf, start, max_n):
        r, _, _ = _select.select([0], [], [], 0)
        if not r:
            return 0
        data = os.read(0, max_n)
        if not data:
            raise SystemExit(0)
        n = len(data)
        buf[start : start + n] = data
        return n

    def _write(data):
        view = memoryview(data)
        while view:
            w = os.write(1, view)
            view = view[w:]

    def _boot_id():
        return int.from_bytes(os.urandom(4), "big") & 0x3FFFFFFF


class Reboot(Exception):
    pass


class StdioSimHal(SimHal):
    """SimHal whose serial port is this process's stdin/stdout."""

    def __init__(self, config):
        SimHal.__init__(self, config)

    def serial_read(self, buf, start, max_n):
        return _read_into(buf, start, max_n)

    def serial_write(self, buf, start, n):
        _write(bytes(buf[start : start + n]))
        return n

    def reboot(self):
        raise Reboot()


def main(argv):
    uid = "sim-0001"
    i = 0
    while i < len(argv):
        if argv[i] == "--uid" and i + 1 < len(argv):
            uid = argv[i + 1]
            i += 2
        else:
            sys.stderr.write("usage: main.py [--uid UID]\n")
            return 2
    config = make_config()
    hal = StdioSimHal(config)
    cause = 0  # power-on
    while True:
        fw = Firmware(config, hal, _boot_id(), uid, reset_cause=cause)
        try:
            fw.loop.run_forever()
        except Reboot:
            cause = 1  # commanded reset; the new Firmware disables every rail first


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
