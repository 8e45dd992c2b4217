"""The audit package's errors. The commands map them to exit codes in one place
(workers/audit_cli.py): `AuditError`, `ProofError` and `CheckpointError` exit 2 (nothing could be
checked), `LedgerMismatch` exits 1 (the check ran: the ledger no longer matches its anchor)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["AuditError", "CheckpointError", "LedgerMismatch", "ProofError"]


class AuditError(Exception):
    """An input the auditor cannot read at all (exit 2): missing or unreadable file, not a ledger,
    a line whose seq cannot be determined."""


class ProofError(ValueError):
    """A proof bundle that cannot be built or read; `problems` lists why."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class LedgerMismatch(Exception):
    """The ledger's records for an anchored batch do not recompute the anchored root or head: the
    ledger no longer matches its anchor, so no proof can be made (exit 1)."""


class CheckpointError(Exception):
    """The checkpoint file cannot be read or written (exit 2)."""
