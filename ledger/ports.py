"""Ports the core declares and outer packages implement.

`Anchor` is implemented by anchors/sqlite.py, anchors/evm.py and anchors/memory.py; every
implementation passes tests/contract/test_anchor_contract.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, Sequence, runtime_checkable

from .chain import ChainRecord

ReadinessStatus = Literal["ready", "degraded", "unready"]


@dataclass(frozen=True, slots=True)
class Readiness:
    status: ReadinessStatus
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "unready"


@runtime_checkable
class Anchor(Protocol):
    """An independent witness of the chain. It confirms prefixes: `confirmed_upto() == N` means it
    durably holds the hashes of seq 1..N.

    - `submit(records)` takes contiguous records starting at `confirmed_upto() + 1` (records at or
      below the confirmed position are accepted again when their hash matches, so a retry is
      harmless, and raise `AnchorConflict` when it differs). It returns once the records are durable
      (or, for asynchronous anchors, queued; `confirmed_upto` then advances later).
    - `verify(seq, hash)` is True iff the anchor confirmed exactly that hash at that seq.
    - `ready()` checks the backing store now; it never returns a constant.
    Errors are `ledger.errors.AnchorError` subclasses.
    """

    name: str

    def ready(self) -> Readiness: ...

    def submit(self, records: Sequence[ChainRecord]) -> None: ...

    def confirmed_upto(self) -> int: ...

    def verify(self, seq: int, hash: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class AssumeRoleRequest:
    """What the broker asks STS for, after the ledger admitted the mint (`MintRequested`)."""

    wallet: str
    omni_account: str
    agent_id: str
    service: str
    scope_path: str
    duration_seconds: int


@dataclass(frozen=True, slots=True)
class IssuedCredentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: int = 0
    session_name: str = ""
    assumed_role_arn: str = ""
    role_arn: str = ""
    policy_json: str | None = None
    tags: tuple[tuple[str, str], ...] = ()


class StsError(Exception):
    """STS refused or could not be reached. `code` is the AWS error code (or `Unreachable`,
    `Timeout`, `InvalidRequest`); the message is safe to return to a client (no secrets)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@runtime_checkable
class CredentialMinter(Protocol):
    """Issues short-lived cloud credentials (AWS STS AssumeRole in production: api/sts.py)."""

    def assume_role(self, request: AssumeRoleRequest) -> IssuedCredentials: ...

    def check_identity(self) -> str: ...


KILL_SWITCH_POLICY_NAME = "agentkeys-kill-switch"


@runtime_checkable
class RoleKillSwitch(Protocol):
    """Denies every session of an IAM role issued before a time (design §3 "Quarantine"): the
    inline role policy `agentkeys-kill-switch` with `aws:TokenIssueTime`, overwritten with the
    newer time. Implemented over boto3 IAM in api/iam.py. Raises `StsError` when IAM refuses or
    cannot be reached (nothing was changed then)."""

    def revoke_sessions_before(self, role_arn: str, not_before: str) -> None: ...
