"""The bridge's durable memory: one SQLite database in WAL mode.

What lives here, and why it must survive ``kill -9`` and power loss:

* ``devices``          -- every board ever seen (identity, last boot id, DESCRIBE).
* ``events``           -- every board event, keyed by (device, boot id, seq) so a
                          re-delivery across sessions is stored once, plus the events
                          the host generates (gaps, drift, alerts, ...). A global
                          autoincrement id orders them and is the resume cursor.
* ``board_sequences``  -- the last board sequence number stored per (device, boot id),
                          so gap detection resumes exactly after a restart.
* ``desired``          -- desired state per (device, key) with a monotonic generation.
* ``commands``         -- every command with its idempotency key and its verdict, so a
                          retried request returns the first verdict and never runs twice.
* ``counters``         -- the per-device command id counter (ids are never reused).
* ``meta``             -- the schema version.

Durability
----------
``journal_mode=WAL`` + ``synchronous=FULL``. In WAL mode ``NORMAL`` already survives a
process crash (``kill -9``: committed pages sit in the OS page cache), but it may lose
the last transactions on power loss or an OS crash, because the WAL is only fsync'ed at
checkpoints. Every commit in this store can back an acknowledgement -- the bridge acks
a board EVENT only after it is stored, answers a client only after the command row is
stored -- so every commit is ``FULL`` (the WAL is fsync'ed at each commit). The cost is
one fsync per transaction; :meth:`Store.transaction` groups several writes into one
commit where throughput matters.

Threading
---------
One connection per ``Store``, opened with ``check_same_thread=False`` and guarded by a
re-entrant lock: every public method is atomic and may be called from any thread, e.g.
from the asyncio loop directly or through ``asyncio.to_thread`` (which runs on the
default executor's threads). :meth:`transaction` holds the lock for the whole block, so
a multi-statement read-modify-write is atomic against other threads too. Exactly one
process should open a database for writing (the bridge); a second process could read.

Schema versions
---------------
``meta.schema_version`` records the version. Opening runs each missing migration in its
own transaction (SQLite DDL is transactional, so a crash mid-migration leaves the old
version intact) and is a no-op when up to date. A database written by a newer bridge is
refused with :class:`SchemaTooNew` rather than misread.

Command ids
-----------
The wire allows 1 .. 2**30-1 and the board answers a repeated id with its remembered
verdict, so an id must never be reused for a device: a bridge restarting its counter at 1
would get stale verdicts for new commands. The counter is persisted per device and
incremented in the same transaction that stores the command. After 2**30-1 commands it
wraps to 1; the row that held a recycled id (a finished command 2**30-1 commands old) is
deleted, and an id whose command is still in flight is skipped.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

SCHEMA_VERSION: Final = 1

#: Command ids (and POLICY transfer ids) are 1 .. COMMAND_ID_LIMIT - 1 (protocol §8).
COMMAND_ID_LIMIT: Final = 1 << 30

COMMAND_STATES: Final = ("queued", "sent", "applied", "rejected", "timeout", "failed")
TERMINAL_STATES: Final = frozenset({"applied", "rejected", "timeout", "failed"})
#: Allowed transitions; a terminal state is final (the first verdict stands).
_TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    "queued": frozenset({"sent", "applied", "rejected", "timeout", "failed"}),
    "sent": frozenset({"applied", "rejected", "timeout", "failed"}),
}

MAX_PAGE: Final = 1000


class StoreError(Exception):
    """Base class of the store's own errors."""


class SchemaTooNew(StoreError):
    """The database was written by a newer bridge; this one cannot read it."""


class IdempotencyConflict(StoreError):
    """An idempotency key was reused with a different request (HTTP 422)."""

    def __init__(self, existing: CommandRow) -> None:
        super().__init__(
            f"idempotency key {existing.idempotency_key!r} was already used for a different "
            f"request (command {existing.command_id} on {existing.device})"
        )
        self.existing = existing


class GenerationConflict(StoreError):
    """A conditional desired-state write found another generation (HTTP 412)."""

    def __init__(self, device: str, key: str, expected: int, actual: int) -> None:
        super().__init__(
            f"desired {key!r} on {device}: expected generation {expected}, found {actual}"
        )
        self.expected = expected
        self.actual = actual


class InvalidTransition(StoreError):
    """A command state change that the state machine does not allow."""


