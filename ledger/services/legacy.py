"""The legacy opaque-bearer path (seed-spec §B.3, §B.6), off unless `BROKER_LEGACY_BEARER=true`.

The bearer is validated by the backend (`IdentityBackend` port; api/legacy.py asks
`GET {BROKER_BACKEND_URL}/session/validate`). The token itself never enters the ledger (only its
SHA-256). Before the backend is asked, the client IP's legacy budget is charged (`RateLimit`,
`BROKER_RATE_LIMIT_LEGACY_PER_MINUTE_PER_IP`): beyond it 429 `legacy_per_ip`, not recorded (no
account exists yet, design §8). A rejected or unreachable backend is an `AuthFailed` record for the
first failure per client IP and window (`failure_log`); later failures of that window are only
counted (`agentkeys_auth_attempts_total{method="legacy_bearer",outcome="failed"}`), so garbage
tokens cannot grow the ledger one record each. Then:
- `mint(token)` mints for the wallet through the same grant check, ledger records and release
  path as the v2 mint (`MintService.mint_legacy`);
- `exchange(token)` trades the bearer for a session JWT (the wallet bound as `master` of its own
  OmniAccount, like a SIWE sign-in), released through the same release path as every session, so
  a cut-off or unconfirmed exchange records `SessionWithheld`.
Planned for removal with the seed's v1.0 cutover; see docs/compat.md.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Final

from ..aggregates import stream_id
from ..app import Ledger
from ..events import AuthFailed
from ..ports import IdentityBackend, NoUnrecordedOutcomes, RateLimit, SessionIssuer, UnrecordedOutcomes
from .mint import MintResult, MintService
from .refusals import Refusal
from .release import ReleasePath
from .signin import Session, issue_session

METHOD: Final = "legacy_bearer"


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class LegacyService:
    def __init__(self, *, backend: IdentityBackend, ledger: Ledger, issuer: SessionIssuer, release: ReleasePath,
                 mint_service: MintService, service_name: str | None = None, limiter: RateLimit | None = None,
                 failure_log: RateLimit | None = None, unrecorded: UnrecordedOutcomes | None = None) -> None:
        self.backend = backend
        self.limiter = limiter
        self.failure_log = failure_log
        self.unrecorded = unrecorded or NoUnrecordedOutcomes()
        self.ledger = ledger
        self.issuer = issuer
        self.release = release
        self.mint_service = mint_service
        self.service_name = service_name

    async def _validated(self, token: str, request_id: str, client: str) -> str:
        if self.limiter is not None:
            decision = self.limiter.check(client)
            if not decision.allowed:  # before the backend call; not recorded (no account yet)
                raise Refusal("legacy_per_ip", "too many legacy bearer requests from this address",
                              retry_after=decision.retry_after_seconds)
        try:
            return await self.backend.validate(token)
        except Refusal as exc:
            if self.failure_log is None or self.failure_log.check(client).allowed:
                event = AuthFailed(method=METHOD, request_id=request_id, reason=exc.reason,  # type: ignore[arg-type]
                                   detail=exc.message[:500], address=None)
                await self.ledger.append_async(stream_id("legacy-auth", request_id), 0, [event])
            else:
                self.unrecorded.auth(METHOD, "failed")
            raise

    async def mint(self, token: str, *, client: str = "") -> MintResult:
        """`client` is the caller's IP (the per-IP legacy budget and failure log)."""
        if self.service_name is None:  # BROKER_LEGACY_SERVICE unset (design §8 "Access wire")
            raise Refusal("not_enrolled", "the legacy path mints no service on this broker (BROKER_LEGACY_SERVICE "
                          "is unset); use signed v2 mints")
        wallet = await self._validated(token, f"legacy-mint-{uuid.uuid4().hex}", client)
        return await self.mint_service.mint_legacy(wallet=wallet, token_sha256=token_sha256(token),
                                                   service=self.service_name)

    async def exchange(self, token: str, *, client: str = "") -> Session:
        request_id = f"exchange-{uuid.uuid4().hex}"
        wallet = await self._validated(token, request_id, client)
        return await issue_session(
            ledger=self.ledger, issuer=self.issuer, release=self.release, method=METHOD, request_id=request_id,
            address=wallet, stream=stream_id("legacy-auth", request_id), version=0,
            on_stream_conflict=Refusal("contended", "sign-in contended; retry"))
