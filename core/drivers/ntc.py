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


# The table split into columns, plus each segment's spans, for the per-tick
# conversions (every NTC sensor, every tick): indexing these is cheaper than
# the pair arithmetic on _TABLE. Start-up only.
_RAW = array("i", [_TABLE[2 * k] for k in range(_N)])  # raw of point k, descending
_MC = array("i", [_TABLE[2 * k + 1] for k in range(_N)])  # m°C of point k, ascending
_DRAW = array("i", [_RAW[k] - _RAW[k + 1] for k in range(_N - 1)])  # > 0
_DMC = array("i", [_MC[k + 1] - _MC[k] for k in range(_N - 1)])


def _make_index():
    # _INDEX[b] = the first segment (k: _RAW[k] >= raw > _RAW[k + 1]) that can
    # hold a raw reading in [b * 256, b * 256 + 255], i.e. the segment of the
    # bucket's largest value. Start-up only.
    idx = bytearray(256)
    for b in range(256):
        top = b * 256 + 255
        k = 0
        while k < _N - 2 and _RAW[k + 1] >= top:
            k += 1
        idx[b] = k
    return idx


_INDEX = _make_index()


def adc_to_mc(raw):
    """m°C for a raw reading, clamped to the table's ends."""
    r = _RAW
    if raw >= r[0]:
        return _MC[0]
    if raw <= r[_N - 1]:
        return _MC[_N - 1]
    # Find the segment k with _RAW[k] >= raw > _RAW[k + 1]. The top byte of raw
    # picks a starting segment that is never past the right one; at most two
    # segment ends fall inside one 256-count bucket, so the walk is 0..2 steps
    # (a binary search took 5..6).
    k = _INDEX[raw >> 8]
    while r[k + 1] >= raw:
        k += 1
    # _DMC is 5000 and (r[k] - raw) < 2**16: the product stays below 2**30.
    return _MC[k] + _DMC[k] * (r[k] - raw) // _DRAW[k]


def mc_to_adc(mc):
    """The raw reading a thermistor at ``mc`` gives (used by the simulator)."""
    m = _MC
    if mc <= m[0]:
        return _RAW[0]
    if mc >= m[_N - 1]:
        return _RAW[_N - 1]
    i = (mc - m[0]) // 5000
    return _RAW[i] - _DRAW[i] * (mc - m[i]) // 5000
