"""The one place where errors become HTTP responses.

Body: `{"error": kind, "message": text}` plus `"reason"` where a typed reason exists (design §4).
Unexpected exceptions become 500 `internal` with no detail; a traceback never reaches a response.
"""

from __future__ import annotations

import logging

from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException

from ledger.errors import AnchorUnavailable, ConcurrencyConflict, InvalidEventError, LedgerUnavailable
from ledger.services.signin_requests import SignInRefused

log = logging.getLogger("agentkeys.api")

KIND_STATUS = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "gone": 410,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "rate_limited": 429,
    "internal": 500,
    "sts_error": 502,
    "backend_unreachable": 502,
    "anchor_unavailable": 503,
    "unavailable": 503,
}

_STATUS_KIND = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 409: "conflict", 410: "gone", 413: "payload_too_large",
                415: "unsupported_media_type", 429: "rate_limited"}


class ApiError(Exception):
    """An error with a wire kind, message and optional typed reason."""

    def __init__(self, kind: str, message: str, *, reason: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.reason = reason
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return KIND_STATUS[self.kind]


def error_response(kind: str, message: str, *, reason: str | None = None, status: int | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    body: dict[str, str] = {"error": kind, "message": message}
    if reason:
        body["reason"] = reason
    return Response(content=body, status_code=status or KIND_STATUS[kind], headers=headers or {},
                    media_type="application/json")


def _api_error(_: Request, exc: ApiError) -> Response:
    return error_response(exc.kind, exc.message, reason=exc.reason, headers=exc.headers)


def _http_exception(_: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    kind = _STATUS_KIND.get(status, "internal" if status >= 500 else "bad_request")
    if status >= 500:
        return error_response("internal", "internal error", status=500)
    detail = exc.detail if isinstance(exc.detail, str) else "bad request"
    if isinstance(exc, ValidationException) and exc.extra:
        # msgspec's messages name the field and the expected type, never the value sent.
        parts = []
        for e in exc.extra if isinstance(exc.extra, list) else []:
            if isinstance(e, dict):
                msg = str(e.get("message", "invalid"))[:200]
                key = e.get("key")
                parts.append(f"{key}: {msg}" if key and key != "data" else msg)
        if parts:
            detail = "bad request: " + "; ".join(parts)
    headers = dict(getattr(exc, "headers", None) or {})
    return error_response(kind, detail, status=status, headers=headers)


def _ledger_unavailable(_: Request, exc: LedgerUnavailable) -> Response:
    log.error("ledger unavailable: %s", exc)
    return error_response("unavailable", "ledger unavailable; nothing was recorded", status=503)


def _anchor_unavailable(_: Request, exc: AnchorUnavailable) -> Response:
    log.error("anchor unavailable: %s", exc)
    return error_response("anchor_unavailable", "audit anchor unavailable; nothing was released")


def _conflict(_: Request, exc: ConcurrencyConflict) -> Response:
    return error_response("conflict", "concurrent update; retry")


def _invalid_event(_: Request, exc: InvalidEventError) -> Response:
    return error_response("bad_request", str(exc))


def _undecodable(_: Request, exc: UnicodeDecodeError) -> Response:
    return error_response("bad_request", "bad request: the body is not valid UTF-8 JSON")


def _too_deep(_: Request, exc: RecursionError) -> Response:
    return error_response("bad_request", "bad request: the body is nested too deeply")


def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response("internal", "internal error")


# --- refusals of the email / OAuth2 sign-in use cases (issue 16) -----------------------------

SIGNIN_REFUSAL_KINDS = {
    "malformed_email": "bad_request",
    "missing_parameter": "bad_request",
    "unknown_provider": "bad_request",
    "unknown_request": "bad_request",
    "method_disabled": "bad_request",
    "poll_token_required": "unauthorized",
    "poll_token_invalid": "unauthorized",
    "challenge_unknown": "unauthorized",
    "challenge_consumed": "unauthorized",
    "challenge_expired": "unauthorized",
    "request_id_mismatch": "unauthorized",
    "state_invalid": "unauthorized",
    "state_expired": "unauthorized",
    "nonce_mismatch": "unauthorized",
    "id_token_invalid": "unauthorized",
    "id_token_expired": "unauthorized",
    "id_token_audience": "unauthorized",
    "id_token_issuer": "unauthorized",
    "provider_error": "unauthorized",
    "session_delivered": "gone",
    "rate_limited": "rate_limited",
    "token_exchange_failed": "backend_unreachable",
    "provider_unreachable": "backend_unreachable",
    "delivery_failed": "backend_unreachable",
    "anchor_deadline": "anchor_unavailable",
}


def _signin_refused(_: Request, exc: SignInRefused) -> Response:
    kind = SIGNIN_REFUSAL_KINDS.get(exc.reason, "bad_request")
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
    if kind == "unauthorized" and exc.reason.startswith("poll_token"):
        headers["WWW-Authenticate"] = 'Bearer realm="agentkeys-poll"'
    message = exc.message if exc.message.split(":", 1)[0] in (kind.replace("_", " "), "rate limited", "expired") \
        else f"{kind.replace('_', ' ')}: {exc.message}"
    return error_response(kind, message, reason=exc.reason, headers=headers)


EXCEPTION_HANDLERS = {
    SignInRefused: _signin_refused,
    ApiError: _api_error,
    NotFoundException: _http_exception,
    HTTPException: _http_exception,
    LedgerUnavailable: _ledger_unavailable,
    AnchorUnavailable: _anchor_unavailable,
    ConcurrencyConflict: _conflict,
    InvalidEventError: _invalid_event,
    UnicodeDecodeError: _undecodable,
    RecursionError: _too_deep,
    Exception: _unexpected,
}
