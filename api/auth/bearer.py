"""Bearer extraction and session verification for authenticated routes (seed-spec §B.0)."""

from __future__ import annotations

from typing import Mapping

from ..errors import ApiError
from .session_jwt import SessionClaims, SessionTokenError, verify_session_token

PREFIX = "Bearer "


def bearer_token(headers: Mapping[str, str]) -> str:
    """The token after the exact, case-sensitive `Bearer ` prefix; 401 otherwise."""
    value = headers.get("authorization")
    if not value or not value.startswith(PREFIX) or not value[len(PREFIX):].strip():
        raise ApiError("unauthorized", "unauthorized: missing Authorization header")
    return value[len(PREFIX):].strip()


def verify_session(token: str, keyring, issuer: str) -> SessionClaims:  # noqa: ANN001
    try:
        return verify_session_token(token, keyring, issuer)
    except SessionTokenError as exc:
        raise ApiError("unauthorized", f"unauthorized: {exc}", reason=exc.reason) from None
