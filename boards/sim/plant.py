"""The simulated hardware: thermal masses, fans, power rails, switches.

``Plant(config)`` builds a physical model for a ``BoardConfig`` and advances
it with ``step(dt_ms)``; ``SimHal`` calls that once per tick and copies the
readings (see "What the HAL reads" below) into its input image. Everything is a scaled integer (m°C,
mV, mA, mW, µJ, milli-RPM) and every intermediate stays below 2**30, so a
step allocates nothing on either MicroPython VM, and the model is exactly
reproducible: the same inputs give the same numbers on every runtime.

Units and ranges that keep the arithmetic small:

    temperature   m°C, zones clamped to [-55 °C, 250 °C]
    heat flow     mW;  energy per sub-step µJ (mW × ms)
    heat capacity µJ per m°C (numerically J/°C × 1000)
    conductance   mW per °C (numerically µW per m°C), at most 3000 per zone
    fan speed     milli-RPM internally, RPM outside
    sub-step      at most 10 ms (a larger dt is split)

Thermal zone (one per config zone), integrated with an energy accumulator so
that integer truncation never stalls the temperature short of its steady
state::

    heat in   = sum of rail power (V × I) of the rails that heat this zone
    heat out  = (g_passive + g_fans × airflow) × (T - ambient)
    airflow   = mean over the zone's fans of rpm / max_rpm  (per-mille)
    C × dT/dt = heat in - heat out

Steady state is ``T = ambient + P / g``. The default physics (``Physics``)
is tuned for the sim board at 25 °C ambient with every rail on:

    zone    heat   C (J/°C)  g fans off / 50 % / 100 %   T at 0 / 50 % / 100 %
    cpu     20 W   60        100 / 571 / 1042 mW/°C       225 / 60 / 44 °C
    memory   9 W   40         60 / 450 /  840             175 / 45 / 36 °C
    io      ~16 W  80        100 / 800 / 1500             185 / 45 / 36 °C

With the CPU fans stalled the CPU zone climbs from 60 °C past 95 °C in
about two and a half minutes.

Rail (one per config rail)::

               enable, parent good           elapsed reaches t90 + pg_delay
      +-----+ --------------------> +------+ -----------------------------> +----+
      | OFF |                       | RAMP |                                | PG |
      +-----+ <-------------------- +------+ <----------------------------- +----+
         ^     disable or parent      short: held at 5 % of nominal until     |
         |     lost (V decays,        cleared, then it ramps again            |
         |     tau 20 ms)                                                     |
         +--------------------------------------------------------------------+
                 disable or parent lost: pg drops at once, V decays

    soft start  V(elapsed) = nominal × elapsed / ramp_ms, never below the
                voltage still on the rail
    t90         first ms at which V >= 90 % of nominal ("within 10 %")
    power-good  asserted pg_delay_ms after t90; a glitch fault masks it
    current     load_ma × V / nominal (a resistive load); a short draws
                short_ma at 5 % of nominal voltage and never reaches PG
    parent good the parent's voltage is within 10 % of its nominal

Each rail reports only its own load; an upstream rail's current does not
include its children, so each overcurrent limit watches one load.

Fans: speed follows the commanded duty as a first-order lag toward
``duty × max_rpm / 1000`` (spin-up tau 1 s, coast-down tau 2 s) and emits
``pulses_per_rev`` tachometer pulses per revolution, with the fraction of a
pulse carried in an integer accumulator. A stalled fan stops at once and
emits nothing. In the simulator the fans spin whatever the fan rail does
(as if fed from standby power); the fan rail only reports their draw. That
keeps fan and thermal behaviour independent of power sequencing.

Digital lines: outputs hold what was written; inputs hold their pull level
(pull-up 1, otherwise 0) until a test or a fault sets them. The lock-sense
input follows the lock actuator output once the actuator has held a new
level for ``lock_travel_ms`` (100 ms).

Faults (``inject(kind, target, value)``, kinds from ``metal.core.proto``)
return R_OK, R_UNKNOWN_TARGET or R_INVALID_ARGUMENT:

    FAULT_SENSOR_STUCK  sensor `target` reads `value` m°C (-100 °C..200 °C)
    FAULT_SENSOR_OPEN   sensor `target` open circuit (NTC full scale, I2C NAK)
    FAULT_SENSOR_SHORT  sensor `target` shorted (NTC zero, I2C NAK)
    FAULT_FAN_STALL     fan `target` locked rotor: 0 RPM, no pulses
    FAULT_RAIL_SHORT    rail `target`: short_ma, voltage collapse, pg lost
    FAULT_PG_GLITCH     rail `target` power-good masked for `value` ms (1..60000)
    FAULT_TAMPER        value 1 opens the tamper switch, 0 closes it  (target 0 or -1)
    FAULT_ESTOP         value 1 presses the e-stop, 0 releases it     (target 0 or -1)
    FAULT_DOOR          value 1 opens the door, 0 closes it           (target 0 or -1)
    FAULT_CLEAR         target -1: clear every fault above and put the
                        security inputs back to closed/released;
                        target >= 0: clear the fault of kind `value` on that
                        target (any sensor kind clears the sensor; for
                        tamper/e-stop/door the target is 0); value 0 with a
                        target >= 0 is R_INVALID_ARGUMENT (ambiguous table).

Optional sensor noise: ``set_noise(amplitude_mc, seed)`` adds a uniform
integer in [-amplitude, +amplitude] to every sensor, redrawn each sub-step
from a 16-bit xorshift generator (intermediates below 2**24). Off by default.

What the HAL reads: the plant keeps every input the way the part reports
it, by channel, in the arrays and masks that ``SimHal`` hands the drivers
as its input image::

    adc[ch]       NTC on ADC channel ch: ntc.mc_to_adc(m°C); open 65535
                  (full scale), short 0
    i2c_temp[ch]  I2C sensor on channel ch, the 16-bit register 0..0xFFFF
                  (two's complement: 0xFF80 is -1 °C, the reader
                  sign-extends); open or short: READ_ERROR (no answer)
                    TMP117  m°C × 16 // 125 (7.8125 m°C per LSB, = ×10000/78125
                            without the large intermediate), floored,
                            clamped to -55..150 °C
                    LM75    (m°C // 125) << 5 (11 bits, 0.125 °C per LSB,
                            left justified: 1/256 °C per register LSB),
                            clamped to -55..125 °C
    mv[ch], ma[ch]  voltage and current of the rail on channel ch
    pg_mask       bit ch = power-good of the rail on ch, glitch masking applied
    din_mask      bit ch = d_level[ch], for the digital channels 0..29
    (a channel the config does not use: READ_ERROR, mask bit 0; a channel
    the config names twice belongs to the later sensor or rail)

The arrays change only inside ``step`` and ``publish()``, i.e. inside
``SimHal.sample``: whatever changes between two samples (a fault, a clear,
an enable, ``set_zone_temp``, ``set_noise(0)``) flags the sensor or rail
in ``s_dirty``/``r_dirty`` and ``publish()`` (the end of ``step``, or
``sample`` itself when no time passed) recomputes those readings from the
state at that moment. So the image is a snapshot of the tick's start, and
a fault injected between ticks (or mid-tick by OP_SIM_FAULT) shows from the
next tick on. ``step`` writes the readings it changes itself (a zone's
sensors when the zone's temperature or the noise moved, the fan supply's
current when the fans moved). The two masks are kept current by every
change and copied by ``sample``. ``reading(i)`` recomputes sensor i's
reading from scratch (tests compare). Change the world through the methods
(``set_input``, ``set_output``, ``set_zone_temp``, ``set_noise``,
``set_rail_load``, ``set_rail_enable``, ``inject``), not by writing the
state arrays: the flags and masks follow the methods only.

Cost: ``step`` runs in every sim tick, so it does a whole sub-step inline
and skips whatever provably cannot move (each skip leaves exactly the state
the full computation would):

* rails: ``r_active`` holds the rails that may move. A rail leaves it in a
  sub-step where it is settled, fully on (nominal voltage, soft start done,
  no short, no glitch, parent good: only its current follows its load) or
  fully off (disabled or without a good parent, and discharged: voltage,
  soft-start position and current 0), since stepping it again would store
  the same values. ``_step_rail``, through which every change from outside
  passes, puts the rail and its children back; a rail stepped in a
  sub-step puts its children in (they may lose or regain their supply).
  With ``r_active`` empty the rail loop is skipped; the fan supply's
  current, the one that still moves (its load follows the fans), is then
  set by the resistive formula of ``_step_rail`` (settled: no short).
* zone heat (the rails' V × I) is summed only after a heating rail changed
  (``heat_dirty``).
* fans: a fan at its target only counts pulses; one at rest with target 0
  (duty 0, or stalled: a stall forces the target to 0) does nothing. Its
  pulse increment (whole RPM × pulses per rev) is updated only when its
  whole RPM changes. The fan supply's load (base + each fan's full-speed
  current × whole RPM / max RPM) is summed only when a whole RPM changed
  and the rail has voltage or a rail moves in the sub-step; the pulse
  accumulator holds pulses × 60000 and folds into ``f_pulses`` only when
  taken or above 2**29.
* thermal: a zone at ambient with no heat flowing in keeps its accumulator
  and temperature (its energy balance is exactly zero); the airflow of an
  active zone is summed over its own fans.
* sensors: a zone's sensors get new readings only when its temperature
  moved or with noise on (``mc_to_adc`` is the costly part); a faulted
  sensor (flagged in its packed entry) keeps the reading ``publish`` gave.
* lock: only while the actuator and the sense line may disagree
  (``lock_check``, set when either line is written).
"""

