"""telemetry_view: DESCRIBE parts and TELEMETRY payloads into readable units.

The payloads come from the board's own encoders (metal.core.describe,
metal.core.telemetry), so these tests also pin the host decoder to the firmware's
byte layout.
"""

from __future__ import annotations

import struct
from array import array

import cbor2
import pytest

from metal.boards.sim.board import make_config
from metal.core import proto
from metal.core.describe import SEC_FANS, SEC_RAILS, SEC_SENSORS, build_parts
from metal.core.telemetry import TelemetryEncoder
from metal.host.codec import decode_payload
from metal.host.telemetry_view import (
    EVENT_KINDS,
    Layout,
    TelemetryError,
    decode_describe,
    decode_event,
    decode_hello,
    decode_log,
    decode_result,
    decode_telemetry,
    flag_names,
)


@pytest.fixture(scope="module")
def sim_layout() -> Layout:
    return decode_describe(build_parts(make_config()))


class FakeSensors:
    def __init__(self, mc: list[int], state: list[int]) -> None:
        self.mc = array("i", mc)
        self.state = bytearray(state)


class FakeFans:
    def __init__(self, duty: list[int], rpm: list[int], state: list[int]) -> None:
        self.duty = array("i", duty)
        self.rpm = array("i", rpm)
        self.state = bytearray(state)


class FakePower:
    def __init__(self, mv: list[int], ma: list[int], state: list[int], power_state: int) -> None:
        self.mv = array("i", mv)
        self.ma = array("i", ma)
        self.state = bytearray(state)
        self.power_state = power_state


def test_describe_of_the_sim_board(sim_layout: Layout) -> None:
    lay = sim_layout
    assert lay.complete
    assert lay.counts == (8, 4, 6)
    assert len(lay.gpio) == 16 and len(lay.zones) == 3
    assert [r["name"] for r in lay.rails] == [
        "p12v_main", "p5v", "p3v3", "p1v8", "p1v0_core", "p12v_fans"]
    assert lay.rails[0]["parent"] is None
    assert lay.rails[1]["parent"] == "p12v_main"
    assert lay.rails[5]["parent"] == "p12v_main"
    assert lay.rails[2]["nominal_v"] == 3.3
    assert lay.rails[4]["overcurrent_a"] == 30.0
    s0 = lay.sensors[0]
    assert s0 == {"name": "cpu0_die", "kind": "ntc", "zone": "cpu", "warn_c": 85.0,
                  "crit_c": 95.0, "min_c": -40.0, "max_c": 150.0}
    assert lay.sensors[2]["kind"] == "tmp117"
    assert lay.sensors[7]["kind"] == "lm75"
    assert lay.fans[2] == {"name": "mem_fan", "zone": "memory", "max_rpm": 5000,
                           "stall_rpm": 200, "min_duty_pct": 20.0}
    assert lay.gpio[0]["direction"] == "out" and lay.gpio[8]["direction"] == "in"
    assert lay.limits["tick_us"] == 10000
    assert lay.limits["host_lost_action"] in ("hold", "power_down")
    assert lay.security["tamper"] is True
    assert lay.interlocks[0]["name"].endswith("_crit")
    assert lay.summary().startswith("8 sensors, 4 fans, 6 rails, 3 zones, 16 gpio")


def test_describe_parts_in_any_order_and_repeated() -> None:
    parts = [decode_payload(p) for p in build_parts(make_config())]
    shuffled = list(reversed(parts)) + parts[:3]
    a = decode_describe(parts)
    b = decode_describe(shuffled)
    assert a.to_dict() == b.to_dict()
    partial = decode_describe(parts[:2])
    assert not partial.complete
    assert "parts 2/" in partial.summary()


def test_describe_tolerates_short_and_long_items_and_rejects_garbage() -> None:
    parts = [
        {0: 0, 1: 3, 2: SEC_RAILS, 3: [["r0", 3300], ["r1", 1800, 0, 50, 1000, "future"]]},
        {0: 1, 1: 3, 2: SEC_SENSORS, 3: []},
        {0: 2, 1: 3, 2: 99, 3: [["mystery", 1]]},
    ]
    lay = decode_describe(parts)
    assert lay.rails[0] == {"name": "r0", "nominal_v": 3.3, "parent": None,
                            "pg_timeout_ms": None, "overcurrent_a": None}
    assert lay.rails[1]["parent"] == "r0"
    assert lay.unknown_sections == {99: [["mystery", 1]]}
    with pytest.raises(ValueError, match="keys 0..3"):
        decode_describe([{0: 0, 1: 1}])
    with pytest.raises(ValueError, match="out of range"):
        decode_describe([{0: 2, 1: 2, 2: SEC_FANS, 3: []}])
    with pytest.raises(ValueError, match="not \\[name"):
        decode_describe([{0: 0, 1: 1, 2: SEC_FANS, 3: [[1, 2]]}])


