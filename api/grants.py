"""Capability grants (seed-spec §B.10, design §2): a master wallet lets a daemon address mint
credentials for one service under a scope path prefix, until an expiry, at most N times.

create: one atomic append binds the daemon (`WalletBound`, role `daemon`, parent = the master, in
        the master's OmniAccount) and writes `GrantCreated` with its signed `audit_proof`.
revoke: `GrantRevoked` on the grant aggregate; not-found / not-owner / already revoked collapse to
        one 400 (no ownership oracle).
list:   from the `grants` projection, after it has caught up with the caller's own writes.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Callable

import jwt
import msgspec

from ledger.aggregates import Grant, GrantRefused, WalletBinding, WalletRoleConflict
from ledger.app import Ledger
from ledger.canonical import canonical_bytes
from ledger.errors import ConcurrencyConflict
from ledger.events import GrantCreated
from ledger.identity import normalize_address
from projections.grants import GrantRow, grants_of_master
from projections.runner import ProjectionRunner

from .auth.session_jwt import SessionClaims
from .errors import ApiError
from .keys import Keyring
from .session_policy import ScopeError, parse_scope

MAX_SERVICE_LEN = 64
MAX_SCOPE_LEN = 512
MAX_USES_LIMIT = 1_000_000
MAX_GRANT_SECONDS = 366 * 24 * 3600


def grant_content(event: GrantCreated) -> dict[str, Any]:
    """What `audit_proof` signs (every field but the proof itself)."""
    return {k: v for k, v in msgspec.to_builtins(event).items() if k != "audit_proof"}


def sign_audit_proof(content: dict[str, Any], keyring: Keyring) -> str:
    """Compact ES256 JWS over the canonical JSON of the grant content (payload = those bytes)."""
    key = keyring.active
    return jwt.api_jws.encode(canonical_bytes(content), key.private_key, algorithm="ES256",
                              headers={"kid": key.kid, "typ": "agentkeys-grant+jws"})


def verify_audit_proof(proof: str, public_key: Any) -> dict[str, Any]:
    """Offline check (an auditor uses the public JWK of the `SigningKeyRotated` record named by
    the proof's `kid`); returns the signed grant content."""
    payload = jwt.api_jws.decode(proof, public_key, algorithms=["ES256"])
    return msgspec.json.decode(payload)


def _validate_service(service: str) -> str:
    if not service or len(service) > MAX_SERVICE_LEN or not all(c.isalnum() or c in "-_." for c in service):
        raise ApiError("bad_request", "bad request: service must be 1-64 characters of [A-Za-z0-9-_.]")
    return service


def normalize_scope(scope_path: str, service: str) -> str:
    """The canonical form of a scope path, `<bucket>/<prefix>/` (prefix empty or ending in `/`),
    so that prefix matching is by path segment: a grant for `b/agents/a1` covers `b/agents/a1/x`
    but never `b/agents/a10/`. Services other than `s3` may leave the scope empty (whole service).
    Bad scopes (wildcards, `..`, control characters, bad bucket names) are 400."""
    if scope_path == "" and service != "s3":
        return ""
    if len(scope_path) > MAX_SCOPE_LEN:
        raise ApiError("bad_request", f"bad request: scope_path longer than {MAX_SCOPE_LEN} characters")
    try:
        return parse_scope(scope_path, service).scope_path
    except ScopeError as exc:
        raise ApiError("bad_request", f"bad request: {exc.message}", reason="invalid_scope") from None


def scope_covers(granted: str, requested: str) -> bool:
    """Both normalized. An empty grant scope covers the whole service."""
    return granted == "" or requested.startswith(granted)


class GrantService:
    def __init__(self, *, ledger: Ledger, projections: ProjectionRunner, keyring: Keyring,
                 clock: Callable[[], float] = time.time) -> None:
        self.ledger = ledger
        self.projections = projections
        self.keyring = keyring
        self.clock = clock

    async def create(self, claims: SessionClaims, *, daemon_address: str, service: str, scope_path: str,
                     expires_at: int, max_uses: int) -> GrantCreated:
        master = claims.agentkeys.wallet_address
        if not master or claims.agentkeys.identity_type != "evm":
            raise ApiError("forbidden", "forbidden: only a wallet (SIWE) session can grant", reason="not_owner")
        try:
            daemon = normalize_address(daemon_address)
        except ValueError as exc:
            raise ApiError("bad_request", f"bad request: daemon_address: {exc}") from None
        if daemon == master:
            raise ApiError("bad_request", "bad request: a wallet cannot grant itself")
        now = int(self.clock())
        if expires_at <= now:
            raise ApiError("bad_request", "bad request: expires_at is in the past")
        if expires_at > now + MAX_GRANT_SECONDS:
            raise ApiError("bad_request", "bad request: expires_at is more than 366 days away")
        if not 1 <= max_uses <= MAX_USES_LIMIT:
            raise ApiError("bad_request", f"bad request: max_uses must be in [1, {MAX_USES_LIMIT}]")
        service = _validate_service(service)
        scope_path = normalize_scope(scope_path, service)
        omni = claims.omni_account
        grant_id = "grn-" + secrets.token_hex(12)
        unsigned = GrantCreated(grant_id=grant_id, master_omni_account=omni, master_address=master,
                                daemon_address=daemon, service=service, scope_path=scope_path, granted_at=now,
                                expires_at=expires_at, max_uses=max_uses, audit_proof="")
        proof = sign_audit_proof(grant_content(unsigned), self.keyring)
        event = msgspec.structs.replace(unsigned, audit_proof=proof)
        binding_stream = WalletBinding.stream_for(omni, daemon)
        for _ in range(5):
            binding = self.ledger.load(WalletBinding, binding_stream)
            try:
                bind_events = binding.bind(omni_account=omni, address=daemon, role="daemon", parent_address=master)
            except WalletRoleConflict as exc:
                raise ApiError("conflict", f"conflict: {exc}", reason="wallet_role_conflict") from None
            parts = [(binding_stream, binding.version, bind_events)] if bind_events else []
            parts.append((Grant.stream_for(grant_id), 0, [event]))
            try:
                records = await self.ledger.append_many_async(parts)
                break
            except ConcurrencyConflict:
                continue
        else:  # pragma: no cover
            raise ApiError("unavailable", "grant creation contended; retry")
        await self.projections.wait_until_async(records[-1].seq, timeout=5.0)
        return event

    async def revoke(self, claims: SessionClaims, grant_id: str) -> None:
        stream = Grant.stream_for(grant_id)
        for _ in range(5):
            grant = self.ledger.load(Grant, stream)
            try:
                events = grant.revoke(now_unix=int(self.clock()), by_omni_account=claims.omni_account)
            except GrantRefused:
                raise ApiError("bad_request", "bad request: grant not found, not yours, or already revoked") from None
            try:
                records = await self.ledger.append_async(stream, grant.version, events)
                break
            except ConcurrencyConflict:
                continue
        else:  # pragma: no cover
            raise ApiError("unavailable", "grant revocation contended; retry")
        await self.projections.wait_until_async(records[-1].seq, timeout=5.0)

    def list(self, claims: SessionClaims) -> list[GrantRow]:
        return grants_of_master(self.projections.engine, claims.omni_account)
