"""Signing keypair files: generation, rotation, loading with refusals (seed-spec C.9, D.8).

Two ES256 (P-256) keypairs, each in its own JSON file of mode 0600:

    {"kid": "ak-session-1764392400-1a2b",
     "purpose": "session",                      # "oidc" | "session"
     "created_at": "2026-11-29T05:00:00Z",
     "private_key_pem": "-----BEGIN PRIVATE KEY-----...",   # PKCS#8, P-256
     "previous_keys": [                          # optional: retired keys still verifying
        {"kid", "public_key_pem", "purpose", "created_at", "retired_at", "verify_until": <unix>}]}

The top level is the active signing key and matches the seed's format (an untagged OIDC file, the
seed's legacy shape, loads as `oidc` with a warning). Loading refuses a missing file, a file
readable or writable by group/other, malformed content, a key that is not P-256 PKCS#8, a file
tagged with the other purpose, and an untagged file in the session slot: each as `KeyFileError`
with `reason` and the runbook `anchor` the BOOT_FAIL line names.

Keys are never generated silently: `serve` only loads; `keygen` (api/keys_cli.py) writes; `dev`
generates its own under its state directory (`dev_keyfile`). Rotation (`keygen --rotate`) makes a
new active key and keeps the previous one for verification until the tokens it signed have expired
(`verify_until`). Every key in use is recorded in the ledger as a `SigningKeyRotated` event with its
public JWK only (`Keyring.signing_key_events`), so signatures verify offline from an export.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ledger.events import SigningKeyRotated

log = logging.getLogger("agentkeys.keys")

Purpose = Literal["oidc", "session"]
PURPOSES: tuple[Purpose, ...] = ("oidc", "session")
# Runbook headings (docs/operator-runbook.md) named by BOOT_FAIL lines.
ANCHORS: Mapping[str, str] = {"oidc": "oidc-keypair", "session": "session-keypair"}
# Default lifetime of a retired key for verification: the longest token it may have signed
# (session JWT TTL is at most 86400 s; OIDC tokens at most 3600 s).
DEFAULT_RETIRE_AFTER_SECONDS = 86400
MAX_RETIRE_AFTER_SECONDS = 366 * 86400
MAX_KEYFILE_BYTES = 1 << 20
FILE_MODE = 0o600

_KID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_SEED_KID_UNIX = re.compile(r"^v1-(\d{1,12})$")
_PKCS8_HEADER = "-----BEGIN PRIVATE KEY-----"
_SPKI_HEADER = "-----BEGIN PUBLIC KEY-----"


class KeyFileError(Exception):
    """A keypair file cannot be used (or written). `reason` is one line without the path (the
    BOOT_FAIL line shows the path as its value); `anchor` is the runbook heading;
    `kind` classifies it: `missing`, `exists`, `permissions`, `invalid`, `purpose`, `io`, `usage`."""

    def __init__(self, reason: str, anchor: str, *, path: Path | str | None = None, kind: str = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        self.anchor = anchor
        self.path = Path(path) if path is not None else None
        self.kind = kind


# --- small helpers ---------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def rfc3339(unix: float) -> str:
    """UTC, whole seconds, `Z` suffix."""
    return datetime.fromtimestamp(int(unix), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_rfc3339(value: str) -> datetime:
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError("no UTC offset")
    return parsed


def public_jwk(public_key: ec.EllipticCurvePublicKey, kid: str) -> dict[str, str]:
    """The RFC 7517 JWK of a P-256 public key: unpadded base64url 32-byte coordinates."""
    numbers = public_key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
        "kid": kid,
        "alg": "ES256",
        "use": "sig",
    }


def public_key_from_jwk(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    """The inverse of `public_jwk` (for offline verifiers reading `SigningKeyRotated` events)."""
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise ValueError("not a P-256 EC JWK")

    def coord(name: str) -> int:
        raw = str(jwk[name])
        data = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        if len(data) != 32:
            raise ValueError(f"JWK {name} is not 32 bytes")
        return int.from_bytes(data, "big")

    return ec.EllipticCurvePublicNumbers(coord("x"), coord("y"), ec.SECP256R1()).public_key()


def new_kid(purpose: Purpose, now: float | None = None) -> str:
    unix = int(time.time() if now is None else now)
    return f"ak-{purpose}-{unix}-{secrets.token_hex(2)}"


def _private_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def _public_pem(key: ec.EllipticCurvePublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


# --- the keyring -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicKeyEntry:
    """A verification key: the active key's public half, or a retired key until `verify_until`."""

    kid: str
    purpose: Purpose
    public_key: ec.EllipticCurvePublicKey = field(repr=False, compare=False)
    created_at: str
    retired_at: str | None = None
    verify_until: int | None = None  # None: the active key (no limit)

    @property
    def public_jwk(self) -> dict[str, str]:
        return public_jwk(self.public_key, self.kid)

    def valid_at(self, now: float) -> bool:
        return self.verify_until is None or now <= self.verify_until


