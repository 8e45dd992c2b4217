"""The legacy opaque-bearer path (seed-spec §B.3, §B.6), off unless `BROKER_LEGACY_BEARER=true`.

The bearer is validated by the backend (`GET {BROKER_BACKEND_URL}/session/validate`,
`Authorization: Bearer <token>`); the backend answers `{"wallet": "0x…"}`. The token itself never
enters the ledger (only its SHA-256). Then:
- `POST /v1/mint-aws-creds` with a non-JWT bearer mints for that wallet through the same grant
  check, ledger records and release gate as the v2 path (`MintService.mint_legacy`);
- `POST /v1/auth/exchange` trades the bearer for a session JWT (wallet bound as `master` of its own
  OmniAccount, like a SIWE sign-in), released through the gate like any session.
Planned for removal with the seed's v1.0 cutover; see docs/compat.md.
"""

from __future__ import annotations

import hashlib
import uuid

import httpx

from ledger.aggregates import WalletBinding, stream_id
from ledger.app import Ledger
from ledger.errors import ConcurrencyConflict
from ledger.events import AuthFailed, AuthSucceeded, SessionIssued, SessionWithheld
from ledger.gate import ReleaseGate
from ledger.identity import evm_omni_account, normalize_address

from .auth.session_jwt import SessionSigner
from .auth.wallet import Session
from .errors import ApiError

METHOD = "legacy_bearer"


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class LegacyBackend:
    def __init__(self, base_url: str, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)))

    async def validate(self, token: str) -> str:
        """The wallet the backend vouches for, or `ApiError` (401 / 502 `backend_unreachable`)."""
        try:
            r = await self.client.get(f"{self.base_url}/session/validate", headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            raise ApiError("backend_unreachable", f"backend unreachable: {type(exc).__name__}",
                           reason="backend_unreachable") from None
        if r.status_code == 401:
            message = "session not valid"
            try:
                message = str(r.json().get("message") or message)[:200]
            except ValueError:
                pass
            raise ApiError("unauthorized", f"unauthorized: {message}", reason="backend_rejected")
        if not 200 <= r.status_code < 300:
            raise ApiError("backend_unreachable", f"backend unreachable: backend returned {r.status_code}",
                           reason="backend_unreachable")
        try:
            return normalize_address(str(r.json()["wallet"]))
        except (ValueError, KeyError, TypeError):
            raise ApiError("backend_unreachable", "backend unreachable: backend answered without a valid wallet",
                           reason="backend_unreachable") from None

    async def aclose(self) -> None:
        await self.client.aclose()


class LegacyService:
    def __init__(self, *, backend: LegacyBackend, ledger: Ledger, signer: SessionSigner, gate: ReleaseGate,
                 mint_service, service_name: str = "aws") -> None:  # noqa: ANN001
        self.backend = backend
        self.ledger = ledger
        self.signer = signer
        self.gate = gate
        self.mint_service = mint_service
        self.service_name = service_name

    async def _validated(self, token: str, request_id: str) -> str:
        try:
            return await self.backend.validate(token)
        except ApiError as exc:
            event = AuthFailed(method=METHOD, request_id=request_id, reason=exc.reason or "backend_rejected",  # type: ignore[arg-type]
                               detail=exc.message[:500], address=None)
            await self.ledger.append_async(stream_id("legacy-auth", request_id), 0, [event])
            raise

    async def mint(self, token: str):  # noqa: ANN201
        wallet = await self._validated(token, f"legacy-mint-{uuid.uuid4().hex}")
        return await self.mint_service.mint_legacy(wallet=wallet, token_sha256=token_sha256(token),
                                                   service=self.service_name)

    async def exchange(self, token: str) -> Session:
        request_id = f"exchange-{uuid.uuid4().hex}"
        wallet = await self._validated(token, request_id)
        omni = evm_omni_account(wallet)
        issued = self.signer.issue(omni_account=omni, wallet_address=wallet, identity_type="evm", identity_value=wallet)
        claims = issued.claims
        stream = stream_id("legacy-auth", request_id)
        succeeded = AuthSucceeded(method=METHOD, request_id=request_id, identity_type="evm", identity_value=wallet,
                                  omni_account=omni, wallet_address=wallet)
        session = SessionIssued(jti=claims.jti, kid=issued.kid, omni_account=omni, wallet_address=wallet,
                                identity_type="evm", identity_value=wallet, iat=claims.iat, exp=claims.exp,
                                token_sha256=issued.token_sha256)
        binding_stream = WalletBinding.stream_for(omni, wallet)
        for _ in range(5):
            binding = self.ledger.load(WalletBinding, binding_stream)
            bind = binding.bind(omni_account=omni, address=wallet, role="master", parent_address=None)
            parts = ([(binding_stream, binding.version, bind)] if bind else []) + [(stream, 0, [succeeded, session])]
            try:
                records = await self.ledger.append_many_async(parts)
                break
            except ConcurrencyConflict:
                continue
        else:  # pragma: no cover
            raise ApiError("unavailable", "sign-in contended; retry")
        record = records[-1]
        result = await self.gate.wait_async(record.seq)
        if not result.released:
            await self.ledger.append_async(stream, record.version, [SessionWithheld(
                jti=claims.jti, session_seq=record.seq, reason="anchor_deadline", missing_anchors=result.missing)])
            raise ApiError("anchor_unavailable", f"audit anchors {', '.join(result.missing)} did not confirm the "
                           "session in time; no session was released", reason="anchor_deadline")
        return Session(token=issued.token, kid=issued.kid, expires_at=claims.exp, omni_account=omni,
                       wallet_address=wallet, seq=record.seq, record_hash=record.hash, anchored=result.anchored)
