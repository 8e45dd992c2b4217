"""Session JWTs (seed-spec D.7): ES256 with the session keypair, verified in two explicit steps.

    header  {"alg": "ES256", "kid": <session kid>, "typ": "JWT"}
    claims  {"iss": <BROKER_OIDC_ISSUER>, "sub": "agentkeys:user:<omni>", "aud": "agentkeys:broker",
             "exp": iat + ttl, "iat": now, "jti": "<hex unix micros>-<16 hex random>",
             "agentkeys": {"omni_account", "wallet_address": "0x..." | "", "identity_type", "identity_value",
                           "role": "operator" (only for a wallet in BROKER_OPERATOR_WALLETS)}}

Verification never trusts the header: step 1 `verify_signature` requires `alg == "ES256"` exactly
(no `none`, no HS256 keyed with the public key, no RS/ES384...), a `kid` among the keyring's
verification keys (the active key and retired keys until `verify_until`), and a valid signature
(PyJWT restricted to ES256, claim checks off). Step 2 `verify_claims` checks audience, issuer, expiry
(leeway 60 s, as the seed's jsonwebtoken default), issue time and the claim shapes. Every failure is a
`SessionTokenError` with a typed `reason`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal, NewType

import jwt
import msgspec

from ledger.events import SessionIssued

from ..keys import Keyring

ALGORITHM = "ES256"
AUDIENCE = "agentkeys:broker"
SUBJECT_PREFIX = "agentkeys:user:"
DEFAULT_TTL_SECONDS = 18000
MIN_TTL_SECONDS = 60
MAX_TTL_SECONDS = 86400
DEFAULT_LEEWAY_SECONDS = 60
MAX_TOKEN_CHARS = 8192
OPERATOR_ROLE = "operator"

_HEADER_PARAMS = frozenset({"alg", "kid", "typ"})
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_JTI = re.compile(r"^[0-9a-f]{1,16}-[0-9a-f]{16}$")
_WALLET = re.compile(r"^(0x[0-9a-fA-F]{40})?$")

SessionTokenReason = Literal[
    "malformed",
    "alg_not_allowed",
    "unknown_kid",
    "bad_signature",
    "expired",
    "wrong_audience",
    "wrong_issuer",
    "claims_invalid",
]


class SessionTokenError(Exception):
    """A session JWT was refused. `reason` is one of `SessionTokenReason`; the message starts
    with "session jwt: " and never contains the token."""

    def __init__(self, reason: SessionTokenReason, detail: str = "") -> None:
        self.reason: SessionTokenReason = reason
        self.detail = detail
        super().__init__(f"session jwt: {reason}" + (f": {detail}" if detail else ""))


class AgentkeysClaims(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    omni_account: str
    wallet_address: str
    identity_type: str
    identity_value: str
    role: str | None = None  # "operator" for a wallet in BROKER_OPERATOR_WALLETS; absent otherwise


class SessionClaims(msgspec.Struct, frozen=True, kw_only=True):
    iss: str
    sub: str
    aud: str
    exp: int
    iat: int
    jti: str
    agentkeys: AgentkeysClaims

    @property
    def omni_account(self) -> str:
        return self.agentkeys.omni_account

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)


# The payload after step 1: its signature verified by a known key, its claims not yet checked.
SignedClaims = NewType("SignedClaims", dict)


@dataclass(frozen=True, repr=False)
class IssuedSession:
    token: str
    kid: str
    claims: SessionClaims
    token_sha256: str

    def __repr__(self) -> str:  # the token is a bearer credential: never in logs
        return f"IssuedSession(kid={self.kid!r}, jti={self.claims.jti!r})"

    def session_issued_event(self) -> SessionIssued:
        """The ledger record of this session (the token itself only as its SHA-256)."""
        a = self.claims.agentkeys
        return SessionIssued(jti=self.claims.jti, kid=self.kid, omni_account=a.omni_account,
                             wallet_address=a.wallet_address, identity_type=a.identity_type,
                             identity_value=a.identity_value, iat=self.claims.iat, exp=self.claims.exp,
                             token_sha256=self.token_sha256)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def looks_like_session_jwt(token: str) -> bool:
    """Seed B.3 dispatch: starts with `eyJ`, `splitn(3, '.')` yields 3 parts, no whitespace."""
    return (
        isinstance(token, str)
        and token.startswith("eyJ")
        and len(token.split(".", 2)) == 3
        and not any(c.isspace() for c in token)
    )


def new_jti(now: float | None = None) -> str:
    micros = time.time_ns() // 1000 if now is None else int(now * 1_000_000)
    return f"{micros:x}-{secrets.token_hex(8)}"


class SessionSigner:
    """Signs session JWTs with the active key of the session keyring."""

    def __init__(self, keyring: Keyring, issuer: str, ttl_seconds: int = DEFAULT_TTL_SECONDS, *,
                 operator_wallets: tuple[str, ...] | frozenset[str] = ()) -> None:
        if keyring.purpose != "session":
            raise ValueError("session JWTs are signed with the session keypair, never the OIDC keypair")
        if not isinstance(issuer, str) or not issuer:
            raise ValueError("issuer must be a non-empty string")
        if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) \
                or not MIN_TTL_SECONDS <= ttl_seconds <= MAX_TTL_SECONDS:
            raise ValueError(f"session TTL must be an integer in [{MIN_TTL_SECONDS}, {MAX_TTL_SECONDS}]")
        self.keyring = keyring
        self.issuer = issuer
        self.ttl_seconds = ttl_seconds
        self.operator_wallets = frozenset(w.lower() for w in operator_wallets)

    @property
    def kid(self) -> str:
        return self.keyring.active.kid

    def issue(self, omni_account: str, wallet_address: str, identity_type: str, identity_value: str,
              now: float | None = None) -> IssuedSession:
        if not isinstance(omni_account, str) or not omni_account or any(c.isspace() for c in omni_account):
            raise ValueError("omni_account must be a non-empty string without whitespace")
        if not isinstance(wallet_address, str) or not _WALLET.match(wallet_address):
            raise ValueError("wallet_address must be 0x followed by 40 hex digits, or empty")
        if not isinstance(identity_type, str) or not identity_type:
            raise ValueError("identity_type must be a non-empty string")
        if not isinstance(identity_value, str):
            raise ValueError("identity_value must be a string")
        t = time.time() if now is None else now
        iat = int(t)
        claims = SessionClaims(
            iss=self.issuer, sub=SUBJECT_PREFIX + omni_account, aud=AUDIENCE, exp=iat + self.ttl_seconds,
            iat=iat, jti=new_jti(None if now is None else t),
            agentkeys=AgentkeysClaims(omni_account=omni_account, wallet_address=wallet_address,
                                      identity_type=identity_type, identity_value=identity_value,
                                      role=OPERATOR_ROLE if wallet_address and wallet_address.lower()
                                      in self.operator_wallets else None),
        )
        active = self.keyring.active
        token = jwt.encode(claims.to_dict(), active.private_key, algorithm=ALGORITHM,
                           headers={"kid": active.kid, "typ": "JWT"})
        return IssuedSession(token=token, kid=active.kid, claims=claims, token_sha256=token_sha256(token))


# --- verification, step 1: signature ---------------------------------------------------------


def _b64url_json(segment: str, what: str) -> Any:
    if not _B64URL.match(segment):
        raise SessionTokenError("malformed", f"{what} is not base64url")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        return json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        raise SessionTokenError("malformed", f"{what} is not base64url JSON") from None


def unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, parsed but NOT trusted (only used to pick the key and refuse bad algs)."""
    if not isinstance(token, str) or not token:
        raise SessionTokenError("malformed", "empty token")
    if len(token) > MAX_TOKEN_CHARS:
        raise SessionTokenError("malformed", "token too long")
    parts = token.split(".")
    if len(parts) != 3:
        raise SessionTokenError("malformed", "not a compact JWS (3 dot-separated parts)")
    if not all(_B64URL.match(part) for part in parts):
        raise SessionTokenError("malformed", "a part is not base64url")
    header = _b64url_json(parts[0], "header")
    if not isinstance(header, dict):
        raise SessionTokenError("malformed", "header is not a JSON object")
    return header


