"""`POST /v1/auth/wallet/start` and `POST /v1/auth/wallet/verify` (seed-spec §B.5)."""

from __future__ import annotations

from litestar import Request, post
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody

from ledger.services.refusals import Refusal
from ledger.siwe import SIWE_TTL_SECONDS

from ..errors import ApiError, refusal_kind
from ..schemas import ErrorBody, SessionResponse, WalletStartRequest, WalletStartResponse, WalletVerifyRequest
from .openapi_hooks import RetryAfterOperation

_ERRORS = {
    400: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Malformed body, address, signature or "
                                                                                     "chain id"),
    401: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Challenge unknown, consumed or expired; "
                                                                                     "signature does not match"),
    413: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Body too large"),
    429: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Rate limited (see Retry-After)"),
    503: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Anchors did not confirm the session in "
                                                                                     "time; nothing released"),
}


def _require_method(state: State) -> None:
    if "wallet_sig" not in state.services.config.auth_methods:
        raise ApiError("bad_request",
                       "bad request: wallet_sig auth method is not enabled (set BROKER_AUTH_METHODS=wallet_sig,...)")


@post("/v1/auth/wallet/start", status_code=200, tags=["auth"], summary="Start a SIWE challenge", responses=_ERRORS,
      operation_class=RetryAfterOperation)
async def wallet_start(data: JSONBody[WalletStartRequest], request: Request, state: State) -> WalletStartResponse:
    services = state.services
    _require_method(state)
    services.limit_challenge_start(request)
    challenge = await services.wallet_auth.start(data.address, data.chain_id)
    return WalletStartResponse(
        request_id=challenge.request_id,
        expires_in_seconds=SIWE_TTL_SECONDS,
        siwe_message=challenge.message,
        nonce=challenge.nonce,
        expires_at_iso=challenge.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


@post("/v1/auth/wallet/verify", status_code=200, tags=["auth"], summary="Verify a SIWE signature, get a session JWT",
      responses=_ERRORS, operation_class=RetryAfterOperation)
async def wallet_verify(data: JSONBody[WalletVerifyRequest], request: Request, state: State) -> SessionResponse:
    services = state.services
    _require_method(state)
    reservation = services.reserve_failed_verify(request)  # counted now, atomically; refunded unless it failed
    try:
        session = await services.wallet_auth.verify(data.request_id, data.signature)
    except Refusal as exc:
        if refusal_kind(exc) not in ("bad_request", "unauthorized"):
            services.refund_failed_verify(reservation)
        raise
    except BaseException:
        services.refund_failed_verify(reservation)
        raise
    services.refund_failed_verify(reservation)
    return SessionResponse(
        session_jwt=session.token,
        session_jwt_kid=session.kid,
        expires_at=session.expires_at,
        omni_account=session.omni_account,
        wallet_address=session.wallet_address,
        identity_type="evm",
        identity_value=session.wallet_address,
        seq=session.seq,
        record_hash=session.record_hash,
        anchored=session.anchored,
    )
