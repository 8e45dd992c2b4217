"""Job leases: a row per job in a shared SQLite file, so two processes never run the same job at
once. A lease is held until `expires_at`; the holder renews it on each run."""

from __future__ import annotations

import os
import socket
import sqlite3
import time
import uuid
from pathlib import Path

SCHEMA = "CREATE TABLE IF NOT EXISTS job_leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at REAL NOT NULL)"


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leases:
    def __init__(self, path: Path, holder: str | None = None) -> None:
        self.path = Path(path)
        self.holder = holder or default_holder()
        with self._connect() as conn:
            conn.execute(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    def acquire(self, name: str, ttl_s: float, *, now: float | None = None) -> bool:
        """Take or renew the lease on `name` for `ttl_s`; False when another holder has it."""
        now = time.time() if now is None else now
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT holder, expires_at FROM job_leases WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] != self.holder and row[1] > now:
                conn.execute("ROLLBACK")
                return False
            conn.execute(
                "INSERT INTO job_leases (name, holder, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at",
                (name, self.holder, now + ttl_s),
            )
            conn.execute("COMMIT")
            return True
        finally:
            conn.close()

    def release(self, name: str) -> None:
        conn = self._connect()
        try:
            conn.execute("DELETE FROM job_leases WHERE name = ? AND holder = ?", (name, self.holder))
        finally:
            conn.close()
