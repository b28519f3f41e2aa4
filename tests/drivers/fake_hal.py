"""A fake HAL for driver tests: every channel is a slot in a plain list.

Tests set the input image directly (``hal.din[3] = 1``, ``hal.pg[0] = 0``,
``hal.ma[2] = 5000``, ``hal.adc[1] = 30000``) and read back what the drivers
did (``hal.enabled``, ``hal.dout``, ``hal.pwm``) or the ordered call log
(``hal.log``, a list of ``(method name, ch, value)`` tuples for the calls that
drive hardware). ``din_mask`` and ``pg_mask`` are computed from the ``din``
and ``pg`` lists on every read, so a test never has to call ``sample`` for a
change to show (a real HAL refreshes them in ``sample``).

``pg_auto`` (default True): ``rail_enable(ch, on)`` also sets ``pg[ch] = on``,
i.e. a rail reports power-good as soon as it is enabled; set it False (or a
channel's ``pg`` by hand after enabling) to test timeouts and power-good loss.

Runs under MicroPython too (the zero-allocation checks import it there): set
``recording = False`` there, because appending to the log allocates. With it
off no method allocates.
"""

from metal.core.hal import Hal, READ_ERROR  # noqa: F401  (READ_ERROR re-exported for tests)


class FakeHal(Hal):
    def __init__(self, channels=32):
        n = channels
        # inputs the test controls
        self.din = [0] * n  # digital input levels (din_mask bits)
        self.adc = [0] * n  # raw ADC values (or READ_ERROR)
        self.i2c_temp = [0] * n  # raw I2C temperature registers (or READ_ERROR)
        self.tach = [0] * n  # tach pulses returned (and cleared) by tach_pulses
        self.pg = [0] * n  # power-good levels (pg_mask bits)
        self.mv = [0] * n  # rail mV (or READ_ERROR)
        self.ma = [0] * n  # rail mA (or READ_ERROR)
        self.pg_auto = True
        # outputs the test inspects
        self.dout = [-1] * n  # last digital_out level, -1 = never written
        self.pwm = [-1] * n  # last pwm_set duty, -1 = never written
        self.enabled = [0] * n  # last rail_enable level
        self.log = []  # (name, ch, value) for digital_out, pwm_set, rail_enable
        self.recording = True
        # counters
        self.samples = 0
        self.last_sample_us = 0
        self.feeds = 0
        self.reboots = 0
        self.calls = 0  # every HAL call (inputs are read from the image, not called)
        # serial: rx bytes queued by the test, tx bytes written by the firmware
        self.rx = bytearray(0)
        self.rx_pos = 0
        self.tx = bytearray(0)

    # -- helpers for tests -------------------------------------------------------------
    def rail_calls(self):
        """[(ch, on), ...] of every rail_enable call, in order."""
        out = []
        for name, ch, v in self.log:
            if name == "rail_enable":
                out.append((ch, v))
        return out

    def clear_log(self):
        self.log = []

    def _record(self, name, ch, v):
        if self.recording:
            self.log.append((name, ch, v))

    # -- Hal -------------------------------------------------------------------------------
    @property
    def din_mask(self):
        m = 0
        d = self.din
        for ch in range(len(d) if len(d) < 30 else 30):
            if d[ch]:
                m |= 1 << ch
        return m

    @property
    def pg_mask(self):
        m = 0
        g = self.pg
        for ch in range(len(g) if len(g) < 30 else 30):
            if g[ch]:
                m |= 1 << ch
        return m

    def sample(self, now_us):
        self.calls += 1
        self.samples += 1
        self.last_sample_us = now_us

    def watchdog_feed(self):
        self.calls += 1
        self.feeds += 1

    def reboot(self):
        self.calls += 1
        self.reboots += 1

    def digital_out(self, ch, level):
        self.calls += 1
        self.dout[ch] = level
        self._record("digital_out", ch, level)

    def pwm_set(self, ch, duty_permille):
        self.calls += 1
        self.pwm[ch] = duty_permille
        self._record("pwm_set", ch, duty_permille)

    def tach_pulses(self, ch):
        self.calls += 1
        p = self.tach[ch]
        self.tach[ch] = 0
        return p

    def rail_enable(self, ch, on):
        self.calls += 1
        self.enabled[ch] = on
        if self.pg_auto:
            self.pg[ch] = on
        self._record("rail_enable", ch, on)

    def serial_read(self, buf, start, max_n):
        self.calls += 1
        n = len(self.rx) - self.rx_pos
        if n > max_n:
            n = max_n
        for k in range(n):
            buf[start + k] = self.rx[self.rx_pos + k]
        self.rx_pos += n
        return n

    def serial_write(self, buf, start, n):
        self.calls += 1
        if self.recording:
            for k in range(n):
                self.tx.append(buf[start + k])
        return n


# -- running a check script under a MicroPython VM (CPython side only) ----------------------
# The driver tests stage the package like the board does (/lib/metal/core/...) plus this
# module, and run a script with the shared harness (metal.host.mpvm) under the unix port
# (64-bit) or the WebAssembly port (32-bit). The imports live inside the functions so that
# this module still imports under MicroPython.

def micropython_vms():
    """The VMs to run checks in: every VM that is here; under CI every VM, so a missing
    one fails the test instead of skipping it."""
    from metal.host import mpvm

    return [vm for vm in mpvm.VMS if mpvm.in_ci() or mpvm.missing(vm) is None]


def run_micropython(script, vm="unix", timeout=60):
    """Run ``script`` (source text) under MicroPython; return (exit status, stdout, stderr)."""
    import os
    import shutil
    import tempfile

    from metal.host import mpvm

    with tempfile.TemporaryDirectory() as stage:
        mpvm.stage_tree(stage, boards=())
        shutil.copyfile(os.path.abspath(__file__), os.path.join(stage, "fake_hal.py"))
        r = mpvm.run(vm, script, timeout, stage=stage)
        return r.rc, r.stdout, r.stderr