def verify_signature(token: str, keyring: Keyring, *, now: float | None = None) -> SignedClaims:
    """Step 1: the token is an ES256 JWS signed by a verification key of `keyring` (valid at
    `now`). Returns the payload with no claim checked yet."""
    header = unverified_header(token)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg != ALGORITHM:
        raise SessionTokenError("alg_not_allowed", f"alg {alg!r} is not allowed (only ES256)")
    unexpected = set(header) - _HEADER_PARAMS
    if unexpected:  # crit, b64, jku, jwk, x5u...: never issued by the broker, never honoured
        raise SessionTokenError("malformed", f"unexpected header parameter(s): {', '.join(sorted(unexpected))}")
    if "typ" in header and header["typ"] != "JWT":
        raise SessionTokenError("malformed", "header typ is not JWT")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise SessionTokenError("unknown_kid", "header has no kid")
    key = keyring.verification_keys_at(now).get(kid)
    if key is None:
        raise SessionTokenError("unknown_kid", f"kid {kid[:80]!r} is not a session verification key")
    try:
        payload = jwt.decode(
            token,
            key=key,
            algorithms=[ALGORITHM],
            options={
                "verify_signature": True,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
                "verify_sub": False,
                "verify_jti": False,
                "strict_aud": False,
                "require": [],
                "enforce_minimum_key_length": True,
            },
        )
    except jwt.InvalidSignatureError:
        raise SessionTokenError("bad_signature", "signature does not verify") from None
    except jwt.InvalidAlgorithmError:
        raise SessionTokenError("alg_not_allowed", "algorithm not allowed") from None
    except jwt.PyJWTError:
        raise SessionTokenError("malformed", "the token cannot be decoded") from None
    if not isinstance(payload, dict):  # pragma: no cover - PyJWT guarantees an object
        raise SessionTokenError("malformed", "payload is not a JSON object")
    return SignedClaims(payload)


