"""The board's end of the serial link: the firmware's one conversation with the host.

Once per tick the firmware's link phase calls ``receive(now_ms)``, builds
TELEMETRY when it is due, then calls ``transmit(now_ms)``. The link's work is
metered so that no tick does much more than one unit of it: a tick's cost
must stay small and even on a board (every tick is a full pass of the
controllers too), and the link is where the heavy, bursty work is.

1. ``receive`` reads at most ``serial_budget`` bytes from the HAL and feeds
   them to the link state machine; each delivered message is handled at
   once (so a batch of commands is judged together, in arrival order):
   CMD -> ``runner.execute(op, target, arg, arg2)`` -> a result in the
   result ring, HEARTBEAT -> echo and host-alive timestamp, POLICY -> result
   unknown_op (this firmware has no policy table yet), HELLO -> handled by
   the link. A tick that received anything is *busy*.
2. TELEMETRY is a snapshot encoded into ``telemetry_buf`` (then
   ``commit_telemetry``) in a tick that is not busy, at most
   ``TELEMETRY_SLIP`` ticks after it falls due; the tick that encodes it is
   busy too. It stays on its grid of ``telemetry_every`` ticks.
3. ``transmit`` first writes what is left of the frame in ``tx`` (at most
   ``serial_budget`` bytes a tick; a frame the HAL did not fully accept
   stays there). Then, in a tick that is not busy (or that has waited
   ``TX_SLIP`` busy ticks), it does one *send job*: the next
   ``TELEMETRY_CHUNK`` bytes of a TELEMETRY frame (``frame.FrameEncoder``:
   a snapshot goes out over two ticks), or else one payload into the
   reliable queue (a result first, then an event, then a DESCRIBE part;
   two slots are always kept for results) and one frame from the link.

Per tick, in order (one of the heavy boxes at most, unless a slip ran out)::

    receive: bytes? --yes--> deframe, handle every message ........ busy
    TELEMETRY due, not busy? --> encode the snapshot ............. busy
    transmit: rest of tx --> busy? --no--> TELEMETRY framing step
                                            or queue one payload + one frame

So a command's result reaches the host a tick or more after the command
(one frame a tick), a TELEMETRY two or three ticks after its snapshot, and
an event a tick or more after it happened; ``Event`` ms stamps and the
TELEMETRY contents keep their own time. Two exceptions keep rates up: a
backlog (BACKLOG_EVENTS events or BACKLOG_RESULTS results waiting) allows
BACKLOG_JOBS send jobs a tick, busy or not, until it is worked off; and a
``telemetry_every`` below TELEMETRY_SPREAD_MIN is framed whole in the tick
of its snapshot, outside the metering. ``results_out`` tells the firmware
when a requested reboot may happen (its RESULT is on the wire).

Idle fast path: with nothing unwritten in ``tx``, no telemetry, result,
event or DESCRIBE part waiting and the link ``quiet`` (its last poll found
nothing, and nothing arrived or was queued since that could change it),
nothing can be due but a link timer, so ``transmit`` only compares the
link's ``wake_ms`` (retransmission or HELLO deadline) with the clock; the
retransmission timers keep their exact times (to the tick).

Commands are idempotent by id: the last ``RESULT_SLOTS`` results are kept,
and a CMD whose id is among them is answered again with the first verdict
without executing (the host retries across session resets).

Host liveness: ``host_lost`` becomes 1 when no HEARTBEAT arrived within the
heartbeat timeout (counted from boot until the first one), and 0 again on the
next heartbeat. The firmware turns the edge into its safe state.
"""

from array import array

from metal.core.cbor import K_ARRAY, K_MAP, K_NEG, K_UINT, Decoder, int_map_into
from metal.core.compat import const, ticks_diff
from metal.core.frame import FrameEncoder
from metal.core.link import EV_MESSAGE, Link, ROLE_BOARD, ST_CONNECTED, S_QUEUE_OVERFLOWS
from metal.core.proto import (
    E_OK,
    E_SCHEMA,
    F_ACK,
    MAX_PAYLOAD,
    MAX_WIRE,
    R_MALFORMED,
    R_UNKNOWN_OP,
    T_CMD,
    T_DESCRIBE,
    T_EVENT,
    T_HEARTBEAT,
    T_POLICY,
    T_RESULT,
    T_TELEMETRY,
)

