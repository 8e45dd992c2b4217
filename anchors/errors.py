"""Anchor errors and the submit rules every anchor shares.

The error types of the `Anchor` port live in the core (`ledger.errors`, so the core can catch
them without importing this package); they are re-exported here with two refinements:

- `AnchorGap`: a batch starts above `confirmed_upto() + 1`. Nothing is written.
- `AnchorBatchInvalid`: a batch is malformed in itself (seqs not consecutive, `prev` not linking
  each record to the one before, a hash that is not 64 lowercase hex, a seq below 1).

`check_batch` and `plan_submit` are the rules `MemoryAnchor` and `SQLiteAnchor` apply (and any
other anchor may): a batch is contiguous and linked, starts at or below `confirmed + 1`,
re-submitted records must carry the hash already anchored (else `AnchorConflict`), and the first
new record's `prev` must be the hash anchored just below it (a ledger that forked under an anchor
is refused with `AnchorConflict`, never silently witnessed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from ledger.chain import GENESIS, ChainRecord
from ledger.errors import AnchorConflict, AnchorError, AnchorUnavailable

__all__ = [
    "AnchorBatchInvalid",
    "AnchorConflict",
    "AnchorError",
    "AnchorGap",
    "AnchorUnavailable",
    "check_batch",
    "plan_submit",
]

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


class AnchorGap(AnchorError):
    """The batch starts above `confirmed_upto() + 1`; an anchor only confirms prefixes."""

    def __init__(self, anchor: str, first_seq: int, confirmed: int) -> None:
        self.first_seq = first_seq
        self.confirmed = confirmed
        super().__init__(
            f"{anchor}: batch starts at seq {first_seq} but the anchor confirmed up to {confirmed}; "
            f"the next record must be seq {confirmed + 1} (refusing a gap, nothing written)"
        )


class AnchorBatchInvalid(AnchorError):
    """The batch is malformed in itself; nothing is written."""


def check_batch(anchor: str, records: Sequence[ChainRecord]) -> None:
    """Raise `AnchorBatchInvalid` unless `records` are consecutive, linked and well formed."""
    prev: ChainRecord | None = None
    for r in records:
        if not isinstance(r.seq, int) or r.seq < 1:
            raise AnchorBatchInvalid(f"{anchor}: seq must be an integer >= 1, got {r.seq!r}")
        if not isinstance(r.hash, str) or not _HEX64.match(r.hash):
            raise AnchorBatchInvalid(f"{anchor}: seq {r.seq}: hash is not 64 lowercase hex")
        if r.seq == 1 and r.prev != GENESIS:
            raise AnchorBatchInvalid(f"{anchor}: seq 1 must have the genesis prev")
        if prev is not None:
            if r.seq != prev.seq + 1:
                raise AnchorBatchInvalid(f"{anchor}: seq {r.seq} follows seq {prev.seq} in one batch")
            if r.prev != prev.hash:
                raise AnchorBatchInvalid(f"{anchor}: seq {r.seq} does not link to seq {prev.seq}")
        prev = r


def existing_range(records: Sequence[ChainRecord], confirmed: int) -> tuple[int, int] | None:
    """The inclusive seq range whose anchored hashes `plan_submit` needs (None: none needed):
    the batch's overlap with the anchored prefix plus the record just below the batch."""
    if not records:
        return None
    lo = max(1, records[0].seq - 1)
    hi = min(records[-1].seq, confirmed)
    return (lo, hi) if lo <= hi else None


def plan_submit(
    anchor: str, records: Sequence[ChainRecord], confirmed: int, anchored: Mapping[int, str]
) -> list[ChainRecord]:
    """The records of a checked batch to write, given the anchor's confirmed position and its
    hashes over `existing_range(records, confirmed)`. Raises `AnchorGap` or `AnchorConflict`
    (then nothing may be written)."""
    if not records:
        return []
    first = records[0].seq
    if first > confirmed + 1:
        raise AnchorGap(anchor, first, confirmed)
    for r in records:
        if r.seq > confirmed:
            break
        held = anchored.get(r.seq)
        if held != r.hash:
            raise AnchorConflict(
                f"{anchor}: seq {r.seq} is anchored with hash {held}, refusing {r.hash} (nothing written)"
            )
    new = [r for r in records if r.seq > confirmed]
    if new and new[0] is records[0] and first > 1:
        below = anchored.get(first - 1)
        if below != records[0].prev:
            raise AnchorConflict(
                f"{anchor}: seq {first} links to prev {records[0].prev} but seq {first - 1} is "
                f"anchored with hash {below} (the chain forked; nothing written)"
            )
    return new
