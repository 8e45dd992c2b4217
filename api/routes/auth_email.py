"""Email magic-link sign-in (seed-spec §B.7): `POST /v1/auth/email/request`, `POST
/v1/auth/email/verify` (GET -> 405 `Allow: POST`), `GET /v1/auth/email/status/{request_id}` and
the landing page `GET /auth/email/landing`. The use case is `ledger/services/email_link.py`."""

from __future__ import annotations

import msgspec
from litestar import MediaType, Request, Response, get, post
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody

from ..schemas import ErrorBody
from .openapi_hooks import RetryAfterOperation
from .signin_common import HTML_MEDIA_TYPE, PAGE_HEADERS, StatusResponse, poll_token, require, status_response

METHOD = "email_link"


class EmailRequestBody(msgspec.Struct):
    email: str
    source_ip: str | None = None  # accepted for seed compatibility and ignored (docs/compat.md)


class EmailRequestResponse(msgspec.Struct):
    request_id: str
    expires_in_seconds: int
    poll_url: str
    poll_token: str


class EmailVerifyBody(msgspec.Struct):
    token: str
    request_id: str | None = None


class OkResponse(msgspec.Struct):
    ok: bool


def _err(description: str) -> ResponseSpec:
    return ResponseSpec(data_container=ErrorBody, generate_examples=False, description=description)


@post("/v1/auth/email/request", status_code=200, tags=["auth"], summary="Send a magic sign-in link",
      operation_class=RetryAfterOperation,
      responses={400: _err("Malformed email, or email_link not enabled"), 413: _err("Body too large"),
                 429: _err("Rate limited per client IP or per address (see Retry-After)"),
                 502: _err("The email could not be sent")})
async def email_request(data: JSONBody[EmailRequestBody], request: Request, state: State) -> EmailRequestResponse:
    """Sends a link whose token lives only in the URL fragment. Returns the `poll_token` that the
    status poll needs: only this caller receives it."""
    services = state.services
    require(services.email_link, METHOD)
    issued = await services.email_link.request(data.email, services.client_ip(request))
    return EmailRequestResponse(request_id=issued.request_id, expires_in_seconds=issued.expires_in_seconds,
                                poll_url=f"/v1/auth/email/status/{issued.request_id}", poll_token=issued.poll_token)


@post("/v1/auth/email/verify", status_code=200, tags=["auth"], summary="Consume a magic-link token (landing page)",
      responses={400: _err("Malformed body, or email_link not enabled"), 413: _err("Body too large"),
                 401: _err("Link unknown, used, expired, or for another request")})
async def email_verify(data: JSONBody[EmailVerifyBody], state: State) -> Response[OkResponse]:
    """Called by the landing page with the token from the fragment. The session is never in this
    response: the terminal that requested the link collects it from the status poll."""
    services = state.services
    require(services.email_link, METHOD)
    await services.email_link.verify(data.token, data.request_id)
    return Response(OkResponse(ok=True), headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


@get("/v1/auth/email/verify", tags=["auth"], summary="Refused: POST only (prefetch defence)", sync_to_thread=False,
     media_type=MediaType.TEXT, status_code=405, include_in_schema=False)
def email_verify_get() -> Response[str]:
    return Response("POST required; GET on this endpoint is rejected to defeat magic-link prefetchers",
                    status_code=405, headers={"Allow": "POST", "Cache-Control": "no-store"}, media_type=MediaType.TEXT)


@get("/v1/auth/email/status/{request_id:str}", tags=["auth"], summary="Poll a magic-link sign-in",
     responses={400: _err("Unknown (or purged) request id"), 401: _err("poll_token missing or wrong"),
                410: _err("The session was already delivered"), 503: _err("Anchors did not confirm the session")})
async def email_status(request_id: str, request: Request, state: State) -> StatusResponse:
    """`Authorization: Bearer <poll_token>`. The session is issued at the first poll after the link
    was opened, and delivered once; later polls get 410."""
    services = state.services
    require(services.email_link, METHOD)
    return status_response(await services.signin_polls.poll(METHOD, request_id, poll_token(request)))


LANDING_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="referrer" content="no-referrer">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>AgentKeys sign-in</title></head>
<body><h1>AgentKeys</h1><p id="msg">Verifying&hellip;</p>
<script>
(function () {
  var msg = document.getElementById('msg');
  var m = /^#t=([A-Za-z0-9_-]+)$/.exec(window.location.hash);
  history.replaceState(null, '', location.pathname);
  if (!m) { msg.textContent = 'Magic link is malformed. Re-request from your terminal.'; return; }
  fetch('/v1/auth/email/verify', {method: 'POST', headers: {'content-type': 'application/json'},
                                  body: JSON.stringify({token: m[1]}), credentials: 'omit', referrerPolicy: 'no-referrer'})
    .then(function (r) { return r.json().catch(function () { return {}; }).then(function (b) {
      msg.textContent = r.ok ? 'Verified \\u2014 return to your terminal.' : 'Verify failed: ' + (b.message || r.status);
    }); })
    .catch(function (e) { msg.textContent = 'Verify failed: ' + e; });
})();
</script></body></html>
"""


@get("/auth/email/landing", tags=["auth"], summary="Magic-link landing page", sync_to_thread=False,
     media_type=HTML_MEDIA_TYPE)
def email_landing() -> Response[str]:
    """Reads the token from `window.location.hash` (never sent to the server by the browser),
    strips it from the history and POSTs it to `/v1/auth/email/verify`."""
    return Response(LANDING_PAGE, headers=PAGE_HEADERS, media_type=HTML_MEDIA_TYPE)
