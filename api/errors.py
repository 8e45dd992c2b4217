"""The one place where errors become HTTP responses.

Body: `{"error": kind, "message": text}` plus `"reason"` where a typed reason exists (design §4).
The use cases refuse with `ledger.services.refusals.Refusal(reason, message, retry_after)`;
`REFUSALS` below is the one table that maps each reason to its wire kind (and so its status) and
says whether the reason is shown. `ApiError` is raised only by routes (`api/routes/`) for what
is purely HTTP. Unexpected exceptions become 500 `internal` with no detail; a traceback never
reaches a response.
"""

from __future__ import annotations

import logging

from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException

from ledger.errors import AnchorUnavailable, ConcurrencyConflict, InvalidEventError, LedgerUnavailable
from ledger.services.refusals import Refusal
from ledger.services.signin_requests import SignInRefused

log = logging.getLogger("agentkeys.api")

KIND_STATUS = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "request_timeout": 408,
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
                405: "method_not_allowed", 408: "request_timeout", 409: "conflict", 410: "gone", 413: "payload_too_large",
                415: "unsupported_media_type", 429: "rate_limited"}


# reason -> (kind, reason shown on the wire). The status is KIND_STATUS[kind].
REFUSALS: dict[str, tuple[str, bool]] = {
    # malformed input: 400, no typed reason (the message says what is wrong)
    "bad_request": ("bad_request", False),
    "bad_address": ("bad_request", False),
    "grant_not_revocable": ("bad_request", False),  # not found, not yours, or revoked: one answer
    # 400 with a typed reason
    "invalid_scope": ("bad_request", True),
    "chain_id_not_allowed": ("bad_request", True),
    "stale_request": ("bad_request", True),
    "audience_mismatch": ("bad_request", True),
    "invalid_agent_id": ("bad_request", True),
    "unknown_service": ("bad_request", True),
    "signature_not_hex": ("bad_request", True),
    "signature_length": ("bad_request", True),
    "signature_v": ("bad_request", True),
    "signature_zero": ("bad_request", True),
    # 401: the caller did not prove who it is
    "unauthenticated": ("unauthorized", False),
    "signature_high_s": ("unauthorized", True),
    "signature_unrecoverable": ("unauthorized", True),
    "address_mismatch": ("unauthorized", True),
    "wallet_mismatch": ("unauthorized", True),
    "challenge_unknown": ("unauthorized", True),
    "challenge_consumed": ("unauthorized", True),
    "challenge_expired": ("unauthorized", True),
    "backend_rejected": ("unauthorized", True),
    # session JWT refusals (api/auth/session_jwt.py SessionTokenReason)
    "malformed": ("unauthorized", True),
    "alg_not_allowed": ("unauthorized", True),
    "unknown_kid": ("unauthorized", True),
    "bad_signature": ("unauthorized", True),
    "expired": ("unauthorized", True),
    "wrong_audience": ("unauthorized", True),
    "wrong_issuer": ("unauthorized", True),
    "claims_invalid": ("unauthorized", True),
    "session_revoked": ("unauthorized", True),
    # 403: who may do this, to whose resources
    "not_owner": ("forbidden", True),
    "not_operator": ("forbidden", True),
    "no_grant": ("forbidden", True),
    "grant_revoked": ("forbidden", True),
    "grant_expired": ("forbidden", True),
    "grant_exhausted": ("forbidden", True),
    "scope_not_granted": ("forbidden", True),
    "agent_not_granted": ("forbidden", True),
    "daemon_bound_elsewhere": ("forbidden", True),
    "scope_not_owned": ("forbidden", True),
    "not_enrolled": ("forbidden", True),
    # 404: absent and not-yours are one answer
    "not_found": ("not_found", False),
    "case_not_found": ("not_found", True),
    # 409
    "wallet_role_conflict": ("conflict", True),
    "request_replayed": ("conflict", True),
    "case_closed": ("conflict", True),
    # 429 (with Retry-After)
    "rate_limited": ("rate_limited", True),
    "challenges_per_ip": ("rate_limited", True),
    "failed_verifies_per_ip": ("rate_limited", True),
    "legacy_per_ip": ("rate_limited", True),
    # 5xx
    "anchored_batch_mismatch": ("internal", False),
    "sts_error": ("sts_error", False),
    "kill_switch_failed": ("sts_error", True),
    "backend_unreachable": ("backend_unreachable", True),
    "anchor_unready": ("anchor_unavailable", True),
    "anchor_deadline": ("anchor_unavailable", True),
    "contended": ("unavailable", True),
    "integrity_alarm": ("unavailable", True),
    "anchor_mismatch": ("anchor_unavailable", True),
    "ledger_unavailable": ("unavailable", True),
    "ledger_low_space": ("unavailable", True),
    # email / OAuth2 sign-in (ledger/services/email_link.py, oauth2.py, signin_requests.py)
    "malformed_email": ("bad_request", True),
    "missing_parameter": ("bad_request", True),
    "unknown_provider": ("bad_request", True),
    "unknown_request": ("bad_request", True),
    "method_disabled": ("bad_request", True),
    "poll_token_required": ("unauthorized", True),
    "poll_token_invalid": ("unauthorized", True),
    "request_id_mismatch": ("unauthorized", True),
    "state_invalid": ("unauthorized", True),
    "state_expired": ("unauthorized", True),
    "nonce_mismatch": ("unauthorized", True),
    "id_token_invalid": ("unauthorized", True),
    "id_token_expired": ("unauthorized", True),
    "id_token_audience": ("unauthorized", True),
    "id_token_issuer": ("unauthorized", True),
    "provider_error": ("unauthorized", True),
    "session_delivered": ("gone", True),
    "token_exchange_failed": ("backend_unreachable", True),
    "provider_unreachable": ("backend_unreachable", True),
    "delivery_failed": ("backend_unreachable", True),
}

