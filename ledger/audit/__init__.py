"""The offline auditor, pure (design section 2): nothing here imports the writer (`ledger.store`,
eventsourcing), web3 or any outer package.

- `verifier`: recompute every record hash and link; the seq -> stored hash table (`SeqHashes`);
- `sources`: read an export, a SQLite ledger, a SQLite anchor database; write an export;
- `run`: `audit verify` as a function (`verify_ledger`), with an optional check against an
  anchor's batches (plugged in by `anchors.chain_audit`) and the trusted checkpoint;
- `checkpoint`: the auditor's trusted checkpoint;
- `merkle`: RFC 9162 Merkle tree hash, inclusion proofs and their verification (the one copy);
- `proofs`: proof bundle v1, the one builder and the one offline checker;
- `errors`: the package's errors.

The names most callers need are re-exported here (`from ledger import audit; audit.verify_export`).
"""

from __future__ import annotations

from .errors import AuditError, CheckpointError, LedgerMismatch, ProofError
from .run import AuditResult, ChainCheck, ChainOutcome, verify_database, verify_export, verify_ledger
from .sources import (
    COUNT_RECORDS_SQL,
    SELECT_ANCHORED_SQL,
    SELECT_HEAD_SQL,
    SELECT_RECORDS_SQL,
    DatabaseReader,
    ExportReader,
    ExportResult,
    Progress,
    connect_readonly,
    export_ledger,
    open_anchors,
    read_anchors,
    read_batch_records,
    stderr_progress,
)
from .verifier import (
    ANCHOR_MISMATCH,
    DUPLICATED,
    FORKED,
    KINDS,
    MAX_GAP,
    MISSING,
    MODIFIED,
    REORDERED,
    TRUNCATED,
    Finding,
    Malformed,
    RecordLine,
    SeqHashes,
    Verifier,
    VerifyReport,
    merge_findings,
    verify_records,
)

__all__ = [
    "ANCHOR_MISMATCH",
    "COUNT_RECORDS_SQL",
    "DUPLICATED",
    "FORKED",
    "KINDS",
    "MAX_GAP",
    "MISSING",
    "MODIFIED",
    "REORDERED",
    "SELECT_ANCHORED_SQL",
    "SELECT_HEAD_SQL",
    "SELECT_RECORDS_SQL",
    "TRUNCATED",
    "AuditError",
    "AuditResult",
    "ChainCheck",
    "ChainOutcome",
    "CheckpointError",
    "DatabaseReader",
    "ExportReader",
    "ExportResult",
    "Finding",
    "LedgerMismatch",
    "Malformed",
    "ProofError",
    "Progress",
    "RecordLine",
    "SeqHashes",
    "Verifier",
    "VerifyReport",
    "connect_readonly",
    "export_ledger",
    "merge_findings",
    "open_anchors",
    "read_anchors",
    "read_batch_records",
    "stderr_progress",
    "verify_database",
    "verify_export",
    "verify_ledger",
    "verify_records",
]
