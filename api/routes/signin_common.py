"""What the email and OAuth2 sign-in routes share: the poll response, bearer extraction, the
security headers of the pages the browser sees."""

from __future__ import annotations

import html

import msgspec
from litestar import Request

from ledger.services.signin_requests import PollResult, SignInRefused

PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; connect-src 'self'; "
                               "style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
}
HTML_MEDIA_TYPE = "text/html; charset=utf-8"


class StatusResponse(msgspec.Struct, omit_defaults=True):
    """`pending`, `failed` (with `reason`) or, once, `verified` with the session."""

    status: str
    reason: str | None = None
    session_jwt: str | None = None
    session_jwt_kid: str | None = None
    expires_at: int | None = None
    omni_account: str | None = None
    wallet_address: str | None = None
    identity_type: str | None = None
    identity_value: str | None = None
    seq: int | None = None
    record_hash: str | None = None
    anchored: list[str] | None = None


def poll_token(request: Request) -> str | None:
    value = request.headers.get("authorization")
    if value is None or not value.startswith("Bearer "):
        return None
    token = value[len("Bearer "):].strip()
    return token or None


def status_response(result: PollResult) -> StatusResponse:
    s = result.session
    if s is None:
        return StatusResponse(status=result.status, reason=result.reason)
    return StatusResponse(status="verified", session_jwt=s.token, session_jwt_kid=s.kid, expires_at=s.expires_at,
                          omni_account=s.omni_account, wallet_address="", identity_type=s.identity_type,
                          identity_value=s.identity_value, seq=s.seq, record_hash=s.record_hash, anchored=s.anchored)


def require(service: object | None, method: str) -> None:
    if service is None:
        raise SignInRefused("method_disabled", f"{method} auth method is not enabled "
                            f"(set BROKER_AUTH_METHODS=...,{method})")


def message_page(title: str, message: str) -> str:
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"referrer\" content=\"no-referrer\">"
            f"<title>{html.escape(title)}</title></head>\n<body><h1>AgentKeys</h1><p>{html.escape(message)}</p>"
            "</body></html>\n")
