"""Email magic-link sign-in (method `email_link`, seed-spec §B.7, §D.2–D.4), HTTP-free.

request: per-IP then per-address rate limits; a 256-bit token that only ever travels in the link's
         URL fragment; `EmailLinkRequested` (the address only as HMAC, the request id derived from
         the token, the poll token only as SHA-256); then the sender hands the link over.
verify:  the token finds its request; the first answer consumes it (`AuthSucceeded` at version 2;
         two racing verifies cannot both win); a wrong `request_id` burns it (`AuthFailed`).
The session is delivered only to the poller (`ledger/services/signin_requests.py`), never to the browser.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from ..app import Ledger
from ..events import AuthFailed, AuthSucceeded, EmailLinkRequested
from ..identity import omni_account
from ..ports import Clock, EmailDeliveryError, EmailMessage, EmailSender, Limiter
from ..signin_request import SignInNotPending, SignInRequest
from .signin_requests import SignInRefused, append_outcome, sha256_hex

METHOD: Final = "email_link"
LINK_TTL_S = 600
TOKEN_BYTES = 32  # 256-bit token, 43 base64url characters
REQUEST_ID_DOMAIN = b"agentkeys.email_link.v1\x00"
SUBJECT = "Your AgentKeys sign-in link"
MAX_EMAIL_LENGTH = 254
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")


def normalize_email(raw: str) -> str:
    """Trimmed and lowercased (no plus-address folding, as the seed); one `@` with text on both
    sides, no whitespace or control characters, at most 254 characters."""
    email = raw.strip().lower() if isinstance(raw, str) else ""
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain or "@" in local or len(email) > MAX_EMAIL_LENGTH \
            or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in email):
        raise SignInRefused("malformed_email", "malformed email: expected one address like name@example.com")
    return email


def email_hmac(key: bytes, email: str) -> str:
    return hmac.new(key, email.encode("utf-8"), hashlib.sha256).hexdigest()


def request_id_for_token(token: str) -> str:
    return "eml-" + hashlib.sha256(REQUEST_ID_DOMAIN + token.encode("ascii")).hexdigest()[:24]


@dataclass(frozen=True)
class LinkRequested:
    request_id: str
    poll_token: str
    expires_in_seconds: int


class EmailLinkService:
    def __init__(self, *, ledger: Ledger, sender: EmailSender, hmac_key: bytes, link_base: str,
                 ip_limiter: Limiter, email_limiter: Limiter, clock: Clock,
                 wait_projection: Callable[[int], Awaitable[Any]] | None = None) -> None:
        self.ledger = ledger
        self.sender = sender
        self._key = hmac_key
        self.link_base = link_base.rstrip("/")
        self.ip_limiter = ip_limiter
        self.email_limiter = email_limiter
        self.clock = clock
        self.wait_projection = wait_projection

    async def request(self, raw_email: str, client_ip: str) -> LinkRequested:
        email = normalize_email(raw_email)
        # Per IP first: a client over its budget cannot burn a victim's per-address budget.
        decision = self.ip_limiter.check(client_ip)
        if not decision.allowed:
            raise SignInRefused("rate_limited", "rate limited: per-IP rate limit exceeded; retry in "
                                f"{decision.retry_after_seconds}s", retry_after=decision.retry_after_seconds)
        mac = email_hmac(self._key, email)
        decision = self.email_limiter.check(mac)
        if not decision.allowed:
            raise SignInRefused("rate_limited", "rate limited: per-email rate limit exceeded; retry in "
                                f"{decision.retry_after_seconds}s", retry_after=decision.retry_after_seconds)
        token = secrets.token_urlsafe(TOKEN_BYTES)
        poll_token = secrets.token_urlsafe(32)
        request_id = request_id_for_token(token)
        expires_at = int(self.clock()) + LINK_TTL_S
        stream = SignInRequest.stream_for(request_id)
        records = await self.ledger.append_async(stream, 0, [EmailLinkRequested(
            request_id=request_id, email_hmac=mac, expires_at=expires_at, poll_token_sha256=sha256_hex(poll_token))])
        link = f"{self.link_base}/auth/email/landing#t={token}"
        try:
            await asyncio.to_thread(self.sender.send, _message(email, link))
        except EmailDeliveryError as exc:
            await self.ledger.append_async(stream, records[-1].version, [AuthFailed(
                method=METHOD, request_id=request_id, reason="delivery_failed", detail=str(exc)[:500])])
            raise SignInRefused("delivery_failed", f"the sign-in email could not be sent: {exc}") from None
        if self.wait_projection is not None:
            await self.wait_projection(records[-1].seq)
        return LinkRequested(request_id=request_id, poll_token=poll_token, expires_in_seconds=LINK_TTL_S)

    async def verify(self, token: str, request_id: str | None = None) -> None:
        if not isinstance(token, str) or not _TOKEN.match(token):
            raise SignInRefused("challenge_unknown", "magic link unknown or already consumed")
        own_id = request_id_for_token(token)
        request = self.ledger.load(SignInRequest, SignInRequest.stream_for(own_id))
        now = int(self.clock())
        try:
            started = request.check_pending(now, METHOD)
        except SignInNotPending as exc:
            if exc.reason == "challenge_expired":
                # Expiry consumes it too (recorded once), so the request reads as failed.
                await append_outcome(self.ledger, request, AuthFailed(
                    method=METHOD, request_id=own_id, reason="challenge_expired",
                    detail="magic link expired (>10min after issued_at)"))
                raise SignInRefused("challenge_expired", "magic link expired (>10min after issued_at)") from None
            raise SignInRefused(exc.reason, "magic link unknown or already consumed") from None
        assert isinstance(started, EmailLinkRequested)  # noqa: S101  type narrowing of an invariant established just above
        if request_id is not None and not hmac.compare_digest(request_id.encode(), own_id.encode()):
            await append_outcome(self.ledger, request, AuthFailed(
                method=METHOD, request_id=own_id, reason="request_id_mismatch",
                detail="request_id mismatch: the link belongs to another request (the link is now used up)"))
            raise SignInRefused("request_id_mismatch", "request_id mismatch: the link belongs to another request")
        omni = omni_account("email", started.email_hmac)
        won = await append_outcome(self.ledger, request, AuthSucceeded(
            method=METHOD, request_id=own_id, identity_type="email", identity_value=started.email_hmac,
            omni_account=omni, wallet_address=""))
        if not won:
            raise SignInRefused("challenge_consumed", "magic link unknown or already consumed")


def _message(to: str, link: str) -> EmailMessage:
    text = (f"Sign in to AgentKeys by opening this link within 10 minutes:\n\n{link}\n\n"
            "Then return to your terminal. If you did not ask for this, ignore this email.\n")
    html = ("<!doctype html><html><body><p>Sign in to AgentKeys by opening this link within 10 minutes:</p>"
            f'<p><a href="{link}">Sign in to AgentKeys</a></p><p>Then return to your terminal. If you did not '
            "ask for this, ignore this email.</p></body></html>")
    return EmailMessage(to=to, subject=SUBJECT, text=text, html=html)
