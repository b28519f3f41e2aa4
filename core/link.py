"""Sans-I/O link state machine: handshake, sessions and the reliable channel.

One class, ``Link``, used by both ends (protocol.md §3 and §11): the board
firmware runs it with ``ROLE_BOARD``, the host bridge with ``ROLE_HOST``. It
never touches a port or a clock: the caller feeds received bytes with
``feed(data, start, end, now_ms)`` and asks for the next wire frame with
``poll(now_ms, out, out_start)``; ``now_ms`` is a ticks value (ms mod 2**30)
compared only with ``ticks_diff``/``ticks_add``.

Board rules: everything is preallocated in ``__init__`` (``pbuf``: a queue
of Q reliable slots of MAX_PAYLOAD bytes holding a window of W frames, one
slot per unreliable type and one for our HELLO; a frame scratch buffer; one
Deframer/Encoder/Decoder); after that ``feed``, ``poll``, ``send``,
``reserve``/``commit`` and ``send_ints`` allocate nothing, return no tuples,
read no slices, raise nothing, use no floats and keep every integer below
2**30 (counters wrap with & 0x3FFFFFFF). Only the host-only paths allocate
(choosing a session id, formatting a refusal text).

A sender may build a payload in its slot instead of copying it in:
``reserve(mtype)`` gives the offset in ``pbuf``, ``commit(mtype, n)`` queues
it; ``send_ints`` does that for a map of integers (RESULT, EVENT). A poller
with nothing else to do may skip ``poll`` while the link is ``quiet`` and
its ``wake_ms`` has not come (see ``poll``).

Session state machine
---------------------
::

  BOARD
  =====
                 host HELLO{0:p, 3:S}, S != session, proto_min <= p <= proto_max:
                 reset link (seq := 0 both ways; unacked messages kept and
                 renumbered from 0), session := S, answer HELLO{0,1,3:S,2,4..}
        +------------------------------------------------------------+
        |                                                            v
  +---------------------+                                   +-----------------+
  | IDLE                |  host HELLO{0:0, 3:0, 9:reason}   | CONNECTED       |
  | session 0           |<----------------------------------| reliable        |
  | HELLO every         |  (refused := True, counted)       | channel runs    |
  | hello_interval;     |<----------------------------------|                 |
  | reliable frames     |          disconnect()             |                 |
  | neither sent nor    |                                   +-----------------+
  | accepted            |          host HELLO, S == session: answer again, no reset
  +---------------------+          host HELLO, S new: reset again (as above)
   host HELLO with p outside proto_min..proto_max (either state): answer with our
   HELLO (the host had not seen our range), nothing else changes

  HOST
  ====
                     first poll(): probe with p := proto_max, or
                     board HELLO, ranges overlap: p := highest common version
  +------------------+ ---------------------------------------> +------------------+
  | IDLE             |                                          | CONNECTING       |
  | after a refusal  | <--------------------------------------- | new session S,   |
  | it stays here    |  board HELLO, no common version: answer  | own link reset,  |
  | (refused = True) |  HELLO{0:0, 3:0, 9:"board speaks        | HELLO{0:p, 3:S}  |
  | until a board    |  protocol a..b, bridge speaks c..d"},    | now and every    |
  | HELLO overlaps   |  refusal := that text                    | hello_interval   |
  +------------------+                                          +------------------+
           ^                                                      |    ^      ^   |
           |                          board HELLO with session S  |    |      +---+ board HELLO, not
           | board HELLO,             (the echo)                  v    |        the echo: keep S,
           | no common version                        +------------------+      re-offer at once
           +------------------------------------------| CONNECTED        |
                                                      | reliable channel |
                                                      +------------------+
                   board HELLO with another session or another boot id (the board
                   rebooted or lost the session): new S, back to CONNECTING (arrow up)

While CONNECTING the host keeps its session S and re-offers HELLO(S) (with the
version the latest board HELLO allows) on every board HELLO that is not the
echo, so HELLOs crossing on the wire cannot livelock the handshake. Unreliable
app messages (TELEMETRY/HEARTBEAT/LOG) wait in their slots until CONNECTED.

Reliable channel (both roles, only while CONNECTED; protocol.md §11)
--------------------------------------------------------------------
::

  send() ---> [ queue: Q slots, oldest first                          ]
               |<-- in flight (<= W), seq una .. una+W-1 -->|<- new ->|
  poll():  HELLO / NAK  >  retransmission (go-back-N from una)
                        >  new reliable frame  >  TELEMETRY/HEARTBEAT/LOG
                        >  bare ACK (only if an ack is owed)
  every frame sent while CONNECTED carries F_ACK and ack = rcv_nxt.

  receive seq s, d = (s - rcv_nxt) & 0xFF:
      d == 0          deliver, rcv_nxt += 1, owe an ACK
      d >= 256 - W    duplicate: drop, owe an ACK at once
      1 <= d < W      ahead: drop; NAK once per expected value, and once more
                      per go-back-N round that arrives without it (an ahead
                      frame numbered below the previous ahead frame)
      otherwise       drop (counted out of order)
  CRC/COBS/SHORT/OVERSIZE frame error  -> NAK, at most one per max(SRTT, G)
  ack a (any frame but HELLO, F_ACK)   -> release frames before a, RTT sample
                                          from the newest released frame if it
                                          was sent once (Karn), restart timer
  NAK a                                -> as ack, then retransmit the window
                                          from a (go-back-N), unless a round
                                          from a started < SRTT/2 ago
  RTO expiry                           -> RTO *= 2 (clamped), retransmit window

RTO (RFC 6298, integer ms, BSD scaling): srtt8 = 8*SRTT, rttvar4 = 4*RTTVAR;
first sample R: SRTT = R, RTTVAR = R/2; then delta = R - SRTT,
SRTT += delta/8, RTTVAR += (|delta| - RTTVAR)/4;
RTO = SRTT + max(G, 4*RTTVAR), clamped to rto_min .. rto_max.
"""

