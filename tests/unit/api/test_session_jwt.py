"""Session JWTs (seed-spec D.7, H 48): issue, then verify in two steps; every attack named."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from pathlib import Path

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from api.auth.session_jwt import (
    AUDIENCE,
    SessionClaims,
    SessionSigner,
    SessionTokenError,
    SignedClaims,
    looks_like_session_jwt,
    verify_claims,
    verify_session_token,
    verify_signature,
)
from api.keys import ActiveKey, Keyring, generate_keyfile, load_keyring
from ledger.events import SessionIssued

ISSUER = "https://broker.example"
OMNI = "7" * 64
WALLET = "0x" + "ab" * 20
T0 = 1_795_000_000
TTL = 18000


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segments(token: str) -> tuple[dict, dict, str]:
    h, p, s = token.split(".")
    dec = lambda x: json.loads(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4)))  # noqa: E731
    return dec(h), dec(p), s


def _forge(header: dict, payload: dict, signature: bytes = b"") -> str:
    return ".".join([_b64(json.dumps(header).encode()), _b64(json.dumps(payload).encode()), _b64(signature)])


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> Keyring:
    path = tmp_path_factory.mktemp("keys") / "session.json"
    generate_keyfile(path, "session", now=T0 - 1000)
    return load_keyring(path, "session", now=T0)


@pytest.fixture(scope="module")
def signer(ring: Keyring) -> SessionSigner:
    return SessionSigner(ring, ISSUER, TTL)


def _issue(signer: SessionSigner, now: float = T0) -> str:
    return signer.issue(OMNI, WALLET, "evm", WALLET, now=now).token


def _reason(token: str, ring: Keyring, *, now: float = T0 + 10, issuer: str = ISSUER) -> str:
    with pytest.raises(SessionTokenError) as info:
        verify_session_token(token, ring, issuer, now=now)
    assert str(info.value).startswith("session jwt: ")
    assert not token or token not in str(info.value)
    return info.value.reason


# --- issuing ---------------------------------------------------------------------------------


def test_claims_shape(signer: SessionSigner, ring: Keyring) -> None:
    issued = signer.issue(OMNI, WALLET, "evm", WALLET, now=T0 + 0.25)
    header, payload, _ = _segments(issued.token)
    assert header == {"alg": "ES256", "kid": ring.active.kid, "typ": "JWT"}
    assert issued.kid == ring.active.kid
    assert payload["exp"] - payload["iat"] == TTL and payload["iat"] == T0
    assert payload["sub"] == "agentkeys:user:" + OMNI
    assert payload["aud"] == AUDIENCE == "agentkeys:broker"
    assert payload["iss"] == ISSUER
    assert re.fullmatch(r"[0-9a-f]+-[0-9a-f]{16}", payload["jti"])
    assert int(payload["jti"].split("-")[0], 16) == T0 * 1_000_000 + 250_000
    assert payload["agentkeys"] == {"omni_account": OMNI, "wallet_address": WALLET,
                                    "identity_type": "evm", "identity_value": WALLET}
    assert set(payload) == {"iss", "sub", "aud", "exp", "iat", "jti", "agentkeys"}
    assert issued.token_sha256 == hashlib.sha256(issued.token.encode()).hexdigest()
    assert issued.claims == verify_session_token(issued.token, ring, ISSUER, now=T0 + 1)
    assert issued.token not in repr(issued)


def test_default_ttl_is_five_hours(ring: Keyring) -> None:
    _, payload, _ = _segments(SessionSigner(ring, ISSUER).issue(OMNI, "", "email", "a@b.c", now=T0).token)
    assert payload["exp"] - payload["iat"] == 18000
    assert payload["agentkeys"]["wallet_address"] == ""


def test_jti_is_unique(signer: SessionSigner) -> None:
    jtis = {signer.issue(OMNI, WALLET, "evm", WALLET, now=T0).claims.jti for _ in range(50)}
    assert len(jtis) == 50


def test_session_issued_event_holds_no_token(signer: SessionSigner) -> None:
    issued = signer.issue(OMNI, WALLET, "evm", WALLET, now=T0)
    event = issued.session_issued_event()
    assert isinstance(event, SessionIssued)
    assert (event.jti, event.kid, event.iat, event.exp) == (issued.claims.jti, issued.kid, T0, T0 + TTL)
    assert event.token_sha256 == issued.token_sha256
    assert issued.token not in json.dumps(event.to_data())


def test_signer_refuses_the_oidc_keyring_and_bad_ttls(tmp_path: Path, ring: Keyring) -> None:
    oidc = generate_keyfile(tmp_path / "oidc.json", "oidc")
    with pytest.raises(ValueError, match="never the OIDC"):
        SessionSigner(oidc, ISSUER, TTL)
    for ttl in (59, 86401, 0):
        with pytest.raises(ValueError):
            SessionSigner(ring, ISSUER, ttl)


def test_signer_refuses_malformed_wallet(signer: SessionSigner) -> None:
    with pytest.raises(ValueError):
        signer.issue(OMNI, "ab" * 20, "evm", "x")


# --- verification in two steps ---------------------------------------------------------------


def test_two_steps(signer: SessionSigner, ring: Keyring) -> None:
    token = _issue(signer)
    signed = verify_signature(token, ring, now=T0)
    assert isinstance(signed, dict) and signed["aud"] == AUDIENCE
    claims = verify_claims(signed, ISSUER, now=T0)
    assert isinstance(claims, SessionClaims) and claims.omni_account == OMNI
    # step 1 checks no claim: an expired, foreign-issuer token still has a valid signature
    old = _issue(SessionSigner(ring, "https://elsewhere.example", 60), now=T0 - 100_000)
    assert verify_signature(old, ring, now=T0)["iss"] == "https://elsewhere.example"


def test_alg_none_is_rejected(signer: SessionSigner, ring: Keyring) -> None:
    header, payload, _ = _segments(_issue(signer))
    for alg in ("none", "None", "NONE", "nOnE"):
        assert _reason(_forge({**header, "alg": alg}, payload), ring) == "alg_not_allowed"
        assert _reason(_forge({"alg": alg, "typ": "JWT"}, payload), ring) == "alg_not_allowed"
    assert _reason(_forge({"kid": ring.active.kid, "typ": "JWT"}, payload), ring) == "alg_not_allowed"


def test_hs256_signed_with_public_key_is_rejected(signer: SessionSigner, ring: Keyring) -> None:
    """The classic key-confusion attack: HMAC keyed with the broker's public key PEM/JWK."""
    _, payload, _ = _segments(_issue(signer))
    public = ring.active.private_key.public_key()
    secrets_tried = [
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint),
        json.dumps(ring.active.public_jwk).encode(),
    ]
    for alg, digest in (("HS256", hashlib.sha256), ("HS384", hashlib.sha384), ("HS512", hashlib.sha512)):
        for secret in secrets_tried:
            header = {"alg": alg, "kid": ring.active.kid, "typ": "JWT"}
            signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
            mac = hmac.new(secret, signing_input.encode(), digest).digest()
            token = f"{signing_input}.{_b64(mac)}"
            assert _reason(token, ring) == "alg_not_allowed"


