"""`agentkeys-broker keygen` run as a real subprocess (the installed console script)."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from api.keys import load_keyring
from tests.conftest import cli_path


def keygen(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([cli_path(), "keygen", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env=env)


def _fields(stdout: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in stdout.strip().splitlines())


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("agentkeys-broker: error: keygen: ")
    return lines[0]


def test_keygen_writes_a_0600_file_and_prints_kid_and_path(tmp_path: Path) -> None:
    out = tmp_path / "session.json"
    proc = keygen("--purpose", "session", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    fields = _fields(proc.stdout)
    assert fields["path"] == str(out.resolve())
    assert fields["purpose"] == "session"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    doc = json.loads(out.read_text())
    assert doc["kid"] == fields["kid"] and doc["kid"].startswith("ak-session-")
    assert doc["purpose"] == "session"
    assert load_keyring(out, "session").active.kid == doc["kid"]


def test_keygen_under_a_permissive_umask_still_writes_0600(tmp_path: Path) -> None:
    out = tmp_path / "oidc.json"
    proc = subprocess.run(f"umask 000 && exec {cli_path()} keygen --purpose oidc --out {out}", shell=True,  # noqa: S602  the shell sets a umask
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_keygen_refuses_to_overwrite_without_rotate(tmp_path: Path) -> None:
    out = tmp_path / "session.json"
    assert keygen("--purpose", "session", "--out", str(out), cwd=tmp_path).returncode == 0
    before = out.read_bytes()
    proc = keygen("--purpose", "session", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 2
    line = _one_line_error(proc)
    assert "already exists" in line and "--rotate" in line
    assert out.read_bytes() == before
    assert proc.stdout == ""


def test_keygen_rotate_keeps_the_previous_key(tmp_path: Path) -> None:
    out = tmp_path / "session.json"
    first = _fields(keygen("--purpose", "session", "--out", str(out), cwd=tmp_path).stdout)["kid"]
    proc = keygen("--purpose", "session", "--out", str(out), "--rotate", "--retire-after", "7200", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    fields = _fields(proc.stdout)
    assert fields["kid"] != first
    assert fields["previous"].startswith(first + " (verifies until ")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    doc = json.loads(out.read_text())
    assert doc["kid"] == fields["kid"]
    [prev] = doc["previous_keys"]
    assert prev["kid"] == first and prev["purpose"] == "session"
    assert prev["public_key_pem"].startswith("-----BEGIN PUBLIC KEY-----")
    assert "PRIVATE" not in json.dumps(prev)
    ring = load_keyring(out, "session")
    assert set(ring.verification_keys) == {first, fields["kid"]}
    assert [k["kid"] for k in ring.jwks()["keys"]] == [fields["kid"], first]
    assert {e.kid: e.previous_kid for e in ring.signing_key_events()} == {first: None, fields["kid"]: first}


def test_keygen_rotate_refuses_the_other_purpose(tmp_path: Path) -> None:
    out = tmp_path / "k.json"
    assert keygen("--purpose", "session", "--out", str(out), cwd=tmp_path).returncode == 0
    proc = keygen("--purpose", "oidc", "--out", str(out), "--rotate", cwd=tmp_path)
    assert proc.returncode == 1
    assert 'tagged purpose "session"' in _one_line_error(proc)


def test_keygen_rotate_without_a_file_and_bad_arguments(tmp_path: Path) -> None:
    proc = keygen("--purpose", "oidc", "--out", str(tmp_path / "none.json"), "--rotate", cwd=tmp_path)
    assert proc.returncode == 2 and "nothing to rotate" in _one_line_error(proc)
    proc = keygen("--purpose", "oidc", "--out", str(tmp_path / "missing-dir" / "k.json"), cwd=tmp_path)
    assert proc.returncode == 2 and "does not exist" in _one_line_error(proc)
    proc = keygen("--purpose", "signing", "--out", str(tmp_path / "k.json"), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert not (tmp_path / "k.json").exists()


def test_jwks_coordinates_match_the_private_key(tmp_path: Path) -> None:
    out = tmp_path / "oidc.json"
    assert keygen("--purpose", "oidc", "--out", str(out), cwd=tmp_path).returncode == 0
    doc = json.loads(out.read_text())
    key = serialization.load_pem_private_key(doc["private_key_pem"].encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    [jwk] = load_keyring(out, "oidc").jwks()["keys"]
    nums = key.public_key().public_numbers()

    def coord(value: str) -> int:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        assert len(raw) == 32 and "=" not in value
        return int.from_bytes(raw, "big")

    assert (coord(jwk["x"]), coord(jwk["y"])) == (nums.x, nums.y)
    assert jwk["kid"] == doc["kid"] and jwk["alg"] == "ES256" and jwk["crv"] == "P-256"


def test_help_lists_keygen(tmp_path: Path) -> None:
    proc = subprocess.run([cli_path(), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ})
    assert "keygen" in proc.stdout
