"""``SimHal``: the HAL of the simulated board, over ``plant.Plant``.

The drivers cannot tell this from a real board: they get raw ADC counts,
raw I2C temperature registers, tachometer pulses, power-good levels and a
byte stream, produced from the plant's physical state. Channel numbers are
the ones ``board.py`` assigns (see its channel map); a channel the config
does not use reads ``READ_ERROR`` (masks: bit 0) and ignores writes.

Input image (see ``metal.core.hal``): ``adc``, ``i2c_temp``, ``mv`` and
``ma`` are the plant's reading arrays themselves, which the plant updates
only inside ``step`` and ``publish`` (what a fault, an output or a test
changes in between waits for the next ``publish``; see plant.py), and
``sample`` copies the two masks::

    sample(now_us): plant.step(elapsed ms)   (ends with plant.publish())
                    or plant.publish()       (no whole ms elapsed)
                    pg_mask, din_mask <- the plant's

So the image is the snapshot of the tick's start, even when an output or a
fault changes the plant mid-tick: the change shows from the next ``sample``
on, as the contract says. One plant feeds one HAL, and only the HAL's
``sample`` should step a plant that has one.

Time: ``sample(now_us)`` steps the plant by the µs elapsed since the
previous call (the first call only sets the reference), carrying the
sub-millisecond remainder so no time is lost. A gap longer than
``MAX_CATCHUP_MS`` (10 s, e.g. a stopped debugger) is simulated as 10 s so
one tick never has to compute minutes of physics.

Serial link: two preallocated byte rings, one per direction::

    host_write(data) -> rx ring -> serial_read(buf, start, max_n)  (firmware)
    (firmware) serial_write(buf, start, n) -> tx ring -> host_read(max_n)

Overflow, on purpose like the hardware each side stands for:

* rx (host -> board) behaves like a UART receive FIFO: bytes that arrive
  when it is full are lost. ``host_write`` stores what fits, drops the rest,
  counts them in ``rx.dropped`` and returns how many it stored, so a
  harness that cares can retry the remainder later.
* tx (board -> host) applies back-pressure instead: ``serial_write``
  accepts only what fits and returns that count, so the firmware keeps the
  rest for its next tick and nothing is lost.

``host_write``/``host_read`` stand for the outside world and may allocate;
everything else here runs inside the tick and allocates nothing.
"""

import io
from array import array

from metal.core.compat import IS_MICROPYTHON, const, ticks_diff
from metal.core.hal import READ_ERROR, Hal

from metal.boards.sim.plant import (  # noqa: F401  (conversions re-exported for tests)
    ADC_OPEN,
    ADC_SHORT,
    Plant,
    lm75_raw,
    tmp117_raw,
)

MAX_CATCHUP_MS = const(10000)
SERIAL_RING_SIZE = const(2048)
_MP = IS_MICROPYTHON
_MASK30 = const(0x3FFFFFFF)


class ByteRing:
    """A fixed-size byte FIFO; what a UART's FIFO is to the firmware.

    ``put_from``/``get_into`` never block: they move what fits and return the
    count. The bytes live in one ``io.BytesIO`` filled to ``size`` at start-up,
    so its storage never grows, and the copies run in C: MicroPython's stream
    ``write(buf, off, n)`` and ``readinto(buf, n)`` take an offset and a count
    without slicing (a slice read would allocate), and CPython gets a
    memoryview slice instead. A byte loop cost about 0.5 µs per byte on the
    32-bit VM, i.e. most of a telemetry frame's share of the tick, which a real
    board's UART driver spends in C.

    Layout: the unread bytes are ``[rpos, rpos + count)``. Writes append after
    them; once the tail has no room, the unread bytes move to the front (two C
    copies through a preallocated scratch buffer), and an emptied FIFO starts
    over at 0.
    """

    def __init__(self, size):
        self.size = size
        # from a bytearray, not bytes: MicroPython would share a bytes object and
        # copy it on the first write (an allocation in the middle of a tick)
        self._bio = io.BytesIO(bytearray(size))
        self._scratch = bytearray(size)
        self.rpos = 0  # index of the oldest unread byte
        self.count = 0
        self.dropped = 0  # bytes refused by host_write (rx overruns), mod 2**30
        self._seek = self._bio.seek
        if _MP:
            self._write = self._bio.write  # write(buf, off, n): no slice
            self._readinto = self._bio.readinto  # readinto(buf, n)
        else:
            self._write = self._cpy_write
            self._readinto = self._cpy_readinto

    def _cpy_write(self, src, start, n):
        return self._bio.write(memoryview(src)[start:start + n])

    def _cpy_readinto(self, dst, n):
        return self._bio.readinto(memoryview(dst)[:n])

    def free(self):
        return self.size - self.count

    def clear(self):
        """Drop every unread byte (a board reset empties its UART FIFOs)."""
        self.rpos = 0
        self.count = 0

    def _compact(self):
        n = self.count
        self._seek(self.rpos)
        self._readinto(self._scratch, n)
        self._seek(0)
        self._write(self._scratch, 0, n)
        self.rpos = 0

    def put_from(self, src, start, n):
        free = self.size - self.count
        if n > free:
            n = free
        if n <= 0:
            return 0
        w = self.rpos + self.count
        if w + n > self.size:
            self._compact()
            w = self.count
        self._seek(w)
        self._write(src, start, n)
        self.count += n
        return n

    def get_into(self, dst, start, n):
        if n > self.count:
            n = self.count
        if n <= 0:
            return 0
        self._seek(self.rpos)
        if start == 0:
            self._readinto(dst, n)
        else:
            sc = self._scratch
            self._readinto(sc, n)
            for k in range(n):
                dst[start + k] = sc[k]
        c = self.count - n
        self.count = c
        self.rpos = self.rpos + n if c else 0
        return n


