"""Tests of metal.core.link: handshake, sessions, reliable channel, RTO, telemetry.

Most tests run two Links (board and host) over ``lossy_channel`` on a simulated
clock; the link clocks start 3 s before the 2**30 ms wrap, so every run also
crosses the tick wrap-around. The MicroPython test proves the steady-state path
allocates nothing under ``micropython.heap_lock()``.
"""

import cbor2

from lossy_channel import Channel, frame_header
from metal.core.compat import ticks_diff
from metal.core.frame import SCRATCH_LEN, encode_frame
from metal.core.link import (
    EV_MESSAGE,
    EV_NONE,
    ROLE_BOARD,
    ROLE_HOST,
    S_COBS_ERRORS,
    S_CRC_ERRORS,
    S_DUPLICATES,
    S_IGNORED,
    S_NAKS_RX,
    S_NAKS_TX,
    S_OUT_OF_ORDER,
    S_PAYLOAD_ERRORS,
    S_QUEUE_OVERFLOWS,
    S_REFUSALS,
    S_RETRANSMITS,
    S_RX_FRAMES,
    S_SESSIONS,
    S_TELEMETRY_LOST,
    S_TIMEOUTS,
    ST_CONNECTED,
    ST_CONNECTING,
    ST_IDLE,
    Link,
)
from metal.core.proto import (
    E_CBOR,
    E_OK,
    E_UNSUPPORTED,
    F_ACK,
    MAX_PAYLOAD,
    MAX_WIRE,
    T_ACK,
    T_CMD,
    T_EVENT,
    T_HEARTBEAT,
    T_HELLO,
    T_LOG,
    T_NAK,
    T_TELEMETRY,
)

MASK30 = (1 << 30) - 1
MS_BASE = (1 << 30) - 3000  # link clock at simulated t = 0: wraps after 3 s


