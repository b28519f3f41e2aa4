"""core/board_link.py on the sim board: how the link meters its work.

* a tick does at most one heavy piece of link work: it received bytes (and
  handled every message in them), or it encoded a TELEMETRY snapshot, or it
  did one send job (a TELEMETRY framing step, or one payload queued plus one
  frame); a send job waits at most TX_SLIP busy ticks, a snapshot at most
  TELEMETRY_SLIP;
* TELEMETRY snapshots stay on their grid of ``telemetry_every`` ticks and
  reach the host a few ticks later, none lost;
* results and events go out one frame a tick, in order; a backlog (a burst
  of events) lifts the metering to BACKLOG_JOBS send jobs a tick, so nothing
  overflows;
* a board with a small ``serial_budget`` writes no more than that a tick and
  still connects, describes itself and answers;
* an idle tick polls nothing.
"""

from metal.boards.sim.board import make_config
from metal.core.board_link import (
    BACKLOG_EVENTS,
    BACKLOG_JOBS,
    TELEMETRY_SLIP,
    TELEMETRY_SPREAD_MIN,
    TX_SLIP,
)
from metal.core.link import S_TELEMETRY_LOST
from metal.core.proto import EV_BOOT, OP_REBOOT, OP_ZONE_MANUAL, R_OK

from .harness import SimBoard


def _cmd_every(b, period, ticks, zone=0):
    for k in range(ticks):
        if k % period == 0:
            b.send_cmd(OP_ZONE_MANUAL, zone, 300 + k % 500)
        b.step()


class Meter:
    """Per board tick: bytes received, TELEMETRY snapshots encoded, send jobs
    done, and whether the send job had waited (``tx_wait``) when the tick began."""

    def __init__(self, b):
        self.rx = {}
        self.snap = {}
        self.late = {}  # snapshot tick -> ticks it waited past its due tick
        self.jobs = {}
        self.waited = {}
        bl = b.fw.link
        hal = b.hal
        read = hal.serial_read
        commit = bl.commit_telemetry
        job = bl._send_job
        now = bl.telemetry_now

        def telemetry_now():
            waited = bl.tel_slip
            go = now()
            if go:
                self.late[hal.tick] = waited
            return go

        def serial_read(buf, start, n):
            got = read(buf, start, n)
            self.rx[hal.tick] = self.rx.get(hal.tick, 0) + got
            self.waited[hal.tick] = bl.tx_wait
            return got

        def commit_telemetry(n):
            self.snap[hal.tick] = self.snap.get(hal.tick, 0) + 1
            commit(n)

        def send_job(now_ms):
            self.jobs[hal.tick] = self.jobs.get(hal.tick, 0) + 1
            return job(now_ms)

        hal.serial_read = serial_read
        bl.telemetry_now = telemetry_now
        bl.commit_telemetry = commit_telemetry
        bl._send_job = send_job

    def heavy(self, t):
        return (1 if self.rx.get(t) else 0) + self.snap.get(t, 0) + self.jobs.get(t, 0)


def test_one_heavy_piece_of_link_work_a_tick():
    """Commands every 7 ticks, heartbeats, TELEMETRY: each tick receives, or
    snapshots, or does one send job; a send job shares a tick only after it
    waited TX_SLIP busy ticks, a snapshot only after TELEMETRY_SLIP."""
    b = SimBoard()
    b.run(30)
    m = Meter(b)
    t0 = b.tick
    _cmd_every(b, 7, 700)
    assert all(r.code == R_OK for r in b.result_log) and len(b.result_log) == 100
    shared = 0
    for t in range(t0, b.tick):
        if m.heavy(t) <= 1:
            continue
        shared += 1
        assert m.jobs.get(t, 0) <= 1  # no backlog here
        if m.jobs.get(t):
            assert m.waited[t] == TX_SLIP, t  # the job had waited its slip
        else:
            assert m.snap.get(t) and m.rx.get(t)  # a snapshot past its slip
    assert shared < 700 // 10  # the exception, not the rule
    # with a command every 7 ticks most snapshots find a free tick before their slip runs out
    assert sum(1 for d in m.late.values() if d < TELEMETRY_SLIP) > len(m.late) // 2
    assert sum(m.jobs.values()) > 100 and sum(m.snap.values()) >= 69


