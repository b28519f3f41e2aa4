"""The signal board: one flat int array every driver publishes into.

Interlock rows and (later) policy rows compare a signal against a threshold;
keeping all signals in one ``array('i')`` with fixed offsets makes a row a
single index lookup on the tick path instead of a dispatch on the source.

Layout for S sensors, F fans, R rails (offsets computed at start-up)::

    [temp m°C × S][sensor state × S][fan rpm × F][fan state × F]
    [fan stalled × F][rail state × R][rail fault × R][globals × G_COUNT]

``fan stalled`` is 1 exactly while the fan's state is FAN_STALLED: the state
codes (ok, stalled, spin-up, off) have no order a single comparison could
isolate a stall with.

A sensor with no valid reading publishes ``TEMP_INVALID`` as its temperature
and a non-zero state, so a ``>=`` comparison never trips on garbage; the
sensor-fault signal and the zone failsafe handle that case instead.
"""

from array import array

from metal.core.compat import const

# signal kinds, used by board configs in Interlock(signal=(kind, index))
SIG_TEMP = const(1)
SIG_SENSOR_STATE = const(2)
SIG_FAN_RPM = const(3)
SIG_FAN_STATE = const(4)
SIG_RAIL_STATE = const(5)
SIG_RAIL_FAULT = const(6)
SIG_GLOBAL = const(7)
SIG_FAN_STALLED = const(8)

# global signals (index with SIG_GLOBAL)
G_ESTOP = const(0)  # 1 while the e-stop input is asserted
G_TAMPER = const(1)  # 1 while the tamper switch is open
G_DOOR_OPEN = const(2)
G_HOST_LOST = const(3)
G_LOOP_FAULT = const(4)
G_MAX_TEMP = const(5)  # hottest valid sensor, m°C
G_COUNT = const(6)

TEMP_INVALID = const(-300000)  # below absolute zero: no comparison mistakes it for heat


class Signals:
    def __init__(self, n_sensors, n_fans, n_rails):
        self.n_sensors = n_sensors
        self.n_fans = n_fans
        self.n_rails = n_rails
        self.temp0 = 0
        self.sensor_state0 = n_sensors
        self.fan_rpm0 = 2 * n_sensors
        self.fan_state0 = self.fan_rpm0 + n_fans
        self.fan_stalled0 = self.fan_state0 + n_fans
        self.rail_state0 = self.fan_stalled0 + n_fans
        self.rail_fault0 = self.rail_state0 + n_rails
        self.global0 = self.rail_fault0 + n_rails
        self.v = array("i", [0] * (self.global0 + G_COUNT))
        for i in range(n_sensors):
            self.v[i] = TEMP_INVALID

    def index(self, kind, i):
        """Flat index of signal ``i`` of ``kind``; ValueError when out of range
        (start-up only: board configs are resolved once)."""
        if kind == SIG_TEMP:
            base, n = self.temp0, self.n_sensors
        elif kind == SIG_SENSOR_STATE:
            base, n = self.sensor_state0, self.n_sensors
        elif kind == SIG_FAN_RPM:
            base, n = self.fan_rpm0, self.n_fans
        elif kind == SIG_FAN_STATE:
            base, n = self.fan_state0, self.n_fans
        elif kind == SIG_FAN_STALLED:
            base, n = self.fan_stalled0, self.n_fans
        elif kind == SIG_RAIL_STATE:
            base, n = self.rail_state0, self.n_rails
        elif kind == SIG_RAIL_FAULT:
            base, n = self.rail_fault0, self.n_rails
        elif kind == SIG_GLOBAL:
            base, n = self.global0, G_COUNT
        else:
            raise ValueError("unknown signal kind %d" % kind)
        if not 0 <= i < n:
            raise ValueError("signal index %d out of range for kind %d" % (i, kind))
        return base + i
