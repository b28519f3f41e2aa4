"""Bad input on the command path: every bad CMD gets the right verdict and changes nothing.

The board under test is connected, powered, with every zone in manual mode
(so fan duties hold still) and a few GPIO outputs set; ``fingerprint`` (in
the harness) captures everything a command could change -- rail states and
wants, zone modes/duties/setpoints, GPIO levels, security flags, interlock
masks, the heartbeat timeout, plant faults -- and must be identical before
and after each bad command.

Layers, from the frame up:

* frame damage (truncated frames, bad CRC/COBS/version/type, random bytes on
  the wire): dropped by the link, nothing executes, and the link recovers
  (the next good command is answered);
* CBOR that is no command (random payloads, wrong types, missing keys): a
  RESULT ``malformed`` when the payload names a command id, else counted in
  ``BoardLink.malformed`` and dropped -- a state-changing op in it never runs;
* well-formed commands the board must refuse (unknown ops, unknown targets,
  out-of-range duty/setpoint/level/timeouts): hypothesis generates them with
  the code each must get;
* a repeated command id is answered with the first verdict and not executed
  again.
"""

import cbor2
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from metal.core.cbor import Decoder
from metal.core.proto import (
    E_CBOR,
    E_OK,
    E_RANGE,
    E_SCHEMA,
    E_UNSUPPORTED,
    F_ACK,
    FAULT_CLEAR,
    FAULT_SENSOR_STUCK,
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
    PWR_ON,
    R_INVALID_ARGUMENT,
    R_MALFORMED,
    R_OK,
    R_UNKNOWN_OP,
    R_UNKNOWN_TARGET,
    RAIL_OFF,
    RAIL_ON,
    T_CMD,
)
from metal.core.link import S_COBS_ERRORS, S_CRC_ERRORS, S_OTHER_FRAME_ERRORS
from metal.host.codec import encode_frame, encode_frame_raw, encode_payload

from .harness import SimBoard, fingerprint

KNOWN_OPS = frozenset((
    OP_RAIL_ON, OP_RAIL_OFF, OP_RAIL_CYCLE, OP_POWER_ON, OP_POWER_OFF, OP_ZONE_AUTO,
    OP_ZONE_MANUAL, OP_ZONE_SETPOINT, OP_GPIO_WRITE, OP_LOCK, OP_UNLOCK, OP_ARM, OP_DISARM,
    OP_TAMPER_CLEAR, OP_INTERLOCK_CLEAR, OP_ESTOP, OP_REBOOT, OP_SET_HB_TIMEOUT, OP_SIM_FAULT,
))
MANUAL_DUTY = (450, 550, 650)
N_RAILS, N_ZONES, N_GPIO, N_SENSORS = 6, 3, 16, 8
GPIO_OUTPUTS = range(0, 8)
GPIO_INPUTS = range(8, 16)
CRIT_MIN = (95000, 85000, 75000)  # lowest critical limit per zone (sim board)
INT30 = st.integers(-(1 << 30), (1 << 30) - 1)


def quiet_board():
    """Connected, every rail ON, every zone manual, two GPIO outputs set high."""
    b = SimBoard()
    b.power_on()
    for z, d in enumerate(MANUAL_DUTY):
        assert b.cmd(OP_ZONE_MANUAL, z, d) == R_OK
    assert b.cmd(OP_GPIO_WRITE, 0, 1) == R_OK
    assert b.cmd(OP_GPIO_WRITE, 6, 1) == R_OK
    assert b.cmd(OP_SET_HB_TIMEOUT, 0, 3000) == R_OK
    b.run(5)
    fp = fingerprint(b.fw)
    assert fp["rail_state"] == bytes([RAIL_ON] * N_RAILS) and fp["power_state"] == PWR_ON
    assert fp["fan_duty"] == [450, 450, 550, 650]
    b.next_cid = 1_000_000  # far from any id a test writes by hand
    return b


@pytest.fixture
def board():
    return quiet_board()


_shared = []


def shared_board():
    """One quiet board for all hypothesis examples (bad commands change nothing,
    which is exactly what each example checks before it ends)."""
    if not _shared:
        _shared.append(quiet_board())
    return _shared[0]


def settle(b, ticks=3):
    b.run(ticks)
    return fingerprint(b.fw)


def cmd_payload(cid, op, target=0, arg=0, arg2=0):
    return encode_payload({0: cid, 1: op, 2: target, 3: arg, 4: arg2})


# -- well-formed commands the board must refuse (hypothesis) -----------------------------


