"""``MachineHal``: the drivers' HAL over MicroPython's ``machine``, shared by the real boards.

A board's hal.py subclasses it and overrides only what its port does
differently (boards/rp2040: nothing; boards/esp32: ADC attenuation and
calibration, UART pins, the maintenance timer). Built once from the board's
``PINS``; every method the tick calls is allocation-free (preallocated arrays
and lists of ``machine`` objects, ints only). Conversions:

Input image (refreshed by ``sample`` at the start of every tick, see core/hal.py):

    adc[ch]         ADC.read_u16(): the 16-bit fraction of the ADC reference;
                    a board whose ADC is not ratiometric overrides
                    ``_sample_adc``
    i2c_temp[ch]    temperature register 0x00 (TMP117, LM75), big-endian 16
                    bits; 0x8000 (TMP117 power-on value, no conversion yet;
                    -128 °C on an LM75) and a bus error (OSError: NACK,
                    timeout) read READ_ERROR; a device that failed is not
                    asked again for I2C_RETRY_READS samples
    din_mask        bit ch = Pin.value() xor the channel's ``invert``
    pg_mask         bit ch = the rail's power-good pin
    mv[ch], ma[ch]  READ_ERROR: no monitors fitted on the boards so far

Outputs and counters:

    pwm_set         per-mille -> duty_u16 (x 65535 // 1000 <= 65.5e6: a
                    small int even on the 32-bit VM), written on change only
    tach_pulses     falling edges counted by a hard Pin IRQ into an
                    array('i') (mod 2**28), difference since the last call
    digital_out     Pin.value(level xor invert), output lines only

Host link (``StreamLink``): the REPL's stdio (sys.stdin/stdout: USB-CDC on
the Pico, UART0 on the ESP32 DevKit) by default, or a ``machine.UART`` when
``PINS.uart`` names one. Reads take one byte per readable poll (``ipoll``,
which does not allocate); writes go out in chunks of at most WRITE_CHUNK
bytes while the port polls writable, so a host that stops reading makes the
firmware keep its frames instead of blocking the tick.

Maintenance break-in (stdio link only; the firmware turns Ctrl-C off so that
0x03 bytes in frames are data)::

    host -> board bytes      ... 00 | 0D 03 ...        (mpremote sends "\\r\\x03")
                                 ^ frame boundary: after a 0x00 delimiter,
                                   or after BREAK_GAP_US of silence

    boundary --0x0D--> armed --0x03--> raise BreakIn (board_main stops the loop,
        ^                |                 enters maintenance, the REPL reads
        +----other-------+                 the rest of the input: "\\r\\x01")

A valid frame never starts with 0D 03 (its second byte is the version/type
byte 0x1T), so the wire protocol cannot trigger it by accident.
"""

import select
import sys
from array import array

import machine
from machine import ADC, I2C, PWM, UART, WDT, Pin, Timer

from metal.boards.common.board import RESET_COMMANDED
from metal.core.compat import const, ticks_diff
from metal.core.config import DIR_OUT, PULL_DOWN, PULL_UP
from metal.core.hal import MAX_DIGITAL_CH, READ_ERROR, Hal

TACH_MASK = const(0x0FFFFFFF)  # counter period 2**28: count + 1 stays a small int in the IRQ
BREAK_GAP_US = const(20000)  # silence that makes the next byte a frame boundary
WRITE_CHUNK = const(32)  # bytes per write call: bounded time if the port blocks anyway
MAINT_FEED_MS = const(500)  # watchdog feed period while in maintenance
I2C_RETRY_READS = const(49)  # after a bus error, skip this many reads of that device
NO_DATA = const(0x8000)  # TMP117 before its first conversion; -128 °C on an LM75
REBOOT_MARKER = "/metal-reboot"  # holds the cause of a deliberate reset (see board_main.py)


class BreakIn(Exception):
    """The host sent the maintenance break-in sequence (see the module docstring)."""


def tach_handler(counts, i):
    """A hard-IRQ handler counting edges into ``counts[i]`` (start-up only)."""

    def on_edge(pin):
        # Interrupt context, heap locked: touch only the preallocated array.
        counts[i] = (counts[i] + 1) & TACH_MASK

    return on_edge


