"""Thermistor (NTC) conversion by an integer lookup table.

Reference part: 10 kΩ at 25 °C, B = 3950, with a 10 kΩ pull-up to the ADC
reference and the thermistor to ground, read by a 16-bit ADC (0..65535).
The table holds (raw, m°C) pairs every 5 °C from -40 °C to 150 °C, computed
once from the B equation (tests/drivers/test_ntc.py checks it against the
equation); between points the conversion interpolates linearly in integers,
so it neither allocates nor uses floats. Raw falls as temperature rises.

The per-tick conversion (SensorBank.step writes it out inline) finds the
segment without a search: the raw value's top bits index ``SEG_OF``, which
names the segment of that 128-count bucket's largest value; every segment is
longer than a bucket, so the reading lies in that segment or the next one
(one compare). Inside a segment one division interpolates::

    raw in (TABLE_RAW_HOT, TABLE_RAW_COLD)      (1283 .. 63944 exclusive)
      k  = SEG_OF[raw >> SEG_SHIFT]
      k += 1 if raw <= SEG_LOW[k]                (crossed into the next one)
      mc = (SEG_NUM[k] - raw * STEP_MC) // SEG_DEN[k]

``SEG_NUM[k] = mc_k * draw_k + STEP_MC * raw_k`` folds the segment's start
into the numerator: ``mc_k + STEP_MC * (raw_k - raw) // draw_k`` is the same
floor, because ``mc_k * draw_k`` is a multiple of the divisor. So it returns
exactly what the textbook search-and-interpolate did, for every raw value.
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


# -- the per-tick conversion tables (start-up only; see the module docstring) --

SEG_SHIFT = const(7)  # bucket = raw >> 7: 128 counts, shorter than every segment
STEP_MC = const(5000)  # m°C between table points

TABLE_RAW_COLD = _RAW[0]  # at or above: the table's coldest point (clamped)
TABLE_RAW_HOT = _RAW[_N - 1]  # at or below: the table's hottest point (clamped)
TABLE_MC_COLD = _MC[0]
TABLE_MC_HOT = _MC[_N - 1]

SEG_LOW = array("i", [_RAW[k + 1] for k in range(_N - 1)])  # segment k: SEG_LOW[k] < raw <= _RAW[k]
SEG_DEN = _DRAW
SEG_NUM = array("i", [_MC[k] * _DRAW[k] + STEP_MC * _RAW[k] for k in range(_N - 1)])


def _make_seg_of():
    # SEG_OF[b] = the segment of the largest raw value of bucket b (the one with
    # the smallest index among those the bucket touches), clamped to the table:
    # the smallest k with _RAW[k + 1] < top, at most _N - 2. Raw falls as k
    # grows, so one walk down from the hot end fills every bucket.
    seg_of = bytearray(65536 >> SEG_SHIFT)
    k = _N - 2
    for b in range(len(seg_of)):
        top = (b << SEG_SHIFT) + (1 << SEG_SHIFT) - 1
        while k > 0 and _RAW[k] < top:
            k -= 1
        seg_of[b] = k
    return seg_of


def _check_tables():
    # What the one-compare segment pick and the folded numerator rely on. The
    # table is fixed, so this only fails when someone edits it: at import, on
    # the bench, not in a tick.
    for k in range(_N - 1):
        if _DMC[k] != STEP_MC:
            raise ValueError("ntc: table points must be STEP_MC apart")
        if _DRAW[k] < (1 << SEG_SHIFT):
            raise ValueError("ntc: a segment is shorter than a SEG_OF bucket")
        if abs(SEG_NUM[k]) + 65536 * STEP_MC > 0x3FFFFFFF:  # the largest small int
            raise ValueError("ntc: segment numerator would leave the small-int range")
    if not RAW_SHORT < TABLE_RAW_HOT < TABLE_RAW_COLD < RAW_OPEN:
        raise ValueError("ntc: the table must lie between RAW_SHORT and RAW_OPEN")


SEG_OF = _make_seg_of()
_check_tables()


def adc_to_mc(raw):
    """m°C for a raw reading, clamped to the table's ends."""
    if raw >= TABLE_RAW_COLD:
        return TABLE_MC_COLD
    if raw <= TABLE_RAW_HOT:
        return TABLE_MC_HOT
    k = SEG_OF[raw >> SEG_SHIFT]
    if raw <= SEG_LOW[k]:
        k += 1
    return (SEG_NUM[k] - raw * STEP_MC) // SEG_DEN[k]


def mc_to_adc(mc):
    """The raw reading a thermistor at ``mc`` gives (used by the simulator)."""
    m = _MC
    if mc <= m[0]:
        return _RAW[0]
    if mc >= m[_N - 1]:
        return _RAW[_N - 1]
    i = (mc - m[0]) // 5000
    return _RAW[i] - _DRAW[i] * (mc - m[i]) // 5000
