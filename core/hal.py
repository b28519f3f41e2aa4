"""The hardware abstraction the drivers use.

A board module subclasses ``Hal`` and implements every method for its hardware
(``machine.Pin``/``PWM``/``ADC``/``I2C``/``WDT`` on a real board, the plant
model on the simulator). The drivers in ``metal.core.drivers`` call nothing
else, so the same control code runs everywhere.

Contract for implementers, because these run inside the tick:

* no method may allocate on the steady-state path (no floats, no tuples, no
  new bytes objects; claim buffers in ``__init__``);
* every method returns plain small ints; a failed read returns ``READ_ERROR``
  instead of raising;
* channels are the small integers the board's config assigns (``ch`` fields).

The base class raises on everything so that a board that forgets a method
fails loudly at the first tick on the bench instead of running blind.
"""

from metal.core.compat import const

READ_ERROR = const(-0x3FFFFFFF)  # returned by a read that failed (bus error, no device)


def _missing(name):
    return RuntimeError("this board's HAL does not implement " + name)


class Hal:
    # -- time and housekeeping ---------------------------------------------
    def sample(self, now_us):
        """Called once at the start of each tick before any read.

        Boards that sample in bulk (the simulator steps its plant here, a real
        board may latch tachometer counters) do it now; others do nothing.
        """
        raise _missing("sample")

    def watchdog_feed(self):
        raise _missing("watchdog_feed")

    def reboot(self):
        raise _missing("reboot")

    # -- analog and digital inputs ---------------------------------------------
    def adc_read(self, ch):
        """Raw 16-bit ADC value (0..65535) of channel ``ch``, or READ_ERROR."""
        raise _missing("adc_read")

    def i2c_temp_read(self, ch):
        """Raw 16-bit register of the digital temperature sensor on ``ch``
        (TMP117: 7.8125 m°C/LSB, LM75: 1/256 °C per LSB, two's complement),
        or READ_ERROR when the device does not answer."""
        raise _missing("i2c_temp_read")

    def digital_in(self, ch):
        """Level of input line ``ch``: 0 or 1 (after the board's own pull)."""
        raise _missing("digital_in")

    def digital_out(self, ch, level):
        raise _missing("digital_out")

    # -- fans ----------------------------------------------------------------------
    def pwm_set(self, ch, duty_permille):
        """Drive PWM channel ``ch`` at ``duty_permille`` (0..1000)."""
        raise _missing("pwm_set")

    def tach_pulses(self, ch):
        """Tachometer pulses counted on ``ch`` since the previous call."""
        raise _missing("tach_pulses")

    # -- power rails -----------------------------------------------------------------
    def rail_enable(self, ch, on):
        raise _missing("rail_enable")

    def rail_power_good(self, ch):
        """1 when the rail's power-good signal is asserted, else 0."""
        raise _missing("rail_power_good")

    def rail_mv(self, ch):
        """Measured rail voltage in mV, or READ_ERROR."""
        raise _missing("rail_mv")

    def rail_ma(self, ch):
        """Measured rail current in mA, or READ_ERROR."""
        raise _missing("rail_ma")

    # -- host link ---------------------------------------------------------------------
    def serial_read(self, buf, start, max_n):
        """Non-blocking: copy up to ``max_n`` received bytes into ``buf`` at
        ``start``; return how many (0 when none are waiting)."""
        raise _missing("serial_read")

    def serial_write(self, buf, start, n):
        """Non-blocking: queue ``n`` bytes of ``buf`` from ``start``; return how
        many were accepted (the caller keeps the rest for the next tick)."""
        raise _missing("serial_write")
