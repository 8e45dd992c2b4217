"""What the email and OAuth2 sign-ins share (issue 16): refusals, the status poll with its single
delivery, and the session release.

`release_session` is today's release sequence (append `SessionIssued` -> release gate -> on a
deadline or a cancelled request `SessionWithheld`), kept in one function so that it can be switched
to the shared release path of the core when that exists.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

from ..app import Ledger
from ..chain import ChainRecord
from ..errors import ConcurrencyConflict
from ..events import AuthFailed, AuthSucceeded, SessionIssued, SessionWithheld
from ..gate import ReleaseGate
from ..ports import Clock, SessionTokenIssuer
from ..signin_request import SignInRequest
from .refusals import Refusal
from .release import ReleasePath, WithheldAppend


class SignInRefused(Refusal):
    """An email/OAuth2 sign-in step declined. Reasons (mapped to HTTP in api/errors.py):
    `malformed_email`, `missing_parameter`, `unknown_provider` (400); `unknown_request` (400, the
    seed's answer to an unknown or purged request id); `poll_token_required`, `poll_token_invalid`,
    `challenge_unknown`, `challenge_consumed`, `challenge_expired`, `request_id_mismatch`,
    `state_invalid`, `state_expired`, `nonce_mismatch`, `id_token_*`, `provider_error` (401);
    `session_delivered` (410); `rate_limited` (429); `token_exchange_failed`, `delivery_failed` (502);
    `anchor_deadline` (503)."""


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ReleasedSession:
    token: str
    kid: str
    expires_at: int
    omni_account: str
    identity_type: str
    identity_value: str
    seq: int
    record_hash: str
    anchored: list[str]


async def release_session(ledger: Ledger, gate: ReleaseGate, stream: Any, version: int,
                          issued: Any) -> tuple[ChainRecord, list[str]]:
    """Append the session's `SessionIssued` at `version` of `stream` and release it through the one
    release path (ledger/services/release.py). Returns the record and the anchors that confirmed
    it. `ConcurrencyConflict` when another writer took the version first (nothing issued);
    `Withheld` (reason `anchor_deadline`) after recording `SessionWithheld` when the anchors did not
    confirm in time (the request stays `verified`: poll again)."""
    event: SessionIssued = issued.session_issued_event()

    async def append() -> ChainRecord:
        return (await ledger.append_async(stream, version, [event]))[-1]

    def withhold(record: ChainRecord, reason: str, missing: list[str]) -> WithheldAppend:
        return stream, record.version, [SessionWithheld(jti=event.jti, session_seq=record.seq, reason=reason,
                                                        missing_anchors=missing)]

    released = await ReleasePath(ledger=ledger, gate=gate).release(what="session", append=append, withhold=withhold)
    return released.record, released.anchored


class RequestIndex(Protocol):
    """The `auth_requests` read model: is this request id known (not purged)?"""

    def known(self, request_id: str) -> bool: ...


@dataclass(frozen=True)
class PollResult:
    status: str  # pending | verified | failed
    reason: str | None = None
    session: ReleasedSession | None = None


class SignInPolls:
    """`GET /v1/auth/{email,oauth2}/status/{id}`: the poller proves it started the request with the
    `poll_token` only it received; the session is issued at the first poll after verification,
    and once."""

    def __init__(self, *, ledger: Ledger, signer: SessionTokenIssuer, gate: ReleaseGate, index: RequestIndex,
                 clock: Clock) -> None:
        self.ledger = ledger
        self.signer = signer
        self.gate = gate
        self.index = index
        self.clock = clock

    async def poll(self, method: str, request_id: str, poll_token: str | None) -> PollResult:
        if not poll_token:
            raise SignInRefused("poll_token_required", "the poll_token returned by the request is required "
                                "(Authorization: Bearer <poll_token>)")
        now = int(self.clock())
        request = self.ledger.load(SignInRequest, SignInRequest.stream_for(request_id)) \
            if len(request_id) <= 64 else SignInRequest(SignInRequest.stream_for("-"))
        if request.method != method or not request.collectable(now) or not self.index.known(request_id):
            raise SignInRefused("unknown_request", f"unknown request_id: {request_id[:64]}")
        if not request.poll_token_matches(sha256_hex(poll_token)):
            raise SignInRefused("poll_token_invalid", "poll_token does not match this request")
        outcome = request.outcome
        if outcome is None:
            if now > request.expires_at:
                return PollResult("failed", reason="expired: the sign-in was not completed within 10 minutes")
            return PollResult("pending")
        if isinstance(outcome, AuthFailed):
            return PollResult("failed", reason=outcome.detail)
        assert isinstance(outcome, AuthSucceeded)  # noqa: S101  type narrowing of an invariant established just above
        if request.session is not None:
            raise SignInRefused("session_delivered", "the session of this sign-in was already delivered")
        issued = self.signer.issue(outcome.omni_account, outcome.wallet_address, outcome.identity_type,
                                   outcome.identity_value)
        try:
            record, anchored = await release_session(self.ledger, self.gate, request.stream, request.version, issued)
        except ConcurrencyConflict:
            raise SignInRefused("session_delivered", "the session of this sign-in was already delivered") from None
        event: SessionIssued = issued.session_issued_event()
        return PollResult("verified", session=ReleasedSession(
            token=issued.token, kid=issued.kid, expires_at=event.exp, omni_account=event.omni_account,
            identity_type=event.identity_type, identity_value=event.identity_value, seq=record.seq,
            record_hash=record.hash, anchored=anchored))


async def append_outcome(ledger: Ledger, request: SignInRequest, event: AuthSucceeded | AuthFailed) -> bool:
    """Consume the request with its outcome (version 2). False when another answer won the race."""
    try:
        await ledger.append_async(request.stream, request.version, [event])
        return True
    except ConcurrencyConflict:
        return False

