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
from array import array
from metal.boards.sim.board import make_config
from metal.boards.sim.hal import SimHal
from metal.core.firmware import Firmware
from metal.core.link import EV_MESSAGE, Link, ROLE_HOST, ST_CONNECTED
from metal.core.cbor import Encoder
from metal.core.compat import IS_MICROPYTHON, ticks_diff, ticks_us
from metal.core import proto as P

if IS_MICROPYTHON:
    import micropython

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
        if CMD_EVERY and k % CMD_EVERY == 0:
            c = (k // CMD_EVERY) % 6
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


def run(n, timed, at=0):
    k0 = st[3]
    for k in range(k0, k0 + n):
        t = st[0]
        host_side(t // 1000, k)
        if timed:
            t0 = clock()
            tick(t)
            durations[at + k - k0] = elapsed_us(t0)
        else:
            tick(t)
        st[0] = t + 10000
    st[3] = k0 + n


st[1] = 1
run(WARMUP, 0)  # handshake, DESCRIBE, first telemetry: may allocate on the host side


def locked_run(n):
    # Measured inside a function: a new module-level name stored between the two
    # mem_alloc() reads could grow the globals dict and show up as an allocation.
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    failed = 0
    micropython.heap_lock()
    try:
        run(n, 0)
    except MemoryError:
        failed = 1
    finally:
        micropython.heap_unlock()
    grown = gc.mem_alloc() - before
    gc.enable()
    print("memory_error", failed)
    print("alloc_bytes", grown)
    print("ticks", n)


if IS_MICROPYTHON and TICKS:
    locked_run(TICKS)
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

def calib():
    x = 0
    for i in range(100000):
        x = x ^ i
    return x


def calibrate():
    # best of 2 back to back: one run of the loop on the WASM VM varies by up to 2x
    best = 0
    for _ in range(2):
        t0 = clock()
        calib()
        d = elapsed_us(t0)
        if best == 0 or d < best:
            best = d
    return best


# The timed ticks run in chunks with a calibration after each chunk, and each tick's
# cost is also taken relative to its own chunk's calibration: this machine (and a
# shared CI runner) drifts between speed regimes over seconds, and a ratio of two
# figures measured minutes apart would mostly measure that drift.
CHUNK = 250
if TIMED_TICKS:
    scale = array("i", [0] * TIMED_TICKS)
    cals = []
    gc.collect()
    done = 0
    while done < TIMED_TICKS:
        n = CHUNK if TIMED_TICKS - done > CHUNK else TIMED_TICKS - done
        run(n, 1, done)
        c = calibrate()
        cals.append(c)
        for j in range(done, done + n):
            scale[j] = c
        done += n
    ds = sorted(durations)
    print("tick_us_mean", sum(durations) // TIMED_TICKS)
    print("tick_us_p50", ds[TIMED_TICKS // 2])
    print("tick_us_p99", ds[(TIMED_TICKS * 99) // 100])
    print("tick_us_max", ds[TIMED_TICKS - 1])
    # per-tick ratio to its chunk's calibration, in millionths
    rs = sorted([durations[j] * 1000000 // scale[j] for j in range(TIMED_TICKS)])
    print("tick_ratio_p50_e6", rs[TIMED_TICKS // 2])
    print("tick_ratio_p99_e6", rs[(TIMED_TICKS * 99) // 100])
    cals.sort()
    print("calibration_us", cals[len(cals) // 2])
    print("calibration_us_min", cals[0])

    # The machine's own spread: one fixed piece of work about a tick's size
    # (700 loop turns, ~0.007 of the calibration), timed like the ticks. Its
    # p99 / p50 is what the same work costs at p99 here, code aside.
    def fixed_work():
        x = 0
        for i in range(700):
            x = x ^ i
        return x

    NOISE_N = 1000
    nd = array("i", [0] * NOISE_N)
    for j in range(NOISE_N):
        t0 = clock()
        fixed_work()
        nd[j] = elapsed_us(t0)
    nds = sorted(nd)
    print("noise_p99_over_p50_e3", nds[NOISE_N * 99 // 100] * 1000 // (nds[NOISE_N // 2] or 1))
else:
    print("calibration_us", calibrate())
'''


def firmware_script(ticks: int, timed_ticks: int = 0, warmup: int = 300,
                    command_every: int = 7) -> str:
    """``ticks`` ticks under heap_lock (allocation count), then ``timed_ticks``
    ticks timed one by one (unlocked: the WASM clock read allocates a float).
    The host sends a command every ``command_every`` ticks (0: none at all:
    heartbeats and TELEMETRY only)."""
    return (f"TICKS = {int(ticks)}\nTIMED_TICKS = {int(timed_ticks)}\nWARMUP = {int(warmup)}\n"
            f"CMD_EVERY = {int(command_every)}\n" + FIRMWARE_SCRIPT)


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


# Core codec cost on the reference sim board's TELEMETRY: encode = TelemetryEncoder
# (CBOR) + encode_frame (CRC, COBS, delimiter); decode = Deframer (COBS, CRC,
# header) + a full Decoder walk of the payload. Runs on CPython too.
CODEC_SCRIPT = '''
from metal.boards.sim.board import make_config
from metal.boards.sim.hal import SimHal
from metal.core.firmware import Firmware
from metal.core.frame import Deframer, encode_frame, SCRATCH_LEN
from metal.core.cbor import Decoder, K_ERROR, K_ARRAY, K_MAP
from metal.core.compat import ticks_us, ticks_diff
from metal.core import proto as P

try:
    import js

    _perf = js.performance

    def clock():
        return _perf.now()

    def elapsed_us(t0):
        return int((_perf.now() - t0) * 1000)

except (ImportError, AttributeError):
    clock = ticks_us

    def elapsed_us(t0):
        return ticks_diff(ticks_us(), t0)


cfg = make_config()
hal = SimHal(cfg)
fw = Firmware(cfg, hal, 1, "sim-bench")
fw.execute(P.OP_POWER_ON, 0, 0, 0)
t = 0
for _ in range(300):
    fw.loop.tick(t)
    t += 10000
tel = fw.telemetry
loop = fw.loop
scratch = bytearray(SCRATCH_LEN)
wire = bytearray(P.MAX_WIRE)
df = Deframer()
dec = Decoder()


def encode_once():
    n = tel.encode(fw.sensors, fw.fans, fw.power, fw.gpio.levels, 0, 0, fw.status_flags(),
                   loop.last_us, loop.window_max_us, loop.overruns, 0)
    return encode_frame(P.T_TELEMETRY, P.F_ACK, 7, 3, tel.buf, 0, n, scratch, wire, 0)


def decode_once(n):
    df.feed(wire, 0, n)
    if df.status != 0:
        return -1
    b = df.body
    s = df.payload_start
    dec.reset(b, s, s + df.payload_len)
    items = 0
    while dec.pos < dec.end:
        k = dec.next()
        if k == K_ERROR:
            return -1
        items += 1
    return items


n = encode_once()
payload_len = tel.len
assert decode_once(n) > 0
N = ITER
t0 = clock()
for _ in range(N):
    encode_once()
enc_us = elapsed_us(t0)
t0 = clock()
for _ in range(N):
    decode_once(n)
dec_us = elapsed_us(t0)
print("wire_bytes", n)
print("payload_bytes", payload_len)
print("encode_ns", enc_us * 1000 // N)
print("decode_ns", dec_us * 1000 // N)
'''


def codec_script(iterations: int) -> str:
    return f"ITER = {int(iterations)}\n" + CODEC_SCRIPT