# The message of a refusal is prefixed with its kind where the seed's messages are.
_PREFIX = {"bad_request": "bad request: ", "unauthorized": "unauthorized: ", "forbidden": "forbidden: ",
           "not_found": "not found: ", "conflict": "conflict: ", "rate_limited": "rate limited: ",
           "sts_error": "sts error: ", "backend_unreachable": "backend unreachable: "}


def refusal_kind(refusal: Refusal) -> str:
    entry = REFUSALS.get(refusal.reason)
    return entry[0] if entry else "internal"


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


def _refusal(_: Request, exc: Refusal) -> Response:
    entry = REFUSALS.get(exc.reason)
    if entry is None:  # a reason without a row is a defect of this table (tests/unit/api/test_refusals.py)
        log.error("refusal reason %r has no entry in api.errors.REFUSALS", exc.reason)
        return error_response("internal", "internal error")
    kind, shown = entry
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return error_response(kind, _PREFIX.get(kind, "") + exc.message, reason=exc.reason if shown else None,
                          headers=headers)


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


# --- email / OAuth2 sign-in refusals (issue 16): kinds from REFUSALS, plus their headers -----



def _signin_refused(_: Request, exc: SignInRefused) -> Response:
    kind = refusal_kind(exc) if exc.reason in REFUSALS else "bad_request"
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
    if kind == "unauthorized" and exc.reason.startswith("poll_token"):
        headers["WWW-Authenticate"] = 'Bearer realm="agentkeys-poll"'
    message = exc.message if exc.message.split(":", 1)[0] in (kind.replace("_", " "), "rate limited", "expired") \
        else f"{kind.replace('_', ' ')}: {exc.message}"
    return error_response(kind, message, reason=exc.reason, headers=headers)


EXCEPTION_HANDLERS = {
    SignInRefused: _signin_refused,
    ApiError: _api_error,
    Refusal: _refusal,
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
