"""The board's end of the serial link: the firmware's one conversation with the host.

Once per tick ``service(now_ms)``:

1. reads at most ``serial_budget`` bytes from the HAL and feeds them to the
   link state machine; each delivered message is handled at once:
   CMD -> ``runner.execute(op, target, arg, arg2)`` -> RESULT,
   HEARTBEAT -> echo and host-alive timestamp, POLICY -> RESULT unknown_op
   (this firmware has no policy table yet), HELLO -> handled by the link;
2. after a new session, queues the DESCRIBE parts;
3. drains finished results, then board events, into the reliable queue
   (results first, and two slots are always kept for results);
4. every ``telemetry_every`` ticks hands the latest TELEMETRY to the link;
5. writes queued wire bytes, at most ``serial_budget`` per tick; a frame the
   HAL did not fully accept stays in ``tx`` for the next tick.

Commands are idempotent by id: the last ``RESULT_SLOTS`` results are kept,
and a CMD whose id is among them is answered again with the first verdict
without executing (the host retries across session resets).

Host liveness: ``host_lost`` becomes 1 when no HEARTBEAT arrived within the
heartbeat timeout (counted from boot until the first one), and 0 again on the
next heartbeat. The firmware turns the edge into its safe state.
"""

from array import array

from metal.core.cbor import K_ARRAY, K_MAP, K_NEG, K_UINT, Decoder, Encoder
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
_RESERVED_FOR_RESULTS = const(2)
_MASK = const(0x3FFFFFFF)
_NO_ID = const(-1)


