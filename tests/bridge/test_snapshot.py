"""The device snapshot: readable units, status rules, nulls before telemetry, cached JSON."""

from __future__ import annotations

import json
from typing import Any

from metal.boards.sim.board import make_config
from metal.boards.sim.hal import SimHal
from metal.core.compat import ticks_us
from metal.core.describe import build_parts
from metal.core.firmware import Firmware
from metal.host.bridge.snapshot import SnapshotCache, build_snapshot, encode_snapshot
from metal.host.codec import decode_payload
from metal.host.telemetry_view import decode_describe, decode_telemetry

CONFIG = make_config()
LAYOUT = decode_describe(build_parts(CONFIG))


def real_telemetry(ticks: int = 30) -> dict[str, Any]:
    """Telemetry the real firmware encodes after a few ticks, decoded by the host."""
    hal = SimHal(CONFIG)
    fw = Firmware(CONFIG, hal, 123, "snap")
    t = ticks_us()
    for i in range(ticks):
        fw.loop.tick((t + i * 10000) & 0x3FFFFFFF)
    payload = decode_payload(bytes(fw.telemetry.buf[: fw.telemetry.len]))
    return decode_telemetry(LAYOUT, payload)


def base(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(device_id="d1", board="sim", online=True, simulated=True,
                                firmware_version="0.1.0", boot_id=7, layout=LAYOUT,
                                telemetry=None)
    args.update(kw)
    return build_snapshot(**args)


def test_shape_and_units_from_real_telemetry() -> None:
    tel = real_telemetry()
    s = base(telemetry=tel, zone_modes=["auto", "manual", "auto"],
             zone_setpoints_c=[None, 40.0, None], link={"frames_rx": 5}, updated_at=1.5)
    assert set(s) == {"id", "board", "online", "simulated", "firmware_version", "boot_id",
                      "power", "thermal", "gpio", "security", "interlocks", "loop", "link",
                      "updated_at"}
    assert s["id"] == "d1" and s["boot_id"] == 7 and s["updated_at"] == 1.5
    rail = s["power"]["rails"][0]
    assert set(rail) >= {"name", "state", "voltage_v", "current_a", "fault"}
    assert rail["name"] == "p12v_main" and rail["state"] == "off" and rail["nominal_v"] == 12.0
    assert s["power"]["state"] == "off"
    sensor = s["thermal"]["sensors"][0]
    assert set(sensor) >= {"name", "temp_c", "status"}
    assert isinstance(sensor["temp_c"], float) and 10 < sensor["temp_c"] < 60
    assert sensor["status"] == "ok"
    fan = s["thermal"]["fans"][0]
    assert set(fan) >= {"name", "duty_pct", "speed_rpm", "status"}
    assert 0 <= fan["duty_pct"] <= 100
    zones = s["thermal"]["zones"]
    assert [z["mode"] for z in zones] == ["auto", "manual", "auto"]
    assert [z["setpoint_c"] for z in zones] == [60.0, 40.0, 45.0]  # default from DESCRIBE
    cpu_fans = [f["duty_pct"] for f in s["thermal"]["fans"] if f["zone"] == "cpu"]
    assert zones[0]["duty_pct"] == max(cpu_fans)
    gpio = {g["name"]: g for g in s["gpio"]}
    assert gpio["bmc_reset_n"] == {"name": "bmc_reset_n", "direction": "out", "level": 1}
    assert gpio["led_status"]["level"] == 0
    assert s["interlocks"][18] == {"id": 18, "name": "estop", "state": "ok", "latched": False,
                                   "action": "lockout"}
    assert s["security"]["fitted"] == {"tamper": True, "lock": True, "door": True,
                                       "estop": True}
    assert s["security"]["estop"] is False
    assert s["loop"]["tick_budget_us"] == 10000 and isinstance(s["loop"]["overruns"], int)
    assert s["link"] == {"frames_rx": 5}
    # no scaled integer leaks: every temperature/voltage is in SI units
    raw = encode_snapshot(s)
    assert json.loads(raw) == s


def test_status_rules() -> None:
    tel = real_telemetry()
    tel["sensors"][0] = {"name": "cpu0_die", "temp_c": 96.0, "state": "ok"}  # crit 95
    tel["sensors"][1] = {"name": "cpu1_die", "temp_c": 86.0, "state": "ok"}  # warn 85
    tel["sensors"][2] = {"name": "cpu_vrm", "temp_c": None, "state": "open"}
    tel["rails"][3] = {"name": "p1v8", "state": "fault", "voltage_v": 0.0, "current_a": 0.0}
    tel["rails"][4] = {"name": "p1v0_core", "state": "fault", "voltage_v": 0.0,
                       "current_a": 0.0}
    tel["interlocks"] = {"tripped": ["estop"], "latched": ["estop"]}
    tel["status"] = ["estop", "lockout", "host_lost"]
    faults: list[str | None] = [None] * 6
    faults[3] = "overcurrent"
    s = base(telemetry=tel, rail_faults=faults)
    st = [x["status"] for x in s["thermal"]["sensors"][:3]]
    assert st == ["critical", "warning", "open"]
    assert s["thermal"]["sensors"][2]["temp_c"] is None
    rails = {r["name"]: r for r in s["power"]["rails"]}
    assert rails["p1v8"]["fault"] == "overcurrent"
    assert rails["p1v0_core"]["fault"] == "fault"  # reason not known (yet)
    assert rails["p5v"]["fault"] is None
    il = {i["name"]: i for i in s["interlocks"]}
    assert il["estop"]["state"] == "tripped" and il["estop"]["latched"] is True
    assert s["security"]["estop"] is True and s["security"]["lockout"] is True
    assert s["loop"]["host_lost"] is True and s["loop"]["fault"] is False


def test_before_telemetry_and_without_layout() -> None:
    s = base()
    assert s["power"]["state"] is None
    assert all(r["state"] is None and r["voltage_v"] is None for r in s["power"]["rails"])
    assert all(x["temp_c"] is None and x["status"] is None for x in s["thermal"]["sensors"])
    assert all(z["duty_pct"] is None for z in s["thermal"]["zones"])
    assert all(i["state"] is None for i in s["interlocks"])
    assert s["security"]["armed"] is None
    s = base(layout=None, online=False)
    assert s["power"]["rails"] == [] and s["gpio"] == [] and s["online"] is False
    json.loads(encode_snapshot(s))


def test_cache_serializes_once_per_update() -> None:
    c = SnapshotCache()
    assert c.json == b"{}" and c.version == 0
    s = base(telemetry=real_telemetry())
    raw = c.update(s)
    assert c.json is raw and c.data is s and c.version == 1
    assert json.loads(c.json)["id"] == "d1"
    assert c.json is c.json  # serving is a reference copy
