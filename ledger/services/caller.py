"""Who is calling a use case: the identity an edge authenticated (a session JWT's claims)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Caller:
    omni_account: str
    wallet_address: str      # "" when the session has no wallet
    identity_type: str
    identity_value: str
    session_jti: str = ""