def _out(lo, hi):
    """Integers outside [lo, hi], within the 30-bit wire range."""
    return st.one_of(st.integers(-(1 << 30), lo - 1), st.integers(hi + 1, (1 << 30) - 1))


def refused_commands():
    """(op, target, arg, arg2, expected code) of commands that must be refused."""
    any_ = INT30
    return st.one_of(
        # unknown op codes (a negative op is not an op at all: malformed)
        st.tuples(st.integers(0, (1 << 30) - 1).filter(lambda o: o not in KNOWN_OPS),
                  any_, any_, any_, st.just(R_UNKNOWN_OP)),
        st.tuples(st.integers(-(1 << 30), -1), any_, any_, any_, st.just(R_MALFORMED)),
        # unknown targets
        st.tuples(st.sampled_from((OP_RAIL_ON, OP_RAIL_OFF, OP_RAIL_CYCLE)), _out(0, N_RAILS - 1),
                  any_, any_, st.just(R_UNKNOWN_TARGET)),
        st.tuples(st.sampled_from((OP_ZONE_AUTO, OP_ZONE_MANUAL, OP_ZONE_SETPOINT)),
                  _out(0, N_ZONES - 1), any_, any_, st.just(R_UNKNOWN_TARGET)),
        st.tuples(st.just(OP_GPIO_WRITE), _out(0, N_GPIO - 1), any_, any_,
                  st.just(R_UNKNOWN_TARGET)),
        st.tuples(st.just(OP_INTERLOCK_CLEAR), _out(0, 18), any_, any_, st.just(R_UNKNOWN_TARGET)),
        st.tuples(st.just(OP_SIM_FAULT), _out(0, N_SENSORS - 1),
                  st.just(FAULT_SENSOR_STUCK), st.integers(-100000, 200000),
                  st.just(R_UNKNOWN_TARGET)),
        # out-of-range arguments
        st.tuples(st.just(OP_ZONE_MANUAL), st.integers(0, N_ZONES - 1), _out(0, 1000), any_,
                  st.just(R_INVALID_ARGUMENT)),
        st.integers(0, N_ZONES - 1).flatmap(lambda z: st.tuples(
            st.just(OP_ZONE_SETPOINT), st.just(z), _out(0, CRIT_MIN[z] - 1), any_,
            st.just(R_INVALID_ARGUMENT))),
        st.tuples(st.just(OP_GPIO_WRITE), st.sampled_from(GPIO_OUTPUTS), _out(0, 1), any_,
                  st.just(R_INVALID_ARGUMENT)),
        st.tuples(st.just(OP_GPIO_WRITE), st.sampled_from(GPIO_INPUTS), any_, any_,
                  st.just(R_INVALID_ARGUMENT)),  # an input line cannot be written
        st.tuples(st.just(OP_ESTOP), any_, _out(0, 1), any_, st.just(R_INVALID_ARGUMENT)),
        st.tuples(st.just(OP_SET_HB_TIMEOUT), any_, _out(100, 600000), any_,
                  st.just(R_INVALID_ARGUMENT)),
        st.tuples(st.just(OP_SIM_FAULT), any_, _out(0, 9), any_, st.just(R_INVALID_ARGUMENT)),
        st.tuples(st.just(OP_SIM_FAULT), st.integers(0, N_SENSORS - 1),
                  st.just(FAULT_SENSOR_STUCK), _out(-100000, 200000),
                  st.just(R_INVALID_ARGUMENT)),
        st.tuples(st.just(OP_SIM_FAULT), st.integers(0, N_SENSORS - 1), st.just(FAULT_CLEAR),
                  st.just(FAULT_CLEAR), st.just(R_INVALID_ARGUMENT)),  # ambiguous clear
    )


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(c=refused_commands())
def test_refused_command_gets_its_code_and_changes_nothing(c):
    op, target, arg, arg2, want = c
    b = shared_board()
    before = settle(b, 1)
    cid = b.send_cmd(op, target, arg, arg2)
    code = b.wait_result(cid, 20)
    res = b.results[cid]
    assert len(res) == 1 and code == want, (op, target, arg, arg2, code)
    if want == R_MALFORMED:
        assert res[0].value == E_SCHEMA
    assert settle(b) == before


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(min_size=0, max_size=120))
def test_garbage_payload_is_answered_malformed_or_dropped(payload):
    b = shared_board()
    try:
        obj = cbor2.loads(payload)
    except Exception:
        obj = None
    # a map with an op in it may be a real command: not garbage
    assume(not (isinstance(obj, dict) and 1 in obj))
    before = settle(b, 1)
    link = b.fw.link
    n_cmd, n_bad, n_dup = link.commands, link.malformed, link.duplicates
    answered = dict(b.results)
    log = len(b.result_log)
    b.send_payload(payload)
    b.run(4)
    assert link.commands == n_cmd + 1  # the board saw it (the link carried it)
    new = b.result_log[log:]
    assert len(new) <= 1
    if new and new[0].cid in answered:  # it happened to name an id already answered
        assert link.duplicates == n_dup + 1 and new[0].code == answered[new[0].cid][0].code
    elif new:
        assert new[0].code == R_MALFORMED and link.malformed == n_bad + 1
    else:
        assert link.malformed == n_bad + 1
    assert settle(b) == before


