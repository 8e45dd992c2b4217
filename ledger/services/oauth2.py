"""Google sign-in by OAuth2 authorization code + PKCE (method `oauth2_google`, seed-spec §B.8,
§D.5), HTTP-free.

start:    per-IP rate limit; `OAuth2FlowStarted`; the authorization URL carries the PKCE S256
          challenge, the OIDC nonce and `state` = base64url(JSON {v, rid, n, ts}) "." base64url(
          HMAC-SHA256(state key, first part)). The PKCE verifier and the nonce are HMACs of the
          request id under the state key: nothing secret is stored, and any replica with the key
          can finish the flow.
callback: the state is checked (constant time, version, TTL); the flow is consumed by its first
          outcome (`AuthSucceeded`/`AuthFailed` at version 2), so a code works once; the provider
          redeems the code and its id_token is verified (`api/oauth2_google.py`); identity = `sub`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from ..app import Ledger
from ..events import AuthFailed, AuthSucceeded, OAuth2FlowStarted
from ..identity import omni_account
from ..ports import Clock, IdentityProvider, IdentityProviderError, Limiter
from ..signin_request import SignInNotPending, SignInRequest
from .signin_requests import SignInRefused, append_outcome, sha256_hex

METHOD: Final = "oauth2_google"
FLOW_TTL_S = 600
STATE_VERSION = 1
STATE_FUTURE_SKEW_S = 60
MAX_STATE_LENGTH = 1024


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def pkce_challenge(verifier: str) -> str:
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


@dataclass(frozen=True)
class FlowStarted:
    request_id: str
    authorization_url: str
    poll_token: str
    expires_in_seconds: int
    provider: str


@dataclass(frozen=True)
class CallbackResult:
    verified: bool
    cancelled_error: str | None = None


class StateCodec:
    """The signed `state` parameter and the per-flow secrets derived from the same key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, label: bytes, data: bytes) -> bytes:
        return hmac.new(self._key, label + b"\x00" + data, hashlib.sha256).digest()

    def verifier(self, request_id: str) -> str:
        return b64url(self._mac(b"pkce", request_id.encode()))

    def nonce(self, request_id: str) -> str:
        return b64url(self._mac(b"nonce", request_id.encode())[:16])

    def encode(self, request_id: str, now: int) -> str:
        payload = b64url(json.dumps({"v": STATE_VERSION, "rid": request_id, "n": self.nonce(request_id), "ts": now},
                                    separators=(",", ":")).encode())
        return payload + "." + b64url(self._mac(b"state", payload.encode("ascii")))

    def decode(self, state: str, now: int) -> tuple[str, str]:
        """(request id, nonce) of a state this broker signed within the TTL, else `SignInRefused`."""
        bad = SignInRefused("state_invalid", "state: signature invalid or malformed")
        if not isinstance(state, str) or len(state) > MAX_STATE_LENGTH or "." not in state:
            raise bad
        payload, _, sig = state.partition(".")
        try:
            expected = b64url(self._mac(b"state", payload.encode("ascii")))
        except UnicodeEncodeError:
            raise bad from None
        # Compare the canonical encodings: base64url's last character carries unused bits, and a
        # decoder would accept several spellings of one signature.
        if not hmac.compare_digest(sig.encode("utf-8", "replace"), expected.encode("ascii")):
            raise bad
        try:
            data = json.loads(_b64url_decode(payload))
            version, rid, nonce, ts = data["v"], data["rid"], data["n"], data["ts"]
        except (ValueError, KeyError, TypeError):
            raise bad from None
        if version != STATE_VERSION or not isinstance(rid, str) or not isinstance(nonce, str) \
                or not isinstance(ts, int) or isinstance(ts, bool):
            raise bad
        if now - ts > FLOW_TTL_S or ts - now > STATE_FUTURE_SKEW_S:
            raise SignInRefused("state_expired", "expired: state: ttl expired")
        return rid, nonce


