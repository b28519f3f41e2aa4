"""A test harness for the composed firmware: the sim board and a host stand-in.

``SimBoard()`` builds ``Firmware`` over ``SimHal`` (the reference sim board,
``metal.boards.sim.board``) on a *simulated* clock: every ``step()`` runs one
10 ms tick at the next grid point, as fast as the CPU allows. The loop's
duration clock is the simulated clock too, so a slow CI machine never sees a
loop overrun (tick durations read 0).

The host side is ``metal.core.link.Link(ROLE_HOST)`` plus ``metal.host.codec``
for payloads, talking through the SimHal byte rings exactly like the bridge
talks through a serial port: it answers the board's HELLO, sends a HEARTBEAT
every 500 ms while ``heartbeat`` is true, sends CMDs and collects RESULTs,
EVENTs, TELEMETRY and DESCRIBE parts.

One harness step::

    fw.loop.tick(now_us)          board tick k (now_ms = ms0 + 10 k)
    host: read board bytes, feed  RESULT / EVENT / TELEMETRY recorded with tick k
    host: heartbeat if due, poll  frames into the board's receive ring
    hooks(board)                  per-tick checks of the caller
    now += 10 ms

so a CMD written by the host after tick k is executed by the board in tick
k + 1; its RESULT goes out a tick or more later (the board meters its link
work: one frame a tick, see core/board_link.py).

Ticks are counted from 0 (``tick`` = number of ticks run so far; the tick
that just ran is ``tick - 1``). Board events carry the board's ms; ``Event.tick``
is the board tick that pushed it, so timing assertions do not depend on the
link's queueing delay, and the event queries (``events_of``,
``rail_events_since``) also see the events still on their way to the host
(``pending_events``).

The µs tick clock wraps at 2**30 like a board's ``ticks_us`` (~17.9 min);
``start_us`` lets a test start just before the wrap.
"""

from collections import namedtuple

from metal.boards.sim.board import make_config
from metal.boards.sim.hal import SimHal
from metal.core.compat import ticks_diff
from metal.core.firmware import Firmware
from metal.core.link import EV_MESSAGE, ROLE_HOST, ST_CONNECTED, Link
from metal.core.proto import (
    EV_RAIL_STATE,
    MAX_PAYLOAD,
    OP_POWER_ON,
    PWR_ON,
    R_OK,
    T_CMD,
    T_DESCRIBE,
    T_EVENT,
    T_HEARTBEAT,
    T_RESULT,
    T_TELEMETRY,
)
from metal.host.codec import decode_payload, encode_payload

TICK_US = 10_000
TICK_MS = 10
HEARTBEAT_MS = 500
_MASK = (1 << 30) - 1

Event = namedtuple("Event", "tick rx_tick seq kind source value ms aux")
Result = namedtuple("Result", "rx_tick cid code value")
Telemetry = namedtuple(
    "Telemetry",
    "rx_tick seq temps duty rpm mv ma sensor_states fan_states rail_states "
    "gpio tripped latched status power_state",
)


class RecordingHal(SimHal):
    """SimHal that also logs every change of a rail's enable output.

    ``enables`` holds ``(tick, rail, level)`` for each edge, so a check can see
    a rail that was switched on and off again inside one tick (per-tick state
    sampling would miss it).
    """

    def __init__(self, config):
        super().__init__(config)
        self.tick = 0
        self.enables = []
        self.enable_level = bytearray(len(config.rails))

    def rail_enable(self, ch, on):
        super().rail_enable(ch, on)
        if 0 <= ch < self._n_rail and self._rail[ch] >= 0:
            r = self._rail[ch]
            level = 1 if on else 0
            if self.enable_level[r] != level:
                self.enable_level[r] = level
                self.enables.append((self.tick, r, level))


