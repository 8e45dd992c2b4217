"""`POST /v1/mint-aws-creds` (seed-spec §B.4; the legacy bearer path §B.3 when enabled).

The route checks the session JWT (401 before the body is read as a request), decodes the wire
body and its signed canonical form (400 when it does not parse), calls the mint use case
(`ledger/services/mint.py`) and answers."""

from __future__ import annotations

import msgspec
from litestar import Request, post
from litestar.datastructures import State
from litestar.openapi import ResponseSpec

from ledger.identity import normalize_address
from ledger.services.mint import MintIntent, MintResult, canonical_signing_input

from ..auth.bearer import bearer_token, caller_of, verify_session
from ..auth.session_jwt import looks_like_session_jwt
from ..errors import ApiError
from ..schemas import ErrorBody, MintRequestSchema, MintResponse
from .openapi_hooks import RetryAfterOperation

_ERRORS = {
    400: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Malformed body or signature "
                                                                                     "(invalid_agent_id, unknown_service, "
                                                                                     "invalid_scope); stale issued_at"),
    401: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Session JWT invalid; signature not by the "
                                                                                     "session's wallet"),
    403: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="No usable grant (reason: no_grant, "
                                                                                     "grant_revoked, grant_expired, "
                                                                                     "grant_exhausted, scope_not_granted, "
                                                                                     "agent_not_granted), or the grant's master "
                                                                                     "no longer owns the scope (scope_not_owned, "
                                                                                     "not_enrolled; re-checked at every mint)"),
    409: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="request_id already used by this wallet "
                                                                                     "(reason: request_replayed)"),
    413: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Body too large"),
    429: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Too many mints for this account, "
                      "or too many failed signatures from this address or for this wallet (Retry-After)"),
    502: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="STS refused or unreachable (sts_error)"),
    503: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Anchors did not confirm in time; nothing "
                                                                                     "released (anchor_unavailable)"),
}


def parse_mint_body(raw: bytes) -> tuple[MintIntent, bytes]:
    """The wire body as the use case's `MintIntent`, and its signed canonical form."""
    if not raw or not raw.strip():
        raise ApiError("bad_request", "bad request: v2 mint requires a JSON body")
    try:
        body = msgspec.json.decode(raw, type=MintRequestSchema)
        canonical = canonical_signing_input(raw)  # built from a generic parse: it must succeed too
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, RecursionError) as exc:
        raise ApiError("bad_request", f"bad request: malformed v2 body: {str(exc)[:200]}") from None
    try:
        normalize_address(body.auth.address)  # 0x + 40 hex; mixed case must carry a valid EIP-55 checksum
    except ValueError as exc:
        raise ApiError("bad_request", f"bad request: auth.address: {exc}") from None
    intent = MintIntent(request_id=body.request_id, issued_at=body.issued_at, agent_id=body.intent.agent_id,
                        service=body.intent.service, scope_path=body.intent.scope_path, address=body.auth.address,
                        signature=body.auth.signature, aud=body.aud)
    return intent, canonical


def _response(result: MintResult) -> MintResponse:
    return MintResponse(access_key_id=result.access_key_id, secret_access_key=result.secret_access_key,
                        session_token=result.session_token, expiration=result.expiration, wallet=result.wallet,
                        audit_record_id=result.audit_record_id, seq=result.seq, record_hash=result.record_hash,
                        anchored=result.anchored)


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
        # seed §B.3: the body is ignored on this path
        return _response(await services.legacy.mint(token, client=services.client_ip(request)))
    claims = verify_session(token, services.session_keys, services.config.issuer, services.projections)
    intent, canonical = parse_mint_body(raw)
    return _response(await services.mint.mint(caller_of(claims), intent, canonical, client=services.client_ip(request)))