from array import array

from metal.core.compat import const
from metal.core.config import DIR_OUT, PULL_UP, SENSOR_LM75, SENSOR_NTC, SENSOR_TMP117
from metal.core.drivers.ntc import mc_to_adc
from metal.core.hal import MAX_DIGITAL_CH, READ_ERROR
from metal.core.proto import (
    FAULT_CLEAR,
    FAULT_DOOR,
    FAULT_ESTOP,
    FAULT_FAN_STALL,
    FAULT_PG_GLITCH,
    FAULT_RAIL_SHORT,
    FAULT_SENSOR_OPEN,
    FAULT_SENSOR_SHORT,
    FAULT_SENSOR_STUCK,
    FAULT_TAMPER,
    R_INVALID_ARGUMENT,
    R_OK,
    R_UNKNOWN_TARGET,
)

MAX_SUBSTEP_MS = const(10)
ZONE_MIN_MC = const(-55000)
ZONE_MAX_MC = const(250000)
AMBIENT_MIN_MC = const(-40000)
AMBIENT_MAX_MC = const(60000)
STUCK_MIN_MC = const(-100000)
STUCK_MAX_MC = const(200000)
MAX_CONDUCTANCE = const(3000)  # mW/°C; keeps g × ΔT below 2**30
MAX_GLITCH_MS = const(60000)
MAX_HEAT_MW = const(50000000)
MAX_NOISE_MC = const(5000)
_MASK30 = const(0x3FFFFFFF)
_MS_PER_MIN = const(60000)
_PULSE_ACC_FOLD = const(1 << 29)  # f_pulse_acc folds into f_pulses from here
# sensor kind codes packed into s_entry (the config's SENSOR_* are globals of
# another module; these are compile-time constants here)
_K_OTHER = const(0)
_K_NTC = const(1)
_K_TMP117 = const(2)
_K_LM75 = const(3)
_K_FAULTED = const(4)  # flag: the sensor has a fault; step leaves its reading alone

ADC_OPEN = const(65535)
ADC_SHORT = const(0)
TMP117_MIN_MC = const(-55000)
TMP117_MAX_MC = const(150000)
LM75_MIN_MC = const(-55000)
LM75_MAX_MC = const(125000)