def decode_telemetry(payload, n_sensors, n_fans, n_rails, rx_tick, seq):
    """A TELEMETRY payload (protocol.md §6) into raw integers."""
    analog = payload[0]
    p = 0

    def u16():
        nonlocal p
        v = analog[p] | (analog[p + 1] << 8)
        p += 2
        return v

    temps = []
    for _ in range(n_sensors):
        v = u16()
        temps.append(v - 0x10000 if v & 0x8000 else v)
    duty = [u16() for _ in range(n_fans)]
    rpm = [u16() for _ in range(n_fans)]
    mv = [u16() for _ in range(n_rails)]
    ma = [u16() for _ in range(n_rails)]
    nib = []
    for i in range(n_sensors + n_fans + n_rails):
        b = analog[p + i // 2]
        nib.append(b & 0x0F if i % 2 == 0 else b >> 4)
    assert len(analog) == p + (len(nib) + 1) // 2
    s = nib[:n_sensors]
    f = nib[n_sensors:n_sensors + n_fans]
    r = nib[n_sensors + n_fans:]
    return Telemetry(rx_tick, seq, temps, duty, rpm, mv, ma, s, f, r,
                     payload[1], payload[2], payload[3], payload[4], payload[5])


class SimBoard:
    """The sim-board firmware plus a host stand-in on a simulated clock."""

    def __init__(self, config=None, *, boot_id=0x1234, uid="test-board", heartbeat=True,
                 start_us=0, connect=True):
        self.config = config if config is not None else make_config()
        self.hal = RecordingHal(self.config)
        self.plant = self.hal.plant
        self.start_us = start_us & _MASK
        self.now_us = self.start_us
        self.ms = 0  # simulated ms since the harness started (host clock, unwrapped)
        self.ms0 = self.start_us // 1000  # the board's now_ms at tick 0
        self.fw = Firmware(self.config, self.hal, boot_id, uid, clock_us=self._clock)
        self.host = Link(ROLE_HOST, session_start=77)
        self.heartbeat = heartbeat
        self.tick = 0
        self.events = []
        self.results = {}  # cid -> [Result, ...] (a repeated id may be answered twice)
        self.result_log = []
        self.telemetry = []
        self.describe = []
        self.hb_sent = []  # tick after which each heartbeat was written
        self.hb_echoes = 0
        self.next_cid = 1
        self.hooks = []  # callables hook(board) after every step
        self._next_hb = 0
        self._backlog = b""  # host bytes the board's receive ring had no room for
        self._out = bytearray(512)
        self._n = (len(self.config.sensors), len(self.config.fans), len(self.config.rails))
        if connect:
            self.run_until(lambda b: b.connected and b.describe_complete(), 300,
                           "handshake and DESCRIBE")

    # -- clock ----------------------------------------------------------------------
    def _clock(self):
        return self.now_us

    @property
    def connected(self):
        return self.host.state == ST_CONNECTED

    def describe_complete(self):
        return bool(self.describe) and len(self.describe) >= self.describe[0][1]

    def board_tick_of_ms(self, ms):
        """The board tick whose now_ms is ``ms``."""
        return ticks_diff(ms, self.ms0 & _MASK) // TICK_MS

    # -- running --------------------------------------------------------------------
    def step(self):
        self.hal.tick = self.tick
        self.fw.loop.tick(self.now_us)
        k = self.tick
        self.tick += 1
        self._host_side(k)
        for h in self.hooks:
            h(self)
        self.ms += TICK_MS
        self.now_us = (self.now_us + TICK_US) & _MASK

    def run(self, n):
        for _ in range(n):
            self.step()

    def run_ms(self, ms):
        assert ms % TICK_MS == 0, "whole ticks only"
        self.run(ms // TICK_MS)

    def run_until(self, pred, max_ticks, what="condition"):
        """Step until ``pred(board)`` holds after a step; returns the steps taken."""
        for n in range(1, max_ticks + 1):
            self.step()
            if pred(self):
                return n
        raise AssertionError("%s not reached within %d ticks" % (what, max_ticks))

    # -- host side ------------------------------------------------------------------
    def _host_side(self, k):
        host = self.host
        now = self.ms & _MASK
        data = self.hal.host_read()
        pos = 0
        n = len(data)
        while pos < n:
            pos = host.feed(data, pos, n, now)
            if host.ev == EV_MESSAGE:
                self._on_message(k)
        if self.heartbeat and host.state == ST_CONNECTED and self.ms >= self._next_hb:
            self._next_hb = self.ms + HEARTBEAT_MS
            self.send(T_HEARTBEAT, encode_payload({0: now}))
            self.hb_sent.append(k)
        out = self._out
        while True:
            m = host.poll(now, out, 0)
            if m <= 0:
                break
            self._backlog += bytes(out[:m])
        self.flush()

    def flush(self):
        """Push held-back host bytes into the board's receive ring (what fits)."""
        if self._backlog:
            stored = self.hal.host_write(self._backlog)
            self._backlog = self._backlog[stored:]

    def write_raw(self, wire):
        """Bytes straight onto the board's serial input (bypassing the host link)."""
        self._backlog += bytes(wire)
        self.flush()

    def _on_message(self, k):
        host = self.host
        t = host.rx_type
        raw = bytes(host.rx_buf[host.rx_off:host.rx_off + host.rx_len])
        if t == T_RESULT:
            p = decode_payload(raw)
            r = Result(k, p[0], p[1], p.get(2))
            self.results.setdefault(r.cid, []).append(r)
            self.result_log.append(r)
        elif t == T_EVENT:
            p = decode_payload(raw)
            self.events.append(Event(self.board_tick_of_ms(p[4]), k, p[0], p[1], p[2], p[3],
                                     p[4], p.get(5, 0)))
        elif t == T_TELEMETRY:
            p = decode_payload(raw)
            self.telemetry.append(decode_telemetry(p, *self._n, k, host.rx_seq))
        elif t == T_HEARTBEAT:
            self.hb_echoes += 1
        elif t == T_DESCRIBE:
            p = decode_payload(raw)
            self.describe.append((p[0], p[1], p[2], p[3]))

    def send(self, mtype, payload):
        ok = self.host.send(mtype, payload, 0, len(payload))
        assert ok, "host link queue full"

    # -- commands -------------------------------------------------------------------
    def take_cid(self):
        c = self.next_cid
        self.next_cid += 1
        return c

    def send_cmd(self, op, target=0, arg=0, arg2=0, cid=None):
        """Queue a CMD on the host link; returns its id (nothing runs yet)."""
        if cid is None:
            cid = self.take_cid()
        self.send(T_CMD, encode_payload({0: cid, 1: op, 2: target, 3: arg, 4: arg2}))
        return cid

    def send_payload(self, payload):
        """Queue a CMD with an arbitrary payload (bytes, not checked)."""
        self.send(T_CMD, bytes(payload))

    def wait_result(self, cid, max_ticks=100):
        self.run_until(lambda b: cid in b.results, max_ticks, "RESULT for command %d" % cid)
        return self.results[cid][0].code

    def cmd(self, op, target=0, arg=0, arg2=0, max_ticks=100):
        """Send one command and run until its RESULT arrives; returns the code."""
        return self.wait_result(self.send_cmd(op, target, arg, arg2), max_ticks)

    # -- queries --------------------------------------------------------------------
    def pending_events(self):
        """Events the board has pushed that the host has not received yet: in
        its reliable queue (maybe in flight) or still in its event ring. The
        board meters its link work (core/board_link.py), so a burst of events
        reaches the host over several ticks; ``rx_tick`` is None here."""
        link = self.fw.link.link
        got = {e.seq for e in self.events}
        out = []
        for r in range(link._qcount):
            k = (link._qhead + r) % link.queue_slots
            if link._qtype[k] == T_EVENT:
                o = k * MAX_PAYLOAD
                p = decode_payload(bytes(link.pbuf[o:o + link._qlen[k]]))
                if p[0] not in got:
                    out.append(Event(self.board_tick_of_ms(p[4]), None, p[0], p[1], p[2], p[3],
                                     p[4], p.get(5, 0)))
        ev = self.fw.events
        for j in range(ev.count):
            i = (ev.head + j) % ev.size
            ms = ev.ms[i] & _MASK
            out.append(Event(self.board_tick_of_ms(ms), None, ev.seq[i], ev.kind[i],
                             ev.source[i], ev.value[i], ms, ev.aux[i]))
        return out

    def all_events(self):
        """Every event the board pushed so far and did not drop, in order:
        received by the host, then on its way (``pending_events``)."""
        return self.events + self.pending_events()

    def events_of(self, kind, source=None):
        return [e for e in self.all_events()
                if e.kind == kind and (source is None or e.source == source)]

    def last_telemetry(self):
        return self.telemetry[-1]

    def telemetry_since(self, tick):
        """TELEMETRY frames received at or after board tick ``tick``."""
        return [t for t in self.telemetry if t.rx_tick >= tick]

    def rail_events_since(self, tick):
        """(rail, state, reason) of every EV_RAIL_STATE pushed at or after ``tick``."""
        return [(e.source, e.value, e.aux) for e in self.all_events()
                if e.kind == EV_RAIL_STATE and e.tick >= tick]

    def enables_since(self, tick):
        """(tick, rail, level) of every rail enable edge at or after ``tick``."""
        return [x for x in self.hal.enables if x[0] >= tick]

    # -- common set-ups -------------------------------------------------------------
    def power_on(self, max_ticks=100):
        """POWER_ON and wait until every rail is ON."""
        code = self.cmd(OP_POWER_ON)
        assert code == R_OK, code
        self.run_until(lambda b: b.fw.power.power_state == PWR_ON, max_ticks, "all rails ON")

    def trace(self, fn):
        """Record ``fn(board)`` after every step; returns the list (index = tick
        that just ran minus the tick at the time of the call)."""
        out = []
        self.hooks.append(lambda b: out.append(fn(b)))
        return out


def power_down_bound_ticks(config):
    """Ticks an orderly power-down of every rail may take: each rail spends its
    off delay in SEQ_OFF (rounded up to whole ticks) plus the tick that
    starts it, and one tick for the request to reach the sequencer."""
    tick_ms = config.limits.tick_us // 1000
    return 1 + sum(-(-r.off_delay_ms // tick_ms) + 1 for r in config.rails)


def fingerprint(fw):
    """Everything a command can change, as plain values (for before/after checks).

    Measurements that drift with the physics (temperatures, rpm, mV) are left
    out; zone duties are in, so tests compare them with every zone in manual
    mode (a PID duty moves on its own).
    """
    th = fw.thermal
    sec = fw.security
    p = fw.power
    il = fw.interlocks
    return {
        "rail_state": bytes(p.state),
        "rail_want": bytes(p.want),
        "rail_fault": bytes(p.fault),
        "rail_cycle": bytes(p.cyc),
        "power_state": p.power_state,
        "lockout": p.lockout,
        "zone_mode": bytes(th.mode),
        "zone_requested": bytes(th.requested),
        "zone_manual_duty": list(th.manual_duty),
        "zone_setpoint": list(th.setpoint),
        "zone_duty": list(th.duty),
        "fan_duty": list(fw.fans.duty),
        "gpio_levels": fw.gpio.levels,
        "gpio_wanted": bytes(fw.gpio.wanted),
        "armed": sec.armed,
        "tamper_latched": sec.tamper_latched,
        "soft_estop": sec.soft_estop,
        "estop": sec.estop,
        "lock_cmd": sec.lock_cmd,
        "locked": sec.locked(),
        "interlocks_tripped": il.tripped,
        "interlocks_latched": il.latched,
        "hb_timeout_ms": fw.link.heartbeat_timeout_ms,
        "reboot_pending": fw.reboot_pending,
        "reboot_requested": fw.hal.reboot_requested,
        "plant_faults": (bytes(fw.hal.plant.s_fault), bytes(fw.hal.plant.f_stalled),
                         bytes(fw.hal.plant.r_short), list(fw.hal.plant.r_glitch_ms)),
        "status": fw.status_flags(),
    }
