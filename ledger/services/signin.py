"""Sign-In with Ethereum (seed-spec §B.5): the challenge lives in the ledger, not in memory.

start:  a fresh `AuthChallenge` stream gets `AuthChallengeIssued` (the exact EIP-4361 message).
verify: the first answer consumes the challenge at version 2, right or wrong (seed: any verify
        attempt burns the request). A right answer is one atomic append across streams:
        `WalletBound` (first sign-in of this wallet) + `AuthSucceeded` + `SessionIssued`; two racing
        verifies cannot both write version 2, so exactly one session is issued. The session JWT is
        released through the release path (`ReleasePath`): past the deadline a `SessionWithheld` is
        appended and the caller is refused with no token.
Every failure is an `AuthFailed` event with a typed reason.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from ..aggregates import AuthChallenge, ChallengeNotPending, WalletBinding
from ..app import Ledger
from ..chain import ChainRecord
from ..errors import ConcurrencyConflict
from ..events import AuthChallengeIssued, AuthFailed, AuthSucceeded, SessionIssued, SessionWithheld
from ..identity import evm_omni_account, normalize_address
from ..ports import Clock, SessionIssuer, SignedSession
from ..signatures import SignatureError
from ..siwe import SIWE_TTL_SECONDS, build_message, new_nonce, new_request_id, verify_signed_message
from .refusals import Refusal
from .release import ReleasePath, WithheldAppend

METHOD: Final = "wallet_sig"


@dataclass(frozen=True)
class Challenge:
    request_id: str
    message: str
    nonce: str
    expires_at: datetime


@dataclass(frozen=True)
class Session:
    """A released session: the token and the record that authorized it."""

    token: str
    kid: str
    expires_at: int
    omni_account: str
    wallet_address: str
    seq: int
    record_hash: str
    anchored: list[str]


class SignatureRefused(Refusal):
    """A refused signature; `reason` is the `AuthFailureReason` of `ledger/signatures.py`."""

    def __init__(self, exc: SignatureError) -> None:
        super().__init__(exc.reason, exc.message)


async def issue_session(
    *,
    ledger: Ledger,
    issuer: SessionIssuer,
    release: ReleasePath,
    method: str,
    request_id: str,
    address: str,
    stream: uuid.UUID,
    version: int,
    on_stream_conflict: Refusal,
) -> Session:
    """Shared by SIWE sign-in and the legacy exchange: bind the wallet as the master of its own
    OmniAccount (first time), append `AuthSucceeded` + `SessionIssued` on `stream` at `version`,
    and release the JWT through the release path (`SessionWithheld` otherwise)."""
    omni = evm_omni_account(address)
    signed: SignedSession = issuer.issue(omni_account=omni, wallet_address=address, identity_type="evm",
                                         identity_value=address)
    succeeded = AuthSucceeded(method=method, request_id=request_id, identity_type="evm",  # type: ignore[arg-type]
                              identity_value=address, omni_account=omni, wallet_address=address)
    session_event = SessionIssued(jti=signed.jti, kid=signed.kid, omni_account=omni, wallet_address=address,
                                  identity_type="evm", identity_value=address, iat=signed.iat, exp=signed.exp,
                                  token_sha256=signed.token_sha256)
    binding_stream = WalletBinding.stream_for(omni, address)

    async def append() -> ChainRecord:
        for _ in range(5):
            binding = ledger.load(WalletBinding, binding_stream)
            bind_events = binding.bind(omni_account=omni, address=address, role="master", parent_address=None)
            parts = [(binding_stream, binding.version, bind_events)] if bind_events else []
            parts.append((stream, version, [succeeded, session_event]))
            try:
                return (await ledger.append_many_async(parts))[-1]
            except ConcurrencyConflict as exc:
                if exc.stream == stream:
                    raise on_stream_conflict from None
                continue  # the wallet was bound concurrently by another sign-in: re-read, retry
        raise Refusal("contended", "sign-in contended; retry")  # pragma: no cover

    def withhold(record: ChainRecord, reason: str, missing: list[str]) -> WithheldAppend:
        return stream, record.version, [SessionWithheld(jti=signed.jti, session_seq=record.seq, reason=reason,
                                                        missing_anchors=missing)]

    released = await release.release(what="session", append=append, withhold=withhold)
    return Session(token=signed.token, kid=signed.kid, expires_at=signed.exp, omni_account=omni,
                   wallet_address=address, seq=released.record.seq, record_hash=released.record.hash,
                   anchored=released.anchored)


class WalletSignIn:
    def __init__(
        self,
        *,
        ledger: Ledger,
        issuer: SessionIssuer,
        release: ReleasePath,
        domain: str,
        uri: str,
        chain_ids: tuple[int, ...],
        clock: Clock = time.time,
    ) -> None:
        self.ledger = ledger
        self.issuer = issuer
        self.release = release
        self.domain = domain
        self.uri = uri
        self.chain_ids = chain_ids
        self.clock = clock

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    # --- start ------------------------------------------------------------------------------

    async def start(self, address: str, chain_id: int) -> Challenge:
        try:
            address = normalize_address(address)
        except ValueError as exc:
            raise Refusal("bad_address", str(exc)) from None
        if chain_id not in self.chain_ids:
            allowed = ", ".join(str(c) for c in self.chain_ids)
            raise Refusal("chain_id_not_allowed", f"chain_id {chain_id} is not allowed (allowed: {allowed})")
        now = self._now().replace(microsecond=0)
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
        now_unix = int(self.clock())
        try:
            issued = challenge.check_pending(now_unix)
        except ChallengeNotPending as exc:
            await self._record_failure(challenge, request_id, exc.reason, str(exc), None)
            raise Refusal(exc.reason, str(exc)) from None

        try:
            recovered = verify_signed_message(issued.message, signature, issued.address)
        except SignatureError as exc:
            consumed = await self._record_failure(challenge, request_id, exc.reason, str(exc), issued.address)
            if not consumed:
                raise _replayed() from None
            raise SignatureRefused(exc) from None

        return await issue_session(
            ledger=self.ledger, issuer=self.issuer, release=self.release, method=METHOD,
            request_id=issued.request_id, address=recovered, stream=challenge.stream, version=challenge.version,
            on_stream_conflict=_replayed())

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


def _replayed() -> Refusal:
    return Refusal("challenge_consumed", "nonce already consumed or unknown; replay rejected")