# -- malformed CBOR, by hand --------------------------------------------------------------


def _tag(obj):
    return cbor2.CBORTag(1, obj)


# (payload factory given the id, expected RESULT value = decoder error code)
MALFORMED_WITH_ID = {
    "op as text": (lambda c: encode_payload({0: c, 1: "power_off"}), E_SCHEMA),
    "target as text": (lambda c: encode_payload({0: c, 1: OP_RAIL_OFF, 2: "p3v3"}), E_SCHEMA),
    "arg as array": (lambda c: encode_payload({0: c, 1: OP_ZONE_MANUAL, 2: 0, 3: [300]}),
                     E_SCHEMA),
    "arg as map": (lambda c: encode_payload({0: c, 1: OP_ZONE_MANUAL, 2: 0, 3: {0: 1}}),
                   E_SCHEMA),
    "arg as bool": (lambda c: encode_payload({0: c, 1: OP_ESTOP, 2: 0, 3: True}), E_SCHEMA),
    "arg as null": (lambda c: encode_payload({0: c, 1: OP_ZONE_MANUAL, 2: 0, 3: None}),
                    E_SCHEMA),
    "arg as bytes": (lambda c: encode_payload({0: c, 1: OP_ZONE_MANUAL, 2: 0, 3: b"\x01"}),
                     E_SCHEMA),
    "op missing": (lambda c: encode_payload({0: c, 2: 0, 3: 300}), E_SCHEMA),
    "only an id": (lambda c: encode_payload({0: c}), E_SCHEMA),
    "arg as float": (lambda c: cbor2.dumps({0: c, 1: OP_ZONE_MANUAL, 2: 0, 3: 0.5}),
                     E_UNSUPPORTED),
    "arg tagged": (lambda c: cbor2.dumps({0: c, 1: OP_ZONE_MANUAL, 2: 0, 3: _tag(300)}),
                   E_UNSUPPORTED),
    "arg beyond 30 bits": (lambda c: cbor2.dumps({0: c, 1: OP_ZONE_MANUAL, 2: 0, 3: 1 << 31}),
                           E_RANGE),
    "op beyond 30 bits": (lambda c: cbor2.dumps({0: c, 1: -(1 << 40)}), E_RANGE),
    "trailing bytes": (lambda c: cmd_payload(c, OP_POWER_OFF) + b"\x00", E_CBOR),
    "text key": (lambda c: cbor2.dumps({0: c, 1: OP_POWER_OFF, "x": 1}), E_UNSUPPORTED),
    "too deep": (lambda c: cbor2.dumps({0: c, 1: OP_POWER_OFF, 5: [[[[1]]]]}), E_UNSUPPORTED),
    # a repeated key must not mean "the last one wins": {0: id, 1: ZONE_AUTO, 1: POWER_OFF}
    "repeated op key": (lambda c: b"\xa3" + b"".join(cbor2.dumps(x) for x in (
        0, c, 1, OP_ZONE_AUTO, 1, OP_POWER_OFF)), E_SCHEMA),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_WITH_ID))
def test_malformed_command_with_an_id_is_answered_malformed(board, case):
    make, err = MALFORMED_WITH_ID[case]
    b = board
    before = settle(b, 1)
    cid = 4242
    n_bad = b.fw.link.malformed
    b.send_payload(make(cid))
    b.run(4)
    [res] = b.results[cid]
    assert (res.code, res.value) == (R_MALFORMED, err)
    assert b.fw.link.malformed == n_bad + 1
    assert settle(b) == before