# --- verification, step 2: claims ------------------------------------------------------------


def _int_claim(payload: dict[str, Any], name: str) -> int:
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SessionTokenError("claims_invalid", f"{name} is missing or not an integer")
    return value


def _str_field(obj: dict[str, Any], name: str, *, nonempty: bool = True) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or (nonempty and not value):
        raise SessionTokenError("claims_invalid", f"agentkeys.{name} is missing or not a string")
    return value


def verify_claims(signed: SignedClaims, issuer: str, *, now: float | None = None,
                  leeway: int = DEFAULT_LEEWAY_SECONDS) -> SessionClaims:
    """Step 2: the claims of a signature-verified payload. `aud == "agentkeys:broker"` exactly,
    `iss == issuer`, `now <= exp + leeway`, `iat <= now + leeway`, the lifetime within the
    maximum TTL, and the `sub`/`jti`/`agentkeys` shapes."""
    payload: dict[str, Any] = dict(signed)
    t = time.time() if now is None else now

    aud = payload.get("aud")
    if not isinstance(aud, str) or aud != AUDIENCE:
        raise SessionTokenError("wrong_audience", f"aud must be {AUDIENCE!r}")
    iss = payload.get("iss")
    if not isinstance(iss, str) or iss != issuer:
        raise SessionTokenError("wrong_issuer", "iss is not this broker's issuer")

    exp = _int_claim(payload, "exp")
    iat = _int_claim(payload, "iat")
    if t > exp + leeway:
        raise SessionTokenError("expired", f"expired at {exp}")
    if iat > t + leeway:
        raise SessionTokenError("claims_invalid", "iat is in the future")
    if not 0 < exp - iat <= MAX_TTL_SECONDS:
        raise SessionTokenError("claims_invalid", f"lifetime exp - iat must be in (0, {MAX_TTL_SECONDS}]")
    if "nbf" in payload:
        nbf = _int_claim(payload, "nbf")
        if nbf > t + leeway:
            raise SessionTokenError("claims_invalid", "not valid yet (nbf)")

    jti = payload.get("jti")
    if not isinstance(jti, str) or not _JTI.match(jti):
        raise SessionTokenError("claims_invalid", "jti is missing or malformed")
    ak = payload.get("agentkeys")
    if not isinstance(ak, dict):
        raise SessionTokenError("claims_invalid", "agentkeys claim is missing or not an object")
    omni = _str_field(ak, "omni_account")
    wallet = _str_field(ak, "wallet_address", nonempty=False)
    if not _WALLET.match(wallet):
        raise SessionTokenError("claims_invalid", "agentkeys.wallet_address is not 0x + 40 hex or empty")
    identity_type = _str_field(ak, "identity_type")
    identity_value = _str_field(ak, "identity_value", nonempty=False)
    role = ak.get("role")
    if role is not None and role != OPERATOR_ROLE:
        raise SessionTokenError("claims_invalid", "agentkeys.role is not a known role")
    sub = payload.get("sub")
    if not isinstance(sub, str) or sub != SUBJECT_PREFIX + omni:
        raise SessionTokenError("claims_invalid", "sub does not name agentkeys.omni_account")

    return SessionClaims(
        iss=iss, sub=sub, aud=aud, exp=exp, iat=iat, jti=jti,
        agentkeys=AgentkeysClaims(omni_account=omni, wallet_address=wallet,
                                  identity_type=identity_type, identity_value=identity_value, role=role),
    )


def verify_session_token(token: str, keyring: Keyring, issuer: str, *, now: float | None = None,
                         leeway: int = DEFAULT_LEEWAY_SECONDS) -> SessionClaims:
    """Both steps, in order: `verify_signature`, then `verify_claims`."""
    signed = verify_signature(token, keyring, now=now)
    return verify_claims(signed, issuer, now=now, leeway=leeway)