def test_other_asymmetric_algs_are_rejected(signer: SessionSigner, ring: Keyring) -> None:
    _, payload, _ = _segments(_issue(signer))
    rsa_key = rsa.generate_private_key(65537, 2048)
    token = pyjwt.encode(payload, rsa_key, algorithm="RS256", headers={"kid": ring.active.kid})
    assert _reason(token, ring) == "alg_not_allowed"
    p384 = ec.generate_private_key(ec.SECP384R1())
    token = pyjwt.encode(payload, p384, algorithm="ES384", headers={"kid": ring.active.kid})
    assert _reason(token, ring) == "alg_not_allowed"
    for alg in ("es256", "ES256K", "EdDSA", "PS256", " ES256", 256, None):
        header = {"alg": alg, "kid": ring.active.kid}
        assert _reason(_forge(header, payload, b"\x00" * 64), ring) == "alg_not_allowed"


def test_unknown_kid_is_rejected(signer: SessionSigner, ring: Keyring) -> None:
    token = _issue(signer)
    header, payload, sig = _segments(token)
    # same signature, different kid: refused before any key is tried
    forged = ".".join([_b64(json.dumps({**header, "kid": "ak-session-1-dead"}).encode()), token.split(".")[1], sig])
    assert _reason(forged, ring) == "unknown_kid"
    no_kid = {k: v for k, v in header.items() if k != "kid"}
    assert _reason(".".join([_b64(json.dumps(no_kid).encode()), token.split(".")[1], sig]), ring) == "unknown_kid"
    for bad in (7, None, "", ["x"]):
        h = _b64(json.dumps({**header, "kid": bad}).encode())
        assert _reason(".".join([h, token.split(".")[1], sig]), ring) == "unknown_kid"