RESULT_SLOTS = const(16)
TELEMETRY_SLIP = const(2)  # ticks a due TELEMETRY may wait for a tick that is not busy
TX_SLIP = const(2)  # busy ticks a send job may wait
# A backlog (a burst of events or results) lifts the metering: up to
# BACKLOG_JOBS send jobs a tick, busy or not, until it is worked off, so the
# link keeps up with the wire instead of overflowing the event ring.
BACKLOG_EVENTS = const(8)
BACKLOG_RESULTS = const(4)
BACKLOG_JOBS = const(4)
TELEMETRY_CHUNK = const(48)  # TELEMETRY payload bytes framed per tick
# TELEMETRY due more often than this (ticks) cannot be spread (a snapshot
# tick and two framing ticks, plus slack): it is framed whole in the tick of
# its snapshot, outside the metering, so its rate holds
TELEMETRY_SPREAD_MIN = const(4)
_TEL_NONE = const(0)
_TEL_READY = const(1)  # a snapshot is encoded, its frame not begun
_TEL_FRAMING = const(2)  # its frame is being built into tx
_MIN_BUDGET = const(16)  # serial bytes per tick at least
_RESERVED_FOR_RESULTS = const(2)
_MASK = const(0x3FFFFFFF)
_NO_ID = const(-1)
_N_FIELDS = const(5)  # CMD keys read into _fields: id, op, target, arg, arg2


