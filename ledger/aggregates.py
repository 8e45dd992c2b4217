"""Aggregates: consistency boundaries decided by optimistic concurrency.

An aggregate is rebuilt by folding its stream's events (`when_<EventType>` methods). A command
method checks the current state and returns the new events; `Ledger.append(stream, version, ...)`
writes them at the next versions, so two racing commands on one aggregate cannot both win: the
loser gets `ConcurrencyConflict` and re-reads. Single-use things (challenges, request ids, grant
uses) are aggregates for exactly this reason.
"""

from __future__ import annotations

import uuid
from typing import ClassVar, Self

from .errors import LedgerError
from .events import (
    AnchorContractChanged,
    AuthChallengeIssued,
    AuthFailed,
    AuthSucceeded,
    Event,
    GrantCreated,
    GrantRevoked,
    GrantUsed,
    MasterRootAssigned,
    MasterRootRevoked,
    MintAuthorized,
    MintDenied,
    MintQuarantined,
    MintRequested,
    MintUnreleased,
    MintWithheld,
    QuarantineResolved,
    ReleaseUnconfirmed,
    RoleSessionsRevoked,
    SessionIssued,
    SessionWithheld,
    SigningKeyRotated,
    WalletBound,
    WalletRole,
)

# Namespace for deterministic stream ids: uuid5(NAMESPACE, "<kind>:<natural key>").
STREAM_NAMESPACE = uuid.UUID("5f0c3a52-8a0e-4c55-9a3b-6d1f4e2b7c90")


def stream_id(kind: str, key: str) -> uuid.UUID:
    """The stream of the aggregate `kind` with natural key `key` (stable across processes)."""
    return uuid.uuid5(STREAM_NAMESPACE, f"{kind}:{key}")


class Aggregate:
    kind: ClassVar[str] = "aggregate"

    def __init__(self, stream: uuid.UUID) -> None:
        self.stream = stream
        self.version = 0

    def apply(self, event: Event) -> None:
        handler = getattr(self, f"when_{type(event).__name__}", None)
        if handler is None:
            raise LedgerError(f"{type(self).__name__} cannot apply {type(event).__name__}")
        handler(event)
        self.version += 1

    @classmethod
    def replay(cls, stream: uuid.UUID, events: list[Event]) -> Self:
        agg = cls(stream)
        for event in events:
            agg.apply(event)
        return agg


class WalletRoleConflict(LedgerError):
    """A wallet is already bound in this OmniAccount with another role or parent."""


class WalletBinding(Aggregate):
    """The binding of one address inside one OmniAccount (stream key `omni:address`)."""

    kind = "wallet-binding"

    def __init__(self, stream: uuid.UUID) -> None:
        super().__init__(stream)
        self.bound: WalletBound | None = None

    @staticmethod
    def stream_for(omni_account: str, address: str) -> uuid.UUID:
        return stream_id(WalletBinding.kind, f"{omni_account}:{address.lower()}")

    def when_WalletBound(self, event: WalletBound) -> None:
        self.bound = event

    def bind(
        self, *, omni_account: str, address: str, role: WalletRole, parent_address: str | None
    ) -> list[Event]:
        address = address.lower()
        parent = parent_address.lower() if parent_address else None
        if self.bound is None:
            return [WalletBound(omni_account=omni_account, address=address, role=role, parent_address=parent)]
        if self.bound.role == role and self.bound.parent_address == parent:
            return []  # idempotent
        raise WalletRoleConflict(
            f"{address} is bound as {self.bound.role}"
            + (f" under {self.bound.parent_address}" if self.bound.parent_address else "")
            + f" in {omni_account}; refusing {role}" + (f" under {parent}" if parent else "")
        )


