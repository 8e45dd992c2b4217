"""`GET /v1/audit/records/{seq}`: a record's proof bundle (see api/audit_records.py)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from litestar.params import Parameter

from ..audit_records import bundle_for, operator_token_matches
from ..auth.bearer import bearer_token, verify_session
from ..schemas import ErrorBody
from .openapi_hooks import NoAutoValidationErrorOperation

_ERRORS = {
    401: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="Missing or invalid credential"),
    404: ResponseSpec(data_container=ErrorBody, generate_examples=False,
                      description="No such record visible to the caller, its EVM batch is not confirmed yet, "
                      "or seq is not an integer (no such path)"),
}


@get("/v1/audit/records/{seq:int}", tags=["audit"], summary="Proof bundle of one ledger record", responses=_ERRORS,
     sync_to_thread=True, operation_class=NoAutoValidationErrorOperation)
def audit_record(seq: Annotated[int, Parameter(description="the record's seq")], request: Request,
                 state: State) -> dict[str, Any]:
    """The record, its Merkle inclusion proof in its anchored batch, the batch root and chain
    head, and the anchoring transaction: check it with `agentkeys-broker audit verify-proof`."""
    services = state.services
    token = bearer_token(request.headers)
    operator = operator_token_matches(token, services.config.operator_token)
    omni = None if operator else verify_session(token, services.session_keys, services.config.issuer,
                                                 services.projections).omni_account
    return bundle_for(services, seq, omni=omni, operator=operator)
