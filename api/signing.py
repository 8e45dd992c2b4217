"""The signing adapters of the use cases' ports (ledger/ports.py), with the session keyring:
`JwtSessionIssuer` (`SessionIssuer`: session JWTs) and `JwsGrantProofSigner` (`GrantProofSigner`:
a grant's `audit_proof`). `verify_audit_proof` is the offline check an auditor runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jwt
import msgspec

from ledger.canonical import canonical_bytes
from ledger.ports import SignedSession

from .auth.session_jwt import SessionSigner
from .keys import Keyring


class JwtSessionIssuer:
    def __init__(self, signer: SessionSigner) -> None:
        self.signer = signer

    def issue(self, *, omni_account: str, wallet_address: str, identity_type: str,
              identity_value: str) -> SignedSession:
        issued = self.signer.issue(omni_account=omni_account, wallet_address=wallet_address,
                                   identity_type=identity_type, identity_value=identity_value)
        return SignedSession(token=issued.token, kid=issued.kid, jti=issued.claims.jti, iat=issued.claims.iat,
                             exp=issued.claims.exp, token_sha256=issued.token_sha256)


def sign_audit_proof(content: Mapping[str, Any], keyring: Keyring) -> str:
    """Compact ES256 JWS over the canonical JSON of the grant content (payload = those bytes)."""
    key = keyring.active
    return jwt.api_jws.encode(canonical_bytes(dict(content)), key.private_key, algorithm="ES256",
                              headers={"kid": key.kid, "typ": "agentkeys-grant+jws"})


def verify_audit_proof(proof: str, public_key: Any) -> dict[str, Any]:
    """Offline check (an auditor uses the public JWK of the `SigningKeyRotated` record named by
    the proof's `kid`); returns the signed grant content."""
    payload = jwt.api_jws.decode(proof, public_key, algorithms=["ES256"])
    return msgspec.json.decode(payload)


class JwsGrantProofSigner:
    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    def sign(self, content: Mapping[str, Any]) -> str:
        return sign_audit_proof(content, self.keyring)
