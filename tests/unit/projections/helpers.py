"""Shared test helpers: a fake record source and ledger population."""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa

from ledger.chain import ChainHead, ChainRecord


def make_record(seq: int, type_: str = "WalletBound", data: dict[str, Any] | None = None, at: str | None = None) -> ChainRecord:
    if data is None:
        data = {"omni_account": f"omni-{seq}", "address": f"0x{seq:040x}", "role": "master", "parent_address": None}
    return ChainRecord(
        seq=seq,
        type=type_,
        stream=f"00000000-0000-0000-0000-{seq:012x}",
        version=1,
        at=at or f"2026-01-01T00:00:{seq % 60:02d}.{seq:06d}Z",
        data=data,
        prev="0" * 64,
        hash=f"{seq:064x}",
    )


class FakeSource:
    """A record source whose visible records the test controls: showing seq 4 before seq 3
    imitates a transaction that took seq 3 but committed after the one that took seq 4."""

    def __init__(self, *records: ChainRecord) -> None:
        self._records: dict[int, ChainRecord] = {}
        self._lock = threading.Lock()
        self.reads = 0
        self.show(*records)

    def show(self, *records: ChainRecord) -> None:
        with self._lock:
            for r in records:
                self._records[r.seq] = r

    def read(self, after_seq: int, limit: int) -> list[ChainRecord]:
        with self._lock:
            self.reads += 1
            seqs = sorted(s for s in self._records if s > after_seq)[:limit]
            return [self._records[s] for s in seqs]

    def head(self) -> ChainHead:
        with self._lock:
            top = max(self._records, default=0)
        return ChainHead(top, "0" * 64)


def table_rows(engine: sa.Engine, table: sa.Table) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(table).order_by(*table.primary_key.columns))]
