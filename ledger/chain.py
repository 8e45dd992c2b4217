"""The hash chain: record envelope, hash rule and link check. Pure functions, no I/O.

Record format v1 (byte-exact in docs/ledger-format.md)::

    envelope = {"v":1, "seq":N, "type":T, "stream":S, "version":K, "at":A, "data":{...}, "prev":P}
    hash     = lowercase hex SHA-256( b"agentkeys.ledger.v1\\x00" || RFC8785(envelope) )

Invariants:
- `seq` starts at 1 and grows by exactly 1 per record, without gaps; it is the chain's own counter.
- `prev` of seq 1 is `GENESIS` (64 zeros); `prev` of seq N is the hash of seq N-1.
- The hash covers every envelope field, so changing any byte of a record changes its hash, and
  changing a hash breaks the `prev` link of the next record.

This module is shared by the writer (ledger/store.py) and the offline verifier (ledger/audit/);
nothing else is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .canonical import canonical_bytes, canonical_bytes_unchecked

FORMAT_VERSION = 1
DOMAIN_TAG = b"agentkeys.ledger.v1\x00"
GENESIS = "0" * 64
EXPORT_FORMAT = "agentkeys-ledger"

ENVELOPE_KEYS = ("v", "seq", "type", "stream", "version", "at", "data", "prev")


def format_at(moment: datetime) -> str:
    """UTC, exactly six fractional digits, `Z` suffix: 2026-11-29T05:00:00.123456Z."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_envelope(
    *, seq: int, type: str, stream: str, version: int, at: str, data: dict[str, Any], prev: str
) -> dict[str, Any]:
    return {
        "v": FORMAT_VERSION,
        "seq": seq,
        "type": type,
        "stream": stream,
        "version": version,
        "at": at,
        "data": data,
        "prev": prev,
    }


def hash_canonical(canonical: bytes) -> str:
    """The record hash of already-canonical envelope bytes."""
    return hashlib.sha256(DOMAIN_TAG + canonical).hexdigest()


def record_hash(envelope: dict[str, Any]) -> str:
    """Hash of an envelope built by the writer (validated canonical encoding)."""
    return hash_canonical(canonical_bytes(envelope))


def recompute_hash(envelope: dict[str, Any]) -> str:
    """Hash of an envelope read back from storage or an export (no validation: a value outside the
    canonical subset yields a hash that cannot match the writer's)."""
    return hash_canonical(canonical_bytes_unchecked(envelope))


@dataclass(frozen=True, slots=True)
class ChainRecord:
    """One record of the chain as stored: the envelope fields plus its hash."""

    seq: int
    type: str
    stream: str
    version: int
    at: str
    data: dict[str, Any]
    prev: str
    hash: str

    def envelope(self) -> dict[str, Any]:
        return make_envelope(
            seq=self.seq,
            type=self.type,
            stream=self.stream,
            version=self.version,
            at=self.at,
            data=self.data,
            prev=self.prev,
        )

    def export_object(self) -> dict[str, Any]:
        obj = self.envelope()
        obj["hash"] = self.hash
        return obj


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last record of the chain: `seq` 0 and `GENESIS` for an empty ledger."""

    seq: int
    hash: str

    @classmethod
    def empty(cls) -> ChainHead:
        return cls(0, GENESIS)