class StreamLink:
    """Non-blocking byte I/O over MicroPython streams, with the break-in detector."""

    def __init__(self, rx, tx, rx_pollable, tx_pollable, detect_break):
        self._rx = rx
        self._tx = tx
        self._rx_poll = select.poll()
        self._rx_poll.register(rx_pollable, select.POLLIN)
        self._tx_poll = select.poll()
        self._tx_poll.register(tx_pollable, select.POLLOUT)
        self._one = bytearray(1)
        self.detect_break = detect_break
        self.now_us = 0  # set by the HAL's sample() each tick
        self._last_rx_us = 0
        self._after_zero = True  # the start of the stream is a frame boundary
        self._armed = False  # 0x0D seen at a boundary
        self.rx_count = 0
        self.tx_count = 0

    def _readable(self):
        for _ in self._rx_poll.ipoll(0):
            return True
        return False

    def _writable(self):
        for _ in self._tx_poll.ipoll(0):
            return True
        return False

    def read(self, buf, start, max_n):
        n = 0
        one = self._one
        boundary = self._after_zero or ticks_diff(self.now_us, self._last_rx_us) >= BREAK_GAP_US
        while n < max_n and self._readable():
            if self._rx.readinto(one, 1) != 1:
                break
            b = one[0]
            if self.detect_break:
                if b == 3 and self._armed:
                    self._armed = False
                    raise BreakIn()
                self._armed = boundary and b == 13
            boundary = b == 0
            buf[start + n] = b
            n += 1
        if n:
            self._last_rx_us = self.now_us
            self._after_zero = boundary
            self.rx_count = (self.rx_count + n) & 0x3FFFFFFF
        return n

    def write(self, buf, start, n):
        done = 0
        while done < n and self._writable():
            k = n - done
            if k > WRITE_CHUNK:
                k = WRITE_CHUNK
            # stream.write(buf, offset, length): no slice, no allocation
            w = self._tx.write(buf, start + done, k)  # type: ignore[call-arg]
            if not w:
                break
            done += w
        if done:
            self.tx_count = (self.tx_count + done) & 0x3FFFFFFF
        return done


def _pull(p):
    if p == PULL_UP:
        return Pin.PULL_UP
    if p == PULL_DOWN:
        return Pin.PULL_DOWN
    return None


