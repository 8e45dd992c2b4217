"""Persistence of the chain through the `eventsourcing` library's SQLite recorder.

`ChainedSQLiteRecorder` extends `eventsourcing.sqlite.SQLiteApplicationRecorder`:

- `stored_events` (the library's table, primary key `(originator_id, originator_version)`) holds
  each event: `topic` = event type, `state` = canonical JSON `{"at": ..., "data": {...}}`. The
  primary key is the optimistic-concurrency check: a second writer of version K of a stream fails.
- `ledger_records(seq INTEGER PRIMARY KEY, stream, version, prev, hash)` is the chain. `seq` is
  the chain's own counter (never the library's rowid, which VACUUM may renumber).
- `ledger_head(id=1, seq, hash)` is the chain head.

`append_batch` writes a whole group-commit batch in one `BEGIN IMMEDIATE` transaction: each append
in its own SAVEPOINT (an append that loses a concurrency race is rolled back alone), seq and hash
assigned in order, the head advanced, one COMMIT (one fsync with `synchronous=FULL`). The head is
read inside the write transaction, so several processes may share one file.

How the library is used (eventsourcing 9.5, pinned in constraints.txt): through its public surface,
i.e. the recorder's extension points (`construct_create_table_statements`, `insert_events`,
`select_events`), the datastore's `transaction` / `get_connection`, and its error classes
(`EventSourcingError`, the root of every error it raises). One thing has no public form: inserting
stored events inside a transaction the caller holds (the public `insert_events` opens its own).
`EventsourcingAdapter` is the one place that names the private method doing that;
tests/unit/ledger/test_eventsourcing_adapter.py fails loudly if the pinned library changes it.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from eventsourcing.domain import EventSourcingError
from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import (
    SQLiteApplicationRecorder,
    SQLiteCursor,
    SQLiteDatastore,
)

from .canonical import canonical_bytes_unchecked
from .chain import GENESIS, ChainHead, ChainRecord, hash_canonical, make_envelope
from .errors import ChainCorrupted, ConcurrencyConflict, LedgerError, LedgerUnavailable

_DECODER = msgspec.json.Decoder()

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS ledger_records (
        seq INTEGER PRIMARY KEY,
        stream TEXT NOT NULL,
        version INTEGER NOT NULL,
        prev TEXT NOT NULL,
        hash TEXT NOT NULL,
        UNIQUE (stream, version)
    )""",
    """CREATE TABLE IF NOT EXISTS ledger_head (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL,
        hash TEXT NOT NULL
    )""",
    f"INSERT OR IGNORE INTO ledger_head (id, seq, hash) VALUES (1, 0, '{GENESIS}')",  # noqa: S608 - a constant, not input
    """CREATE TABLE IF NOT EXISTS ledger_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    "INSERT OR IGNORE INTO ledger_meta (key, value) VALUES ('format', 'agentkeys-ledger/1')",
]

# The join an auditor also uses (docs/ledger-format.md, "Reading the SQLite ledger").
SELECT_RECORDS = (
    "SELECT r.seq, r.stream, r.version, r.prev, r.hash, e.topic, e.state "
    "FROM ledger_records r JOIN stored_events e "
    "ON e.originator_id = replace(r.stream, '-', '') AND e.originator_version = r.version "
)


@dataclass(frozen=True, slots=True)
class StreamAppend:
    """Events for one stream, written at versions expected_version+1, +2, ..."""

    stream: uuid.UUID
    expected_version: int
    items: Sequence[tuple[str, dict[str, Any], str]]  # (type, data, at), data already validated


@dataclass(frozen=True, slots=True)
class PendingAppend:
    """One atomic append: all its parts (possibly several streams) commit together or not at all."""

    parts: Sequence[StreamAppend]


def state_bytes(at: str, data: dict[str, Any]) -> bytes:
    return canonical_bytes_unchecked({"at": at, "data": data})


def row_to_record(row: Sequence[Any]) -> ChainRecord:
    seq, stream, version, prev, hash_, topic, state = row
    body = _DECODER.decode(state)
    return ChainRecord(
        seq=seq, type=topic, stream=stream, version=version, at=body["at"], data=body["data"], prev=prev, hash=hash_
    )


class EventsourcingAdapter:
    """The one use of a private member of the pinned eventsourcing library.

    `SQLiteApplicationRecorder._insert_events(cursor, stored_events)` writes stored events with the
    library's own statement and row encoding inside the transaction of `cursor`; the public
    `insert_events` wraps exactly that call in a transaction of its own, which a group commit with
    one SAVEPOINT per append cannot use. `PRIVATE_INSERT` names it; `check()` verifies that the
    installed library still has it with this shape (run by `open_recorder`, so a changed library
    stops the broker at boot, and by tests/unit/ledger/test_eventsourcing_adapter.py)."""

    PRIVATE_INSERT = "_insert_events"

    @classmethod
    def check(cls) -> None:
        """Raise `RuntimeError` if the installed library no longer has the private method as used."""
        import inspect

        fn = getattr(SQLiteApplicationRecorder, cls.PRIVATE_INSERT, None)
        if fn is None:
            raise RuntimeError(f"eventsourcing: SQLiteApplicationRecorder.{cls.PRIVATE_INSERT} is gone")
        params = list(inspect.signature(fn).parameters)
        if params[:3] != ["self", "c", "stored_events"]:
            raise RuntimeError(f"eventsourcing: SQLiteApplicationRecorder.{cls.PRIVATE_INSERT}{params} changed")

    @classmethod
    def insert_events_in(cls, recorder: SQLiteApplicationRecorder, cursor: SQLiteCursor, events: Sequence[StoredEvent]) -> None:
        """Insert `events` inside the caller's open transaction (driver errors pass through
        unwrapped: a duplicate key is `sqlite3.IntegrityError`)."""
        getattr(recorder, cls.PRIVATE_INSERT)(cursor, events)


class ChainedSQLiteRecorder(SQLiteApplicationRecorder):
    def construct_create_table_statements(self) -> list[str]:
        return super().construct_create_table_statements() + SCHEMA

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """Refused: an event written outside `append_batch` would have no place in the hash chain
        (no `ledger_records` row), so auditors would never see it."""
        raise LedgerError("events enter the ledger only through append_batch (the hash chain)")

    # --- writing ----------------------------------------------------------------------------

    def append_batch(self, batch: Sequence[PendingAppend]) -> tuple[list[list[ChainRecord] | Exception], ChainHead]:
        """Write a batch in one transaction. Returns, per append, its records or the exception
        that failed it alone; raises `LedgerUnavailable` if the transaction as a whole failed
        (then nothing of the batch is committed)."""
        try:
            with self.datastore.get_connection(commit=True) as conn:
                cur = conn.cursor()
                try:
                    cur.execute("PRAGMA synchronous=FULL")
                    cur.execute("BEGIN IMMEDIATE")
                    cur.execute("SELECT seq, hash FROM ledger_head WHERE id = 1")
                    head_seq, head_hash = cur.fetchone()
                    results: list[list[ChainRecord] | Exception] = []
                    for pending in batch:
                        results.append(self._append_one(cur, pending, head_seq, head_hash))
                        last = results[-1]
                        if isinstance(last, list) and last:
                            head_seq, head_hash = last[-1].seq, last[-1].hash
                    cur.execute("UPDATE ledger_head SET seq = ?, hash = ? WHERE id = 1", (head_seq, head_hash))
                    conn.commit()
                except BaseException:
                    conn.rollback()
                    raise
        except (sqlite3.Error, OSError, EventSourcingError) as exc:
            # EventSourcingError: the library's pool and wrappers (PersistenceError and the pool's
            # closed / unavailable errors derive from it)
            raise LedgerUnavailable(f"ledger write failed: {exc}") from exc
        return results, ChainHead(head_seq, head_hash)

    def _append_one(
        self, cur: SQLiteCursor, pending: PendingAppend, head_seq: int, head_hash: str
    ) -> list[ChainRecord] | Exception:
        cur.execute("SAVEPOINT ledger_append")
        try:
            records: list[ChainRecord] = []
            seq, prev = head_seq, head_hash
            for part in pending.parts:
                stream_hex = part.stream.hex
                stream_str = str(part.stream)
                if part.expected_version > 0:
                    cur.execute(
                        "SELECT 1 FROM stored_events WHERE originator_id = ? AND originator_version = ?",
                        (stream_hex, part.expected_version),
                    )
                    if cur.fetchone() is None:
                        raise ConcurrencyConflict(part.stream, part.expected_version, "stream is behind")
                stored = []
                first = len(records)
                version = part.expected_version
                for type_name, data, at in part.items:
                    version += 1
                    seq += 1
                    stored.append(
                        StoredEvent(
                            originator_id=part.stream,
                            originator_version=version,
                            topic=type_name,
                            state=state_bytes(at, data),
                        )
                    )
                    envelope = make_envelope(
                        seq=seq, type=type_name, stream=stream_str, version=version, at=at, data=data, prev=prev
                    )
                    h = hash_canonical(canonical_bytes_unchecked(envelope))
                    records.append(
                        ChainRecord(seq=seq, type=type_name, stream=stream_str, version=version, at=at,
                                    data=data, prev=prev, hash=h)
                    )
                    prev = h
                try:
                    EventsourcingAdapter.insert_events_in(self, cur, stored)
                except sqlite3.IntegrityError as exc:
                    raise ConcurrencyConflict(part.stream, part.expected_version, "version already written") from exc
                cur.executemany(
                    "INSERT INTO ledger_records (seq, stream, version, prev, hash) VALUES (?, ?, ?, ?, ?)",
                    [(r.seq, r.stream, r.version, r.prev, r.hash) for r in records[first:]],
                )
            cur.execute("RELEASE ledger_append")
            return records
        except ConcurrencyConflict as exc:
            cur.execute("ROLLBACK TO ledger_append")
            cur.execute("RELEASE ledger_append")
            return exc

    def probe_write(self) -> None:
        """A real write transaction on a scratch table (readiness probe); short lock wait."""
        conn = sqlite3.connect(self.datastore.pool.db_name, timeout=1.0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("CREATE TABLE IF NOT EXISTS _readyz_probe (id INTEGER PRIMARY KEY, at REAL)")
            conn.execute("INSERT OR REPLACE INTO _readyz_probe (id, at) VALUES (1, julianday('now'))")
            conn.execute("COMMIT")
        finally:
            conn.close()

    # --- reading ----------------------------------------------------------------------------

    def head(self) -> ChainHead:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT seq, hash FROM ledger_head WHERE id = 1")
            row = c.fetchone()
        return ChainHead(row[0], row[1]) if row else ChainHead.empty()

    def check_head(self) -> ChainHead:
        """At open: the head row must equal the last record (else the file was edited)."""
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT seq, hash FROM ledger_head WHERE id = 1")
            head = c.fetchone()
            c.execute("SELECT seq, hash FROM ledger_records ORDER BY seq DESC LIMIT 1")
            last = c.fetchone()
        head_t = (head[0], head[1]) if head else (0, GENESIS)
        last_t = (last[0], last[1]) if last else (0, GENESIS)
        if head_t != last_t:
            raise ChainCorrupted(f"chain head {head_t} does not match the last record {last_t}")
        return ChainHead(*head_t)

    def read_records(self, after_seq: int = 0, limit: int = 1000) -> list[ChainRecord]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(SELECT_RECORDS + "WHERE r.seq > ? ORDER BY r.seq LIMIT ?", (after_seq, limit))
            return [row_to_record(tuple(r)) for r in c.fetchall()]

    def iter_records(self, after_seq: int = 0, page: int = 5000) -> Iterator[ChainRecord]:
        while True:
            chunk = self.read_records(after_seq, page)
            if not chunk:
                return
            yield from chunk
            after_seq = chunk[-1].seq

    def seq_of(self, stream: uuid.UUID, version: int) -> int | None:
        """The chain seq of version `version` of `stream` (None if absent)."""
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT seq FROM ledger_records WHERE stream = ? AND version = ?", (str(stream), version))
            row = c.fetchone()
        return int(row[0]) if row else None

    def quick_check(self) -> list[str]:
        """`PRAGMA quick_check` of the ledger file: `["ok"]` when SQLite finds no damage, else its
        messages. A page too damaged to read raises `sqlite3.DatabaseError`."""
        with self.datastore.transaction(commit=False) as c:
            c.execute("PRAGMA quick_check")
            return [str(r[0]) for r in c.fetchall()]

    def stream_events(self, stream: uuid.UUID) -> list[tuple[int, str, dict[str, Any]]]:
        """(version, type, data) of a stream in version order."""
        out = []
        for se in self.select_events(stream):
            body = _DECODER.decode(se.state)
            out.append((se.originator_version, se.topic, body["data"]))
        return out


def open_recorder(db_path: str, *, lock_timeout_s: int = 10) -> ChainedSQLiteRecorder:
    EventsourcingAdapter.check()
    datastore = SQLiteDatastore(db_name=str(db_path), lock_timeout=lock_timeout_s, pool_size=5, max_overflow=10)
    recorder = ChainedSQLiteRecorder(datastore)
    recorder.create_table()
    return recorder
