"""MicroPython scripts shared by the VM tests and ``metal bench``.

Each function returns the text of a script that runs inside a MicroPython VM
with ``metal`` on its path (see ``metal.host.mpvm``). The scripts print
``key value`` lines that the callers parse.
"""

# The sim board's firmware plus a host-side link inside the same VM, talking
# through the SimHal byte rings: telemetry out, commands in (valid, rejected,
# malformed targets), results and events out, heartbeats. Everything the host
# side does on the measured path is allocation-free too, so a non-zero count
# belongs to the firmware.
FIRMWARE_SCRIPT = '''
import gc
import micropython
from array import array
from metal.boards.sim.board import make_config
from metal.boards.sim.hal import SimHal
from metal.core.firmware import Firmware
from metal.core.link import EV_MESSAGE, Link, ROLE_HOST, ST_CONNECTED
from metal.core.cbor import Encoder
from metal.core.compat import ticks_diff, ticks_us
from metal.core import proto as P

cfg = make_config()
hal = SimHal(cfg)
fw = Firmware(cfg, hal, 12345, "sim-vm")
host = Link(ROLE_HOST, session_start=77)
inbuf = bytearray(512)
outbuf = bytearray(256)
pay = bytearray(64)
enc = Encoder(pay)
rx_count = array("i", [0] * 16)
st = array("i", [0] * 8)  # 0 now_us, 1 cmd id, 2 cmds sent, 3 ticks
out_line = 0
for i in range(len(cfg.gpio)):
    if cfg.gpio[i].direction == 1 and not cfg.gpio[i].owned:
        out_line = i
        break
durations = array("i", [0] * (TIMED_TICKS or 1))
tick = fw.loop.tick
h_feed = host.feed
h_poll = host.poll
h_send = host.send
rx_ring = hal.rx
tx_ring = hal.tx


def send_cmd(op, target, arg):
    enc.reset(0)
    enc.map(4)
    enc.uint(0)
    enc.uint(st[1])
    enc.uint(1)
    enc.uint(op)
    enc.uint(2)
    enc.int(target)
    enc.uint(3)
    enc.int(arg)
    if h_send(P.T_CMD, pay, 0, enc.pos):
        st[1] += 1
        st[2] += 1


def host_side(now_ms, k):
    n = tx_ring.get_into(inbuf, 0, 512)
    pos = 0
    while pos < n:
        pos = h_feed(inbuf, pos, n, now_ms)
        if host.ev == EV_MESSAGE:
            rx_count[host.rx_type] += 1
    if host.state == ST_CONNECTED:
        if k % 50 == 0:
            enc.reset(0)
            enc.map(1)
            enc.uint(0)
            enc.uint(now_ms)
            h_send(P.T_HEARTBEAT, pay, 0, enc.pos)
        if k % 7 == 0:
            c = (k // 7) % 6
            if c == 0:
                send_cmd(P.OP_ZONE_MANUAL, 0, 400 + k % 300)
            elif c == 1:
                send_cmd(P.OP_ZONE_AUTO, 0, 0)
            elif c == 2:
                send_cmd(P.OP_GPIO_WRITE, out_line, k & 1)
            elif c == 3:
                send_cmd(P.OP_RAIL_ON if k & 8 else P.OP_RAIL_OFF, 5, 0)
            elif c == 4:
                send_cmd(P.OP_ZONE_MANUAL, 1, 5000)
            else:
                send_cmd(P.OP_RAIL_ON, 99, 0)
    while True:
        m = h_poll(now_ms, outbuf, 0)
        if m <= 0:
            break
        rx_ring.put_from(outbuf, 0, m)


try:
    import js  # the WASM port: ticks_us has 1 ms resolution there, performance.now() does not

    _perf = js.performance

    def elapsed_us(t0):
        return int((_perf.now() - t0) * 1000)

    def clock():
        return _perf.now()

except (ImportError, AttributeError):
    clock = ticks_us

    def elapsed_us(t0):
        return ticks_diff(ticks_us(), t0)


def run(n, timed):
    k0 = st[3]
    for k in range(k0, k0 + n):
        t = st[0]
        host_side(t // 1000, k)
        if timed:
            t0 = clock()
            tick(t)
            durations[k - k0] = elapsed_us(t0)
        else:
            tick(t)
        st[0] = t + 10000
    st[3] = k0 + n


st[1] = 1
run(WARMUP, 0)  # handshake, DESCRIBE, first telemetry: may allocate on the host side
gc.collect()
gc.disable()
before = gc.mem_alloc()
err = None
micropython.heap_lock()
try:
    run(TICKS, 0)
except MemoryError as e:
    err = e
finally:
    micropython.heap_unlock()
after = gc.mem_alloc()
gc.enable()
print("memory_error", 1 if err is not None else 0)
print("alloc_bytes", after - before)
print("ticks", TICKS)
print("cmds_sent", st[2])
print("results", rx_count[P.T_RESULT])
print("events", rx_count[P.T_EVENT])
print("telemetry", rx_count[P.T_TELEMETRY])
print("heartbeats", rx_count[P.T_HEARTBEAT])
print("connected", 1 if host.state == ST_CONNECTED else 0)
print("board_commands", fw.link.commands)
print("board_malformed", fw.link.malformed)
print("describe_parts", rx_count[P.T_DESCRIBE])
print("host_lost", fw.link.host_lost)

if TIMED_TICKS:
    gc.collect()
    run(TIMED_TICKS, 1)
    ds = sorted(durations)
    print("tick_us_mean", sum(durations) // TIMED_TICKS)
    print("tick_us_p50", ds[TIMED_TICKS // 2])
    print("tick_us_p99", ds[(TIMED_TICKS * 99) // 100])
    print("tick_us_max", ds[TIMED_TICKS - 1])


def calib():
    x = 0
    for i in range(100000):
        x = x ^ i
    return x


gc.collect()
t0 = clock()
calib()
print("calibration_us", elapsed_us(t0))
'''


def firmware_script(ticks: int, timed_ticks: int = 0, warmup: int = 300) -> str:
    """``ticks`` ticks under heap_lock (allocation count), then ``timed_ticks``
    ticks timed one by one (unlocked: the WASM clock read allocates a float)."""
    return (f"TICKS = {int(ticks)}\nTIMED_TICKS = {int(timed_ticks)}\nWARMUP = {int(warmup)}\n"
            + FIRMWARE_SCRIPT)


def parse(stdout: str) -> dict[str, int]:
    """``key value`` lines into a dict of ints (other lines are ignored)."""
    out: dict[str, int] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out