from array import array

from metal.core.cbor import K_MAP, K_TEXT, K_UINT, Decoder, Encoder, int_map_into
from metal.core.compat import IS_MICROPYTHON, const, ticks_add, ticks_diff
from metal.core.frame import Deframer, encode_frame
from metal.core.proto import (
    E_COBS,
    E_CRC,
    E_OK,
    E_OVERSIZE,
    E_SCHEMA,
    E_SHORT,
    F_ACK,
    MAX_PAYLOAD,
    MAX_WIRE,
    PROTO_MAX,
    PROTO_MIN,
    RELIABLE_TYPES,
    T_ACK,
    T_HEARTBEAT,
    T_HELLO,
    T_LOG,
    T_MAX,
    T_NAK,
    T_TELEMETRY,
)

ROLE_BOARD = const(0)
ROLE_HOST = const(1)

ST_IDLE = const(0)
ST_CONNECTING = const(1)  # host only
ST_CONNECTED = const(2)

EV_NONE = const(0)
EV_MESSAGE = const(1)

# -- stats indices (link.stats[S_*], each wraps mod 2**30) ---------------------
S_TX_FRAMES = const(0)
S_RX_FRAMES = const(1)  # frames that passed the frame checks
S_TX_BYTES = const(2)
S_RX_BYTES = const(3)  # bytes consumed by feed()
S_RETRANSMITS = const(4)  # reliable frames sent again
S_CRC_ERRORS = const(5)
S_COBS_ERRORS = const(6)
S_OTHER_FRAME_ERRORS = const(7)  # SHORT, OVERSIZE, VERSION, TYPE
S_NAKS_TX = const(8)
S_NAKS_RX = const(9)
S_DUPLICATES = const(10)  # reliable duplicates (and repeated TELEMETRY seq)
S_OUT_OF_ORDER = const(11)  # reliable frames from ahead / out of window
S_QUEUE_OVERFLOWS = const(12)  # send() refused: reliable queue full
S_TELEMETRY_LOST = const(13)  # gaps in received TELEMETRY seq
S_PAYLOAD_ERRORS = const(14)  # CBOR/schema errors in received payloads
S_SESSIONS = const(15)  # sessions established (board: accepted; host: echo seen)
S_TIMEOUTS = const(16)  # RTO expiries
S_REFUSALS = const(17)  # version refusals (host: sent; board: received)
S_IGNORED = const(18)  # frames ignored because not connected
S_COUNT = const(19)

_MASK = const(0x3FFFFFFF)
_NU = const(3)  # unreliable app slots: TELEMETRY, HEARTBEAT, LOG
_RTT_CAP = const(60000)  # RTT samples are clamped here (keeps srtt8 small)
_NO_SLOT = const(0xFF)
_WIRE_EXTRA = const(8)  # wire bytes besides the payload: header 4, CRC 2, COBS code 1, delimiter 1

# what _select() chose to send
_TX_NONE = const(0)
_TX_HELLO = const(1)
_TX_NAK = const(2)
_TX_RTX = const(3)  # a retransmission from the window
_TX_NEW = const(4)  # a reliable frame's first transmission
_TX_UNREL = const(5)  # TELEMETRY / HEARTBEAT / LOG
_TX_ACK = const(6)

_CPY = not IS_MICROPYTHON