@dataclass(frozen=True)
class ActiveKey:
    """The key that signs. Its private half never leaves this object (no repr, no event)."""

    kid: str
    purpose: Purpose
    private_key: ec.EllipticCurvePrivateKey = field(repr=False, compare=False)
    created_at: str

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key.public_key()

    @property
    def public_jwk(self) -> dict[str, str]:
        return public_jwk(self.public_key, self.kid)

    @property
    def entry(self) -> PublicKeyEntry:
        return PublicKeyEntry(self.kid, self.purpose, self.public_key, self.created_at)


@dataclass(frozen=True)
class Keyring:
    """One purpose's keys: the active signing key and the retired keys still verifying."""

    purpose: Purpose
    active: ActiveKey
    previous: tuple[PublicKeyEntry, ...] = ()  # oldest first
    path: Path | None = None

    def entries_at(self, now: float | None = None) -> list[PublicKeyEntry]:
        """Keys in use at `now`, oldest first, the active key last."""
        t = time.time() if now is None else now
        return [p for p in self.previous if p.valid_at(t)] + [self.active.entry]

    def verification_keys_at(self, now: float | None = None) -> dict[str, ec.EllipticCurvePublicKey]:
        return {e.kid: e.public_key for e in self.entries_at(now)}

    @property
    def verification_keys(self) -> dict[str, ec.EllipticCurvePublicKey]:
        """kid -> public key: the active key and every previous key not past `verify_until`."""
        return self.verification_keys_at(None)

    def jwks(self, now: float | None = None) -> dict[str, list[dict[str, str]]]:
        """`{"keys": [...]}`, active key first (for `/.well-known/jwks.json`)."""
        return {"keys": [e.public_jwk for e in reversed(self.entries_at(now))]}

    def signing_key_events(self, now: float | None = None) -> list[SigningKeyRotated]:
        """One `SigningKeyRotated` per key in use, oldest first; `previous_kid` links each key to
        the one it replaced. Public material only. Appending them is idempotent per key (the
        `SigningKey` aggregate, stream `purpose:kid`, records a key once)."""
        events: list[SigningKeyRotated] = []
        previous_kid: str | None = None
        for e in self.entries_at(now):
            events.append(SigningKeyRotated(purpose=self.purpose, kid=e.kid, public_jwk=e.public_jwk,
                                            created_at=e.created_at, previous_kid=previous_kid))
            previous_kid = e.kid
        return events


# --- loading ---------------------------------------------------------------------------------


def _label(purpose: str) -> str:
    return "OIDC" if purpose == "oidc" else "session"


