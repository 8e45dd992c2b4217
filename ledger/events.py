"""Ledger events: frozen msgspec Structs, one class per past-tense fact.

Rules (design section 2): no floats; integers within +/-(2**53-1) (larger numbers such as wei
amounts are decimal strings); ASCII object keys; secrets never enter an event raw. The `type` of a
record is the class name; `data` is the Struct's fields. Every event class registers itself by
name, so records read back decode to the same class. The catalogue with field meanings is
docs/events.md; `tests/unit/ledger/test_events_catalogue.py` keeps the two in step.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import msgspec

from .errors import InvalidEventError

_REGISTRY: dict[str, type[Event]] = {}


class Event(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base class of every ledger event.

    Evolving events (design §8; docs/events.md "Evolving events"): records are immutable, so a
    field added to an existing event class is optional (default `None`) and listed in the class's
    `ADDED_FIELDS`; `to_data()` omits it while it is null, so a record that does not use it is
    byte-identical to one written before the field existed (and a null added field is never part
    of a signed content such as `GrantCreated.audit_proof`). Old records keep decoding, re-hashing
    and verifying unchanged (tests/unit/ledger/test_event_evolution.py). Fields are never removed,
    renamed or retyped; a new meaning is a new event type."""

    registered: ClassVar[bool] = True
    ADDED_FIELDS: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__name__
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls and (
            existing.__module__,
            existing.__qualname__,
        ) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"event type {name!r} is already registered by {existing.__module__}")
        _REGISTRY[name] = cls

    @property
    def type_name(self) -> str:
        return type(self).__name__

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.to_builtins(self)
        for name in self.ADDED_FIELDS:
            if data.get(name) is None:
                data.pop(name, None)
        return data


def event_class(type_name: str) -> type[Event] | None:
    return _REGISTRY.get(type_name)


def decode_event(type_name: str, data: dict[str, Any]) -> Event:
    cls = _REGISTRY.get(type_name)
    if cls is None:
        raise InvalidEventError(f"unknown event type {type_name!r}")
    try:
        return msgspec.convert(data, cls)
    except msgspec.ValidationError as exc:
        raise InvalidEventError(f"{type_name}: {exc}") from exc


def registered_types() -> dict[str, type[Event]]:
    return dict(_REGISTRY)


# --- Identity and wallets -------------------------------------------------------------------

WalletRole = Literal["master", "daemon"]


class WalletBound(Event, frozen=True, kw_only=True):
    """A wallet address was bound to an OmniAccount with a role.

    `master`: the wallet's own OmniAccount (a SIWE sign-in). `daemon`: bound by a grant under the
    master's OmniAccount, `parent_address` = the master. Within one OmniAccount the binding is
    permanent: re-binding with the same role and parent is a no-op, a role flip or parent change
    is refused (no event)."""

    omni_account: str
    address: str
    role: WalletRole
    parent_address: str | None = None


# --- Authentication and sessions ------------------------------------------------------------

AuthMethod = Literal["wallet_sig", "email_link", "oauth2_google", "legacy_bearer"]


class AuthChallengeIssued(Event, frozen=True, kw_only=True):
    """A sign-in challenge was issued (SIWE: the exact EIP-4361 message the wallet must sign).
    Stream: `AuthChallenge` aggregate keyed by `request_id`. The nonce is public (it is part of the
    signed message), so it is recorded."""

    method: AuthMethod
    request_id: str
    address: str
    chain_id: int
    nonce: str
    domain: str
    uri: str
    issued_at: str
    expires_at: int
    message: str


class AuthSucceeded(Event, frozen=True, kw_only=True):
    """A challenge was answered correctly; the identity is proven. Consumes the challenge."""

    method: AuthMethod
    request_id: str
    identity_type: str
    identity_value: str
    omni_account: str
    wallet_address: str


AuthFailureReason = Literal[
    "challenge_unknown",
    "challenge_consumed",
    "challenge_expired",
    "signature_not_hex",
    "signature_length",
    "signature_v",
    "signature_zero",
    "signature_high_s",
    "signature_unrecoverable",
    "address_mismatch",
    "backend_rejected",
    "backend_unreachable",
    # email_link / oauth2_google (issue 16)
    "request_id_mismatch",
    "provider_error",
    "token_exchange_failed",
    "id_token_invalid",
    "id_token_expired",
    "id_token_audience",
    "id_token_issuer",
    "nonce_mismatch",
    "delivery_failed",
    "provider_unreachable",
]


class AuthFailed(Event, frozen=True, kw_only=True):
    """A sign-in attempt failed, with a typed reason. A failed attempt on a pending challenge
    consumes it (the challenge cannot be retried); attempts on unknown or consumed challenges are
    recorded on their own stream."""

    method: AuthMethod
    request_id: str
    reason: AuthFailureReason
    detail: str
    address: str | None = None


