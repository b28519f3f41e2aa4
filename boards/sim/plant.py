"""The simulated hardware: thermal masses, fans, power rails, switches.

``Plant(config)`` builds a physical model for a ``BoardConfig`` and advances
it with ``step(dt_ms)``; ``SimHal`` calls that once per tick and reads the
results out of the plain arrays below. Everything is a scaled integer (m°C,
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
"""

from array import array

from metal.core.compat import const
from metal.core.config import DIR_OUT, PULL_UP
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
        self.z_heat_mw = array("i", [0] * nz)  # heat flowing in, last sub-step
        self.z_airflow = array("i", [0] * nz)  # per-mille, last sub-step
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
        self.s_fault = bytearray(ns)  # 0 or FAULT_SENSOR_STUCK/OPEN/SHORT
        self.s_stuck_mc = array("i", [0] * ns)
        for i in range(ns):
            s = config.sensors[i]
            self.s_zone[i] = s.zone
            self.s_offset[i] = ph.sensors.get(s.name, 0)
        self.noise_mc = 0
        self.rng = 1  # xorshift16 state, never 0

        # -- fans --------------------------------------------------------------
        nf = len(config.fans)
        self.n_fans = nf
        self.f_zone = array("i", [0] * nf)
        self.f_max_rpm = array("i", [0] * nf)
        self.f_ppr = array("i", [0] * nf)
        self.f_full_ma = array("i", [0] * nf)
        self.f_duty = array("i", [0] * nf)  # per-mille, as last commanded
        self.f_rpm_m = array("i", [0] * nf)  # milli-RPM
        self.f_pulse_acc = array("i", [0] * nf)  # pulses × 60000 not yet whole
        self.f_pulses = array("i", [0] * nf)  # whole pulses not yet taken
        self.f_stalled = bytearray(nf)
        for i in range(nf):
            f = config.fans[i]
            self.f_zone[i] = f.zone
            self.f_max_rpm[i] = f.max_rpm
            self.f_ppr[i] = f.pulses_per_rev
            self.f_full_ma[i] = ph.fans.get(f.name, ph.fan_default_ma)
            self.z_nfans[f.zone] += 1
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
        self.fan_supply = -1
        self.fan_supply_base_ma = 0
        for i in range(nr):
            r = config.rails[i]
            load, zone_name, ramp, pg_delay = ph.rails.get(r.name, ph.rail_default)
            if ramp <= 0 or ramp > 1000 or pg_delay < 0 or not 0 <= load < 65536:
                raise ValueError("plant: rail " + r.name + " physics out of range")
            nom = r.nominal_mv
            self.r_nom[i] = nom
            self.r_good_mv[i] = nom - nom // 10
            self.r_parent[i] = r.parent
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
        self.rail_decay = ph.rail_decay_ms

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
        self.d_level[:] = self.d_default
        self.lock_travel_ms = ph.lock_travel_ms
        self.lock_moving_ms = 0  # how long the actuator has disagreed with the sense

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
        return R_OK

    def set_rail_load(self, i, ma):
        """Change rail ``i``'s load (mA at nominal voltage), e.g. CPU load."""
        if i < 0 or i >= self.n_rails:
            return R_UNKNOWN_TARGET
        if ma < 0 or ma >= 65536:
            return R_INVALID_ARGUMENT
        if i == self.fan_supply:
            self.fan_supply_base_ma = ma
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
        return R_OK

    def set_input(self, ch, level):
        """Drive input line ``ch`` from the outside world (0/1)."""
        if ch < 0 or ch >= self.n_digital or self.d_is_out[ch]:
            return R_UNKNOWN_TARGET
        self.d_level[ch] = 1 if level else 0
        return R_OK

    # -- what the HAL forwards ------------------------------------------------

    def set_output(self, ch, level):
        if ch < 0 or ch >= self.n_digital or not self.d_is_out[ch]:
            return R_UNKNOWN_TARGET
        self.d_level[ch] = 1 if level else 0
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
        return R_OK

    def fan_rpm(self, i):
        return self.f_rpm_m[i] // 1000

    def take_pulses(self, i):
        """Tach pulses since the previous call."""
        n = self.f_pulses[i]
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

    # -- time ---------------------------------------------------------------------

    def step(self, dt_ms):
        """Advance the world by ``dt_ms`` (split into sub-steps of <= 10 ms)."""
        while dt_ms > 0:
            dt = dt_ms
            if dt > MAX_SUBSTEP_MS:
                dt = MAX_SUBSTEP_MS
            dt_ms -= dt
            self._substep(dt)

    def _substep(self, dt):
        # The sim board's tick runs one sub-step of 10 ms every tick, so this is
        # on the firmware's measured path: the loops below keep the arrays in
        # locals and the fan loop also does the per-fan work of the fan supply
        # and of the thermal model (it needs the speeds of this same sub-step).
        self.elapsed_ms = (self.elapsed_ms + dt) & _MASK30
        self._step_fans(dt)
        self._step_rails(dt)
        self._step_thermal(dt)
        self._step_lock(dt)
        if self.noise_mc:
            self._step_noise()

    def _step_fans(self, dt):
        """Fan speeds and tach pulses; then, from the new speeds, the fan
        supply's load and each zone's airflow sum (``_step_thermal`` averages it)."""
        rpm_m = self.f_rpm_m
        acc = self.f_pulse_acc
        pulses = self.f_pulses
        duty = self.f_duty
        max_rpm = self.f_max_rpm
        ppr = self.f_ppr
        stalled = self.f_stalled
        full_ma = self.f_full_ma
        f_zone = self.f_zone
        air = self.z_airflow
        up = self.fan_tau_up
        down = self.fan_tau_down
        for z in range(self.n_zones):
            air[z] = 0
        load = self.fan_supply_base_ma
        for i in range(self.n_fans):
            if stalled[i]:
                rpm_m[i] = 0
                acc[i] = 0
                continue  # adds nothing to the load or the airflow
            # target in milli-RPM: duty ‰ × max RPM (at most 1000 × 65535)
            r = rpm_m[i]
            m = max_rpm[i]
            diff = duty[i] * m - r
            # |diff| <= 6.6e7 and dt <= 10: the product stays below 2**30.
            # Rounding away from the current speed (ceil up, floor down)
            # lets the speed reach the target exactly instead of stalling
            # short of it once a step rounds to zero.
            if diff > 0:
                r += (diff * dt + up - 1) // up
            elif diff < 0:
                r += diff * dt // down
            rpm_m[i] = r
            a = acc[i] + (r // 1000) * ppr[i] * dt
            if a >= _MS_PER_MIN:
                n = a // _MS_PER_MIN
                a -= n * _MS_PER_MIN
                pulses[i] = (pulses[i] + n) & _MASK30
            acc[i] = a
            load += full_ma[i] * (r // 1000) // m
            air[f_zone[i]] += r // m  # milli-RPM / max = per-mille
        if self.fan_supply >= 0:
            self.r_load[self.fan_supply] = load

    def _step_rails(self, dt):
        # Parents come before children in a valid config, so a child sees its
        # parent's voltage of this same sub-step. Most ticks every rail is
        # settled fully on or fully off; those take the short path.
        en = self.r_en
        mv = self.r_mv
        ma = self.r_ma
        nom = self.r_nom
        parent = self.r_parent
        good = self.r_good_mv
        glitch = self.r_glitch_ms
        elapsed = self.r_elapsed
        cap = self.r_cap
        short = self.r_short
        load = self.r_load
        for i in range(self.n_rails):
            if not glitch[i]:
                if en[i]:
                    p = parent[i]
                    if (mv[i] == nom[i] and elapsed[i] == cap[i]
                            and not short[i] and (p < 0 or mv[p] >= good[p])):
                        ma[i] = load[i]  # on and good: only the load may change
                        continue
                elif not mv[i]:
                    continue  # off and discharged: nothing moves
            self._step_rail(i, dt)

    def _step_rail(self, i, dt):
        nom = self.r_nom[i]
        p = self.r_parent[i]
        g = self.r_glitch_ms[i]
        if g:
            g -= dt
            self.r_glitch_ms[i] = g if g > 0 else 0
        supplied = p < 0 or self.r_mv[p] >= self.r_good_mv[p]
        if self.r_en[i] and supplied:
            if self.r_short[i]:
                self.r_elapsed[i] = 0
                self.r_mv[i] = nom // 20
                self.r_ma[i] = self.r_short_ma[i]
                self.r_pg[i] = 0
                return
            e = self.r_elapsed[i] + dt
            if e > self.r_cap[i]:
                e = self.r_cap[i]
            self.r_elapsed[i] = e
            ramp = self.r_ramp[i]
            mv = nom
            if e < ramp:
                mv = nom * e // ramp
            if mv < self.r_mv[i]:
                mv = self.r_mv[i]
            self.r_pg[i] = 1 if e >= self.r_pg_at[i] else 0
        else:
            mv = self.r_mv[i]
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
            self.r_elapsed[i] = e
            self.r_pg[i] = 0
        self.r_mv[i] = mv
        # resistive load: I = load × V / nominal, each factor below 2**27
        self.r_ma[i] = self.r_load[i] * (mv * 1000 // nom) // 1000

    def _step_thermal(self, dt):
        heat = self.z_heat_mw
        air = self.z_airflow  # summed over the zone's fans by _step_fans
        z_mc = self.z_mc
        z_acc = self.z_acc
        z_g0 = self.z_g0
        z_gfan = self.z_gfan
        z_cap = self.z_cap
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
        amb = self.ambient_mc
        nfans = self.z_nfans
        for z in range(nz):
            h = heat[z]
            if h > MAX_HEAT_MW:
                h = MAX_HEAT_MW  # keeps heat × dt below 2**30 on any config
                heat[z] = h
            n = nfans[z]
            if n > 1:
                air[z] = air[z] // n
            g = z_g0[z] + z_gfan[z] * air[z] // 1000
            t = z_mc[z]
            # g <= 3000 and |t - amb| <= 290000: product below 2**30
            a = z_acc[z] + (h - g * (t - amb) // 1000) * dt
            cap = z_cap[z]
            q = a // cap  # floor: the remainder stays in [0, cap)
            a -= q * cap
            t += q
            if t < ZONE_MIN_MC:
                t = ZONE_MIN_MC
                a = 0
            elif t > ZONE_MAX_MC:
                t = ZONE_MAX_MC
                a = 0
            z_acc[z] = a
            z_mc[z] = t

    def _step_lock(self, dt):
        lock = self.lock_ch
        sense = self.lock_sense_ch
        if lock < 0 or sense < 0:
            return
        lv = self.d_level
        if lv[lock] == lv[sense]:
            self.lock_moving_ms = 0
            return
        m = self.lock_moving_ms + dt
        if m >= self.lock_travel_ms:
            lv[sense] = lv[lock]
            m = 0
        self.lock_moving_ms = m

    def _step_noise(self):
        amp = self.noise_mc
        span = 2 * amp + 1
        x = self.rng
        for i in range(self.n_sensors):
            # xorshift16 (7, 9, 8): full period 65535, values below 2**16
            x ^= (x << 7) & 0xFFFF
            x ^= x >> 9
            x ^= (x << 8) & 0xFFFF
            self.s_noise[i] = x % span - amp
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
            self.s_fault[target] = kind
            return R_OK
        if kind == FAULT_FAN_STALL:
            if target < 0 or target >= self.n_fans:
                return R_UNKNOWN_TARGET
            self.f_stalled[target] = 1
            self.f_rpm_m[target] = 0
            self.f_pulse_acc[target] = 0
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
            self.d_level[ch] = value
            return R_OK
        return R_INVALID_ARGUMENT

    def clear_all(self):
        for i in range(self.n_sensors):
            self.s_fault[i] = 0
        for i in range(self.n_fans):
            self.f_stalled[i] = 0
        for i in range(self.n_rails):
            self.r_short[i] = 0
            self.r_glitch_ms[i] = 0
            self._step_rail(i, 0)
        # three explicit stores: a tuple to loop over would allocate
        if self.tamper_ch >= 0:
            self.d_level[self.tamper_ch] = 0
        if self.estop_ch >= 0:
            self.d_level[self.estop_ch] = 0
        if self.door_ch >= 0:
            self.d_level[self.door_ch] = 0

    def _clear_one(self, kind, target):
        if kind == FAULT_SENSOR_STUCK or kind == FAULT_SENSOR_OPEN or kind == FAULT_SENSOR_SHORT:
            if target < 0 or target >= self.n_sensors:
                return R_UNKNOWN_TARGET
            self.s_fault[target] = 0
            return R_OK
        if kind == FAULT_FAN_STALL:
            if target < 0 or target >= self.n_fans:
                return R_UNKNOWN_TARGET
            self.f_stalled[target] = 0
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
            self.d_level[ch] = 0
            return R_OK
        return R_INVALID_ARGUMENT

    def _security_ch(self, kind):
        if kind == FAULT_TAMPER:
            return self.tamper_ch
        if kind == FAULT_ESTOP:
            return self.estop_ch
        return self.door_ch
