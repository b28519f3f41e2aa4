"""Store: WAL durability, schema versioning, dedup, paging, commands, desired state."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metal.host.bridge.store import (
    COMMAND_ID_LIMIT,
    SCHEMA_VERSION,
    GenerationConflict,
    IdempotencyConflict,
    InvalidTransition,
    SchemaTooNew,
    Store,
    StoreError,
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "bridge.sqlite3"


@pytest.fixture
def store(db: Path):
    s = Store(db)
    yield s
    s.close()


def _tables(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master"))
    finally:
        conn.close()


# -- durability settings and schema -----------------------------------------------------


def test_wal_mode_and_full_sync(store: Store) -> None:
    assert store.pragma("journal_mode") == "wal"
    assert store.pragma("synchronous") == 2  # FULL
    assert Path(store.path + "-wal").exists()


def test_schema_version_recorded(store: Store, db: Path) -> None:
    assert store.schema_version == SCHEMA_VERSION
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    finally:
        conn.close()
    assert row == (str(SCHEMA_VERSION),)


def test_reopen_is_idempotent_and_keeps_data(db: Path) -> None:
    with Store(db) as s:
        eid, _ = s.insert_event(device="a", kind="hardware.boot", boot_id=1, seq=1)
    before = _tables(db)
    for _ in range(3):
        with Store(db) as s:
            assert s.schema_version == SCHEMA_VERSION
            ev = s.get_event(eid)
            assert ev is not None and ev.kind == "hardware.boot" and ev.seq == 1
    assert _tables(db) == before


def test_newer_schema_is_refused(db: Path) -> None:
    Store(db).close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(SchemaTooNew, match="newer"):
        Store(db)


def test_closed_store_raises(db: Path) -> None:
    s = Store(db)
    s.close()
    assert s.closed
    with pytest.raises(StoreError, match="closed"):
        s.last_event_id()


def test_transaction_rolls_back_on_error(store: Store) -> None:
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.insert_event(device="a", kind="x", boot_id=1, seq=1)
            store.set_desired("a", "rail:p3v3", "on", "api:t")
            raise RuntimeError("boom")
    assert store.last_event_id() == 0
    assert store.get_desired("a", "rail:p3v3") is None
    # and the connection is usable afterwards
    assert store.insert_event(device="a", kind="x", boot_id=1, seq=1)[1] is True


# -- devices ---------------------------------------------------------------------------


def test_device_upsert_keeps_first_seen_and_unset_fields(store: Store) -> None:
    d1 = store.upsert_device("sim0", board="sim", uid="u1", boot_id=11, firmware_version="1.0",
                             describe={"rails": ["p3v3"]}, seen_at=100.0)
    assert (d1.first_seen, d1.last_seen, d1.describe) == (100.0, 100.0, {"rails": ["p3v3"]})
    d2 = store.upsert_device("sim0", boot_id=12, seen_at=200.0)
    assert d2.first_seen == 100.0 and d2.last_seen == 200.0
    assert d2.last_boot_id == 12 and d2.uid == "u1" and d2.firmware_version == "1.0"
    assert d2.describe == {"rails": ["p3v3"]}
    assert [d.id for d in store.list_devices()] == ["sim0"]
    assert store.get_device("nope") is None


# -- events ----------------------------------------------------------------------------


def test_insert_event_dedups_on_device_boot_seq(store: Store) -> None:
    first = store.insert_event(device="a", kind="hardware.rail_state", boot_id=5, seq=1,
                               source=0, value=2, payload={"rail": "p3v3"})
    again = store.insert_event(device="a", kind="hardware.rail_state", boot_id=5, seq=1,
                               source=0, value=2)
    assert first[1] is True
    assert again == (first[0], False)
    other_boot = store.insert_event(device="a", kind="hardware.rail_state", boot_id=6, seq=1)
    other_dev = store.insert_event(device="b", kind="hardware.rail_state", boot_id=5, seq=1)
    assert other_boot[1] and other_dev[1]
    assert len({first[0], other_boot[0], other_dev[0]}) == 3
    # host events have no seq: never deduplicated
    h1 = store.insert_event(device="a", kind="alert", payload={"m": 1})
    h2 = store.insert_event(device="a", kind="alert", payload={"m": 1})
    assert h1[1] and h2[1] and h1[0] != h2[0]
    row = store.get_event(first[0])
    assert row is not None
    assert (row.device, row.boot_id, row.seq, row.source, row.value, row.payload) == (
        "a", 5, 1, 0, 2, {"rail": "p3v3"})
    assert store.find_board_event("a", 5, 1) == first[0]
    assert store.find_board_event("a", 5, 2) is None


def test_query_events_pages_with_cursor(store: Store) -> None:
    ids = []
    for i in range(25):
        dev = "a" if i % 2 == 0 else "b"
        kind = "hardware.rail_state" if i % 3 else "interlock.trip"
        ids.append(store.insert_event(device=dev, kind=kind, boot_id=1, seq=i + 1,
                                      received_at=1000.0 + i)[0])
    seen = []
    cursor = None
    pages = 0
    while True:
        page = store.query_events(since_id=cursor, limit=10)
        pages += 1
        seen += [e.id for e in page.events]
        if page.next_cursor is None:
            break
        assert page.next_cursor == page.last_id
        cursor = page.next_cursor
    assert pages == 3
    assert seen == ids  # every event once, in order

    only_a = store.query_events(device="a", limit=100).events
    assert [e.id for e in only_a] == ids[0::2]
    trips = store.query_events(type="interlock.trip", limit=100).events
    assert [e.id for e in trips] == [ids[i] for i in range(25) if i % 3 == 0]
    hw = store.query_events(type="hardware.*", limit=100).events
    assert [e.id for e in hw] == [ids[i] for i in range(25) if i % 3]
    assert store.query_events(type="hardware", limit=100).events == []
    late = store.query_events(since_time=1020.0, limit=100)
    assert [e.id for e in late.events] == ids[20:] and late.next_cursor is None
    # an exactly full last page reports no further page
    assert store.query_events(since_id=ids[14], limit=10).next_cursor is None
    assert store.last_event_id() == ids[-1]


def test_prune_never_reuses_ids(store: Store) -> None:
    a = store.insert_event(device="a", kind="x", received_at=1.0)[0]
    b = store.insert_event(device="a", kind="x", received_at=2.0)[0]
    assert store.prune_events(before=10.0) == 2
    c = store.insert_event(device="a", kind="x", received_at=3.0)[0]
    assert c > b > a


def test_last_seq_tracking(store: Store) -> None:
    assert store.get_last_seq("a", 1) is None
    store.set_last_seq("a", 1, 7)
    store.set_last_seq("a", 1, 8)
    store.set_last_seq("a", 2, 1)
    assert store.get_last_seq("a", 1) == 8
    assert store.get_last_seq("a", 2) == 1


# -- commands --------------------------------------------------------------------------


def test_idempotency_key_returns_first_verdict_across_restart(db: Path) -> None:
    req = {"op": "rail_on", "target": "p3v3"}
    with Store(db) as s:
        row, created = s.create_command("sim0", req, idempotency_key="k1", principal="alice")
        assert created and row.state == "queued" and row.result is None
        retry, created2 = s.create_command("sim0", req, idempotency_key="k1", principal="alice")
        assert not created2 and retry.command_id == row.command_id
        s.update_command("sim0", row.command_id, "sent", boot_id=42)
        done = s.update_command("sim0", row.command_id, "applied", result={"code": 0})
        assert done.state == "applied" and done.sent_boot_id == 42 and done.finished
    with Store(db) as s:
        again, created3 = s.create_command("sim0", req, idempotency_key="k1", principal="alice")
        assert not created3
        assert again.command_id == row.command_id
        assert (again.state, again.result) == ("applied", {"code": 0})
        # the key is scoped per principal and per device
        bob, c_bob = s.create_command("sim0", req, idempotency_key="k1", principal="bob")
        other, c_other = s.create_command("sim1", req, idempotency_key="k1", principal="alice")
        assert c_bob and c_other and bob.command_id != row.command_id
        # same key, different request: a client bug, refused
        with pytest.raises(IdempotencyConflict) as err:
            s.create_command("sim0", {"op": "rail_off"}, idempotency_key="k1", principal="alice")
        assert err.value.existing.command_id == row.command_id
        # only one command executed for (sim0, alice, k1)
        assert len([c for c in s.list_commands("sim0") if c.principal == "alice"]) == 1


def test_first_verdict_is_final(store: Store) -> None:
    row, _ = store.create_command("d", {"op": 1})
    store.update_command("d", row.command_id, "sent")
    store.update_command("d", row.command_id, "rejected", result={"code": 1})
    with pytest.raises(InvalidTransition):
        store.update_command("d", row.command_id, "applied", result={"code": 0})
    with pytest.raises(InvalidTransition):
        store.update_command("d", row.command_id, "sent")
    final = store.get_command("d", row.command_id)
    assert final is not None and final.state == "rejected" and final.result == {"code": 1}


def test_list_commands_in_flight(store: Store) -> None:
    a, _ = store.create_command("d", {"n": 1}, created_at=1.0)
    b, _ = store.create_command("d", {"n": 2}, created_at=2.0)
    c, _ = store.create_command("d", {"n": 3}, created_at=3.0)
    store.update_command("d", b.command_id, "sent")
    store.update_command("d", c.command_id, "failed", result={"error": "link down"})
    pending = store.list_commands("d", states=("queued", "sent"))
    assert [p.command_id for p in pending] == [a.command_id, b.command_id]
    with pytest.raises(ValueError):
        store.list_commands("d", states=("bogus",))


def test_command_ids_survive_reopen_and_never_repeat(db: Path) -> None:
    seen: set[int] = set()
    last = 0
    for _round in range(3):
        with Store(db) as s:
            for i in range(5):
                row, _ = s.create_command("sim0", {"i": i})
                assert 0 < row.command_id < COMMAND_ID_LIMIT
                assert row.command_id not in seen and row.command_id > last
                seen.add(row.command_id)
                last = row.command_id
            pid = s.next_command_id("sim0")  # POLICY transfer ids share the space
            assert pid not in seen and pid > last
            seen.add(pid)
            last = pid
    with Store(db) as s:  # another device has its own space
        assert s.create_command("sim1", {})[0].command_id == 1


def test_command_id_wraps_below_2_30_and_skips_in_flight(db: Path) -> None:
    with Store(db) as s:
        first, _ = s.create_command("d", {"n": 1})  # id 1, stays queued (in flight)
        second, _ = s.create_command("d", {"n": 2})  # id 2, finished
        s.update_command("d", second.command_id, "applied", result={})
    conn = sqlite3.connect(db)
    conn.execute("UPDATE counters SET value = ? WHERE device = 'd'", (COMMAND_ID_LIMIT - 2,))
    conn.commit()
    conn.close()
    with Store(db) as s:
        top, _ = s.create_command("d", {"n": 3})
        assert top.command_id == COMMAND_ID_LIMIT - 1
        wrapped, _ = s.create_command("d", {"n": 4})
        # 1 is still in flight: skipped; 2 finished 2**30-1 commands ago: recycled
        assert wrapped.command_id == 2
        assert s.get_command("d", 1) == first
        assert s.get_command("d", 2) == wrapped


# -- desired state ---------------------------------------------------------------------


def test_desired_generations_monotonic_and_persistent(db: Path) -> None:
    with Store(db) as s:
        g = [s.set_desired("d", "rail:p3v3", v, "api:alice").generation for v in ("on", "off", "on")]
        assert g == [1, 2, 3]
        assert s.set_desired("d", "zone:cpu", {"mode": "auto"}, "policy").generation == 1
        with pytest.raises(GenerationConflict):
            s.set_desired("d", "rail:p3v3", "off", "api:bob", expected_generation=2)
        assert s.set_desired("d", "rail:p3v3", "off", "api:bob", expected_generation=3).generation == 4
        tomb = s.set_desired("d", "rail:p3v3", None, "api:bob")
        assert tomb.value is None and tomb.generation == 5
    with Store(db) as s:
        row = s.get_desired("d", "rail:p3v3")
        assert row is not None and (row.value, row.generation, row.source) == (None, 5, "api:bob")
        assert s.set_desired("d", "rail:p3v3", "on", "policy").generation == 6
        assert [r.key for r in s.list_desired("d")] == ["rail:p3v3", "zone:cpu"]
        assert s.get_desired("d", "zone:cpu").value == {"mode": "auto"}  # type: ignore[union-attr]


# -- kill -9 ---------------------------------------------------------------------------

_CHILD = r"""
import sys
from metal.host.bridge.store import Store
s = Store(sys.argv[1])
i = 0
while True:
    i += 1
    eid, inserted = s.insert_event(device="d", kind="hardware.test", boot_id=7, seq=i,
                                   value=i, payload={"i": i})
    row, _ = s.create_command("d", {"i": i}, idempotency_key="k%d" % i)
    with s.transaction():  # a multi-statement commit
        s.set_desired("d", "gpio:led", i % 2, "test")
        s.set_last_seq("d", 7, i)
    print(eid, i, row.command_id, flush=True)
