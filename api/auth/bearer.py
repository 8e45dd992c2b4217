"""Bearer extraction and session verification for authenticated routes (seed-spec §B.0).

Refusals are `Refusal`s (mapped to 401 by `api/errors.py`): `unauthenticated` without a bearer,
the `SessionTokenReason` of a refused session JWT otherwise."""

from __future__ import annotations

from typing import Mapping

from ledger.services.caller import Caller
from ledger.services.refusals import Refusal

from .session_jwt import SessionClaims, SessionTokenError, verify_session_token

PREFIX = "Bearer "


def bearer_token(headers: Mapping[str, str]) -> str:
    """The token after the exact, case-sensitive `Bearer ` prefix; 401 otherwise."""
    value = headers.get("authorization")
    if not value or not value.startswith(PREFIX) or not value[len(PREFIX):].strip():
        raise Refusal("unauthenticated", "missing Authorization header")
    return value[len(PREFIX):].strip()


def verify_session(token: str, keyring, issuer: str) -> SessionClaims:  # noqa: ANN001
    try:
        return verify_session_token(token, keyring, issuer)
    except SessionTokenError as exc:
        raise Refusal(exc.reason, str(exc)) from None


def caller_of(claims: SessionClaims) -> Caller:
    """The identity a verified session proves, as the use cases take it."""
    a = claims.agentkeys
    return Caller(omni_account=claims.omni_account, wallet_address=a.wallet_address, identity_type=a.identity_type,
                  identity_value=a.identity_value, session_jti=claims.jti)
