"""Mint short-lived cloud credentials (seed-spec §B.4; the legacy path §B.3) through the release
path (design §3).

The load-bearing invariant (seed-spec §D.1): no credential leaves the broker unless the caller
proved an identity (the edge verified the session JWT), that identity is bound to the signing
wallet (per-call EIP-191 signature by the session's wallet), the wallet holds a valid grant for the
resource, and the ledger record naming all four (`MintAuthorized`) has been confirmed by every
anchor the policy requires.

Order of work (the first refusal wins; nothing after it runs):
 0. fields: request_id, agent_id (`invalid_agent_id`), service in the catalogue
    (`unknown_service`), scope_path well-formed for its service, auth.address well-formed (a
    request that does not parse names no request: refused, not recorded; nothing from the request
    enters an event before this step, so an event holds only validated, bounded values)
 1. per-call signature over the canonical body (`signature_*`, `address_mismatch`); signer ==
    `auth.address` == the session's wallet (`wallet_mismatch`)
 2. the signature is for this request now: `issued_at` fresh (`stale_request`), the signed `aud`,
    when present, this broker's (`audience_mismatch`), the request id not yet spent
    (`request_replayed`, re-checked atomically at admission). A failure in steps 1-2 counts against
    the bad-signature limits per client IP and per wallet (the session's); beyond either, that
    request (and only a request that failed here) is `rate_limited`
 3. per-OmniAccount mint budget (`rate_limited`, with `retry_after`): charged only now, once the
    wallet's key signed this request, so a stolen session JWT without the key cannot spend it
 4. every required anchor ready (`anchor_unready`): refused before any work (before STS), from
    the injected `AnchorReadiness` port, called in a worker thread (never on the event loop)
 5. grant: the daemon's active grant for the service whose scope prefix covers the request and
    whose `agent_id` pin (if any) allows the request's agent, decided on the `Grant` aggregate
    (`no_grant`, `grant_*`, `scope_not_granted`, `agent_not_granted`); then the grant's master must
    still own the scope (`not_enrolled`, `scope_not_owned`: re-checked at every mint, `access.py`);
    a self-mint (grants not required) must be inside the caller's own roots
 6. admission: one atomic append of `GrantUsed` + `MintRequested` (stream `wallet:request_id`), so
    the request id is spent and the grant use consumed together (`request_replayed`)
 7. STS AssumeRole (`sts_error`, `invalid_scope`): only now, so refused requests never reach STS;
    refused before it (and before admission) when the ledger's disk is below
    `BROKER_MIN_FREE_BYTES` (`ledger_low_space`, a `MintDenied` when the ledger still takes it)
 8. the release path: `MintAuthorized` (never the secret), the gate, `MintWithheld` otherwise. If
    the `MintAuthorized` append fails (`LedgerUnavailable`, e.g. SQLITE_FULL) the credential STS
    issued is not released: its key id and session name go to the spill (fsync, in a worker
    thread) and a CRITICAL log line, the caller gets 503 `ledger_unavailable` saying so, and the
    spill's recovery records `MintUnreleased{ledger_write_failed}` once the ledger takes writes.
Every refusal from step 1 on is recorded once, by construction: `_recorded` turns any `Refusal`
raised inside it into one `MintDenied` (reason = the refusal's reason, mapped onto
`MintDenialReason`) before it propagates; `Withheld` is not a denial (its `MintWithheld` is written
by the release path). Rate-limited refusals are the exception (design §8 "Reasons and kinds"): the
first per limited key and window is a `MintDenied{rate_limited}`, later ones are only counted
(`UnrecordedOutcomes.mint("rate_limited")`, i.e. `agentkeys_mints_total{outcome="rate_limited"}`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import get_args

from ..aggregates import Grant, GrantRefused, MintRequest, stream_id
from ..app import Ledger
from ..canonical import canonical_bytes
from ..chain import ChainRecord
from ..errors import ConcurrencyConflict, LedgerUnavailable
from ..events import GrantCreated, MintAuthorized, MintDenialReason, MintDenied, MintRequested, MintUnreleased, MintWithheld
from ..identity import evm_omni_account, normalize_address
from ..ports import (
    AnchorReadiness,
    AssumeRoleRequest,
    Clock,
    CredentialMinter,
    GrantCandidate,
    GrantLookup,
    IssuedCredentials,
    LedgerSpace,
    NoUnrecordedOutcomes,
    RateDecision,
    RateLimit,
    StsError,
    UnrecordedCredentialSink,
    UnrecordedOutcomes,
)
from ..scopes import ScopeError
from ..signatures import SignatureError, verify_personal_sign
from ..spill import SpillEntry, spill_or_log
from .access import Access
from .caller import Caller
from .grants import AGENT_ID, agent_allowed, scope_covers
from .refusals import Refusal
from .release import ReleasePath, Withheld, WithheldAppend

log = logging.getLogger("agentkeys.mint")

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


class Unrecorded(Refusal):
    """STS issued a credential and the ledger could not record its `MintAuthorized`: the credential
    was not released, its key id and session name went to the spill (and a CRITICAL log line) and
    become `MintUnreleased{ledger_write_failed}` once the ledger recovers. Not a denial (the ledger
    is what failed); the caller sees 503 `ledger_unavailable`."""

    def __init__(self, message: str) -> None:
        super().__init__("ledger_unavailable", message)


class RateLimited(Refusal):
    """A refusal beyond a rate limit: recorded only when it is the first of its key and window
    (`recorded`), otherwise only counted (design §8)."""

    def __init__(self, message: str, decision: RateDecision) -> None:
        super().__init__("rate_limited", message, retry_after=decision.retry_after_seconds)
        self.recorded = bool(decision.first_refusal)


class MintRefused(Refusal):
    """A refusal that names the grant it was decided on (recorded in `MintDenied.grant_id`)."""

    def __init__(self, reason: str, message: str, *, grant_id: str | None = None) -> None:
        super().__init__(reason, message)
        self.grant_id = grant_id


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
    if parsed.utcoffset() != UTC.utcoffset(None):
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
        bad_signature_ip_limiter: RateLimit | None = None,
        bad_signature_wallet_limiter: RateLimit | None = None,
        unrecorded: UnrecordedOutcomes | None = None,
        access: Access,
        audience: str | None = None,
        clock: Clock = time.time,
        low_space: LedgerSpace | None = None,
        spill: UnrecordedCredentialSink | None = None,
    ) -> None:
        """`low_space` (default: never low) refuses mints before STS; `spill` keeps a credential
        the ledger could not record (default: the CRITICAL log line alone)."""
        self.ledger = ledger
        self.grants = grants
        self.minter = minter
        self.release = release
        self.anchor_ready = anchor_ready
        self.grants_required = grants_required
        self.max_skew_s = max_skew_s
        self.duration_s = duration_s
        self.mint_limiter = mint_limiter
        self.bad_signature_ip_limiter = bad_signature_ip_limiter
        self.bad_signature_wallet_limiter = bad_signature_wallet_limiter
        self.unrecorded = unrecorded or NoUnrecordedOutcomes()
        self.access = access
        self.audience = audience.rstrip("/") if audience else None
        self.clock = clock
        self.low_space: LedgerSpace = low_space or (lambda: False)
        self.spill: UnrecordedCredentialSink = spill or (lambda entry: spill_or_log(None, entry))

    # --- the two entry points -----------------------------------------------------------------

    async def mint(self, caller: Caller, intent: MintIntent, canonical: bytes, *, client: str = "") -> MintResult:
        """The v2 path: `canonical` is the signed form of the body (seed-spec §B.4 step 3);
        `client` keys the per-IP bad-signature limit (the edge's client IP)."""
        intent = self._validated(intent)
        ctx = _Ctx(omni_account=caller.omni_account, identity_type=caller.identity_type,
                   identity_value=caller.identity_value, session_jti=caller.session_jti, intent=intent,
                   wallet=intent.address.lower())
        async with self._recorded(ctx):
            if not caller.wallet_address or caller.identity_type != "evm":
                # an email / OAuth2 session holds no wallet: it mints nothing until the identity is
                # linked to a wallet-backed account (design §3a)
                raise Refusal("not_owner", f"a {caller.identity_type} session holds no wallet; link the identity to "
                              "a wallet-backed account first")
            digest = hashlib.sha256(canonical).hexdigest()
            wallet = caller.wallet_address
            try:
                try:
                    verify_personal_sign(canonical, intent.signature, intent.address, label="per-call signature")
                except SignatureError as exc:
                    raise Refusal(exc.reason, str(exc)) from None
                if not wallet or intent.address.lower() != wallet.lower():
                    raise Refusal("wallet_mismatch", "auth.address is not the wallet bound to this session")
                # a signature the wallet made, but not for this request now: an old body replayed by
                # whoever holds the session, another broker's body, a spent request id
                try:
                    issued = parse_issued_at(intent.issued_at)
                except ValueError as exc:
                    raise Refusal("bad_request", str(exc)) from None
                skew = abs(self.clock() - issued.timestamp())
                if skew > self.max_skew_s:
                    raise Refusal("stale_request", f"issued_at is more than {self.max_skew_s} s from now")
                if intent.aud is not None and intent.aud != self.audience:
                    raise Refusal("audience_mismatch", f"aud must be this broker's issuer {self.audience}")
                if self.ledger.load(MintRequest, MintRequest.stream_for(ctx.wallet, intent.request_id)).version > 0:
                    raise Refusal("request_replayed", "request_id already used")
            except Refusal as refusal:
                self._check_bad_signature_limits(client, (wallet or intent.address).lower())
                raise refusal from None
            self._check_rate(ctx)  # only now: the wallet's key signed this request, for this broker, now
            await self._check_anchors_ready()
            return await self._admit_and_release(ctx, digest, audit_id=f"aud_{int(issued.timestamp())}_{digest[:16]}")

    async def mint_legacy(self, *, wallet: str, token_sha256: str, service: str) -> MintResult:
        """The legacy bearer path (seed-spec §B.3, only with BROKER_LEGACY_BEARER=true): the backend
        vouched for `wallet`; there is no per-call signature, so the request id is generated and the
        same grant check, ledger records and release path apply."""
        now = self.clock()
        request_id = f"legacy-{uuid.uuid4().hex}"
        intent = MintIntent(request_id=request_id,
                            issued_at=datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                            agent_id="legacy", service=service, scope_path="", address=wallet, signature="")
        ctx = _Ctx(omni_account=evm_omni_account(wallet), identity_type="legacy_bearer",
                   identity_value=token_sha256, session_jti="", intent=intent, wallet=wallet.lower())
        svc = self.access.service(service)
        if svc.namespaced:  # the config check makes this impossible; refuse rather than mint unscoped
            raise Refusal("not_enrolled", f"the legacy path mints services of scope none, not {svc.name!r}")
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
        if not isinstance(intent.agent_id, str) or not AGENT_ID.fullmatch(intent.agent_id):
            raise Refusal("invalid_agent_id", "intent.agent_id must be 1-64 characters of [A-Za-z0-9._:-]")
        svc = self.access.service(intent.service)  # 400 unknown_service: never reaches STS
        if svc.scope == "oidc":
            raise Refusal("bad_request", f"service {svc.name!r} issues OIDC tokens for AssumeRoleWithWebIdentity, "
                          "not AWS credentials from this broker")
        try:
            normalize_address(intent.address)  # 0x + 40 hex; mixed case must carry a valid EIP-55 checksum
        except ValueError as exc:
            raise Refusal("bad_request", f"auth.address: {exc}"[:300]) from None
        return MintIntent(request_id=intent.request_id, issued_at=intent.issued_at, agent_id=intent.agent_id,
                          service=svc.name, scope_path=self.access.scope(svc, intent.scope_path),
                          address=intent.address, signature=intent.signature, aud=intent.aud)

    @asynccontextmanager
    async def _recorded(self, ctx: _Ctx) -> AsyncIterator[None]:
        """Every refusal raised inside is recorded as exactly one `MintDenied`."""
        try:
            yield
        except (Withheld, Unreleased, Unrecorded):
            raise  # an outcome, not a denial: `MintWithheld` / `MintUnreleased` is (or will be) recorded
        except RateLimited as refusal:
            if refusal.recorded:  # the first of its window: one `MintDenied{rate_limited}`
                await self._deny(ctx, refusal)
            else:  # later ones are only counted (design §8)
                self.unrecorded.mint("rate_limited")
            raise
        except Refusal as refusal:
            if refusal.reason == "contended":
                raise  # lost ten races in a row: nothing was decided about this request; retry
            try:
                await self._deny(ctx, refusal)
            except LedgerUnavailable as exc:
                if refusal.reason != "ledger_low_space":
                    raise
                # the disk is (nearly) full: nothing was issued, so the refusal stands unrecorded
                log.error("could not record MintDenied{ledger_low_space} for %s: %s", ctx.intent.request_id, exc)
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
            raise RateLimited("too many mints for this account", decision)

    def _check_bad_signature_limits(self, client: str, wallet: str) -> None:
        """Count one failed signature against the client IP and the wallet (each check counts and
        decides atomically); beyond either limit this failed request is `rate_limited`. Called only
        for requests whose signature failed or was not valid for this request (stale, another
        audience, a spent request id): a validly signed fresh mint never reaches it."""
        refused: tuple[str, RateDecision] | None = None
        for limiter, key, what in ((self.bad_signature_ip_limiter, f"ip:{client}", "from this address"),
                                   (self.bad_signature_wallet_limiter, f"wallet:{wallet}", "for this wallet")):
            if limiter is None:
                continue
            decision = limiter.check(key)
            if not decision.allowed and (refused is None or decision.first_refusal):
                refused = (f"too many mint requests with a failed signature {what}", decision)
        if refused is not None:
            raise RateLimited(*refused)

    async def _check_anchors_ready(self) -> None:
        self.release.check_integrity()  # an open integrity alarm refuses before STS (design §8)
        # The port may answer from cached background probes or probe (bounded) itself: either
        # way it runs in a worker thread, never on the event loop.
        unready = await asyncio.to_thread(
            lambda: [name for name in self.release.required if not self.anchor_ready(name).ok])
        if unready:
            raise Refusal("anchor_unready", f"audit anchors {', '.join(unready)} are not ready; nothing was "
                          "released (see /readyz)")

    def _check_space(self) -> None:
        # A statvfs of the local ledger disk (cheap): refused before admission and STS, so no
        # credential is issued that a full disk would leave unrecordable.
        if self.low_space():
            raise Refusal("ledger_low_space", "the ledger's disk is low on free space; nothing was issued, "
                          "retry later")

    async def _keep_unrecorded(self, ctx: _Ctx, requested_seq: int, creds: IssuedCredentials,
                               exc: LedgerUnavailable) -> None:
        """The `MintAuthorized` append failed after STS issued `creds`: spill its key id and
        session name (never the secret), then refuse with a message that says what happened."""
        entry = SpillEntry(
            request_id=ctx.intent.request_id, wallet=ctx.wallet, requested_seq=requested_seq,
            sts_session_name=creds.session_name, role_arn=creds.role_arn, access_key_id=creds.access_key_id,
            expiration=creds.expiration or None, detail=f"MintAuthorized not recorded: {exc}"[:500])
        kept = await asyncio.to_thread(self.spill, entry)  # fsync: never on the event loop
        where = ("it will be recorded in the audit ledger (MintUnreleased) when the ledger recovers" if kept else
                 "the broker could not keep it for the ledger either; its key id is in the broker's CRITICAL log "
                 "for the operator")
        raise Unrecorded(f"the ledger could not record the mint: STS issued a credential (STS session "
                         f"{creds.session_name}) that was NOT released to you; {where}. Retry later with a fresh "
                         "request_id")

    async def _admit_and_release(self, ctx: _Ctx, digest: str, *, audit_id: str) -> MintResult:
        """Admission, STS, then the release path: shared by both entry points."""
        intent = ctx.intent
        self._check_space()
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
            grant_master_omni_account=grant.master_omni_account if grant else None,
        )
        stream = MintRequest.stream_for(ctx.wallet, intent.request_id)

        async def append() -> ChainRecord:
            try:
                [record] = await self.ledger.append_async(stream, 1, [authorized])
            except LedgerUnavailable as exc:
                await self._keep_unrecorded(ctx, requested_seq, creds, exc)
                raise  # unreachable: `_keep_unrecorded` always raises
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
        candidates: Sequence[GrantCandidate] = self.grants.for_daemon(ctx.wallet, intent.service)
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
                if refusal is None or refusal[0] in ("scope_not_granted", "agent_not_granted"):
                    refusal = (exc.reason, str(exc))
                continue
            if not agent_allowed(created, intent.agent_id):
                if refusal is None or refusal[0] == "scope_not_granted":
                    refusal = ("agent_not_granted", "the grant does not allow this agent_id")
                continue
            # ownership is re-checked at every mint: a root revoked after the grant refuses now
            try:
                self.access.check_owned(created.master_omni_account, self.access.service(intent.service),
                                        intent.scope_path)
            except Refusal as exc:
                raise MintRefused(exc.reason, exc.message, grant_id=created.grant_id) from None
            return agg, created
        if refusal is not None:
            raise Refusal(*refusal)
        if self.grants_required:
            raise Refusal("no_grant", "no active grant for this wallet and service")
        # a self-mint (BROKER_GRANTS_REQUIRED=false) stays inside the caller's own roots
        self.access.check_owned(ctx.omni_account, self.access.service(intent.service), intent.scope_path)
        return None, None