class ChallengeNotPending(LedgerError):
    """The challenge cannot be answered: unknown, already consumed, or expired (`reason`)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class AuthChallenge(Aggregate):
    """A sign-in challenge (stream key: its `request_id`). Version 1 issues it; the first answer,
    right or wrong, consumes it at version 2, so it can be answered once: two racing verifies
    cannot both write version 2. A successful answer also carries the session it issued."""

    kind = "auth-challenge"

    def __init__(self, stream: uuid.UUID) -> None:
        super().__init__(stream)
        self.issued: AuthChallengeIssued | None = None
        self.outcome: AuthSucceeded | AuthFailed | None = None
        self.session: SessionIssued | None = None
        self.withheld: SessionWithheld | None = None
        self.unconfirmed: ReleaseUnconfirmed | None = None

    @staticmethod
    def stream_for(request_id: str) -> uuid.UUID:
        return stream_id(AuthChallenge.kind, request_id)

    def when_AuthChallengeIssued(self, event: AuthChallengeIssued) -> None:
        self.issued = event

    def when_AuthSucceeded(self, event: AuthSucceeded) -> None:
        self.outcome = event

    def when_AuthFailed(self, event: AuthFailed) -> None:
        if self.outcome is None:
            self.outcome = event

    def when_SessionIssued(self, event: SessionIssued) -> None:
        self.session = event

    def when_SessionWithheld(self, event: SessionWithheld) -> None:
        self.withheld = event

    def when_ReleaseUnconfirmed(self, event: ReleaseUnconfirmed) -> None:
        self.unconfirmed = event

    def issue(self, event: AuthChallengeIssued) -> list[Event]:
        if self.version != 0:
            raise ChallengeNotPending("challenge_consumed", f"request_id {event.request_id} already exists")
        return [event]

    def check_pending(self, now_unix: int) -> AuthChallengeIssued:
        """The issued challenge, if it can still be answered; else `ChallengeNotPending`.
        Unknown and consumed collapse to one outcome for the caller (no probing oracle), but the
        ledger records which."""
        if self.issued is None:
            raise ChallengeNotPending("challenge_unknown", "nonce already consumed or unknown; replay rejected")
        if self.outcome is not None:
            raise ChallengeNotPending("challenge_consumed", "nonce already consumed or unknown; replay rejected")
        if now_unix >= self.issued.expires_at:
            raise ChallengeNotPending("challenge_expired", "expired: siwe message expired (>= 2700s after issued_at)")
        return self.issued


class SigningKeyConflict(LedgerError):
    """A key id is already recorded with a different public key."""


class SigningKey(Aggregate):
    """One signing key (stream key `purpose:kid`): recorded once when it comes into use."""

    kind = "signing-key"

    def __init__(self, stream: uuid.UUID) -> None:
        super().__init__(stream)
        self.recorded: SigningKeyRotated | None = None

    @staticmethod
    def stream_for(purpose: str, kid: str) -> uuid.UUID:
        return stream_id(SigningKey.kind, f"{purpose}:{kid}")

    def when_SigningKeyRotated(self, event: SigningKeyRotated) -> None:
        self.recorded = event

    def record(self, event: SigningKeyRotated) -> list[Event]:
        if self.recorded is None:
            return [event]
        if self.recorded.public_jwk != event.public_jwk:
            raise SigningKeyConflict(f"kid {event.kid} is already recorded with another public key")
        return []


class GrantRefused(LedgerError):
    """A grant cannot be used or changed; `reason` is the typed wire reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Grant(Aggregate):
    """A capability grant (stream key: `grant_id`). Uses are consumed one version at a time, so
    N racing mints on a grant with `max_uses` K produce exactly min(N, K) `GrantUsed` events."""

    kind = "grant"

    def __init__(self, stream: uuid.UUID) -> None:
        super().__init__(stream)
        self.created: GrantCreated | None = None
        self.used = 0
        self.revoked_at: int | None = None

    @staticmethod
    def stream_for(grant_id: str) -> uuid.UUID:
        return stream_id(Grant.kind, grant_id)

    def when_GrantCreated(self, event: GrantCreated) -> None:
        self.created = event

    def when_GrantUsed(self, event: GrantUsed) -> None:
        self.used += 1

    def when_GrantRevoked(self, event: GrantRevoked) -> None:
        self.revoked_at = event.revoked_at

    def create(self, event: GrantCreated) -> list[Event]:
        if self.version != 0:
            raise GrantRefused("conflict", f"grant {event.grant_id} already exists")
        return [event]

    def check_usable(self, now_unix: int) -> GrantCreated:
        if self.created is None:
            raise GrantRefused("no_grant", "no active grant")
        if self.revoked_at is not None:
            raise GrantRefused("grant_revoked", "grant has been revoked")
        if now_unix >= self.created.expires_at:
            raise GrantRefused("grant_expired", "grant is expired")
        if self.used >= self.created.max_uses:
            raise GrantRefused("grant_exhausted", "grant exhausted (used_count >= max_uses)")
        return self.created

    def use(self, *, now_unix: int, wallet: str, request_id: str) -> list[Event]:
        created = self.check_usable(now_unix)
        return [GrantUsed(grant_id=created.grant_id, use=self.used + 1, wallet=wallet, request_id=request_id)]

    def revoke(self, *, now_unix: int, by_omni_account: str) -> list[Event]:
        # not-found, not-owner and already-revoked collapse to one answer (no ownership oracle)
        if self.created is None or self.created.master_omni_account != by_omni_account or self.revoked_at is not None:
            raise GrantRefused("not_owner", "grant not found, not yours, or already revoked")
        return [GrantRevoked(grant_id=self.created.grant_id, revoked_at=now_unix, by_omni_account=by_omni_account)]

    def release(self, *, now_unix: int, by_omni_account: str) -> list[Event]:
        """Revoked as part of a daemon release (by the daemon or its master; the caller checked
        who may): refused only when the grant is no longer live."""
        if self.created is None or self.revoked_at is not None or now_unix >= self.created.expires_at:
            raise GrantRefused("not_owner", "grant not found, already revoked or expired")
        return [GrantRevoked(grant_id=self.created.grant_id, revoked_at=now_unix, by_omni_account=by_omni_account)]