def _channel_map(n):
    return array("i", [-1] * n)


class SimHal(Hal):
    def __init__(self, config=None, plant=None, serial_size=SERIAL_RING_SIZE):
        if config is None:
            from metal.boards.sim.board import CONFIG
            config = CONFIG
        self.config = config
        self.plant = plant if plant is not None else Plant(config)

        n_pwm = 0
        n_tach = 0
        for f in config.fans:
            n_pwm = max(n_pwm, f.pwm_ch + 1)
            n_tach = max(n_tach, f.tach_ch + 1)
        self._pwm_fan = _channel_map(n_pwm)  # channel -> fan index, -1 unused
        self._tach_fan = _channel_map(n_tach)
        for i in range(len(config.fans)):
            self._pwm_fan[config.fans[i].pwm_ch] = i
            self._tach_fan[config.fans[i].tach_ch] = i
        self._n_pwm = n_pwm
        self._n_tach = n_tach
        n_rail = 0
        for r in config.rails:
            n_rail = max(n_rail, r.ch + 1)
        self._rail = _channel_map(n_rail)  # channel -> rail index, -1 unused
        for i in range(len(config.rails)):
            self._rail[config.rails[i].ch] = i
        self._n_rail = n_rail

        # The image: the plant's reading arrays themselves (see the module
        # docstring), sized by the config like claim_inputs would; the masks
        # are copied by sample().
        p = self.plant
        p.publish()
        self.adc = p.adc
        self.i2c_temp = p.i2c_temp
        self.mv = p.mv
        self.ma = p.ma
        self.pg_mask = p.pg_mask
        self.din_mask = p.din_mask

        self.rx = ByteRing(serial_size)  # host -> board
        self.tx = ByteRing(serial_size)  # board -> host
        self.watchdog_feeds = 0  # mod 2**30
        self.reboot_requested = False
        self.samples = 0  # sample() calls, mod 2**30
        self._started = False
        self._last_us = 0
        self._us_rem = 0  # elapsed µs not yet simulated (< 1 ms)

    # -- time and housekeeping ---------------------------------------------

    def sample(self, now_us):
        self.samples = (self.samples + 1) & _MASK30
        plant = self.plant
        ms = 0
        if self._started:
            d = ticks_diff(now_us, self._last_us)
            self._last_us = now_us
            if d > 0:  # else no time passed (or the caller's clock stepped back)
                us = self._us_rem + d
                ms = us // 1000
                self._us_rem = us - ms * 1000
        else:
            self._started = True
            self._last_us = now_us
        if ms:
            if ms > MAX_CATCHUP_MS:
                ms = MAX_CATCHUP_MS
            plant.step(ms)  # ends with plant.publish()
        else:
            plant.publish()
        self.pg_mask = plant.pg_mask
        self.din_mask = plant.din_mask

    def watchdog_feed(self):
        self.watchdog_feeds = (self.watchdog_feeds + 1) & _MASK30

    def reboot(self):
        # The process wrapper (or test) sees the flag and restarts the firmware.
        self.reboot_requested = True

    def sim_fault(self, kind, target, value):
        """OP_SIM_FAULT: inject a plant fault; R_OK / R_UNKNOWN_TARGET /
        R_INVALID_ARGUMENT (see plant.py). It shows in the next sample."""
        return self.plant.inject(kind, target, value)

    # -- outputs ---------------------------------------------------------------

    def digital_out(self, ch, level):
        self.plant.set_output(ch, level)

    def pwm_set(self, ch, duty_permille):
        if ch >= 0 and ch < self._n_pwm:
            f = self._pwm_fan[ch]
            if f >= 0:
                # plant.set_fan_duty(f, duty) written out
                if duty_permille < 0:
                    duty_permille = 0
                elif duty_permille > 1000:
                    duty_permille = 1000
                plant = self.plant
                plant.f_duty[f] = duty_permille
                if not plant.f_stalled[f]:
                    plant.f_target[f] = duty_permille * plant.f_max_rpm[f]

    def tach_pulses(self, ch):
        if ch < 0 or ch >= self._n_tach:
            return READ_ERROR
        f = self._tach_fan[ch]
        if f < 0:
            return READ_ERROR
        return self.plant.take_pulses(f)

    def rail_enable(self, ch, on):
        if 0 <= ch < self._n_rail:
            r = self._rail[ch]
            if r >= 0:
                self.plant.set_rail_enable(r, on)

    # -- host link ---------------------------------------------------------------------

    def serial_read(self, buf, start, max_n):
        return self.rx.get_into(buf, start, max_n)

    def serial_write(self, buf, start, n):
        return self.tx.put_from(buf, start, n)

    # -- the outside world (may allocate) ----------------------------------------

    def host_write(self, data):
        """Bytes from the host into the board's receive ring; returns how
        many were stored (the rest are lost and counted in rx.dropped)."""
        n = len(data)
        stored = self.rx.put_from(data, 0, n)
        if stored < n:
            self.rx.dropped = (self.rx.dropped + n - stored) & _MASK30
        return stored

    def host_read(self, max_n=-1):
        """Up to ``max_n`` bytes (all when negative) the board has sent."""
        n = self.tx.count
        if 0 <= max_n < n:
            n = max_n
        out = bytearray(n)
        self.tx.get_into(out, 0, n)
        return bytes(out)
