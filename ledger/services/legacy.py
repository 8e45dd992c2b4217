"""The legacy opaque-bearer path (seed-spec §B.3, §B.6), off unless `BROKER_LEGACY_BEARER=true`.

The bearer is validated by the backend (`IdentityBackend` port; api/legacy.py asks
`GET {BROKER_BACKEND_URL}/session/validate`). The token itself never enters the ledger (only its
SHA-256). A rejected or unreachable backend is an `AuthFailed` record. Then:
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

from ..aggregates import stream_id
from ..app import Ledger
from ..events import AuthFailed
from ..ports import IdentityBackend, SessionIssuer
from .mint import MintResult, MintService
from .refusals import Refusal
from .release import ReleasePath
from .signin import Session, issue_session

METHOD = "legacy_bearer"


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class LegacyService:
    def __init__(self, *, backend: IdentityBackend, ledger: Ledger, issuer: SessionIssuer, release: ReleasePath,
                 mint_service: MintService, service_name: str | None = None) -> None:
        self.backend = backend
        self.ledger = ledger
        self.issuer = issuer
        self.release = release
        self.mint_service = mint_service
        self.service_name = service_name

    async def _validated(self, token: str, request_id: str) -> str:
        try:
            return await self.backend.validate(token)
        except Refusal as exc:
            event = AuthFailed(method=METHOD, request_id=request_id, reason=exc.reason,  # type: ignore[arg-type]
                               detail=exc.message[:500], address=None)
            await self.ledger.append_async(stream_id("legacy-auth", request_id), 0, [event])
            raise

    async def mint(self, token: str) -> MintResult:
        if self.service_name is None:  # BROKER_LEGACY_SERVICE unset (design §8 "Access wire")
            raise Refusal("not_enrolled", "the legacy path mints no service on this broker (BROKER_LEGACY_SERVICE "
                          "is unset); use signed v2 mints")
        wallet = await self._validated(token, f"legacy-mint-{uuid.uuid4().hex}")
        return await self.mint_service.mint_legacy(wallet=wallet, token_sha256=token_sha256(token),
                                                   service=self.service_name)

    async def exchange(self, token: str) -> Session:
        request_id = f"exchange-{uuid.uuid4().hex}"
        wallet = await self._validated(token, request_id)
        return await issue_session(
            ledger=self.ledger, issuer=self.issuer, release=self.release, method=METHOD, request_id=request_id,
            address=wallet, stream=stream_id("legacy-auth", request_id), version=0,
            on_stream_conflict=Refusal("contended", "sign-in contended; retry"))
