"""A small fake HAL for the thermal driver tests (sensors, fans).

Plain attributes the test sets; every read returns what the test put there.
Tachometers count like a board's pin counter: ``tach[ch]`` is the pulse rate
in pulses per tick, each ``sample()`` (the firmware calls it once at the start
of every tick) counts that many more, and ``tach_pulses`` returns what was
counted since its previous call (a fan driver reads it once per RPM window).
Written in the MicroPython subset and allocation-free on the read/write path,
so the same class drives the zero-allocation check under the MicroPython VMs.
"""

from metal.core.hal import Hal, READ_ERROR  # noqa: F401  (READ_ERROR re-exported)


class ThermalFakeHal(Hal):
    def __init__(self, n_ch=8):
        self.adc = [32768] * n_ch  # raw ADC per channel (32768 = 25 °C on the NTC)
        self.i2c = [0x0C80] * n_ch  # raw register per channel (TMP117 25 °C)
        self.i2c_temp = self.i2c  # the HAL's image name for the same list
        self.tach = [0] * n_ch  # pulses counted per sample() (per tick)
        self.tach_count = [0] * n_ch  # counted since the last tach_pulses(ch)
        self.pwm = [-1] * n_ch  # last duty written per channel (-1 never)
        self.pwm_writes = 0

    def sample(self, now_us):
        rate = self.tach
        count = self.tach_count
        for ch in range(len(rate)):
            count[ch] += rate[ch]
        return 0

    def pwm_set(self, ch, duty_permille):
        self.pwm[ch] = duty_permille
        self.pwm_writes += 1

    def tach_pulses(self, ch):
        n = self.tach_count[ch]
        self.tach_count[ch] = 0
        return n