def test_token_from_another_keypair_is_rejected(signer: SessionSigner, ring: Keyring) -> None:
    """An attacker's own P-256 key, claiming the broker's kid (seed D.1 case d)."""
    attacker = Keyring(purpose="session",
                       active=ActiveKey(kid=ring.active.kid, purpose="session",
                                        private_key=ec.generate_private_key(ec.SECP256R1()),
                                        created_at="2026-01-01T00:00:00Z"))
    token = SessionSigner(attacker, ISSUER, TTL).issue(OMNI, WALLET, "evm", WALLET, now=T0).token
    assert _segments(token)[0]["kid"] == ring.active.kid
    assert _reason(token, ring) == "bad_signature"


def test_tampered_payload_rejected(signer: SessionSigner, ring: Keyring) -> None:
    token = _issue(signer)
    h, _, s = token.split(".")
    _, payload, _ = _segments(token)
    for change in ({"exp": payload["exp"] + 10**6}, {"sub": "agentkeys:user:" + "0" * 64},
                   {"agentkeys": {**payload["agentkeys"], "wallet_address": "0x" + "00" * 20}}):
        forged = ".".join([h, _b64(json.dumps({**payload, **change}).encode()), s])
        assert _reason(forged, ring) == "bad_signature"
    # a flipped signature byte
    sig = bytearray(base64.urlsafe_b64decode(s + "=="))
    sig[5] ^= 1
    assert _reason(".".join([h, token.split(".")[1], _b64(bytes(sig))]), ring) == "bad_signature"
    # a truncated signature (DER-length confusion)
    assert _reason(".".join([h, token.split(".")[1], _b64(bytes(sig[:63]))]), ring) == "bad_signature"


def test_wrong_audience(ring: Keyring) -> None:
    for aud in ("agentkeys:daemon", "sts.amazonaws.com", ["agentkeys:broker"], ["agentkeys:broker", "x"], None):
        token = _sign(ring, aud=aud)
        assert _reason(token, ring) == "wrong_audience"


def test_wrong_issuer(signer: SessionSigner, ring: Keyring) -> None:
    assert _reason(_issue(signer), ring, issuer="https://other.example") == "wrong_issuer"
    assert _reason(_sign(ring, iss=None), ring) == "wrong_issuer"
    assert _reason(_sign(ring, iss=ISSUER + "/"), ring) == "wrong_issuer"


def test_expired_beyond_leeway_rejected_within_leeway_accepted(signer: SessionSigner, ring: Keyring) -> None:
    token = _issue(signer)
    exp = T0 + TTL
    assert verify_session_token(token, ring, ISSUER, now=exp).exp == exp
    assert verify_session_token(token, ring, ISSUER, now=exp + 60).exp == exp
    assert _reason(token, ring, now=exp + 61) == "expired"
    assert _reason(token, ring, now=exp + 10**6) == "expired"
    with pytest.raises(SessionTokenError) as info:  # leeway is the caller's to set
        verify_claims(verify_signature(token, ring, now=exp + 1), ISSUER, now=exp + 1, leeway=0)
    assert info.value.reason == "expired"


def test_iat_in_the_future_rejected(ring: Keyring) -> None:
    assert _reason(_sign(ring, iat=T0 + 1000, exp=T0 + 2000), ring, now=T0) == "claims_invalid"
    assert verify_session_token(_sign(ring, iat=T0 + 60, exp=T0 + 600), ring, ISSUER, now=T0).iat == T0 + 60


@pytest.mark.parametrize(
    "change",
    [
        {"exp": None}, {"iat": None}, {"exp": "99999999999"}, {"iat": 1.5}, {"exp": True},
        {"sub": "agentkeys:user:" + "8" * 64}, {"sub": None}, {"jti": None}, {"jti": "not-a-jti"},
        {"agentkeys": None}, {"agentkeys": "x"},
        {"agentkeys": {"omni_account": OMNI, "wallet_address": WALLET, "identity_type": "evm"}},
        {"agentkeys": {"omni_account": OMNI, "wallet_address": "nope", "identity_type": "evm", "identity_value": "v"}},
        {"agentkeys": {"omni_account": 5, "wallet_address": "", "identity_type": "evm", "identity_value": "v"}},
        {"exp": T0 + 10**6},  # lifetime beyond the maximum TTL
        {"exp": T0 - 10, "iat": T0},  # exp before iat
        {"nbf": T0 + 10**4},
    ],
)
def test_claims_invalid(ring: Keyring, change: dict) -> None:
    assert _reason(_sign(ring, **change), ring, now=T0) == "claims_invalid"


