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