class SessionIssued(Event, frozen=True, kw_only=True):
    """A session JWT was signed. The token itself never enters the ledger: `token_sha256` lets an
    auditor match a presented token; `kid` names the `SigningKeyRotated` key that verifies it.
    The response carrying the token waits until the required anchors confirm this record."""

    jti: str
    kid: str
    omni_account: str
    wallet_address: str
    identity_type: str
    identity_value: str
    iat: int
    exp: int
    token_sha256: str


class SessionWithheld(Event, frozen=True, kw_only=True):
    """A signed session was not released: the anchors the policy requires did not confirm its
    `SessionIssued` record (seq `session_seq`) before the deadline."""

    jti: str
    session_seq: int
    reason: str
    missing_anchors: list[str]


class SessionRevoked(Event, frozen=True, kw_only=True):
    """Sessions of `omni_account` were revoked by one of its own sessions: the one named by `jti`,
    or (`jti` null) every session issued before `not_before` (Unix seconds), i.e. every
    `SessionIssued` of the account earlier in the ledger than this record. Every session check
    refuses a revoked session from then on (a read model, so it survives restarts)."""

    omni_account: str
    jti: str | None
    not_before: int | None


class SigningKeyRotated(Event, frozen=True, kw_only=True):
    """A signing key came into use. `public_jwk` lets anyone verify the broker's signatures (session
    JWTs, grant `audit_proof`s, OIDC tokens) from a ledger export alone. Private material never
    enters the ledger."""

    purpose: Literal["oidc", "session"]
    kid: str
    public_jwk: dict[str, str]
    created_at: str
    previous_kid: str | None = None


# --- Capability grants ------------------------------------------------------------------------


class GrantCreated(Event, frozen=True, kw_only=True):
    """A master wallet granted a daemon address the right to mint credentials for `service`
    under `scope_path`, until `expires_at`, at most `max_uses` times. `audit_proof` is a compact
    ES256 JWS by the session key over the grant content (verifiable offline with the public key
    of the `SigningKeyRotated` record named by its `kid`)."""

    grant_id: str
    master_omni_account: str
    master_address: str
    daemon_address: str
    service: str
    scope_path: str
    granted_at: int
    expires_at: int
    max_uses: int
    audit_proof: str
    # added by the access model (issue 10): an optional pin on the STS `agent_id` of its mints
    ADDED_FIELDS: ClassVar[tuple[str, ...]] = ("agent_id", "agent_id_prefix")
    agent_id: str | None = None
    agent_id_prefix: str | None = None


class GrantUsed(Event, frozen=True, kw_only=True):
    """One use of a grant was consumed by a mint request (decided on the grant aggregate, so
    racing mints cannot over-use it)."""

    grant_id: str
    use: int
    wallet: str
    request_id: str


class GrantRevoked(Event, frozen=True, kw_only=True):
    """The grant's master revoked it; the next mint against it is refused."""

    grant_id: str
    revoked_at: int
    by_omni_account: str


class DaemonReleased(Event, frozen=True, kw_only=True):
    """A daemon's binding to its master ended (`POST /v1/daemon/release`, by the master or by the
    daemon itself): that master's live grants naming the daemon were revoked in the same append, so
    another master may now grant it. `by` is the caller's OmniAccount."""

    daemon_address: str
    master_omni_account: str
    by: str


class MasterRootAssigned(Event, frozen=True, kw_only=True):
    """An operator assigned a root to a master (`agentkeys-broker masters assign`, design §3a): in
    `assigned` tenancy the master may grant and mint scopes under `root` of `service`; for services
    of scope `none`/`oidc` (root `""`) it may grant the service at all."""

    omni_account: str
    service: str
    root: str
    operator: str


class MasterRootRevoked(Event, frozen=True, kw_only=True):
    """An operator took a root back (`masters revoke`): the next mint under it is refused."""

    omni_account: str
    service: str
    root: str
    operator: str


# --- Mints ------------------------------------------------------------------------------------

MintDenialReason = Literal[
    "no_grant",
    "grant_revoked",
    "grant_expired",
    "grant_exhausted",
    "scope_not_granted",
    "signature_invalid",
    "wallet_mismatch",
    "stale_request",
    "request_replayed",
    "rate_limited",
    "sts_error",
    "bad_request",
    "anchor_unready",  # a required anchor was unready: refused before any work (design §8)
    "audience_mismatch",
    "not_owner",  # an email / OAuth2 session (no wallet) tried to mint (issue 16)
    "ledger_low_space",  # the ledger's disk was below BROKER_MIN_FREE_BYTES: refused before STS (design §8)
    "agent_not_granted",  # the grant pins another agent_id (issue 10)
    "scope_not_owned",  # the grant's master no longer owns the scope (issue 10)
    "not_enrolled",  # the master has no root for the service (assigned tenancy, scope none/oidc)
    "integrity_alarm",  # an unacknowledged TamperDetected: every release refused before STS (design §8)
]


