"""The board firmware: every driver, the interlocks and the link, on one loop.

``Firmware(config, hal, boot_id, uid)`` claims every buffer at start-up and
is the ``runner`` of ``metal.core.loop.Loop``. A board's ``main.py`` builds
its HAL and config, then calls ``Firmware(...).loop.run_forever()``; tests
and the simulator call ``fw.loop.tick(now_us)``.

Tick phases (the loop calls them in this order)::

    inputs       hal.sample; sensors, fan tachometers, security inputs;
                 power sequencing and monitoring (power-good, overcurrent);
                 publish host-lost and loop-fault into the signals
    interlocks   evaluate the table; apply its actions: fans max, overheat
                 timer start/cancel, power-down / e-stop lockout, rail shed;
                 tamper action; host-lost safe state
    controllers  thermal zones (PID/stepwise/failsafe/max) -> fan duty;
                 an overheat timer that expired here starts the power-down
    policy       (no policy table in this firmware version: nothing to do)
    outputs      GPIO lines (debounced inputs, changed outputs)
    link         serial I/O within the byte budget, commands, results,
                 events, TELEMETRY every ``telemetry_every`` ticks
    stats        telemetry countdown; a requested reboot happens here, after
                 the results of this tick went out

Boot defaults: every rail off (the power driver disables them in its
constructor), fans at their zone's boot duty until the controllers have
valid readings, the lock held as sensed.

Safe states:

* host lost (no HEARTBEAT within the timeout): fans to full and, when
  ``limits.host_lost_action`` is SAFE_POWER_DOWN, an orderly power-down;
  EV_HOST_LOST 1 / EV_SAFE_STATE. The fans return to their controllers on the
  next heartbeat (EV_HOST_LOST 0); rails stay as they are.
* loop fault (``overrun_limit`` consecutive overruns): fans to full and an
  orderly power-down (``enter_safe_state``).
* overheat timer expired: orderly power-down.
"""

from metal.core.board_link import BoardLink
from metal.core.cbor import Encoder
from metal.core.compat import const
from metal.core.config import ACT_FANS_MAX, ACT_LOCKOUT, ACT_NONE, ACT_POWER_DOWN, SAFE_POWER_DOWN
from metal.core.describe import build_parts
from metal.core.drivers.fans import FanBank
from metal.core.drivers.gpio import GpioBank
from metal.core.drivers.power import PowerController
from metal.core.drivers.security import SecurityController
from metal.core.drivers.sensors import SensorBank
from metal.core.drivers.thermal import ThermalController
from metal.core.events import EventQueue
from metal.core.interlocks.table import InterlockTable
from metal.core.loop import Loop
from metal.core.proto import (
    EV_BOOT,
    EV_HOST_LOST,
    EV_SAFE_STATE,
    OP_ARM,
    OP_DISARM,
    OP_ESTOP,
    OP_GPIO_WRITE,
    OP_INTERLOCK_CLEAR,
    OP_LOCK,
    OP_POWER_OFF,
    OP_POWER_ON,
    OP_RAIL_CYCLE,
    OP_RAIL_OFF,
    OP_RAIL_ON,
    OP_REBOOT,
    OP_SET_HB_TIMEOUT,
    OP_SIM_FAULT,
    OP_TAMPER_CLEAR,
    OP_UNLOCK,
    OP_ZONE_AUTO,
    OP_ZONE_MANUAL,
    OP_ZONE_SETPOINT,
    R_INVALID_ARGUMENT,
    R_OK,
    R_UNKNOWN_OP,
    RF_NONE,
    RF_SHED,
    SENSOR_OK,
    STF_HOST_LOST,
    STF_LOCKOUT,
    STF_LOOP_FAULT,
    STF_FAILSAFE,
    STF_OVERHEAT,
)
from metal.core.signals import G_HOST_LOST, G_LOOP_FAULT, Signals
from metal.core.telemetry import TelemetryEncoder

EVENT_QUEUE_SIZE = const(32)
HB_TIMEOUT_MIN_MS = const(100)
HB_TIMEOUT_MAX_MS = const(600000)
REBOOT_WAIT_TICKS = const(50)  # a requested reboot waits this long at most for its RESULT to go out


