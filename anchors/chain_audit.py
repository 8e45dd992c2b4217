"""`audit verify --rpc URL --contract A [--contract B ...]`: the whole ledger (or export) against the
EVM anchor.

The offline verifier (`ledger.audit`) makes one pass over the source and keeps every record's
stored hash by seq (`SeqHashes`); this module then reads every batch of every contract at one
pinned block (`ChainReader`) and recomputes it from that table: the RFC 6962 root over the batch's
record hashes and the chain head (the hash at `lastSeq`). An operator can rewrite history and
recompute every later hash so the export is internally consistent; the anchored roots and heads are
the one thing he cannot rewrite. Findings (same `{seq, kind, detail}` shape as the offline
verifier, at most one per record, the verifier's own findings first):

- `anchor_mismatch` at a batch's `lastSeq`: the anchored chain head differs from the export's hash
  at that seq (every batch from the first rewritten record on: the head commits to the prefix);
  at its `firstSeq` when only the root differs; at a contract's `startSeq` when a migration is not
  contiguous (the next contract must start at the previous one's `lastSeq() + 1`) or a contract's
  batches do not follow each other;
- `truncated`: a seq the chain anchored that the export lacks beyond its last record (one per seq);
- `missing`: a seq of an anchored batch absent inside the export (the verifier reports it too).

The trusted checkpoint (`--checkpoint`) is the auditor's, chain or no chain: `ledger.audit.checkpoint`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ledger.audit import (
    ANCHOR_MISMATCH,
    MISSING,
    TRUNCATED,
    AuditResult,
    ChainCheck,
    ChainOutcome,
    Finding,
    SeqHashes,
    VerifyReport,
    verify_ledger,
)
from ledger.audit.merkle import leaf_hash, root_of_leaf_hashes
from ledger.audit.verifier import add_finding, add_finding_range

from .chain_reader import ChainBatch, ChainReader, ContractState

__all__ = ["ChainSummary", "audit_against_chain", "chain_check", "verify_with_chain"]


@dataclass(slots=True)
class ChainSummary:
    chain_id: int
    block: int
    contracts: list[dict[str, Any]]
    batches: int = 0
    anchored_upto: int = 0
    checked_batches: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "block": self.block,
            "contracts": self.contracts,
            "batches": self.batches,
            "checked_batches": self.checked_batches,
            "anchored_upto": self.anchored_upto,
        }


def audit_against_chain(
    seqs: SeqHashes,
    reader: ChainReader,
    *,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Finding], ChainSummary]:
    """Check every batch of every contract of `reader` against the export's hashes `seqs`.
    Returns the findings (at most one per seq) and a summary. Raises `ChainError`."""
    findings: dict[int, Finding] = {}
    summary = ChainSummary(reader.chain_id, reader.block, [])
    max_seq = seqs.max_seq
    prev_state: ContractState | None = None
    expected_next: int | None = None  # first seq the next batch must start at
    previous_matched: bool | None = None  # did the batch before match (None: unknown)?
    n = 0
    for st in reader.states():
        summary.contracts.append(
            {"address": st.address, "start_seq": st.start_seq, "last_seq": st.last_seq, "batches": st.batch_count}
        )
        if prev_state is not None and st.start_seq != prev_state.last_seq + 1:
            if st.start_seq > prev_state.last_seq + 1:
                why = f"seqs {prev_state.last_seq + 1}..{st.start_seq - 1} are anchored by neither"
            else:
                why = f"seqs {st.start_seq}..{prev_state.last_seq} are anchored by both"
            add_finding(
                findings,
                st.start_seq,
                ANCHOR_MISMATCH,
                f"migration not contiguous: contract {st.address} starts at seq {st.start_seq} but contract "
                f"{prev_state.address} ends at seq {prev_state.last_seq} ({why})",
            )
        expected_next = st.start_seq
        if prev_state is None and st.start_seq == 1:
            previous_matched = True  # nothing before the first batch
        for batch in reader.batches(st.address):
            n += 1
            summary.batches += 1
            if batch.first_seq != expected_next or batch.last_seq < batch.first_seq:
                add_finding(
                    findings,
                    max(batch.first_seq, 1),
                    ANCHOR_MISMATCH,
                    f"{batch.describe()} does not follow the previous batch (expected it to start at seq {expected_next})",
                )
            expected_next = batch.last_seq + 1
            status = _check_batch(seqs, batch, findings, max_seq, previous_matched)
            if status is not None:
                summary.checked_batches += 1
            previous_matched = status
            if progress is not None and n % 1000 == 0:
                progress(n)
        if st.batch_count and expected_next != st.last_seq + 1:
            add_finding(
                findings,
                max(expected_next, 1),
                ANCHOR_MISMATCH,
                f"contract {st.address} reports lastSeq {st.last_seq} but its batches end at seq {expected_next - 1}",
            )
        summary.anchored_upto = max(summary.anchored_upto, st.last_seq)
        prev_state = st
    return sorted(findings.values(), key=lambda f: (f.seq, f.kind)), summary


def _check_batch(
    seqs: SeqHashes, batch: ChainBatch, findings: dict[int, Finding], max_seq: int, previous_matched: bool | None
) -> bool | None:
    """Compare one batch with the export: True if it matches, False if not, None if its root and
    head could not be recomputed (records absent or damaged)."""
    first, last = batch.first_seq, batch.last_seq
    if last > max_seq:
        add_finding_range(
            findings,
            max(first, max_seq + 1),
            last,
            TRUNCATED,
            f"anchored on chain in {batch.describe()}, but beyond the export's last record (seq {max_seq})",
        )
        last_present = min(last, max_seq)
    else:
        last_present = last
    complete = last <= max_seq
    lo, hi = first, last_present + 1
    if not seqs.all_known(lo, hi):
        complete = False
        for s in range(first, last_present + 1):
            if not seqs.present(s):
                add_finding(findings, s, MISSING, f"absent from the export, anchored on chain in {batch.describe()}")
    if not complete:
        return None
    with memoryview(seqs.hashes) as view:  # released at once: the verifier's bytearray stays resizable
        leaves = [leaf_hash(view[o : o + 32]) for o in range((first << 5), (last + 1) << 5, 32)]
    root = root_of_leaf_hashes(leaves)
    head = seqs.hash_bytes(last)
    if head != batch.chain_head:
        if previous_matched is True:
            where = f"the first rewritten record is in seqs {first}..{last}"
        elif previous_matched is False:
            where = "this follows from an earlier batch's mismatch (a rewrite changes every later hash)"
        else:
            where = f"a record at or before seq {last} differs"
        also = "; the Merkle root differs too" if root != batch.root else ""
        add_finding(
            findings,
            last,
            ANCHOR_MISMATCH,
            f"the chain head anchored by {batch.describe()} is {batch.chain_head.hex()}, the export's hash at seq {last} "
            f"is {head.hex() if head else None}: {where}{also}",
        )
        return False
    if root != batch.root:
        add_finding(
            findings,
            first,
            ANCHOR_MISMATCH,
            f"the Merkle root of seqs {first}..{last} recomputed from the export differs from the root anchored by "
            f"{batch.describe()}: a record of this batch is not the one anchored",
        )
        return False
    return True


def chain_check(reader: ChainReader) -> ChainCheck:
    """The check against `reader`'s contracts, for `ledger.audit.verify_ledger(chain=...)`."""

    def check(seqs: SeqHashes, report: VerifyReport) -> ChainOutcome:
        findings, summary = audit_against_chain(seqs, reader)
        notes = [
            f"chain {summary.chain_id} at block {summary.block}: {summary.batches} batches on "
            f"{len(summary.contracts)} contract(s), anchored up to seq {summary.anchored_upto}"
        ]
        if summary.contracts and summary.contracts[0]["start_seq"] > 1:
            notes.append(f"note: seqs 1..{summary.contracts[0]['start_seq'] - 1} are before the first contract's startSeq")
        if report.head_seq > summary.anchored_upto:
            notes.append(
                f"note: seqs {summary.anchored_upto + 1}..{report.head_seq} are not anchored on chain yet "
                "(checked by the hash chain only)"
            )
        return ChainOutcome(findings, summary, notes)

    return check


def verify_with_chain(
    *,
    export: str | os.PathLike[str] | None = None,
    db: str | os.PathLike[str] | None = None,
    anchor_db: str | os.PathLike[str] | None = None,
    reader: ChainReader | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> AuditResult:
    """`audit verify` with the chain (and/or a checkpoint). Raises `AuditError`, `ChainError`,
    `CheckpointError` (exit 2)."""
    return verify_ledger(
        export=export,
        db=db,
        anchor_db=anchor_db,
        checkpoint=checkpoint,
        chain=chain_check(reader) if reader is not None else None,
        progress=progress,
    )