@pytest.mark.parametrize(
    "token",
    ["", "abc", "eyJ.eyJ", "a.b.c.d", "!!!.eyJ.x", "eyJhbGciOiJFUzI1NiJ9.!!!.x",
     _b64(b"[1]") + ".e30.", _b64(b'{"alg":"ES256"') + ".e30.", "x" * 9000],
)
def test_malformed(ring: Keyring, token: str) -> None:
    assert _reason(token, ring) == "malformed"


def test_unexpected_header_parameters_rejected(signer: SessionSigner, ring: Keyring) -> None:
    _, payload, _ = _segments(_issue(signer))
    for extra in ({"crit": ["b64"], "b64": False}, {"jwk": ring.active.public_jwk}, {"jku": "https://x"},
                  {"typ": "at+jwt"}):
        token = pyjwt.encode(payload, ring.active.private_key, algorithm="ES256",
                             headers={"kid": ring.active.kid, **extra})
        assert _reason(token, ring) == "malformed"


def test_non_object_payload_signed_by_the_key_is_malformed(ring: Keyring) -> None:
    from jwt.api_jws import PyJWS

    token = PyJWS().encode(b"[1,2]", ring.active.private_key, algorithm="ES256",
                           headers={"kid": ring.active.kid, "typ": "JWT"})
    assert _reason(token, ring) == "malformed"


# --- rotation --------------------------------------------------------------------------------


def test_rotation_previous_key_verifies_until_verify_until(tmp_path: Path) -> None:
    path = tmp_path / "session.json"
    generate_keyfile(path, "session", now=T0)
    old_ring = load_keyring(path, "session", now=T0)
    old_token = SessionSigner(old_ring, ISSUER, 3600).issue(OMNI, WALLET, "evm", WALLET, now=T0 + 10).token

    rotated_at = T0 + 100
    generate_keyfile(path, "session", rotate=True, retire_after_seconds=3600, now=rotated_at)
    ring = load_keyring(path, "session", now=rotated_at)
    assert ring.active.kid != old_ring.active.kid
    new = SessionSigner(ring, ISSUER, 3600).issue(OMNI, WALLET, "evm", WALLET, now=rotated_at)
    assert new.kid == ring.active.kid and _segments(new.token)[0]["kid"] == ring.active.kid

    until = rotated_at + 3600
    assert verify_signature(old_token, ring, now=until)["iat"] == T0 + 10
    with pytest.raises(SessionTokenError) as info:
        verify_signature(old_token, ring, now=until + 1)
    assert info.value.reason == "unknown_kid"
    assert verify_signature(new.token, ring, now=until + 1)["jti"] == new.claims.jti
    # reloaded after verify_until, the retired key is gone entirely
    late = load_keyring(path, "session", now=until + 1)
    with pytest.raises(SessionTokenError):
        verify_signature(old_token, late, now=until + 1)


# --- dispatch --------------------------------------------------------------------------------


def test_looks_like_session_jwt(signer: SessionSigner) -> None:
    assert looks_like_session_jwt(_issue(signer))
    assert looks_like_session_jwt("eyJ.a.b")
    assert looks_like_session_jwt("eyJ.a.b.c")  # splitn(3) semantics: the third part keeps the rest
    assert not looks_like_session_jwt("eyJ.a")
    assert not looks_like_session_jwt("abc.def.ghi")
    assert not looks_like_session_jwt("eyJ.a. b")
    assert not looks_like_session_jwt("eyJ.a.b\n")
    assert not looks_like_session_jwt("legacy-opaque-bearer-token")
    assert not looks_like_session_jwt("")


# --- helper ----------------------------------------------------------------------------------

_UNSET = object()


def _sign(ring: Keyring, **changes: object) -> str:
    """A token signed by the real key with claims changed (None = removed)."""
    payload = {
        "iss": ISSUER, "sub": "agentkeys:user:" + OMNI, "aud": AUDIENCE, "iat": T0, "exp": T0 + TTL,
        "jti": f"{T0 * 1_000_000:x}-{'0' * 16}",
        "agentkeys": {"omni_account": OMNI, "wallet_address": WALLET, "identity_type": "evm", "identity_value": WALLET},
    }
    for key, value in changes.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    return pyjwt.encode(payload, ring.active.private_key, algorithm="ES256",
                        headers={"kid": ring.active.kid, "typ": "JWT"})


def test_helper_token_is_valid(ring: Keyring) -> None:
    claims = verify_session_token(_sign(ring), ring, ISSUER, now=T0)
    assert isinstance(SignedClaims(claims.to_dict()), dict)
