"""`SQLiteAnchor`: a witness of the chain in its own SQLite file (its own failure domain).

Schema (an auditor reads `anchored` directly with sqlite3; keep its shape)::

    anchored(seq INTEGER PRIMARY KEY, hash TEXT NOT NULL)      -- seq 1..N, one row per record
    anchor_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)     -- format = agentkeys-sqlite-anchor/1
                                                               -- start_seq = S (absent: 1)
    _readyz_probe(id INTEGER PRIMARY KEY)                      -- written by ready()

Invariants:
- `anchored` holds exactly seqs S..max(seq), S = `start_seq` (1 unless the file was started after
  an acknowledged lost range: `SQLiteAnchor.create_at(path, start_seq)`; the first batch of such a
  file is trusted to link to the ledger at S-1, which the `IntegrityAcknowledged` names): a batch
  is written only when it starts at or below
  `max(seq) + 1` and links to the hash anchored below it (`anchors.errors.plan_submit`), inside
  one `BEGIN IMMEDIATE` transaction that re-reads the position, so threads and processes sharing
  the file never leave a gap or a duplicate. Hence `confirmed_upto() == max(seq)`.
- A batch is all or nothing; `synchronous=FULL` in WAL mode, so a returned `submit` is durable.
- The file is created only by the first successful open of this object; if it later vanishes it
  is not silently re-created (a witness that lost its data must not re-witness from the ledger
  without an operator noticing): operations raise `AnchorUnavailable` and `ready()` is unready.
- Every `sqlite3`/OS error leaves the port as `AnchorUnavailable(...) from exc`, and drops the
  cached connections so the next call reopens (recovery needs no restart).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from ledger.chain import ChainRecord
from ledger.ports import Readiness

from .errors import AnchorUnavailable, check_batch, existing_range, plan_submit

log = logging.getLogger("agentkeys.anchors.sqlite")

FORMAT = "agentkeys-sqlite-anchor/1"
SQLITE_MAGIC = b"SQLite format 3\x00"

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS anchored (seq INTEGER PRIMARY KEY, hash TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS anchor_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    f"INSERT OR IGNORE INTO anchor_meta (key, value) VALUES ('format', '{FORMAT}')",  # noqa: S608  column list/format are module constants; values are bound parameters
)

T = TypeVar("T")


class SQLiteAnchor:
    def __init__(
        self, path: Path | str, name: str = "sqlite", *, busy_timeout_s: float = 10.0, probe_timeout_s: float = 2.0
    ) -> None:
        self.name = name
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.probe_timeout_s = probe_timeout_s
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._writer: _Conn | None = None
        self._reader: _Conn | None = None
        self._opened_once = False
        self._fd_lock = threading.Lock()
        self._hdr_fd: tuple[int, tuple[int, int]] | None = None  # see `_identity`
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._read_lock:
                self._run("reader", _max_seq)
        except (AnchorUnavailable, OSError) as exc:  # report through ready(), do not crash startup
            log.warning("sqlite anchor at %s is not usable yet: %s", self.path, exc)

    # --- the port -------------------------------------------------------------------------

    def submit(self, records: Sequence[ChainRecord]) -> None:
        records = list(records)
        check_batch(self.name, records)
        if not records:
            return
        with self._write_lock:
            self._run("writer", lambda conn: self._submit_tx(conn, records))

    def confirmed_upto(self) -> int:
        with self._read_lock:
            return self._run("reader", _max_seq)

    def verify(self, seq: int, hash: str) -> bool:
        def q(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT hash FROM anchored WHERE seq = ?", (seq,)).fetchone()
            return row is not None and row[0] == hash

        with self._read_lock:
            return self._run("reader", q)

    @property
    def start_seq(self) -> int:
        """The first seq this file witnesses (meta `start_seq`, 1 when absent)."""
        with self._read_lock:
            return self._run("reader", _start_seq)

    @classmethod
    def create_at(cls, path: Path | str, start_seq: int, name: str = "sqlite") -> SQLiteAnchor:
        """A new, empty anchor file witnessing seqs from `start_seq` on (refuses an existing file)."""
        path = Path(path)
        if path.exists():
            raise AnchorUnavailable(f"{name}: {path} exists; move it aside before starting a new anchor file")
        if start_seq < 1:
            raise ValueError("start_seq must be >= 1")
        conn = _open(path, create=True, timeout=10.0)
        try:
            conn.execute("INSERT OR REPLACE INTO anchor_meta (key, value) VALUES ('start_seq', ?)", (str(start_seq),))
        finally:
            conn.close()
        return cls(path, name)

    def ready(self) -> Readiness:
        """A live write probe on a fresh connection (a cached one could be holding a replaced or
        deleted file open): the file must be a SQLite database with our schema, its directory
        writable, and a write transaction must commit now."""
        try:
            self._probe()
        except Exception as exc:
            return Readiness("unready", f"sqlite anchor at {self.path} is not writable: {_reason(exc)}")
        return Readiness("ready", f"sqlite: {self.path}")

    # --- extras ---------------------------------------------------------------------------

    def anchored_range(self, first: int, last: int) -> dict[int, str]:
        """Anchored hashes for seqs first..last (inclusive), for receipts and audits."""
        def q(conn: sqlite3.Connection) -> dict[int, str]:
            rows = conn.execute("SELECT seq, hash FROM anchored WHERE seq BETWEEN ? AND ?", (first, last))
            return dict(rows.fetchall())

        with self._read_lock:
            return self._run("reader", q)

    def close(self) -> None:
        """Close the cached connections (a later call reopens them)."""
        with self._write_lock, self._read_lock:
            for c in (self._writer, self._reader):
                if c is not None:
                    c.close()
            self._writer = self._reader = None
            with self._fd_lock:
                if self._hdr_fd is not None:
                    os.close(self._hdr_fd[0])
                    self._hdr_fd = None

    def __enter__(self) -> SQLiteAnchor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteAnchor({str(self.path)!r}, name={self.name!r})"

    # --- internals --------------------------------------------------------------------------

    def _submit_tx(self, conn: sqlite3.Connection, records: list[ChainRecord]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            confirmed = _max_seq(conn)
            span = existing_range(records, confirmed)
            anchored: dict[int, str] = {}
            if span:
                rows = conn.execute("SELECT seq, hash FROM anchored WHERE seq BETWEEN ? AND ?", span)
                anchored = dict(rows.fetchall())
            start = _start_seq(conn)
            if records[0].seq == start > 1 and confirmed == start - 1:
                anchored[start - 1] = records[0].prev  # a file started after a lost range: nothing below
            new = plan_submit(self.name, records, confirmed, anchored)
            if new:
                conn.executemany("INSERT INTO anchored (seq, hash) VALUES (?, ?)", [(r.seq, r.hash) for r in new])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _run(self, role: str, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run `op` on the cached connection for `role` (caller holds that role's lock),
        wrapping driver errors and dropping the connection after one."""
        try:
            return op(self._connection(role).conn)
        except (sqlite3.Error, OSError) as exc:
            self._drop(role)
            raise AnchorUnavailable(f"{self.name}: sqlite anchor at {self.path}: {_reason(exc)}") from exc

    def _connection(self, role: str) -> _Conn:
        """The cached connection for `role`, reopened when the file under our name is no longer
        the one it has open (replaced, moved) or no longer looks like a SQLite database: SQLite
        itself would go on serving pages from its WAL over a file overwritten with garbage."""
        identity = self._identity()
        cached: _Conn | None = getattr(self, f"_{role}")
        if cached is not None and identity is not None and cached.identity == identity:
            return cached
        if cached is not None:
            self._drop(role)
        if identity is None and self._opened_once:
            raise AnchorUnavailable(
                f"{self.name}: sqlite anchor database {self.path} has vanished (not re-creating it)"
            )
        conn = _open(self.path, create=not self._opened_once, timeout=self.busy_timeout_s)
        identity = self._identity()
        if identity is None:
            conn.close()
            raise FileNotFoundError(f"{self.path} vanished while opening")
        self._opened_once = True
        fresh = _Conn(conn, identity)
        setattr(self, f"_{role}", fresh)
        return fresh

    def _identity(self) -> tuple[int, int] | None:
        """(device, inode) of the file at our path, None if absent; raises `sqlite3.DatabaseError`
        if it is not empty and does not start with the SQLite header.

        The header is read through one descriptor kept open per inode, never opened and closed on
        each call: closing any descriptor of a file drops every POSIX lock this process holds on it,
        SQLite's included, and another process closing its last connection would then believe it
        was the last user, checkpoint and delete the WAL this process is still writing to (its
        later commits invisible to every other process until it closes)."""
        with self._fd_lock:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                return None
            identity = (st.st_dev, st.st_ino)
            if self._hdr_fd is None or self._hdr_fd[1] != identity:
                try:
                    fd = os.open(self.path, os.O_RDONLY)
                except FileNotFoundError:
                    return None
                fst = os.fstat(fd)
                old, self._hdr_fd = self._hdr_fd, (fd, (fst.st_dev, fst.st_ino))
                if old is not None:
                    os.close(old[0])  # another inode (the file was replaced): no lock of ours on it matters
            fd, identity = self._hdr_fd
            header = os.pread(fd, len(SQLITE_MAGIC), 0)
        if header and header != SQLITE_MAGIC:
            raise sqlite3.DatabaseError("file is not a database")
        return identity

    def _drop(self, role: str) -> None:
        cached: _Conn | None = getattr(self, f"_{role}")
        if cached is not None:
            cached.close()
        setattr(self, f"_{role}", None)

    def _probe(self) -> None:
        if self._opened_once and not self.path.exists():
            raise FileNotFoundError(f"{self.path} has vanished")
        directory = self.path.parent
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(f"directory {directory} is not writable")
        if self._identity() is not None and not os.access(self.path, os.R_OK | os.W_OK):
            raise PermissionError(f"{self.path} is not writable")
        conn = _open(self.path, create=not self._opened_once, timeout=self.probe_timeout_s)
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS _readyz_probe (id INTEGER PRIMARY KEY)")
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("INSERT OR REPLACE INTO _readyz_probe (id) VALUES (1)")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            _max_seq(conn)
        finally:
            conn.close()
        self._opened_once = True


class _Conn:
    __slots__ = ("conn", "identity")

    def __init__(self, conn: sqlite3.Connection, identity: tuple[int, int]) -> None:
        self.conn = conn
        self.identity = identity

    def close(self) -> None:
        try:
            self.conn.close()
        except sqlite3.Error:  # closing a broken connection is best effort
            pass


def _open(path: Path, *, create: bool, timeout: float) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, synchronous=FULL, with
    the schema in place. `create=False` refuses to create a missing file."""
    uri = f"{Path(os.path.abspath(path)).as_uri()}?mode={'rwc' if create else 'rw'}"
    conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch to WAL (journal_mode={mode})")
        conn.execute("PRAGMA synchronous=FULL")
        for stmt in SCHEMA:
            conn.execute(stmt)
    except BaseException:
        conn.close()
        raise
    return conn


def _max_seq(conn: sqlite3.Connection) -> int:
    return int(conn.execute(
        "SELECT COALESCE(MAX(seq), (SELECT CAST(value AS INTEGER) - 1 FROM anchor_meta WHERE key = 'start_seq'), 0) "
        "FROM anchored").fetchone()[0])


def _start_seq(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM anchor_meta WHERE key = 'start_seq'").fetchone()
    return int(row[0]) if row else 1


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