# Each would power the board off if it were executed.
MALFORMED_WITHOUT_ID = {
    "no id": lambda: encode_payload({1: OP_POWER_OFF}),
    "id 0": lambda: encode_payload({0: 0, 1: OP_POWER_OFF}),
    "negative id": lambda: encode_payload({0: -5, 1: OP_POWER_OFF}),
    "id as text": lambda: encode_payload({0: "77", 1: OP_POWER_OFF}),
    "id beyond 30 bits": lambda: cbor2.dumps({0: 1 << 31, 1: OP_POWER_OFF}),
    "an array": lambda: encode_payload([77, OP_POWER_OFF, 0]),
    "an integer": lambda: encode_payload(OP_POWER_OFF),
    "empty": lambda: b"",
    "truncated map": lambda: cmd_payload(77, OP_POWER_OFF)[:-3],
    "map head only": lambda: cmd_payload(77, OP_POWER_OFF)[:1],
    "break byte": lambda: b"\xff",
    "text keys": lambda: cbor2.dumps({"0": 77, "1": OP_POWER_OFF}),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_WITHOUT_ID))
def test_command_without_a_usable_id_is_counted_and_dropped(board, case):
    b = board
    before = settle(b, 1)
    n_bad = b.fw.link.malformed
    log = len(b.result_log)
    b.send_payload(MALFORMED_WITHOUT_ID[case]())
    b.run(10)
    assert b.result_log[log:] == []
    assert b.fw.link.malformed == n_bad + 1
    assert settle(b) == before  # in particular: the rails are still on
    assert b.cmd(OP_ZONE_MANUAL, 0, MANUAL_DUTY[0]) == R_OK  # and the link still works


def test_salvaged_id_matches_the_board_decoder():
    """The expected decoder codes above are the board decoder's own verdicts."""
    d = Decoder()
    for name, (make, err) in MALFORMED_WITH_ID.items():
        p = make(9)
        got = d.validate(p, 0, len(p))
        assert got == (E_OK if err == E_SCHEMA else err), name


# -- frame damage --------------------------------------------------------------------------


def _cmd_frame(cid, op, target=0, arg=0):
    """A whole CMD frame (its sequence number does not matter: damaged, it never
    gets past the frame checks)."""
    return encode_frame(T_CMD, 0, 0, {0: cid, 1: op, 2: target, 3: arg})


