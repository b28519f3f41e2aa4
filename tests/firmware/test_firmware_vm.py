"""The whole sim-board firmware in real MicroPython VMs: zero allocations per tick.

10,000 consecutive ticks with link traffic (telemetry out; commands in, some
rejected or aimed at unknown targets; results, events and heartbeat echoes
out) run under ``heap_lock`` with the collector disabled, in the 32-bit WASM
VM and in the unix port; ``gc.mem_alloc()`` must not move.
"""

from metal.host.bench.vm_scripts import firmware_script, parse

TICKS = 10_000


def test_10k_ticks_with_link_traffic_allocate_nothing(mpvm):
    r = mpvm.run(firmware_script(TICKS), timeout=240, heapsize="2M").check()
    got = parse(r.stdout)
    assert got["memory_error"] == 0, r.describe()
    assert got["alloc_bytes"] == 0, r.describe()
    assert got["connected"] == 1
    # the traffic really flowed during the locked ticks
    assert got["cmds_sent"] >= TICKS // 7 - 2
    # every command got exactly one RESULT (a few may still be in flight)
    assert got["cmds_sent"] - 16 <= got["results"] <= got["cmds_sent"]
    assert got["board_commands"] >= got["results"]
    assert got["telemetry"] >= TICKS // 10 - 5
    assert got["heartbeats"] >= TICKS // 50 - 5
    assert got["events"] > 100  # rail and zone changes, gpio writes
    assert got["describe_parts"] >= 8
    assert got["host_lost"] == 0