class MintRequested(Event, frozen=True, kw_only=True):
    """A signed mint request passed every check and was admitted: identity, wallet, grant and
    resource are named, the `request_id` is spent (stream key `wallet:request_id`), and the grant
    use is consumed in the same atomic append. STS is called only after this record commits."""

    request_id: str
    request_digest: str
    omni_account: str
    identity_type: str
    identity_value: str
    wallet: str
    agent_id: str
    service: str
    scope_path: str
    grant_id: str
    session_jti: str


class MintAuthorized(Event, frozen=True, kw_only=True):
    """STS issued the credential; this is the record that gates release: the response is sent
    only when the anchors the policy requires have confirmed it. Never the secret."""

    request_id: str
    request_digest: str
    omni_account: str
    wallet: str
    agent_id: str
    service: str
    scope_path: str
    grant_id: str
    role_arn: str
    sts_session_name: str
    access_key_id: str
    expiration: int
    policy_sha256: str | None = None
    # added by the access model (issue 10): the master of the grant used, who may read this record
    ADDED_FIELDS: ClassVar[tuple[str, ...]] = ("grant_master_omni_account",)
    grant_master_omni_account: str | None = None


class MintDenied(Event, frozen=True, kw_only=True):
    """An authenticated mint request was refused; no credential exists."""

    request_id: str
    wallet: str
    omni_account: str
    reason: MintDenialReason
    detail: str
    grant_id: str | None = None
    service: str | None = None


class MintWithheld(Event, frozen=True, kw_only=True):
    """A credential was issued by STS (`MintAuthorized` at `authorized_seq`) but not released:
    the required anchors did not confirm in time. It exists in AWS until `expiration`; the
    operator can revoke the role's sessions (design §3, quarantine)."""

    request_id: str
    wallet: str
    authorized_seq: int
    access_key_id: str
    reason: str
    missing_anchors: list[str]


class MintQuarantined(Event, frozen=True, kw_only=True):
    """A released mint lost its audit guarantee: under a `*_primary` policy its asynchronous
    anchor did not confirm the `MintAuthorized` record by the deadline (or its receipt vanished
    in a reorg and could not be re-anchored, or the anchors disagree). Case id `q-<seq>`;
    operators resolve it (reanchor, accept, or revoke the role's sessions)."""

    case_id: str
    authorized_seq: int
    access_key_id: str
    wallet: str
    reason: Literal["anchor_deadline", "reorg_unrecovered", "anchor_disagreement"]
    missing_anchors: list[str]
    expiration: int


class AnchorContractChanged(Event, frozen=True, kw_only=True, omit_defaults=True):
    """The broker started anchoring to another EVM contract (a migration: the new contract continues
    at the old one's `lastSeq + 1`, its `start_seq`), or to the same address on another chain (a
    different `genesis_hash`, block 0's hash: a fresh dev node deploys at the same address), or
    recorded its first contract. Auditors verify across every contract in this list, in order
    (`audit verify --contract OLD --contract NEW`). The last three fields are optional (design §8
    "Evolving events"): omitted when null, so records written before them hash unchanged."""

    anchor: str
    chain_id: int
    contract: str
    previous_contract: str | None
    fee_payer: str
    genesis_hash: str | None = None
    start_seq: int | None = None
    reason: str | None = None


# --- Operators --------------------------------------------------------------------------------

QuarantineAction = Literal["reanchor", "accept", "revoke"]


class QuarantineResolved(Event, frozen=True, kw_only=True):
    """An operator resolved a quarantine case (`q-<seq of MintAuthorized>`). `accept`: the mint
    stands without the missing anchor; `revoke`: the role's kill switch was applied first
    (`RoleSessionsRevoked`); `reanchor`: status `reanchoring` until the worker sees the missing
    anchors confirm the record and writes `resolved` with operator `worker`. `operator` names who
    acted (design §8 "Operators"): `cli:<os-user>@<host>`, `token:<8 hex>`, a wallet address, or
    `worker`."""

    case_id: str
    action: QuarantineAction
    reason: str
    operator: str
    status: Literal["reanchoring", "resolved"]