def load_keyring(path: Path | str, expected_purpose: Purpose, *, now: float | None = None) -> Keyring:
    """Load and check a keypair file for the `expected_purpose` slot. Previous keys already past
    `verify_until` at `now` are left out. Raises `KeyFileError`."""
    if expected_purpose not in PURPOSES:
        raise ValueError(f"unknown key purpose {expected_purpose!r}")
    path = Path(path)
    anchor = ANCHORS[expected_purpose]
    label = _label(expected_purpose)
    t = time.time() if now is None else now

    def fail(reason: str, kind: str = "invalid") -> KeyFileError:
        return KeyFileError(reason, anchor, path=path, kind=kind)

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise fail(
            f"{label} keypair file does not exist (run `agentkeys-broker keygen --purpose {expected_purpose} "
            f"--out {path}` first; the broker never generates keys silently)", "missing") from None
    except OSError as exc:
        raise fail(f"cannot stat {label} keypair file: {exc.strerror}", "io") from None
    if not stat.S_ISREG(st.st_mode):
        raise fail(f"{label} keypair path is not a regular file", "invalid")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise fail(f"{label} keypair file has mode {mode:04o}, readable or writable by group/other "
                   f"(run `chmod 600 {path}`)", "permissions")
    if st.st_size > MAX_KEYFILE_BYTES:
        raise fail(f"{label} keypair file is too large ({st.st_size} bytes)")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {label} keypair file: {exc.strerror}", "io") from None
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise fail(f"{label} keypair file is not valid JSON") from None
    if not isinstance(doc, dict):
        raise fail(f"{label} keypair file is not a JSON object")

    # purpose first: a file for the other slot is the mistake D.8 guards against
    purpose = doc.get("purpose")
    if purpose is None:
        if expected_purpose == "session":
            raise fail("keypair file has no \"purpose\" tag; the session slot only accepts files tagged "
                       "\"purpose\": \"session\" (generate one with `agentkeys-broker keygen --purpose session`)",
                       "purpose")
        log.warning("%s: untagged keypair file loaded as purpose oidc (legacy format); "
                    "regenerate or add \"purpose\": \"oidc\"", path)
        purpose = "oidc"
    if not isinstance(purpose, str) or purpose not in PURPOSES:
        raise fail(f"keypair file has an unknown purpose {purpose!r} (want \"oidc\" or \"session\")", "purpose")
    if purpose != expected_purpose:
        raise fail(f"keypair file is tagged purpose \"{purpose}\" but this slot needs \"{expected_purpose}\" "
                   "(the OIDC and session keypairs must be different files)", "purpose")

    kid = doc.get("kid")
    if not isinstance(kid, str) or not _KID.match(kid):
        raise fail(f"{label} keypair file has a missing or malformed \"kid\" (want 1-128 of [A-Za-z0-9._-])")
    pem = doc.get("private_key_pem")
    if not isinstance(pem, str) or not pem.strip():
        raise fail(f"{label} keypair file has no \"private_key_pem\"")
    if _PKCS8_HEADER not in pem:
        raise fail(f"{label} keypair private_key_pem is not an unencrypted PKCS#8 PEM (\"{_PKCS8_HEADER}\")")
    try:
        private_key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError):
        raise fail(f"{label} keypair private_key_pem cannot be parsed as a PKCS#8 private key") from None
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm for unknown key types
        raise fail(f"{label} keypair private_key_pem is unsupported: {type(exc).__name__}") from None
    if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(private_key.curve, ec.SECP256R1):
        raise fail(f"{label} keypair private key is not an EC P-256 key (ES256 needs P-256)")

    created_at = _created_at(doc, kid, st, fail)
    active = ActiveKey(kid=kid, purpose=purpose, private_key=private_key, created_at=created_at)

    previous: list[PublicKeyEntry] = []
    seen = {kid}
    raw_prev = doc.get("previous_keys", [])
    if raw_prev is None:
        raw_prev = []
    if not isinstance(raw_prev, list):
        raise fail(f"{label} keypair \"previous_keys\" is not a list")
    for i, item in enumerate(raw_prev):
        entry = _previous_entry(item, i, purpose, fail)
        if entry.kid in seen:
            raise fail(f"{label} keypair file names kid {entry.kid!r} twice")
        seen.add(entry.kid)
        if entry.valid_at(t):
            previous.append(entry)
    previous.sort(key=lambda e: (e.verify_until or 0, e.created_at))
    return Keyring(purpose=purpose, active=active, previous=tuple(previous), path=path)


