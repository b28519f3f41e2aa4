"""Thermistor (NTC) conversion by an integer lookup table.

Reference part: 10 kΩ at 25 °C, B = 3950, with a 10 kΩ pull-up to the ADC
reference and the thermistor to ground, read by a 16-bit ADC (0..65535).
The table holds (raw, m°C) pairs every 5 °C from -40 °C to 150 °C, computed
once from the B equation (see tests/test_ntc.py for the check); between points
the conversion interpolates linearly in integers, so it neither allocates nor
uses floats. Raw falls as temperature rises.
"""

from array import array

from metal.core.compat import const

# Readings outside these bounds mean a broken circuit rather than a temperature:
# near full scale the thermistor is open (no current), near zero it is shorted.
RAW_OPEN = const(65000)
RAW_SHORT = const(200)

# Status codes returned by classify(); they match the sensor states on the wire.
NTC_OK = const(0)
NTC_OPEN = const(2)
NTC_SHORT = const(3)

# (raw, m°C) pairs, raw descending.
_TABLE = array("i", [
    63944, -40000, 63287, -35000, 62417, -30000, 61288, -25000, 59855, -20000, 58079, -15000,
    55932, -10000, 53405, -5000, 50511, 0, 47293, 5000, 43816, 10000, 40170, 15000,
    36454, 20000, 32768, 25000, 29202, 30000, 25830, 35000, 22706, 40000, 19860, 45000,
    17306, 50000, 15040, 55000, 13049, 60000, 11313, 65000, 9807, 70000, 8507, 75000,
    7387, 80000, 6423, 85000, 5596, 90000, 4885, 95000, 4273, 100000, 3747, 105000,
    3293, 110000, 2902, 115000, 2563, 120000, 2270, 125000, 2015, 130000, 1794, 135000,
    1600, 140000, 1431, 145000, 1283, 150000,
])
_N = const(39)


def classify(raw):
    if raw >= RAW_OPEN:
        return NTC_OPEN
    if raw <= RAW_SHORT:
        return NTC_SHORT
    return NTC_OK


def _make_index():
    # _INDEX[b] = the first segment (pair index k: t[2k] >= raw > t[2k+2]) that
    # can hold a raw reading in [b * 256, b * 256 + 255], i.e. the segment of the
    # bucket's largest value. Start-up only.
    t = _TABLE
    idx = bytearray(256)
    for b in range(256):
        top = b * 256 + 255
        k = 0
        while k < _N - 2 and t[2 * k + 2] >= top:
            k += 1
        idx[b] = k
    return idx


_INDEX = _make_index()


def adc_to_mc(raw):
    """m°C for a raw reading, clamped to the table's ends."""
    t = _TABLE
    if raw >= t[0]:
        return t[1]
    if raw <= t[(_N - 1) * 2]:
        return t[(_N - 1) * 2 + 1]
    # Find the segment k with t[2k] >= raw > t[2k+2]. The top byte of raw picks a
    # starting segment that is never past the right one; at most two segment
    # ends fall inside one 256-count bucket, so the walk is 0..2 steps (this
    # runs for every NTC sensor on every tick; a binary search took 5..6).
    k = _INDEX[raw >> 8]
    while t[k * 2 + 2] >= raw:
        k += 1
    r0 = t[k * 2]
    m0 = t[k * 2 + 1]
    r1 = t[k * 2 + 2]
    m1 = t[k * 2 + 3]
    # (m1-m0) is 5000 and (r0-raw) < 2**16: the product stays below 2**30.
    return m0 + (m1 - m0) * (r0 - raw) // (r0 - r1)


def mc_to_adc(mc):
    """The raw reading a thermistor at ``mc`` gives (used by the simulator)."""
    t = _TABLE
    if mc <= t[1]:
        return t[0]
    last = (_N - 1) * 2
    if mc >= t[last + 1]:
        return t[last]
    i = (mc - t[1]) // 5000
    r0 = t[i * 2]
    m0 = t[i * 2 + 1]
    r1 = t[i * 2 + 2]
    return r0 - (r0 - r1) * (mc - m0) // 5000
