"""Keypair files (seed-spec C.9, D.8): generation, refusals at load, rotation, JWKS, and the
`SigningKeyRotated` events that let an auditor verify the broker's signatures from an export."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from pathlib import Path

import jwt as pyjwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from api.keys import (
    ANCHORS,
    KeyFileError,
    Keyring,
    dev_keyfile,
    generate_keyfile,
    load_keyring,
    public_key_from_jwk,
)
from ledger.aggregates import SigningKey
from ledger.events import SigningKeyRotated, decode_event

T0 = 1_795_000_000  # 2026-11-18T11:06:40Z
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")


def _pkcs8(key: object) -> str:
    return key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _write(path: Path, doc: object, mode: int = 0o600) -> Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    os.chmod(path, mode)
    return path


def _refusal(path: Path, purpose: str) -> KeyFileError:
    with pytest.raises(KeyFileError) as info:
        load_keyring(path, purpose)  # type: ignore[arg-type]
    assert info.value.anchor == ANCHORS[purpose]
    assert "\n" not in info.value.reason
    return info.value


# --- generation ------------------------------------------------------------------------------


@pytest.mark.parametrize("purpose", ["oidc", "session"])
def test_generated_file_format(tmp_path: Path, purpose: str) -> None:
    path = tmp_path / f"{purpose}.json"
    ring = generate_keyfile(path, purpose, now=T0)  # type: ignore[arg-type]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert set(doc) == {"kid", "purpose", "created_at", "private_key_pem"}
    assert doc["purpose"] == purpose
    assert re.fullmatch(rf"ak-{purpose}-{T0}-[0-9a-f]{{4}}", doc["kid"])
    assert doc["created_at"] == "2026-11-18T11:06:40Z"
    assert doc["private_key_pem"].startswith("-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(doc["private_key_pem"].encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    loaded = load_keyring(path, purpose)  # type: ignore[arg-type]
    assert loaded.active.kid == ring.active.kid == doc["kid"]
    assert loaded.active.public_jwk == ring.active.public_jwk
    assert list(loaded.verification_keys) == [doc["kid"]]
    assert not list(tmp_path.glob(".*.tmp")), "temp file left behind"


def test_generated_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        generate_keyfile(tmp_path / "k.json", "session")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k.json").stat().st_mode) == 0o600


def test_refuses_to_overwrite_without_rotate(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    generate_keyfile(path, "session")
    before = path.read_bytes()
    with pytest.raises(KeyFileError) as info:
        generate_keyfile(path, "session")
    assert info.value.kind == "exists"
    assert "--rotate" in info.value.reason
    assert path.read_bytes() == before


def test_rotate_needs_an_existing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError) as info:
        generate_keyfile(tmp_path / "none.json", "session", rotate=True)
    assert info.value.kind == "missing"
    assert not (tmp_path / "none.json").exists()


def test_jwk_coordinates_match_the_private_key(tmp_path: Path) -> None:
    ring = generate_keyfile(tmp_path / "k.json", "oidc")
    jwk = ring.active.public_jwk
    assert set(jwk) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"], jwk["kid"]) == ("EC", "P-256", "ES256", "sig", ring.active.kid)
    for c in ("x", "y"):
        assert _B64URL.match(jwk[c]) and len(jwk[c]) == 43  # 32 bytes, unpadded
    nums = ring.active.private_key.public_key().public_numbers()
    assert public_key_from_jwk(jwk).public_numbers() == nums
    assert ring.jwks() == {"keys": [jwk]}


# --- refusals at load ------------------------------------------------------------------------


def test_missing_file_refused_with_keygen_hint(tmp_path: Path) -> None:
    exc = _refusal(tmp_path / "absent.json", "oidc")
    assert exc.kind == "missing"
    assert "does not exist" in exc.reason
    assert "agentkeys-broker keygen --purpose oidc --out" in exc.reason
    assert "never generates keys silently" in exc.reason


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660])
def test_group_or_other_access_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "k.json"
    generate_keyfile(path, "session")
    os.chmod(path, mode)
    exc = _refusal(path, "session")
    assert exc.kind == "permissions"
    assert f"{mode:04o}" in exc.reason and "chmod 600" in exc.reason


def test_owner_only_modes_accepted(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    generate_keyfile(path, "session")
    os.chmod(path, 0o400)
    assert load_keyring(path, "session").purpose == "session"


def test_session_file_refused_in_oidc_slot(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    generate_keyfile(path, "session")
    exc = _refusal(path, "oidc")
    assert exc.kind == "purpose" and '"session"' in exc.reason and '"oidc"' in exc.reason


def test_oidc_file_refused_in_session_slot(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    generate_keyfile(path, "oidc")
    exc = _refusal(path, "session")
    assert exc.kind == "purpose" and '"oidc"' in exc.reason


def test_untagged_file_refused_in_session_slot(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = _write(tmp_path / "k.json", {"kid": "v1-1764392400", "private_key_pem": _pkcs8(key)})
    exc = _refusal(path, "session")
    assert exc.kind == "purpose" and "purpose" in exc.reason


def test_untagged_seed_file_loads_as_oidc_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = _write(tmp_path / "k.json", {"kid": "v1-1764392400", "private_key_pem": _pkcs8(key)})
    with caplog.at_level(logging.WARNING, logger="agentkeys.keys"):
        ring = load_keyring(path, "oidc")
    assert ring.purpose == "oidc" and ring.active.kid == "v1-1764392400"
    assert ring.active.created_at == "2025-11-29T05:00:00Z"  # from the seed kid's timestamp
    assert any("untagged" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "content",
    [
        "not json at all",
        "[]",
        '{"kid": "k1", "purpose": "session"}',
        '{"purpose": "session", "private_key_pem": "x"}',
        '{"kid": "k1", "purpose": "session", "private_key_pem": "-----BEGIN PRIVATE KEY-----\\ngarbage\\n-----END PRIVATE '
        'KEY-----\\n"}',
        '{"kid": "bad kid with spaces", "purpose": "session", "private_key_pem": "x"}',
        '{"kid": "k1", "purpose": "both", "private_key_pem": "x"}',
        "",
    ],
    ids=["not-json", "array", "no-pem", "no-kid", "garbage-pem", "bad-kid", "unknown-purpose", "empty"],
)
def test_garbage_refused(tmp_path: Path, content: str) -> None:
    exc = _refusal(_write(tmp_path / "k.json", content), "session")
    assert exc.kind in ("invalid", "purpose")


def test_wrong_curve_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    path = _write(tmp_path / "k.json", {"kid": "k1", "purpose": "session", "private_key_pem": _pkcs8(key)})
    assert "P-256" in _refusal(path, "session").reason


@pytest.mark.parametrize("make", [lambda: rsa.generate_private_key(65537, 2048), ed25519.Ed25519PrivateKey.generate],
                         ids=["rsa", "ed25519"])
def test_non_ec_key_refused(tmp_path: Path, make) -> None:  # noqa: ANN001
    path = _write(tmp_path / "k.json", {"kid": "k1", "purpose": "session", "private_key_pem": _pkcs8(make())})
    assert "P-256" in _refusal(path, "session").reason


def test_sec1_pem_is_not_pkcs8_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    sec1 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode()
    path = _write(tmp_path / "k.json", {"kid": "k1", "purpose": "session", "private_key_pem": sec1})
    assert "PKCS#8" in _refusal(path, "session").reason


def test_encrypted_pkcs8_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    enc = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(b"pw")).decode()
    path = _write(tmp_path / "k.json", {"kid": "k1", "purpose": "session", "private_key_pem": enc})
    assert "PKCS#8" in _refusal(path, "session").reason


def test_directory_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir(mode=0o700)
    assert _refusal(tmp_path / "d", "oidc").kind == "invalid"


# --- rotation --------------------------------------------------------------------------------


def test_rotate_keeps_previous_key_until_verify_until(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    first = generate_keyfile(path, "session", now=T0)
    second = generate_keyfile(path, "session", rotate=True, retire_after_seconds=3600, now=T0 + 100)
    assert second.active.kid != first.active.kid
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["kid"] == second.active.kid
    [prev] = doc["previous_keys"]
    assert prev["kid"] == first.active.kid
    assert prev["verify_until"] == T0 + 100 + 3600
    assert prev["retired_at"] == "2026-11-18T11:08:20Z"
    assert "PRIVATE" not in json.dumps(prev)

    ring = load_keyring(path, "session", now=T0 + 200)
    assert ring.active.kid == second.active.kid
    assert set(ring.verification_keys_at(T0 + 100 + 3600)) == {first.active.kid, second.active.kid}
    assert set(ring.verification_keys_at(T0 + 100 + 3601)) == {second.active.kid}
    assert ring.verification_keys_at(T0 + 200)[first.active.kid].public_numbers() == \
        first.active.public_key.public_numbers()
    assert [k["kid"] for k in ring.jwks(T0 + 200)["keys"]] == [second.active.kid, first.active.kid]
    # loaded after verify_until: the retired key is gone
    late = load_keyring(path, "session", now=T0 + 100 + 3601)
    assert late.previous == () and list(late.verification_keys_at(T0 + 100 + 3601)) == [second.active.kid]


def test_rotation_drops_expired_previous_keys(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    a = generate_keyfile(path, "oidc", now=T0)
    b = generate_keyfile(path, "oidc", rotate=True, retire_after_seconds=100, now=T0 + 10)
    c = generate_keyfile(path, "oidc", rotate=True, retire_after_seconds=100, now=T0 + 50)
    assert [p.kid for p in c.previous] == [a.active.kid, b.active.kid]
    d = generate_keyfile(path, "oidc", rotate=True, retire_after_seconds=100, now=T0 + 200)
    assert [p.kid for p in d.previous] == [c.active.kid]  # a (until T0+110) and b (until T0+150) expired
    assert [p["kid"] for p in json.loads(path.read_text())["previous_keys"]] == [c.active.kid]


def test_rotate_refuses_a_file_of_the_other_purpose(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    generate_keyfile(path, "session")
    before = path.read_bytes()
    with pytest.raises(KeyFileError) as info:
        generate_keyfile(path, "oidc", rotate=True)
    assert info.value.kind == "purpose"
    assert path.read_bytes() == before


def test_rotate_refuses_an_exposed_file(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    generate_keyfile(path, "session")
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError) as info:
        generate_keyfile(path, "session", rotate=True)
    assert info.value.kind == "permissions"


def test_previous_key_of_wrong_purpose_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    generate_keyfile(path, "session", now=T0)
    generate_keyfile(path, "session", rotate=True, now=T0 + 1)
    doc = json.loads(path.read_text())
    doc["previous_keys"][0]["purpose"] = "oidc"
    _write(path, doc)
    assert _refusal(path, "session").kind == "purpose"


# --- SigningKeyRotated -----------------------------------------------------------------------


def test_signing_key_events_round_trip_without_private_material(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    a = generate_keyfile(path, "session", now=T0)
    b = generate_keyfile(path, "session", rotate=True, now=T0 + 10)
    ring = load_keyring(path, "session", now=T0 + 20)
    events = ring.signing_key_events(now=T0 + 20)
    assert [(e.kid, e.previous_kid) for e in events] == [(a.active.kid, None), (b.active.kid, a.active.kid)]
    for e in events:
        assert e.purpose == "session"
        encoded = msgspec.json.encode(e)
        assert b"PRIVATE" not in encoded
        assert '"d"' not in encoded.decode() and "private" not in encoded.decode().lower()
        assert set(e.public_jwk) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
        back = decode_event("SigningKeyRotated", msgspec.json.decode(encoded))
        assert back == e and isinstance(back, SigningKeyRotated)
    assert public_key_from_jwk(events[-1].public_jwk).public_numbers() == \
        ring.active.private_key.public_key().public_numbers()
    assert events[0].created_at == "2026-11-18T11:06:40Z"


def test_signing_keys_recorded_once_and_verifiable_from_export(ledger, tmp_path: Path) -> None:  # noqa: ANN001
    from api.auth.session_jwt import SessionSigner, verify_signature

    path = tmp_path / "k.json"
    generate_keyfile(path, "session")
    ring = load_keyring(path, "session")

    def record(keyring: Keyring) -> None:
        for event in keyring.signing_key_events():
            ledger.execute(SigningKey, SigningKey.stream_for(event.purpose, event.kid),
                           lambda agg, e=event: agg.record(e))

    record(ring)
    record(ring)  # a restart: idempotent
    generate_keyfile(path, "session", rotate=True)
    rotated = load_keyring(path, "session")
    record(rotated)
    records = [r.export_object() for r in ledger.read(0, 100)]
    assert [r["type"] for r in records] == ["SigningKeyRotated", "SigningKeyRotated"]
    assert records[1]["data"]["previous_kid"] == records[0]["data"]["kid"]

    # an auditor with only the export verifies a token signed by either key
    jwks = {r["data"]["kid"]: public_key_from_jwk(r["data"]["public_jwk"]) for r in records}
    for keyring in (ring, rotated):
        token = SessionSigner(keyring, "https://broker.example", 300).issue("ab" * 32, "", "email", "a@b.c").token
        kid = pyjwt.get_unverified_header(token)["kid"]
        assert kid == keyring.active.kid
        claims = pyjwt.decode(token, jwks[kid], algorithms=["ES256"], audience="agentkeys:broker")
        assert claims == dict(verify_signature(token, rotated))


def test_cli_default_retire_after_matches() -> None:
    import api.keys
    import api.keys_cli

    assert api.keys_cli.DEFAULT_RETIRE_AFTER_SECONDS == api.keys.DEFAULT_RETIRE_AFTER_SECONDS == 86400


# --- dev -------------------------------------------------------------------------------------


def test_dev_keyfile_generates_once_in_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    p1 = dev_keyfile(state, "session")
    assert p1 == state / "session-keypair.json"
    assert stat.S_IMODE(p1.stat().st_mode) == 0o600
    kid = load_keyring(p1, "session").active.kid
    assert dev_keyfile(state, "session") == p1
    assert load_keyring(p1, "session").active.kid == kid  # reused, not regenerated
    o = dev_keyfile(state, "oidc")
    assert o != p1 and load_keyring(o, "oidc").purpose == "oidc"
