"""The console: demultiplexing, rendering of recorded frames, --raw, passthrough, --connect.

Most tests drive the pure parts (StreamDemux, ConsoleView, render_table, Console with a
fake port and a StringIO) with frames built by the codec; one runs `metal console
--connect --raw` against a real sim.
"""

from __future__ import annotations

import io
import json
import re
import struct
import subprocess
import sys
from typing import Any

import pytest
from click.testing import CliRunner

from metal.core import proto
from metal.core.describe import SEC_FANS, SEC_GPIO, SEC_RAILS, SEC_SENSORS
from metal.host.cli.console import console as console_command
from metal.host.codec import decode_frame, encode_frame, encode_frame_raw, FrameSplitter
from metal.host.console import (
    BadFrame,
    Console,
    ConsoleView,
    FrameItem,
    HostSession,
    StreamDemux,
    TextItem,
    frame_json,
)
from metal.host.sim_process import SimProcess

pytestmark = pytest.mark.timeout(60)

HELLO = {0: 1, 1: 1, 2: 4242, 3: 0, 4: "sim", 5: "0.1.0", 6: "sim-0001", 7: 0, 8: 4}
PARTS = [
    {0: 0, 1: 4, 2: SEC_SENSORS, 3: [["cpu0_die", 1, 0, 85000, 95000, -40000, 150000],
                                      ["dimm_a", 1, 1, 75000, 85000, -40000, 150000]]},
    {0: 1, 1: 4, 2: SEC_FANS, 3: [["cpu_fan0", 0, 12000, 300, 200]]},
    {0: 2, 1: 4, 2: SEC_RAILS, 3: [["p12v_main", 12000, -1, 100, 20000],
                                    ["p5v", 5000, 0, 50, 8000]]},
    {0: 3, 1: 4, 2: SEC_GPIO, 3: [["led", 1, 0, False], ["button", 0, 1, False]]},
]


def telemetry_payload() -> list[Any]:
    analog = struct.pack(
        "<hh" "H" "H" "HH" "HH",
        4125, 0x7FFF,  # 41.25 °C, no reading
        600,  # 60.0 %
        7200,  # rpm
        12000, 5000,  # mV
        1500, 250,  # mA
    ) + bytes([0x10, 0x20, 0x02])  # states: ok, stale | fan ok, rail on | rail on
    return [analog, 0b10, 0, 0, proto.STF_HOST_LOST | proto.STF_ARMED, proto.PWR_ON, 312, 845, 0, 0]


def recorded_frames() -> bytes:
    """What a board sends after a handshake, as wire bytes."""
    w = encode_frame(proto.T_HELLO, payload=HELLO)
    for i, p in enumerate(PARTS):
        w += encode_frame(proto.T_DESCRIBE, seq=i, payload=p)
    w += encode_frame(proto.T_TELEMETRY, seq=7, payload=telemetry_payload())
    w += encode_frame(proto.T_EVENT, seq=4, payload={0: 3, 1: proto.EV_RAIL_STATE, 2: 1,
                                                     3: proto.RAIL_FAULT, 4: 5000,
                                                     5: proto.RF_OVERCURRENT})
    w += encode_frame(proto.T_RESULT, seq=5, payload={0: 17, 1: proto.R_REJECTED_BY_INTERLOCK})
    w += encode_frame(proto.T_LOG, payload={0: 2, 1: "fan tach noisy"})
    return w


EXPECTED_TABLE = """\
sim sim-0001  power on  loop 312 µs (max 845)  overruns 0  telemetry 1  lost 0
SENSOR      °C STATE │ FAN      DUTY%  RPM STATE │ RAIL      STATE      V     A
cpu0_die 41.25 ok    │ cpu_fan0  60.0 7200 ok    │ p12v_main on    12.000 1.500
dimm_a       - stale │                           │ p5v       on     5.000 0.250
gpio    0x0002  high: button
status  host_lost armed
interlocks tripped: -  latched: -"""


class FakePort:
    def __init__(self) -> None:
        self.written = bytearray()

    def write(self, data: bytes) -> int:
        self.written += data
        return len(data)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_recorded_frames_render_lines_and_the_table() -> None:
    out = io.StringIO()
    port = FakePort()
    clock = Clock()
    con = Console(port, out, clock=clock)
    con.on_bytes(recorded_frames())
    con.tick()
    text = out.getvalue()
    lines = text.splitlines()
    assert lines[0] == ("HELLO sim uid sim-0001 fw 0.1.0 proto 1..1 boot 4242 session 0 "
                        "policy 0 describe 4 parts")
    assert lines[1] == "DESCRIBE 2 sensors, 1 fans, 2 rails, 0 zones, 2 gpio, 0 interlocks"
    assert "  rails:   p12v_main(12V) p5v(5V)" in lines
    assert "EVENT #3 rail_state p5v(1) value fault reason overcurrent @5000ms" in lines
    assert "RESULT id 17 rejected_by_interlock" in lines
    assert "LOG warning: fan tach noisy" in lines
    assert text.endswith(EXPECTED_TABLE + "\n\n")
    assert con.view.table() == EXPECTED_TABLE
    assert port.written == b""  # passive: the console never speaks


