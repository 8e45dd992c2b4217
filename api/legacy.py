"""The legacy bearer backend over HTTP (seed-spec §B.3, §B.6): the `IdentityBackend` port of
`ledger/services/legacy.py`, off unless `BROKER_LEGACY_BEARER=true`.

`GET {BROKER_BACKEND_URL}/session/validate` with `Authorization: Bearer <token>`; the backend
answers `{"wallet": "0x…"}`. A 401 is `backend_rejected`; anything else that is not a wallet
(connection error, timeout, other status, bad body) is `backend_unreachable`.
"""

from __future__ import annotations

import httpx

from ledger.identity import normalize_address
from ledger.services.refusals import Refusal


class LegacyBackend:
    def __init__(self, base_url: str, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)))

    async def validate(self, token: str) -> str:
        """The wallet the backend vouches for, or a `Refusal`."""
        try:
            r = await self.client.get(f"{self.base_url}/session/validate", headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            raise Refusal("backend_unreachable", type(exc).__name__) from None
        if r.status_code == 401:
            message = "session not valid"
            try:
                message = str(r.json().get("message") or message)[:200]
            except (ValueError, AttributeError):
                pass
            raise Refusal("backend_rejected", message)
        if not 200 <= r.status_code < 300:
            raise Refusal("backend_unreachable", f"backend returned {r.status_code}")
        try:
            return normalize_address(str(r.json()["wallet"]))
        except (ValueError, KeyError, TypeError):
            raise Refusal("backend_unreachable", "backend answered without a valid wallet") from None

    async def aclose(self) -> None:
        await self.client.aclose()