def _identity(config, boot_id, uid, n_parts):
    """Pre-encoded HELLO map entries (keys 2, 4..8); start-up only."""
    buf = bytearray(200)
    e = Encoder(buf)
    e.uint(2)
    e.uint(boot_id & 0x3FFFFFFF)
    for key, text in ((4, config.name), (5, config.fw_version), (6, uid)):
        b = text.encode()
        e.uint(key)
        e.text_from(b, 0, len(b))
    e.uint(7)
    e.uint(0)  # policy version: no policy table loaded
    e.uint(8)
    e.uint(n_parts)
    if e.err:
        raise ValueError("board identity too long")
    return bytes(buf[: e.pos]), 6


class Firmware:
    def __init__(self, config, hal, boot_id, uid, reset_cause=0, clock_us=None,
                 sleep_us=None):
        lim = config.limits
        self.config = config
        self.hal = hal
        self.limits = lim
        self.signals = Signals(len(config.sensors), len(config.fans), len(config.rails))
        self.events = EventQueue(EVENT_QUEUE_SIZE)
        ev = self.events
        sig = self.signals
        self.power = PowerController(config.rails, hal, sig, ev)
        self.sensors = SensorBank(config.sensors, hal, sig, ev, lim.stale_ticks)
        self.fans = FanBank(config.fans, hal, sig, ev, lim.tick_us // 1000)
        self.thermal = ThermalController(config.zones, self.sensors, self.fans, sig, ev, lim)
        self.security = SecurityController(config.security, hal, sig, ev)
        self.gpio = GpioBank(config.gpio, hal, ev)
        self.interlocks = InterlockTable(config.interlocks, sig, ev)
        self.telemetry = TelemetryEncoder(len(config.sensors), len(config.fans), len(config.rails))
        parts = build_parts(config)
        ident, n_ident = _identity(config, boot_id, uid, len(parts))
        self.link = BoardLink(self, hal, ev, parts, ident, n_ident,
                              lim.heartbeat_timeout_ms, lim.serial_budget, lim.telemetry_every)
        self.boot_id = boot_id & 0x3FFFFFFF
        self.uid = uid
        self._sim_fault = getattr(hal, "sim_fault", None)
        # where phase_inputs publishes the host-lost and loop-fault signals
        self._v = sig.v
        self._sig_host_lost = sig.global0 + G_HOST_LOST
        self._sig_loop_fault = sig.global0 + G_LOOP_FAULT

        self.healthy = 1
        self.host_lost = 0
        self.safe_fans = 0  # fans forced to full by the tamper action
        self.overheat_done = 0  # the overheat power-down was started
        self.tamper_lockout = 0
        self.reboot_pending = 0
        self.telemetry_countdown = 1  # first TELEMETRY on the first tick
        self.loop = Loop(lim.tick_us, self, hal, ev, lim.overrun_limit,
                         clock_us=clock_us, sleep_us=sleep_us)
        ev.push(EV_BOOT, 0, reset_cause)

    # -- phases --------------------------------------------------------------------------
    def phase_inputs(self, now_ms):
        self.hal.sample(self.loop.now_us)
        self.sensors.step(now_ms)
        self.fans.step(now_ms)
        self.security.step(now_ms)
        self.power.step(now_ms)
        self.power.publish()
        # Judge host liveness now, not in the link phase at the end of the tick,
        # so the safe state starts in the tick the heartbeat timeout ends.
        self.link.check_heartbeat(now_ms)
        v = self._v
        v[self._sig_host_lost] = self.link.host_lost
        v[self._sig_loop_fault] = self.loop.fault

    def phase_interlocks(self, now_ms):
        il = self.interlocks
        thermal = self.thermal
        if il.evaluate():
            self._act_on_trips(now_ms)
        elif thermal.overheat_running or thermal.overheat_expired:
            # (nothing tripped, so no overheat row holds: see _act_on_trips)
            if self._overheat_cooled():
                thermal.overheat_cancel()
                self.overheat_done = 0

        sec = self.security
        if sec.tamper_action_pending != ACT_NONE:
            self._apply_action(sec.take_action())
        if not sec.tamper_latched:
            self.tamper_lockout = 0  # both end with an explicit tamper clear
            self.safe_fans = 0

        if self.link.host_lost != self.host_lost:
            self._host_lost_changed(self.link.host_lost)

        # _update_lockout(), written out
        self.power.lockout = 1 if (il.lockout or self.tamper_lockout) else 0
        thermal.force_max = 1 if (il.fans_max or self.host_lost or self.safe_fans
                                  or self.loop.fault) else 0

    def _act_on_trips(self, now_ms):
        """Some row is tripped: apply the table's edges (power-down, shed) and
        start or cancel the overheat timer. With no row tripped every edge is
        0 and ``overheat`` is -1, which is why phase_interlocks only calls
        this when ``evaluate()`` returned a non-zero mask."""
        il = self.interlocks
        power = self.power
        thermal = self.thermal
        if il.new_power_down:
            if il.lockout:
                power.emergency_off(RF_SHED)
            else:
                power.power_off_all(RF_SHED)
        mask = il.new_shed_mask
        i = 0
        while mask:
            if mask & 1:
                power.shed(i, RF_SHED)
            mask >>= 1
            i += 1

        if il.overheat >= 0:
            thermal.overheat_start(il.overheat, now_ms)
        elif (thermal.overheat_running or thermal.overheat_expired) and self._overheat_cooled():
            thermal.overheat_cancel()
            self.overheat_done = 0

    def _host_lost_changed(self, lost):
        self.host_lost = lost
        self.events.push(EV_HOST_LOST, 0, lost)
        if lost:
            self.events.push(EV_SAFE_STATE, 0, self.limits.host_lost_action)
            if self.limits.host_lost_action == SAFE_POWER_DOWN:
                self.power.power_off_all(RF_NONE)

    def phase_controllers(self, now_ms):
        thermal = self.thermal
        thermal.step(now_ms)
        # The timer expires inside thermal.step: start the power-down in this
        # tick, before the next tick's power sequencer could switch on one
        # more rail of a power-up still in progress.
        if thermal.overheat_expired and not self.overheat_done:
            self.overheat_done = 1
            self.power.power_off_all(RF_SHED)

    def phase_policy(self, now_ms):
        return  # no policy table in this firmware version

    def phase_outputs(self, now_ms):
        self.gpio.step()

    def phase_link(self, now_ms):
        link = self.link
        link.receive(now_ms)
        self.telemetry_countdown -= 1
        if self.telemetry_countdown <= 0 and link.telemetry_now():
            # on the grid of telemetry_every ticks, up to TELEMETRY_SLIP ticks
            # late when the link is busy, later while the previous snapshot is
            # still being framed (BoardLink.telemetry_now)
            c = self.telemetry_countdown + self.limits.telemetry_every
            self.telemetry_countdown = c if c > 0 else 1
            tel = self.telemetry
            if tel.buf is not link.telemetry_buf:
                tel.buf = link.telemetry_buf  # encode where it is framed from: no copy
            loop = self.loop
            link.commit_telemetry(tel.encode(
                self.sensors, self.fans, self.power, self.gpio.levels,
                self.interlocks.tripped, self.interlocks.latched, self.status_flags(),
                loop.last_us, loop.take_window_max(), loop.overruns,
                link.queue_overflows()))
        link.transmit(now_ms)

    def phase_stats(self, now_ms):
        if self.reboot_pending:
            # after the reboot's RESULT went out (the link sends a frame a tick),
            # or after REBOOT_WAIT_TICKS if the link cannot send it (a full
            # window: the host stopped acking)
            if self.link.results_out() or self.reboot_pending > REBOOT_WAIT_TICKS:
                self.reboot_pending = 0
                self.hal.reboot()
            else:
                self.reboot_pending += 1

    # -- safety ---------------------------------------------------------------------------
    def enter_safe_state(self, reason):
        """Loop fault: fans to full and an orderly power-down."""
        self.thermal.force_max = 1
        self.power.power_off_all(RF_NONE)
        self.events.push(EV_SAFE_STATE, 1, ACT_POWER_DOWN)

    def _apply_action(self, act):
        if act == ACT_FANS_MAX:
            self.safe_fans = 1
        elif act == ACT_POWER_DOWN:
            self.power.power_off_all(RF_SHED)
        elif act == ACT_LOCKOUT:
            self.tamper_lockout = 1
            self.power.emergency_off(RF_SHED)
        self.events.push(EV_SAFE_STATE, 2, act)

    def _update_lockout(self):
        self.power.lockout = 1 if (self.interlocks.lockout or self.tamper_lockout) else 0

    def _power_veto(self):
        """1 while no rail may be switched on: a tripped power-down, lockout or
        shed row; an e-stop asserted this tick that the interlocks have not
        evaluated yet (a software e-stop earlier in the same batch of commands);
        an expired overheat timer whose condition still holds (the timer does
        not restart while expired, so nothing would power the board down again)."""
        if self.interlocks.blocks_power_on() or self.security.estop:
            return 1
        return 1 if self.thermal.overheat_expired else 0

    def _overheat_cooled(self):
        """The overheat rows released because the sensor that started the timer
        reads valid and cool again. A sensor that went invalid (open, short, out
        of range: a part past its maximum) also releases its row, but that is no
        proof of cooling, so the timer keeps running (fail safe)."""
        s = self.thermal.overheat_sensor
        return s < 0 or self.sensors.state[s] == SENSOR_OK

    def status_flags(self):
        f = self.security.status_flags()
        if self.host_lost:
            f |= STF_HOST_LOST
        if self.thermal.overheat_running or self.thermal.overheat_expired:
            f |= STF_OVERHEAT
        if self.thermal.failsafe_any:
            f |= STF_FAILSAFE
        if self.loop.fault:
            f |= STF_LOOP_FAULT
        if self.power.lockout:
            f |= STF_LOCKOUT
        return f

    # -- commands -------------------------------------------------------------------------
    def execute(self, op, target, arg, arg2):
        """Run one host command; returns an R_* code. Never raises."""
        power = self.power
        if op == OP_RAIL_ON:
            return power.request_on(target, self._power_veto())
        if op == OP_RAIL_OFF:
            return power.request_off(target)
        if op == OP_RAIL_CYCLE:
            return power.request_cycle(target, veto=self._power_veto())
        if op == OP_POWER_ON:
            return power.power_on_all(self._power_veto())
        if op == OP_POWER_OFF:
            power.power_off_all(RF_NONE)
            return R_OK
        if op == OP_ZONE_AUTO:
            return self.thermal.set_auto(target)
        if op == OP_ZONE_MANUAL:
            return self.thermal.set_manual(target, arg)
        if op == OP_ZONE_SETPOINT:
            return self.thermal.set_setpoint(target, arg)
        if op == OP_GPIO_WRITE:
            return self.gpio.write(target, arg)
        sec = self.security
        if op == OP_LOCK:
            return sec.lock()
        if op == OP_UNLOCK:
            return sec.unlock()
        if op == OP_ARM:
            return sec.arm()
        if op == OP_DISARM:
            return sec.disarm()
        if op == OP_TAMPER_CLEAR:
            code = sec.clear_tamper()
            if code == R_OK:
                # lift a tamper lockout now: a power-on later in this same batch
                # of commands must not be judged on the stale flag
                self.tamper_lockout = 0
                self._update_lockout()
            return code
        if op == OP_INTERLOCK_CLEAR:
            code = self.interlocks.clear(target)
            self._update_lockout()  # (likewise for a cleared lockout row)
            return code
        if op == OP_ESTOP:
            if arg != 0 and arg != 1:
                return R_INVALID_ARGUMENT
            return sec.set_soft_estop(arg)
        if op == OP_REBOOT:
            if not self.reboot_pending:
                self.reboot_pending = 1
            return R_OK
        if op == OP_SET_HB_TIMEOUT:
            if arg < HB_TIMEOUT_MIN_MS or arg > HB_TIMEOUT_MAX_MS:
                return R_INVALID_ARGUMENT
            self.link.heartbeat_timeout_ms = arg
            return R_OK
        if op == OP_SIM_FAULT and self._sim_fault is not None:
            return self._sim_fault(arg, target, arg2)
        return R_UNKNOWN_OP
