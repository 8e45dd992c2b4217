"""Bearer extraction and session verification for authenticated routes (seed-spec §B.0).

`verify_session` is the one session check: a valid signature and claims (api/auth/session_jwt.py),
and not revoked (`POST /v1/auth/session/revoke`, the `sessions` read model). Every route that takes
a session calls it with the projections holding that read model, so no route can forget revocations.
Refusals are `Refusal`s (mapped to 401 by `api/errors.py`): `unauthenticated` without a bearer, the
`SessionTokenReason` of a refused session JWT, or `session_revoked`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import Engine

from ledger.services.caller import Caller
from ledger.services.refusals import Refusal
from projections.sessions import session_revoked

from .session_jwt import SessionClaims, SessionTokenError, verify_session_token

PREFIX = "Bearer "


def bearer_token(headers: Mapping[str, str]) -> str:
    """The token after the exact, case-sensitive `Bearer ` prefix; 401 otherwise."""
    value = headers.get("authorization")
    if not value or not value.startswith(PREFIX) or not value[len(PREFIX):].strip():
        raise Refusal("unauthenticated", "missing Authorization header")
    return value[len(PREFIX):].strip()


def verify_session(token: str, keyring, issuer: str, sessions: Any) -> SessionClaims:  # noqa: ANN001
    """The session's claims, or 401: a bad token (its typed reason) or a revoked session
    (`session_revoked`). `sessions`: the `ProjectionRunner` (or its engine) with the `sessions`
    read model."""
    try:
        claims = verify_session_token(token, keyring, issuer)
    except SessionTokenError as exc:
        raise Refusal(exc.reason, str(exc)) from None
    engine: Engine = getattr(sessions, "engine", sessions)
    if session_revoked(engine, claims.jti):
        raise Refusal("session_revoked", "session jwt: session_revoked: this session was revoked; sign in again")
    return claims


def caller_of(claims: SessionClaims) -> Caller:
    """The identity a verified session proves, as the use cases take it."""
    a = claims.agentkeys
    return Caller(omni_account=claims.omni_account, wallet_address=a.wallet_address, identity_type=a.identity_type,
                  identity_value=a.identity_value, session_jti=claims.jti)