class RoleSessionsRevoked(Event, frozen=True, kw_only=True):
    """The role kill switch: the inline role policy `agentkeys-kill-switch` now denies every
    session of `role_arn` issued before `not_before` (`aws:TokenIssueTime`, RFC 3339 UTC). STS
    credentials cannot be revoked one by one, so this cuts off every live session of the role, of
    every tenant, not only the quarantined mint's."""

    role_arn: str
    not_before: str
    case_id: str
    operator: str


# --- Accounting: outcomes of interrupted work (design §3a "Accounting", §8 "Outcome sweep") -----

class MintUnreleased(Event, frozen=True, kw_only=True):
    """An AssumeRole whose credential never became a `MintAuthorized`: STS may have issued it (its
    response was lost, or the broker stopped while waiting) — `sts_outcome_unknown` — or it did and
    the ledger could not record it — `ledger_write_failed`. `sts_session_name` (derived from
    `requested_seq`, the seq of the `MintRequested` record) finds the session in CloudTrail; the
    access key id and expiration are known only in the second case. Never the secret. Written on the
    request's `MintRequest` stream, so at most once per request."""

    request_id: str
    wallet: str
    requested_seq: int
    sts_session_name: str
    role_arn: str
    access_key_id: str | None
    expiration: int | None
    reason: Literal["sts_outcome_unknown", "ledger_write_failed"]
    detail: str


class ReleaseUnconfirmed(Event, frozen=True, kw_only=True):
    """An authorization (the record at `authorized_seq`: `MintAuthorized`, `SessionIssued`, or an
    OIDC token) that its required anchors confirmed but whose process stopped before recording
    anything else: it may have been delivered. Written by the start-up outcome sweep on the
    authorization's own stream."""

    authorized_seq: int
    kind: Literal["mint", "session", "oidc_token"]


# --- Email magic link and OAuth2 sign-in (issue 16) ------------------------------------------


class EmailLinkRequested(Event, frozen=True, kw_only=True):
    """A magic link was requested (method `email_link`). Stream: `SignInRequest` keyed by
    `request_id`. The address is never recorded: `email_hmac` = HMAC-SHA256(key of
    `BROKER_EMAIL_HMAC_KEY_PATH`, trimmed lowercase address), hex. The link's 256-bit token never
    enters the ledger either: `request_id` is `eml-` + the first 24 hex of
    SHA-256("agentkeys.email_link.v1\x00" || token), so the token finds its request and the
    request id reveals nothing of the token. `poll_token_sha256` is the SHA-256 of the token only
    the requester received, needed to poll the status. The first `AuthSucceeded`/`AuthFailed`
    consumes the request (version 2)."""

    request_id: str
    email_hmac: str
    expires_at: int
    poll_token_sha256: str


class OAuth2FlowStarted(Event, frozen=True, kw_only=True):
    """An OAuth2 authorization-code flow with PKCE started (method `oauth2_google`; `provider`
    `google`). Stream: `SignInRequest` keyed by `request_id`. The PKCE verifier and the OIDC nonce
    are derived from the state key and the request id, so no secret is recorded. The first
    callback's `AuthSucceeded`/`AuthFailed` consumes the flow (version 2)."""

    request_id: str
    provider: str
    expires_at: int
    poll_token_sha256: str


# --- Integrity (design §8 "Start-up integrity"; docs/operator-runbook.md "Integrity alarm") ------

TamperSource = Literal["anchor/sqlite", "anchor/evm", "ledger/chain", "ledger/quick_check"]


class TamperDetected(Event, frozen=True, kw_only=True):
    """The ledger and a witness disagree, or the ledger disagrees with itself: an anchor holds
    another hash than the ledger at `seq` (`anchor/<name>`), holds records the ledger does not have
    (the ledger is behind its anchors: `seq` is the first missing one, `detail` names the range), a
    record does not hash to its stored hash or does not link to the one before (`ledger/chain`), or
    SQLite found a damaged page (`ledger/quick_check`). `seq` and the hashes are null when unknown.
    Recorded once per alarm on the `integrity` stream; until an `IntegrityAcknowledged` follows,
    every release is refused before STS (503 `unavailable`, reason `integrity_alarm`)."""

    source: TamperSource
    seq: int | None
    expected_hash: str | None
    found_hash: str | None
    detail: str


class IntegrityAcknowledged(Event, frozen=True, kw_only=True):
    """An operator acknowledged the open `TamperDetected` at `tamper_seq` (`agentkeys-broker integrity
    ack --reason TEXT`); releases resume. `lost_range` = `[first, last]` seqs the anchors held and the
    ledger lost (a ledger restored from an older snapshot), null otherwise; the SQLite anchor then
    starts a new file at `first` (the ledger's head + 1)."""

    tamper_seq: int
    reason: str
    operator: str
    lost_range: list[int] | None
