"""DESCRIBE: the board's description of itself, cut into frame-sized parts.

Built once at start-up from the BoardConfig (this module allocates freely; it
never runs on the tick path). The host learns the hardware layout from these
parts instead of from a second copy of the board file. Item layouts per
section are specified in docs/describe.md.
"""

from metal.core.cbor import Encoder
from metal.core.proto import MAX_PAYLOAD

SEC_LIMITS = 1
SEC_RAILS = 2
SEC_SENSORS = 3
SEC_FANS = 4
SEC_ZONES = 5
SEC_GPIO = 6
SEC_INTERLOCKS = 7
SEC_SECURITY = 8

# room left in a part after its map head, part/parts/section keys and the
# items array head (generous: 16 bytes)
_ITEM_ROOM = MAX_PAYLOAD - 16


def _item(fields):
    """One item: an array whose first field is the name; fields are str, int or bool."""
    buf = bytearray(MAX_PAYLOAD)
    e = Encoder(buf)
    e.array(len(fields))
    for f in fields:
        if isinstance(f, str):
            b = f.encode()
            e.text_from(b, 0, len(b))
        elif isinstance(f, bool):
            e.bool(f)
        else:
            e.int(f)
    if e.err:
        raise ValueError("describe item too large: %r" % (fields[0],))
    return bytes(buf[: e.pos])


def _sections(cfg):
    lim = cfg.limits
    sec = cfg.security
    yield SEC_LIMITS, [
        _item(("limits", lim.tick_us, lim.heartbeat_timeout_ms, lim.stale_ticks,
               lim.overheat_timer_ms, lim.telemetry_every, lim.overrun_limit,
               lim.host_lost_action)),
    ]
    yield SEC_RAILS, [
        _item((r.name, r.nominal_mv, r.parent, r.pg_timeout_ms, r.overcurrent_ma))
        for r in cfg.rails
    ]
    yield SEC_SENSORS, [
        _item((s.name, s.kind, s.zone, s.warn_mc, s.crit_mc, s.min_mc, s.max_mc))
        for s in cfg.sensors
    ]
    yield SEC_FANS, [
        _item((f.name, f.zone, f.max_rpm, f.stall_rpm, f.min_duty)) for f in cfg.fans
    ]
    yield SEC_ZONES, [
        _item((z.name, z.setpoint_mc, z.min_duty, z.max_duty, z.failsafe_duty))
        for z in cfg.zones
    ]
    yield SEC_GPIO, [
        _item((g.name, g.direction, g.pull, g.owned)) for g in cfg.gpio
    ]
    yield SEC_INTERLOCKS, [
        _item((i.name, i.signal[0], i.signal[1], i.cmp, i.threshold, i.hysteresis,
               i.delay_ticks, i.latch, i.action, i.target))
        for i in cfg.interlocks
    ]
    yield SEC_SECURITY, [
        _item(("security", sec.tamper_ch >= 0, sec.lock_ch >= 0, sec.door_ch >= 0,
               sec.estop_ch >= 0, sec.tamper_action)),
    ]


def build_parts(cfg):
    """The DESCRIBE payloads for ``cfg``, in order: a list of bytes objects,
    each at most MAX_PAYLOAD long."""
    groups = []  # (section, [item, ...]) per part
    for section, items in _sections(cfg):
        cur = []
        size = 0
        for it in items:
            if len(it) > _ITEM_ROOM:
                raise ValueError("describe item does not fit a frame")
            if cur and size + len(it) > _ITEM_ROOM:
                groups.append((section, cur))
                cur = []
                size = 0
            cur.append(it)
            size += len(it)
        groups.append((section, cur))
    parts = []
    buf = bytearray(MAX_PAYLOAD)
    for k in range(len(groups)):
        section, items = groups[k]
        e = Encoder(buf)
        e.map(4)
        e.uint(0)
        e.uint(k)
        e.uint(1)
        e.uint(len(groups))
        e.uint(2)
        e.uint(section)
        e.uint(3)
        e.array(len(items))
        for it in items:
            e.raw(it, 0, len(it))
        if e.err:
            raise ValueError("describe part overflow")
        parts.append(bytes(buf[: e.pos]))
    return parts
