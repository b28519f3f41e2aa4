"""ntc: the table against the B equation, the direct-indexed conversion against
the plain search-and-interpolate it replaced (every raw value), mc_to_adc (the
simulator's inverse) pinned, classify, and the same results in the 32-bit VM."""

import math

from metal.core.drivers import ntc
from metal.core.hal import READ_ERROR

# The table as (raw, m°C) points, copied here so that the references below do
# not share a single array with the module they check.
POINTS = [
    (63944, -40000), (63287, -35000), (62417, -30000), (61288, -25000), (59855, -20000),
    (58079, -15000), (55932, -10000), (53405, -5000), (50511, 0), (47293, 5000),
    (43816, 10000), (40170, 15000), (36454, 20000), (32768, 25000), (29202, 30000),
    (25830, 35000), (22706, 40000), (19860, 45000), (17306, 50000), (15040, 55000),
    (13049, 60000), (11313, 65000), (9807, 70000), (8507, 75000), (7387, 80000),
    (6423, 85000), (5596, 90000), (4885, 95000), (4273, 100000), (3747, 105000),
    (3293, 110000), (2902, 115000), (2563, 120000), (2270, 125000), (2015, 130000),
    (1794, 135000), (1600, 140000), (1431, 145000), (1283, 150000),
]


def ref_adc_to_mc(raw):
    """The conversion as it was written before the direct index: find the
    segment by walking the table, interpolate with a floor division."""
    if raw >= POINTS[0][0]:
        return POINTS[0][1]
    if raw <= POINTS[-1][0]:
        return POINTS[-1][1]
    k = 0
    while POINTS[k + 1][0] >= raw:
        k += 1
    (r0, m0), (r1, m1) = POINTS[k], POINTS[k + 1]
    return m0 + (m1 - m0) * (r0 - raw) // (r0 - r1)


def ref_mc_to_adc(mc):
    """The simulator's inverse as it is today (its results must not change)."""
    if mc <= POINTS[0][1]:
        return POINTS[0][0]
    if mc >= POINTS[-1][1]:
        return POINTS[-1][0]
    i = (mc - POINTS[0][1]) // 5000
    (r0, m0), (r1, m1) = POINTS[i], POINTS[i + 1]
    return r0 - (r0 - r1) * (mc - m0) // 5000


def b_equation_raw(mc):
    """16-bit reading of 10 kΩ/B3950 under a 10 kΩ pull-up at ``mc`` m°C."""
    t = mc / 1000 + 273.15
    r = 10000 * math.exp(3950 * (1 / t - 1 / 298.15))
    return 65535 * r / (r + 10000)


def test_table_follows_the_b_equation():
    for raw, mc in POINTS:
        assert abs(raw - b_equation_raw(mc)) <= 0.5, (raw, mc)  # rounded to the count


def test_direct_index_equals_the_search_for_every_raw_value():
    for raw in range(-70000, 140000):
        assert ntc.adc_to_mc(raw) == ref_adc_to_mc(raw), raw
    for raw in (READ_ERROR, -(1 << 29), (1 << 29), 65535, 65536):
        assert ntc.adc_to_mc(raw) == ref_adc_to_mc(raw), raw


def test_known_points_and_clamps():
    for raw, mc in POINTS:
        assert ntc.adc_to_mc(raw) == mc
    assert ntc.adc_to_mc((32768 + 29202) // 2) == 27500  # halfway between 25 and 30 °C
    assert ntc.adc_to_mc(65534) == -40000  # colder than the table: its end
    assert ntc.adc_to_mc(1000) == 150000
    assert ntc.TABLE_RAW_COLD == 63944 and ntc.TABLE_MC_COLD == -40000
    assert ntc.TABLE_RAW_HOT == 1283 and ntc.TABLE_MC_HOT == 150000


def test_conversion_is_monotonic():
    prev = ntc.adc_to_mc(0)
    for raw in range(1, 65536):
        mc = ntc.adc_to_mc(raw)
        assert mc <= prev, raw  # raw falls as temperature rises
        prev = mc


def test_segment_tables_hold_what_the_inline_conversion_assumes():
    # every segment is longer than a bucket: one compare finds the segment
    assert min(ntc.SEG_DEN) >= 1 << ntc.SEG_SHIFT
    assert len(ntc.SEG_OF) == 65536 >> ntc.SEG_SHIFT
    for b in range(len(ntc.SEG_OF)):
        lo = b << ntc.SEG_SHIFT
        hi = lo + (1 << ntc.SEG_SHIFT) - 1
        if hi <= ntc.TABLE_RAW_HOT or lo >= ntc.TABLE_RAW_COLD:
            continue
        k = ntc.SEG_OF[b]
        for raw in (max(lo, ntc.TABLE_RAW_HOT + 1), min(hi, ntc.TABLE_RAW_COLD - 1)):
            seg = k + 1 if raw <= ntc.SEG_LOW[k] else k
            assert POINTS[seg + 1][0] < raw <= POINTS[seg][0], (b, raw)
    # every intermediate of (SEG_NUM[k] - raw * STEP_MC) // SEG_DEN[k] is a small int
    # on a 32-bit VM
    for num in ntc.SEG_NUM:
        assert abs(num) + 65535 * ntc.STEP_MC < 1 << 30


def test_mc_to_adc_is_unchanged():
    for mc in range(-60000, 170000):
        assert ntc.mc_to_adc(mc) == ref_mc_to_adc(mc), mc
    assert ntc.mc_to_adc(25000) == 32768
    assert ntc.mc_to_adc(-50000) == 63944 and ntc.mc_to_adc(200000) == 1283


def test_round_trip_through_the_simulator_inverse():
    for mc in range(-40000, 150001, 37):
        assert abs(ntc.adc_to_mc(ntc.mc_to_adc(mc)) - mc) <= 100, mc


def test_classify():
    assert ntc.classify(ntc.RAW_OPEN) == ntc.NTC_OPEN
    assert ntc.classify(65535) == ntc.NTC_OPEN
    assert ntc.classify(ntc.RAW_OPEN - 1) == ntc.NTC_OK
    assert ntc.classify(ntc.RAW_SHORT + 1) == ntc.NTC_OK
    assert ntc.classify(ntc.RAW_SHORT) == ntc.NTC_SHORT
    assert ntc.classify(0) == ntc.NTC_SHORT
    # the table lies inside the OK band, so clamping only covers sane readings
    assert ntc.RAW_SHORT < ntc.TABLE_RAW_HOT < ntc.TABLE_RAW_COLD < ntc.RAW_OPEN


VM_SCRIPT = '''
from metal.core.drivers import ntc
a = 0
b = 0
for raw in range(0, 65536):
    a = (a * 31 + ntc.adc_to_mc(raw)) & 0x3FFFFF
for mc in range(-45000, 155000, 7):
    b = (b * 31 + ntc.mc_to_adc(mc)) & 0x3FFFFF
print("SUMS", a, b)
'''


def test_same_results_in_the_micropython_vms(mpvm):
    # The 32-bit VM turns any intermediate >= 2**30 into a heap long and floors
    # its own way: the checksums over every raw value must match CPython's.
    a = 0
    b = 0
    for raw in range(0, 65536):
        a = (a * 31 + ref_adc_to_mc(raw)) & 0x3FFFFF
    for mc in range(-45000, 155000, 7):
        b = (b * 31 + ref_mc_to_adc(mc)) & 0x3FFFFF
    r = mpvm.run(VM_SCRIPT, timeout=120).check()
    assert r.stdout.split() == ["SUMS", str(a), str(b)]
