"""Board events waiting for the host: a fixed ring, numbered at birth.

Drivers call ``push(kind, source, value, aux)`` from the tick; the link phase
drains the ring into the reliable channel. Every event gets the next sequence
number when it is pushed, even if the ring is full and it has to be dropped:
the host then sees a gap in (boot id, sequence) and reports it, so a loss is
never hidden. ``overflows`` counts the drops for telemetry.
"""

from array import array

from metal.core.compat import const

_SEQ_MASK = const(0x3FFFFFFF)


class EventQueue:
    def __init__(self, size=32):
        self.size = size
        self.kind = bytearray(size)
        self.source = array("i", [0] * size)
        self.value = array("i", [0] * size)
        self.aux = array("i", [0] * size)
        self.ms = array("i", [0] * size)
        self.seq = array("i", [0] * size)
        self.head = 0  # oldest
        self.count = 0
        self.next_seq = 1
        self.overflows = 0
        self.now_ms = 0  # set by the loop each tick so drivers need not pass time

    def push(self, kind, source, value, aux=0):
        seq = self.next_seq
        self.next_seq = (seq + 1) & _SEQ_MASK
        if self.count == self.size:
            self.overflows = (self.overflows + 1) & _SEQ_MASK
            return seq
        i = self.head + self.count
        if i >= self.size:
            i -= self.size
        self.kind[i] = kind
        self.source[i] = source
        self.value[i] = value
        self.aux[i] = aux
        self.ms[i] = self.now_ms
        self.seq[i] = seq
        self.count += 1
        return seq

    def pop(self):
        """Drop the oldest event (after the link accepted it)."""
        if self.count:
            self.head += 1
            if self.head == self.size:
                self.head = 0
            self.count -= 1
