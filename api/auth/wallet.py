"""Sign-In with Ethereum (seed-spec §B.5): the challenge lives in the ledger, not in memory.

start:  a fresh `AuthChallenge` stream gets `AuthChallengeIssued` (the exact EIP-4361 message).
verify: the first answer consumes the challenge at version 2, right or wrong (seed: any verify
        attempt burns the request). A right answer is one atomic append across streams:
        `WalletBound` (first sign-in of this wallet) + `AuthSucceeded` + `SessionIssued`; two racing
        verifies cannot both write version 2, so exactly one session is issued. The response with
        the session JWT waits for the release gate; past the deadline a `SessionWithheld` is
        appended and the caller gets 503 with no token.
Every failure is an `AuthFailed` event with a typed reason.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

from ledger.aggregates import AuthChallenge, ChallengeNotPending, WalletBinding
from ledger.app import Ledger
from ledger.errors import ConcurrencyConflict
from ledger.events import AuthChallengeIssued, AuthFailed, AuthSucceeded, SessionIssued, SessionWithheld
from ledger.gate import ReleaseGate
from ledger.identity import evm_omni_account, normalize_address

from ..errors import ApiError
from .session_jwt import SessionSigner
from .signatures import SignatureError
from .siwe import SIWE_TTL_SECONDS, build_message, new_nonce, new_request_id, verify_signed_message

METHOD = "wallet_sig"


@dataclass(frozen=True)
class Challenge:
    request_id: str
    message: str
    nonce: str
    expires_at: datetime


@dataclass(frozen=True)
class Session:
    token: str
    kid: str
    expires_at: int
    omni_account: str
    wallet_address: str
    seq: int
    record_hash: str
    anchored: list[str]


class WalletAuth:
    def __init__(
        self,
        *,
        ledger: Ledger,
        signer: SessionSigner,
        gate: ReleaseGate,
        domain: str,
        uri: str,
        chain_ids: tuple[int, ...],
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.ledger = ledger
        self.signer = signer
        self.gate = gate
        self.domain = domain
        self.uri = uri
        self.chain_ids = chain_ids
        self.clock = clock

    # --- start ------------------------------------------------------------------------------

    async def start(self, address: str, chain_id: int) -> Challenge:
        try:
            address = normalize_address(address)
        except ValueError as exc:
            raise ApiError("bad_request", f"bad request: {exc}") from None
        if chain_id not in self.chain_ids:
            allowed = ", ".join(str(c) for c in self.chain_ids)
            raise ApiError("bad_request", f"bad request: chain_id {chain_id} is not allowed (allowed: {allowed})",
                           reason="chain_id_not_allowed")
        now = self.clock().replace(microsecond=0)
        expires = now + timedelta(seconds=SIWE_TTL_SECONDS)
        request_id, nonce = new_request_id(), new_nonce()
        message = build_message(domain=self.domain, address=address, uri=self.uri, chain_id=chain_id,
                                nonce=nonce, issued_at=now, expires_at=expires)
        event = AuthChallengeIssued(
            method=METHOD, request_id=request_id, address=address, chain_id=chain_id, nonce=nonce,
            domain=self.domain, uri=self.uri, issued_at=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            expires_at=int(expires.timestamp()), message=message,
        )
        await self.ledger.append_async(AuthChallenge.stream_for(request_id), 0, [event])
        return Challenge(request_id=request_id, message=message, nonce=nonce, expires_at=expires)

    # --- verify -----------------------------------------------------------------------------

    async def verify(self, request_id: str, signature: str) -> Session:
        stream = AuthChallenge.stream_for(request_id)
        challenge = self.ledger.load(AuthChallenge, stream)
        now_unix = int(self.clock().timestamp())
        try:
            issued = challenge.check_pending(now_unix)
        except ChallengeNotPending as exc:
            await self._record_failure(challenge, request_id, exc.reason, str(exc), None)
            raise ApiError("unauthorized", f"unauthorized: {exc}", reason=exc.reason) from None

        try:
            recovered = verify_signed_message(issued.message, signature, issued.address)
        except SignatureError as exc:
            consumed = await self._record_failure(challenge, request_id, exc.reason, str(exc), issued.address)
            if not consumed:
                raise ApiError("unauthorized", "unauthorized: nonce already consumed or unknown; replay rejected",
                               reason="challenge_consumed") from None
            kind = "bad_request" if exc.status == 400 else "unauthorized"
            raise ApiError(kind, f"{kind.replace('_', ' ')}: {exc}", reason=exc.reason) from None

        return await self._issue_session(challenge, issued, recovered)

    async def _record_failure(self, challenge: AuthChallenge, request_id: str, reason: str, detail: str,
                              address: str | None) -> bool:
        """Append `AuthFailed`. On a pending challenge it consumes it (version 2); returns False
        when another verify consumed it first. Unknown/consumed ids are recorded at the stream's
        current version (best effort: losing that race loses nothing)."""
        event = AuthFailed(method=METHOD, request_id=request_id[:200], reason=reason, detail=detail[:500],  # type: ignore[arg-type]
                           address=address)
        try:
            await self.ledger.append_async(challenge.stream, challenge.version, [event])
            return True
        except ConcurrencyConflict:
            return False

    async def _issue_session(self, challenge: AuthChallenge, issued: AuthChallengeIssued, address: str) -> Session:
        omni = evm_omni_account(address)
        token = self.signer.issue(omni_account=omni, wallet_address=address, identity_type="evm",
                                  identity_value=address)
        claims = token.claims
        succeeded = AuthSucceeded(method=METHOD, request_id=issued.request_id, identity_type="evm",
                                  identity_value=address, omni_account=omni, wallet_address=address)
        session_event = SessionIssued(
            jti=claims.jti, kid=token.kid, omni_account=omni, wallet_address=address, identity_type="evm",
            identity_value=address, iat=claims.iat, exp=claims.exp, token_sha256=token.token_sha256,
        )
        binding_stream = WalletBinding.stream_for(omni, address)
        for _ in range(5):
            binding = self.ledger.load(WalletBinding, binding_stream)
            bind_events = binding.bind(omni_account=omni, address=address, role="master", parent_address=None)
            parts = []
            if bind_events:
                parts.append((binding_stream, binding.version, bind_events))
            parts.append((challenge.stream, challenge.version, [succeeded, session_event]))
            try:
                records = await self.ledger.append_many_async(parts)
                break
            except ConcurrencyConflict as exc:
                if exc.stream == challenge.stream:
                    raise ApiError("unauthorized", "unauthorized: nonce already consumed or unknown; replay rejected",
                                   reason="challenge_consumed") from None
                continue  # the wallet was bound concurrently by another sign-in: re-read, retry
        else:  # pragma: no cover - five concurrent binds of one wallet in a row
            raise ApiError("unavailable", "sign-in contended; retry")
        session_record = records[-1]
        try:
            result = await self.gate.wait_async(session_record.seq)
        except asyncio.CancelledError:
            # The request was cut off (shutdown past its grace period, client gone): nothing was
            # released, and the ledger must say so rather than end at SessionIssued.
            # (queued, not awaited: a cancelled task must not block the loop on the commit; if the
            # process dies first, the start-up outcome sweep records it)
            self.ledger.submit(challenge.stream, session_record.version, [SessionWithheld(
                jti=claims.jti, session_seq=session_record.seq, reason="request_cancelled", missing_anchors=[])])
            raise
        if not result.released:
            withheld = SessionWithheld(jti=claims.jti, session_seq=session_record.seq,
                                       reason="anchor_deadline", missing_anchors=result.missing)
            try:
                await self.ledger.append_async(challenge.stream, session_record.version, [withheld])
            except ConcurrencyConflict:  # pragma: no cover - the stream is ours alone at this point
                pass
            raise ApiError("anchor_unavailable",
                           f"audit anchors {', '.join(result.missing)} did not confirm the session in time; "
                           "no session was released", reason="anchor_deadline")
        return Session(token=token.token, kid=token.kid, expires_at=claims.exp, omni_account=omni,
                       wallet_address=address, seq=session_record.seq, record_hash=session_record.hash,
                       anchored=result.anchored)


def now_unix() -> int:
    return int(time.time())