class MintRequest(Aggregate):
    """One mint request (stream key `wallet:request_id`): admitted once (`MintRequested` at
    version 1 spends the request id), then authorized (or denied, or unreleased), then possibly
    withheld or marked `ReleaseUnconfirmed` by the outcome sweep."""

    kind = "mint-request"

    def __init__(self, stream: uuid.UUID) -> None:
        super().__init__(stream)
        self.requested: MintRequested | None = None
        self.authorized: MintAuthorized | None = None
        self.withheld: MintWithheld | None = None
        self.denied: MintDenied | None = None
        self.unreleased: MintUnreleased | None = None
        self.unconfirmed: ReleaseUnconfirmed | None = None

    @staticmethod
    def stream_for(wallet: str, request_id: str) -> uuid.UUID:
        return stream_id(MintRequest.kind, f"{wallet.lower()}:{request_id}")

    def when_MintRequested(self, event: MintRequested) -> None:
        self.requested = event

    def when_MintAuthorized(self, event: MintAuthorized) -> None:
        self.authorized = event

    def when_MintWithheld(self, event: MintWithheld) -> None:
        self.withheld = event

    def when_MintDenied(self, event: MintDenied) -> None:
        self.denied = event

    def when_MintUnreleased(self, event: MintUnreleased) -> None:
        self.unreleased = event

    def when_ReleaseUnconfirmed(self, event: ReleaseUnconfirmed) -> None:
        self.unconfirmed = event


class CaseRefused(LedgerError):
    """A quarantine case cannot take this resolution; `reason` is the wire reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class QuarantineCase(Aggregate):
    """One quarantine case (stream key: the `MintAuthorized` seq), opened at most once."""

    kind = "quarantine"

    def __init__(self, stream: uuid.UUID) -> None:
        super().__init__(stream)
        self.opened: MintQuarantined | None = None
        self.resolutions: list[QuarantineResolved] = []
        self.revocations: list[RoleSessionsRevoked] = []

    @staticmethod
    def stream_for(authorized_seq: int) -> uuid.UUID:
        return stream_id(QuarantineCase.kind, str(authorized_seq))

    def when_MintQuarantined(self, event: MintQuarantined) -> None:
        self.opened = event

    def when_QuarantineResolved(self, event: QuarantineResolved) -> None:
        self.resolutions.append(event)

    def when_RoleSessionsRevoked(self, event: RoleSessionsRevoked) -> None:
        self.revocations.append(event)

    @property
    def status(self) -> str:
        """`open`, `reanchoring` (an operator asked for a re-anchor; the worker closes it) or
        `resolved`; `unknown` when no case was opened on this stream."""
        if self.opened is None:
            return "unknown"
        if not self.resolutions:
            return "open"
        return self.resolutions[-1].status

    def open(self, event: MintQuarantined) -> list[Event]:
        return [] if self.opened is not None else [event]

    def resolve(self, event: QuarantineResolved, *, revoked: RoleSessionsRevoked | None = None) -> list[Event]:
        """Close the case (or start a re-anchor). Only an open case takes an operator's action;
        only a re-anchoring case takes the worker's closing `resolved`."""
        if self.opened is None:
            raise CaseRefused("case_not_found", f"no quarantine case {event.case_id}")
        closing_reanchor = (self.status == "reanchoring" and event.action == "reanchor"
                            and event.status == "resolved" and event.operator == "worker")
        if self.status != "open" and not closing_reanchor:
            raise CaseRefused("case_closed", f"quarantine case {event.case_id} is {self.status}")
        return ([revoked] if revoked is not None else []) + [event]


