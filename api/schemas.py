"""Wire schemas (msgspec Structs). These are never ledger events."""

from __future__ import annotations

import msgspec


class ErrorBody(msgspec.Struct):
    error: str
    message: str
    reason: str | None = None


class ReadinessCheck(msgspec.Struct):
    name: str
    status: str
    reason: str
    docs: str


class ReadinessBody(msgspec.Struct):
    status: str
    degraded: bool
    checks: list[ReadinessCheck]
    ready: list[str]
    age_ms: dict[str, int] = msgspec.field(default_factory=dict)


class AnchorPosition(msgspec.Struct):
    confirmed_seq: int


class AuditHead(msgspec.Struct):
    seq: int
    hash: str
    anchors: dict[str, AnchorPosition]


# --- SIWE ---------------------------------------------------------------------------------------


class WalletStartRequest(msgspec.Struct):
    """Start a Sign-In with Ethereum challenge for `address` on `chain_id`."""

    address: str
    chain_id: int
    source_ip: str | None = None  # accepted for seed compatibility; never trusted (see client IP rules)


class WalletStartResponse(msgspec.Struct):
    request_id: str
    expires_in_seconds: int
    siwe_message: str
    nonce: str
    expires_at_iso: str


class WalletVerifyRequest(msgspec.Struct):
    """Answer a challenge: the EIP-191 signature of the exact `siwe_message` returned by start."""

    request_id: str
    signature: str


class SessionResponse(msgspec.Struct):
    session_jwt: str
    session_jwt_kid: str
    expires_at: int
    omni_account: str
    wallet_address: str
    identity_type: str
    identity_value: str
    seq: int
    record_hash: str
    anchored: list[str]


# --- grants and mints ---------------------------------------------------------------------------


class GrantCreateRequest(msgspec.Struct):
    """A master wallet grants `daemon_address` the right to mint `service` credentials under the
    `scope_path` prefix until `expires_at` (Unix seconds), at most `max_uses` times. `service` is a
    name of the broker's catalogue, exactly; `scope_path` lies inside a root the master owns
    (namespaced tenancy: `<bucket>/<master omni_account>/...`; empty for services of scope none)."""

    daemon_address: str
    service: str
    scope_path: str
    expires_at: int
    max_uses: int
    agent_id: str | None = None  # pin: the daemon may mint only as this exact agent_id
    agent_id_prefix: str | None = None  # pin: ... only as an agent_id starting with this (exclusive with agent_id)


class DaemonReleaseRequest(msgspec.Struct):
    """End a daemon's binding: called by the daemon itself (releases every master's live grants
    naming it) or by its master (releases that master's)."""

    daemon_address: str


class DaemonReleaseResponse(msgspec.Struct):
    daemon_address: str
    revoked_grants: list[str]


class GrantCreateResponse(msgspec.Struct):
    grant_id: str
    audit_proof: str


class GrantRevokeRequest(msgspec.Struct):
    grant_id: str


class GrantRevokeResponse(msgspec.Struct):
    grant_id: str
    revoked: bool


class GrantView(msgspec.Struct):
    grant_id: str
    master_omni_account: str
    daemon_address: str
    service: str
    scope_path: str
    granted_at: int
    expires_at: int
    max_uses: int
    used_count: int
    revoked_at: int | None
    audit_proof: str
    agent_id: str | None = None
    agent_id_prefix: str | None = None


class GrantListResponse(msgspec.Struct):
    grants: list[GrantView]


class MintIntentSchema(msgspec.Struct):
    agent_id: str
    service: str
    scope_path: str = ""


class MintAuthSchema(msgspec.Struct):
    address: str
    signature: str


class MintRequestSchema(msgspec.Struct):
    """The v2 mint body. `auth.signature` is the EIP-191 signature, by the session's wallet, of
    the canonical JSON of this body without `auth.signature` (keys sorted recursively, compact).
    An optional top-level `aud` binds the signed request to one broker: when present it must equal
    the broker's issuer URL without a trailing `/` (else 400 `audience_mismatch`)."""

    request_id: str
    issued_at: str
    intent: MintIntentSchema
    auth: MintAuthSchema
    aud: str | None = None  # optional, signed like the rest: must be this broker's issuer (BROKER_OIDC_ISSUER)


class MintResponse(msgspec.Struct):
    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: int
    wallet: str
    audit_record_id: str
    seq: int
    record_hash: str
    anchored: list[str]