class BoardLink:
    def __init__(self, runner, hal, events, describe_parts, identity_entries,
                 n_identity_entries, heartbeat_timeout_ms, serial_budget=256,
                 telemetry_every=10):
        self.runner = runner
        self.hal = hal
        self.events = events
        self.link = Link(ROLE_BOARD)
        link = self.link
        if not link.set_identity(identity_entries, len(identity_entries), n_identity_entries):
            raise ValueError("board identity does not fit a HELLO")
        self.describe = describe_parts
        self.n_describe = len(describe_parts)
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        # bytes read and written per tick at most (the board's Limits; at
        # least 16: a frame longer than the budget goes out over several ticks)
        self.budget = serial_budget if serial_budget >= _MIN_BUDGET else _MIN_BUDGET

        self.rx = bytearray(self.budget)
        self.tx = bytearray(MAX_WIRE)  # the frame being built or written
        self.tx_pos = 0  # tx[:tx_pos] went to the HAL
        self.tx_len = 0
        self._wleft = 0  # bytes this tick may still write
        self.busy = 0  # this tick received bytes or encoded a TELEMETRY snapshot
        self.tel_slip = 0  # ticks the due TELEMETRY has waited
        self.tx_wait = 0  # busy ticks the send job has waited
        self.pbuf = link.pbuf  # the link's payload slots: messages are built in place
        # TELEMETRY: the firmware's TelemetryEncoder writes the snapshot here
        # (nothing is copied), and it is framed from here over two ticks
        self.telemetry_buf = memoryview(bytearray(MAX_PAYLOAD))
        self.tel_len = 0
        self.tel_state = _TEL_NONE
        self.tel_spread = 1 if telemetry_every >= TELEMETRY_SPREAD_MIN else 0
        self._tel_chunk = TELEMETRY_CHUNK if self.tel_spread else MAX_PAYLOAD
        self._fenc = FrameEncoder()
        self.vals = array("i", [0] * 6)  # one message's integers, for int_map_into
        self._fields = array("i", [0] * _N_FIELDS)  # a received CMD's keys 0..4
        self.dec = Decoder()

        # recent results, a ring; `res_unsent` counts the newest ones not yet queued
        self.res_id = array("i", [_NO_ID] * RESULT_SLOTS)
        self.res_code = bytearray(RESULT_SLOTS)
        self.res_value = array("i", [0] * RESULT_SLOTS)
        self.res_has_value = bytearray(RESULT_SLOTS)
        self.res_next = 0
        self.res_unsent = 0
        self.results_lost = 0  # a result pushed out of the ring before it could be queued

        self.session_seen = 0
        self.describe_next = self.n_describe  # nothing to send until connected

        self.last_hb_ms = 0
        self.host_lost = 0
        self.heartbeats = 0
        self.commands = 0
        self.duplicates = 0
        self.malformed = 0
        self.boot_ms = 0
        self._have_boot = 0

        # bound methods, created once (a bound method made per tick allocates)
        self._send = link.send
        self._feed = link.feed
        self._poll = link.poll
        self._reserve = link.reserve
        self._commit = link.commit
        self._send_ints = link.send_ints

    # -- per tick ---------------------------------------------------------------------
    def receive(self, now_ms):
        """Read and handle what arrived (see the module docstring); a tick
        that received anything is ``busy``."""
        if not self._have_boot:
            self._have_boot = 1
            self.boot_ms = now_ms
            self.last_hb_ms = now_ms
        self.busy = 0
        link = self.link
        n = self.hal.serial_read(self.rx, 0, self.budget)
        if n:
            self.busy = 1
            rx = self.rx
            feed = self._feed
            pos = 0
            while pos < n:
                pos = feed(rx, pos, n, now_ms)
                if link.ev == EV_MESSAGE:
                    self._on_message(now_ms)
            # (the session changes only in feed)
            if link.state == ST_CONNECTED and link.session != self.session_seen:
                self.session_seen = link.session
                self.describe_next = 0

    def transmit(self, now_ms):
        """Write the rest of the frame in ``tx``, then do one send job unless
        the tick is busy (see the module docstring)."""
        self._wleft = self.budget
        if self.tx_pos < self.tx_len and not self._write():
            return  # the tick's write budget went to the frame already in tx
        link = self.link
        # Idle fast path: nothing waiting here, and the link quiet with no
        # timer due. Skipping the poll is safe: a quiet link's poll returns 0
        # until something arrives or is queued (which clears quiet) or
        # wake_ms passes (see Link.poll).
        if not (self.tel_state or self.res_unsent or self.events.count
                or self.describe_next < self.n_describe or not link.quiet
                or (link.wake_on and ticks_diff(now_ms, link.wake_ms) >= 0)):
            self.tx_wait = 0
            return
        if self.tel_state and not self.tel_spread:
            # (TELEMETRY_SPREAD_MIN) the snapshot is framed whole, now
            self._telemetry_step()
            if self.tx_pos < self.tx_len:
                return
        jobs = 1
        if self.events.count >= BACKLOG_EVENTS or self.res_unsent >= BACKLOG_RESULTS:
            jobs = BACKLOG_JOBS
        elif self.busy and self.tx_wait < TX_SLIP:
            self.tx_wait += 1
            return
        self.tx_wait = 0
        while jobs > 0:
            jobs -= 1
            if not self._send_job(now_ms):
                return

    def _send_job(self, now_ms):
        # One send job (see the module docstring); False when the tick can do
        # no more (nothing left, or the frame in tx is not all written).
        if self.tel_state and self.tel_spread and self._telemetry_step():
            return self.tx_pos >= self.tx_len and self.tel_state != _TEL_FRAMING
        # one payload into the reliable queue, then one frame
        if self.res_unsent:
            if self.link.free_slots() > 0:
                self._queue_oldest_result()
        elif self.events.count:
            self._queue_event()
        elif self.describe_next < self.n_describe:
            self._queue_describe_part()
        n = self._poll(now_ms, self.tx, 0)
        if n <= 0:
            return False
        self.tx_pos = 0
        self.tx_len = n
        return self._write()

    def telemetry_now(self):
        """The firmware asks, in a tick whose TELEMETRY is due, after
        ``receive``: encode the snapshot now? Not while the previous one is
        being framed (it waits, on its grid), nor in a busy tick or one whose
        send job has waited its slip (that job goes first), for at most
        ``TELEMETRY_SLIP`` ticks (unless TELEMETRY is not spread: then always)."""
        if self.tel_state == _TEL_FRAMING:
            return 0
        if ((self.busy or self.tx_wait >= TX_SLIP) and self.tel_slip < TELEMETRY_SLIP
                and self.tel_spread):
            self.tel_slip += 1
            return 0
        self.tel_slip = 0
        return 1

    def results_out(self):
        """Every result so far is on the wire: none waits in the result ring,
        every queued reliable frame has been sent at least once, and the frame
        in tx is all written (the firmware reboots only then)."""
        link = self.link
        return (not self.res_unsent and link.inflight() >= link.queued()
                and self.tx_pos >= self.tx_len)

    def check_heartbeat(self, now_ms):
        """Set ``host_lost`` once no HEARTBEAT arrived within the timeout. The
        runner calls this once per tick in its input phase (before ``receive``),
        so the safe state starts in the tick the timeout ends."""
        if not self._have_boot:
            self._have_boot = 1
            self.boot_ms = now_ms
            self.last_hb_ms = now_ms
        if ticks_diff(now_ms, self.last_hb_ms) > self.heartbeat_timeout_ms:
            self.host_lost = 1

    def queue_overflows(self):
        return (self.events.overflows + self.link.stats[S_QUEUE_OVERFLOWS]) & _MASK

    def commit_telemetry(self, n):
        """The ``n``-byte TELEMETRY snapshot just encoded in ``telemetry_buf``
        is to be sent (nothing for n <= 0: an encoder error). It replaces a
        snapshot whose frame has not begun (latest wins). The tick is busy
        (unless TELEMETRY is not spread: TELEMETRY_SPREAD_MIN)."""
        if n > 0:
            self.tel_len = n
            self.tel_state = _TEL_READY
            self.busy = self.tel_spread

    # -- receive --------------------------------------------------------------------------
    def _on_message(self, now_ms):
        link = self.link
        t = link.rx_type
        if t == T_CMD:
            self._on_cmd(link.rx_buf, link.rx_off, link.rx_len, link.rx_err)
        elif t == T_HEARTBEAT:
            self._on_heartbeat(link.rx_buf, link.rx_off, link.rx_len, now_ms)
        elif t == T_POLICY:
            # Answer under the transfer id (key 0) so the host is not left waiting.
            self._on_cmd(link.rx_buf, link.rx_off, link.rx_len, link.rx_err, 1)

    def _on_heartbeat(self, buf, off, n, now_ms):
        d = self.dec
        d.reset(buf, off, off + n)
        if d.next() != K_MAP:
            return
        host_ms = -1
        for _ in range(d.val):
            if d.next() != K_UINT:
                return
            key = d.val
            k = d.next()
            if k < 0:
                return
            if key == 0 and k == K_UINT:
                host_ms = d.val
            elif k == K_ARRAY or k == K_MAP:
                return  # a heartbeat holds plain values only
        if host_ms < 0:
            return
        self.last_hb_ms = now_ms
        self.host_lost = 0
        self.heartbeats = (self.heartbeats + 1) & _MASK
        o = self._reserve(T_HEARTBEAT)
        if o >= 0:
            v = self.vals
            v[0] = host_ms
            v[1] = (now_ms - self.boot_ms) & _MASK
            e = int_map_into(self.pbuf, o, v, 2)
            if e > 0:
                self._commit(T_HEARTBEAT, e - o)

    def _on_cmd(self, buf, off, n, err, is_policy=0):
        self.commands = (self.commands + 1) & _MASK
        # CMD map keys 0..4 (id, op, target, arg, arg2) land in f[key]
        f = self._fields
        f[0] = _NO_ID
        f[1] = -1
        f[2] = -1
        f[3] = 0
        f[4] = 0
        bad = err
        if bad == E_OK:
            # Fast path: a map of small unsigned keys to integers (every CMD the
            # host sends), read inline. The payload passed validation, so each
            # head is well-formed and in range. It gives up on anything else
            # (a key >= 24, another kind of value, an 8-byte head) and the
            # general loop below parses the payload again from the start: it
            # sees the same entries in the same order, so it reaches the same
            # values and the same verdict.
            slow = 1
            ib = buf[off] if n else 0
            if 0xA0 <= ib < 0xB8:
                slow = 0
                p = off + 1
                seen = 0  # bit per key: a repeated key is refused, never "last one wins"
                for _ in range(ib - 0xA0):
                    key = buf[p]
                    ib = buf[p + 1]
                    if key >= 0x18 or ib >= 0x3B or 0x1B <= ib < 0x20:
                        slow = 1
                        break
                    p += 2
                    neg = ib >= 0x20
                    if neg:
                        ib -= 0x20
                    if ib < 0x18:
                        v = ib
                    elif ib == 0x18:
                        v = buf[p]
                        p += 1
                    elif ib == 0x19:
                        v = (buf[p] << 8) | buf[p + 1]
                        p += 2
                    else:
                        v = (buf[p] << 24) | (buf[p + 1] << 16) | (buf[p + 2] << 8) | buf[p + 3]
                        p += 4
                    if neg:
                        v = -1 - v
                    if key < 8:
                        if seen & (1 << key):
                            bad = E_SCHEMA
                            break
                        seen |= 1 << key
                    if key < _N_FIELDS:
                        f[key] = v
            if slow:
                d = self.dec
                d.reset(buf, off, off + n)
                if d.next() != K_MAP:
                    bad = E_SCHEMA
                else:
                    seen = 0
                    for _ in range(d.val):
                        if d.next() != K_UINT:
                            bad = E_SCHEMA
                            break
                        key = d.val
                        if key < 8:
                            if seen & (1 << key):
                                bad = E_SCHEMA
                                break
                            seen |= 1 << key
                        k = d.next()
                        if k == K_UINT or k == K_NEG:
                            v = d.val
                            if key < _N_FIELDS:
                                f[key] = v
                        elif k < 0:
                            bad = d.err
                            break
                        elif is_policy and key == 4:
                            pass  # the chunk: a byte string, already consumed by next()
                        else:
                            bad = E_SCHEMA
                            break
        else:
            f[0] = self._salvage_id(buf, off, n)
        cid = f[0]
        op = f[1]
        if cid < 1:
            # No id to answer under: count it and drop it (the host will time out).
            self.malformed = (self.malformed + 1) & _MASK
            return
        slot = self._find_result(cid)
        if slot >= 0:
            self.duplicates = (self.duplicates + 1) & _MASK
            if not self._is_unsent(slot):
                self._requeue_result(slot)
            return
        if bad != E_OK or (op < 0 and not is_policy):
            self.malformed = (self.malformed + 1) & _MASK
            self._add_result(cid, R_MALFORMED, bad if bad != E_OK else E_SCHEMA, 1)
            return
        if is_policy:
            self._add_result(cid, R_UNKNOWN_OP, 0, 0)
            return
        code = self.runner.execute(op, f[2], f[3], f[4])
        self._add_result(cid, code, 0, 0)

    def _salvage_id(self, buf, off, n):
        """The id of a CMD whose payload failed validation (a float, a tag, an
        integer beyond 30 bits, trailing bytes...), so it can still be answered
        R_MALFORMED: key 0 with an unsigned value among the map entries before
        the damage. -1 when there is none to trust."""
        d = self.dec
        d.reset(buf, off, off + n)
        if d.next() != K_MAP:
            return _NO_ID
        for _ in range(d.val):
            if d.next() != K_UINT:
                return _NO_ID
            if d.val == 0:
                return d.val if d.next() == K_UINT else _NO_ID
            if d.skip() < 0:
                return _NO_ID
        return _NO_ID

    # -- results ---------------------------------------------------------------------------
    def _find_result(self, cid):
        ids = self.res_id
        for i in range(RESULT_SLOTS):
            if ids[i] == cid:
                return i
        return -1

    def _is_unsent(self, slot):
        age = self.res_next - slot  # 1 = newest
        if age <= 0:
            age += RESULT_SLOTS
        return age <= self.res_unsent

    def _add_result(self, cid, code, value, has_value):
        i = self.res_next
        if self.res_unsent == RESULT_SLOTS:
            self.results_lost = (self.results_lost + 1) & _MASK
            self.res_unsent -= 1
        self.res_id[i] = cid
        self.res_code[i] = code
        self.res_value[i] = value
        self.res_has_value[i] = has_value
        self.res_next = i + 1 if i + 1 < RESULT_SLOTS else 0
        self.res_unsent += 1

    def _queue_result(self, i):
        """RESULT ``i`` of the ring into the reliable queue; False if refused."""
        v = self.vals
        v[0] = self.res_id[i]
        v[1] = self.res_code[i]
        v[2] = self.res_value[i]
        return self._send_ints(T_RESULT, v, 3 if self.res_has_value[i] else 2)

    def _requeue_result(self, slot):
        # A duplicate of a command already answered: send the same verdict again
        # (the first RESULT may be in flight on a dead session).
        self._queue_result(slot)

    def _queue_oldest_result(self):
        i = self.res_next - self.res_unsent
        if i < 0:
            i += RESULT_SLOTS
        if self._queue_result(i):
            self.res_unsent -= 1

    # -- events and describe ---------------------------------------------------------------
    def _queue_event(self):
        if self.link.free_slots() <= _RESERVED_FOR_RESULTS:
            return
        ev = self.events
        i = ev.head
        v = self.vals
        v[0] = ev.seq[i]
        v[1] = ev.kind[i]
        v[2] = ev.source[i]
        v[3] = ev.value[i]
        v[4] = ev.ms[i] & _MASK
        v[5] = ev.aux[i]
        if self._send_ints(T_EVENT, v, 6):
            ev.pop()

    def _queue_describe_part(self):
        if self.link.free_slots() <= _RESERVED_FOR_RESULTS:
            return
        p = self.describe[self.describe_next]
        if self._send(T_DESCRIBE, p, 0, len(p)):
            self.describe_next += 1

    # -- transmit ----------------------------------------------------------------------------
    def _write(self):
        """tx[tx_pos:tx_len] to the HAL, within this tick's write budget;
        True once the whole frame is out."""
        p = self.tx_pos
        want = self.tx_len - p
        if want > self._wleft:
            want = self._wleft
        if want <= 0:
            return False
        w = self.hal.serial_write(self.tx, p, want)
        if w <= 0:
            return False
        self.tx_pos = p + w
        self._wleft -= w
        return self.tx_pos >= self.tx_len

    def _telemetry_step(self):
        """The TELEMETRY send job: begin its frame or build the next chunk;
        the finished frame goes to tx. False when there was nothing to do (the
        snapshot was dropped: no session)."""
        link = self.link
        if self.tel_state == _TEL_READY:
            if not link.telemetry_begin():
                self.tel_state = _TEL_NONE  # not connected: nobody to send it to
                return False
            if not self._fenc.start(T_TELEMETRY, F_ACK, link.tel_seq, link.tel_ack,
                                    self.telemetry_buf, 0, self.tel_len, self.tx, 0):
                self.tel_state = _TEL_NONE  # (cannot happen: a snapshot fits a frame)
                return False
            self.tel_state = _TEL_FRAMING
        n = self._fenc.step(self._tel_chunk)
        if n < 0:
            return True
        self.tel_state = _TEL_NONE
        if link.telemetry_end(self.tel_len):
            self.tx_pos = 0
            self.tx_len = n
            self._write()
        return True