def test_repeated_hello_and_retransmitted_event_are_shown_once() -> None:
    v = ConsoleView()
    assert len(v.apply(proto.T_HELLO, HELLO)) == 1
    assert v.apply(proto.T_HELLO, HELLO) == []
    ev = {0: 1, 1: proto.EV_BOOT, 2: 0, 3: 0, 4: 0}
    assert v.apply(proto.T_EVENT, ev) == ["EVENT #1 boot value power_on @0ms"]
    assert v.apply(proto.T_EVENT, ev) == []
    # telemetry before any DESCRIBE: one notice, no table
    assert "no DESCRIBE" in v.apply(proto.T_TELEMETRY, telemetry_payload(), 1)[0]
    assert v.apply(proto.T_TELEMETRY, telemetry_payload(), 2) == []
    assert v.table() is None
    # a garbled payload is reported, not raised
    assert v.apply(proto.T_DESCRIBE, {0: 0})[0].startswith("! DESCRIBE payload not understood")


def test_table_stacks_when_narrow() -> None:
    v = ConsoleView()
    for p in PARTS:
        v.apply(proto.T_DESCRIBE, p)
    v.apply(proto.T_TELEMETRY, telemetry_payload(), 0)
    narrow = v.table(width=40)
    assert narrow is not None
    assert "│" not in narrow
    assert "cpu0_die 41.25 ok" in narrow.splitlines()


def test_raw_prints_one_json_object_per_frame() -> None:
    out = io.StringIO()
    con = Console(FakePort(), out, raw=True, clock=Clock())
    con.on_bytes(recorded_frames() + encode_frame(proto.T_ACK))
    con.tick()
    objs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [o["type"] for o in objs] == (
        ["HELLO"] + ["DESCRIBE"] * 4 + ["TELEMETRY", "EVENT", "RESULT", "LOG", "ACK"])
    assert objs[0]["decoded"]["board"] == "sim"
    assert objs[4]["decoded"]["layout"]["rails"][1]["parent"] == "p12v_main"
    tel = objs[5]
    assert tel["seq"] == 7
    assert tel["payload"][0] == telemetry_payload()[0].hex()
    assert tel["decoded"]["sensors"][0] == {"name": "cpu0_die", "temp_c": 41.25, "state": "ok"}
    assert objs[6]["decoded"]["source_name"] == "p5v"
    assert objs[7]["decoded"]["result"] == "rejected_by_interlock"
    assert frame_json(proto.T_LOG, {0: 1, 1: "x"}, 0) == (
        '{"type":"LOG","seq":0,"payload":{"0":1,"1":"x"}}')


def test_demux_passes_text_through_and_finds_frames() -> None:
    d = StreamDemux(idle_s=0.05)
    hello = encode_frame(proto.T_HELLO, payload=HELLO)
    banner = b"MicroPython v1.24.0 on 2024-10-25; rp2\r\n"
    # a banner printed right before a frame, with no 0x00 between them
    items = d.feed(banner + hello, now=0.0)
    assert isinstance(items[0], TextItem) and items[0].data == banner
    assert isinstance(items[1], FrameItem) and items[1].frame.payload == HELLO
    # a REPL prompt has no delimiter: it shows once the line is idle
    assert d.feed(b">>> ", now=1.0) == []
    assert d.flush(now=1.01) == []
    assert d.flush(now=1.06) == [TextItem(b">>> ")]
    # a damaged frame is reported as such (not printed as text)
    bad = bytearray(encode_frame(proto.T_TELEMETRY, payload=telemetry_payload()))
    bad[10] ^= 0x55
    (item,) = d.feed(bytes(bad), now=2.0)
    assert isinstance(item, BadFrame) and item.error.code == proto.E_CRC
    # text followed by a delimiter is still text; empty chunks vanish
    assert d.feed(b"\x00\x00ok\r\n\x00", now=3.0) == [TextItem(b"ok\r\n")]
    # a frame split across reads is reassembled
    assert d.feed(hello[:5], now=4.0) == []
    assert d.flush(now=9.0) == []  # binary: never flushed as text
    (item,) = d.feed(hello[5:], now=9.1)
    assert isinstance(item, FrameItem)


def test_console_passthrough_of_text_and_keys() -> None:
    out = io.StringIO()
    port = FakePort()
    clock = Clock()
    con = Console(port, out, clock=clock)
    con.on_bytes(b"Traceback (most recent call last):\r\n  File \"main.py\"\r\n")
    con.on_bytes(b">>> ")
    clock.t += 0.1
    con.tick()
    assert out.getvalue() == 'Traceback (most recent call last):\r\n  File "main.py"\r\n>>> '
    assert con.on_keys(b"print(1)\r") is False
    assert con.on_keys(b"\x03") is False  # Ctrl-C goes to the device
    assert con.on_keys(b"x\x1dy") is True  # Ctrl-] leaves; nothing after it is sent
    assert bytes(port.written) == b"print(1)\r\x03x"
    # a frame after a prompt starts on a new line
    con.on_bytes(encode_frame(proto.T_LOG, payload={0: 1, 1: "hi"}))
    assert out.getvalue().endswith(">>> \nLOG info: hi\n")


