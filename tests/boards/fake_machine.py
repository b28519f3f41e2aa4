# MicroPython, not CPython: a fake ``machine`` module for running the real boards' HAL
# (boards/rp2040/hal.py, boards/esp32/hal.py) under the MicroPython VMs, off the hardware.
#
# A test script installs it before importing a HAL:
#     import sys, fake_machine; sys.modules["machine"] = fake_machine
# Every object keeps what the HAL did in plain attributes and registries (Pin.by_gpio,
# PWM.by_gpio, ADC.by_gpio, I2C.last), so the script can drive inputs and check outputs.
# The methods a tick calls (Pin.value, PWM.duty_u16, ADC.read_*, I2C.readfrom_mem_into,
# WDT.feed, UART.readinto/write/ioctl) allocate nothing, so the HAL can be measured under
# heap_lock with them.
import io


class Pin:
    IN = 0
    OUT = 1
    OPEN_DRAIN = 2
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_FALLING = 4
    IRQ_RISING = 8
    by_gpio = {}

    def __init__(self, gpio, mode=-1, pull=None, value=None):
        self.gpio = gpio
        self.mode = mode
        self.pull = pull
        self.level = 0 if value is None else value
        self.handler = None
        self.trigger = 0
        self.hard = False
        Pin.by_gpio[gpio] = self

    def value(self, v=None):
        if v is None:
            return self.level
        self.level = v
        return None

    def irq(self, handler=None, trigger=0, hard=False):
        self.handler = handler
        self.trigger = trigger
        self.hard = hard


class PWM:
    by_gpio = {}

    def __init__(self, pin, freq=0, duty_u16=0):
        self.pin = pin
        self.freq = freq
        self.duty = duty_u16
        self.writes = 0
        PWM.by_gpio[pin.gpio] = self

    def duty_u16(self, v=None):
        if v is None:
            return self.duty
        self.duty = v
        self.writes += 1
        return None


class ADC:
    ATTN_0DB = 0
    ATTN_11DB = 3
    by_gpio = {}

    def __init__(self, pin, atten=None):
        self.pin = pin
        self.atten = atten
        self.raw = 0  # read_u16
        self.uv = 0  # read_uv
        ADC.by_gpio[pin.gpio] = self

    def read_u16(self):
        return self.raw

    def read_uv(self):
        return self.uv


class I2C:
    last = None

    def __init__(self, id, sda=None, scl=None, freq=400000, timeout=50000):
        self.id = id
        self.sda = sda
        self.scl = scl
        self.freq = freq
        self.regs = {}  # 7-bit address -> bytearray(2): the temperature register
        self.fail = False
        I2C.last = self

    def readfrom_mem_into(self, addr, memaddr, buf):
        if self.fail or addr not in self.regs:
            raise OSError(19)  # ENODEV: no ACK
        r = self.regs[addr]
        buf[0] = r[0]
        buf[1] = r[1]


class WDT:
    last = None

    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout
        self.feeds = 0
        WDT.last = self

    def feed(self):
        self.feeds += 1


class Timer:
    PERIODIC = 1
    ONE_SHOT = 0
    last = None

    def __init__(self, id=-1, mode=1, period=0, callback=None):
        self.id = id
        self.mode = mode
        self.period = period
        self.callback = callback
        Timer.last = self


class UART(io.IOBase):
    """A loopback-free serial port: the script puts host bytes in ``rx`` and
    reads what the firmware wrote from ``tx[:tx_len]``."""

    def __init__(self, id, baudrate=115200, tx=None, rx=None, txbuf=256, rxbuf=256):
        self.id = id
        self.baudrate = baudrate
        self.pins = (tx, rx)  # as the HAL passed them: GPIO numbers or Pin objects
        self.rx = bytearray(256)
        self.rx_len = 0
        self.rx_pos = 0
        self.tx = bytearray(4096)
        self.tx_len = 0
        self.writable = True

    def feed(self, data):
        self.rx[0:len(data)] = data
        self.rx_len = len(data)
        self.rx_pos = 0

    def ioctl(self, req, arg):
        if req == 10:  # MP_STREAM_GET_FILENO: not a file descriptor
            return -1
        if req == 3:  # MP_STREAM_POLL
            ready = 0
            if (arg & 1) and self.rx_pos < self.rx_len:
                ready |= 1
            if (arg & 4) and self.writable:
                ready |= 4
            return ready
        return 0

    def readinto(self, buf, n=-1):
        if self.rx_pos >= self.rx_len:
            return 0
        buf[0] = self.rx[self.rx_pos]
        self.rx_pos += 1
        return 1

    def write(self, buf, off=0, n=-1):
        if n < 0:
            n = len(buf) - off
        room = len(self.tx) - self.tx_len
        if n > room:
            n = room
        for i in range(n):
            self.tx[self.tx_len + i] = buf[off + i]
        self.tx_len += n
        return n


PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
resets = 0


def reset():
    global resets
    resets += 1


def reset_cause():
    return PWRON_RESET


def unique_id():
    return b"\xe6\x60\x58\x38\x83\x2a\x1f\x2c"
