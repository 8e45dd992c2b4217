"""Mint short-lived cloud credentials (seed-spec §B.4; the legacy path §B.3) through the release
path (design §3).

The load-bearing invariant (seed-spec §D.1): no credential leaves the broker unless the caller
proved an identity (the edge verified the session JWT), that identity is bound to the signing
wallet (per-call EIP-191 signature by the session's wallet), the wallet holds a valid grant for the
resource, and the ledger record naming all four (`MintAuthorized`) has been confirmed by every
anchor the policy requires.

Order of work (the first refusal wins; nothing after it runs):
 0. fields: request_id, agent_id, service, scope_path well-formed (a request that does not parse
    names no request: refused, not recorded)
 1. per-OmniAccount rate limit (`rate_limited`, with `retry_after`)
 2. per-call signature over the canonical body (`signature_*`, `address_mismatch`); signer ==
    `auth.address` == the session's wallet (`wallet_mismatch`); `issued_at` fresh (`stale_request`)
 3. every required anchor ready (`anchor_unready`): refused before any work (before STS), from
    the injected `AnchorReadiness` port, called in a worker thread (never on the event loop)
 4. grant: the daemon's active grant for the service whose scope prefix covers the request,
    decided on the `Grant` aggregate (`no_grant`, `grant_*`, `scope_not_granted`)
 5. admission: one atomic append of `GrantUsed` + `MintRequested` (stream `wallet:request_id`), so
    the request id is spent and the grant use consumed together (`request_replayed`)
 6. STS AssumeRole (`sts_error`, `invalid_scope`): only now, so refused requests never reach STS
 7. the release path: `MintAuthorized` (never the secret), the gate, `MintWithheld` otherwise.
Every refusal from step 1 on is recorded once, by construction: `_recorded` turns any `Refusal`
raised inside it into one `MintDenied` (reason = the refusal's reason, mapped onto
`MintDenialReason`) before it propagates; `Withheld` is not a denial (its `MintWithheld` is written
by the release path).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import AsyncIterator, Sequence, get_args

from ..aggregates import Grant, GrantRefused, MintRequest, stream_id
from ..app import Ledger
from ..canonical import canonical_bytes
from ..chain import ChainRecord
from ..errors import ConcurrencyConflict
from ..events import (GrantCreated, MintAuthorized, MintDenialReason, MintDenied, MintRequested, MintUnreleased,
                      MintWithheld)
from ..identity import evm_omni_account
from ..ports import AnchorReadiness, AssumeRoleRequest, Clock, CredentialMinter, GrantLookup, RateLimit, StsError
from ..scopes import ScopeError
from ..signatures import SignatureError, verify_personal_sign
from .caller import Caller
from .grants import normalize_scope, scope_covers
from .refusals import Refusal
from .release import ReleasePath, Withheld, WithheldAppend

_DENIAL_REASONS = frozenset(get_args(MintDenialReason))
_SIGNATURE_REASONS = frozenset({"signature_not_hex", "signature_length", "signature_v", "signature_zero",
                                "signature_high_s", "signature_unrecoverable", "address_mismatch"})


@dataclass(frozen=True, slots=True)
class MintIntent:
    """A mint request as the core sees it (the wire body, already decoded by the edge)."""

    request_id: str
    issued_at: str
    agent_id: str
    service: str
    scope_path: str
    address: str
    signature: str
    aud: str | None = None  # optional, signed: must be this broker's issuer when present


@dataclass(frozen=True, slots=True)
class MintResult:
    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: int
    wallet: str
    audit_record_id: str
    seq: int
    record_hash: str
    anchored: list[str]

    def __repr__(self) -> str:  # never the secret in logs
        return f"MintResult(access_key_id={self.access_key_id!r}, seq={self.seq})"


class Unreleased(Refusal):
    """STS may have issued a credential that was never released: recorded as `MintUnreleased`
    (not a denial); the caller sees `sts_error`."""

    def __init__(self, message: str) -> None:
        super().__init__("sts_error", message)


class MintRefused(Refusal):
    """A refusal that names the grant it was decided on (recorded in `MintDenied.grant_id`)."""

    def __init__(self, reason: str, message: str, *, grant_id: str | None = None) -> None:
        super().__init__(reason, message)
        self.grant_id = grant_id


def parse_issued_at(value: str) -> datetime:
    """RFC 3339 UTC (`Z` or `+00:00`), seconds precision or finer."""
    if not isinstance(value, str) or not (value.endswith("Z") or value.endswith("+00:00")) or "T" not in value:
        raise ValueError("issued_at must be an RFC 3339 UTC timestamp, e.g. 2026-11-29T05:00:00Z")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.utcoffset() != timezone.utc.utcoffset(None):
        raise ValueError("issued_at must be UTC")
    return parsed


def denial_reason(refusal: Refusal) -> str:
    """The `MintDenied.reason` recorded for a refusal: its own reason where it is a
    `MintDenialReason`; every signature refusal is `signature_invalid`; other malformed input
    (`invalid_scope`, a bad timestamp) is `bad_request`."""
    if refusal.reason in _DENIAL_REASONS:
        return refusal.reason
    if refusal.reason in _SIGNATURE_REASONS:
        return "signature_invalid"
    return "bad_request"


@dataclass
class _Ctx:
    """Who is minting: from the session (v2) or from the legacy backend's answer."""

    omni_account: str
    identity_type: str
    identity_value: str
    session_jti: str
    intent: MintIntent
    wallet: str
    grant_id: str | None = None