FRAME_DAMAGE = {
    "cut in half": lambda w: w[:len(w) // 2] + b"\x00",
    "cut before the CRC": lambda w: w[:-3] + b"\x00",
    "three bytes": lambda w: w[:3] + b"\x00",
    "one byte flipped": lambda w: w[:5] + bytes([w[5] ^ 0x40]) + w[6:],
    "zero inside": lambda w: w[:6] + b"\x00" + w[7:],
    "oversize": lambda w: b"\x01" * 300 + b"\x00",
}


@pytest.mark.parametrize("case", sorted(FRAME_DAMAGE))
def test_damaged_frame_is_dropped_and_the_link_recovers(board, case):
    b = board
    before = settle(b, 1)
    stats = b.fw.link.link.stats
    errors = stats[S_CRC_ERRORS] + stats[S_COBS_ERRORS] + stats[S_OTHER_FRAME_ERRORS]
    n_cmd = b.fw.link.commands
    b.write_raw(b"\x00" + FRAME_DAMAGE[case](_cmd_frame(31337, OP_POWER_OFF)))
    b.run(5)
    assert stats[S_CRC_ERRORS] + stats[S_COBS_ERRORS] + stats[S_OTHER_FRAME_ERRORS] > errors
    assert b.fw.link.commands == n_cmd
    assert 31337 not in b.results
    assert settle(b) == before
    assert b.cmd(OP_ZONE_MANUAL, 1, MANUAL_DUTY[1]) == R_OK


@pytest.mark.parametrize("version,ftype", [(2, T_CMD), (0, T_CMD), (1, 0), (1, 12), (1, 15)])
def test_frame_with_bad_version_or_type_is_dropped(board, version, ftype):
    b = board
    before = settle(b, 1)
    n_cmd = b.fw.link.commands
    other = b.fw.link.link.stats[S_OTHER_FRAME_ERRORS]
    pl = cmd_payload(31338, OP_POWER_OFF)
    b.write_raw(b"\x00" + encode_frame_raw(ftype, F_ACK, 0, 0, pl, version=version))
    b.run(5)
    assert b.fw.link.link.stats[S_OTHER_FRAME_ERRORS] == other + 1
    assert b.fw.link.commands == n_cmd and 31338 not in b.results
    assert settle(b) == before


def test_truncated_frame_without_delimiter_corrupts_only_itself(board):
    """Half a POWER_OFF frame, then (glued to it) a real command: the glued
    frame fails its check, the host link resends it, the command is answered;
    the half frame never executes."""
    b = board
    before = settle(b, 1)
    w = _cmd_frame(31339, OP_POWER_OFF)
    b.write_raw(b"\x00" + w[:len(w) // 2])
    assert b.cmd(OP_ZONE_MANUAL, 2, MANUAL_DUTY[2], max_ticks=400) == R_OK
    assert 31339 not in b.results
    assert settle(b) == before


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(noise=st.binary(min_size=1, max_size=300), delimit=st.booleans())
def test_random_bytes_on_the_wire_change_nothing(noise, delimit):
    b = shared_board()
    before = settle(b, 1)
    n_cmd = b.fw.link.commands
    b.write_raw(noise + (b"\x00" if delimit else b""))
    b.run(3)
    assert b.fw.link.commands == n_cmd  # noise never passes the CRC as a command
    assert settle(b) == before
    # the link is still usable (a frame glued to the noise is resent)
    assert b.cmd(OP_ZONE_MANUAL, 0, MANUAL_DUTY[0], max_ticks=600) == R_OK


# -- repeated command ids --------------------------------------------------------------------


def test_repeated_id_runs_a_rail_cycle_once(board):
    b = board
    t0 = b.tick
    payload = cmd_payload(555, OP_RAIL_CYCLE, 5)
    b.send_payload(payload)
    b.run(5)
    assert [r.code for r in b.results[555]] == [R_OK]
    b.send_payload(payload)  # the host retries (e.g. across a session reset)
    b.run(5)
    assert [r.code for r in b.results[555]] == [R_OK, R_OK]  # the first verdict, again
    assert b.fw.link.duplicates == 1
    b.run(150)  # past the 1 s off time and the way back up
    assert [(r, lvl) for _, r, lvl in b.enables_since(t0)] == [(5, 0), (5, 1)]
    assert b.fw.power.state[5] == RAIL_ON


def test_repeated_id_in_the_same_batch_gets_one_result_and_runs_once(board):
    b = board
    before = settle(b, 1)
    b.send_payload(cmd_payload(556, OP_ZONE_MANUAL, 0, MANUAL_DUTY[0]))
    b.send_payload(cmd_payload(556, OP_POWER_OFF))  # same id, another command
    b.run(5)
    assert [r.code for r in b.results[556]] == [R_OK]
    assert b.fw.link.duplicates == 1
    assert settle(b) == before  # POWER_OFF never ran


def test_repeated_id_keeps_a_refusal(board):
    b = board
    b.send_payload(cmd_payload(557, OP_RAIL_OFF, 99))
    b.run(5)
    b.send_payload(cmd_payload(557, OP_RAIL_OFF, 2))  # now a valid target, same id
    b.run(20)
    assert [r.code for r in b.results[557]] == [R_UNKNOWN_TARGET, R_UNKNOWN_TARGET]
    assert b.fw.power.state[2] == RAIL_ON


@pytest.mark.parametrize("op,target,arg,field", [
    (OP_ZONE_MANUAL, 1, 700, "fan_duty"),
    (OP_ZONE_AUTO, 2, 0, "zone_requested"),
    (OP_ZONE_SETPOINT, 0, 50000, "zone_setpoint"),
    (OP_GPIO_WRITE, 3, 0, "gpio_levels"),
    (OP_ARM, 0, 0, "armed"),
    (OP_LOCK, 0, 0, "lock_cmd"),  # (the bolt boots unlocked in the sim)
    (OP_ESTOP, 0, 1, "soft_estop"),
    (OP_SET_HB_TIMEOUT, 0, 4000, "hb_timeout_ms"),
    (OP_RAIL_OFF, 5, 0, "rail_want"),
    (OP_SIM_FAULT, 4, FAULT_SENSOR_STUCK, "plant_faults"),
])
def test_fingerprint_sees_what_a_valid_command_changes(board, op, target, arg, field):
    """The before/after comparisons above are not vacuous: a valid command shows."""
    b = board
    before = settle(b, 1)
    assert b.cmd(op, target, arg, 30000) == R_OK
    after = settle(b, 1)
    assert after[field] != before[field]


def test_fresh_id_after_a_refusal_executes(board):
    b = board
    assert b.cmd(OP_RAIL_OFF, 99) == R_UNKNOWN_TARGET
    assert b.cmd(OP_RAIL_OFF, 4) == R_OK
    b.run(10)
    assert b.fw.power.state[4] == RAIL_OFF  # the harness really executes commands
