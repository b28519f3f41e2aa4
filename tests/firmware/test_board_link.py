"""core/board_link.py on the sim board: how the link spreads its work.

* a TELEMETRY that falls due in a busy tick (a command, results, events)
  waits for a quieter one, at most TELEMETRY_SLIP ticks, and stays on its
  grid of ``telemetry_every`` ticks;
* nothing else waits: results and events go out in the tick they happen;
* a board with a small ``serial_budget`` writes no more than that a tick and
  still connects, describes itself and answers;
* an idle tick polls nothing.
"""

from metal.boards.sim.board import make_config
from metal.core.board_link import TELEMETRY_SLIP
from metal.core.link import S_TELEMETRY_LOST
from metal.core.proto import EV_BOOT, OP_ZONE_MANUAL, R_OK

from .harness import SimBoard


def _cmd_every(b, period, ticks, zone=0):
    for k in range(ticks):
        if k % period == 0:
            b.send_cmd(OP_ZONE_MANUAL, zone, 300 + k % 500)
        b.step()


def test_telemetry_moves_off_command_ticks_and_keeps_its_grid():
    b = SimBoard()
    b.run(30)  # past the DESCRIBE burst of the connect
    every = b.config.limits.telemetry_every
    t0 = b.tick
    n_tel = len(b.telemetry)
    _cmd_every(b, 3, 600)
    tel_ticks = [t.rx_tick for t in b.telemetry[n_tel:]]
    cmd_ticks = {r.rx_tick for r in b.result_log if r.rx_tick >= t0}
    assert len(cmd_ticks) == 200 and all(r.code == R_OK for r in b.result_log)
    # a command every third tick: there is always a free tick within the slip
    assert tel_ticks and not set(tel_ticks) & cmd_ticks
    gaps = [b2 - a for a, b2 in zip(tel_ticks, tel_ticks[1:])]
    assert max(gaps) <= every + TELEMETRY_SLIP and min(gaps) >= every - TELEMETRY_SLIP
    assert abs(len(tel_ticks) - 600 // every) <= 1  # the grid holds: no telemetry lost
    assert b.host.stats[S_TELEMETRY_LOST] == 0  # no gap in the TELEMETRY seq


def test_telemetry_waits_at_most_the_slip_when_every_tick_is_busy():
    b = SimBoard()
    b.run(30)
    every = b.config.limits.telemetry_every
    n_tel = len(b.telemetry)
    _cmd_every(b, 1, 300)
    tel_ticks = [t.rx_tick for t in b.telemetry[n_tel:]]
    gaps = [b2 - a for a, b2 in zip(tel_ticks, tel_ticks[1:])]
    assert gaps and all(g == every for g in gaps)  # each one TELEMETRY_SLIP late, on its grid
    assert abs(len(tel_ticks) - 300 // every) <= 1


def test_results_and_events_are_not_delayed():
    """Three commands in one batch and a burst of events in the same tick (a
    window's worth: W = 8 frames unacknowledged): every RESULT and EVENT
    reaches the host in that tick."""
    b = SimBoard()
    b.run(30)
    cids = [b.send_cmd(OP_ZONE_MANUAL, z, 500) for z in range(3)]
    b.step()  # the host writes them after this tick: the board runs them in the next
    t = b.tick
    ev = b.fw.events
    base = len(b.events)
    seqs = [ev.push(EV_BOOT, 7, k) for k in range(5)]
    b.step()
    assert [b.results[c][0].rx_tick for c in cids] == [t, t, t]
    got = [e for e in b.events[base:] if e.source == 7]
    assert [e.seq for e in got] == seqs
    assert all(e.rx_tick == t for e in got)


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
    b.run(40)
    # only the four TELEMETRY ticks poll (the frame, then "nothing more")
    assert len({t for t, _ in polls}) == 4
    assert sum(1 for _, n in polls if n) == 4