class MachineHal(Hal):
    """The HAL over ``machine`` for a board's ``PINS`` (see the module docstring).

    Port hooks a board's subclass may override (start-up only, except
    ``_sample_adc``): ``_make_adc(gpio)``, ``_make_uart(uid, tx, rx, baud)``,
    ``_sample_adc()`` and ``MAINT_TIMER_ID``.
    """

    MAINT_TIMER_ID = -1  # the maintenance feed timer: -1 = a virtual (software) timer

    def __init__(self, pins):
        self.pins = pins
        if len(pins.digital) > MAX_DIGITAL_CH or len(pins.rail_pg) > MAX_DIGITAL_CH:
            raise ValueError("at most " + str(MAX_DIGITAL_CH) + " digital and rail channels")
        self.claim_inputs(len(pins.adc), len(pins.i2c_addr), len(pins.rail_en))
        # Rails: every enable low before anything else runs.
        self._rail_en = []  # type: list[Pin]
        self._rail_pg = []  # type: list[Pin]
        for g in pins.rail_en:
            self._rail_en.append(Pin(g, Pin.OUT, value=0))
        for g in pins.rail_pg:
            self._rail_pg.append(Pin(g, Pin.IN, Pin.PULL_UP))

        self._adc = []  # type: list[ADC]
        for g in pins.adc:
            self._adc.append(self._make_adc(g))
        self._i2c = I2C(pins.i2c_id, sda=Pin(pins.i2c_sda), scl=Pin(pins.i2c_scl),
                        freq=pins.i2c_freq)
        self._i2c_addr = bytearray(pins.i2c_addr)
        self._i2c_buf = bytearray(2)
        self._i2c_skip = bytearray(len(pins.i2c_addr))  # reads left to skip after an error
        self.i2c_errors = 0

        # Fans: PWM outputs start at full duty -- until the thermal controller
        # writes its boot duty, a fan that runs is the safe side.
        self._pwm_invert = pins.pwm_invert
        self._pwm = []  # type: list[PWM]
        for g in pins.pwm:
            self._pwm.append(PWM(Pin(g), freq=pins.pwm_freq, duty_u16=self._duty_u16(1000)))
        self._pwm_applied = [-1] * len(pins.pwm)
        n_tach = len(pins.tach)
        self._tach_count = _int_array(n_tach)
        self._tach_last = _int_array(n_tach)
        self._tach_pins = []  # type: list[Pin]
        for i in range(n_tach):
            p = Pin(pins.tach[i], Pin.IN, Pin.PULL_UP)
            p.irq(handler=tach_handler(self._tach_count, i), trigger=Pin.IRQ_FALLING, hard=True)
            self._tach_pins.append(p)

        n_dig = len(pins.digital)
        self._dig = []  # type: list[Pin]
        self._dig_out = bytearray(n_dig)
        self._dig_inv = bytearray(n_dig)
        for i in range(n_dig):
            d = pins.digital[i]
            inv = 1 if d.invert else 0
            self._dig_inv[i] = inv
            if d.direction == DIR_OUT:
                self._dig_out[i] = 1
                self._dig.append(Pin(d.gpio, Pin.OUT, value=(d.initial ^ inv) & 1))
            else:
                self._dig.append(Pin(d.gpio, Pin.IN, _pull(d.pull)))

        if pins.uart is None:
            self.link = StreamLink(sys.stdin.buffer, sys.stdout.buffer, sys.stdin, sys.stdout,
                                   detect_break=True)
        else:
            uid, tx, rx, baud = pins.uart
            u = self._make_uart(uid, tx, rx, baud)
            self.link = StreamLink(u, u, u, u, detect_break=False)
        self._wdt = None  # type: WDT | None
        self._maint_timer = None  # type: Timer | None

    # -- port hooks (start-up only) --------------------------------------------
    def _make_adc(self, gpio):
        return ADC(Pin(gpio))

    def _make_uart(self, uid, tx, rx, baud):
        return UART(uid, baudrate=baud, tx=Pin(tx), rx=Pin(rx), txbuf=1024, rxbuf=1024)

    # -- time and housekeeping ---------------------------------------------
    def sample(self, now_us):
        self.link.now_us = now_us
        self._sample_adc()
        i2c = self.i2c_temp
        for ch in range(len(i2c)):
            i2c[ch] = self._read_i2c(ch)
        m = 0
        dig = self._dig
        inv = self._dig_inv
        for ch in range(len(dig)):
            if dig[ch].value() ^ inv[ch]:
                m |= 1 << ch
        self.din_mask = m
        m = 0
        pg = self._rail_pg
        for ch in range(len(pg)):
            if pg[ch].value():
                m |= 1 << ch
        self.pg_mask = m
        # mv/ma keep READ_ERROR: no rail monitors fitted (see the module docstring)

    def start_watchdog(self):
        """Arm the watchdog (board_main, right before the loop starts).
        It cannot be stopped again: only a reset ends it."""
        if self._wdt is None and self.pins.wdt_timeout_ms > 0:
            self._wdt = WDT(timeout=self.pins.wdt_timeout_ms)

    def watchdog_feed(self):
        wdt = self._wdt
        if wdt is not None:
            wdt.feed()

    def reboot(self):
        write_marker(REBOOT_MARKER, RESET_COMMANDED)
        machine.reset()

    def fail_safe(self):
        """Fans to full (the loop is gone; rails keep their state)."""
        for ch in range(len(self._pwm)):
            self.pwm_set(ch, 1000)

    def enter_maintenance(self):
        """The firmware loop stopped for the REPL: fans to full, and a timer
        feeds the watchdog (if armed) so the board stays up while flashing.
        A soft reset stops the timer; the watchdog then resets the board."""
        self.fail_safe()
        wdt = self._wdt
        if wdt is not None and self._maint_timer is None:
            def feed(t):
                wdt.feed()

            self._maint_timer = Timer(self.MAINT_TIMER_ID, mode=Timer.PERIODIC,
                                      period=MAINT_FEED_MS, callback=feed)

    # -- input sampling (inside sample) ---------------------------------------
    def _sample_adc(self):
        adc = self.adc
        a = self._adc
        for ch in range(len(a)):
            adc[ch] = a[ch].read_u16()

    def _read_i2c(self, ch):
        skip = self._i2c_skip[ch]
        if skip:
            self._i2c_skip[ch] = skip - 1
            return READ_ERROR
        b = self._i2c_buf
        try:
            self._i2c.readfrom_mem_into(self._i2c_addr[ch], 0, b)
        except OSError:
            # A device that does not answer raises (and a raise allocates): count
            # it, report no reading, and leave it alone for I2C_RETRY_READS reads
            # so a missing part costs one exception every half second, not 100/s.
            self.i2c_errors = (self.i2c_errors + 1) & 0x3FFFFFFF
            self._i2c_skip[ch] = I2C_RETRY_READS
            return READ_ERROR
        raw = (b[0] << 8) | b[1]
        if raw == NO_DATA:
            return READ_ERROR
        return raw

    def digital_out(self, ch, level):
        if ch < 0 or ch >= len(self._dig) or not self._dig_out[ch]:
            return
        self._dig[ch].value((1 if level else 0) ^ self._dig_inv[ch])

    # -- fans ----------------------------------------------------------------------
    def _duty_u16(self, permille):
        if permille < 0:
            permille = 0
        elif permille > 1000:
            permille = 1000
        if self._pwm_invert:
            permille = 1000 - permille
        return permille * 65535 // 1000

    def pwm_set(self, ch, duty_permille):
        if ch < 0 or ch >= len(self._pwm):
            return
        if self._pwm_applied[ch] == duty_permille:
            return
        self._pwm_applied[ch] = duty_permille
        self._pwm[ch].duty_u16(self._duty_u16(duty_permille))

    def tach_pulses(self, ch):
        if ch < 0 or ch >= len(self._tach_count):
            return 0
        c = self._tach_count[ch]
        d = (c - self._tach_last[ch]) & TACH_MASK
        self._tach_last[ch] = c
        return d

    # -- power rails -----------------------------------------------------------------
    def rail_enable(self, ch, on):
        if 0 <= ch < len(self._rail_en):
            self._rail_en[ch].value(1 if on else 0)

    # -- host link ---------------------------------------------------------------------
    def serial_read(self, buf, start, max_n):
        return self.link.read(buf, start, max_n)

    def serial_write(self, buf, start, n):
        return self.link.write(buf, start, n)


def _int_array(n):
    return array("i", [0] * n)


def write_marker(path, cause):
    """Leave ``cause`` (board.RESET_*) in the marker file for the next boot."""
    try:
        with open(path, "w") as f:
            f.write(str(cause))
    except OSError:
        pass  # a full or read-only filesystem only costs the reset-cause detail
