"""`POST /v1/grant/create`, `POST /v1/grant/revoke`, `GET /v1/grant/list` (seed-spec §B.10)."""

from __future__ import annotations

from litestar import Request, get, post
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody

from ledger.services.caller import Caller

from ..auth.bearer import bearer_token, caller_of, verify_session
from ..schemas import (
    DaemonReleaseRequest,
    DaemonReleaseResponse,
    ErrorBody,
    GrantCreateRequest,
    GrantCreateResponse,
    GrantListResponse,
    GrantRevokeRequest,
    GrantRevokeResponse,
    GrantView,
)

_ERRORS = {
    400: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Malformed request (unknown_service: not a "
                                                                                     "catalogue name; invalid_scope), or grant "
                                                                                     "not found / not yours / already revoked"),
    401: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Missing or invalid session JWT"),
    403: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="The session cannot grant (not_owner), the "
                                                                                     "scope is outside every root the master "
                                                                                     "owns (scope_not_owned: namespaced tenancy "
                                                                                     "owns <bucket>/<omni_account>/), the master "
                                                                                     "holds no root of the service "
                                                                                     "(not_enrolled), or the daemon is bound to "
                                                                                     "another master (daemon_bound_elsewhere)"),
    409: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="The daemon address is bound with another "
                                                                                     "role in this account"),
    413: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Body too large"),
}


def _claims(request: Request, state: State) -> Caller:
    services = state.services
    return caller_of(verify_session(bearer_token(request.headers), services.session_keys, services.config.issuer,
                                   services.projections))


@post("/v1/grant/create", status_code=200, tags=["grants"], summary="Grant a daemon wallet a service and scope",
      responses=_ERRORS)
async def grant_create(data: JSONBody[GrantCreateRequest], request: Request, state: State) -> GrantCreateResponse:
    claims = _claims(request, state)
    event = await state.services.grants.create(
        claims, daemon_address=data.daemon_address, service=data.service, scope_path=data.scope_path,
        expires_at=data.expires_at, max_uses=data.max_uses, agent_id=data.agent_id,
        agent_id_prefix=data.agent_id_prefix)
    return GrantCreateResponse(grant_id=event.grant_id, audit_proof=event.audit_proof)


@post("/v1/grant/revoke", status_code=200, tags=["grants"], summary="Revoke a grant (effective for the next mint)",
      responses=_ERRORS)
async def grant_revoke(data: JSONBody[GrantRevokeRequest], request: Request, state: State) -> GrantRevokeResponse:
    claims = _claims(request, state)
    await state.services.grants.revoke(claims, data.grant_id)
    return GrantRevokeResponse(grant_id=data.grant_id, revoked=True)


_LIST_ERRORS = {status: _ERRORS[status] for status in (401,)}  # a GET without a body: no 400/409/413


@get("/v1/grant/list", tags=["grants"], summary="The caller's grants, newest first", responses=_LIST_ERRORS,
     sync_to_thread=True)
def grant_list(request: Request, state: State) -> GrantListResponse:
    claims = _claims(request, state)
    rows = state.services.grants.list(claims)
    return GrantListResponse(grants=[GrantView(**row.wire()) for row in rows])


_RELEASE_ERRORS = {
    400: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Malformed daemon address"),
    401: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Missing or invalid session JWT"),
    404: ResponseSpec(data_container=ErrorBody, generate_examples=False,
                      description="No live binding of this daemon that the caller (the daemon or its master) may release"),
    413: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Body too large"),
}


@post("/v1/daemon/release", status_code=200, tags=["grants"], summary="Release a daemon from its master",
      responses=_RELEASE_ERRORS)
async def daemon_release(data: JSONBody[DaemonReleaseRequest], request: Request, state: State) -> DaemonReleaseResponse:
    """The daemon itself, or its master, ends the binding: that master's live grants naming the
    daemon are revoked and `DaemonReleased` is recorded, so another master may grant it."""
    caller = _claims(request, state)
    revoked = await state.services.grants.release_daemon(caller, data.daemon_address)
    return DaemonReleaseResponse(daemon_address=data.daemon_address.lower(), revoked_grants=revoked)