class MintService:
    def __init__(
        self,
        *,
        ledger: Ledger,
        grants: GrantLookup,
        minter: CredentialMinter,
        release: ReleasePath,
        anchor_ready: AnchorReadiness,
        grants_required: bool,
        max_skew_s: int,
        duration_s: int,
        mint_limiter: RateLimit,
        audience: str | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.ledger = ledger
        self.grants = grants
        self.minter = minter
        self.release = release
        self.anchor_ready = anchor_ready
        self.grants_required = grants_required
        self.max_skew_s = max_skew_s
        self.duration_s = duration_s
        self.mint_limiter = mint_limiter
        self.audience = audience.rstrip("/") if audience else None
        self.clock = clock

    # --- the two entry points -----------------------------------------------------------------

    async def mint(self, caller: Caller, intent: MintIntent, canonical: bytes) -> MintResult:
        """The v2 path: `canonical` is the signed form of the body (seed-spec §B.4 step 3)."""
        intent = self._validated(intent)
        ctx = _Ctx(omni_account=caller.omni_account, identity_type=caller.identity_type,
                   identity_value=caller.identity_value, session_jti=caller.session_jti, intent=intent,
                   wallet=intent.address.lower())
        async with self._recorded(ctx):
            self._check_rate(ctx)
            digest = hashlib.sha256(canonical).hexdigest()
            try:
                verify_personal_sign(canonical, intent.signature, intent.address, label="per-call signature")
            except SignatureError as exc:
                raise Refusal(exc.reason, str(exc)) from None
            wallet = caller.wallet_address
            if not wallet or intent.address.lower() != wallet.lower():
                raise Refusal("wallet_mismatch", "auth.address is not the wallet bound to this session")
            try:
                issued = parse_issued_at(intent.issued_at)
            except ValueError as exc:
                raise Refusal("bad_request", str(exc)) from None
            skew = abs(self.clock() - issued.timestamp())
            if skew > self.max_skew_s:
                raise Refusal("stale_request", f"issued_at is more than {self.max_skew_s} s from now")
            if intent.aud is not None and intent.aud != self.audience:
                raise Refusal("audience_mismatch", f"aud must be this broker's issuer {self.audience}")
            await self._check_anchors_ready()
            return await self._admit_and_release(ctx, digest, audit_id=f"aud_{int(issued.timestamp())}_{digest[:16]}")

    async def mint_legacy(self, *, wallet: str, token_sha256: str, service: str) -> MintResult:
        """The legacy bearer path (seed-spec §B.3, only with BROKER_LEGACY_BEARER=true): the backend
        vouched for `wallet`; there is no per-call signature, so the request id is generated and the
        same grant check, ledger records and release path apply."""
        now = self.clock()
        request_id = f"legacy-{uuid.uuid4().hex}"
        intent = MintIntent(request_id=request_id,
                            issued_at=datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                            agent_id="legacy", service=service, scope_path="", address=wallet, signature="")
        ctx = _Ctx(omni_account=evm_omni_account(wallet), identity_type="legacy_bearer",
                   identity_value=token_sha256, session_jti="", intent=intent, wallet=wallet.lower())
        async with self._recorded(ctx):
            self._check_rate(ctx)
            await self._check_anchors_ready()
            digest = hashlib.sha256(canonical_bytes({"legacy_bearer_sha256": token_sha256, "request_id": request_id,
                                                     "wallet": ctx.wallet})).hexdigest()
            return await self._admit_and_release(ctx, digest, audit_id=f"aud_{int(now)}_{digest[:16]}")

    # --- steps --------------------------------------------------------------------------------

    def _validated(self, intent: MintIntent) -> MintIntent:
        if not 1 <= len(intent.request_id) <= 128 or not intent.request_id.isprintable():
            raise Refusal("bad_request", "request_id must be 1-128 printable characters")
        if not intent.agent_id or len(intent.agent_id) > 128:
            raise Refusal("bad_request", "intent.agent_id must be 1-128 characters")
        if not intent.service or len(intent.service) > 64:
            raise Refusal("bad_request", "intent.service must be 1-64 characters")
        return MintIntent(request_id=intent.request_id, issued_at=intent.issued_at, agent_id=intent.agent_id,
                          service=intent.service, scope_path=normalize_scope(intent.scope_path, intent.service),
                          address=intent.address, signature=intent.signature, aud=intent.aud)

    @asynccontextmanager
    async def _recorded(self, ctx: _Ctx) -> AsyncIterator[None]:
        """Every refusal raised inside is recorded as exactly one `MintDenied`."""
        try:
            yield
        except (Withheld, Unreleased):
            raise  # an outcome, not a denial: `MintWithheld` / `MintUnreleased` is already recorded
        except Refusal as refusal:
            if refusal.reason == "contended":
                raise  # lost ten races in a row: nothing was decided about this request; retry
            await self._deny(ctx, refusal)
            raise

    async def _deny(self, ctx: _Ctx, refusal: Refusal) -> None:
        grant_id = refusal.grant_id if isinstance(refusal, MintRefused) else ctx.grant_id
        event = MintDenied(request_id=ctx.intent.request_id[:128], wallet=ctx.wallet, omni_account=ctx.omni_account,
                           reason=denial_reason(refusal),  # type: ignore[arg-type]  # a MintDenialReason by construction
                           detail=refusal.message[:500], grant_id=grant_id, service=ctx.intent.service[:64])
        await self.ledger.append_async(stream_id("mint-denial", uuid.uuid4().hex), 0, [event])

    def _check_rate(self, ctx: _Ctx) -> None:
        decision = self.mint_limiter.check(ctx.omni_account)
        if not decision.allowed:
            raise Refusal("rate_limited", "too many mints for this account",
                          retry_after=decision.retry_after_seconds)

    async def _check_anchors_ready(self) -> None:
        self.release.check_integrity()  # an open integrity alarm refuses before STS (design §8)
        # The port may answer from cached background probes or probe (bounded) itself: either
        # way it runs in a worker thread, never on the event loop.
        unready = await asyncio.to_thread(
            lambda: [name for name in self.release.required if not self.anchor_ready(name).ok])
        if unready:
            raise Refusal("anchor_unready", f"audit anchors {', '.join(unready)} are not ready; nothing was "
                          "released (see /readyz)")

    async def _admit_and_release(self, ctx: _Ctx, digest: str, *, audit_id: str) -> MintResult:
        """Admission, STS, then the release path: shared by both entry points."""
        intent = ctx.intent
        requested, grant, requested_seq = await self._admit(ctx, digest)
        ctx.grant_id = requested.grant_id
        request = AssumeRoleRequest(
            wallet=ctx.wallet, omni_account=grant.master_omni_account if grant else ctx.omni_account,
            agent_id=intent.agent_id, service=intent.service, scope_path=intent.scope_path,
            duration_seconds=self.duration_s, requested_seq=requested_seq,
        )
        try:
            creds = await asyncio.to_thread(self.minter.assume_role, request)
        except ScopeError as exc:
            raise Refusal("invalid_scope", exc.message) from None
        except StsError as exc:
            if exc.outcome_unknown and request.session_name:
                # STS may have issued a credential (a timeout, a connection dropped after sending):
                # the record names its session, so it can be found in CloudTrail (design §3a)
                await self.ledger.append_async(MintRequest.stream_for(ctx.wallet, intent.request_id), 1, [MintUnreleased(
                    request_id=intent.request_id, wallet=ctx.wallet, requested_seq=requested_seq,
                    sts_session_name=request.session_name, role_arn=str(getattr(self.minter, "role_arn", "") or ""),
                    access_key_id=None, expiration=None, reason="sts_outcome_unknown",
                    detail=f"{exc.code}: {exc.message}"[:500])])
                raise Unreleased(f"{exc.code}: {exc.message}"[:588]) from None
            raise Refusal("sts_error", f"{exc.code}: {exc.message}"[:588]) from None

        authorized = MintAuthorized(
            request_id=intent.request_id, request_digest=digest, omni_account=ctx.omni_account, wallet=ctx.wallet,
            agent_id=intent.agent_id, service=intent.service, scope_path=intent.scope_path,
            grant_id=requested.grant_id, role_arn=creds.role_arn, sts_session_name=creds.session_name,
            access_key_id=creds.access_key_id, expiration=creds.expiration,
            policy_sha256=hashlib.sha256(creds.policy_json.encode()).hexdigest() if creds.policy_json else None,
        )
        stream = MintRequest.stream_for(ctx.wallet, intent.request_id)

        async def append() -> ChainRecord:
            [record] = await self.ledger.append_async(stream, 1, [authorized])
            return record

        def withhold(record: ChainRecord, reason: str, missing: list[str]) -> WithheldAppend:
            return stream, record.version, [MintWithheld(
                request_id=intent.request_id, wallet=ctx.wallet, authorized_seq=record.seq,
                access_key_id=creds.access_key_id, reason=reason, missing_anchors=missing)]

        released = await self.release.release(what="mint", append=append, withhold=withhold)
        return MintResult(
            access_key_id=creds.access_key_id, secret_access_key=creds.secret_access_key,
            session_token=creds.session_token, expiration=creds.expiration, wallet=intent.address,
            audit_record_id=audit_id, seq=released.record.seq, record_hash=released.record.hash,
            anchored=released.anchored,
        )

    async def _admit(self, ctx: _Ctx, digest: str) -> tuple[MintRequested, GrantCreated | None, int]:
        intent = ctx.intent
        stream = MintRequest.stream_for(ctx.wallet, intent.request_id)
        for _ in range(10):
            if self.ledger.load(MintRequest, stream).version > 0:
                raise Refusal("request_replayed", "request_id already used")
            grant_agg, grant = self._resolve_grant(ctx)
            now = int(self.clock())
            requested = MintRequested(
                request_id=intent.request_id, request_digest=digest, omni_account=ctx.omni_account,
                identity_type=ctx.identity_type, identity_value=ctx.identity_value,
                wallet=ctx.wallet, agent_id=intent.agent_id, service=intent.service,
                scope_path=intent.scope_path, grant_id=grant.grant_id if grant else "",
                session_jti=ctx.session_jti,
            )
            parts = []
            if grant_agg is not None and grant is not None:
                try:
                    used = grant_agg.use(now_unix=now, wallet=ctx.wallet, request_id=intent.request_id)
                except GrantRefused as exc:
                    raise MintRefused(exc.reason, str(exc), grant_id=grant.grant_id) from None
                parts.append((grant_agg.stream, grant_agg.version, used))
            parts.append((stream, 0, [requested]))
            try:
                records = await self.ledger.append_many_async(parts)
                return requested, grant, records[-1].seq  # the MintRequested record names the STS session
            except ConcurrencyConflict as exc:
                if exc.stream == stream:
                    raise Refusal("request_replayed", "request_id already used") from None
                continue  # another mint used the grant first: re-read and decide again
        raise Refusal("contended", "mint contended; retry")

    def _resolve_grant(self, ctx: _Ctx) -> tuple[Grant | None, GrantCreated | None]:
        """The grant this request mints against, decided on the aggregate; or (None, None) for an
        implicit self-mint when grants are not required."""
        intent = ctx.intent
        candidates: Sequence = self.grants.for_daemon(ctx.wallet, intent.service)
        now = int(self.clock())
        refusal: tuple[str, str] | None = None
        for row in candidates:
            if not scope_covers(row.scope_path, intent.scope_path):
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
            raise Refusal(*refusal)
        if self.grants_required:
            raise Refusal("no_grant", "no active grant for this wallet and service")
        return None, None