def now_ms(t_us):
    return (MS_BASE + t_us // 1000) & MASK30


def ident_entries(boot_id, uid="uid-0001"):
    """Board identity as pre-encoded CBOR map entries (map header stripped)."""
    d = {2: boot_id, 4: "simboard", 5: "0.1.0", 6: uid, 7: 0, 8: 3}
    enc = cbor2.dumps(d)
    assert enc[0] == 0xA6
    return enc[1:], len(d)


def make_board(boot_id=0x1234567, **kw):
    link = Link(ROLE_BOARD, **kw)
    entries, n = ident_entries(boot_id)
    assert link.set_identity(entries, len(entries), n)
    return link


def payload_of(link):
    return bytes(link.rx_buf[link.rx_off : link.rx_off + link.rx_len])


def collect_ids(into, mtype):
    """An on_msg callback appending payload key 0 of every ``mtype`` message."""

    def on_msg(link):
        if link.rx_type == mtype:
            into.append(cbor2.loads(payload_of(link))[0])

    return on_msg


class End:
    """One side of the line: feeds its link what arrived, polls frames out."""

    def __init__(self, link, rx, tx):
        self.link = link
        self.rx = rx
        self.tx = tx
        self.out = bytearray(MAX_WIRE)
        self.msgs = []  # (rx_type, rx_err, payload bytes)
        self.on_msg = None
        self.keep = True

    def service(self, t_us):
        now = now_ms(t_us)
        link = self.link
        data = self.rx.read(t_us)
        i, n = 0, len(data)
        while i < n:
            i = link.feed(data, i, n, now)
            if link.ev == EV_MESSAGE:
                if self.keep:
                    self.msgs.append((link.rx_type, link.rx_err, payload_of(link)))
                if self.on_msg is not None:
                    self.on_msg(link)
            else:
                assert i == n  # feed only stops early for a message
        while self.tx.writable(t_us):
            w = link.poll(now, self.out, 0)
            if not w:
                break
            assert 0 < w <= MAX_WIRE
            self.tx.write(self.out[:w], t_us)

    def of_type(self, t):
        return [m for m in self.msgs if m[0] == t]


class Sim:
    """Board <-> host over a Channel; ``a2b`` is board -> host."""

    def __init__(self, board, host, seed=1, step_us=1000, **line):
        self.ch = Channel(seed, **line)
        self.board = End(board, rx=self.ch.b2a, tx=self.ch.a2b)
        self.host = End(host, rx=self.ch.a2b, tx=self.ch.b2a)
        self.step_us = step_us
        self.hook = None

    @property
    def t(self):
        return self.ch.now_us

    def step(self):
        t = self.ch.now_us
        self.board.service(t)
        self.host.service(t)
        if self.hook is not None:
            self.hook(t)
        self.ch.advance(self.step_us)

    def run(self, ms):
        end = self.ch.now_us + ms * 1000
        while self.ch.now_us < end:
            self.step()

    def run_until(self, cond, max_ms=10_000):
        end = self.ch.now_us + max_ms * 1000
        while not cond():
            assert self.ch.now_us < end, "condition not reached in %d ms" % max_ms
            self.step()
        return self.ch.now_us

    def connected(self):
        return self.board.link.state == ST_CONNECTED and self.host.link.state == ST_CONNECTED


def connected_sim(seed=1, board_kw=None, host_kw=None, **line):
    board = make_board(**(board_kw or {}))
    host = Link(ROLE_HOST, **({"session_start": 1000} | (host_kw or {})))
    sim = Sim(board, host, seed=seed, **line)
    sim.run_until(sim.connected, 3000)
    return sim


def container_sizes(link):
    """Attribute names and sizes of every container a Link owns (incl. codec)."""
    sizes = {}
    for owner_name, owner in (
        ("link", link),
        ("df", link._df),
        ("enc", link._enc),
        ("dec", link._dec),
    ):
        for k, v in vars(owner).items():
            if isinstance(v, (bytes, bytearray, list, dict, tuple, set, str)) or hasattr(
                v, "typecode"
            ):
                sizes[owner_name + "." + k] = (type(v).__name__, len(v))
            else:
                sizes[owner_name + "." + k] = (type(v).__name__,)
    return sizes


# ---------------------------------------------------------------------------
# handshake
# ---------------------------------------------------------------------------


def test_handshake_board_first_payloads_and_state():
    board = make_board(boot_id=777)
    host = Link(ROLE_HOST, session_start=4242)
    out = bytearray(MAX_WIRE)
    t = MS_BASE

    # board speaks first: HELLO with session 0 and its identity entries
    n = board.poll(t, out, 0)
    assert frame_header(out[:n]) == (T_HELLO, 0, 0, 0)
    assert board.state == ST_IDLE
    assert host.feed(out, 0, n, t) == n
    assert host.ev == EV_MESSAGE and host.rx_type == T_HELLO
    hello = cbor2.loads(payload_of(host))
    assert hello == {0: 1, 1: 1, 2: 777, 3: 0, 4: "simboard", 5: "0.1.0", 6: "uid-0001", 7: 0, 8: 3}
    assert host.state == ST_CONNECTING
    assert (host.peer_boot_id, host.peer_proto_min, host.peer_proto_max) == (777, 1, 1)
    assert host.session == 4242

    # host answers HELLO{0: 1, 3: S}
    n = host.poll(t, out, 0)
    assert frame_header(out[:n]) == (T_HELLO, 0, 0, 0)
    assert board.feed(out, 0, n, t) == n
    assert board.ev == EV_MESSAGE and board.rx_type == T_HELLO
    assert cbor2.loads(payload_of(board)) == {0: 1, 3: 4242}
    assert board.state == ST_CONNECTED and board.session == 4242 and board.proto == 1
    assert board.session_started and not host.session_started

    # board echoes its HELLO with the session; it now carries an ACK
    n = board.poll(t, out, 0)
    assert frame_header(out[:n]) == (T_HELLO, F_ACK, 0, 0)
    host.feed(out, 0, n, t)
    assert cbor2.loads(payload_of(host))[3] == 4242
    assert host.state == ST_CONNECTED and host.proto == 1 and host.session_started
    assert board.stats[S_SESSIONS] == 1 and host.stats[S_SESSIONS] == 1
    # nothing else is owed
    assert board.poll(t, out, 0) == 0 and host.poll(t, out, 0) == 0


def test_handshake_host_first_probe():
    """A host that speaks first offers its highest version; the board accepts it."""
    sim = Sim(make_board(), Link(ROLE_HOST, session_start=9))
    sim.ch.a2b.record = sim.ch.b2a.record = True
    sim.host.service(0)  # the host polls before the board said anything
    sim.run_until(sim.connected, 100)
    first_host = [f for _, f in sim.ch.b2a.log if frame_header(f)[0] == T_HELLO][0]
    assert sim.board.of_type(T_HELLO)[0][2] == cbor2.dumps({0: 1, 3: 9})
    assert frame_header(first_host)[0] == T_HELLO
    assert sim.board.link.session == sim.host.link.session == 9
    assert sim.board.link.stats[S_SESSIONS] == 1


def test_version_negotiation_picks_highest_common():
    board = make_board(proto_min=1, proto_max=3)
    host = Link(ROLE_HOST, proto_min=2, proto_max=5, session_start=50)
    sim = Sim(board, host)
    sim.host.service(0)  # host probes with 5, which the board cannot speak
    sim.run_until(sim.connected, 200)
    assert board.proto == host.proto == 3
    assert (host.peer_proto_min, host.peer_proto_max) == (1, 3)
    assert not host.refused and host.refusal is None


def test_version_mismatch_refusal():
    board = make_board(proto_min=2, proto_max=3)
    host = Link(ROLE_HOST)  # speaks 1..1
    sim = Sim(board, host)
    p = cbor2.dumps({0: 1})
    assert board.send(T_EVENT, p, 0, len(p))
    sim.ch.a2b.record = True
    sim.run(3500)
    text = "board speaks protocol 2..3, bridge speaks 1..1"
    assert host.refused and host.refusal == text
    assert host.state == ST_IDLE and board.state == ST_IDLE
    assert board.refused
    # the board hears the refusal every time it says HELLO (every second)
    refusals = [cbor2.loads(m[2]) for m in sim.board.of_type(T_HELLO)]
    assert {0: 0, 3: 0, 9: text} in refusals
    assert board.stats[S_REFUSALS] >= 3 and host.stats[S_REFUSALS] >= 3
    # no reliable frame ever left the board, its event is still queued
    types = {frame_header(f)[0] for _, f in sim.ch.a2b.log}
    assert types == {T_HELLO}
    assert board.queued() == 1
    # a board HELLO keeps saying session 0
    assert all(cbor2.loads(m[2])[3] == 0 for m in sim.host.of_type(T_HELLO))


def test_board_hello_every_interval_until_connected():
    board = make_board()
    sim = Sim(board, Link(ROLE_HOST))
    sim.ch.b2a.cut = True  # the host's HELLOs never arrive
    sim.ch.a2b.record = True
    p = cbor2.dumps({0: 1})
    board.send(T_EVENT, p, 0, len(p))
    sim.run(3500)
    sent = [(t // 1000, frame_header(f)[0]) for t, f in sim.ch.a2b.log]
    assert sent == [(0, T_HELLO), (1000, T_HELLO), (2000, T_HELLO), (3000, T_HELLO)]
    assert board.state == ST_IDLE and board.queued() == 1


def test_host_resends_hello_while_connecting_and_lost_echo():
    """The board's echoes are lost: the host re-sends HELLO(S) after the interval
    and the board answers again without a second reset."""
    board = make_board()
    host = Link(ROLE_HOST, session_start=321)
    sim = Sim(board, host)
    dropped = []

    def drop_early_echoes(frame, d):
        h = frame_header(frame)
        if h[0] == T_HELLO and sim.t < 500_000 and cbor2.loads(_payload(frame))[3] == 321:
            dropped.append(sim.t)
            return True
        return False

    sim.ch.a2b.drop_filter = drop_early_echoes
    sim.ch.b2a.record = True
    sim.run_until(sim.connected, 3000)
    assert dropped and 1000_000 <= sim.t <= 1030_000
    host_hellos = [
        (t // 1000, cbor2.loads(_payload(f)))
        for t, f in sim.ch.b2a.log
        if frame_header(f)[0] == T_HELLO
    ]
    # the probe at 0, again at once on the board HELLO that crossed it, then
    # again after one interval; always the same session
    assert [h for _, h in host_hellos] == [{0: 1, 3: 321}] * 3
    assert host_hellos[1][0] + 1000 == host_hellos[2][0]  # one interval later
    assert board.stats[S_SESSIONS] == 1 and board.session == 321
    assert host.stats[S_SESSIONS] == 1


def _payload(frame):
    from metal.core.cobs import cobs_decode

    body = bytearray(256)
    m = cobs_decode(frame, 0, len(frame) - 1, body, 0)
    return bytes(body[4 : m - 2])


def test_no_reliable_traffic_until_connected_and_host_ignores():
    host = Link(ROLE_HOST, session_start=5)
    out = bytearray(MAX_WIRE)
    scratch = bytearray(SCRATCH_LEN)
    assert host.poll(MS_BASE, out, 0) > 0  # probe
    assert host.state == ST_CONNECTING
    p = cbor2.dumps({0: 1})
    n = encode_frame(T_EVENT, F_ACK, 0, 0, p, 0, len(p), scratch, out, 0)
    assert host.feed(out, 0, n, MS_BASE) == n
    assert host.ev == EV_NONE and host.stats[S_IGNORED] == 1
    # and the host sends nothing reliable while CONNECTING
    host.send(T_CMD, p, 0, len(p))
    assert host.poll(MS_BASE + 1, out, 0) == 0


def run_traffic(sim, n_board, n_host, max_ms=20_000, payload_fn=None):
    """Board sends EVENT {0: i}, host sends CMD {0: i}; returns the received ids."""
    got = {"board": [], "host": []}
    nxt = {"board": 0, "host": 0}
    payload_fn = payload_fn or (lambda i: cbor2.dumps({0: i}))

    def feeder(t):
        for side, end, mtype, total in (
            ("board", sim.board, T_EVENT, n_board),
            ("host", sim.host, T_CMD, n_host),
        ):
            while nxt[side] < total:
                p = payload_fn(nxt[side])
                if not end.link.send(mtype, p, 0, len(p)):
                    break
                nxt[side] += 1

    def on_board(link):
        if link.rx_type == T_CMD:
            got["board"].append(cbor2.loads(payload_of(link))[0])

    def on_host(link):
        if link.rx_type == T_EVENT:
            got["host"].append(cbor2.loads(payload_of(link))[0])

    sim.board.on_msg = on_board
    sim.host.on_msg = on_host
    sim.hook = feeder
    sim.run_until(lambda: len(got["host"]) >= n_board and len(got["board"]) >= n_host, max_ms)
    sim.hook = None
    return got


def test_board_reboot_host_starts_new_session():
    sim = connected_sim(seed=3)
    host = sim.host.link
    s1 = host.session
    got = run_traffic(sim, 5, 5)
    assert got == {"board": [0, 1, 2, 3, 4], "host": [0, 1, 2, 3, 4]}
    # the host queues commands; the board reboots before it has heard them
    sim.ch.b2a.cut = True
    for i in range(5, 10):
        p = cbor2.dumps({0: i})
        assert host.send(T_CMD, p, 0, len(p))
    sim.run(50)
    assert host.queued() == 5
    new_board = make_board(boot_id=0xBEEF)
    sim.board.link = new_board
    sim.ch.b2a.cut = False
    got2 = []
    sim.board.on_msg = collect_ids(got2, T_CMD)
    sim.run_until(lambda: len(got2) >= 5, 5000)
    assert host.state == ST_CONNECTED and host.session != s1
    assert new_board.session == host.session and host.peer_boot_id == 0xBEEF
    assert host.stats[S_SESSIONS] == 2
    assert got2 == [5, 6, 7, 8, 9]  # renumbered from seq 0, none lost, once each
    sim.run(200)
    assert got2 == [5, 6, 7, 8, 9] and host.queued() == 0


def test_host_restart_board_renumbers_unacked():
    sim = connected_sim(seed=4)
    board = sim.board.link
    s1 = board.session
    got = run_traffic(sim, 10, 0)
    sim.run(100)
    assert got["host"] == list(range(10)) and board.queued() == 0
    # the line to the host dies; the board keeps producing events it cannot deliver
    sim.ch.a2b.cut = True
    for i in range(10, 20):
        p = cbor2.dumps({0: i})
        assert board.send(T_EVENT, p, 0, len(p))
    sim.run(700)
    assert board.queued() == 10 and board.stats[S_TIMEOUTS] >= 1
    # a new bridge process: a fresh host Link; the line comes back
    new_host = Link(ROLE_HOST, session_start=s1 + 1000)
    sim.host.link = new_host
    sim.ch.a2b.cut = False
    got2 = []
    sim.host.on_msg = collect_ids(got2, T_EVENT)
    sim.run_until(lambda: len(got2) >= 10, 5000)
    sim.run(300)
    assert board.session == new_host.session != s1
    assert board.stats[S_SESSIONS] == 2
    assert got2 == list(range(10, 20))  # nothing lost, nothing twice
    assert board.queued() == 0


def test_host_restart_with_frames_in_flight_exactly_once_after_dedup():
    """Restart while frames are in flight: the board re-sends exactly what was not
    acknowledged, in order; the overlap with what the old host delivered is only
    frames whose acks had not reached the board (the host de-duplicates by id)."""
    sim = connected_sim(seed=5, latency_us=5000)
    board = sim.board.link
    old = []
    sim.host.on_msg = collect_ids(old, T_EVENT)
    for i in range(12):
        p = cbor2.dumps({0: i})
        assert board.send(T_EVENT, p, 0, len(p))
    sim.run_until(lambda: board.queued() < 12, 100)  # the first acks are back ...
    assert 0 < board.queued() < 12  # ... and the rest is in flight
    new_host = Link(ROLE_HOST, session_start=77777)
    sim.host.link = new_host
    new = []
    sim.host.on_msg = collect_ids(new, T_EVENT)
    at_reset = []

    def watch(t):
        # acks the old host sent before it died still arrive; what counts is the
        # queue when the board accepts the new session
        if board.stats[S_SESSIONS] == 2 and not at_reset:
            at_reset.append(board.queued())

    sim.hook = watch
    sim.run_until(lambda: board.queued() == 0 and new_host.state == ST_CONNECTED, 5000)
    assert at_reset and 0 < at_reset[0] < 12, at_reset
    first_unacked = 12 - at_reset[0]
    assert new == list(range(first_unacked, 12))
    assert old == list(range(len(old)))
    assert sorted(set(old) | set(new)) == list(range(12))
    assert len(set(old) & set(new)) == len(old) - first_unacked


# ---------------------------------------------------------------------------
# reliable channel
# ---------------------------------------------------------------------------


def test_10k_messages_lossy_exactly_once_in_order_bounded_memory():
    """10,000 reliable messages, both directions at once, over a line with 1 %
    frame loss, bit errors at 1e-3 per bit, duplicates and 200 ms stalls."""
    n_each = 5000
    board = make_board()
    host = Link(ROLE_HOST, session_start=1000)
    sim = Sim(
        board,
        host,
        seed=20240611,
        drop=0.01,
        ber=1e-3,
        dup=0.005,
        stall=0.0005,
        stall_us=200_000,
    )
    sim.board.keep = sim.host.keep = False
    sim.run_until(sim.connected, 3000)
    before = {"board": container_sizes(board), "host": container_sizes(host)}
    payloads = [cbor2.dumps({0: i}) for i in range(n_each)]
    peaks = {"q": 0, "w": 0}
    orig_step = sim.step

    def step():
        orig_step()
        for link in (board, host):
            q = link.queued()
            w = link.inflight()
            assert q <= link.queue_slots and w <= link.window and w <= q
            peaks["q"] = max(peaks["q"], q)
            peaks["w"] = max(peaks["w"], w)

    sim.step = step
    got = run_traffic(sim, n_each, n_each, max_ms=600_000, payload_fn=payloads.__getitem__)
    sim.run_until(lambda: board.queued() == 0 and host.queued() == 0, 10_000)
    sim.step = orig_step

    assert got["host"] == list(range(n_each))
    assert got["board"] == list(range(n_each))
    # the impairments really happened, and the link really had to work
    a2b, b2a = sim.ch.a2b, sim.ch.b2a
    assert a2b.dropped + b2a.dropped > 100
    assert a2b.corrupted_frames + b2a.corrupted_frames > 1000
    assert a2b.duplicated + b2a.duplicated > 50
    assert a2b.stalls + b2a.stalls >= 5
    for link in (board, host):
        st = link.stats
        assert st[S_RETRANSMITS] > 0 and st[S_NAKS_TX] > 0 and st[S_NAKS_RX] > 0
        assert st[S_CRC_ERRORS] + st[S_COBS_ERRORS] > 100
        assert st[S_DUPLICATES] > 0 and st[S_TIMEOUTS] > 0
        assert st[S_PAYLOAD_ERRORS] == 0
        assert st[S_SESSIONS] == 1 and link.state == ST_CONNECTED
    # bounded memory: full queue used, never exceeded, containers unchanged
    assert peaks["q"] == 16 and peaks["w"] == 8
    assert container_sizes(board) == before["board"]
    assert container_sizes(host) == before["host"]


def test_no_heap_growth_under_traffic_cpython():
    """What core/ keeps alive does not grow with traffic (tracemalloc on CPython;
    the MicroPython tests below prove zero allocation outright)."""
    import gc
    import tracemalloc

    sim = connected_sim(seed=11, drop=0.01, ber=1e-3, dup=0.005)
    board, host = sim.board.link, sim.host.link
    sim.board.keep = sim.host.keep = False
    p = cbor2.dumps({0: 7})

    def feeder(t):
        while board.send(T_EVENT, p, 0, len(p)):
            pass
        while host.send(T_CMD, p, 0, len(p)):
            pass
        board.send(T_TELEMETRY, p, 0, len(p))
        host.send(T_HEARTBEAT, p, 0, len(p))

    sim.hook = feeder
    core_only = [tracemalloc.Filter(True, "*/core/*.py")]
    tracemalloc.start()
    try:
        sim.run(300)
        gc.collect()
        s1 = tracemalloc.take_snapshot().filter_traces(core_only)
        rx0 = host.stats[S_RX_FRAMES]
        sim.run(1500)
        gc.collect()
        s2 = tracemalloc.take_snapshot().filter_traces(core_only)
    finally:
        tracemalloc.stop()
    assert host.stats[S_RX_FRAMES] - rx0 > 1000
    live1 = sum(s.size for s in s1.statistics("filename"))
    live2 = sum(s.size for s in s2.statistics("filename"))
    # a handful of int objects held in attributes, nothing that scales
    assert live2 < 1024 and live2 - live1 < 256, (live1, live2)


def _recovery_ms(with_nak):
    """Time from the loss of one EVENT frame until the host delivers it."""
    sim = connected_sim(seed=6)
    board = sim.board.link
    run_traffic(sim, 40, 0)  # RTT samples
    sim.run(100)
    target = {"seq": None, "lost_at": None, "delivered_at": None, "id": None}

    def drop_once(frame, d):
        h = frame_header(frame)
        if h[0] == T_EVENT and target["lost_at"] is None and h[2] == target["seq"]:
            target["lost_at"] = sim.t
            return True
        return False

    def drop_naks(frame, d):
        return frame_header(frame)[0] == T_NAK

    sim.ch.a2b.drop_filter = drop_once
    if not with_nak:
        sim.ch.b2a.drop_filter = drop_naks
    target["seq"] = (board._una + 2) & 0xFF  # the 3rd of the next burst
    target["id"] = 1002

    def on_host(link):
        if link.rx_type == T_EVENT and cbor2.loads(payload_of(link))[0] == target["id"]:
            target["delivered_at"] = sim.t

    sim.host.on_msg = on_host
    for i in range(1000, 1008):
        p = cbor2.dumps({0: i})
        assert board.send(T_EVENT, p, 0, len(p))
    sim.run_until(lambda: target["delivered_at"] is not None, 5000)
    sim.run_until(lambda: board.queued() == 0, 5000)
    return (target["delivered_at"] - target["lost_at"]) / 1000, board, sim.host.link


def test_nak_fast_retransmit_beats_timeout():
    fast, b1, h1 = _recovery_ms(True)
    slow, b2, h2 = _recovery_ms(False)
    assert h1.stats[S_NAKS_TX] >= 1 and b1.stats[S_NAKS_RX] >= 1
    assert b1.stats[S_TIMEOUTS] == 0  # recovered by the NAK alone
    assert b2.stats[S_NAKS_RX] == 0 and b2.stats[S_TIMEOUTS] >= 1
    assert slow >= b2.rto_min_ms  # a timeout cannot fire sooner
    assert fast * 2 < slow, (fast, slow)


def _pair(t0=MS_BASE, **kw):
    """Board and host connected by handing frames over directly (no line)."""
    board = make_board(**kw)
    host = Link(ROLE_HOST, session_start=600)
    out = bytearray(MAX_WIRE)
    for _ in range(4):
        for a, b in ((board, host), (host, board)):
            n = a.poll(t0, out, 0)
            if n:
                b.feed(out, 0, n, t0)
    assert board.state == host.state == ST_CONNECTED
    return board, host


def _frame(t, seq=0, ack=None, payload=b""):
    out = bytearray(MAX_WIRE)
    flags = F_ACK if ack is not None else 0
    scratch = bytearray(SCRATCH_LEN)
    n = encode_frame(t, flags, seq, ack or 0, payload, 0, len(payload), scratch, out, 0)
    return bytes(out[:n])


def test_receiver_duplicate_ahead_nak_and_crc_errors():
    board, _ = _pair()
    out = bytearray(MAX_WIRE)
    t = MS_BASE + 10
    p = cbor2.dumps({0: 1})
    f0 = _frame(T_CMD, seq=0, ack=0, payload=p)
    f1 = _frame(T_CMD, seq=1, ack=0, payload=p)
    f2 = _frame(T_CMD, seq=2, ack=0, payload=p)
    # ahead: dropped, one NAK for expected 0 ...
    board.feed(f1, 0, len(f1), t)
    assert board.ev == EV_NONE and board.stats[S_OUT_OF_ORDER] == 1
    n = board.poll(t, out, 0)
    assert frame_header(out[:n]) == (T_NAK, F_ACK, 0, 0)
    # ... and only one per expected value
    board.feed(f2, 0, len(f2), t)
    assert board.stats[S_OUT_OF_ORDER] == 2
    assert board.poll(t, out, 0) == 0
    # the expected frame is delivered, an ACK is owed at once
    board.feed(f0, 0, len(f0), t)
    assert board.ev == EV_MESSAGE and board.rx_type == T_CMD and board.rx_err == E_OK
    n = board.poll(t, out, 0)
    assert frame_header(out[:n]) == (T_ACK, F_ACK, 0, 1)
    # a duplicate is dropped and re-acknowledged
    board.feed(f0, 0, len(f0), t)
    assert board.ev == EV_NONE and board.stats[S_DUPLICATES] == 1
    n = board.poll(t, out, 0)
    assert frame_header(out[:n]) == (T_ACK, F_ACK, 0, 1)
    # a CRC error: NAK for the expected value, at most one per RTT
    bad = bytearray(f1)
    bad[3] ^= 0x40
    board.feed(bad, 0, len(bad), t + 300)
    assert board.stats[S_CRC_ERRORS] == 1
    n = board.poll(t + 300, out, 0)
    assert frame_header(out[:n]) == (T_NAK, F_ACK, 0, 1)
    board.feed(bad, 0, len(bad), t + 301)
    assert board.stats[S_CRC_ERRORS] == 2 and board.poll(t + 301, out, 0) == 0
    assert board.stats[S_NAKS_TX] == 2


def test_transmit_priority_and_piggybacked_acks():
    board, _ = _pair()
    out = bytearray(MAX_WIRE)
    t = MS_BASE + 5
    p = cbor2.dumps({0: 1})

    def sent():
        n = board.poll(t, out, 0)
        return frame_header(out[:n]) if n else None

    for _ in range(2):
        board.send(T_EVENT, p, 0, len(p))
    assert sent() == (T_EVENT, F_ACK, 0, 0)
    assert sent() == (T_EVENT, F_ACK, 1, 0)
    board.send(T_EVENT, p, 0, len(p))
    board.send(T_TELEMETRY, p, 0, len(p))
    board.send(T_LOG, p, 0, len(p))
    f = _frame(T_CMD, seq=1, ack=0, payload=p)  # ahead -> NAK owed
    board.feed(f, 0, len(f), t)
    t += board.rto_ms  # and the retransmission timer expires
    order = []
    while True:
        h = sent()
        if h is None:
            break
        order.append(h)
    assert order == [
        (T_NAK, F_ACK, 0, 0),
        (T_EVENT, F_ACK, 0, 0),  # go-back-N retransmission of the window
        (T_EVENT, F_ACK, 1, 0),
        (T_EVENT, F_ACK, 2, 0),  # then the new reliable frame
        (T_TELEMETRY, F_ACK, 0, 0),
        (T_LOG, F_ACK, 0, 0),
    ]
    assert board.stats[S_RETRANSMITS] == 2 and board.stats[S_TIMEOUTS] == 1
    # an ack rides on the next outgoing frame; a bare ACK only if nothing goes out
    f = _frame(T_CMD, seq=0, ack=0, payload=p)
    board.feed(f, 0, len(f), t)
    board.send(T_HEARTBEAT, p, 0, len(p))
    assert sent() == (T_HEARTBEAT, F_ACK, 0, 1)
    assert sent() is None
    board.feed(f, 0, len(f), t)  # duplicate
    assert sent() == (T_ACK, F_ACK, 0, 1)


def test_nak_releases_and_retransmits_with_duplicate_hold():
    board, _ = _pair()
    out = bytearray(MAX_WIRE)
    t = MS_BASE + 10
    p = cbor2.dumps({0: 1})

    def seqs(now, n):
        return [frame_header(out[: board.poll(now, out, 0)])[2] for _ in range(n)]

    for _ in range(4):
        board.send(T_EVENT, p, 0, len(p))
    assert seqs(t, 4) == [0, 1, 2, 3]
    nak = _frame(T_NAK, ack=2)  # 0 and 1 arrived, resend from 2
    board.feed(nak, 0, len(nak), t + 20)
    assert board.queued() == 2 and board.stats[S_NAKS_RX] == 1
    assert board.srtt_ms == 20  # sample from frame 1, sent once
    assert seqs(t + 20, 2) == [2, 3]
    assert board.poll(t + 20, out, 0) == 0
    # the same NAK again within SRTT/2 of that round left the peer before our
    # resend got there: not obeyed
    board.feed(nak, 0, len(nak), t + 29)
    assert board.poll(t + 29, out, 0) == 0
    # later it means the resend was lost too: obeyed
    board.feed(nak, 0, len(nak), t + 30)
    assert seqs(t + 30, 2) == [2, 3]
    # a NAK from a new number is news at once
    nak3 = _frame(T_NAK, ack=3)
    board.feed(nak3, 0, len(nak3), t + 31)
    assert board.queued() == 1 and seqs(t + 31, 1) == [3]
    assert board.poll(t + 31, out, 0) == 0
    assert board.stats[S_NAKS_RX] == 4 and board.stats[S_TIMEOUTS] == 0


def test_receiver_naks_again_when_a_resend_round_misses_the_expected_frame():
    board, _ = _pair()
    out = bytearray(MAX_WIRE)
    t = MS_BASE + 10
    p = cbor2.dumps({0: 1})
    f = [_frame(T_CMD, seq=i, ack=0, payload=p) for i in range(5)]

    def naks():
        n = board.poll(t, out, 0)
        return frame_header(out[:n]) if n else None

    for i in (1, 2, 3):  # 0 was lost: one NAK for it
        board.feed(f[i], 0, len(f[i]), t)
    assert naks() == (T_NAK, F_ACK, 0, 0)
    board.feed(f[4], 0, len(f[4]), t)
    assert naks() is None
    # the sender went back to 0, but 0 was lost again: 1 arrives after 4
    board.feed(f[1], 0, len(f[1]), t)
    assert naks() == (T_NAK, F_ACK, 0, 0)
    board.feed(f[2], 0, len(f[2]), t)
    assert naks() is None
    # a duplicate on the line is not a new round
    board.feed(f[2], 0, len(f[2]), t)
    assert naks() is None
    assert board.stats[S_NAKS_TX] == 2 and board.stats[S_OUT_OF_ORDER] == 7


def test_frame_lost_twice_recovers_without_timeout():
    """The original and the first resend of one frame are lost: the NAK rules
    recover it without waiting for (and backing off) the retransmission timer."""
    sim = connected_sim(seed=12)
    board = sim.board.link
    run_traffic(sim, 40, 0)
    sim.run(100)
    target = (board._una + 2) & 0xFF
    losses = []

    def drop_twice(frame, d):
        h = frame_header(frame)
        if h[0] == T_EVENT and h[2] == target and len(losses) < 2:
            losses.append(sim.t)
            return True
        return False

    sim.ch.a2b.drop_filter = drop_twice
    got = []
    sim.host.on_msg = collect_ids(got, T_EVENT)
    for i in range(8):
        p = cbor2.dumps({0: i})
        assert board.send(T_EVENT, p, 0, len(p))
    sim.run_until(lambda: len(got) == 8, 5000)
    assert got == list(range(8)) and len(losses) == 2
    assert board.stats[S_TIMEOUTS] == 0 and sim.host.link.stats[S_NAKS_TX] >= 2
    assert sim.t - losses[0] < board.rto_min_ms * 1000


def test_queue_overflow_and_send_rules():
    board = make_board()
    p = bytes(MAX_PAYLOAD)
    for _ in range(16):
        assert board.send(T_EVENT, p, 0, len(p))
    assert not board.send(T_EVENT, p, 0, 1)
    assert board.stats[S_QUEUE_OVERFLOWS] == 1 and board.queued() == 16
    assert not board.send(T_TELEMETRY, bytes(MAX_PAYLOAD + 1), 0, MAX_PAYLOAD + 1)
    for t in (T_HELLO, T_ACK, T_NAK, 0, 12):
        assert not board.send(t, p, 0, 1)


def test_malformed_payloads():
    sim = connected_sim(seed=7)
    board, host = sim.board.link, sim.host.link
    bad = b"\xff"  # a lone break byte
    flt = cbor2.dumps(1.5)  # a float: outside the board subset
    board.send(T_EVENT, bad, 0, len(bad))
    board.send(T_EVENT, flt, 0, len(flt))
    board.send(T_TELEMETRY, bad, 0, len(bad))
    sim.run(50)
    ev = sim.host.of_type(T_EVENT)
    # reliable: acknowledged and delivered with the error, so the app can answer
    assert [(m[1], m[2]) for m in ev] == [(E_CBOR, bad), (E_UNSUPPORTED, flt)]
    assert board.queued() == 0
    # unreliable: dropped and counted
    assert sim.host.of_type(T_TELEMETRY) == []
    assert host.stats[S_PAYLOAD_ERRORS] == 3


# ---------------------------------------------------------------------------
# RTO
# ---------------------------------------------------------------------------


def _ack_after(board, t, r):
    """Send one EVENT at t, acknowledge it r ms later; returns the ack time."""
    out = bytearray(MAX_WIRE)
    p = cbor2.dumps({0: 1})
    assert board.send(T_EVENT, p, 0, len(p))
    n = board.poll(t, out, 0)
    h = frame_header(out[:n])
    assert h[0] == T_EVENT
    a = _frame(T_ACK, ack=(h[2] + 1) & 0xFF)
    board.feed(a, 0, len(a), (t + r) & MASK30)
    assert board.queued() == 0
    return (t + r) & MASK30


def test_rto_follows_rfc6298():
    board, _ = _pair()
    samples = [100, 120, 80, 300, 50, 100, 100, 90, 110, 400, 100, 100]
    t = MS_BASE
    srtt = rttvar = None
    for r in samples:
        t = _ack_after(board, t, r)
        # RFC 6298 in real numbers, K = 4, alpha = 1/8, beta = 1/4, G = 10
        if srtt is None:
            srtt, rttvar = r, r / 2
        else:
            rttvar = 0.75 * rttvar + 0.25 * abs(srtt - r)
            srtt = 0.875 * srtt + 0.125 * r
        rto = min(2000, max(30, srtt + max(10, 4 * rttvar)))
        assert abs(board.srtt_ms - srtt) <= 1.5, (r, board.srtt_ms, srtt)
        assert abs(board.rto_ms - rto) <= 4, (r, board.rto_ms, rto)
    # a steady RTT converges: SRTT -> R, RTTVAR -> 0, RTO -> R + G
    for _ in range(60):
        t = _ack_after(board, t, 100)
    assert board.srtt_ms == 100 and board.rto_ms == 110


def test_rto_clamps():
    board, _ = _pair()
    t = MS_BASE
    for _ in range(30):
        t = _ack_after(board, t, 1)
    assert board.srtt_ms <= 1 and board.rto_ms == 30
    board2, _ = _pair()
    _ack_after(board2, MS_BASE, 5000)  # the ack came very late (no poll in between)
    assert board2.srtt_ms == 5000 and board2.rto_ms == 2000


def test_rto_backoff_doubles_and_karn():
    board, _ = _pair()
    t = MS_BASE
    for _ in range(20):
        t = _ack_after(board, t, 40)
    base = board.rto_ms
    assert base == 50
    out = bytearray(MAX_WIRE)
    p = cbor2.dumps({0: 1})
    board.send(T_EVENT, p, 0, len(p))
    t0 = t
    h0 = frame_header(out[: board.poll(t, out, 0)])
    assert h0[0] == T_EVENT
    times = []
    rto = base
    for _ in range(8):
        assert board.poll((t + rto - 1) & MASK30, out, 0) == 0  # not a ms early
        t = (t + rto) & MASK30
        n = board.poll(t, out, 0)
        assert frame_header(out[:n]) == h0  # the same frame again
        times.append(t)
        rto = min(2000, rto * 2)
        assert board.rto_ms == rto
    assert board.stats[S_TIMEOUTS] == 8 and board.stats[S_RETRANSMITS] == 8
    gaps = [(b - a) & MASK30 for a, b in zip([t0] + times, times)]
    assert gaps == [50, 100, 200, 400, 800, 1600, 2000, 2000]
    # Karn: the ack of a retransmitted frame is no RTT sample; the back-off stays
    a = _frame(T_ACK, ack=h0[2] + 1)
    board.feed(a, 0, len(a), (t + 10) & MASK30)
    assert board.queued() == 0 and board.srtt_ms == 40 and board.rto_ms == 2000
    # the next clean sample recomputes the RTO
    _ack_after(board, (t + 20) & MASK30, 40)
    assert board.rto_ms == 50


def test_rto_converges_to_line_rtt():
    lat = 20_000
    sim = connected_sim(seed=8, latency_us=lat, byte_us=87)
    board = sim.board.link
    for i in range(100):
        p = cbor2.dumps({0: i})
        board.send(T_EVENT, p, 0, len(p))
        sim.run(60)
    # RTT = two latencies + EVENT (13 B) and ACK (8 B) at 87 us/B + service steps
    true_rtt = 2 * lat / 1000 + 21 * 0.087
    assert true_rtt <= board.srtt_ms <= true_rtt + 2.5
    assert board.rto_ms == max(30, board.srtt_ms + max(10, 4 * board.rttvar_ms))
    assert board.rto_ms <= board.srtt_ms + 12
    assert board.stats[S_RETRANSMITS] == 0


# ---------------------------------------------------------------------------
# unreliable channel
# ---------------------------------------------------------------------------


def test_telemetry_latest_wins():
    board, host = _pair()
    out = bytearray(MAX_WIRE)
    t = MS_BASE + 1
    for v in (1, 2, 3):
        p = cbor2.dumps([v])
        assert board.send(T_TELEMETRY, p, 0, len(p))
    n = board.poll(t, out, 0)
    assert frame_header(out[:n]) == (T_TELEMETRY, F_ACK, 0, 0)
    assert board.poll(t, out, 0) == 0  # the older two are gone
    host.feed(out, 0, n, t)
    assert host.rx_type == T_TELEMETRY and cbor2.loads(payload_of(host)) == [3]
    # heartbeat: same rule, own slot
    for v in (7, 8):
        p = cbor2.dumps({0: v})
        host.send(T_HEARTBEAT, p, 0, len(p))
    n = host.poll(t, out, 0)
    board.feed(out, 0, n, t)
    assert cbor2.loads(payload_of(board)) == {0: 8}
    assert host.poll(t, out, 0) == 0


def test_telemetry_loss_counting():
    sim = connected_sim(seed=9, dup=0.05)
    board, host = sim.board.link, sim.host.link
    dropped = []

    def drop_some(frame, d):
        h = frame_header(frame)
        if h[0] == T_TELEMETRY and h[2] % 7 == 3:
            dropped.append(h[2])
            return True
        return False

    sim.ch.a2b.drop_filter = drop_some
    for i in range(300):
        p = cbor2.dumps([i])
        board.send(T_TELEMETRY, p, 0, len(p))
        sim.run(5)
    sim.run(20)
    got = [cbor2.loads(m[2])[0] for m in sim.host.of_type(T_TELEMETRY)]
    assert got == sorted(set(got))  # duplicates on the line are not delivered twice
    assert len(got) + len(dropped) == 300
    assert host.stats[S_TELEMETRY_LOST] == len(dropped) > 30
    assert sim.ch.a2b.duplicated > 0


# ---------------------------------------------------------------------------
# building payloads in place; the quiet (idle) flag
# ---------------------------------------------------------------------------


def test_reserve_commit_builds_in_the_slot_and_send_ints():
    sim = connected_sim(seed=21)
    board, host = sim.board.link, sim.host.link
    got = []
    sim.host.on_msg = lambda link: got.append((link.rx_type, cbor2.loads(payload_of(link))))
    # a reliable message built in place
    o = board.reserve(T_EVENT)
    p = cbor2.dumps({0: 1, 1: "x"})
    board.pbuf[o:o + len(p)] = p
    assert board.commit(T_EVENT, len(p))
    # a map of integers, encoded straight into the next slot
    assert board.send_ints(T_EVENT, [2, -7, 1 << 29], 3)
    # TELEMETRY: building again before it went out overwrites it (latest wins)
    for v in (10, 11):
        o = board.reserve(T_TELEMETRY)
        p = cbor2.dumps([v])
        board.pbuf[o:o + len(p)] = p
        assert board.commit(T_TELEMETRY, len(p))
    sim.run(100)
    assert (T_EVENT, {0: 1, 1: "x"}) in got and (T_EVENT, {0: 2, 1: -7, 2: 1 << 29}) in got
    assert [m for m in got if m[0] == T_TELEMETRY] == [(T_TELEMETRY, [11])]
    # refusals: link-owned types, unreliable send_ints, a value beyond 30 bits, a full queue
    for t in (T_HELLO, T_ACK, T_NAK, 0, 12):
        assert board.reserve(t) == -1 and not board.commit(t, 0)
    assert not board.send_ints(T_TELEMETRY, [1], 1)
    assert not board.send_ints(T_EVENT, [1 << 30], 1)
    assert not board.commit(T_EVENT, MAX_PAYLOAD + 1)
    sim.ch.b2a.cut = True  # nothing gets acked: the queue fills
    n = 0
    while board.send_ints(T_EVENT, [n], 1):
        n += 1
    assert n == board.queue_slots - board.queued() + n and board.free_slots() == 0
    before = board.stats[S_QUEUE_OVERFLOWS]
    assert board.reserve(T_EVENT) == -1 and not board.send_ints(T_EVENT, [1], 1)
    assert board.stats[S_QUEUE_OVERFLOWS] == before + 2
    assert host.state == ST_CONNECTED


class QuietCheckingEnd(End):
    """An End that, before each poll, predicts from ``quiet``/``wake_ms`` that
    nothing is due, and checks the poll agrees (skipping it would be safe)."""

    skipped = 0
    polled = 0

    def service(self, t_us):
        link = self.link
        orig = link.poll

        def poll(now, out, pos):
            idle = link.quiet and (not link.wake_on or ticks_diff(now, link.wake_ms) < 0)
            n = orig(now, out, pos)
            QuietCheckingEnd.polled += 1
            if idle:
                QuietCheckingEnd.skipped += 1
                assert n == 0, "a quiet link sent a frame"
            return n

        link.poll = poll
        try:
            super().service(t_us)
        finally:
            del link.poll


def test_quiet_link_has_nothing_due_until_wake_ms():
    """The board's idle fast path skips poll() while the link is quiet and its
    timer is not due. On a lossy line with traffic both ways (retransmission
    timeouts, NAKs, duplicates, a session change), every poll that the flag
    says could be skipped finds nothing to send."""
    QuietCheckingEnd.skipped = QuietCheckingEnd.polled = 0
    board = make_board()
    host = Link(ROLE_HOST, session_start=1000)
    sim = Sim(board, host, seed=5, drop=0.05, ber=2e-4, dup=0.01, stall=0.002)
    sim.board = QuietCheckingEnd(board, rx=sim.ch.b2a, tx=sim.ch.a2b)
    sim.host = QuietCheckingEnd(host, rx=sim.ch.a2b, tx=sim.ch.b2a)
    sim.run_until(sim.connected, 3000)
    got = run_traffic(sim, 150, 150, max_ms=120_000)
    assert got["host"] == list(range(150)) and got["board"] == list(range(150))
    assert board.stats[S_TIMEOUTS] + host.stats[S_TIMEOUTS] > 0
    assert board.stats[S_NAKS_TX] + host.stats[S_NAKS_TX] > 0
    # and the prediction is not vacuous: most polls of an idle millisecond
    assert QuietCheckingEnd.skipped > QuietCheckingEnd.polled // 3


def test_quiet_wakes_for_the_retransmission_timer():
    sim = connected_sim(seed=8)
    board = sim.board.link
    sim.run(50)
    sim.ch.b2a.cut = True  # the host hears nothing: no ack will come
    assert board.send(T_EVENT, b"\xa0", 0, 1)
    t = now_ms(sim.t)
    out = bytearray(MAX_WIRE)
    assert board.poll(t, out, 0) > 0  # sent once; the timer runs
    assert board.poll(t, out, 0) == 0
    assert board.quiet and board.wake_on and board.wake_ms == (t + board.rto_ms) & MASK30
    assert board.poll((board.wake_ms - 1) & MASK30, out, 0) == 0  # not a ms early
    assert board.poll(board.wake_ms, out, 0) > 0  # the retransmission, on time
    assert board.stats[S_TIMEOUTS] == 1


# ---------------------------------------------------------------------------
# MicroPython: the steady-state path allocates nothing
# ---------------------------------------------------------------------------

MP_SCRIPT = r"""
import gc, micropython
from metal.core.compat import ticks_add
from metal.core.cbor import Encoder, Decoder, K_MAP, K_UINT
from metal.core.link import *
from metal.core.proto import *

board = Link(ROLE_BOARD)
host = Link(ROLE_HOST, session_start=77)
host2 = Link(ROLE_HOST, session_start=5000)  # a restarted bridge, swapped in while locked
host1 = host
ident = bytearray(b"\x02\x1a\x00\x01\x02\x03\x04\x63sim")  # {2: 66051, 4: "sim"}
board.set_identity(ident, len(ident), 2)

CAP = 4096
b2h = bytearray(CAP)
h2b = bytearray(CAP)
lens = bytearray(2)
nb = [0, 0]           # bytes waiting per direction (list: mutated in place)
frames = [0]
pay = bytearray(16)
penc = Encoder(pay)
dec = Decoder()
got = [0, 0, 0]        # next expected event id at host, cmd id at board; telemetry count
sent = [0, 0]
bad = [0]              # gaps or reordering
redelivered = [0]      # ids seen again after a session change (the app de-duplicates)

def xmit(link, buf, d):
    # poll frames straight into the line buffer; impair some (no allocation)
    while nb[d] <= CAP - MAX_WIRE:
        s = nb[d]
        n = link.poll(now[0], buf, s)
        if n == 0:
            return
        frames[0] += 1
        f = frames[0]
        if f % 53 == 0:
            continue                      # lost
        if f % 37 == 0:
            buf[s + 2] ^= 0x10            # bit error
        nb[d] = s + n
        if f % 71 == 0 and nb[d] + n <= CAP:
            for i in range(n):            # duplicated
                buf[s + n + i] = buf[s + i]
            nb[d] += n

def value():
    dec.reset(rxl[0].rx_buf, rxl[0].rx_off, rxl[0].rx_off + rxl[0].rx_len)
    if dec.next() != K_MAP or dec.next() != K_UINT or dec.next() != K_UINT:
        return -1
    return dec.val

rxl = [board]

def recv(link, buf, d, which):
    i = 0
    n = nb[d]
    while i < n:
        i = link.feed(buf, i, n, now[0])
        if link.ev == EV_MESSAGE:
            t = link.rx_type
            rxl[0] = link
            if t == T_EVENT or t == T_CMD:
                v = value()
                if v == got[which]:
                    got[which] += 1
                elif v < got[which]:
                    redelivered[0] += 1
                else:
                    bad[0] += 1
            elif t == T_TELEMETRY:
                got[2] += 1
    nb[d] = 0

def produce(link, mtype, k):
    while True:
        penc.reset(0)
        penc.map(1)
        penc.uint(0)
        penc.uint(sent[k])
        if not link.send(mtype, pay, 0, penc.pos):
            return
        sent[k] += 1

now = [0]

def step(i):
    global host
    now[0] = ticks_add(now[0], 1)
    if i == SWAP:
        # the bridge restarts: its unacked CMDs die with it, the new one counts on
        host = host2
        got[1] = sent[1]
    produce(board, T_EVENT, 0)
    produce(host, T_CMD, 1)
    if i % 10 == 0:
        penc.reset(0)
        penc.array(2)
        penc.uint(i & 0xFFFF)
        penc.uint(7)
        board.send(T_TELEMETRY, pay, 0, penc.pos)
        host.send(T_HEARTBEAT, pay, 0, penc.pos)
    xmit(board, b2h, 0)
    xmit(host, h2b, 1)
    recv(host, b2h, 0, 0)
    recv(board, h2b, 1, 1)

SWAP = -1
for i in range(300):     # handshake + warm-up, heap unlocked
    step(i)
assert board.state == ST_CONNECTED and host.state == ST_CONNECTED, (board.state, host.state)

st0 = [board.stats[k] + host1.stats[k] + host2.stats[k] for k in range(S_COUNT)]
g0 = [got[0], got[1], got[2]]
N = STEPS
SWAP = N // 2
gc.collect()
gc.disable()
a0 = gc.mem_alloc()
micropython.heap_lock()
try:
    for i in range(N):
        step(i)
finally:
    micropython.heap_unlock()
a1 = gc.mem_alloc()
gc.enable()
d = [board.stats[k] + host1.stats[k] + host2.stats[k] - st0[k] for k in range(S_COUNT)]
assert host is host2 and board.session == 5000 and host2.state == ST_CONNECTED
print("RESULT", a1 - a0, got[0] - g0[0], got[1] - g0[1], got[2] - g0[2], bad[0], redelivered[0],
      d[S_RETRANSMITS], d[S_CRC_ERRORS] + d[S_COBS_ERRORS] + d[S_OTHER_FRAME_ERRORS],
      d[S_NAKS_TX], d[S_DUPLICATES], d[S_TIMEOUTS], d[S_QUEUE_OVERFLOWS], d[S_TELEMETRY_LOST],
      board.stats[S_SESSIONS])
"""


def _check_mp_result(stdout):
    line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT")]
    assert line, stdout
    (delta, ev, cmd, tel, bad, redeliv, rtx, ferr, naks, dups, tmo, ovf, tlost, sess) = map(
        int, line[0].split()[1:]
    )
    assert delta == 0, "steady state allocated %d bytes" % delta
    assert bad == 0
    assert ev > 500 and cmd > 500 and tel > 50
    # the locked run went through the recovery paths, not just the happy path
    assert rtx > 0 and ferr > 0 and naks > 0 and dups > 0 and ovf > 0 and tlost > 0
    # ... and through a session change: the board reset and renumbered while locked
    assert sess == 2 and redeliv <= 8
    return dict(delta=delta, events=ev, cmds=cmd, telemetry=tel, retransmits=rtx,
                frame_errors=ferr, naks=naks, duplicates=dups, timeouts=tmo, redelivered=redeliv)


def test_steady_state_zero_alloc_micropython(mpvm):
    """Runs once per VM (fixture ``mpvm``): the 64-bit unix port and the 32-bit
    WASM port; the latter also catches intermediates >= 2**30 (big ints)."""
    steps = 3000 if mpvm.name == "unix" else 2000
    r = mpvm.run(MP_SCRIPT.replace("STEPS", str(steps)), timeout=240).check()
    _check_mp_result(r.stdout)


def test_telemetry_framed_by_the_caller():
    """telemetry_begin/_end: the board link frames TELEMETRY itself over ticks.
    The frame carries the seq and ack of its beginning; _end counts it sent
    (seq used, the ack given unless a reliable frame arrived in between) and
    refuses it once a new session started."""
    board, host = _pair()
    out = bytearray(MAX_WIRE)
    t = MS_BASE + 5
    p = cbor2.dumps({0: 1})
    assert board.telemetry_begin() and (board.tel_seq, board.tel_ack) == (0, 0)
    assert board.telemetry_end(len(p))
    f = _frame(T_CMD, seq=0, ack=0, payload=p)
    board.feed(f, 0, len(f), t)  # an ack is owed
    assert board.telemetry_begin() and (board.tel_seq, board.tel_ack) == (1, 1)
    n = encode_frame(T_TELEMETRY, F_ACK, board.tel_seq, board.tel_ack, p, 0, len(p),
                     bytearray(SCRATCH_LEN), out, 0)
    assert board.telemetry_end(len(p))
    assert board.poll(t, out, 0) == 0  # the TELEMETRY carried the ack
    host.feed(out, 0, n, t)
    assert host.ev == EV_MESSAGE and host.rx_type == T_TELEMETRY and host.rx_seq == 1
    # a reliable frame arriving while a TELEMETRY is built: its ack is still owed
    assert board.telemetry_begin() and board.tel_ack == 1
    f = _frame(T_CMD, seq=1, ack=0, payload=p)
    board.feed(f, 0, len(f), t)
    assert board.telemetry_end(len(p))
    n = board.poll(t, out, 0)
    assert frame_header(out[:n]) == (T_ACK, F_ACK, 0, 2)
    # a new session while a TELEMETRY is built: dropped, its seq not used
    assert board.telemetry_begin() and board.tel_seq == 3
    host2 = Link(ROLE_HOST, session_start=900)
    for _ in range(4):
        for a, b in ((host2, board), (board, host2)):
            m = a.poll(t, out, 0)
            if m:
                b.feed(out, 0, m, t)
    assert board.state == ST_CONNECTED and board.session == host2.session
    assert not board.telemetry_end(len(p))
    assert board.telemetry_begin() and board.tel_seq == 3
    board.disconnect()
    assert not board.telemetry_begin()
