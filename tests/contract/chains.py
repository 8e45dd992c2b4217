"""Valid hash chains for anchor tests, built with the ledger's own rules (ledger.chain)."""

from __future__ import annotations

import uuid

from ledger.chain import GENESIS, ChainRecord, make_envelope, record_hash

STREAM = str(uuid.UUID("00000000-0000-4000-8000-000000000001"))


def make_chain(n: int, *, fork: str = "", start: int = 1, prev: str = GENESIS) -> list[ChainRecord]:
    """Records seq start..start+n-1, each linked to the one before (`prev` for the first).
    Chains with different `fork` labels share no hash at any seq."""
    records: list[ChainRecord] = []
    for seq in range(start, start + n):
        at = f"2026-11-29T05:00:00.{seq % 1_000_000:06d}Z"
        data = {"i": seq, "fork": fork}
        envelope = make_envelope(seq=seq, type="TestRecorded", stream=STREAM, version=seq, at=at, data=data, prev=prev)
        h = record_hash(envelope)
        records.append(ChainRecord(seq=seq, type="TestRecorded", stream=STREAM, version=seq, at=at, data=data, prev=prev, hash=h))
        prev = h
    return records


def extend(chain: list[ChainRecord], n: int, *, fork: str = "") -> list[ChainRecord]:
    """`n` more records linked to the end of `chain`."""
    last = chain[-1] if chain else None
    return make_chain(n, fork=fork, start=(last.seq + 1) if last else 1, prev=last.hash if last else GENESIS)
