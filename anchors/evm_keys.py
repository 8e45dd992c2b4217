"""The EVM anchor's fee-payer key: an encrypted keystore (Web3 Secret Storage v3, eth-account's
`Account.encrypt`) unlocked with a password read from a file.

Rules:
- The password file must not be accessible by group or other (mode & 0o077 == 0, as ssh demands of
  private keys); otherwise it is refused before it is read. One trailing newline is stripped.
- The decrypted key lives only in the returned `LocalAccount`; nothing here logs or prints it.
- Every failure is a `KeystoreError` (an `AnchorUnavailable`) whose message names the file and the
  reason, never the password or the key.

`write_keystore` creates a keystore file (mode 0600, never overwriting) for `anchors keystore`.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from .errors import AnchorUnavailable

__all__ = ["KeystoreError", "check_secret_file", "load_fee_payer", "read_password", "write_keystore"]


class KeystoreError(AnchorUnavailable):
    """The fee-payer keystore or its password file cannot be used."""


def check_secret_file(path: Path, what: str) -> None:
    """Refuse a secret file that is missing, not a regular file, or accessible by group/other."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KeystoreError(f"{what} {path}: no such file") from None
    except OSError as exc:
        raise KeystoreError(f"{what} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeystoreError(f"{what} {path}: not a regular file")
    if st.st_mode & 0o077:
        raise KeystoreError(
            f"{what} {path} is accessible by group or other (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"refusing it: chmod 600 {path}"
        )


def read_password(path: str | os.PathLike[str]) -> str:
    """The password in `path` (mode checked first), without one trailing newline."""
    p = Path(path)
    check_secret_file(p, "password file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeystoreError(f"password file {p}: cannot read it: {exc}") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise KeystoreError(f"password file {p} is empty")
    return text


def load_fee_payer(keystore: str | os.PathLike[str], password_file: str | os.PathLike[str]) -> LocalAccount:
    """Decrypt the keystore with the password from `password_file`."""
    password = read_password(password_file)
    k = Path(keystore)
    try:
        data: Any = json.loads(k.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeystoreError(f"keystore {k}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeystoreError(f"keystore {k}: cannot read it: {exc}") from None
    except ValueError:
        raise KeystoreError(f"keystore {k}: not JSON (expected an encrypted keystore, Web3 Secret Storage v3)") from None
    if not isinstance(data, dict) or not isinstance(data.get("crypto") or data.get("Crypto"), dict):
        raise KeystoreError(f"keystore {k}: not an encrypted keystore (no `crypto` object)")
    try:
        key = Account.decrypt(data, password)
    except ValueError as exc:
        reason = "wrong password" if "MAC" in str(exc) else str(exc)
        raise KeystoreError(f"keystore {k}: cannot decrypt it ({reason})") from None
    except Exception as exc:  # malformed keystore fields: KeyError, TypeError, ...
        raise KeystoreError(f"keystore {k}: malformed ({type(exc).__name__})") from None
    account = Account.from_key(key)
    claimed = data.get("address")
    if isinstance(claimed, str) and claimed and claimed.lower().removeprefix("0x") != account.address.lower()[2:]:
        raise KeystoreError(f"keystore {k}: the decrypted key is not the keystore's address {claimed}")
    return account


def write_keystore(
    out: str | os.PathLike[str],
    password: str,
    private_key: str | bytes | None = None,
    *,
    kdf: str | None = None,
    iterations: int | None = None,
) -> LocalAccount:
    """Encrypt `private_key` (a new random key when None) into `out`, mode 0600, refusing to
    overwrite. `kdf`/`iterations` pass through to `Account.encrypt` (default scrypt)."""
    p = Path(out)
    try:  # claim the name first: never overwrite, and fail before the (slow) key derivation
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeystoreError(f"keystore {p} already exists (not overwriting it)") from None
    except OSError as exc:
        raise KeystoreError(f"keystore {p}: cannot create it: {exc.strerror or exc}") from None
    try:
        try:
            account = Account.from_key(private_key) if private_key is not None else Account.create()
        except Exception:
            raise KeystoreError("the private key is not a valid secp256k1 key (64 hex digits)") from None
        blob = Account.encrypt(account.key, password, kdf=kdf, iterations=iterations)  # type: ignore[arg-type]
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            fd = -1
            json.dump(blob, f)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:
        if fd >= 0:
            os.close(fd)
        try:
            p.unlink()
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise KeystoreError(f"keystore {p}: cannot write it: {exc.strerror or exc}") from None
        raise
    return account