def test_telemetry_round_trip_through_the_board_encoder(sim_layout: Layout) -> None:
    enc = TelemetryEncoder(8, 4, 6)
    sensors = FakeSensors(
        [41250, -5000, 0, 30000, 30010, 99990, 25000, 25000],
        [proto.SENSOR_OK, proto.SENSOR_OK, proto.SENSOR_OPEN, proto.SENSOR_OK,
         proto.SENSOR_OK, proto.SENSOR_OK, proto.SENSOR_STALE, proto.SENSOR_RANGE])
    fans = FakeFans([600, 1000, 0, 255], [7200, 12000, 0, 2460],
                    [proto.FAN_OK, proto.FAN_OK, proto.FAN_STALLED, proto.FAN_SPINUP])
    power = FakePower([12000, 5000, 3300, 0, 0, 11950], [500, 1000, 1500, 0, 0, 695],
                      [proto.RAIL_ON, proto.RAIL_ON, proto.RAIL_ON, proto.RAIL_SEQ_ON,
                       proto.RAIL_OFF, proto.RAIL_FAULT], proto.PWR_PARTIAL)
    n = enc.encode(sensors, fans, power, (1 << 0) | (1 << 9), 1 << 12, 1 << 18,
                   proto.STF_HOST_LOST | proto.STF_DOOR_OPEN, 312, 845, 2, 1)
    assert n > 0
    tel = decode_telemetry(sim_layout, decode_payload(bytes(enc.buf[:n])))

    assert [(s["name"], s["temp_c"], s["state"]) for s in tel["sensors"]] == [
        ("cpu0_die", 41.25, "ok"), ("cpu1_die", -5.0, "ok"), ("cpu_vrm", None, "open"),
        ("dimm_a", 30.0, "ok"), ("dimm_b", 30.01, "ok"), ("io_hub", 99.99, "ok"),
        ("psu_hot", None, "stale"), ("io_board", None, "out_of_range")]
    assert tel["fans"] == [
        {"name": "cpu_fan0", "duty_pct": 60.0, "speed_rpm": 7200, "state": "ok"},
        {"name": "cpu_fan1", "duty_pct": 100.0, "speed_rpm": 12000, "state": "ok"},
        {"name": "mem_fan", "duty_pct": 0.0, "speed_rpm": 0, "state": "stalled"},
        {"name": "io_fan", "duty_pct": 25.5, "speed_rpm": 2460, "state": "spinning_up"}]
    assert [(r["state"], r["voltage_v"], r["current_a"]) for r in tel["rails"]] == [
        ("on", 12.0, 0.5), ("on", 5.0, 1.0), ("on", 3.3, 1.5), ("seq_on", 0.0, 0.0),
        ("off", 0.0, 0.0), ("fault", 11.95, 0.695)]
    assert tel["gpio"] == {"levels": 0x201, "high": ["led_status", "gpio_in_1"]}
    assert tel["interlocks"]["tripped"] == [sim_layout.interlocks[12]["name"]]
    assert tel["interlocks"]["latched"] == ["estop"]
    assert tel["status"] == ["host_lost", "door_open"]
    assert tel["power_state"] == "partial"
    assert (tel["tick_us"], tel["tick_max_us"], tel["overruns"], tel["queue_overflows"]) == (
        312, 845, 2, 1)


