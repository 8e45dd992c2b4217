"""`POST /v1/mint-aws-creds`, v2 path (seed-spec §B.4) and the release gate (design §3).

The load-bearing invariant (seed-spec §D.1): no credential leaves the broker unless the caller
proved an identity (session JWT), that identity is bound to the signing wallet (per-call EIP-191
signature by the JWT's wallet), the wallet holds a valid grant for the resource, and the ledger
record naming all four (`MintAuthorized`) has been confirmed by every anchor the policy requires.

Order of work (the first failure wins; nothing after it runs):
 1. session JWT (401, no ledger event: the caller is unauthenticated)
 2. body: present, JSON, typed fields, size (400/413)
 3. per-OmniAccount rate limit (429)
 4. per-call signature over the canonical body without `auth.signature` (400/401), signer ==
    `auth.address` == the JWT's wallet (401); `issued_at` fresh (400)
 5. grant: the daemon's active grant for the service whose scope prefix covers the request (403
    with a typed reason); decided on the `Grant` aggregate
 6. admission: one atomic append of `GrantUsed` + `MintRequested` (stream `wallet:request_id`), so
    the request id is spent and the grant use consumed together; a replayed id is 409
 7. STS AssumeRole (502 `sts_error`) — only now, so refused requests never reach STS
 8. `MintAuthorized` (access key id, expiry, session name; never the secret)
 9. the gate: required anchors confirm `MintAuthorized` before the deadline, else `MintWithheld`
    and 503 `anchor_unavailable` with no credential material
Every refusal after step 1 is a `MintDenied` event with a typed reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import msgspec

from ledger.aggregates import Grant, GrantRefused, MintRequest, stream_id
from ledger.app import Ledger
from ledger.errors import ConcurrencyConflict
from ledger.events import GrantCreated, MintAuthorized, MintDenied, MintRequested, MintWithheld
from ledger.canonical import canonical_bytes
from ledger.gate import ReleaseGate
from ledger.identity import evm_omni_account
from ledger.ports import AssumeRoleRequest, CredentialMinter, StsError
from projections.grants import grants_for_daemon
from projections.runner import ProjectionRunner

from .auth.bearer import verify_session
from .auth.signatures import SignatureError, verify_personal_sign
from .errors import ApiError
from .grants import normalize_scope, scope_covers
from .keys import Keyring
from .ratelimit import RateLimiter
from .schemas import MintAuthSchema, MintIntentSchema, MintRequestSchema, MintResponse
from .session_policy import ScopeError


# The wire schema is the parse target (unknown fields are allowed: they are part of the signed form).
MintIntent, MintAuth, MintBody = MintIntentSchema, MintAuthSchema, MintRequestSchema


MintResult = MintResponse  # what the route answers, built once here


def canonical_signing_input(raw: bytes) -> bytes:
    """The seed's canonical body: the JSON with `auth.signature` removed, keys sorted recursively,
    compact, non-ASCII unescaped (seed-spec §B.4 step 3)."""
    value = json.loads(raw.decode("utf-8"))  # strict UTF-8: raw lone surrogates are refused here
    if isinstance(value, dict) and isinstance(value.get("auth"), dict):
        value["auth"].pop("signature", None)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def parse_issued_at(value: str) -> datetime:
    """RFC 3339 UTC (`Z` or `+00:00`), seconds precision or finer."""
    if not isinstance(value, str) or not (value.endswith("Z") or value.endswith("+00:00")) or "T" not in value:
        raise ValueError("issued_at must be an RFC 3339 UTC timestamp, e.g. 2026-11-29T05:00:00Z")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.utcoffset() != timezone.utc.utcoffset(None):
        raise ValueError("issued_at must be UTC")
    return parsed


class MintService:
    def __init__(
        self,
        *,
        ledger: Ledger,
        projections: ProjectionRunner,
        session_keys: Keyring,
        issuer: str,
        minter: CredentialMinter,
        gate: ReleaseGate,
        grants_required: bool,
        max_skew_s: int,
        duration_s: int,
        mint_limiter: RateLimiter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.projections = projections
        self.session_keys = session_keys
        self.issuer = issuer
        self.minter = minter
        self.gate = gate
        self.grants_required = grants_required
        self.max_skew_s = max_skew_s
        self.duration_s = duration_s
        self.mint_limiter = mint_limiter
        self.clock = clock

    # --- steps ------------------------------------------------------------------------------

    async def mint(self, token: str, raw: bytes) -> MintResult:
        claims = verify_session(token, self.session_keys, self.issuer)
        body = self._parse(raw)
        wallet = claims.agentkeys.wallet_address
        ctx = _Ctx(omni_account=claims.omni_account, identity_type=claims.agentkeys.identity_type,
                   identity_value=claims.agentkeys.identity_value, session_jti=claims.jti, body=body,
                   wallet=body.auth.address.lower())

        decision = self.mint_limiter.check(claims.omni_account)
        if not decision.allowed:
            await self._deny(ctx, "rate_limited", "too many mints for this account")
            raise ApiError("rate_limited", "rate limited: too many mints for this account",
                           reason="rate_limited", headers={"Retry-After": str(decision.retry_after_seconds)})

        if not wallet or claims.agentkeys.identity_type != "evm":
            # An email / OAuth2 session holds no wallet: it mints nothing until the identity is
            # linked to a wallet-backed account (issue 16; design §3a).
            await self._deny(ctx, "not_owner", f"a {claims.agentkeys.identity_type} session holds no wallet")
            raise ApiError("forbidden", "forbidden: this session is not backed by a wallet; link the identity to a "
                           "wallet-backed account first", reason="not_owner")
        canonical = canonical_signing_input(raw)
        digest = hashlib.sha256(canonical).hexdigest()
        try:
            verify_personal_sign(canonical, body.auth.signature, body.auth.address, label="per-call signature")
        except SignatureError as exc:
            await self._deny(ctx, "signature_invalid", str(exc))
            kind = "bad_request" if exc.status == 400 else "unauthorized"
            raise ApiError(kind, f"{'bad request' if kind == 'bad_request' else 'unauthorized'}: {exc}",
                           reason=exc.reason) from None
        if not wallet or body.auth.address.lower() != wallet.lower():
            await self._deny(ctx, "wallet_mismatch", "the signing wallet is not the session's wallet")
            raise ApiError("unauthorized", "unauthorized: auth.address is not the wallet bound to this session",
                           reason="wallet_mismatch")
        try:
            issued = parse_issued_at(body.issued_at)
        except ValueError as exc:
            await self._deny(ctx, "bad_request", str(exc))
            raise ApiError("bad_request", f"bad request: {exc}") from None
        skew = abs(self.clock() - issued.timestamp())
        if skew > self.max_skew_s:
            await self._deny(ctx, "stale_request", f"issued_at is {int(skew)} s from the broker's clock")
            raise ApiError("bad_request", f"bad request: issued_at is more than {self.max_skew_s} s from now",
                           reason="stale_request")

        self._refuse_if_anchors_unready()
        return await self._release(ctx, digest, audit_id=f"aud_{int(issued.timestamp())}_{digest[:16]}")

    def _refuse_if_anchors_unready(self) -> None:
        unready = self.gate.unready_required()
        if unready:
            raise ApiError("anchor_unavailable", f"audit anchors {', '.join(unready)} are not ready; nothing was "
                           "released (see /readyz)", reason="anchor_unready")

    async def mint_legacy(self, *, wallet: str, token_sha256: str, service: str) -> MintResult:
        """The legacy bearer path (seed-spec §B.3, only with BROKER_LEGACY_BEARER=true): the backend
        vouched for `wallet`; there is no per-call signature, so the request id is generated and the
        same grant check, ledger records and release gate apply."""
        now = self.clock()
        request_id = f"legacy-{uuid.uuid4().hex}"
        body = MintBody(request_id=request_id,
                        issued_at=datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                        intent=MintIntent(agent_id="legacy", service=service, scope_path=""),
                        auth=MintAuth(address=wallet, signature=""))
        ctx = _Ctx(omni_account=evm_omni_account(wallet), identity_type="legacy_bearer",
                   identity_value=token_sha256, session_jti="", body=body, wallet=wallet.lower())
        decision = self.mint_limiter.check(ctx.omni_account)
        if not decision.allowed:
            await self._deny(ctx, "rate_limited", "too many mints for this account")
            raise ApiError("rate_limited", "rate limited: too many mints for this account",
                           reason="rate_limited", headers={"Retry-After": str(decision.retry_after_seconds)})
        self._refuse_if_anchors_unready()
        digest = hashlib.sha256(canonical_bytes({"legacy_bearer_sha256": token_sha256, "request_id": request_id,
                                                 "wallet": ctx.wallet})).hexdigest()
        return await self._release(ctx, digest, audit_id=f"aud_{int(now)}_{digest[:16]}")

    async def _release(self, ctx: "_Ctx", digest: str, *, audit_id: str) -> MintResult:
        """Admission, STS, `MintAuthorized`, the gate: shared by both paths."""
        body = ctx.body
        requested, grant = await self._admit(ctx, digest)

        request = AssumeRoleRequest(
            wallet=ctx.wallet, omni_account=grant.master_omni_account if grant else ctx.omni_account,
            agent_id=body.intent.agent_id, service=body.intent.service, scope_path=body.intent.scope_path,
            duration_seconds=self.duration_s,
        )
        try:
            creds = await asyncio.to_thread(self.minter.assume_role, request)
        except ScopeError as exc:
            await self._deny(ctx, "bad_request", exc.message, grant_id=requested.grant_id)
            raise ApiError("bad_request", f"bad request: {exc.message}", reason="invalid_scope") from None
        except StsError as exc:
            await self._deny(ctx, "sts_error", f"{exc.code}: {exc.message}"[:500], grant_id=requested.grant_id)
            raise ApiError("sts_error", f"sts error: {exc.code}: {exc.message}"[:600]) from None

        authorized = MintAuthorized(
            request_id=body.request_id, request_digest=digest, omni_account=ctx.omni_account, wallet=ctx.wallet,
            agent_id=body.intent.agent_id, service=body.intent.service, scope_path=body.intent.scope_path,
            grant_id=requested.grant_id, role_arn=creds.role_arn, sts_session_name=creds.session_name,
            access_key_id=creds.access_key_id, expiration=creds.expiration,
            policy_sha256=hashlib.sha256(creds.policy_json.encode()).hexdigest() if creds.policy_json else None,
        )
        stream = MintRequest.stream_for(ctx.wallet, body.request_id)
        [record] = await self.ledger.append_async(stream, 1, [authorized])
        try:
            result = await self.gate.wait_async(record.seq)
        except asyncio.CancelledError:
            # cut off (shutdown past its grace period, client gone): record that nothing was released
            self.ledger.append(stream, 2, [MintWithheld(
                request_id=body.request_id, wallet=ctx.wallet, authorized_seq=record.seq,
                access_key_id=creds.access_key_id, reason="request_cancelled", missing_anchors=[])])
            raise
        if not result.released:
            await self.ledger.append_async(stream, 2, [MintWithheld(
                request_id=body.request_id, wallet=ctx.wallet, authorized_seq=record.seq,
                access_key_id=creds.access_key_id, reason="anchor_deadline", missing_anchors=result.missing)])
            raise ApiError("anchor_unavailable",
                           f"audit anchors {', '.join(result.missing)} did not confirm the mint in time; "
                           "no credential was released", reason="anchor_deadline")
        return MintResult(
            access_key_id=creds.access_key_id, secret_access_key=creds.secret_access_key,
            session_token=creds.session_token, expiration=creds.expiration, wallet=body.auth.address,
            audit_record_id=audit_id, seq=record.seq,
            record_hash=record.hash, anchored=result.anchored,
        )

    def _parse(self, raw: bytes) -> MintBody:
        if not raw or not raw.strip():
            raise ApiError("bad_request", "bad request: v2 mint requires a JSON body")
        try:
            body = msgspec.json.decode(raw, type=MintBody)
            canonical_signing_input(raw)  # the signed form is built from a generic parse: it must succeed too
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError, RecursionError) as exc:
            raise ApiError("bad_request", f"bad request: malformed v2 body: {str(exc)[:200]}") from None
        if not 1 <= len(body.request_id) <= 128 or not body.request_id.isprintable():
            raise ApiError("bad_request", "bad request: request_id must be 1-128 printable characters")
        if not body.intent.agent_id or len(body.intent.agent_id) > 128:
            raise ApiError("bad_request", "bad request: intent.agent_id must be 1-128 characters")
        if not body.intent.service or len(body.intent.service) > 64:
            raise ApiError("bad_request", "bad request: intent.service must be 1-64 characters")
        return msgspec.structs.replace(body, intent=msgspec.structs.replace(
            body.intent, scope_path=normalize_scope(body.intent.scope_path, body.intent.service)))

    async def _admit(self, ctx: "_Ctx", digest: str) -> tuple[MintRequested, GrantCreated | None]:
        body = ctx.body
        stream = MintRequest.stream_for(ctx.wallet, body.request_id)
        for _ in range(10):
            if self.ledger.load(MintRequest, stream).version > 0:
                await self._deny(ctx, "request_replayed", "request_id already used by this wallet")
                raise ApiError("conflict", "conflict: request_id already used", reason="request_replayed")
            try:
                grant_agg, grant = self._resolve_grant(ctx)
            except _Refused as exc:
                await self._deny(ctx, exc.reason or "no_grant", exc.message)
                raise
            now = int(self.clock())
            requested = MintRequested(
                request_id=body.request_id, request_digest=digest, omni_account=ctx.omni_account,
                identity_type=ctx.identity_type, identity_value=ctx.identity_value,
                wallet=ctx.wallet, agent_id=body.intent.agent_id, service=body.intent.service,
                scope_path=body.intent.scope_path, grant_id=grant.grant_id if grant else "",
                session_jti=ctx.session_jti,
            )
            parts = []
            if grant_agg is not None:
                try:
                    used = grant_agg.use(now_unix=now, wallet=ctx.wallet, request_id=body.request_id)
                except GrantRefused as exc:
                    await self._deny(ctx, exc.reason, str(exc), grant_id=grant.grant_id if grant else None)  # type: ignore[arg-type]
                    raise ApiError("forbidden", f"forbidden: {exc}", reason=exc.reason) from None
                parts.append((grant_agg.stream, grant_agg.version, used))
            parts.append((stream, 0, [requested]))
            try:
                await self.ledger.append_many_async(parts)
                return requested, grant
            except ConcurrencyConflict as exc:
                if exc.stream == stream:
                    await self._deny(ctx, "request_replayed", "request_id already used by this wallet")
                    raise ApiError("conflict", "conflict: request_id already used", reason="request_replayed") from None
                continue  # another mint used the grant first: re-read and decide again
        raise ApiError("unavailable", "mint contended; retry")

    def _resolve_grant(self, ctx: "_Ctx") -> tuple[Grant | None, GrantCreated | None]:
        """The grant this request mints against, decided on the aggregate; or (None, None) for an
        implicit self-mint when grants are not required."""
        body = ctx.body
        candidates = grants_for_daemon(self.projections.engine, ctx.wallet, body.intent.service)
        now = int(self.clock())
        refusal: tuple[str, str] | None = None
        for row in candidates:
            if not scope_covers(row.scope_path, body.intent.scope_path):
                refusal = refusal or ("scope_not_granted", "the grant does not cover this scope_path")
                continue
            agg = self.ledger.load(Grant, Grant.stream_for(row.grant_id))
            try:
                created = agg.check_usable(now)
            except GrantRefused as exc:
                if refusal is None or refusal[0] == "scope_not_granted":
                    refusal = (exc.reason, str(exc))
                continue
            return agg, created
        if refusal is not None:
            raise _Refused(*refusal)
        if self.grants_required:
            raise _Refused("no_grant", "no active grant for this wallet and service")
        return None, None

    async def _deny(self, ctx: "_Ctx", reason: str, detail: str, *, grant_id: str | None = None) -> None:
        event = MintDenied(request_id=ctx.body.request_id[:128], wallet=ctx.wallet, omni_account=ctx.omni_account,
                           reason=reason, detail=detail[:500], grant_id=grant_id,  # type: ignore[arg-type]
                           service=ctx.body.intent.service[:64])
        await self.ledger.append_async(stream_id("mint-denial", uuid.uuid4().hex), 0, [event])


@dataclass
class _Ctx:
    """Who is minting: from the session JWT (v2) or from the legacy backend's answer."""

    omni_account: str
    identity_type: str
    identity_value: str
    session_jti: str
    body: MintBody
    wallet: str


class _Refused(ApiError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__("forbidden", f"forbidden: {message}", reason=reason)