def _created_at(doc: Mapping[str, Any], kid: str, st: os.stat_result, fail: Any) -> str:
    value = doc.get("created_at")
    if value is None:  # seed files have none: the kid's timestamp (`v1-<unix>`), else the file's mtime
        m = _SEED_KID_UNIX.match(kid)
        return rfc3339(int(m.group(1)) if m else st.st_mtime)
    if not isinstance(value, str):
        raise fail("keypair \"created_at\" is not an RFC 3339 string")
    try:
        return rfc3339(_parse_rfc3339(value).timestamp())
    except ValueError:
        raise fail(f"keypair \"created_at\" is not an RFC 3339 time: {value!r}") from None


def _previous_entry(item: Any, i: int, purpose: Purpose, fail: Any) -> PublicKeyEntry:
    where = f"previous_keys[{i}]"
    if not isinstance(item, dict):
        raise fail(f"keypair {where} is not an object")
    kid = item.get("kid")
    if not isinstance(kid, str) or not _KID.match(kid):
        raise fail(f"keypair {where} has a missing or malformed \"kid\"")
    if item.get("purpose", purpose) != purpose:
        raise fail(f"keypair {where} is tagged purpose {item.get('purpose')!r}, not {purpose!r}", "purpose")
    pem = item.get("public_key_pem")
    if not isinstance(pem, str) or _SPKI_HEADER not in pem:
        raise fail(f"keypair {where} has no SubjectPublicKeyInfo \"public_key_pem\"")
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except Exception:
        raise fail(f"keypair {where} public_key_pem cannot be parsed") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise fail(f"keypair {where} is not an EC P-256 public key")
    until = item.get("verify_until")
    if not isinstance(until, int) or isinstance(until, bool) or until < 0:
        raise fail(f"keypair {where} \"verify_until\" is not a unix time (integer)")
    stamps: dict[str, str] = {}
    for name in ("created_at", "retired_at"):
        value = item.get(name)
        if not isinstance(value, str):
            raise fail(f"keypair {where} \"{name}\" is not an RFC 3339 string")
        try:
            stamps[name] = rfc3339(_parse_rfc3339(value).timestamp())
        except ValueError:
            raise fail(f"keypair {where} \"{name}\" is not an RFC 3339 time: {value!r}") from None
    return PublicKeyEntry(kid=kid, purpose=purpose, public_key=key, created_at=stamps["created_at"],
                          retired_at=stamps["retired_at"], verify_until=until)


# --- writing ---------------------------------------------------------------------------------


def _document(keyring: Keyring) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "kid": keyring.active.kid,
        "purpose": keyring.purpose,
        "created_at": keyring.active.created_at,
        "private_key_pem": _private_pem(keyring.active.private_key),
    }
    if keyring.previous:
        doc["previous_keys"] = [
            {"kid": p.kid, "public_key_pem": _public_pem(p.public_key), "purpose": p.purpose,
             "created_at": p.created_at, "retired_at": p.retired_at, "verify_until": p.verify_until}
            for p in keyring.previous
        ]
    return doc