def test_connect_mode_answers_hello_and_sends_heartbeats() -> None:
    out = io.StringIO()
    port = FakePort()
    con = Console(port, out, connect=True, clock=Clock())
    con.tick()  # the host probes first
    con.on_bytes(encode_frame(proto.T_HELLO, payload=HELLO))
    con.tick()
    sent = [decode_frame(c) for c in FrameSplitter().feed(bytes(port.written))]
    assert sent and all(f.ftype == proto.T_HELLO for f in sent)
    session = sent[-1].payload[proto.HELLO_SESSION]
    assert sent[-1].payload[proto.HELLO_PROTO] == 1 and session != 0
    # the board echoes the session: connected, and a heartbeat goes out
    port.written.clear()
    con.on_bytes(encode_frame(proto.T_HELLO, payload={**HELLO, 3: session}))
    con.tick()
    assert con.session is not None and con.session.connected
    sent = [decode_frame(c) for c in FrameSplitter().feed(bytes(port.written))]
    hb = [f for f in sent if f.ftype == proto.T_HEARTBEAT]
    assert len(hb) == 1 and proto.HB_HOST_MS in hb[0].payload
    assert "session %d" % session in out.getvalue()


def test_host_session_handshake_commands_and_rtt() -> None:
    now = [1000]
    hs = HostSession(clock=lambda: now[0])
    (probe,) = [decode_frame(c) for c in FrameSplitter().feed(hs.output())]
    session = probe.payload[proto.HELLO_SESSION]
    assert not hs.connected
    msgs = hs.feed(encode_frame(proto.T_HELLO, payload={**HELLO, 3: session}))
    assert [m.ftype for m in msgs] == [proto.T_HELLO] and hs.connected and hs.sessions == 1
    assert hs.command(proto.OP_POWER_ON) == 1
    assert hs.command(proto.OP_RAIL_ON, 2, arg=1) == 2
    sent = [decode_frame(c) for c in FrameSplitter().feed(hs.output())]
    assert [f.ftype for f in sent] == [proto.T_CMD, proto.T_CMD, proto.T_HEARTBEAT]
    assert sent[0].payload == {0: 1, 1: proto.OP_POWER_ON, 2: 0}
    assert sent[1].payload == {0: 2, 1: proto.OP_RAIL_ON, 2: 2, 3: 1}
    assert sent[2].payload == {0: 1000}
    now[0] = 1100
    assert hs.output() == b""  # next heartbeat is due at 1500
    msgs = hs.feed(encode_frame(proto.T_HEARTBEAT, payload={0: 1000, 1: 77}))
    assert [m.ftype for m in msgs] == [proto.T_HEARTBEAT]
    assert hs.rtt_ms == 100 and hs.board_ms == 77
    now[0] = 1500
    (hb,) = [decode_frame(c) for c in FrameSplitter().feed(hs.output())
             if decode_frame(c).ftype == proto.T_HEARTBEAT]
    assert hb.payload == {0: 1500}


def test_cli_console_raw_connect_against_the_sim() -> None:
    with SimProcess("cpython") as sp:
        assert sp.url is not None
        r = subprocess.run(
            [sys.executable, "-m", "metal.host.cli.console", "--connect", "--raw",
             "--duration", "2.5", sp.url],
            capture_output=True, text=True, timeout=30,
        )
    assert r.returncode == 0, r.stderr
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    types = [o["type"] for o in objs]
    assert "HELLO" in types and "DESCRIBE" in types and "HEARTBEAT" in types
    tels = [o for o in objs if o["type"] == "TELEMETRY" and "decoded" in o]
    assert len(tels) >= 5
    temps = [s["temp_c"] for s in tels[-1]["decoded"]["sensors"]]
    assert len(temps) == 8 and all(15 <= t <= 60 for t in temps)
    layouts = [o["decoded"]["layout"] for o in objs if o["type"] == "DESCRIBE"
               and "layout" in o.get("decoded", {})]
    assert len(layouts) == 1 and len(layouts[0]["gpio"]) == 16


def test_cli_console_table_against_the_sim_and_bad_url() -> None:
    with SimProcess("cpython") as sp:
        assert sp.url is not None
        r = CliRunner().invoke(console_command, ["--connect", "--duration", "2", sp.url])
    assert r.exit_code == 0, r.output
    assert "HELLO sim uid sim-0001" in r.output
    assert re.search(r"^cpu0_die +\d+\.\d\d ok", r.output, re.M)
    assert "p12v_main off" in r.output
    r = CliRunner().invoke(console_command, ["socket://127.0.0.1:1"])
    assert r.exit_code == 1 and "cannot open socket://127.0.0.1:1" in r.output
