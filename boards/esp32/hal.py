"""``Esp32Hal``: the drivers' HAL on an ESP32 DevKit, over ``machine``.

common/machine_hal.py's ``MachineHal`` (its docstring has the conversions,
the host link and the maintenance break-in) with the ESP32's differences:

    adc[ch]         ADC (11 dB attenuation).read_uv(): the factory-calibrated
                    voltage, converted by board.adc_uv_to_raw to the 16-bit
                    fraction of the 3.3 V divider supply drivers/ntc.py
                    expects (saturated: full scale = open thermistor)
    i2c_temp[ch]    TMP117 / LM75 (0x8000: TMP117 before its first
                    conversion, -128 °C on an LM75: READ_ERROR)
    pwm_set         LEDC, 25 kHz
    host link       UART0 (the DevKit's USB-UART bridge, shared with the REPL)
                    through sys.stdin/stdout, or a machine.UART given GPIO
                    numbers when ``PINS.uart`` names one
    maintenance     hardware Timer 0 feeds the task watchdog (the ESP32 port
                    has no virtual timers)
"""

from machine import ADC, UART, Pin

from metal.boards.common.machine_hal import MachineHal
from metal.boards.esp32.board import adc_uv_to_raw


class Esp32Hal(MachineHal):
    MAINT_TIMER_ID = 0

    def _make_adc(self, gpio):
        return ADC(Pin(gpio), atten=ADC.ATTN_11DB)

    def _make_uart(self, uid, tx, rx, baud):
        return UART(uid, baudrate=baud, tx=tx, rx=rx, txbuf=1024, rxbuf=1024)

    def _sample_adc(self):
        adc = self.adc
        a = self._adc
        for ch in range(len(a)):
            adc[ch] = adc_uv_to_raw(a[ch].read_uv())
