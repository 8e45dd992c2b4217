"""`audit verify` as a function: one pass of the verifier over an export or a SQLite ledger, the
SQLite anchor's hashes, then (optionally) an anchor's batches and the trusted checkpoint, against
the verifier's own seq -> hash table.

The check against an EVM anchor's batches lives on the anchors side (`anchors.chain_audit`), which
needs web3; it plugs in here as a `ChainCheck`, so `audit verify` without `--rpc` loads nothing
outside `ledger.audit`, `ledger.chain`, `ledger.canonical`, msgspec and the standard library.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .checkpoint import Checkpoint, advance_checkpoint, check_checkpoint, read_checkpoint
from .errors import AuditError, CheckpointError
from .sources import DatabaseReader, ExportReader, Progress, iter_anchors, open_anchors
from .verifier import Finding, SeqHashes, Verifier, VerifyReport, merge_findings

__all__ = ["AuditResult", "ChainCheck", "ChainOutcome", "verify_database", "verify_export", "verify_ledger"]


class ChainSummary(Protocol):
    def to_json(self) -> dict[str, Any]: ...


@dataclass(slots=True)
class ChainOutcome:
    """What a check against an anchor's batches found: findings (at most one per seq), a summary
    for `--json`, and notes for the text summary."""

    findings: list[Finding]
    summary: ChainSummary
    notes: list[str] = field(default_factory=list)


ChainCheck = Callable[[SeqHashes, VerifyReport], ChainOutcome]


@dataclass(slots=True)
class AuditResult:
    """The verifier's report with the chain's and the checkpoint's findings merged in. Without a
    chain check and a checkpoint, its JSON and text are exactly the verifier report's."""

    report: VerifyReport
    chain: ChainSummary | None = None
    checkpoint_before: Checkpoint | None = None
    checkpoint_after: Checkpoint | None = None
    checkpoint_path: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.report.valid

    def to_json(self) -> dict[str, Any]:
        out = self.report.to_json()
        if self.chain is not None:
            out["chain"] = self.chain.to_json()
        if self.checkpoint_path is not None:
            out["checkpoint"] = {
                "path": self.checkpoint_path,
                "before": self.checkpoint_before.to_json() if self.checkpoint_before else None,
                "after": self.checkpoint_after.to_json() if self.checkpoint_after else None,
            }
        if self.notes:
            out["notes"] = self.notes
        return out

    def summary_lines(self) -> list[str]:
        lines = self.report.summary_lines()
        verdict = lines.pop()
        lines.extend(self.notes)
        return [*lines, verdict]


def _run(
    export: str | os.PathLike[str] | None,
    db: str | os.PathLike[str] | None,
    anchor_db: str | os.PathLike[str] | None,
    progress: Progress | None,
) -> tuple[Verifier, str]:
    """The verifier after one pass over the source and the anchor database. The anchor database is
    opened (and checked) first, so its open errors surface before any work."""
    anchors_conn = open_anchors(anchor_db) if anchor_db is not None else None
    try:
        v = Verifier()
        if export is not None:
            with ExportReader(export, progress=progress) as export_reader:
                v.run_batches(export_reader.batches())
                if anchors_conn is not None and anchor_db is not None:
                    conn, anchors_conn = anchors_conn, None
                    v.check_anchors(iter_anchors(conn, Path(anchor_db)))
                v.check_claimed_head(export_reader.claimed_head, "export header")
            return v, f"export {Path(export).resolve()}"
        if db is None:
            raise AuditError("give exactly one of an export file or a ledger database")
        with DatabaseReader(db, progress=progress) as reader:
            v.run_batches(reader.batches())
            if anchors_conn is not None and anchor_db is not None:
                conn, anchors_conn = anchors_conn, None
                v.check_anchors(iter_anchors(conn, Path(anchor_db)))
            head = reader.claimed_head
            if head is not None:
                v.check_claimed_head(head, "ledger_head row")
        return v, f"ledger {Path(db).resolve()}"
    finally:
        if anchors_conn is not None:
            anchors_conn.close()


def verify_ledger(
    *,
    export: str | os.PathLike[str] | None = None,
    db: str | os.PathLike[str] | None = None,
    anchor_db: str | os.PathLike[str] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    chain: ChainCheck | None = None,
    progress: Progress | None = None,
) -> AuditResult:
    """`audit verify`: the verifier's pass over the export (or ledger), then the chain's batches
    (`chain`), then the checkpoint. Raises `AuditError`, `CheckpointError`, and whatever `chain`
    raises (exit 2)."""
    if (export is None) == (db is None):
        raise AuditError("give exactly one of an export file or a ledger database")
    cp_before = read_checkpoint(checkpoint) if checkpoint is not None else None
    if checkpoint is not None and not Path(checkpoint).resolve().parent.is_dir():
        # found now rather than after a long run whose result could not be kept
        raise CheckpointError(f"cannot write checkpoint {checkpoint}: its directory does not exist")
    verifier, source = _run(export, db, anchor_db, progress)
    report = verifier.report()
    seqs = verifier.table()
    result = AuditResult(report=report, checkpoint_before=cp_before, checkpoint_path=str(checkpoint) if checkpoint else None)
    chain_findings: list[Finding] = []
    if chain is not None:
        outcome = chain(seqs, report)
        chain_findings = outcome.findings
        result.chain = outcome.summary
        result.notes.extend(outcome.notes)
    cp_findings = check_checkpoint(cp_before, seqs) if cp_before is not None else []
    if chain_findings or cp_findings:
        merged = merge_findings(report.findings, chain_findings, cp_findings)
        result.report = VerifyReport(report.records, report.head_seq, report.head_hash, merged)
    if checkpoint is not None:
        if result.valid and report.head_hash is not None:
            result.checkpoint_after = advance_checkpoint(checkpoint, report.head_seq, report.head_hash, source)
            verb = "created" if cp_before is None else "advanced"
            if cp_before is not None and cp_before.seq == report.head_seq:
                verb = "confirmed"
            result.notes.append(f"checkpoint {verb}: seq {report.head_seq} hash {report.head_hash} ({checkpoint})")
        else:
            result.notes.append(f"checkpoint not advanced (the run has findings): {checkpoint}")
    return result


def verify_export(
    path: str | os.PathLike[str], *, anchor_db: str | os.PathLike[str] | None = None, progress: Progress | None = None
) -> VerifyReport:
    return verify_ledger(export=path, anchor_db=anchor_db, progress=progress).report


def verify_database(
    path: str | os.PathLike[str], *, anchor_db: str | os.PathLike[str] | None = None, progress: Progress | None = None
) -> VerifyReport:
    return verify_ledger(db=path, anchor_db=anchor_db, progress=progress).report