def test_encode_into_writes_the_same_payload_anywhere() -> None:
    """encode_into (what the firmware uses: straight into the link's slot)
    gives encode's bytes at any offset and touches nothing around them;
    cbor2 reads the positional array, analog block first."""
    enc = TelemetryEncoder(3, 1, 2)  # 6 states: 3 bytes of nibbles
    sensors = FakeSensors([25000, 99999, -300], [proto.SENSOR_OK, proto.SENSOR_SHORT,
                                                  proto.SENSOR_OK])
    fans = FakeFans([1000], [70000], [proto.FAN_OFF])
    power = FakePower([-5, 3300], [100, 70000], [proto.RAIL_OFF, proto.RAIL_ON], proto.PWR_OFF)
    args = (sensors, fans, power, 5, 0, 1 << 29, 0x1FF, 23, 24, 65536, (1 << 30) - 1)
    n = enc.encode(*args)
    assert n == enc.len and n > 0
    want = bytes(enc.buf[:n])
    for off in (0, 1, 200, 248 * 3):
        buf = bytearray(b"\xee" * (off + 248 + 7))
        assert enc.encode_into(buf, off, *args) == n
        assert bytes(buf[off:off + n]) == want
        assert buf[:off] == b"\xee" * off and buf[off + n:] == b"\xee" * (248 + 7 - n)
    p = cbor2.loads(want)
    assert len(p) == 10 and len(p[0]) == enc.analog_len
    assert p[0][:6] == struct.pack("<hhh", 2500, 0x7FFF, -30)
    assert p[0][6:18] == struct.pack("<HHHHHH", 1000, 0xFFFF, 0, 3300, 100, 0xFFFF)
    assert p[0][18:] == bytes([proto.SENSOR_SHORT << 4, proto.FAN_OFF << 4,
                               proto.RAIL_ON << 4 | proto.RAIL_OFF])
    assert p[1:] == [5, 0, 1 << 29, 0x1FF, proto.PWR_OFF, 23, 24, 65536, (1 << 30) - 1]
    # a value beyond 30 bits (or negative) in the tail: 0, no telemetry
    assert enc.encode(sensors, fans, power, 0, 0, 0, 0, 0, 0, 0, 1 << 30) == 0
    assert enc.encode(sensors, fans, power, -1, 0, 0, 0, 0, 0, 0, 0) == 0


def test_telemetry_layout_mismatch_and_short_payload() -> None:
    lay = decode_describe([
        {0: 0, 1: 3, 2: SEC_SENSORS, 3: [["t0", 1, 0, 1, 2, 0, 3]]},
        {0: 1, 1: 3, 2: SEC_FANS, 3: [["f0", 0, 5000, 200, 200]]},
        {0: 2, 1: 3, 2: SEC_RAILS, 3: [["r0", 12000, -1, 50, 0]]},
    ])
    analog = struct.pack("<hHHHH", 2345, 500, 2000, 11900, 300) + bytes([0x30, 0x02])
    tel = decode_telemetry(lay, [analog, 1])  # a board that sends only two positions
    assert tel["sensors"] == [{"name": "t0", "temp_c": 23.45, "state": "ok"}]
    assert tel["fans"][0]["state"] == "off"
    assert tel["rails"][0]["state"] == "on"
    assert tel["gpio"]["high"] == ["line0"]  # no gpio in the layout: numbered
    assert tel["power_state"] is None and tel["status"] == []
    with pytest.raises(TelemetryError, match="needs 12"):
        decode_telemetry(lay, [analog[:-1]])
    with pytest.raises(TelemetryError):
        decode_telemetry(lay, {0: analog})


def test_names_of_hello_event_result_log(sim_layout: Layout) -> None:
    h = decode_hello({0: 1, 1: 1, 2: 77, 3: 0, 4: "sim", 5: "0.1.0", 6: "u", 7: 0, 8: 11})
    assert h == {"proto_min": 1, "proto_max": 1, "boot_id": 77, "session": 0, "board": "sim",
                 "fw_version": "0.1.0", "uid": "u", "policy_version": 0, "describe_parts": 11}
    ev = decode_event(sim_layout, {0: 5, 1: proto.EV_RAIL_STATE, 2: 1, 3: proto.RAIL_FAULT,
                                   4: 1234, 5: proto.RF_PG_TIMEOUT})
    assert ev["kind"] == "rail_state" and ev["source_name"] == "p5v"
    assert ev["value_name"] == "fault" and ev["reason"] == "pg_timeout"
    ev = decode_event(None, {0: 6, 1: proto.EV_OVERHEAT_START, 2: 0, 3: 96500, 4: 1})
    assert ev["source_name"] is None and ev["value_c"] == 96.5
    assert decode_event(sim_layout, {0: 7, 1: 200, 2: 0, 3: 0, 4: 0})["kind"] == "unknown(200)"
    assert EVENT_KINDS[proto.EV_ESTOP] == "estop"
    ev = decode_event(None, {0: 8, 1: proto.EV_SAFE_STATE, 2: 1, 3: 0, 4: 0})
    assert ev["source_name"] == "loop_fault"
    assert decode_event(None, {0: 1, 1: proto.EV_BOOT, 2: 0, 3: 1, 4: 0})["value_name"] == "commanded"
    assert decode_result({0: 9, 1: proto.R_REJECTED_BY_INTERLOCK}) == {
        "id": 9, "code": 1, "result": "rejected_by_interlock"}
    assert decode_result({0: 9, 1: 0, 2: 5})["value"] == 5
    assert decode_log({0: 2, 1: "hot"}) == {"level": "warning", "text": "hot"}
    assert flag_names(proto.STF_ESTOP | proto.STF_LOCKOUT | (1 << 20)) == [
        "estop", "lockout", "bit20"]
