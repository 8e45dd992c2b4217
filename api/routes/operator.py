"""The operator wire (design §8): `GET /v1/operator/quarantine?status=open|all`,
`POST /v1/operator/quarantine/{case_id}/resolve`, `GET /v1/operator/mints`, and `GET /metrics`.

Every route needs an operator credential (api/operator.py); `/metrics` too unless
`BROKER_METRICS_AUTH=none`. Resolving names the operator in the ledger.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

import msgspec
from litestar import MediaType, Request, Response, get, post
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody, PathParameter, QueryParameter

from ..errors import ApiError
from ..schemas import ErrorBody


# the quarantine use case's refusal reasons -> wire kinds (design §4, §8)
class ResolveRequest(msgspec.Struct, forbid_unknown_fields=True):
    action: str
    reason: str


class ResolveResponse(msgspec.Struct, omit_defaults=True):
    case_id: str
    status: str
    seq: int | None = None


class CasesResponse(msgspec.Struct):
    cases: list[dict[str, Any]]


class MintsResponse(msgspec.Struct):
    mints: list[dict[str, Any]]


_ERRORS = {
    400: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Malformed action or reason"),
    401: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="No operator credential"),
    403: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="A session that is not an operator's"),
    404: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="No such case"),
    409: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="The case is closed (or re-anchoring): "
                                                                                     "`case_closed`"),
    413: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Body too large"),
    502: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="IAM refused the kill switch; nothing "
                                                                                     "recorded"),
}
# what a GET can answer: no body, no case to conflict with
_READ_ERRORS = {k: v for k, v in _ERRORS.items() if k in (400, 401, 403)}


@get("/v1/operator/quarantine", tags=["operator"], summary="Quarantine cases with their history", responses=_READ_ERRORS,
     sync_to_thread=True)
def quarantine_list(request: Request, state: State,
                    status: Annotated[Literal["open", "all"], QueryParameter(description="open or all")] = "open",
                    ) -> CasesResponse:
    """`status=open` (default): cases not yet resolved (open or re-anchoring); `all`: every case."""
    from projections.quarantine import list_cases

    surface = state.services.operator
    surface.auth.from_headers(request.headers)
    surface.caught_up()
    return CasesResponse(cases=[c.wire() for c in list_cases(state.services.projections.engine, status=status)])


@post("/v1/operator/quarantine/{case_id:str}/resolve", tags=["operator"], status_code=200,
      responses={**_ERRORS, 202: ResponseSpec(data_container=ResolveResponse, generate_examples=False,
                                              description="reanchor: the worker closes the case once the anchor confirms")},
      summary="Resolve a quarantine case: reanchor (202), accept or revoke (200)")
async def quarantine_resolve(case_id: Annotated[str, PathParameter(description="q-<seq>")], data: JSONBody[ResolveRequest],
                             request: Request,
                             state: State) -> Response[ResolveResponse]:
    """`revoke` applies the role kill switch (every live session of the mint's role, every
    tenant) before recording the resolution."""
    surface = state.services.operator
    operator = surface.auth.from_headers(request.headers)
    # a QuarantineRefusal is a Refusal: api/errors.py's table maps its reason
    result = await asyncio.to_thread(surface.quarantine.resolve, case_id, action=data.action, reason=data.reason,
                                     operator=operator.name)
    if result.status == "reanchoring":
        return Response(ResolveResponse(case_id=result.case_id, status="reanchoring"), status_code=202)
    return Response(ResolveResponse(case_id=result.case_id, status=result.status, seq=result.seq), status_code=200)


@get("/v1/operator/mints", tags=["operator"], summary="Recent mints with their anchor status", responses=_READ_ERRORS,
     sync_to_thread=True)
def mints_list(request: Request, state: State,
               limit: Annotated[int, QueryParameter(ge=1, le=1000, description="at most this many")] = 50,
               status: Annotated[str | None, QueryParameter(description="one mint status")] = None,
               ) -> MintsResponse:
    """Newest first; `status` filters by one of the statuses of design §8. The anchor status of
    each mint is computed now from the anchors' confirmed positions."""
    from projections.mints import STATUSES, recent_mints, with_anchor_status

    surface = state.services.operator
    surface.auth.from_headers(request.headers)
    if status is not None and status not in STATUSES:
        raise ApiError("bad_request", f"bad request: status must be one of {', '.join(STATUSES)}")
    surface.caught_up()
    positions = surface.anchor_positions()
    rows = recent_mints(state.services.projections.engine, limit=limit, status=status)
    return MintsResponse(mints=[with_anchor_status(r, positions) for r in rows])


@get("/metrics", tags=["status"], summary="Prometheus metrics", media_type=MediaType.TEXT, sync_to_thread=True,
     responses={401: _ERRORS[401], 403: _ERRORS[403]})
def metrics(request: Request, state: State) -> Response[bytes]:
    """The metrics of design §8; an operator credential unless `BROKER_METRICS_AUTH=none`."""
    from ..metrics import CONTENT_TYPE

    services = state.services
    if services.config.metrics_auth != "none":
        services.operator.auth.from_headers(request.headers)
    return Response(services.operator.metrics.render(), media_type=CONTENT_TYPE)


ROUTES = [quarantine_list, quarantine_resolve, mints_list, metrics]
