"""Typed configuration of the ledger core. Built by the composition roots from `BROKER_*`
variables (api/config.py); the core never reads the environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    db_path: Path
    # Group commit: at most this many appends share one transaction ...
    batch_max: int = 256
    # ... and the writer waits at most this long for more appends to join a batch. 0 = take what is
    # queued right now (the next batch forms while this one commits).
    batch_max_wait_ms: float = 0.0
    # SQLite busy timeout for the write lock (other processes writing the same file).
    lock_timeout_s: int = 10

    def __post_init__(self) -> None:
        if self.batch_max < 1:
            raise ValueError("batch_max must be >= 1")
        if self.batch_max_wait_ms < 0:
            raise ValueError("batch_max_wait_ms must be >= 0")