class BoardLink:
    def __init__(self, runner, hal, events, describe_parts, identity_entries,
                 n_identity_entries, heartbeat_timeout_ms, serial_budget=256):
        self.runner = runner
        self.hal = hal
        self.events = events
        self.link = Link(ROLE_BOARD)
        if not self.link.set_identity(identity_entries, len(identity_entries), n_identity_entries):
            raise ValueError("board identity does not fit a HELLO")
        self.describe = describe_parts
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.budget = serial_budget if serial_budget >= MAX_WIRE else MAX_WIRE

        self.rx = bytearray(self.budget)
        self.tx = bytearray(MAX_WIRE)
        self.tx_pos = 0
        self.tx_len = 0
        self.payload = bytearray(MAX_PAYLOAD)
        self.enc = Encoder(self.payload)
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
        self.describe_next = len(describe_parts)  # nothing to send until connected

        self.last_hb_ms = 0
        self.hb_started = 0
        self.host_lost = 0
        self.heartbeats = 0
        self.commands = 0
        self.duplicates = 0
        self.malformed = 0
        self.boot_ms = 0
        self._have_boot = 0

        self._send = self.link.send
        self._feed = self.link.feed
        self._poll = self.link.poll

    # -- per tick ---------------------------------------------------------------------
    def service(self, now_ms, telemetry, telemetry_len):
        """One tick of link work. ``telemetry``/``telemetry_len``: a payload to
        hand to the link this tick, or length 0 for none."""
        if not self._have_boot:
            self._have_boot = 1
            self.boot_ms = now_ms
            self.last_hb_ms = now_ms
        link = self.link
        n = self.hal.serial_read(self.rx, 0, self.budget)
        pos = 0
        while pos < n:
            pos = self._feed(self.rx, pos, n, now_ms)
            if link.ev == EV_MESSAGE:
                self._on_message(now_ms)

        if link.state == ST_CONNECTED and link.session != self.session_seen:
            self.session_seen = link.session
            self.describe_next = 0
        # each queue only when it has work: an idle tick stays three compares
        if self.describe_next < len(self.describe):
            self._queue_describe()
        if self.res_unsent:
            self._queue_results()
        if self.events.count:
            self._queue_events()
        if telemetry_len > 0:
            self._send(T_TELEMETRY, telemetry, 0, telemetry_len)

        self._write(now_ms)

    def check_heartbeat(self, now_ms):
        """Set ``host_lost`` once no HEARTBEAT arrived within the timeout. The
        runner calls this once per tick in its input phase (before ``service``),
        so the safe state starts in the tick the timeout ends."""
        if not self._have_boot:
            self._have_boot = 1
            self.boot_ms = now_ms
            self.last_hb_ms = now_ms
        if ticks_diff(now_ms, self.last_hb_ms) > self.heartbeat_timeout_ms:
            self.host_lost = 1

    def queue_overflows(self):
        return (self.events.overflows + self.link.stats[S_QUEUE_OVERFLOWS]) & _MASK

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
        e = self.enc
        e.reset(0)
        e.map(2)
        e.uint(0)
        e.uint(host_ms)
        e.uint(1)
        e.uint((now_ms - self.boot_ms) & _MASK)
        if not e.err:
            self._send(T_HEARTBEAT, self.payload, 0, e.pos)

    def _on_cmd(self, buf, off, n, err, is_policy=0):
        self.commands = (self.commands + 1) & _MASK
        cid = _NO_ID
        op = -1
        target = -1
        arg = 0
        arg2 = 0
        bad = err
        if bad == E_OK:
            d = self.dec
            d.reset(buf, off, off + n)
            if d.next() != K_MAP:
                bad = E_SCHEMA
            else:
                seen = 0  # bit per key: a repeated key is refused, never "last one wins"
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
                        if key == 0:
                            cid = v
                        elif key == 1:
                            op = v
                        elif key == 2:
                            target = v
                        elif key == 3:
                            arg = v
                        elif key == 4:
                            arg2 = v
                    elif k < 0:
                        bad = d.err
                        break
                    elif is_policy and key == 4:
                        pass  # the chunk: a byte string, already consumed by next()
                    else:
                        bad = E_SCHEMA
                        break
        else:
            cid = self._salvage_id(buf, off, n)
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
        code = self.runner.execute(op, target, arg, arg2)
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

    def _requeue_result(self, slot):
        # A duplicate of a command already answered: send the same verdict again
        # (the first RESULT may be in flight on a dead session).
        self._encode_result(slot)
        self._send(T_RESULT, self.payload, 0, self.enc.pos)

    def _encode_result(self, i):
        e = self.enc
        e.reset(0)
        e.map(3 if self.res_has_value[i] else 2)
        e.uint(0)
        e.uint(self.res_id[i])
        e.uint(1)
        e.uint(self.res_code[i])
        if self.res_has_value[i]:
            e.uint(2)
            e.int(self.res_value[i])

    def _queue_results(self):
        link = self.link
        while self.res_unsent and link.free_slots() > 0:
            i = self.res_next - self.res_unsent
            if i < 0:
                i += RESULT_SLOTS
            self._encode_result(i)
            if not self._send(T_RESULT, self.payload, 0, self.enc.pos):
                return
            self.res_unsent -= 1

    # -- events and describe ---------------------------------------------------------------
    def _queue_events(self):
        ev = self.events
        link = self.link
        e = self.enc
        while ev.count and link.free_slots() > _RESERVED_FOR_RESULTS:
            i = ev.head
            e.reset(0)
            e.map(6)
            e.uint(0)
            e.uint(ev.seq[i])
            e.uint(1)
            e.uint(ev.kind[i])
            e.uint(2)
            e.int(ev.source[i])
            e.uint(3)
            e.int(ev.value[i])
            e.uint(4)
            e.uint(ev.ms[i] & _MASK)
            e.uint(5)
            e.int(ev.aux[i])
            if e.err or not self._send(T_EVENT, self.payload, 0, e.pos):
                return
            ev.pop()

    def _queue_describe(self):
        parts = self.describe
        link = self.link
        while self.describe_next < len(parts) and link.free_slots() > _RESERVED_FOR_RESULTS:
            p = parts[self.describe_next]
            if not self._send(T_DESCRIBE, p, 0, len(p)):
                return
            self.describe_next += 1

    # -- transmit ----------------------------------------------------------------------------
    def _write(self, now_ms):
        budget = self.budget
        hal = self.hal
        tx = self.tx
        while budget > 0:
            if self.tx_pos >= self.tx_len:
                n = self._poll(now_ms, tx, 0)
                if n <= 0:
                    return
                self.tx_pos = 0
                self.tx_len = n
            want = self.tx_len - self.tx_pos
            if want > budget:
                want = budget
            w = hal.serial_write(tx, self.tx_pos, want)
            if w <= 0:
                return
            self.tx_pos += w
            budget -= w