def tmp117_raw(mc):
    """TMP117 temperature register for ``mc`` m°C (0..0xFFFF)."""
    if mc < TMP117_MIN_MC:
        mc = TMP117_MIN_MC
    elif mc > TMP117_MAX_MC:
        mc = TMP117_MAX_MC
    return (mc * 16 // 125) & 0xFFFF


def lm75_raw(mc):
    """LM75 (11-bit) temperature register for ``mc`` m°C (0..0xFFFF)."""
    if mc < LM75_MIN_MC:
        mc = LM75_MIN_MC
    elif mc > LM75_MAX_MC:
        mc = LM75_MAX_MC
    return ((mc // 125) << 5) & 0xFFFF


def _kind_code(kind):
    if kind == SENSOR_NTC:
        return _K_NTC
    if kind == SENSOR_TMP117:
        return _K_TMP117
    if kind == SENSOR_LM75:
        return _K_LM75
    return _K_OTHER


def sensor_raw(kind, mc):
    """What a working sensor of ``kind`` reports at ``mc`` m°C."""
    if kind == SENSOR_NTC:
        return mc_to_adc(mc)
    if kind == SENSOR_TMP117:
        return tmp117_raw(mc)
    if kind == SENSOR_LM75:
        return lm75_raw(mc)
    return READ_ERROR


class Physics:
    """Tuning of the model, looked up by the names in the BoardConfig.

    Only read by ``Plant.__init__``; anything a config names that is not
    listed here gets the ``*_default`` entry, so the plant also runs a board
    config other than the sim board's (tests build small ones).
    """

    def __init__(self):
        self.ambient_mc = 25000
        # zone: (heat capacity µJ/m°C, passive conductance mW/°C,
        #        extra conductance at full airflow mW/°C)
        self.zones = {
            "cpu": (60000, 100, 942),
            "memory": (40000, 60, 780),
            "io": (80000, 100, 1400),
        }
        self.zone_default = (60000, 100, 1000)
        # rail: (load mA at nominal voltage, name of the zone it heats or "",
        #        soft-start ramp ms, power-good delay ms after 90 %)
        self.rails = {
            "p12v_main": (500, "io", 10, 5),
            "p5v": (1000, "io", 5, 3),
            "p3v3": (1500, "io", 5, 3),
            "p1v8": (5000, "memory", 4, 2),
            "p1v0_core": (20000, "cpu", 8, 4),
            "p12v_fans": (100, "", 10, 5),
        }
        self.rail_default = (500, "", 10, 5)
        # The rail whose current is the fans' draw (its load is the base
        # load above plus every fan's share at its current speed).
        self.fan_supply = "p12v_fans"
        # fan: current at full speed on the fan supply, mA
        self.fans = {"cpu_fan0": 600, "cpu_fan1": 600, "mem_fan": 300, "io_fan": 300}
        self.fan_default_ma = 300
        self.fan_tau_up_ms = 1000
        self.fan_tau_down_ms = 2000
        # sensor: fixed offset from its zone's temperature, m°C (hot spots)
        self.sensors = {
            "cpu0_die": 2000,
            "cpu1_die": 1000,
            "cpu_vrm": 4000,
            "dimm_a": 1000,
            "dimm_b": 0,
            "io_hub": 2000,
            "psu_hot": 3000,
            "io_board": 0,
        }
        self.rail_decay_ms = 20
        self.lock_travel_ms = 100


def _ramp_t90(nominal, ramp_ms):
    """First whole ms of the soft start at which V >= 90 % of nominal."""
    good = nominal - nominal // 10
    k = 0
    while nominal * k // ramp_ms < good:
        k += 1
    return k


class Plant:
    def __init__(self, config, physics=None):
        ph = physics or Physics()
        self.config = config
        self.elapsed_ms = 0  # simulated time, mod 2**30
        self.ambient_mc = ph.ambient_mc

        # -- zones -------------------------------------------------------------
        nz = len(config.zones)
        self.n_zones = nz
        self.z_mc = array("i", [ph.ambient_mc] * nz)
        self.z_acc = array("i", [0] * nz)  # µJ not yet turned into a whole m°C
        self.z_cap = array("i", [0] * nz)
        self.z_g0 = array("i", [0] * nz)
        self.z_gfan = array("i", [0] * nz)
        self.z_heat_mw = array("i", [0] * nz)  # heat flowing in, from the rails' last change
        self.z_airflow = array("i", [0] * nz)  # per-mille, as of the zone's last update
        self.z_nfans = array("i", [0] * nz)
        zone_index = {}
        for z in range(nz):
            name = config.zones[z].name
            zone_index[name] = z
            cap, g0, gfan = ph.zones.get(name, ph.zone_default)
            if cap <= 0 or g0 <= 0 or gfan < 0 or g0 + gfan > MAX_CONDUCTANCE:
                raise ValueError("plant: zone " + name + " physics out of range")
            self.z_cap[z] = cap
            self.z_g0[z] = g0
            self.z_gfan[z] = gfan

        # -- sensors -----------------------------------------------------------
        ns = len(config.sensors)
        self.n_sensors = ns
        self.s_zone = array("i", [0] * ns)
        self.s_offset = array("i", [0] * ns)
        self.s_noise = array("i", [0] * ns)
        self.s_bias = array("i", [0] * ns)  # s_offset + s_noise: sensor m°C - zone m°C
        self.s_fault = bytearray(ns)  # 0 or FAULT_SENSOR_STUCK/OPEN/SHORT
        self.s_stuck_mc = array("i", [0] * ns)
        self.s_kind = bytearray(ns)
        self.s_dirty = 0  # bit i: sensor i changed outside step; publish() rereads it
        n_adc = 0
        n_i2c = 0
        for i in range(ns):
            s = config.sensors[i]
            self.s_zone[i] = s.zone
            self.s_offset[i] = ph.sensors.get(s.name, 0)
            self.s_bias[i] = self.s_offset[i]
            self.s_kind[i] = s.kind
            if s.kind == SENSOR_NTC:
                n_adc = max(n_adc, s.ch + 1)
            else:
                n_i2c = max(n_i2c, s.ch + 1)
        # the readings, by channel (see "What the HAL reads")
        self.adc = array("i", [READ_ERROR] * n_adc)
        self.i2c_temp = array("i", [READ_ERROR] * n_i2c)
        # Where sensor i's reading goes and how, packed as
        # ch << 8 | i << 3 | faulted flag | kind code so that the sub-step gets
        # it all from one array read; -1 for a sensor whose channel a later
        # sensor of the config claims (the last one wins, as on a bus with two
        # parts at one address).
        self.s_entry = array("i", [-1] * ns)
        for i in range(ns):
            s = config.sensors[i]
            ntc = s.kind == SENSOR_NTC
            for k in range(i + 1, ns):
                if (config.sensors[k].kind == SENSOR_NTC) == ntc and config.sensors[k].ch == s.ch:
                    break
            else:
                self.s_entry[i] = (s.ch << 8) | (i << 3) | _kind_code(s.kind)
        self.noise_mc = 0
        self.rng = 1  # xorshift16 state, never 0
        # the entries of each zone's sensors, for the sub-step
        self.z_sensors = [array("i", [self.s_entry[i] for i in range(ns)
                                      if self.s_zone[i] == z and self.s_entry[i] >= 0])
                          for z in range(nz)]

        # -- fans --------------------------------------------------------------
        nf = len(config.fans)
        self.n_fans = nf
        self.f_zone = array("i", [0] * nf)
        self.f_max_rpm = array("i", [0] * nf)
        self.f_ppr = array("i", [0] * nf)
        self.f_full_ma = array("i", [0] * nf)
        self.f_duty = array("i", [0] * nf)  # per-mille, as last commanded
        self.f_target = array("i", [0] * nf)  # milli-RPM: duty × max_rpm, 0 while stalled
        self.f_rpm_m = array("i", [0] * nf)  # milli-RPM
        self.f_pulse_inc = array("i", [0] * nf)  # (rpm // 1000) × ppr: f_pulse_acc per ms
        # Tach pulses × 60000 (a pulse per 60000 units: rpm × ppr per ms) not
        # yet taken; folded into f_pulses (whole pulses) only when it grows
        # large or when the pulses are taken.
        self.f_pulse_acc = array("i", [0] * nf)
        self.f_pulses = array("i", [0] * nf)
        self.f_stalled = bytearray(nf)
        for i in range(nf):
            f = config.fans[i]
            self.f_zone[i] = f.zone
            self.f_max_rpm[i] = f.max_rpm
            self.f_ppr[i] = f.pulses_per_rev
            self.f_full_ma[i] = ph.fans.get(f.name, ph.fan_default_ma)
            self.z_nfans[f.zone] += 1
        # the fans of each zone, for its airflow
        self.z_fans = [array("i", [i for i in range(nf) if self.f_zone[i] == z])
                       for z in range(nz)]
        if ph.fan_tau_up_ms < MAX_SUBSTEP_MS or ph.fan_tau_down_ms < MAX_SUBSTEP_MS:
            raise ValueError("plant: fan time constants must be >= one sub-step")
        self.fan_tau_up = ph.fan_tau_up_ms
        self.fan_tau_down = ph.fan_tau_down_ms

        # -- rails ---------------------------------------------------------------
        nr = len(config.rails)
        self.n_rails = nr
        self.r_nom = array("i", [0] * nr)
        self.r_good_mv = array("i", [0] * nr)  # 90 % of nominal
        self.r_parent = array("i", [0] * nr)
        self.r_children = array("i", [0] * nr)  # bit k: rail k's parent is this rail
        self.r_ramp = array("i", [0] * nr)
        self.r_t90 = array("i", [0] * nr)
        self.r_pg_at = array("i", [0] * nr)  # elapsed ms at which pg asserts
        self.r_cap = array("i", [0] * nr)  # elapsed stops counting here
        self.r_load = array("i", [0] * nr)  # mA at nominal voltage
        self.r_zone = array("i", [0] * nr)  # zone it heats, -1 none
        self.r_short_ma = array("i", [0] * nr)
        self.r_en = bytearray(nr)
        self.r_elapsed = array("i", [0] * nr)  # ms into the soft start
        self.r_mv = array("i", [0] * nr)
        self.r_ma = array("i", [0] * nr)
        self.r_pg = bytearray(nr)  # power-good before glitch masking
        self.r_short = bytearray(nr)
        self.r_glitch_ms = array("i", [0] * nr)
        self.r_pg_bit = array("i", [0] * nr)  # 1 << channel; 0: no pg_mask bit
        self.r_ch = array("i", [-1] * nr)  # channel in mv/ma; -1: a later rail claims it
        self.r_dirty = 0  # bit i: r_mv/r_ma[i] changed; publish() copies them to mv/ma
        self.r_active = (1 << nr) - 1  # bit i: rail i may move (see "Cost" above)
        self.heat_dirty = 1  # a rail that heats a zone changed: recompute z_heat_mw
        self.pg_mask = 0
        self.fan_supply = -1
        self.fan_supply_base_ma = 0
        self.fan_load_dirty = 1  # the fan supply's r_load is to be recomputed
        for i in range(nr):
            r = config.rails[i]
            load, zone_name, ramp, pg_delay = ph.rails.get(r.name, ph.rail_default)
            if ramp <= 0 or ramp > 1000 or pg_delay < 0 or not 0 <= load < 65536:
                raise ValueError("plant: rail " + r.name + " physics out of range")
            nom = r.nominal_mv
            self.r_nom[i] = nom
            self.r_good_mv[i] = nom - nom // 10
            self.r_parent[i] = r.parent
            if r.parent >= 0:
                self.r_children[r.parent] |= 1 << i
            self.r_ramp[i] = ramp
            t90 = _ramp_t90(nom, ramp)
            self.r_t90[i] = t90
            self.r_pg_at[i] = t90 + pg_delay
            self.r_cap[i] = max(ramp, t90 + pg_delay)
            self.r_load[i] = load
            self.r_zone[i] = zone_index.get(zone_name, -1)
            if r.overcurrent_ma > 0:
                short = 2 * r.overcurrent_ma
            else:
                short = 4 * load + 1000
            self.r_short_ma[i] = min(short, 65000)
            if r.name == ph.fan_supply:
                self.fan_supply = i
                self.fan_supply_base_ma = load
            # a channel names one rail (the last one, if a config repeats it)
            for k in range(i):
                if self.r_ch[k] == r.ch:
                    self.r_ch[k] = -1
                    self.r_pg_bit[k] = 0
            self.r_ch[i] = r.ch
            if r.ch < MAX_DIGITAL_CH:
                self.r_pg_bit[i] = 1 << r.ch
        self.rail_decay = ph.rail_decay_ms
        n_ch = 0
        for r in config.rails:
            n_ch = max(n_ch, r.ch + 1)
        self.mv = array("i", [READ_ERROR] * n_ch)  # by channel, see "What the HAL reads"
        self.ma = array("i", [READ_ERROR] * n_ch)

        # -- digital lines -------------------------------------------------------
        sec = config.security
        n_dig = 0
        for g in config.gpio:
            n_dig = max(n_dig, g.ch + 1)
        for ch in (sec.tamper_ch, sec.lock_ch, sec.lock_sense_ch, sec.door_ch, sec.estop_ch):
            n_dig = max(n_dig, ch + 1)
        self.n_digital = n_dig
        self.d_level = bytearray(n_dig)
        self.d_default = bytearray(n_dig)  # level an input returns to on FAULT_CLEAR
        self.d_is_out = bytearray(n_dig)
        for g in config.gpio:
            if g.direction == DIR_OUT:
                self.d_is_out[g.ch] = 1
                self.d_default[g.ch] = 1 if g.initial else 0
            else:
                self.d_default[g.ch] = 1 if g.pull == PULL_UP else 0
        self.tamper_ch = sec.tamper_ch
        self.lock_ch = sec.lock_ch
        self.lock_sense_ch = sec.lock_sense_ch
        self.door_ch = sec.door_ch
        self.estop_ch = sec.estop_ch
        if self.lock_ch >= 0:
            self.d_is_out[self.lock_ch] = 1
        self.lock_travel_ms = ph.lock_travel_ms
        self.lock_moving_ms = 0  # how long the actuator has disagreed with the sense
        self.lock_check = 0  # 1: actuator and sense may disagree (step watches them)
        self.din_mask = 0
        for ch in range(n_dig):
            self._set_level(ch, self.d_default[ch])

        # The arrays ``step`` works on, as tuples it unpacks into locals (one
        # unpack is cheaper than an attribute load per array). The arrays are
        # never replaced, so the tuples stay valid.
        self._fan_arrays = (self.f_rpm_m, self.f_target, self.f_pulse_acc, self.f_pulse_inc,
                            self.f_pulses, self.f_ppr, self.f_max_rpm, self.f_full_ma)
        self._zone_arrays = (self.z_mc, self.z_acc, self.z_cap, self.z_heat_mw, self.z_fans,
                             self.z_nfans, self.z_airflow, self.z_g0, self.z_gfan,
                             self.z_sensors, self.s_bias, self.adc, self.i2c_temp)
        self._rail_arrays = (self.r_en, self.r_mv, self.r_ma, self.r_nom, self.r_parent,
                             self.r_good_mv, self.r_glitch_ms, self.r_elapsed, self.r_cap,
                             self.r_short, self.r_load, self.r_children)
        # every reading once
        self.s_dirty = (1 << ns) - 1
        self.r_dirty = (1 << nr) - 1
        self.publish()

    # -- world controls (tests, harness, fault commands) ----------------------

    def set_ambient(self, mc):
        if mc < AMBIENT_MIN_MC or mc > AMBIENT_MAX_MC:
            return R_INVALID_ARGUMENT
        self.ambient_mc = mc
        return R_OK

    def set_zone_temp(self, z, mc):
        """Put zone ``z`` at ``mc`` now (tests start from a warm state)."""
        if z < 0 or z >= self.n_zones:
            return R_UNKNOWN_TARGET
        if mc < ZONE_MIN_MC or mc > ZONE_MAX_MC:
            return R_INVALID_ARGUMENT
        self.z_mc[z] = mc
        self.z_acc[z] = 0
        for i in range(self.n_sensors):
            if self.s_zone[i] == z:
                self._sensor_changed(i)
        return R_OK

    def set_rail_load(self, i, ma):
        """Change rail ``i``'s load (mA at nominal voltage), e.g. CPU load."""
        if i < 0 or i >= self.n_rails:
            return R_UNKNOWN_TARGET
        if ma < 0 or ma >= 65536:
            return R_INVALID_ARGUMENT
        if i == self.fan_supply:
            self.fan_supply_base_ma = ma
            self.fan_load_dirty = 1
        self.r_load[i] = ma
        self._step_rail(i, 0)
        return R_OK

    def set_noise(self, amplitude_mc, seed=1):
        if amplitude_mc < 0 or amplitude_mc > MAX_NOISE_MC:
            return R_INVALID_ARGUMENT
        self.noise_mc = amplitude_mc
        self.rng = (seed & 0xFFFF) or 1
        if not amplitude_mc:
            for i in range(self.n_sensors):
                self.s_noise[i] = 0
                self.s_bias[i] = self.s_offset[i]
                self._sensor_changed(i)
        return R_OK

    def set_input(self, ch, level):
        """Drive input line ``ch`` from the outside world (0/1)."""
        if ch < 0 or ch >= self.n_digital or self.d_is_out[ch]:
            return R_UNKNOWN_TARGET
        self._set_level(ch, level)
        return R_OK

    # -- what the HAL forwards ------------------------------------------------

    def set_output(self, ch, level):
        if ch < 0 or ch >= self.n_digital or not self.d_is_out[ch]:
            return R_UNKNOWN_TARGET
        self._set_level(ch, level)
        return R_OK

    def digital_level(self, ch):
        if ch < 0 or ch >= self.n_digital:
            return 0
        return self.d_level[ch]

    def set_fan_duty(self, i, duty):
        if i < 0 or i >= self.n_fans:
            return R_UNKNOWN_TARGET
        if duty < 0:
            duty = 0
        elif duty > 1000:
            duty = 1000
        self.f_duty[i] = duty
        if not self.f_stalled[i]:
            self.f_target[i] = duty * self.f_max_rpm[i]
        return R_OK

    def fan_rpm(self, i):
        return self.f_rpm_m[i] // 1000

    def take_pulses(self, i):
        """Tach pulses since the previous call."""
        a = self.f_pulse_acc[i]
        n = a // _MS_PER_MIN
        self.f_pulse_acc[i] = a - n * _MS_PER_MIN
        n = (self.f_pulses[i] + n) & _MASK30
        self.f_pulses[i] = 0
        return n

    def set_rail_enable(self, i, on):
        if i < 0 or i >= self.n_rails:
            return R_UNKNOWN_TARGET
        self.r_en[i] = 1 if on else 0
        self._step_rail(i, 0)  # power-good follows the enable at once
        return R_OK

    def rail_power_good(self, i):
        if self.r_pg[i] and not self.r_glitch_ms[i]:
            return 1
        return 0

    def sensor_mc(self, i):
        """Temperature sensor ``i`` sees (stuck value if stuck; open and
        short are for the HAL to turn into raw readings)."""
        if self.s_fault[i] == FAULT_SENSOR_STUCK:
            return self.s_stuck_mc[i]
        return self.z_mc[self.s_zone[i]] + self.s_offset[i] + self.s_noise[i]

    # -- keeping the readings current (outside the sub-step loop) ----------------

    def _set_level(self, ch, level):
        """Digital line ``ch`` to ``level`` (0/1), keeping din_mask in step."""
        v = 1 if level else 0
        self.d_level[ch] = v
        if ch < MAX_DIGITAL_CH:
            if v:
                self.din_mask |= 1 << ch
            else:
                self.din_mask &= ~(1 << ch)
        if ch == self.lock_ch or ch == self.lock_sense_ch:
            self.lock_check = 1

    def _set_sensor_fault(self, i, fault):
        """Sensor ``i``'s fault to ``fault`` (0: none), flagged in its entry
        so that step leaves a faulted sensor's reading alone."""
        self.s_fault[i] = fault
        e = self.s_entry[i]
        if e >= 0:
            e1 = (e | _K_FAULTED) if fault else (e & ~_K_FAULTED)
            self.s_entry[i] = e1
            arr = self.z_sensors[self.s_zone[i]]
            for k in range(len(arr)):
                if arr[k] == e:
                    arr[k] = e1
        self._sensor_changed(i)

    def _sensor_changed(self, i):
        # Outside step (a fault, a clear, a zone set from outside, noise
        # switched off): the reading follows at the next publish().
        self.s_dirty |= 1 << i

    def reading(self, i):
        """Sensor ``i``'s raw reading, computed from its state now."""
        f = self.s_fault[i]
        kind = self.s_kind[i]
        if f == FAULT_SENSOR_OPEN:
            return ADC_OPEN if kind == SENSOR_NTC else READ_ERROR
        if f == FAULT_SENSOR_SHORT:
            return ADC_SHORT if kind == SENSOR_NTC else READ_ERROR
        if f == FAULT_SENSOR_STUCK:
            return sensor_raw(kind, self.s_stuck_mc[i])
        return sensor_raw(kind, self.z_mc[self.s_zone[i]] + self.s_bias[i])

    def publish(self):
        """Bring the readings up to date with what changed outside ``step``
        (``step`` ends with this; ``SimHal.sample`` calls it when no time
        passed). Only here and in ``step`` do the readings change."""
        m = self.s_dirty
        if m:
            self.s_dirty = 0
            entry = self.s_entry
            i = 0
            while m:
                if m & 1 and entry[i] >= 0:
                    e = entry[i]
                    dst = self.adc if e & 3 == _K_NTC else self.i2c_temp
                    dst[e >> 8] = self.reading(i)
                m >>= 1
                i += 1
        m = self.r_dirty
        if m:
            self.r_dirty = 0
            r_ch = self.r_ch
            i = 0
            while m:
                if m & 1 and r_ch[i] >= 0:
                    self.mv[r_ch[i]] = self.r_mv[i]
                    self.ma[r_ch[i]] = self.r_ma[i]
                m >>= 1
                i += 1

    def _set_stall(self, i, stalled):
        """FAULT_FAN_STALL on fan ``i`` (stalled 1) or its clear (0)."""
        self.f_stalled[i] = stalled
        if stalled:
            # A locked rotor stops at once: no speed, no pulse in progress, no draw.
            self.f_rpm_m[i] = 0
            self.f_pulse_inc[i] = 0
            n = self.f_pulse_acc[i] // _MS_PER_MIN  # whole pulses stay counted
            self.f_pulses[i] = (self.f_pulses[i] + n) & _MASK30
            self.f_pulse_acc[i] = 0
            self.f_target[i] = 0
            self.fan_load_dirty = 1
        else:
            self.f_target[i] = self.f_duty[i] * self.f_max_rpm[i]

    # -- time ---------------------------------------------------------------------

    def step(self, dt_ms):
        """Advance the world by ``dt_ms`` (split into sub-steps of <= 10 ms).

        One sub-step, in this order (a child rail sees its parent's voltage of
        the same sub-step, the thermal model the fan speeds and rail powers of
        the same sub-step): fans, rails, zone heat, noise, thermal and the
        sensors of each zone, lock. See "Cost" in the module docstring for
        what is skipped when idle.
        """
        (rpm_m, target, pulse_acc, pulse_inc, pulses, ppr, max_rpm,
         full_ma) = self._fan_arrays
        (z_mc, z_acc, z_cap, heat, z_fans, z_nfans, z_airflow, z_g0, z_gfan,
         z_sensors, s_bias, adc, i2c) = self._zone_arrays
        nf = self.n_fans
        nz = self.n_zones
        up = self.fan_tau_up
        upm1 = up - 1
        down = self.fan_tau_down
        fs = self.fan_supply
        while dt_ms > 0:
            dt = dt_ms
            if dt > MAX_SUBSTEP_MS:
                dt = MAX_SUBSTEP_MS
            dt_ms -= dt
            self.elapsed_ms = (self.elapsed_ms + dt) & _MASK30

            # -- fans: speed and pulses
            rpm_moved = 0
            for i in range(nf):
                r = rpm_m[i]
                # target in milli-RPM (0 while stalled: a stalled fan sits at 0)
                diff = target[i] - r
                if diff:
                    rpm0 = r // 1000
                    # |diff| <= 6.6e7 and dt <= 10: the product stays below 2**30.
                    # Rounding away from the current speed (ceil up, floor down)
                    # lets the speed reach the target exactly instead of stalling
                    # short of it once a step rounds to zero.
                    if diff > 0:
                        r += (diff * dt + upm1) // up
                    else:
                        r += diff * dt // down
                    rpm_m[i] = r
                    rpm = r // 1000
                    if rpm != rpm0:  # near its target a fan keeps its whole RPM
                        inc = rpm * ppr[i]
                        pulse_inc[i] = inc
                        rpm_moved = 1
                    else:
                        inc = pulse_inc[i]
                elif r:
                    inc = pulse_inc[i]
                else:
                    continue  # stopped, and meant to be: no pulses
                a = pulse_acc[i] + inc * dt
                if a >= _PULSE_ACC_FOLD:  # rare: keep the accumulator small
                    n = a // _MS_PER_MIN
                    a -= n * _MS_PER_MIN
                    pulses[i] = (pulses[i] + n) & _MASK30
                pulse_acc[i] = a
            # The fan supply's load: its base plus each fan's full-speed current
            # times its share of full speed, in whole RPM (a stalled fan is at
            # 0). Its current matters only while that rail has voltage or may
            # get some in this sub-step (a rail moves: the fan supply or one of
            # its parents may be among them); until then it waits, flagged.
            if rpm_moved:
                self.fan_load_dirty = 1
            if self.fan_load_dirty and fs >= 0 and (self.r_mv[fs] or self.r_active):
                self.fan_load_dirty = 0
                load = self.fan_supply_base_ma
                for i in range(nf):
                    load += full_ma[i] * (rpm_m[i] // 1000) // max_rpm[i]
                r_load = self.r_load
                if r_load[fs] != load:
                    r_load[fs] = load
                    if not self.r_active & (1 << fs):
                        # Settled, so _step_rails will not look at it: the same
                        # resistive load as at the end of _step_rail (no short).
                        a = load * (self.r_mv[fs] * 1000 // self.r_nom[fs]) // 1000
                        r_ma = self.r_ma
                        if a != r_ma[fs]:
                            r_ma[fs] = a
                            if self.r_ch[fs] >= 0:
                                self.ma[self.r_ch[fs]] = a  # (in step: see publish)
                            if self.r_zone[fs] >= 0:
                                self.heat_dirty = 1

            # -- rails that may move; zone heat when a heating rail moved
            if self.r_active:
                self._step_rails(dt)
            if self.heat_dirty:
                self._sum_heat()

            # -- noise, then thermal and the sensors of each zone that moved
            noise = self.noise_mc
            if noise:
                self._draw_noise()
            amb = self.ambient_mc
            for z in range(nz):
                t = z_mc[z]
                h = heat[z]
                d = t - amb
                moved = noise
                if h or d:  # else the energy balance is exactly zero
                    # conductance at this sub-step's airflow: the mean over the
                    # zone's fans of rpm / max_rpm (milli-RPM / RPM = per-mille)
                    g = z_g0[z]
                    n = z_nfans[z]
                    if n:
                        air = 0
                        for i in z_fans[z]:
                            air += rpm_m[i] // max_rpm[i]
                        if n > 1:
                            air //= n
                        z_airflow[z] = air
                        g += z_gfan[z] * air // 1000
                    # g <= 3000 and |t - amb| <= 310000: product below 2**30
                    a = z_acc[z] + (h - g * d // 1000) * dt
                    c = z_cap[z]
                    if a >= c or a < 0:
                        q = a // c  # floor: the remainder stays in [0, cap)
                        a -= q * c
                        t += q
                        if t < ZONE_MIN_MC:
                            t = ZONE_MIN_MC
                            a = 0
                        elif t > ZONE_MAX_MC:
                            t = ZONE_MAX_MC
                            a = 0
                        z_mc[z] = t
                        moved = 1
                    z_acc[z] = a
                if moved:
                    # A new reading for each working sensor of the zone (every
                    # one's m°C moved with the zone or its noise); a faulted one
                    # keeps the reading publish() gave it. reading() written out.
                    for e in z_sensors[z]:
                        k = e & 7
                        if k == _K_NTC:
                            adc[e >> 8] = mc_to_adc(t + s_bias[(e >> 3) & 31])
                        elif k == _K_TMP117:
                            mc = t + s_bias[(e >> 3) & 31]
                            if mc < TMP117_MIN_MC:
                                mc = TMP117_MIN_MC
                            elif mc > TMP117_MAX_MC:
                                mc = TMP117_MAX_MC
                            i2c[e >> 8] = (mc * 16 // 125) & 0xFFFF
                        elif k == _K_LM75:
                            mc = t + s_bias[(e >> 3) & 31]
                            if mc < LM75_MIN_MC:
                                mc = LM75_MIN_MC
                            elif mc > LM75_MAX_MC:
                                mc = LM75_MAX_MC
                            i2c[e >> 8] = ((mc // 125) << 5) & 0xFFFF
                        elif not k:
                            i2c[e >> 8] = READ_ERROR
                        # else faulted: it keeps the reading publish() gave it

            # -- lock sense follows the actuator after lock_travel_ms
            if self.lock_check:
                lv = self.d_level
                lock = self.lock_ch
                sense = self.lock_sense_ch
                if lock < 0 or sense < 0 or lv[lock] == lv[sense]:
                    self.lock_moving_ms = 0
                    self.lock_check = 0
                else:
                    m = self.lock_moving_ms + dt
                    if m >= self.lock_travel_ms:
                        self._set_level(sense, lv[lock])
                        m = 0
                    self.lock_moving_ms = m
        if self.s_dirty or self.r_dirty:
            self.publish()

    def _step_rails(self, dt):
        # Only the rails in r_active, in index order: parents come before
        # children in a valid config, so a child sees its parent's voltage of
        # this same sub-step, and a parent that moved adds its children. A
        # rail settled fully on or fully off leaves r_active: stepping it
        # again would store the same values (see "Cost" above).
        (en, mv, ma, nom, parent, good, glitch, elapsed, cap, short, load,
         children) = self._rail_arrays
        m = self.r_active
        active = 0
        bit = 1
        for i in range(self.n_rails):
            if m & bit:
                if not glitch[i]:
                    p = parent[i]
                    if en[i] and (p < 0 or mv[p] >= good[p]):
                        if mv[i] == nom[i] and elapsed[i] == cap[i] and not short[i]:
                            if ma[i] != load[i]:
                                ma[i] = load[i]  # on and good: only the load may change
                                self.r_dirty |= bit
                                if self.r_zone[i] >= 0:
                                    self.heat_dirty = 1
                            bit <<= 1
                            continue
                    elif not mv[i] and not elapsed[i] and not ma[i]:
                        # off (or enabled without a good parent) and discharged:
                        # _step_rail would store these same zeros again
                        bit <<= 1
                        continue
                self._step_rail(i, dt)
                active |= bit
                m |= children[i]
            bit <<= 1
        self.r_active = active

    def _step_rail(self, i, dt):
        # Every change of a rail from outside step comes through here, so this
        # is where the readings (r_dirty, pg_mask), r_active and heat_dirty
        # follow. Its children may lose or regain their supply: they move too.
        (en, r_mv, r_ma, r_nom, parent, good, glitch, elapsed, cap, short, load,
         children) = self._rail_arrays
        self.r_active |= (1 << i) | children[i]
        self.r_dirty |= 1 << i
        if self.r_zone[i] >= 0:
            self.heat_dirty = 1
        nom = r_nom[i]
        p = parent[i]
        g = glitch[i]
        if g:
            g -= dt
            if g < 0:
                g = 0
            glitch[i] = g
        mv = r_mv[i]
        pg = 0
        if en[i] and (p < 0 or r_mv[p] >= good[p]):
            if short[i]:
                elapsed[i] = 0
                mv = nom // 20
                ma = self.r_short_ma[i]
            else:
                e = elapsed[i] + dt
                if e > cap[i]:
                    e = cap[i]
                elapsed[i] = e
                ramp = self.r_ramp[i]
                if e < ramp:
                    v = nom * e // ramp
                else:
                    v = nom
                if v > mv:
                    mv = v  # never below the voltage still on the rail
                if e >= self.r_pg_at[i]:
                    pg = 1
                # resistive load: I = load × V / nominal, each factor below 2**27
                ma = load[i] * (mv * 1000 // nom) // 1000
        else:
            if dt:
                d = self.rail_decay
                mv = mv * d // (d + dt)
                if mv < 20:
                    mv = 0
            # Re-enabling continues the soft start from the voltage still on
            # the rail, but power-good always waits its full delay again.
            e = mv * self.r_ramp[i] // nom
            if e > self.r_t90[i]:
                e = self.r_t90[i]
            elapsed[i] = e
            ma = load[i] * (mv * 1000 // nom) // 1000
        r_mv[i] = mv
        r_ma[i] = ma
        self.r_pg[i] = pg
        if pg and not g:
            self.pg_mask |= self.r_pg_bit[i]
        else:
            self.pg_mask &= ~self.r_pg_bit[i]

    def _sum_heat(self):
        # heat per zone = sum of the power of the rails that heat it
        self.heat_dirty = 0
        heat = self.z_heat_mw
        nz = self.n_zones
        for z in range(nz):
            heat[z] = 0
        r_zone = self.r_zone
        r_mv = self.r_mv
        r_ma = self.r_ma
        for i in range(self.n_rails):
            z = r_zone[i]
            if z >= 0:
                # (mV/10) × mA / 100 = mW; both factors keep it below 2**30
                heat[z] += (r_mv[i] // 10) * r_ma[i] // 100
        for z in range(nz):
            if heat[z] > MAX_HEAT_MW:
                heat[z] = MAX_HEAT_MW  # keeps heat × dt below 2**30 on any config

    def _draw_noise(self):
        amp = self.noise_mc
        span = 2 * amp + 1
        x = self.rng
        s_noise = self.s_noise
        s_offset = self.s_offset
        s_bias = self.s_bias
        for i in range(self.n_sensors):
            # xorshift16 (7, 9, 8): full period 65535, values below 2**16
            x ^= (x << 7) & 0xFFFF
            x ^= x >> 9
            x ^= (x << 8) & 0xFFFF
            n = x % span - amp
            s_noise[i] = n
            s_bias[i] = s_offset[i] + n
        self.rng = x

    # -- faults ---------------------------------------------------------------------

    def inject(self, kind, target, value):
        """Apply one simulated fault; see the module docstring."""
        if kind == FAULT_CLEAR:
            if target == -1:
                self.clear_all()
                return R_OK
            if value == FAULT_CLEAR:
                return R_INVALID_ARGUMENT
            return self._clear_one(value, target)
        if kind == FAULT_SENSOR_STUCK or kind == FAULT_SENSOR_OPEN or kind == FAULT_SENSOR_SHORT:
            if target < 0 or target >= self.n_sensors:
                return R_UNKNOWN_TARGET
            if kind == FAULT_SENSOR_STUCK:
                if value < STUCK_MIN_MC or value > STUCK_MAX_MC:
                    return R_INVALID_ARGUMENT
                self.s_stuck_mc[target] = value
            self._set_sensor_fault(target, kind)
            return R_OK
        if kind == FAULT_FAN_STALL:
            if target < 0 or target >= self.n_fans:
                return R_UNKNOWN_TARGET
            self._set_stall(target, 1)
            return R_OK
        if kind == FAULT_RAIL_SHORT or kind == FAULT_PG_GLITCH:
            if target < 0 or target >= self.n_rails:
                return R_UNKNOWN_TARGET
            if kind == FAULT_RAIL_SHORT:
                self.r_short[target] = 1
            else:
                if value <= 0 or value > MAX_GLITCH_MS:
                    return R_INVALID_ARGUMENT
                self.r_glitch_ms[target] = value
            self._step_rail(target, 0)
            return R_OK
        if kind == FAULT_TAMPER or kind == FAULT_ESTOP or kind == FAULT_DOOR:
            if target != 0 and target != -1:
                return R_UNKNOWN_TARGET
            if value != 0 and value != 1:
                return R_INVALID_ARGUMENT
            ch = self._security_ch(kind)
            if ch < 0:
                return R_UNKNOWN_TARGET  # this board has no such switch
            self._set_level(ch, value)
            return R_OK
        return R_INVALID_ARGUMENT

    def clear_all(self):
        for i in range(self.n_sensors):
            if self.s_fault[i]:
                self._set_sensor_fault(i, 0)
        for i in range(self.n_fans):
            if self.f_stalled[i]:
                self._set_stall(i, 0)
        for i in range(self.n_rails):
            self.r_short[i] = 0
            self.r_glitch_ms[i] = 0
            self._step_rail(i, 0)
        # three explicit stores: a tuple to loop over would allocate
        if self.tamper_ch >= 0:
            self._set_level(self.tamper_ch, 0)
        if self.estop_ch >= 0:
            self._set_level(self.estop_ch, 0)
        if self.door_ch >= 0:
            self._set_level(self.door_ch, 0)

    def _clear_one(self, kind, target):
        if kind == FAULT_SENSOR_STUCK or kind == FAULT_SENSOR_OPEN or kind == FAULT_SENSOR_SHORT:
            if target < 0 or target >= self.n_sensors:
                return R_UNKNOWN_TARGET
            self._set_sensor_fault(target, 0)
            return R_OK
        if kind == FAULT_FAN_STALL:
            if target < 0 or target >= self.n_fans:
                return R_UNKNOWN_TARGET
            if self.f_stalled[target]:
                self._set_stall(target, 0)
            return R_OK
        if kind == FAULT_RAIL_SHORT or kind == FAULT_PG_GLITCH:
            if target < 0 or target >= self.n_rails:
                return R_UNKNOWN_TARGET
            if kind == FAULT_RAIL_SHORT:
                self.r_short[target] = 0
            else:
                self.r_glitch_ms[target] = 0
            self._step_rail(target, 0)
            return R_OK
        if kind == FAULT_TAMPER or kind == FAULT_ESTOP or kind == FAULT_DOOR:
            if target != 0:
                return R_UNKNOWN_TARGET
            ch = self._security_ch(kind)
            if ch < 0:
                return R_UNKNOWN_TARGET
            self._set_level(ch, 0)
            return R_OK
        return R_INVALID_ARGUMENT

    def _security_ch(self, kind):
        if kind == FAULT_TAMPER:
            return self.tamper_ch
        if kind == FAULT_ESTOP:
            return self.estop_ch
        return self.door_ch
