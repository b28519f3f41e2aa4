"""The hardware abstraction the drivers use.

A board module subclasses ``Hal`` and implements it for its hardware
(``machine.Pin``/``PWM``/``ADC``/``I2C``/``WDT`` on a real board, the plant
model on the simulator). The drivers in ``metal.core.drivers`` touch nothing
else, so the same control code runs everywhere.

Inputs are a *process image*, as in a PLC: ``sample(now_us)`` runs once at
the start of every tick and refreshes every input into preallocated storage;
the drivers then read that snapshot by channel number, with no call per read::

    tick start: hal.sample(now_us)
        adc[ch]       raw 16-bit ADC value (0..65535) or READ_ERROR
        i2c_temp[ch]  raw 16-bit register of the digital temperature sensor on
                      ``ch`` (TMP117: 7.8125 m°C/LSB, LM75: 1/256 °C per LSB,
                      two's complement, 0..65535), or READ_ERROR when the
                      device did not answer
        din_mask      bit ``ch`` = level of digital input ``ch`` (0/1 after
                      the board's own pull and inversion); channels 0..29
        pg_mask       bit ``ch`` = power-good of rail channel ``ch``
        mv[ch]        measured rail voltage in mV, or READ_ERROR
        ma[ch]        measured rail current in mA, or READ_ERROR
    the phases run, reading the image and calling the output methods

Why: on the 32-bit VM a Python method call costs as much as the rest of a
channel's work, and a tick reads about forty inputs. One bulk refresh also
gives every driver the same instant's view (no input changes between the
sensor phase and the interlock phase of one tick). The masks let the digital
drivers check every line at once ("did anything differ from the debounced
levels?") instead of line by line. 30 channels keep a mask below 2**30, a
small int on a 32-bit VM.

Outputs and counters stay calls, made only when something changes or once per
measurement window: ``digital_out``, ``pwm_set``, ``rail_enable``,
``tach_pulses`` (pulses since the previous call: a fan driver reads it when
its RPM window closes), ``serial_read``/``serial_write``, ``watchdog_feed``,
``reboot``. An output takes effect at once; the image shows its consequence
(a power-good, a looped-back level) from the next ``sample`` on.

Contract for implementers, because all of this runs inside the tick:

* nothing allocates on the steady-state path (no floats, no tuples, no new
  bytes objects; ``claim_inputs`` and every other buffer in ``__init__``);
* every value is a plain small int; a failed read stores ``READ_ERROR``
  instead of raising;
* channels are the small integers the board's config assigns (``ch``
  fields), and the image has a slot for every channel the config names
  (``claim_inputs`` sizes it; the drivers check this at start-up).

The base class raises on every method so that a board that forgets one fails
loudly at the first tick on the bench instead of running blind.
"""

from array import array

from metal.core.compat import const

READ_ERROR = const(-0x3FFFFFFF)  # stored by a read that failed (bus error, no device)
MAX_DIGITAL_CH = const(30)  # din_mask / pg_mask bits: channels 0..29


def _missing(name):
    return RuntimeError("this board's HAL does not implement " + name)


def check_channel(image, ch, what):
    """Start-up check a driver runs for each configured channel: ``image``
    (an input array of the HAL) has a slot for ``ch``. ValueError otherwise."""
    if ch < 0 or ch >= len(image):
        raise ValueError(what + ": channel " + str(ch) + " is not in the HAL's input image")


def check_mask_channel(ch, what):
    """Start-up check for a channel that lives in a mask (din_mask, pg_mask)."""
    if ch < 0 or ch >= MAX_DIGITAL_CH:
        raise ValueError(what + ": channel " + str(ch) + " is outside 0.."
                         + str(MAX_DIGITAL_CH - 1))


class Hal:
    # The input image (see the module docstring). ``claim_inputs`` creates it;
    # a board's ``sample`` refreshes it in place.
    adc = array("i")
    i2c_temp = array("i")
    mv = array("i")
    ma = array("i")
    din_mask = 0
    pg_mask = 0

    def claim_inputs(self, n_adc, n_i2c, n_rail):
        """Allocate the input image once (in the board's ``__init__``): every
        analog slot starts at READ_ERROR, every mask bit at 0."""
        self.adc = array("i", [READ_ERROR] * n_adc)
        self.i2c_temp = array("i", [READ_ERROR] * n_i2c)
        self.mv = array("i", [READ_ERROR] * n_rail)
        self.ma = array("i", [READ_ERROR] * n_rail)
        self.din_mask = 0
        self.pg_mask = 0

    # -- time and housekeeping ---------------------------------------------
    def sample(self, now_us):
        """Refresh the input image; called once at the start of each tick.

        The simulator also steps its plant here; a real board reads its pins,
        ADCs and sensors. A read that fails stores READ_ERROR in its slot.
        """
        raise _missing("sample")

    def watchdog_feed(self):
        raise _missing("watchdog_feed")

    def reboot(self):
        raise _missing("reboot")

    # -- outputs and counters -------------------------------------------------
    def digital_out(self, ch, level):
        raise _missing("digital_out")

    def pwm_set(self, ch, duty_permille):
        """Drive PWM channel ``ch`` at ``duty_permille`` (0..1000)."""
        raise _missing("pwm_set")

    def tach_pulses(self, ch):
        """Tachometer pulses counted on ``ch`` since the previous call (the
        board counts them continuously, e.g. in a pin interrupt)."""
        raise _missing("tach_pulses")

    def rail_enable(self, ch, on):
        raise _missing("rail_enable")

    # -- host link ---------------------------------------------------------------------
    def serial_read(self, buf, start, max_n):
        """Non-blocking: copy up to ``max_n`` received bytes into ``buf`` at
        ``start``; return how many (0 when none are waiting)."""
        raise _missing("serial_read")

    def serial_write(self, buf, start, n):
        """Non-blocking: queue ``n`` bytes of ``buf`` from ``start``; return how
        many were accepted (the caller keeps the rest for the next tick)."""
        raise _missing("serial_write")
