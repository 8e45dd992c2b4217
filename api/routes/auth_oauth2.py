"""Google sign-in (seed-spec §B.8): `POST /v1/auth/oauth2/start`, the provider's redirect target
`GET /auth/oauth2/callback` and `GET /v1/auth/oauth2/status/{request_id}`. The use case is
`ledger/services/oauth2.py`; the provider adapter `api/oauth2_google.py`."""

from __future__ import annotations

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody, Parameter

from ..schemas import ErrorBody
from .openapi_hooks import RetryAfterOperation
from .signin_common import HTML_MEDIA_TYPE, PAGE_HEADERS, StatusResponse, message_page, poll_token, require, status_response

METHOD = "oauth2_google"
TITLE = "AgentKeys \u2014 OAuth2"


class OAuth2StartBody(msgspec.Struct):
    provider: str = "google"
    source_ip: str | None = None  # accepted for seed compatibility and ignored (docs/compat.md)


class OAuth2StartResponse(msgspec.Struct):
    request_id: str
    authorization_url: str
    poll_url: str
    poll_token: str
    provider: str
    expires_in_seconds: int


def _err(description: str) -> ResponseSpec:
    return ResponseSpec(data_container=ErrorBody, generate_examples=False, description=description)


@post("/v1/auth/oauth2/start", status_code=200, tags=["auth"], summary="Start a Google sign-in",
      operation_class=RetryAfterOperation,
      responses={400: _err("Unknown provider, or oauth2_google not enabled"), 413: _err("Body too large"),
                 429: _err("Rate limited per client IP"),
                 502: _err("The provider's discovery document is unavailable")})
async def oauth2_start(data: JSONBody[OAuth2StartBody], request: Request, state: State) -> OAuth2StartResponse:
    """Returns the authorization URL to open in a browser and the `poll_token` for the status poll."""
    services = state.services
    require(services.oauth2, METHOD)
    flow = await services.oauth2.start(data.provider, services.client_ip(request))
    return OAuth2StartResponse(request_id=flow.request_id, authorization_url=flow.authorization_url,
                               poll_url=f"/v1/auth/oauth2/status/{flow.request_id}", poll_token=flow.poll_token,
                               provider=flow.provider, expires_in_seconds=flow.expires_in_seconds)


@get("/auth/oauth2/callback", tags=["auth"], summary="OAuth2 redirect target (HTML)", media_type=HTML_MEDIA_TYPE,
     responses={400: _err("Missing code or state"), 401: _err("State invalid/expired, flow used, id_token refused"),
                502: _err("Token endpoint failed")})
async def oauth2_callback(
    request: Request,
    code: str | None = None,
    oauth_state: str | None = Parameter(query="state", default=None),
    error: str | None = None,
    error_description: str | None = None,
) -> Response[str]:
    services = request.app.state.services
    require(services.oauth2, METHOD)
    result = await services.oauth2.callback(code=code, state=oauth_state, error=error,
                                            error_description=error_description)
    if result.verified:
        text = "Verified \u2014 return to your terminal."
    else:
        text = f"Sign-in cancelled: {result.cancelled_error}. You may close this tab and try again."
    return Response(message_page(TITLE, text), headers=PAGE_HEADERS, media_type=HTML_MEDIA_TYPE)


@get("/v1/auth/oauth2/status/{request_id:str}", tags=["auth"], summary="Poll a Google sign-in",
     responses={400: _err("Unknown (or purged) request id"), 401: _err("poll_token missing or wrong"),
                410: _err("The session was already delivered"), 503: _err("Anchors did not confirm the session")})
async def oauth2_status(request_id: str, request: Request, state: State) -> StatusResponse:
    """`Authorization: Bearer <poll_token>`; the session is delivered once."""
    services = state.services
    require(services.oauth2, METHOD)
    return status_response(await services.signin_polls.poll(METHOD, request_id, poll_token(request)))