class OAuth2Service:
    def __init__(self, *, ledger: Ledger, provider: IdentityProvider, state_key: bytes, ip_limiter: Limiter,
                 clock: Clock, wait_projection: Callable[[int], Awaitable[Any]] | None = None) -> None:
        self.ledger = ledger
        self.provider = provider
        self.codec = StateCodec(state_key)
        self.ip_limiter = ip_limiter
        self.clock = clock
        self.wait_projection = wait_projection
        self._in_flight: set[str] = set()  # flows whose code is being redeemed in this process

    async def start(self, provider: str, client_ip: str) -> FlowStarted:
        if provider != self.provider.name:
            raise SignInRefused("unknown_provider", f"unknown or disabled OAuth2 provider {provider[:40]!r} "
                                f"(enabled: {self.provider.name})")
        decision = self.ip_limiter.check(client_ip)
        if not decision.allowed:
            raise SignInRefused("rate_limited", "rate limited: per-IP OAuth2 start limit exceeded; retry in "
                                f"{decision.retry_after_seconds}s", retry_after=decision.retry_after_seconds)
        now = int(self.clock())
        request_id = "oa2-" + b64url(secrets.token_bytes(12))
        poll_token = secrets.token_urlsafe(32)
        try:
            url = await asyncio.to_thread(self.provider.authorization_url, state=self.codec.encode(request_id, now),
                                          code_challenge=pkce_challenge(self.codec.verifier(request_id)),
                                          nonce=self.codec.nonce(request_id))
        except IdentityProviderError as exc:
            raise SignInRefused("provider_unreachable", exc.message) from None
        records = await self.ledger.append_async(SignInRequest.stream_for(request_id), 0, [OAuth2FlowStarted(
            request_id=request_id, provider=self.provider.name, expires_at=now + FLOW_TTL_S,
            poll_token_sha256=sha256_hex(poll_token))])
        if self.wait_projection is not None:
            await self.wait_projection(records[-1].seq)
        return FlowStarted(request_id=request_id, authorization_url=url, poll_token=poll_token,
                           expires_in_seconds=FLOW_TTL_S, provider=self.provider.name)

    async def callback(self, *, code: str | None, state: str | None, error: str | None,
                       error_description: str | None) -> CallbackResult:
        now = int(self.clock())
        if error:
            if not state:
                raise SignInRefused("missing_parameter", "bad request: missing state")
            rid, _ = self.codec.decode(state, now)
            request = self.ledger.load(SignInRequest, SignInRequest.stream_for(rid))
            detail = f"{error}: {error_description}" if error_description else error
            try:
                request.check_pending(now, METHOD)
            except SignInNotPending:
                return CallbackResult(verified=False, cancelled_error=error)
            await append_outcome(self.ledger, request, AuthFailed(method=METHOD, request_id=rid,
                                                                  reason="provider_error", detail=detail[:500]))
            return CallbackResult(verified=False, cancelled_error=error)
        if not code or not state:
            raise SignInRefused("missing_parameter", "bad request: missing code or state")
        rid, state_nonce = self.codec.decode(state, now)
        request = self.ledger.load(SignInRequest, SignInRequest.stream_for(rid))
        try:
            request.check_pending(now, METHOD)
        except SignInNotPending as exc:
            if exc.reason == "challenge_expired":
                await append_outcome(self.ledger, request, AuthFailed(
                    method=METHOD, request_id=rid, reason="challenge_expired", detail="expired: oauth2 flow expired"))
                raise SignInRefused("challenge_expired", "expired: oauth2 flow expired") from None
            raise SignInRefused(exc.reason, "oauth2 pending row not found or already consumed") from None
        nonce = self.codec.nonce(rid)
        if not hmac.compare_digest(state_nonce.encode(), nonce.encode()):
            await self._fail(request, rid, "nonce_mismatch", "state nonce does not match the flow")
            raise SignInRefused("nonce_mismatch", "state nonce does not match the flow")
        if rid in self._in_flight:
            raise SignInRefused("challenge_consumed", "oauth2 pending row not found or already consumed")
        self._in_flight.add(rid)
        try:
            try:
                identity = await asyncio.to_thread(self.provider.redeem, code=code,
                                                   code_verifier=self.codec.verifier(rid), nonce=nonce)
            except IdentityProviderError as exc:
                await self._fail(request, rid, exc.reason, exc.message)
                reason = exc.reason if not exc.upstream else "token_exchange_failed"
                raise SignInRefused(reason, exc.message) from None
            omni = omni_account("oauth2_google", identity.subject)
            won = await append_outcome(self.ledger, request, AuthSucceeded(
                method=METHOD, request_id=rid, identity_type="oauth2_google", identity_value=identity.subject,
                omni_account=omni, wallet_address=""))
        finally:
            self._in_flight.discard(rid)
        if not won:
            raise SignInRefused("challenge_consumed", "oauth2 pending row not found or already consumed")
        return CallbackResult(verified=True)

    async def _fail(self, request: SignInRequest, rid: str, reason: str, detail: str) -> None:
        await append_outcome(self.ledger, request, AuthFailed(method=METHOD, request_id=rid, reason=reason,  # type: ignore[arg-type]  # reason is an AuthFailureReason from the provider port
                                                              detail=detail[:500]))