class UnknownCommand(StoreError):
    """No command with that id for that device."""


# -- rows ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceRow:
    id: str
    board: str | None
    uid: str | None
    first_seen: float
    last_seen: float
    last_boot_id: int | None
    firmware_version: str | None
    describe: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    device: str | None
    boot_id: int | None  # board events and events about a boot (gaps); else None
    seq: int | None  # board sequence number; None for host-generated events
    kind: str  # the bus type, e.g. "hardware.rail_state", "events.gap"
    source: int | None
    value: int | None
    aux: int | None
    board_ms: int | None
    received_at: float  # wall clock, seconds since the epoch
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[EventRow]
    #: Pass as ``since_id`` to get the next page; None when this page is the last.
    next_cursor: int | None

    @property
    def last_id(self) -> int | None:
        return self.events[-1].id if self.events else None


@dataclass(frozen=True, slots=True)
class DesiredRow:
    device: str
    key: str  # "rail:p3v3", "zone:cpu", "gpio:led", "security.lock", ...
    value: Any  # JSON value; None is a tombstone ("no longer desired")
    generation: int  # 1, 2, ... per (device, key), never reused
    source: str  # "api:alice", "policy", ...
    updated_at: float


@dataclass(frozen=True, slots=True)
class CommandRow:
    device: str
    command_id: int
    principal: str  # "" when the caller has none
    idempotency_key: str | None
    request: dict[str, Any]
    state: str  # one of COMMAND_STATES
    result: dict[str, Any] | None
    created_at: float
    sent_at: float | None
    finished_at: float | None
    sent_boot_id: int | None  # the board boot that received the CMD

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES


# -- schema ------------------------------------------------------------------------

_MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        """CREATE TABLE IF NOT EXISTS devices (
            id TEXT PRIMARY KEY,
            board TEXT,
            uid TEXT,
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            last_boot_id INTEGER,
            firmware_version TEXT,
            describe TEXT
        )""",
        """CREATE TABLE IF NOT EXISTS events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            device TEXT,
            boot_id INTEGER,
            seq INTEGER,
            kind TEXT NOT NULL,
            source INTEGER,
            value INTEGER,
            aux INTEGER,
            board_ms INTEGER,
            received_at REAL NOT NULL,
            payload TEXT NOT NULL DEFAULT '{}',
            UNIQUE (device, boot_id, seq)
        )""",
        "CREATE INDEX IF NOT EXISTS events_device_id ON events (device, id)",
        "CREATE INDEX IF NOT EXISTS events_kind_id ON events (kind, id)",
        "CREATE INDEX IF NOT EXISTS events_received_at ON events (received_at)",
        """CREATE TABLE IF NOT EXISTS board_sequences (
            device TEXT NOT NULL,
            boot_id INTEGER NOT NULL,
            last_seq INTEGER NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (device, boot_id)
        )""",
        """CREATE TABLE IF NOT EXISTS desired (
            device TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            generation INTEGER NOT NULL,
            source TEXT NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (device, key)
        )""",
        """CREATE TABLE IF NOT EXISTS commands (
            device TEXT NOT NULL,
            command_id INTEGER NOT NULL CHECK (command_id > 0 AND command_id < 1073741824),
            principal TEXT NOT NULL DEFAULT '',
            idempotency_key TEXT,
            request TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN
                ('queued', 'sent', 'applied', 'rejected', 'timeout', 'failed')),
            result TEXT,
            created_at REAL NOT NULL,
            sent_at REAL,
            finished_at REAL,
            sent_boot_id INTEGER,
            PRIMARY KEY (device, command_id)
        )""",
        """CREATE UNIQUE INDEX IF NOT EXISTS commands_idempotency
            ON commands (device, principal, idempotency_key)
            WHERE idempotency_key IS NOT NULL""",
        "CREATE INDEX IF NOT EXISTS commands_state ON commands (device, state)",
        """CREATE TABLE IF NOT EXISTS counters (
            device TEXT NOT NULL,
            name TEXT NOT NULL,
            value INTEGER NOT NULL,
            PRIMARY KEY (device, name)
        )""",
    ),
}
assert max(_MIGRATIONS) == SCHEMA_VERSION


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _loads_obj(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    value = json.loads(text)
    if not isinstance(value, dict):
        raise StoreError(f"expected a JSON object, found {type(value).__name__}")
    return value


def _prefix_upper_bound(prefix: str) -> str:
    """The smallest string greater than every string that starts with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class Store:
    """The SQLite-backed store. See the module docstring for durability and threading."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 5.0) -> None:
        self.path = os.fspath(path)
        self._lock = threading.RLock()
        self._depth = 0  # transaction nesting, guarded by _lock
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            self.path,
            isolation_level=None,  # autocommit; transactions are explicit (BEGIN IMMEDIATE)
            check_same_thread=False,  # guarded by self._lock instead
            timeout=busy_timeout_s,
        )
        try:
            self._configure()
            self._migrate()
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    # -- lifecycle ---------------------------------------------------------------

    def _configure(self) -> None:
        conn = self._db
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal" and self.path != ":memory:":
            raise StoreError(f"{self.path}: cannot enable WAL journal mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit
        conn.execute("PRAGMA fullfsync=ON")  # macOS: fsync() alone does not reach the platter
        conn.execute("PRAGMA foreign_keys=ON")

    def _migrate(self) -> None:
        conn = self._db
        with self._lock:
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            current = self._schema_version_unlocked()
            if current > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"{self.path}: database schema version {current} is newer than this "
                    f"bridge supports ({SCHEMA_VERSION}); upgrade the bridge or use another "
                    "state directory"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                with self.transaction():
                    # Re-check inside the write lock: another process may have migrated.
                    if self._schema_version_unlocked() >= version:
                        continue
                    for statement in _MIGRATIONS[version]:
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (str(version),),
                    )

    def _schema_version_unlocked(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._schema_version_unlocked()

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self.path}: store is closed")
        return self._conn

    @property
    def closed(self) -> bool:
        return self._conn is None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pragma(self, name: str) -> Any:
        """The value of a read-only PRAGMA (``journal_mode``, ``synchronous``, ...)."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"bad pragma name {name!r}")
        with self._lock:
            row = self._db.execute(f"PRAGMA {name}").fetchone()
            return row[0] if row else None

    def integrity_check(self) -> str:
        """``"ok"`` or SQLite's description of the damage."""
        with self._lock:
            rows = self._db.execute("PRAGMA integrity_check").fetchall()
            return "\n".join(str(r[0]) for r in rows)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the block as one atomic, durable commit (one fsync).

        Nested uses join the outermost transaction. The lock is held for the whole block,
        so keep it short and free of awaits.
        """
        with self._lock:
            conn = self._db
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._depth = 0
                conn.execute("ROLLBACK")
                raise
            self._depth = 0
            try:
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    # -- devices -------------------------------------------------------------------

    def upsert_device(
        self,
        device: str,
        *,
        board: str | None = None,
        uid: str | None = None,
        boot_id: int | None = None,
        firmware_version: str | None = None,
        describe: dict[str, Any] | None = None,
        seen_at: float | None = None,
    ) -> DeviceRow:
        """Record that ``device`` was seen; fields given as None keep their stored value."""
        now = time.time() if seen_at is None else seen_at
        with self.transaction():
            self._db.execute(
                """INSERT INTO devices (id, board, uid, first_seen, last_seen, last_boot_id,
                                        firmware_version, describe)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (id) DO UPDATE SET
                     board = coalesce(excluded.board, board),
                     uid = coalesce(excluded.uid, uid),
                     last_seen = excluded.last_seen,
                     last_boot_id = coalesce(excluded.last_boot_id, last_boot_id),
                     firmware_version = coalesce(excluded.firmware_version, firmware_version),
                     describe = coalesce(excluded.describe, describe)""",
                (
                    device,
                    board,
                    uid,
                    now,
                    now,
                    boot_id,
                    firmware_version,
                    None if describe is None else _dumps(describe),
                ),
            )
            row = self.get_device(device)
        assert row is not None
        return row

    def get_device(self, device: str) -> DeviceRow | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, board, uid, first_seen, last_seen, last_boot_id, firmware_version,"
                " describe FROM devices WHERE id = ?",
                (device,),
            ).fetchone()
        return None if row is None else self._device(row)

    def list_devices(self) -> list[DeviceRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, board, uid, first_seen, last_seen, last_boot_id, firmware_version,"
                " describe FROM devices ORDER BY id"
            ).fetchall()
        return [self._device(r) for r in rows]

    @staticmethod
    def _device(row: Sequence[Any]) -> DeviceRow:
        return DeviceRow(row[0], row[1], row[2], row[3], row[4], row[5], row[6], _loads_obj(row[7]))

    # -- events --------------------------------------------------------------------

    _EVENT_COLUMNS: Final = (
        "id, device, boot_id, seq, kind, source, value, aux, board_ms, received_at, payload"
    )

    def insert_event(
        self,
        *,
        device: str | None,
        kind: str,
        boot_id: int | None = None,
        seq: int | None = None,
        source: int | None = None,
        value: int | None = None,
        aux: int | None = None,
        board_ms: int | None = None,
        received_at: float | None = None,
        payload: dict[str, Any] | None = None,
    ) -> tuple[int, bool]:
        """Store an event; returns (id, inserted).

        An event with a ``seq`` is deduplicated on (device, boot_id, seq): storing it again
        returns the first copy's id and ``False``. Events without a seq (host-generated)
        are always inserted.
        """
        at = time.time() if received_at is None else received_at
        with self.transaction():
            cur = self._db.execute(
                """INSERT INTO events (device, boot_id, seq, kind, source, value, aux, board_ms,
                                       received_at, payload)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (device, boot_id, seq) DO NOTHING""",
                (device, boot_id, seq, kind, source, value, aux, board_ms, at,
                 _dumps(payload or {})),
            )
            if cur.rowcount == 1:
                assert cur.lastrowid is not None
                return cur.lastrowid, True
            row = self._db.execute(
                "SELECT id FROM events WHERE device IS ? AND boot_id IS ? AND seq IS ?",
                (device, boot_id, seq),
            ).fetchone()
            return int(row[0]), False

    def find_board_event(self, device: str, boot_id: int, seq: int) -> int | None:
        """The id of the board event stored under (device, boot_id, seq), if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM events WHERE device = ? AND boot_id = ? AND seq = ?",
                (device, boot_id, seq),
            ).fetchone()
        return None if row is None else int(row[0])

    def get_event(self, event_id: int) -> EventRow | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {self._EVENT_COLUMNS} FROM events WHERE id = ?", (event_id,)
            ).fetchone()
        return None if row is None else self._event(row)

    def query_events(
        self,
        device: str | None = None,
        type: str | None = None,  # noqa: A002 - the API's name for it
        since_id: int | None = None,
        since_time: float | None = None,
        limit: int = 100,
    ) -> EventPage:
        """Events in id order, after ``since_id`` (exclusive), at or after ``since_time``.

        ``type`` is an exact type (``"events.gap"``) or a namespace (``"hardware.*"``).
        ``limit`` is clamped to 1 .. MAX_PAGE.
        """
        limit = max(1, min(int(limit), MAX_PAGE))
        where: list[str] = []
        args: list[Any] = []
        if device is not None:
            where.append("device = ?")
            args.append(device)
        if type is not None and type not in ("*", ""):
            if type.endswith(".*"):
                prefix = type[:-1]  # keep the dot: "hardware."
                where.append("kind >= ? AND kind < ?")
                args += [prefix, _prefix_upper_bound(prefix)]
            else:
                where.append("kind = ?")
                args.append(type)
        if since_id is not None:
            where.append("id > ?")
            args.append(since_id)
        if since_time is not None:
            where.append("received_at >= ?")
            args.append(since_time)
        sql = f"SELECT {self._EVENT_COLUMNS} FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit + 1)  # one more tells whether another page exists
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        events = [self._event(r) for r in rows[:limit]]
        more = len(rows) > limit
        return EventPage(events, events[-1].id if more else None)

    def last_event_id(self) -> int:
        """The highest event id stored, 0 when there is none."""
        with self._lock:
            row = self._db.execute("SELECT max(id) FROM events").fetchone()
        return int(row[0] or 0)

    def prune_events(self, before: float) -> int:
        """Delete events received before ``before`` (epoch s); returns how many.

        Ids are AUTOINCREMENT, so pruning never lets an id be handed out again.
        """
        with self.transaction():
            return self._db.execute("DELETE FROM events WHERE received_at < ?", (before,)).rowcount

    @staticmethod
    def _event(row: Sequence[Any]) -> EventRow:
        payload = _loads_obj(row[10]) or {}
        return EventRow(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8],
                        row[9], payload)

    # -- board sequence tracking ------------------------------------------------------

    def get_last_seq(self, device: str, boot_id: int) -> int | None:
        """The last board sequence number recorded for (device, boot_id), if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT last_seq FROM board_sequences WHERE device = ? AND boot_id = ?",
                (device, boot_id),
            ).fetchone()
        return None if row is None else int(row[0])

    def set_last_seq(self, device: str, boot_id: int, seq: int, *, at: float | None = None) -> None:
        with self.transaction():
            self._db.execute(
                """INSERT INTO board_sequences (device, boot_id, last_seq, updated_at)
                   VALUES (?, ?, ?, ?)
                   ON CONFLICT (device, boot_id) DO UPDATE SET
                     last_seq = excluded.last_seq, updated_at = excluded.updated_at""",
                (device, boot_id, seq, time.time() if at is None else at),
            )

    # -- desired state ---------------------------------------------------------------

    def set_desired(
        self,
        device: str,
        key: str,
        value: Any,
        source: str,
        *,
        expected_generation: int | None = None,
        updated_at: float | None = None,
    ) -> DesiredRow:
        """Store a desired value; its generation is the previous one + 1 (first is 1).

        ``value`` None records a tombstone (no longer desired) and still advances the
        generation. With ``expected_generation`` the write is conditional (0 = "must not
        exist yet") and raises :class:`GenerationConflict` otherwise.
        """
        at = time.time() if updated_at is None else updated_at
        text = _dumps(value)
        with self.transaction():
            row = self._db.execute(
                "SELECT generation FROM desired WHERE device = ? AND key = ?", (device, key)
            ).fetchone()
            current = int(row[0]) if row else 0
            if expected_generation is not None and expected_generation != current:
                raise GenerationConflict(device, key, expected_generation, current)
            generation = current + 1
            self._db.execute(
                """INSERT INTO desired (device, key, value, generation, source, updated_at)
                   VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT (device, key) DO UPDATE SET value = excluded.value,
                     generation = excluded.generation, source = excluded.source,
                     updated_at = excluded.updated_at""",
                (device, key, text, generation, source, at),
            )
        return DesiredRow(device, key, json.loads(text), generation, source, at)

    def get_desired(self, device: str, key: str) -> DesiredRow | None:
        with self._lock:
            row = self._db.execute(
                "SELECT device, key, value, generation, source, updated_at FROM desired"
                " WHERE device = ? AND key = ?",
                (device, key),
            ).fetchone()
        return None if row is None else self._desired(row)

    def list_desired(self, device: str) -> list[DesiredRow]:
        """Every desired row of ``device`` (tombstones included), ordered by key."""
        with self._lock:
            rows = self._db.execute(
                "SELECT device, key, value, generation, source, updated_at FROM desired"
                " WHERE device = ? ORDER BY key",
                (device,),
            ).fetchall()
        return [self._desired(r) for r in rows]

    @staticmethod
    def _desired(row: Sequence[Any]) -> DesiredRow:
        return DesiredRow(row[0], row[1], json.loads(row[2]), row[3], row[4], row[5])

    # -- commands ------------------------------------------------------------------

    _COMMAND_COLUMNS: Final = (
        "device, command_id, principal, idempotency_key, request, state, result, created_at,"
        " sent_at, finished_at, sent_boot_id"
    )

    def next_command_id(self, device: str) -> int:
        """Allocate the next id of ``device``'s CMD/POLICY id space (durably).

        Also used directly for POLICY transfer ids, which share the space.
        """
        with self.transaction():
            for _ in range(1024):
                row = self._db.execute(
                    "SELECT value FROM counters WHERE device = ? AND name = 'command_id'",
                    (device,),
                ).fetchone()
                last = int(row[0]) if row else 0
                candidate = last + 1 if last + 1 < COMMAND_ID_LIMIT else 1
                self._db.execute(
                    """INSERT INTO counters (device, name, value) VALUES (?, 'command_id', ?)
                       ON CONFLICT (device, name) DO UPDATE SET value = excluded.value""",
                    (device, candidate),
                )
                old = self._db.execute(
                    "SELECT state FROM commands WHERE device = ? AND command_id = ?",
                    (device, candidate),
                ).fetchone()
                if old is None:
                    return candidate
                if old[0] in TERMINAL_STATES:
                    # Only after a full wrap: a finished command 2**30-1 commands old.
                    self._db.execute(
                        "DELETE FROM commands WHERE device = ? AND command_id = ?",
                        (device, candidate),
                    )
                    return candidate
                # Still in flight after a wrap: skip the id.
            raise StoreError(f"{device}: no free command id")

    def create_command(
        self,
        device: str,
        request: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        principal: str = "",
        created_at: float | None = None,
    ) -> tuple[CommandRow, bool]:
        """Create a queued command, or return the one already stored under the same key.

        Returns (row, created). With an ``idempotency_key`` already used by the same
        (device, principal), the existing row is returned with ``created`` False -- its
        state and result are the first verdict; the caller must not send it again. The
        same key with a different request raises :class:`IdempotencyConflict`.
        """
        at = time.time() if created_at is None else created_at
        text = _dumps(request)
        with self.transaction():
            if idempotency_key is not None:
                existing = self.find_command(device, idempotency_key, principal=principal)
                if existing is not None:
                    if _dumps(existing.request) != text:
                        raise IdempotencyConflict(existing)
                    return existing, False
            command_id = self.next_command_id(device)
            self._db.execute(
                """INSERT INTO commands (device, command_id, principal, idempotency_key,
                                         request, state, created_at)
                   VALUES (?, ?, ?, ?, ?, 'queued', ?)""",
                (device, command_id, principal, idempotency_key, text, at),
            )
            row = self.get_command(device, command_id)
        assert row is not None
        return row, True

    def find_command(
        self, device: str, idempotency_key: str, *, principal: str = ""
    ) -> CommandRow | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {self._COMMAND_COLUMNS} FROM commands"
                " WHERE device = ? AND principal = ? AND idempotency_key = ?",
                (device, principal, idempotency_key),
            ).fetchone()
        return None if row is None else self._command(row)

    def get_command(self, device: str, command_id: int) -> CommandRow | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {self._COMMAND_COLUMNS} FROM commands"
                " WHERE device = ? AND command_id = ?",
                (device, command_id),
            ).fetchone()
        return None if row is None else self._command(row)

    def list_commands(
        self, device: str, states: Sequence[str] | None = None, limit: int = MAX_PAGE
    ) -> list[CommandRow]:
        """Commands of ``device`` (optionally only in ``states``), oldest first.

        After a restart, ``states=("queued", "sent")`` are the commands without a verdict.
        """
        sql = f"SELECT {self._COMMAND_COLUMNS} FROM commands WHERE device = ?"
        args: list[Any] = [device]
        if states is not None:
            bad = set(states) - set(COMMAND_STATES)
            if bad:
                raise ValueError(f"unknown command states {sorted(bad)}")
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args += list(states)
        sql += " ORDER BY created_at, rowid LIMIT ?"
        args.append(max(1, int(limit)))
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [self._command(r) for r in rows]

    def update_command(
        self,
        device: str,
        command_id: int,
        state: str,
        *,
        result: dict[str, Any] | None = None,
        boot_id: int | None = None,
        at: float | None = None,
    ) -> CommandRow:
        """Move a command along queued -> sent -> applied|rejected|timeout|failed.

        ``boot_id`` (with "sent") records which boot of the board got the CMD. A terminal
        state is final: updating a finished command raises :class:`InvalidTransition`
        (the first verdict stands).
        """
        now = time.time() if at is None else at
        with self.transaction():
            row = self.get_command(device, command_id)
            if row is None:
                raise UnknownCommand(f"{device}: no command {command_id}")
            if state not in _TRANSITIONS.get(row.state, frozenset()):
                raise InvalidTransition(
                    f"{device} command {command_id}: {row.state} -> {state} is not allowed"
                )
            if state == "sent":
                self._db.execute(
                    "UPDATE commands SET state = 'sent', sent_at = ?, sent_boot_id = ?"
                    " WHERE device = ? AND command_id = ?",
                    (now, boot_id, device, command_id),
                )
            else:
                self._db.execute(
                    "UPDATE commands SET state = ?, result = ?, finished_at = ?"
                    " WHERE device = ? AND command_id = ?",
                    (state, None if result is None else _dumps(result), now, device,
                     command_id),
                )
            updated = self.get_command(device, command_id)
        assert updated is not None
        return updated

    @staticmethod
    def _command(row: Sequence[Any]) -> CommandRow:
        request = _loads_obj(row[4]) or {}
        return CommandRow(row[0], row[1], row[2], row[3], request, row[5], _loads_obj(row[6]),
                          row[7], row[8], row[9], row[10])
