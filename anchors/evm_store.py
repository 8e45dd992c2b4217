"""The EVM anchor's own bookkeeping: a local SQLite file (WAL, `synchronous=FULL`).

Schema::

    evm_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)   -- format, chain_id, contract, fee_payer
    evm_records(seq INTEGER PRIMARY KEY, hash TEXT NOT NULL)
        -- every record accepted by submit(): exactly seqs 1..accepted_upto, no gap
    evm_batches(id INTEGER PRIMARY KEY, first_seq UNIQUE, last_seq, root, chain_head, status,
                tx_hash, block_number, block_hash, nonce, gas_used, orphaned_count, created_at, updated_at)
        -- contiguous ranges in first_seq order; status pending (cut, its transaction written
        -- ahead but not yet accepted by a node) | sent (broadcast; with a block_number: mined,
        -- waiting for its confirmation depth) | confirmed | orphaned (a reorg removed it; re-sent next)
    evm_txs(tx_hash TEXT PRIMARY KEY, batch_id, nonce, max_fee, max_priority_fee, gas, raw, sent_at, state)
        -- every transaction signed for a batch, written BEFORE it is broadcast (write-ahead), with
        -- its raw signed bytes so a restart can re-broadcast it; state signed|sent|mined|replaced|dropped|failed

Invariants:
- `evm_records` is only extended by `accept()` under `BEGIN IMMEDIATE`, with the rules of
  `anchors.errors.plan_submit` against the accepted prefix, so it never has a gap or a changed hash.
- A batch row and its first transaction are inserted in one transaction; the transaction is
  broadcast only after that commit. A batch's range never changes once cut (a re-anchor after a
  reorg re-sends the same range and root).
- `confirmed_upto()` is the last seq of the highest confirmed batch below which every batch is
  confirmed (0 without one): a prefix, cheap to compute, read without any network call.

One connection per store, guarded by a lock: the anchor's callers and its worker share it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from ledger.chain import ChainRecord

from .errors import AnchorUnavailable, existing_range, plan_submit

FORMAT = "agentkeys-evm-anchor-state/1"

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS evm_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS evm_records (seq INTEGER PRIMARY KEY, hash TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS evm_batches (
        id INTEGER PRIMARY KEY,
        first_seq INTEGER NOT NULL UNIQUE,
        last_seq INTEGER NOT NULL,
        root TEXT NOT NULL,
        chain_head TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'confirmed', 'orphaned')),
        tx_hash TEXT,
        block_number INTEGER,
        block_hash TEXT,
        nonce INTEGER,
        gas_used INTEGER,
        orphaned_count INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS evm_batches_status ON evm_batches (status, first_seq)",
    """CREATE TABLE IF NOT EXISTS evm_txs (
        tx_hash TEXT PRIMARY KEY,
        batch_id INTEGER NOT NULL REFERENCES evm_batches (id),
        nonce INTEGER NOT NULL,
        max_fee INTEGER NOT NULL,
        max_priority_fee INTEGER NOT NULL,
        gas INTEGER NOT NULL,
        raw TEXT NOT NULL,
        sent_at REAL NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('signed', 'sent', 'mined', 'replaced', 'dropped', 'failed'))
    )""",
    "CREATE INDEX IF NOT EXISTS evm_txs_batch ON evm_txs (batch_id)",
    f"INSERT OR IGNORE INTO evm_meta (key, value) VALUES ('format', '{FORMAT}')",  # noqa: S608  column list/format are module constants; values are bound parameters
)

T = TypeVar("T")

#: statuses of a batch that still needs the worker (not confirmed)
OPEN = ("pending", "sent", "orphaned")
#: states of a transaction that may still be mined
LIVE = ("signed", "sent")


@dataclass(frozen=True, slots=True)
class BatchRow:
    id: int
    first_seq: int
    last_seq: int
    root: str  # 0x + 64 hex
    chain_head: str  # 0x + 64 hex
    status: str
    tx_hash: str | None
    block_number: int | None
    block_hash: str | None
    nonce: int | None
    gas_used: int | None
    orphaned_count: int
    created_at: float
    updated_at: float

    @property
    def mined(self) -> bool:
        return self.status in ("sent", "confirmed") and self.block_number is not None

    @property
    def size(self) -> int:
        return self.last_seq - self.first_seq + 1

    def public(self) -> dict[str, Any]:
        """The dict `EvmAnchor.batches()` returns."""
        return {
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "root": self.root,
            "chain_head": self.chain_head,
            "tx_hash": self.tx_hash,
            "block_number": self.block_number,
            "block_hash": self.block_hash,
            "status": self.status,
            "nonce": self.nonce,
            "gas_used": self.gas_used,
            "orphaned_count": self.orphaned_count,
        }


@dataclass(frozen=True, slots=True)
class TxRow:
    tx_hash: str
    batch_id: int
    nonce: int
    max_fee: int
    max_priority_fee: int
    gas: int
    raw: str
    sent_at: float
    state: str

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("raw")
        return d


_BATCH_COLS = (
    "id, first_seq, last_seq, root, chain_head, status, tx_hash, block_number, block_hash, nonce, gas_used, "
    "orphaned_count, created_at, updated_at"
)
_TX_COLS = "tx_hash, batch_id, nonce, max_fee, max_priority_fee, gas, raw, sent_at, state"


class EvmStore:
    """The state file. Raises `AnchorUnavailable` for every SQLite/OS error."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        try:
            if readonly:
                if not self.path.is_file():
                    raise AnchorUnavailable(f"EVM anchor state {self.path}: no such file")
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                self._conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, isolation_level=None,
                                             check_same_thread=False)
                self._conn.execute("SELECT 1 FROM evm_batches LIMIT 1").fetchall()
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._conn = sqlite3.connect(str(self.path), timeout=busy_timeout_s, isolation_level=None,
                                             check_same_thread=False)
                mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise sqlite3.OperationalError(f"cannot switch to WAL (journal_mode={mode})")
                self._conn.execute("PRAGMA synchronous=FULL")
                for stmt in SCHEMA:
                    self._conn.execute(stmt)
        except sqlite3.Error as exc:
            raise AnchorUnavailable(f"EVM anchor state {self.path}: {exc}") from exc
        except OSError as exc:
            raise AnchorUnavailable(f"EVM anchor state {self.path}: {exc.strerror or exc}") from exc

    # --- plumbing ---------------------------------------------------------------------------

    def _run(self, op: Callable[[sqlite3.Connection], T], *, write: bool = False) -> T:
        with self._lock:
            conn = self._conn
            try:
                if not write:
                    return op(conn)
                conn.execute("BEGIN IMMEDIATE")
                try:
                    out = op(conn)
                    conn.execute("COMMIT")
                    return out
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise AnchorUnavailable(f"EVM anchor state {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass

    # --- meta ---------------------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        return self._run(lambda c: dict(c.execute("SELECT key, value FROM evm_meta").fetchall()))

    def bind(self, **values: str) -> None:
        """Tie the file to a chain, contract and fee payer: first use writes them, later uses must
        match (a state file of another contract or chain would adopt the wrong batches)."""

        def op(c: sqlite3.Connection) -> None:
            held = dict(c.execute("SELECT key, value FROM evm_meta").fetchall())
            for key, value in values.items():
                if key in held and held[key].lower() != value.lower():
                    raise AnchorUnavailable(
                        f"EVM anchor state {self.path} belongs to {key} {held[key]}, not {value} "
                        f"(use a new BROKER_EVM_STATE_DB for a new contract or chain)"
                    )
            c.executemany("INSERT OR IGNORE INTO evm_meta (key, value) VALUES (?, ?)", list(values.items()))

        self._run(op, write=True)

    # --- records ------------------------------------------------------------------------------

    def accepted_upto(self) -> int:
        return self._run(lambda c: int(c.execute("SELECT COALESCE(MAX(seq), 0) FROM evm_records").fetchone()[0]))

    def accept(self, anchor_name: str, records: Sequence[ChainRecord]) -> tuple[int, int]:
        """Append the new part of a checked batch (plan_submit rules against the accepted prefix).
        Returns (number of new records, accepted_upto after)."""

        def op(c: sqlite3.Connection) -> tuple[int, int]:
            accepted = int(c.execute("SELECT COALESCE(MAX(seq), 0) FROM evm_records").fetchone()[0])
            span = existing_range(records, accepted)
            held: dict[int, str] = {}
            if span:
                held = dict(c.execute("SELECT seq, hash FROM evm_records WHERE seq BETWEEN ? AND ?", span).fetchall())
            new = plan_submit(anchor_name, records, accepted, held)
            if new:
                c.executemany("INSERT INTO evm_records (seq, hash) VALUES (?, ?)", [(r.seq, r.hash) for r in new])
                accepted = new[-1].seq
            return len(new), accepted

        return self._run(op, write=True)

    def record_hashes(self, first: int, last: int) -> list[str]:
        """The accepted hashes of seqs first..last in order (shorter if not all accepted)."""
        rows = self._run(
            lambda c: c.execute("SELECT hash FROM evm_records WHERE seq BETWEEN ? AND ? ORDER BY seq", (first, last)).fetchall()
        )
        return [r[0] for r in rows]

    def hash_at(self, seq: int) -> str | None:
        row = self._run(lambda c: c.execute("SELECT hash FROM evm_records WHERE seq = ?", (seq,)).fetchone())
        return row[0] if row else None

    # --- batches ------------------------------------------------------------------------------

    def batches(self, *, statuses: Iterable[str] | None = None, since_seq: int = 0,
                min_block: int | None = None) -> list[BatchRow]:
        """Batches in seq order: those ending at or after `since_seq`, with one of `statuses`, mined
        at or after block `min_block` (each filter optional)."""

        def op(c: sqlite3.Connection) -> list[BatchRow]:
            sql = f"SELECT {_BATCH_COLS} FROM evm_batches WHERE last_seq >= ?"  # noqa: S608  column list/format are module constants; values are bound parameters
            args: list[Any] = [since_seq]
            if min_block is not None:
                sql += " AND block_number >= ?"
                args.append(min_block)
            if statuses is not None:
                st = list(statuses)
                sql += f" AND status IN ({','.join('?' * len(st))})"
                args += st
            return [BatchRow(*r) for r in c.execute(sql + " ORDER BY first_seq", args).fetchall()]

        return self._run(op)

    def batch_containing(self, seq: int) -> BatchRow | None:
        """The batch whose range holds `seq`, any status, or None: one indexed lookup (the UNIQUE
        index on `first_seq`), never a scan of every batch."""
        if not 1 <= seq < 2**63:
            return None
        row = self._run(lambda c: c.execute(
            f"SELECT {_BATCH_COLS} FROM evm_batches WHERE first_seq <= ? ORDER BY first_seq DESC LIMIT 1", (seq,)  # noqa: S608  column list/format are module constants; values are bound parameters
        ).fetchone())
        found = BatchRow(*row) if row else None
        return found if found is not None and found.last_seq >= seq else None

    def batch(self, batch_id: int) -> BatchRow | None:
        row = self._run(lambda c: c.execute(f"SELECT {_BATCH_COLS} FROM evm_batches WHERE id = ?", (batch_id,)).fetchone())  # noqa: S608  column list/format are module constants; values are bound parameters
        return BatchRow(*row) if row else None

    def first_open_batch(self) -> BatchRow | None:
        """The lowest batch that is not yet mined on the canonical chain (pending, orphaned, or
        sent without a block): the one the worker must get mined next."""
        row = self._run(lambda c: c.execute(
            f"SELECT {_BATCH_COLS} FROM evm_batches WHERE status IN ('pending', 'orphaned') "  # noqa: S608  column list/format are module constants; values are bound parameters
            "OR (status = 'sent' AND block_number IS NULL) ORDER BY first_seq LIMIT 1"
        ).fetchone())
        return BatchRow(*row) if row else None

    def last_batched_seq(self) -> int:
        return self._run(_last_batched)

    def batch_count(self) -> int:
        return self._run(lambda c: int(c.execute("SELECT COUNT(*) FROM evm_batches").fetchone()[0]))

    def insert_batch(
        self, first: int, last: int, root: str, chain_head: str, *, status: str = "pending", tx: TxRow | None = None,
        block_number: int | None = None, block_hash: str | None = None, tx_hash: str | None = None,
    ) -> int:
        """Cut a batch (with its first transaction, write-ahead) in one transaction. The range
        must continue the last batch exactly."""
        now = time.time()

        def op(c: sqlite3.Connection) -> int:
            last_batched = _last_batched(c)
            has_any = c.execute("SELECT 1 FROM evm_batches LIMIT 1").fetchone() is not None
            if has_any and first != last_batched + 1:
                raise AnchorUnavailable(f"internal: batch {first}..{last} does not continue batch ending at {last_batched}")
            cur = c.execute(
                "INSERT INTO evm_batches (first_seq, last_seq, root, chain_head, status, tx_hash, block_number, "
                "block_hash, nonce, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (first, last, root, chain_head, status, tx.tx_hash if tx else tx_hash, block_number, block_hash,
                 tx.nonce if tx else None, now, now),
            )
            batch_id = int(cur.lastrowid)  # type: ignore[arg-type]  # set after a successful INSERT
            if tx is not None:
                _insert_tx(c, tx, batch_id)
            return batch_id

        return self._run(op, write=True)

    def add_tx(self, batch_id: int, tx: TxRow) -> None:
        """Write-ahead a (replacement or re-send) transaction for a batch; the batch shows it."""

        def op(c: sqlite3.Connection) -> None:
            _insert_tx(c, tx, batch_id)
            c.execute("UPDATE evm_batches SET tx_hash = ?, nonce = ?, updated_at = ? WHERE id = ?",
                      (tx.tx_hash, tx.nonce, time.time(), batch_id))

        self._run(op, write=True)

    def set_status(self, batch_id: int, status: str) -> None:
        self._run(lambda c: c.execute("UPDATE evm_batches SET status = ?, updated_at = ? WHERE id = ?",
                                      (status, time.time(), batch_id)), write=True)

    def mark_mined(self, batch_id: int, *, tx_hash: str | None, block_number: int, block_hash: str | None,
                   gas_used: int | None, nonce: int | None, confirmed: bool) -> None:
        def op(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE evm_batches SET status = ?, tx_hash = COALESCE(?, tx_hash), block_number = ?, block_hash = ?, "
                "gas_used = COALESCE(?, gas_used), nonce = COALESCE(?, nonce), updated_at = ? WHERE id = ?",
                ("confirmed" if confirmed else "sent", tx_hash, block_number, block_hash, gas_used, nonce, time.time(),
                 batch_id),
            )
            if tx_hash is not None:
                c.execute("UPDATE evm_txs SET state = 'mined' WHERE tx_hash = ?", (tx_hash,))
                c.execute("UPDATE evm_txs SET state = 'replaced' WHERE batch_id = ? AND tx_hash != ? AND state IN "
                          "('signed', 'sent')", (batch_id, tx_hash))

        self._run(op, write=True)

    def mark_confirmed(self, batch_id: int) -> None:
        self.set_status(batch_id, "confirmed")

    def orphan_from(self, first_seq: int) -> list[BatchRow]:
        """Mark the batch starting at `first_seq` and every later mined batch orphaned (a reorg
        removed them); their transactions become re-sendable. Returns the batches it changed."""

        def op(c: sqlite3.Connection) -> list[BatchRow]:
            rows = [BatchRow(*r) for r in c.execute(
                f"SELECT {_BATCH_COLS} FROM evm_batches WHERE first_seq >= ? AND block_number IS NOT NULL "  # noqa: S608  column list/format are module constants; values are bound parameters
                "ORDER BY first_seq", (first_seq,)).fetchall()]
            for b in rows:
                c.execute(
                    "UPDATE evm_batches SET status = 'orphaned', block_number = NULL, block_hash = NULL, "
                    "orphaned_count = orphaned_count + 1, updated_at = ? WHERE id = ?", (time.time(), b.id))
                c.execute("UPDATE evm_txs SET state = 'sent' WHERE batch_id = ? AND state = 'mined'", (b.id,))
            return rows

        return self._run(op, write=True)

    # --- chain replacement (issue 14) ----------------------------------------------------------

    def set_meta(self, key: str, value: str) -> None:
        """Overwrite one `evm_meta` value (the chain's genesis hash after a chain replacement)."""
        self._run(lambda c: c.execute("INSERT OR REPLACE INTO evm_meta (key, value) VALUES (?, ?)", (key, value)),
                  write=True)

    def forget_batches(self, *, genesis_hash: str) -> int:
        """The chain these batches were sent to is gone (another genesis): drop every batch and its
        transactions and record the new chain, in one transaction. The accepted records stay; they
        are re-cut into full batches. Returns the number of batches dropped."""

        def op(c: sqlite3.Connection) -> int:
            n = int(c.execute("SELECT COUNT(*) FROM evm_batches").fetchone()[0])
            c.execute("DELETE FROM evm_txs")
            c.execute("DELETE FROM evm_batches")
            c.execute("INSERT OR REPLACE INTO evm_meta (key, value) VALUES ('genesis_hash', ?)", (genesis_hash,))
            return n

        return self._run(op, write=True)

    def confirmed_upto(self) -> int:
        def op(c: sqlite3.Connection) -> int:
            # every batch below the lowest unconfirmed one is confirmed: the one just below it ends
            # the confirmed prefix (indexed lookups only; the table grows by one row per batch)
            lowest_open = c.execute(
                "SELECT MIN(first_seq) FROM evm_batches WHERE status IN ('pending', 'sent', 'orphaned')").fetchone()[0]
            if lowest_open is None:
                row = c.execute("SELECT last_seq FROM evm_batches ORDER BY first_seq DESC LIMIT 1").fetchone()
            else:
                row = c.execute("SELECT last_seq FROM evm_batches WHERE first_seq < ? ORDER BY first_seq DESC LIMIT 1",
                                (lowest_open,)).fetchone()
            return int(row[0]) if row else 0

        return self._run(op)

    def verify(self, seq: int, hash: str) -> bool:
        """Is `hash` the accepted hash at `seq`, inside a confirmed batch of the confirmed prefix?"""
        if seq > self.confirmed_upto() or seq < 1:
            return False

        def op(c: sqlite3.Connection) -> bool:
            batch = c.execute("SELECT last_seq, status FROM evm_batches WHERE first_seq <= ? ORDER BY first_seq DESC "
                              "LIMIT 1", (seq,)).fetchone()
            if batch is None or batch[0] < seq or batch[1] != "confirmed":
                return False
            row = c.execute("SELECT hash FROM evm_records WHERE seq = ?", (seq,)).fetchone()
            return row is not None and row[0] == hash

        return self._run(op)

    # --- transactions -------------------------------------------------------------------------

    def txs(self, batch_id: int) -> list[TxRow]:
        rows = self._run(lambda c: c.execute(
            f"SELECT {_TX_COLS} FROM evm_txs WHERE batch_id = ? ORDER BY sent_at, max_fee", (batch_id,)).fetchall())  # noqa: S608  column list/format are module constants; values are bound parameters
        return [TxRow(*r) for r in rows]

    def live_txs_of_other_batches(self, batch_id: int) -> list[TxRow]:
        rows = self._run(lambda c: c.execute(
            f"SELECT {_TX_COLS} FROM evm_txs WHERE batch_id != ? AND state IN ('signed', 'sent')", (batch_id,)).fetchall())  # noqa: S608  column list/format are module constants; values are bound parameters
        return [TxRow(*r) for r in rows]

    def mark_broadcast(self, tx_hash: str) -> None:
        """The node accepted the transaction: it is `sent`, and so is its batch (from pending or
        orphaned)."""

        def op(c: sqlite3.Connection) -> None:
            c.execute("UPDATE evm_txs SET state = 'sent' WHERE tx_hash = ? AND state = 'signed'", (tx_hash,))
            c.execute("UPDATE evm_batches SET status = 'sent', updated_at = ? WHERE id = (SELECT batch_id FROM evm_txs "
                      "WHERE tx_hash = ?) AND status IN ('pending', 'orphaned')", (time.time(), tx_hash))

        self._run(op, write=True)

    def set_tx_state(self, tx_hash: str, state: str) -> None:
        self._run(lambda c: c.execute("UPDATE evm_txs SET state = ? WHERE tx_hash = ?", (state, tx_hash)), write=True)

    def all_txs(self) -> list[TxRow]:
        rows = self._run(lambda c: c.execute(f"SELECT {_TX_COLS} FROM evm_txs ORDER BY sent_at").fetchall())  # noqa: S608  column list/format are module constants; values are bound parameters
        return [TxRow(*r) for r in rows]


def _last_batched(c: sqlite3.Connection) -> int:
    row = c.execute("SELECT last_seq FROM evm_batches ORDER BY first_seq DESC LIMIT 1").fetchone()
    return int(row[0]) if row else 0


def _insert_tx(c: sqlite3.Connection, tx: TxRow, batch_id: int) -> None:
    c.execute(
        f"INSERT OR IGNORE INTO evm_txs ({_TX_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608  column list/format are module constants; values are bound parameters
        (tx.tx_hash, batch_id, tx.nonce, tx.max_fee, tx.max_priority_fee, tx.gas, tx.raw, tx.sent_at, tx.state),
    )