def test_telemetry_keeps_its_grid_off_command_ticks():
    b = SimBoard()
    b.run(30)  # past the DESCRIBE burst of the connect
    m = Meter(b)
    every = b.config.limits.telemetry_every
    n_tel = len(b.telemetry)
    _cmd_every(b, 3, 600)
    snaps = sorted(m.snap)
    # each snapshot is taken up to TELEMETRY_SLIP ticks after it falls due, in
    # a tick that received nothing unless its slip ran out (host ACKs make
    # ticks busy too), and the next one falls due on the grid
    late = [m.late[s] for s in snaps]
    assert all(0 <= d <= TELEMETRY_SLIP for d in late)
    assert all(d == TELEMETRY_SLIP for s, d in zip(snaps, late) if m.rx.get(s))
    assert all(y - d1 - (x - d0) == every
               for x, y, d0, d1 in zip(snaps, snaps[1:], late, late[1:]))
    assert abs(len(snaps) - 600 // every) <= 1  # the grid holds
    got = [t.rx_tick for t in b.telemetry[n_tel:]]
    # each reaches the host a few ticks after its snapshot (before the next
    # one): two framing jobs, each maybe a busy tick late
    delay = [min(r for r in got if r > x) - x for x in snaps[:-1]]
    assert all(d <= 2 + 2 * TX_SLIP for d in delay), delay
    assert b.host.stats[S_TELEMETRY_LOST] == 0  # no gap in the TELEMETRY seq


def test_telemetry_waits_at_most_the_slip_when_every_tick_is_busy():
    b = SimBoard()
    b.run(30)
    m = Meter(b)
    every = b.config.limits.telemetry_every
    n_tel = len(b.telemetry)
    _cmd_every(b, 1, 300)
    snaps = sorted(m.snap)
    gaps = [y - x for x, y in zip(snaps, snaps[1:])]
    assert gaps and all(g == every for g in gaps)  # each one TELEMETRY_SLIP late, on its grid
    assert abs(len(snaps) - 300 // every) <= 1
    assert len(b.telemetry) - n_tel >= len(snaps) - 1
    assert b.host.stats[S_TELEMETRY_LOST] == 0


def test_results_and_events_go_out_in_order_one_frame_a_tick():
    """Three commands in one batch and two events in the same tick, below
    the backlog marks: every RESULT,
    then every EVENT, reaches the host in order, one frame a tick at most,
    within a few ticks."""
    b = SimBoard(heartbeat=False)
    b.run(30)
    cids = [b.send_cmd(OP_ZONE_MANUAL, z, 500) for z in range(3)]
    b.step()  # the host writes them after this tick: the board runs them in the next
    t = b.tick
    ev = b.fw.events
    base = len(b.events)
    seqs = [ev.push(EV_BOOT, 7, k) for k in range(2)]
    assert ev.count < BACKLOG_EVENTS
    # (a frame a job, a job every 1 + TX_SLIP ticks at worst, two TELEMETRY
    # framing jobs per telemetry_every ticks in between)
    b.run_until(lambda b: not b.pending_events() and all(c in b.results for c in cids),
                4 * 8 * (1 + TX_SLIP), "all results and events delivered")
    res_ticks = [b.results[c][0].rx_tick for c in cids]
    got = b.events[base:]
    assert [e.seq for e in got if e.source == 7] == seqs and len(got) >= 2
    assert [e.seq for e in got] == sorted(e.seq for e in got)
    ticks = res_ticks + [e.rx_tick for e in got]
    assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks)  # in order, one a tick
    assert ticks[0] >= t + 1  # not in the tick that received the commands


def test_an_event_burst_lifts_the_metering():
    """A burst of events larger than BACKLOG_EVENTS goes out several frames a
    tick (at most BACKLOG_JOBS send jobs), and none is lost."""
    b = SimBoard(heartbeat=False)
    b.run(30)
    m = Meter(b)
    ev = b.fw.events
    base = len(b.events)
    t = b.tick
    n = 3 * BACKLOG_EVENTS
    seqs = [ev.push(EV_BOOT, 9, k) for k in range(n)]
    b.run(n)
    got = [e.seq for e in b.events[base:] if e.source == 9]
    assert got == seqs and ev.overflows == 0
    assert max(m.jobs.get(k, 0) for k in range(t, b.tick)) == BACKLOG_JOBS
    # the last ones (below the backlog mark) go one a tick again
    assert len({e.rx_tick for e in b.events[base:]}) > n // BACKLOG_JOBS


def test_small_serial_budget():
    """24 bytes a tick (the budget is honoured below a frame's size now): the
    frames go out in pieces, the handshake, the DESCRIBE parts, results and
    TELEMETRY still get through."""
    cfg = make_config()
    cfg.limits.serial_budget = 24
    writes = {}
    b = SimBoard(cfg, connect=False)
    hal = b.hal
    orig = hal.serial_write

    def serial_write(buf, start, n):
        w = orig(buf, start, n)
        writes[hal.tick] = writes.get(hal.tick, 0) + w
        return w

    hal.serial_write = serial_write  # (BoardLink calls it through the HAL object)
    b.run_until(lambda b: b.connected and b.describe_complete(), 400, "handshake and DESCRIBE")
    assert max(writes.values()) <= 24
    assert b.cmd(OP_ZONE_MANUAL, 1, 450) == R_OK
    n = len(b.telemetry)
    b.run(50)
    assert len(b.telemetry) >= n + 4
    assert max(writes.values()) <= 24


def test_idle_ticks_poll_nothing():
    """With no heartbeat and nothing queued the link is never polled: the
    TELEMETRY frames are built by the board link itself (FrameEncoder) and
    still arrive, one per telemetry_every ticks."""
    b = SimBoard(heartbeat=False)
    b.run(30)  # nothing pending any more
    link = b.fw.link.link
    polls = []
    orig = link.poll

    def poll(now, out, pos):
        n = orig(now, out, pos)
        polls.append((b.tick, n))
        return n

    link.poll = poll
    b.fw.link._poll = poll
    n = len(b.telemetry)
    b.run(40)
    assert polls == []
    assert len(b.telemetry) - n == 40 // b.config.limits.telemetry_every


def test_reboot_waits_for_its_result_to_go_out():
    """OP_REBOOT: the board reboots only once the RESULT is on the wire (the
    link sends a frame a tick, so not in the tick that ran the command)."""
    b = SimBoard()
    b.run(30)
    executed = b.trace(lambda b: (b.fw.link.commands, b.hal.reboot_requested))
    cid = b.send_cmd(OP_REBOOT)
    b.run_until(lambda b: b.hal.reboot_requested, 20, "reboot")
    ran = next(i for i, (c, _) in enumerate(executed) if c == executed[0][0] + 1)
    rebooted = next(i for i, (_, r) in enumerate(executed) if r)
    assert rebooted > ran
    # the host had the RESULT by the end of the step whose board tick rebooted
    assert cid in b.results and b.results[cid][0].code == R_OK


def test_telemetry_every_tick_is_not_spread_and_starves_nothing():
    """telemetry_every below TELEMETRY_SPREAD_MIN: each snapshot is framed whole
    in its own tick (its rate holds) and commands are still answered."""
    cfg = make_config()
    cfg.limits.telemetry_every = 1
    assert 1 < TELEMETRY_SPREAD_MIN
    b = SimBoard(cfg)
    n = len(b.telemetry)
    t0 = b.tick
    _cmd_every(b, 5, 100)
    got = [t.rx_tick for t in b.telemetry[n:]]
    assert len(got) >= 95 and len(set(got)) == len(got)  # about one every tick
    assert b.host.stats[S_TELEMETRY_LOST] == 0
    sent = [r for r in b.result_log if r.rx_tick >= t0]
    assert len(sent) >= 19 and all(r.code == R_OK for r in sent)


def test_reboot_goes_ahead_when_its_result_cannot_go_out():
    """A stalled line (the HAL takes no bytes): the reboot does not wait for
    ever, it happens REBOOT_WAIT_TICKS ticks after the command."""
    from metal.core.firmware import REBOOT_WAIT_TICKS

    b = SimBoard()
    b.run(30)
    executed = b.trace(lambda b: b.fw.link.commands)
    b.send_cmd(OP_REBOOT)
    b.run_until(lambda b: executed[-1] > executed[0], 5, "the command runs")
    ran = b.tick - 1  # the board tick that executed it
    b.hal.serial_write = lambda buf, start, n: 0  # nothing leaves the board any more
    b.run_until(lambda b: b.hal.reboot_requested, REBOOT_WAIT_TICKS + 5, "reboot")
    assert b.tick - 1 - ran == REBOOT_WAIT_TICKS
