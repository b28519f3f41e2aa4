"""The board's end of the serial link: the firmware's one conversation with the host.

Once per tick the firmware's link phase calls ``receive(now_ms)``, builds
TELEMETRY when it is due, then calls ``transmit(now_ms)``:

1. ``receive`` reads at most ``serial_budget`` bytes from the HAL and feeds
   them to the link state machine; each delivered message is handled at
   once: CMD -> ``runner.execute(op, target, arg, arg2)`` -> RESULT,
   HEARTBEAT -> echo and host-alive timestamp, POLICY -> RESULT unknown_op
   (this firmware has no policy table yet), HELLO -> handled by the link;
   then, after a new session, it queues the DESCRIBE parts, and it drains
   finished results, then board events, into the reliable queue (results
   first, and two slots are always kept for results);
2. TELEMETRY is built straight into the link's slot (``telemetry_buf``,
   ``commit_telemetry``), like RESULT and EVENT payloads (``Link.send_ints``):
   no payload is encoded into a scratch buffer and copied;
3. ``transmit`` writes the frame left over from the previous tick, then
   polls the link for frames (each encoded in one pass: CRC-16 and COBS
   together) and writes them, at most ``serial_budget`` bytes a tick; a
   frame the HAL did not fully accept stays in ``tx`` for the next tick.

Spreading the work: a tick that handled a message or queued a reliable one
is *busy*; a TELEMETRY that falls due in a busy tick waits for the next
tick that is not, at most ``TELEMETRY_SLIP`` ticks (``telemetry_now``), so
the two heavy kinds of link work (a command with its result, a TELEMETRY
frame) rarely share a tick. TELEMETRY stays on its grid of
``telemetry_every`` ticks and reaches the host in the tick of its snapshot.
Nothing else waits: commands are executed, and results and events sent, in
the tick they arrive or happen (up to the serial budget), so a batch of
commands is judged and answered together.

Idle fast path: with nothing unwritten in ``tx`` and the link ``quiet`` (its
last poll found nothing, and nothing arrived or was queued since that could
change it), nothing can be due but a link timer, so ``transmit`` only
compares the link's ``wake_ms`` (retransmission or HELLO deadline) with the
clock; the retransmission timers keep their exact times.

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
from metal.core.link import EV_MESSAGE, Link, ROLE_BOARD, ST_CONNECTED, S_QUEUE_OVERFLOWS
from metal.core.proto import (
    E_OK,
    E_SCHEMA,
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
_MIN_BUDGET = const(16)  # serial bytes per tick at least
_RESERVED_FOR_RESULTS = const(2)
_MASK = const(0x3FFFFFFF)
_NO_ID = const(-1)
_N_FIELDS = const(5)  # CMD keys read into _fields: id, op, target, arg, arg2


class BoardLink:
    def __init__(self, runner, hal, events, describe_parts, identity_entries,
                 n_identity_entries, heartbeat_timeout_ms, serial_budget=256):
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
        self.tx = bytearray(MAX_WIRE)  # the frame being written
        self.tx_pos = 0  # tx[:tx_pos] went to the HAL
        self.tx_len = 0
        self.busy = 0  # this tick handled a message or queued a reliable one
        self.tel_slip = 0  # ticks the due TELEMETRY has waited
        self.pbuf = link.pbuf  # the link's payload slots: messages are built in place
        # The link's TELEMETRY slot as a buffer of its own (made once): the
        # firmware's TelemetryEncoder writes there, so nothing is copied.
        o = link.reserve(T_TELEMETRY)
        self.telemetry_buf = memoryview(link.pbuf)[o:o + MAX_PAYLOAD]
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
        """Read and handle what arrived; queue DESCRIBE parts, results and
        events. ``busy`` says whether this tick had a message or queued a
        reliable one (see ``telemetry_now``)."""
        if not self._have_boot:
            self._have_boot = 1
            self.boot_ms = now_ms
            self.last_hb_ms = now_ms
        self.busy = 0
        link = self.link
        n = self.hal.serial_read(self.rx, 0, self.budget)
        if n:
            rx = self.rx
            feed = self._feed
            pos = 0
            while pos < n:
                pos = feed(rx, pos, n, now_ms)
                if link.ev == EV_MESSAGE:
                    self.busy = 1
                    self._on_message(now_ms)
            # (the session changes only in feed)
            if link.state == ST_CONNECTED and link.session != self.session_seen:
                self.session_seen = link.session
                self.describe_next = 0
        # each queue only when it has work: an idle tick stays a few compares
        if self.describe_next < self.n_describe:
            self.busy = 1
            self._queue_describe()
        if self.res_unsent:
            self.busy = 1
            self._queue_results()
        if self.events.count:
            self.busy = 1
            self._queue_events()

    def transmit(self, now_ms):
        """Write the frames due, at most ``serial_budget`` bytes."""
        # Idle fast path: nothing unwritten, and the link quiet with no timer
        # due. Skipping the poll is safe: a quiet link's poll returns 0 until
        # something arrives or is queued (which clears quiet) or wake_ms
        # passes (see Link.poll).
        link = self.link
        if (self.tx_pos < self.tx_len or not link.quiet
                or (link.wake_on and ticks_diff(now_ms, link.wake_ms) >= 0)):
            self._transmit(now_ms)

    def telemetry_now(self):
        """The firmware asks, in a tick whose TELEMETRY is due, after
        ``receive``: build it now? Not in a busy tick (a command, results,
        events), so the two heavy kinds of link work rarely share a tick;
        it waits at most ``TELEMETRY_SLIP`` ticks, then goes anyway."""
        if self.busy and self.tel_slip < TELEMETRY_SLIP:
            self.tel_slip += 1
            return 0
        self.tel_slip = 0
        return 1

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
        """Hand the link the ``n``-byte TELEMETRY payload just built in
        ``telemetry_buf`` (nothing for n <= 0: an encoder error)."""
        if n > 0:
            self._commit(T_TELEMETRY, n)

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

    def _queue_results(self):
        free = self.link.free_slots()
        while self.res_unsent and free > 0:
            i = self.res_next - self.res_unsent
            if i < 0:
                i += RESULT_SLOTS
            if not self._queue_result(i):
                return
            self.res_unsent -= 1
            free -= 1

    # -- events and describe ---------------------------------------------------------------
    def _queue_events(self):
        ev = self.events
        link = self.link
        v = self.vals
        free = link.free_slots()
        while ev.count and free > _RESERVED_FOR_RESULTS:
            i = ev.head
            v[0] = ev.seq[i]
            v[1] = ev.kind[i]
            v[2] = ev.source[i]
            v[3] = ev.value[i]
            v[4] = ev.ms[i] & _MASK
            v[5] = ev.aux[i]
            if not self._send_ints(T_EVENT, v, 6):
                return
            ev.pop()
            free -= 1

    def _queue_describe(self):
        parts = self.describe
        link = self.link
        while self.describe_next < self.n_describe and link.free_slots() > _RESERVED_FOR_RESULTS:
            p = parts[self.describe_next]
            if not self._send(T_DESCRIBE, p, 0, len(p)):
                return
            self.describe_next += 1

    # -- transmit ----------------------------------------------------------------------------
    def _transmit(self, now_ms):
        # The frame in tx first, then the next ones, up to the write budget;
        # what the HAL does not take stays in tx for the next tick.
        budget = self.budget
        hal = self.hal
        tx = self.tx
        while budget > 0:
            p = self.tx_pos
            if p >= self.tx_len:
                n = self._poll(now_ms, tx, 0)
                if n <= 0:
                    return
                p = 0
                self.tx_len = n
            want = self.tx_len - p
            if want > budget:
                want = budget
            w = hal.serial_write(tx, p, want)
            if w <= 0:
                self.tx_pos = p
                return
            self.tx_pos = p + w
            budget -= w