class AnchorContract(Aggregate):
    """Which contract an EVM anchor writes to (stream key: the anchor's name); a change of
    contract is recorded once, in order."""

    kind = "anchor-contract"

    def __init__(self, stream: uuid.UUID) -> None:
        super().__init__(stream)
        self.current: AnchorContractChanged | None = None

    @staticmethod
    def stream_for(anchor: str) -> uuid.UUID:
        return stream_id(AnchorContract.kind, anchor)

    def when_AnchorContractChanged(self, event: AnchorContractChanged) -> None:
        self.current = event

    def use(self, *, anchor: str, chain_id: int, contract: str, fee_payer: str, genesis_hash: str | None = None,
            start_seq: int | None = None) -> list[Event]:
        """Record the contract in use unless it is the last one recorded: same address, chain id
        and chain (`genesis_hash`; a record without one is taken as unknown chain, so the chain is
        recorded once it is known). `reason`: `chain_changed` (same chain id, another genesis),
        `contract_changed` (another address), `chain_recorded` (the genesis was not known yet)."""
        contract = contract.lower()
        genesis_hash = genesis_hash.lower() if genesis_hash else None
        cur = self.current
        reason: str | None = None
        if cur is not None:
            if (cur.contract, cur.chain_id) != (contract, chain_id):
                reason = "contract_changed" if cur.chain_id == chain_id else "chain_changed"
            elif genesis_hash is None or cur.genesis_hash == genesis_hash:
                return []
            else:
                reason = "chain_recorded" if cur.genesis_hash is None else "chain_changed"
        previous = cur.contract if cur is not None else None
        return [AnchorContractChanged(anchor=anchor, chain_id=chain_id, contract=contract,
                                      previous_contract=previous, fee_payer=fee_payer.lower(),
                                      genesis_hash=genesis_hash, start_seq=start_seq, reason=reason)]



class MasterRootRefused(LedgerError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class MasterRoots(Aggregate):
    """Every root an operator assigned (one stream for the whole broker: operators assign few, and
    one stream makes assign/revoke decisions consistent). `roots[omni][service]` = set of roots."""

    kind = "master-roots"
    STREAM: ClassVar[uuid.UUID] = stream_id("master-roots", "all")

    def __init__(self, stream: uuid.UUID) -> None:
        super().__init__(stream)
        self.roots: dict[str, dict[str, set[str]]] = {}

    def when_MasterRootAssigned(self, event: MasterRootAssigned) -> None:
        self.roots.setdefault(event.omni_account, {}).setdefault(event.service, set()).add(event.root)

    def when_MasterRootRevoked(self, event: MasterRootRevoked) -> None:
        services = self.roots.get(event.omni_account, {})
        services.get(event.service, set()).discard(event.root)
        if not services.get(event.service, True):
            services.pop(event.service, None)
        if not services:
            self.roots.pop(event.omni_account, None)

    def of(self, omni_account: str) -> dict[str, frozenset[str]]:
        return {svc: frozenset(r) for svc, r in self.roots.get(omni_account, {}).items()}

    def assign(self, *, omni_account: str, service: str, root: str, operator: str) -> list[Event]:
        if root in self.roots.get(omni_account, {}).get(service, set()):
            raise MasterRootRefused("already_assigned", "this root is already assigned to this master")
        return [MasterRootAssigned(omni_account=omni_account, service=service, root=root, operator=operator)]

    def revoke(self, *, omni_account: str, service: str, root: str, operator: str) -> list[Event]:
        if root not in self.roots.get(omni_account, {}).get(service, set()):
            raise MasterRootRefused("not_assigned", "this root is not assigned to this master")
        return [MasterRootRevoked(omni_account=omni_account, service=service, root=root, operator=operator)]
