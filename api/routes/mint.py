"""`POST /v1/mint-aws-creds` (seed-spec §B.4; the legacy bearer path §B.3 when enabled)."""

from __future__ import annotations

import msgspec

from litestar import Request, post
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from .openapi_hooks import RetryAfterOperation

from ..auth.bearer import bearer_token
from ..auth.session_jwt import looks_like_session_jwt
from ..schemas import ErrorBody, MintRequestSchema, MintResponse

_ERRORS = {
    400: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Malformed body or signature; stale issued_at"),
    401: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Session JWT invalid; signature not by the session's wallet"),
    403: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="No usable grant (reason: no_grant, grant_revoked, grant_expired, grant_exhausted, scope_not_granted)"),
    409: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="request_id already used by this wallet (reason: request_replayed)"),
    413: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Body too large"),
    429: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Too many mints for this account (Retry-After)"),
    502: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="STS refused or unreachable (sts_error)"),
    503: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Anchors did not confirm in time; nothing released (anchor_unavailable)"),
}


def _inline(schema: dict) -> dict:
    """msgspec's JSON schema with its `$defs` references inlined (for the raw-body route)."""
    defs = schema.get("$defs", {})

    def walk(node):  # noqa: ANN001, ANN202
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: walk(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


MINT_BODY_SCHEMA = _inline(msgspec.json.schema(MintRequestSchema))


class _MintOperation(RetryAfterOperation):
    """The route reads the raw body (the signature covers its canonical form, and the session JWT
    is checked before the body is parsed), so its request schema is declared here."""

    def to_schema(self) -> dict:
        out = super().to_schema()
        out["requestBody"] = {"required": True, "description": MintRequestSchema.__doc__,
                              "content": {"application/json": {"schema": MINT_BODY_SCHEMA}}}
        return out


@post("/v1/mint-aws-creds", status_code=200, tags=["mint"], summary="Mint short-lived AWS credentials",
      responses=_ERRORS, operation_class=_MintOperation)
async def mint_aws_creds(request: Request, state: State) -> MintResponse:
    services = state.services
    token = bearer_token(request.headers)
    raw = await request.body()
    if services.legacy is not None and not looks_like_session_jwt(token):
        result = await services.legacy.mint(token)  # seed §B.3: the body is ignored on this path
    else:
        result = await services.mint.mint(token, raw)
    return result
