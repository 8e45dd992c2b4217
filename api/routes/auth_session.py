"""`POST /v1/auth/session/revoke` (see api/auth/session_revoke.py)."""

from __future__ import annotations

import msgspec
from litestar import Request, post
from litestar.datastructures import State
from litestar.openapi import ResponseSpec

from ..auth import session_revoke
from ..auth.bearer import bearer_token, verify_session
from ..schemas import ErrorBody


class SessionRevokeResponse(msgspec.Struct):
    revoked: int


_ERRORS = {
    400: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="The body is neither empty nor {\"all\": "
                                                                                     "bool}"),
    401: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Missing, invalid or already revoked "
                                                                                     "session JWT"),
    503: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Recorded but not enforced yet; retry"),
}


@post("/v1/auth/session/revoke", status_code=200, tags=["auth"], summary="Revoke this session, or every session of its account",
      responses=_ERRORS)
async def session_revoke_route(request: Request, state: State) -> SessionRevokeResponse:
    """Body: empty (this session) or `{"all": true}` (every session of the account issued before now,
    this one included). Answers `{"revoked": n}` once every session check refuses them."""
    services = state.services
    claims = verify_session(bearer_token(request.headers), services.session_keys, services.config.issuer,
                            services.projections)
    revoke_all = session_revoke.parse_body(await request.body())
    n = await session_revoke.revoke(services.ledger, services.projections, claims, revoke_all=revoke_all)
    return SessionRevokeResponse(revoked=n)
