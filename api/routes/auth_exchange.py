"""`POST /v1/auth/exchange` (seed-spec §B.6): legacy bearer → session JWT, only when
`BROKER_LEGACY_BEARER=true`."""

from __future__ import annotations

from litestar import Request, post
from litestar.datastructures import State
from litestar.openapi import ResponseSpec

from ..auth.bearer import bearer_token
from ..errors import ApiError
from ..schemas import ErrorBody, SessionResponse
from .openapi_hooks import RetryAfterOperation

_ERRORS = {
    400: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="The legacy bearer path is not enabled"),
    401: ResponseSpec(data_container=ErrorBody, generate_examples=False,
                      description="Missing bearer, or the backend rejected it"),
    429: ResponseSpec(data_container=ErrorBody, generate_examples=False,
                      description="Too many legacy bearer requests from this address (Retry-After)"),
    502: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Backend unreachable"),
    503: ResponseSpec(data_container=ErrorBody, generate_examples=False,
                      description="Anchors did not confirm the session in time"),
}


@post("/v1/auth/exchange", status_code=200, tags=["auth"], summary="Exchange a legacy bearer for a session JWT",
      responses=_ERRORS, operation_class=RetryAfterOperation)
async def auth_exchange(request: Request, state: State) -> SessionResponse:
    services = state.services
    token = bearer_token(request.headers)
    if services.legacy is None:
        raise ApiError("bad_request", "bad request: the legacy bearer path is not enabled (BROKER_LEGACY_BEARER=true)")
    session = await services.legacy.exchange(token, client=services.client_ip(request))
    return SessionResponse(
        session_jwt=session.token, session_jwt_kid=session.kid, expires_at=session.expires_at,
        omni_account=session.omni_account, wallet_address=session.wallet_address, identity_type="evm",
        identity_value=session.wallet_address, seq=session.seq, record_hash=session.record_hash,
        anchored=session.anchored,
    )