"""


def _triple(line: str) -> tuple[int, int, int]:
    eid, i, cid = (int(x) for x in line.split())
    return eid, i, cid


def test_survives_kill_9_with_nothing_acknowledged_lost(db: Path) -> None:
    Store(db).close()
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(db)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert child.stdout is not None
    reported: list[tuple[int, int, int]] = []
    deadline = time.monotonic() + 20
    try:
        while len(reported) < 150 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line.endswith("\n"):
                break  # EOF (or a line cut by the kill: not reported, so not checked)
            reported.append(_triple(line))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        rest, err = child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL
    reported += [_triple(line) for line in rest.splitlines(keepends=True) if line.endswith("\n")]
    assert len(reported) >= 150, err

    with Store(db) as s:
        assert s.integrity_check() == "ok"
        for eid, i, cid in reported:
            ev = s.get_event(eid)
            assert ev is not None and (ev.seq, ev.value, ev.payload) == (i, i, {"i": i})
            cmd = s.find_command("d", "k%d" % i)
            assert cmd is not None and cmd.command_id == cid and cmd.request == {"i": i}
        n = reported[-1][1]
        # at most the one iteration in progress at the kill went further than reported
        assert s.get_last_seq("d", 7) in (n, n + 1)
        assert s.get_desired("d", "gpio:led").generation in (n, n + 1)  # type: ignore[union-attr]
        # the counter moved past every id handed out before the kill
        assert s.next_command_id("d") > max(c for _, _, c in reported)
        # and the events table is consistent with seq numbering: 1..k, no holes
        seqs = [e.seq for e in s.query_events(device="d", limit=1000).events]
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= n
