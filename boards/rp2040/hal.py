"""``Rp2040Hal``: the drivers' HAL on a Raspberry Pi Pico, over ``machine``.

Everything is common/machine_hal.py's ``MachineHal`` (its docstring has the
conversions, the host link and the maintenance break-in); the Pico needs no
override. What that means on this board:

    adc[ch]         ADC.read_u16(): 12-bit sample scaled to 0..65535, read
                    against ADC_VREF (the thermistor dividers' supply), so it
                    is ratiometric as drivers/ntc.py expects
    i2c_temp[ch]    TMP117 (0x8000: no conversion yet reads READ_ERROR)
    pwm_set         hardware PWM slices, 25 kHz
    host link       USB-CDC through sys.stdin/stdout (break-in detected), or
                    a machine.UART with Pin objects when ``PINS.uart`` names one
    maintenance     a virtual Timer (id -1) feeds the watchdog
"""

from metal.boards.common.machine_hal import MachineHal


class Rp2040Hal(MachineHal):
    pass