class Link:
    def __init__(
        self,
        role,
        window=8,
        queue=16,
        proto_min=PROTO_MIN,
        proto_max=PROTO_MAX,
        hello_interval_ms=1000,
        rto_init_ms=250,
        rto_min_ms=30,
        rto_max_ms=2000,
        granularity_ms=10,
        session_start=0,
        session_rng=None,
    ):
        if role != ROLE_BOARD and role != ROLE_HOST:
            raise ValueError("role")
        if window < 1 or window > 127 or queue < window or queue > 255:
            raise ValueError("window/queue")
        if proto_min < 1 or proto_max < proto_min or proto_max > _MASK:
            raise ValueError("proto range")
        if rto_min_ms < 1 or rto_max_ms < rto_min_ms or rto_max_ms > 0x3FFFFFF:
            raise ValueError("rto clamps")
        self.role = role
        self.window = window
        self.queue_slots = queue
        self.proto_min = proto_min
        self.proto_max = proto_max
        self.hello_interval_ms = hello_interval_ms
        self.rto_init_ms = rto_init_ms
        self.rto_min_ms = rto_min_ms
        self.rto_max_ms = rto_max_ms
        self.granularity_ms = granularity_ms

        # -- public state ------------------------------------------------------
        self.state = ST_IDLE
        self.session = 0
        self.proto = 0  # negotiated version (0: none yet)
        self.refused = False
        self.refusal = None  # host: the refusal text (str); board: None
        self.peer_boot_id = 0  # host: from the board HELLO
        self.peer_proto_min = 0
        self.peer_proto_max = 0
        self.peer_session = 0  # host: session key of the latest board HELLO
        self.stats = array("i", [0] * S_COUNT)

        # -- last delivered message (valid until the next feed) ------------
        self.ev = EV_NONE
        self.rx_type = 0
        self.rx_buf = None
        self.rx_off = 0
        self.rx_len = 0
        self.rx_err = E_OK
        self.rx_seq = 0
        # True after the feed() that established a session (board: accepted a
        # new host session -> queue DESCRIBE; host: saw the echo)
        self.session_started = False

        # -- payloads: one buffer of MAX_PAYLOAD-byte slots ---------------------------
        # [0, Q): the reliable queue; [Q, Q + _NU): one slot per unreliable
        # type; then our HELLO. A frame's payload is always
        # pbuf[_tx_off:_tx_off + _tx_len], and reserve() hands out slots in it.
        self.pbuf = bytearray((queue + _NU + 1) * MAX_PAYLOAD)
        self._hello_off = (queue + _NU) * MAX_PAYLOAD

        # -- codec -----------------------------------------------------------------
        self._df = Deframer()
        self._scratch = bytearray(MAX_WIRE)  # header + CRC for encode_frame (poll)
        self._enc = Encoder(self.pbuf)  # HELLO, built in its slot
        self._dec = Decoder()

        # -- the frame _select() chose: header fields, payload in pbuf ---------------
        self._tx_type = 0
        self._tx_flags = 0
        self._tx_seq = 0
        self._tx_ack = 0
        self._tx_off = 0
        self._tx_len = 0
        self._tx_slot = 0
        # The caller's idle fast path (see poll): nothing is due while quiet,
        # until wake_ms if wake_on.
        self.quiet = False
        self.wake_on = False
        self.wake_ms = 0

        # -- reliable sender: ring of Q slots, oldest (seq una) at _qhead ----------
        self._qlen = array("H", [0] * queue)
        self._qtype = bytearray(queue)
        # ticks of the first transmission: a list, so a 64-bit port's ticks fit
        # too (storing a small int in a list allocates nothing)
        self._qsent = [0] * queue
        self._qtx = bytearray(queue)  # transmissions (capped at 255)
        self._qhead = 0
        self._qcount = 0  # messages queued, in flight included
        self._inflight = 0  # sent, not acked: seq una .. una+inflight-1
        self._una = 0
        self._rtx_idx = 0  # go-back-N: next window index to resend ...
        self._rtx_end = 0  # ... up to here (exclusive)
        self._timer_on = False
        self._timer_due = 0
        self._rtx_ever = False
        self._last_rtx = 0  # when the last go-back-N round started ...
        self._rtx_from = 0  # ... and from which sequence number

        # -- RTT estimator -----------------------------------------------------------
        self._have_rtt = False
        self._srtt8 = 0
        self._rttvar4 = 0
        self.srtt_ms = 0
        self.rttvar_ms = 0
        self.rto_ms = rto_init_ms

        # -- reliable receiver ---------------------------------------------------------
        self._rcv_nxt = 0
        self._ack_pending = False
        self._nak_pending = False
        self._nak_for = -1  # expected value the last NAK was sent for
        self._ahead_d = 0  # distance of the last frame from ahead (round detection)
        self._nak_ever = False
        self._last_nak = 0

        # -- HELLO ---------------------------------------------------------------------
        self._hello_pending = False
        self._hello_timer_on = False
        self._hello_due = 0
        self._ident = bytearray(MAX_PAYLOAD)
        self._ident_len = 0
        self._ident_n = 0
        self._h_have = 0  # parsed HELLO: bit k set = key k present
        self._h0 = 0
        self._h1 = 0
        self._h2 = 0
        self._h3 = 0
        self._refusal_b = b""
        self._session_rng = session_rng
        self._next_session = session_start & _MASK

        # -- unreliable slots: latest wins -------------------------------------------
        self._uidx = bytearray(b"\xff" * 16)
        self._utype = bytearray((T_TELEMETRY, T_HEARTBEAT, T_LOG))
        for u in range(_NU):
            self._uidx[self._utype[u]] = u
        self._ulen = array("H", [0] * _NU)
        self._upend = bytearray(_NU)
        self._upend_n = 0  # how many _upend are set
        self._urr = 0
        self._tel_tx = 0
        self.tel_seq = 0  # telemetry_begin's header
        self.tel_ack = 0
        self._tel_gen = 0
        self._tel_rx_have = False
        self._tel_rx_last = 0

    # =========================================================================
    # public API
    # =========================================================================

    def set_identity(self, entries_buf, n_bytes, n_entries):
        """Board: the pre-encoded CBOR map entries (keys 2 boot_id, 4.. in any
        order) appended to every HELLO after keys 0, 1 and 3. Copied. Returns
        False if they cannot fit a HELLO."""
        if n_bytes < 0 or n_entries < 0 or n_bytes > MAX_PAYLOAD - 21 or n_entries > 0xFFFF:
            return False
        ib = self._ident
        for i in range(n_bytes):
            ib[i] = entries_buf[i]
        self._ident_len = n_bytes
        self._ident_n = n_entries
        self.quiet = False
        return True

    def queued(self):
        """Reliable messages not yet acknowledged (in flight and waiting)."""
        return self._qcount

    def inflight(self):
        """Reliable frames sent and not yet acknowledged (<= window)."""
        return self._inflight

    def free_slots(self):
        return self.queue_slots - self._qcount

    def disconnect(self):
        """Leave the session (e.g. the app declared the peer lost). Queued
        reliable messages are kept. A board goes back to sending HELLO with
        session 0; a host starts a new session on its next poll."""
        self._go_idle()
        self.quiet = False

    def send(self, mtype, payload, start, n):
        """Queue a message. Reliable types take a queue slot (False when the
        queue is full, counted in S_QUEUE_OVERFLOWS); TELEMETRY, HEARTBEAT and
        LOG overwrite their slot (latest wins). HELLO/ACK/NAK belong to the
        link: False. The payload is copied (see reserve() to build it in place)."""
        if n < 0 or n > MAX_PAYLOAD:
            return False
        o = self.reserve(mtype)
        if o < 0:
            return False
        buf = self.pbuf
        if _CPY:
            buf[o : o + n] = payload[start : start + n]
        elif start == 0 and n == len(payload):
            buf[o : o + n] = payload  # a whole buffer: one copy, no slice read
        else:
            d = o - start
            for i in range(start, start + n):
                buf[i + d] = payload[i]
        return self.commit(mtype, n)

    def reserve(self, mtype):
        """The offset in ``pbuf`` where the next ``mtype`` message goes, so the
        caller builds its payload there (at most MAX_PAYLOAD bytes) and then
        calls ``commit(mtype, n)``, with no other call to this link in
        between; nothing is queued until then. -1 when it cannot be queued:
        HELLO/ACK/NAK, or the reliable queue is full (counted in
        S_QUEUE_OVERFLOWS). An unreliable type has one slot: building there
        overwrites its unsent message (latest wins)."""
        if mtype < 1 or mtype > T_MAX:
            return -1
        if (RELIABLE_TYPES >> mtype) & 1:
            c = self._qcount
            if c >= self.queue_slots:
                self._inc(S_QUEUE_OVERFLOWS)
                return -1
            k = self._qhead + c
            if k >= self.queue_slots:
                k -= self.queue_slots
            return k * MAX_PAYLOAD
        u = self._uidx[mtype]
        if u == _NO_SLOT:
            return -1
        return (self.queue_slots + u) * MAX_PAYLOAD

    def send_ints(self, mtype, vals, n):
        """Queue a reliable message whose payload is the CBOR map ``{0:
        vals[0], ..., n-1: vals[n-1]}`` of integers (n < 24), encoded straight
        into its queue slot (what the board's RESULT and EVENT are). False
        when refused, as send(); also for a value outside 30 bits."""
        if mtype < 1 or mtype > T_MAX or not (RELIABLE_TYPES >> mtype) & 1:
            return False
        c = self._qcount
        if c >= self.queue_slots:
            self._inc(S_QUEUE_OVERFLOWS)
            return False
        k = self._qhead + c
        if k >= self.queue_slots:
            k -= self.queue_slots
        o = k * MAX_PAYLOAD
        e = int_map_into(self.pbuf, o, vals, n)
        if e < 0:
            return False
        self._qlen[k] = e - o
        self._qtype[k] = mtype
        self._qtx[k] = 0
        self._qcount = c + 1
        self.quiet = False
        return True

    def commit(self, mtype, n):
        """Queue the ``n``-byte message built at ``reserve(mtype)``. False if
        ``n`` is out of range or the reservation was refused."""
        if n < 0 or n > MAX_PAYLOAD or mtype < 1 or mtype > T_MAX:
            return False
        if (RELIABLE_TYPES >> mtype) & 1:
            c = self._qcount
            if c >= self.queue_slots:
                return False
            k = self._qhead + c
            if k >= self.queue_slots:
                k -= self.queue_slots
            self._qlen[k] = n
            self._qtype[k] = mtype
            self._qtx[k] = 0
            self._qcount = c + 1
        else:
            u = self._uidx[mtype]
            if u == _NO_SLOT:
                return False
            self._ulen[u] = n
            if not self._upend[u]:
                self._upend[u] = 1
                self._upend_n += 1
        self.quiet = False
        return True

    def telemetry_begin(self):
        """For a caller that frames TELEMETRY itself, over several ticks (the
        board: BoardLink, with frame.FrameEncoder): the header of the next
        TELEMETRY frame in ``tel_seq``, ``tel_ack`` (flags F_ACK). False when
        not connected: nothing may be sent. Changes nothing until
        ``telemetry_end``."""
        if self.state != ST_CONNECTED:
            return False
        self.tel_seq = self._tel_tx & 0xFF
        self.tel_ack = self._rcv_nxt
        self._tel_gen = self.stats[S_SESSIONS]
        return True

    def telemetry_end(self, n_payload):
        """The frame begun by ``telemetry_begin`` is built (``n_payload``
        payload bytes): True if it may go out, i.e. the link is still in the
        session it was begun in; then it counts as sent (its seq is used, the
        ack it carries is given). False: drop it (a new session started)."""
        if self.state != ST_CONNECTED or self.stats[S_SESSIONS] != self._tel_gen:
            return False
        self._tel_tx = (self._tel_tx + 1) & _MASK
        s = self.stats
        s[S_TX_FRAMES] = (s[S_TX_FRAMES] + 1) & _MASK
        s[S_TX_BYTES] = (s[S_TX_BYTES] + n_payload + _WIRE_EXTRA) & _MASK
        if self.tel_ack == self._rcv_nxt:
            # (a reliable frame that arrived in between is still owed its ack)
            self._ack_pending = False
        return True

    def feed(self, data, start, end, now_ms):
        """Consume received bytes ``data[start:end]``. Stops right after a
        frame that delivers a message (``ev == EV_MESSAGE``) and returns the
        index after the consumed bytes; call again with the rest."""
        self.ev = EV_NONE
        self.session_started = False
        df = self._df
        i = start
        while i < end:
            j = df.feed(data, i, end)
            st = df.status
            if st < 0:
                if j <= i:
                    break
                i = j
                continue
            i = j
            if st != E_OK:
                self._frame_error(st, now_ms)
                continue
            if self._rx_frame(now_ms):
                break
        s = self.stats
        s[S_RX_BYTES] = (s[S_RX_BYTES] + i - start) & _MASK
        return i

    def poll(self, now_ms, out, out_start):
        """Run the timers and write at most one wire frame into ``out`` from
        ``out_start`` (needs MAX_WIRE bytes). Returns its length, 0 if nothing
        is due.

        After a 0, ``quiet`` is True until something may make a frame due: a
        received HELLO, NAK or reliable frame, an ack that opens the window,
        a frame error, commit/send, disconnect, set_identity; or ``wake_ms``
        when ``wake_on`` (the retransmission or HELLO deadline; an ack moves
        it). So a caller may skip poll() while
        ``quiet and (not wake_on or ticks_diff(now, wake_ms) < 0)``."""
        if (
            self.state == ST_CONNECTED
            and not (self._hello_pending or self._nak_pending or self._ack_pending
                     or self._upend_n)
            and self._rtx_idx >= self._rtx_end
            and (self._inflight >= self._qcount or self._inflight >= self.window)
            and not (self._timer_on and self._inflight
                     and ticks_diff(now_ms, self._timer_due) >= 0)
        ):
            k = _TX_NONE  # the common case, without the calls of _select
        else:
            k = self._select(now_ms)
        if k == _TX_NONE:
            self.quiet = True
            if self.state == ST_CONNECTED:
                self.wake_on = self._timer_on and self._inflight > 0
                self.wake_ms = self._timer_due
            else:
                self.wake_on = self._hello_timer_on
                self.wake_ms = self._hello_due
            return 0
        w = encode_frame(self._tx_type, self._tx_flags, self._tx_seq, self._tx_ack, self.pbuf,
                         self._tx_off, self._tx_len, self._scratch, out, out_start)
        if w <= 0:
            return 0
        self._sent(k, now_ms)
        return w

    def _select(self, now_ms):
        """Run the timers and choose the next frame (protocol.md §11 priority):
        sets the _tx_* fields and returns its _TX_* kind. Changes nothing that
        belongs to sending it (that is _sent, once it is out)."""
        st = self.state
        if st == ST_CONNECTED:
            if (
                self._timer_on
                and self._inflight
                and ticks_diff(now_ms, self._timer_due) >= 0
            ):
                self._inc(S_TIMEOUTS)
                r = self.rto_ms + self.rto_ms
                if r > self.rto_max_ms:
                    r = self.rto_max_ms
                self.rto_ms = r
                self._start_rtx(now_ms)
        else:
            if st == ST_IDLE and self.role == ROLE_HOST and not self.refused:
                self._host_new_session(self.proto_max)
                st = self.state
            if st == ST_CONNECTING or self.role == ROLE_BOARD:
                if not self._hello_timer_on or ticks_diff(now_ms, self._hello_due) >= 0:
                    self._hello_pending = True

        if self._hello_pending:
            return self._pick_hello()
        if st != ST_CONNECTED:
            return _TX_NONE

        if self._nak_pending:
            self._describe(T_NAK, 0, 0, 0)
            return _TX_NAK

        if self._rtx_idx < self._rtx_end:
            r = self._rtx_idx
            k = self._qhead + r
            if k >= self.queue_slots:
                k -= self.queue_slots
            self._describe(self._qtype[k], self._una + r, k * MAX_PAYLOAD, self._qlen[k])
            self._tx_slot = k
            return _TX_RTX

        r = self._inflight
        if r < self._qcount and r < self.window:
            k = self._qhead + r
            if k >= self.queue_slots:
                k -= self.queue_slots
            # (_describe, written out: the most frequent frame)
            self._tx_type = self._qtype[k]
            self._tx_seq = (self._una + r) & 0xFF
            self._tx_off = k * MAX_PAYLOAD
            self._tx_len = self._qlen[k]
            self._tx_flags = F_ACK
            self._tx_ack = self._rcv_nxt
            self._tx_slot = k
            return _TX_NEW

        u = self._urr
        for _ in range(_NU if self._upend_n else 0):
            if self._upend[u]:
                t = self._utype[u]
                self._describe(
                    t,
                    self._tel_tx if t == T_TELEMETRY else 0,
                    (self.queue_slots + u) * MAX_PAYLOAD,
                    self._ulen[u],
                )
                self._tx_slot = u
                return _TX_UNREL
            u += 1
            if u >= _NU:
                u = 0

        if self._ack_pending:
            self._describe(T_ACK, 0, 0, 0)
            return _TX_ACK
        return _TX_NONE

    def _describe(self, t, seq, off, n):
        self._tx_type = t
        self._tx_seq = seq & 0xFF
        self._tx_off = off
        self._tx_len = n
        if self.state == ST_CONNECTED:
            self._tx_flags = F_ACK
            self._tx_ack = self._rcv_nxt
        else:
            self._tx_flags = 0
            self._tx_ack = 0

    def _sent(self, kind, now_ms):
        """The frame _select() chose was encoded: the transmit bookkeeping."""
        if self.state == ST_CONNECTED:
            self._ack_pending = False
        s = self.stats
        s[S_TX_FRAMES] = (s[S_TX_FRAMES] + 1) & _MASK
        s[S_TX_BYTES] = (s[S_TX_BYTES] + self._tx_len + _WIRE_EXTRA) & _MASK
        if kind == _TX_NEW:
            k = self._tx_slot
            self._qsent[k] = now_ms
            self._qtx[k] = 1
            self._inflight += 1
            if not self._timer_on:
                self._timer_on = True
                self._timer_due = ticks_add(now_ms, self.rto_ms)
        elif kind == _TX_UNREL:
            u = self._tx_slot
            self._upend[u] = 0
            self._upend_n -= 1
            if self._utype[u] == T_TELEMETRY:
                self._tel_tx = (self._tel_tx + 1) & _MASK
            u += 1
            if u >= _NU:
                u = 0
            self._urr = u
        elif kind == _TX_RTX:
            k = self._tx_slot
            self._rtx_idx += 1
            if self._qtx[k] < 255:
                self._qtx[k] += 1
            self._inc(S_RETRANSMITS)
        elif kind == _TX_NAK:
            self._nak_pending = False
            self._nak_for = self._rcv_nxt
            self._nak_ever = True
            self._last_nak = now_ms
            self._inc(S_NAKS_TX)
        elif kind == _TX_HELLO:
            self._hello_pending = False
            if self.state == ST_CONNECTING or (
                self.role == ROLE_BOARD and self.state != ST_CONNECTED
            ):
                self._hello_timer_on = True
                self._hello_due = ticks_add(now_ms, self.hello_interval_ms)

    # =========================================================================
    # receive path
    # =========================================================================

    def _inc(self, i):
        s = self.stats
        s[i] = (s[i] + 1) & _MASK

    def _add(self, i, n):
        s = self.stats
        s[i] = (s[i] + n) & _MASK

    def _frame_error(self, code, now):
        if code == E_CRC:
            self._inc(S_CRC_ERRORS)
        elif code == E_COBS:
            self._inc(S_COBS_ERRORS)
        else:
            self._inc(S_OTHER_FRAME_ERRORS)
        if self.state != ST_CONNECTED:
            return
        if code == E_CRC or code == E_COBS or code == E_SHORT or code == E_OVERSIZE:
            # a frame was damaged on the line: maybe the one we expect
            if not self._nak_ever or ticks_diff(now, self._last_nak) >= self._rtt_gap():
                self._nak_pending = True
                self.quiet = False

    def _deliver(self, t, err):
        df = self._df
        self.ev = EV_MESSAGE
        self.rx_type = t
        self.rx_buf = df.body
        self.rx_off = df.payload_start
        self.rx_len = df.payload_len
        self.rx_err = err
        self.rx_seq = df.seq

    def _validate(self):
        df = self._df
        s = df.payload_start
        return self._dec.validate(df.body, s, s + df.payload_len)

    def _rx_frame(self, now):
        # ``quiet`` (see poll) is cleared by whatever may make a frame
        # due: a HELLO, a NAK, a reliable frame (an ack or NAK owed), an ack
        # that opens the window (_rx_ack). An ACK frame that only releases
        # frames keeps it, and a received TELEMETRY/HEARTBEAT/LOG changes
        # nothing here (an answer is queued with commit(), which clears it).
        df = self._df
        t = df.ftype
        stats = self.stats
        stats[S_RX_FRAMES] = (stats[S_RX_FRAMES] + 1) & _MASK
        if t == T_HELLO:
            # acks on HELLO frames are not used: a HELLO may be the first
            # frame of a new session, before which numbers mean nothing
            self.quiet = False
            return self._rx_hello()
        if self.state != ST_CONNECTED:
            self._inc(S_IGNORED)
            return False
        if df.flags & F_ACK:
            self._rx_ack(df.ack, now)
        if t == T_ACK:
            return False
        if t == T_NAK:
            self.quiet = False
            self._inc(S_NAKS_RX)
            # Obey, unless this NAK may predate the round we already started
            # from the same number (it left the peer before our resend arrived)
            if self._inflight and not (
                self._rtx_ever
                and self._rtx_from == self._una
                and ticks_diff(now, self._last_rtx) < self._nak_hold()
            ):
                self._start_rtx(now)
            return False
        if (RELIABLE_TYPES >> t) & 1:
            self.quiet = False
            return self._rx_reliable(now)
        if t == T_TELEMETRY:
            s = df.seq
            if self._tel_rx_have:
                d = (s - self._tel_rx_last) & 0xFF
                if d == 0:
                    self._inc(S_DUPLICATES)
                    return False
                if d > 1:
                    self._add(S_TELEMETRY_LOST, d - 1)
            self._tel_rx_have = True
            self._tel_rx_last = s
        if self._validate() != E_OK:
            self._inc(S_PAYLOAD_ERRORS)
            return False
        self._deliver(t, E_OK)
        return True

    def _rx_reliable(self, now):
        df = self._df
        d = (df.seq - self._rcv_nxt) & 0xFF
        if d == 0:
            self._rcv_nxt = (self._rcv_nxt + 1) & 0xFF
            self._ack_pending = True
            self._nak_pending = False  # whatever we wanted to NAK is moot now
            self._ahead_d = 0
            # (_validate and _deliver, written out: every CMD comes this way)
            s = df.payload_start
            n = df.payload_len
            e = self._dec.validate(df.body, s, s + n)
            if e != E_OK:
                self._inc(S_PAYLOAD_ERRORS)
            self.ev = EV_MESSAGE
            self.rx_type = df.ftype
            self.rx_buf = df.body
            self.rx_off = s
            self.rx_len = n
            self.rx_err = e
            self.rx_seq = df.seq
            return True
        if d >= 256 - self.window:
            self._inc(S_DUPLICATES)
            self._ack_pending = True
            return False
        self._inc(S_OUT_OF_ORDER)
        if d < self.window:
            # one NAK per expected value, and one more per go-back-N round that
            # arrives without it: an ahead frame numbered lower than the previous
            # one means the sender started over and the expected frame was lost again
            if self._nak_for != self._rcv_nxt or d < self._ahead_d:
                self._nak_pending = True
            self._ahead_d = d
        return False

    def _rx_ack(self, a, now):
        n = (a - self._una) & 0xFF
        if n == 0 or n > self._inflight:
            return
        Q = self.queue_slots
        k = self._qhead + n - 1
        if k >= Q:
            k -= Q
        if self._qtx[k] == 1:  # Karn: only frames sent exactly once
            self._rtt_sample(ticks_diff(now, self._qsent[k]))
        k += 1
        if k >= Q:
            k -= Q
        self._qhead = k
        self._qcount -= n
        self._inflight -= n
        self._una = a
        if self._rtx_end:
            r = self._rtx_idx - n
            self._rtx_idx = r if r > 0 else 0
            r = self._rtx_end - n
            self._rtx_end = r if r > 0 else 0
        if self._inflight:
            self._timer_on = True
            self._timer_due = ticks_add(now, self.rto_ms)
        else:
            self._timer_on = False
        if self.quiet:
            # (a go-back-N round cannot be pending: quiet means none was)
            if self._inflight < self._qcount:
                self.quiet = False  # the window opened for a waiting frame
            else:
                self.wake_on = self._timer_on
                self.wake_ms = self._timer_due

    def _rtt_sample(self, r):
        if r < 0:
            return
        if r > _RTT_CAP:
            r = _RTT_CAP
        if not self._have_rtt:
            self._have_rtt = True
            self._srtt8 = r << 3
            self._rttvar4 = r << 1
        else:
            d = r - (self._srtt8 >> 3)
            self._srtt8 += d
            if d < 0:
                d = -d
            self._rttvar4 += d - (self._rttvar4 >> 2)
        self.srtt_ms = self._srtt8 >> 3
        self.rttvar_ms = self._rttvar4 >> 2
        self._rto_from_estimate()

    def _rto_from_estimate(self):
        if self._have_rtt:
            r = self.srtt_ms + max(self.granularity_ms, self._rttvar4)
        else:
            r = self.rto_init_ms
        if r < self.rto_min_ms:
            r = self.rto_min_ms
        elif r > self.rto_max_ms:
            r = self.rto_max_ms
        self.rto_ms = r

    def _nak_hold(self):
        # A NAK arriving sooner than this after we started a round from the same
        # number left the peer before our resend got there: a duplicate. Nothing
        # comes back in less than about one RTT, so half an SRTT is a safe bound
        # that still obeys the NAK about a resend that was lost again.
        if self._have_rtt:
            return self.srtt_ms >> 1
        return self.rto_ms >> 1

    def _rtt_gap(self):
        # receiver: at most one NAK per RTT for damaged frames
        g = self.srtt_ms if self._have_rtt else self.rto_ms
        return g if g > self.granularity_ms else self.granularity_ms

    def _start_rtx(self, now):
        self._rtx_idx = 0
        self._rtx_end = self._inflight
        self._rtx_ever = True
        self._last_rtx = now
        self._rtx_from = self._una
        self._timer_on = True
        self._timer_due = ticks_add(now, self.rto_ms)

    # =========================================================================
    # handshake
    # =========================================================================

    def _parse_hello(self):
        """Read the HELLO map's keys 0..3 (uint) and 9 (text); others are
        skipped. Returns E_OK or an error code; ``_h_have`` has the keys."""
        df = self._df
        d = self._dec
        s = df.payload_start
        d.reset(df.body, s, s + df.payload_len)
        self._h_have = 0
        if d.next() != K_MAP:
            return E_SCHEMA
        have = 0
        for _ in range(d.val):
            if d.next() != K_UINT:
                return E_SCHEMA
            key = d.val
            if key <= 3:
                if d.next() != K_UINT:
                    return E_SCHEMA
                v = d.val
                if key == 0:
                    self._h0 = v
                elif key == 1:
                    self._h1 = v
                elif key == 2:
                    self._h2 = v
                else:
                    self._h3 = v
                have |= 1 << key
            elif key == 9:
                if d.next() != K_TEXT:
                    return E_SCHEMA
                have |= 1 << 9
            elif d.skip() < 0:
                return d.err
        self._h_have = have
        return E_OK

    def _rx_hello(self):
        if self._validate() != E_OK or self._parse_hello() != E_OK:
            self._inc(S_PAYLOAD_ERRORS)
            return False
        if self.role == ROLE_BOARD:
            ok = self._board_hello()
        else:
            ok = self._host_hello()
        if not ok:
            self._inc(S_PAYLOAD_ERRORS)
            return False
        self._deliver(T_HELLO, E_OK)
        return True

    def _board_hello(self):
        # host -> board: {0: proto (0 = refused), 3: session, 9: reason}
        if (self._h_have & 0x09) != 0x09:
            return False
        p = self._h0
        s = self._h3
        if p == 0:
            self._inc(S_REFUSALS)
            self.refused = True
            if self.state != ST_IDLE:
                self._go_idle()
            return True
        if s == 0:
            return False
        if p < self.proto_min or p > self.proto_max:
            # the host proposed a version we do not speak (it had not seen our
            # range yet): show it our HELLO and keep whatever session we have
            self._hello_pending = True
            return True
        if self.state == ST_CONNECTED and s == self.session:
            self._hello_pending = True  # our echo was lost: answer again, no reset
            return True
        self._reset_link()
        self.session = s
        self.proto = p
        self.state = ST_CONNECTED
        self.refused = False
        self._inc(S_SESSIONS)
        self.session_started = True
        self._hello_pending = True
        return True

    def _host_hello(self):
        # board -> host: {0: proto_min, 1: proto_max, 2: boot_id, 3: session, ...}
        if (self._h_have & 0x0F) != 0x0F:
            return False
        bmin = self._h0
        bmax = self._h1
        boot = self._h2
        bsess = self._h3
        self.peer_proto_min = bmin
        self.peer_proto_max = bmax
        self.peer_session = bsess
        hi = bmax if bmax < self.proto_max else self.proto_max
        lo = bmin if bmin > self.proto_min else self.proto_min
        if hi < lo:
            self.peer_boot_id = boot
            self._refuse(bmin, bmax)
            return True
        self.refused = False
        self.refusal = None
        st = self.state
        if st == ST_CONNECTED:
            if bsess == self.session and boot == self.peer_boot_id:
                return True  # a repeated echo
            self.peer_boot_id = boot
            self._host_new_session(hi)  # board rebooted or lost the session
        elif st == ST_CONNECTING:
            self.peer_boot_id = boot
            if bsess == self.session:
                if self.proto < bmin or self.proto > bmax:
                    self._host_new_session(hi)  # cannot happen with a sane board
                else:
                    self.state = ST_CONNECTED
                    self._inc(S_SESSIONS)
                    self.session_started = True
            else:
                # not (yet) the echo: offer S again with the version that
                # this HELLO allows; S stays, so crossing HELLOs converge
                self.proto = hi
                self._hello_pending = True
        else:
            self.peer_boot_id = boot
            self._host_new_session(hi)
        return True

    def _refuse(self, bmin, bmax):
        # host only: may allocate
        text = "board speaks protocol %d..%d, bridge speaks %d..%d" % (
            bmin,
            bmax,
            self.proto_min,
            self.proto_max,
        )
        if text != self.refusal:
            self.refusal = text
            self._refusal_b = text.encode()
        if self.state != ST_IDLE:
            self._reset_link()
        self.refused = True
        self.state = ST_IDLE
        self.session = 0
        self.proto = 0
        self._inc(S_REFUSALS)
        self._hello_pending = True

    def _gen_session(self):
        # host only: may allocate
        if self._session_rng is not None:
            s = self._session_rng() & _MASK
        else:
            if self._next_session == 0:
                try:
                    import os

                    b = os.urandom(4)
                    self._next_session = ((b[0] & 0x3F) << 24) | (b[1] << 16) | (b[2] << 8) | b[3]
                except Exception:  # pragma: no cover - a VM without urandom
                    import random

                    self._next_session = random.getrandbits(30)
            s = self._next_session
        while s == 0 or s == self.session or s == self.peer_session:
            s = (s + 1) & _MASK
        self._next_session = (s + 1) & _MASK
        return s

    def _host_new_session(self, proto):
        s = self._gen_session()
        self._reset_link()
        self.session = s
        self.proto = proto
        self.state = ST_CONNECTING
        self._hello_timer_on = False
        self._hello_pending = True

    def _go_idle(self):
        self._reset_link()
        self.state = ST_IDLE
        self.session = 0
        self.proto = 0
        self._hello_timer_on = False

    def _reset_link(self):
        """Sequence numbers restart at 0 in both directions; every message not
        yet acknowledged stays queued in order and goes out again, renumbered
        from 0 (none is lost). RTT estimate kept, back-off dropped."""
        self._una = 0
        self._inflight = 0
        q = self._qtx
        for k in range(self.queue_slots):
            q[k] = 0
        self._rtx_idx = 0
        self._rtx_end = 0
        self._timer_on = False
        self._rtx_ever = False
        self._rcv_nxt = 0
        self._ack_pending = False
        self._nak_pending = False
        self._nak_for = -1
        self._ahead_d = 0
        self._nak_ever = False
        self._tel_rx_have = False
        self._rto_from_estimate()  # drop any back-off

    # =========================================================================
    # transmit helpers
    # =========================================================================

    def _pick_hello(self):
        """Build our HELLO in its slot and describe it (_TX_HELLO), or _TX_NONE
        if it cannot be built (set_identity bounds it: cannot happen)."""
        enc = self._enc
        o = self._hello_off
        enc.reset(o)
        if self.role == ROLE_BOARD:
            enc.map(3 + self._ident_n)
            enc.uint(0)
            enc.uint(self.proto_min)
            enc.uint(1)
            enc.uint(self.proto_max)
            enc.uint(3)
            enc.uint(self.session)
            if self._ident_len:
                enc.raw(self._ident, 0, self._ident_len)
        elif self.refused:
            enc.map(3)
            enc.uint(0)
            enc.uint(0)
            enc.uint(3)
            enc.uint(0)
            enc.uint(9)
            enc.text_from(self._refusal_b, 0, len(self._refusal_b))
        else:
            enc.map(2)
            enc.uint(0)
            enc.uint(self.proto)
            enc.uint(3)
            enc.uint(self.session)
        n = enc.pos - o
        if enc.err or n > MAX_PAYLOAD:
            self._hello_pending = False
            return _TX_NONE
        self._describe(T_HELLO, 0, o, n)
        return _TX_HELLO
