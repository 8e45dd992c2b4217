"""Where the runner reads records from.

`RecordSource` is the one method the runner needs; `ledger.app.Ledger` satisfies it (and its
`head()` and `on_commit()` are used when present). `RecorderSource` reads a ledger file through
the chained recorder without starting the ledger's writer thread (the CLI uses it).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Protocol, runtime_checkable

from ledger.chain import ChainHead, ChainRecord

from .errors import ProjectionError


@runtime_checkable
class RecordSource(Protocol):
    def read(self, after_seq: int, limit: int) -> list[ChainRecord]:
        """Records with seq > after_seq, in seq order, at most `limit`. A source may momentarily
        show a later record before an earlier one (a delayed commit); the runner waits for the
        gap to fill and never skips it."""
        ...


class RecorderSource:
    """A read-only view of a ledger file (`ledger.store.ChainedSQLiteRecorder`)."""

    def __init__(self, recorder: object) -> None:
        self.recorder = recorder

    def read(self, after_seq: int = 0, limit: int = 1000) -> list[ChainRecord]:
        return self.recorder.read_records(after_seq, limit)  # type: ignore[attr-defined]

    def head(self) -> ChainHead:
        return self.recorder.head()  # type: ignore[attr-defined]

    def close(self) -> None:
        self.recorder.datastore.close()  # type: ignore[attr-defined]

    def __enter__(self) -> RecorderSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_ledger_source(db_path: str | Path) -> RecorderSource:
    """Open an existing ledger file for reading (never creates one)."""
    from ledger.store import open_recorder

    path = Path(db_path)
    if not path.is_file():
        raise ProjectionError(f"ledger database not found: {path}")
    if not _is_ledger(path):
        raise ProjectionError(f"not a ledger database: {path}")
    return RecorderSource(open_recorder(str(path)))


def _is_ledger(path: Path) -> bool:
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            row = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ledger_records'"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return False
    return row is not None
