"""``metal bench codec``: the wire codec's size and speed.

Keys (stable, other tools read them):

* ``telemetry_frame_bytes``: one TELEMETRY frame of the reference sim board on
  the wire (header, CBOR payload, CRC, COBS, delimiter), rails on, values as
  the running firmware produces them;
* ``telemetry_payload_bytes`` and ``framing_overhead_pct`` (wire bytes over
  the CBOR payload, in percent);
* ``host_decode_us`` / ``host_encode_us``: per frame with the host codec
  (``metal.host.codec``: stream split + COBS + CRC + cbor2) on CPython;
* ``core_encode_us`` / ``core_decode_us``: the board codec (TelemetryEncoder +
  encode_frame; Deframer + a full Decoder walk) per runtime: ``cpython``,
  ``micropython-unix``, ``micropython-wasm`` (null with ``*_error`` when a VM
  is missing).
"""

from __future__ import annotations

import time
from typing import Any

from metal.host import codec as host_codec
from metal.host import mpvm
from metal.host.bench.vm_scripts import codec_script, parse

VM_RUNTIMES = {"micropython-unix": "unix", "micropython-wasm": "wasm"}


def _reference_frame() -> tuple[bytes, bytes]:
    """(wire frame, CBOR payload) of a TELEMETRY from the sim firmware, rails on."""
    from metal.boards.sim.board import make_config
    from metal.boards.sim.hal import SimHal
    from metal.core import proto as P
    from metal.core.firmware import Firmware

    cfg = make_config()
    hal = SimHal(cfg)
    fw = Firmware(cfg, hal, 1, "sim-bench")
    fw.execute(P.OP_POWER_ON, 0, 0, 0)
    t = 0
    for _ in range(300):
        fw.loop.tick(t)
        t += 10_000
    payload = bytes(fw.telemetry.buf[: fw.telemetry.len])
    wire = host_codec.encode_frame_raw(P.T_TELEMETRY, P.F_ACK, 7, 3, payload)
    return wire, payload


def _best_per_call_us(fn: Any, n: int, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return round(best / 1000, 3)


def run(iterations: int = 20_000, vm_iterations: int = 2_000, vms: bool = True) -> dict[str, Any]:
    wire, payload = _reference_frame()
    decoded = host_codec.decode_frame(wire)
    splitter = host_codec.FrameSplitter()

    def host_decode() -> None:
        for chunk in splitter.feed(wire):
            host_codec.decode_frame(chunk)

    obj = decoded.payload

    def host_encode() -> None:
        host_codec.encode_frame(decoded.ftype, decoded.seq, decoded.ack, obj, decoded.flags)

    result: dict[str, Any] = {
        "telemetry_frame_bytes": len(wire),
        "telemetry_payload_bytes": len(payload),
        "framing_overhead_pct": round(100.0 * (len(wire) - len(payload)) / len(payload), 1),
        "host_decode_us": _best_per_call_us(host_decode, iterations),
        "host_encode_us": _best_per_call_us(host_encode, iterations),
        "core_encode_us": {},
        "core_decode_us": {},
    }
    runs = {"cpython": _run_cpython(vm_iterations)}
    if vms:
        for name, vm in VM_RUNTIMES.items():
            runs[name] = _run_vm(vm, vm_iterations)
    for name, got in runs.items():
        if "error" in got:
            result["core_encode_us"][name] = None
            result["core_decode_us"][name] = None
            result.setdefault("errors", {})[name] = got["error"]
        else:
            result["core_encode_us"][name] = round(got["encode_ns"] / 1000, 1)
            result["core_decode_us"][name] = round(got["decode_ns"] / 1000, 1)
    return result


def _run_cpython(n: int) -> dict[str, Any]:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(codec_script(n), "codec_script", "exec"), {"__name__": "__bench__"})  # noqa: S102
    return dict(parse(buf.getvalue()))


def _run_vm(vm: str, n: int) -> dict[str, Any]:
    reason = mpvm.missing(vm)
    if reason:
        return {"error": reason}
    r = mpvm.run(vm, codec_script(n), timeout=300, heapsize="2M")
    if r.rc != 0:
        return {"error": f"{vm} VM failed: {r.stderr.strip()[-400:]}"}
    return dict(parse(r.stdout))