def _write_atomic(path: Path, data: bytes, *, replace: bool, anchor: str) -> None:
    """Write `data` to a 0600 temp file beside `path`, fsync, then move it into place: with
    `replace` by rename, otherwise by link (fails if `path` appeared meanwhile)."""
    directory = path.parent
    if not directory.is_dir():
        raise KeyFileError(f"directory {directory} does not exist", anchor, path=path, kind="io")
    tmp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)
    except OSError as exc:
        raise KeyFileError(f"cannot create a file in {directory}: {exc.strerror}", anchor, path=path, kind="io") from None
    try:
        try:
            os.fchmod(fd, FILE_MODE)  # exactly 0600 whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise KeyFileError(_exists_reason(path), anchor, path=path, kind="exists") from None
            except OSError:  # a filesystem without hard links: check, then rename
                if path.exists():
                    raise KeyFileError(_exists_reason(path), anchor, path=path, kind="exists") from None
                os.replace(tmp, path)
    except OSError as exc:
        raise KeyFileError(f"cannot write {path}: {exc.strerror}", anchor, path=path, kind="io") from None
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # some filesystems cannot fsync a directory; the file itself is durable
        pass


def _exists_reason(path: Path) -> str:
    return (f"{path} already exists; refusing to overwrite a signing key "
            "(use --rotate to add a new key and keep the current one for verification)")


def generate_keyfile(
    path: Path | str,
    purpose: Purpose,
    *,
    rotate: bool = False,
    retire_after_seconds: int = DEFAULT_RETIRE_AFTER_SECONDS,
    now: float | None = None,
) -> Keyring:
    """Write a new ES256 keypair file for `purpose` and return its keyring.

    Without `rotate` an existing file is never overwritten. With `rotate` the file must exist and
    load for `purpose`; its active key moves to `previous_keys` with
    `verify_until = now + retire_after_seconds` and previous keys already expired are dropped."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown key purpose {purpose!r}")
    anchor = ANCHORS[purpose]
    path = Path(path)
    if isinstance(retire_after_seconds, bool) or not isinstance(retire_after_seconds, int) \
            or not 0 <= retire_after_seconds <= MAX_RETIRE_AFTER_SECONDS:
        raise KeyFileError(f"retire-after must be an integer in [0, {MAX_RETIRE_AFTER_SECONDS}] seconds",
                           anchor, path=path, kind="usage")
    t = time.time() if now is None else now
    previous: list[PublicKeyEntry] = []
    if rotate:
        if not path.exists():
            raise KeyFileError(f"{path} does not exist; nothing to rotate (run keygen without --rotate first)",
                               anchor, path=path, kind="missing")
        old = load_keyring(path, purpose, now=t)
        previous = [p for p in old.previous if p.valid_at(t)]
        previous.append(PublicKeyEntry(
            kid=old.active.kid, purpose=purpose, public_key=old.active.public_key,
            created_at=old.active.created_at, retired_at=rfc3339(t),
            verify_until=int(t) + retire_after_seconds))
        taken = {p.kid for p in previous}
    else:
        if path.exists() or path.is_symlink():
            raise KeyFileError(_exists_reason(path), anchor, path=path, kind="exists")
        taken = set()
    kid = new_kid(purpose, t)
    while kid in taken:
        kid = new_kid(purpose, t)
    active = ActiveKey(kid=kid, purpose=purpose, private_key=ec.generate_private_key(ec.SECP256R1()),
                       created_at=rfc3339(t))
    keyring = Keyring(purpose=purpose, active=active, previous=tuple(previous), path=path)
    data = (json.dumps(_document(keyring), indent=2) + "\n").encode("ascii")
    _write_atomic(path, data, replace=rotate, anchor=anchor)
    return keyring


def dev_keyfile(state_dir: Path | str, purpose: Purpose) -> Path:
    """`dev` only: the keypair file for `purpose` in the state directory, generated if missing.
    This is the one place a key is generated without an explicit `keygen`."""
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{purpose}-keypair.json"
    if not path.exists():
        try:
            generate_keyfile(path, purpose)
            log.info("dev: generated %s signing key %s", purpose, path)
        except KeyFileError as exc:
            if exc.kind != "exists":  # another dev process won the race: use its file
                raise
    return path
