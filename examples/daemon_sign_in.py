#!/usr/bin/env python3
"""Sign a daemon in to the AgentKeys broker with its Ethereum key (SIWE), as docs/daemon-guide.md
describes, and keep the session JWT for later calls.

    python examples/daemon_sign_in.py --broker-url https://broker.example.com --key-file ~/.agentkeys/daemon.key
    python examples/daemon_sign_in.py --broker-url http://127.0.0.1:8091 --new-key --save-key daemon.key

Steps: POST /v1/auth/wallet/start {address, chain_id} -> check the returned `siwe_message` names this
broker, this address and this chain -> sign that exact text with EIP-191 (`encode_defunct(text=...)`)
-> POST /v1/auth/wallet/verify {request_id, signature} -> keep `session_jwt` and `expires_at`.

With `--session-file`, a session that is still fresh is reused instead of signing in again, and a new
one is written there (mode 0600) when it is due for renewal. The JWT is a bearer credential: it is
written only to that file, never printed.

Prints `omni_account`, `wallet_address` and the expiry. Exit codes: 0 signed in (or reused);
1 refused (a 401 that retrying will not fix); 2 usage error or 400 from the broker;
75 temporarily unavailable after the retries (429, 503, network).

Needs `httpx` and `eth-account` (both in the broker's own dependencies).
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from eth_account import Account
from eth_account.messages import encode_defunct

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_TEMPFAIL = 0, 1, 2, 75
# Reasons a fresh challenge fixes (the old one was used, expired, or is unknown to this broker).
RESTARTABLE_401 = {"challenge_consumed", "challenge_expired", "challenge_unknown"}


class SignInError(Exception):
    def __init__(self, message: str, code: int, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


@dataclass(frozen=True)
class Session:
    session_jwt: str
    session_jwt_kid: str
    expires_at: int  # Unix seconds
    omni_account: str
    wallet_address: str
    obtained_at: int  # Unix seconds, our clock

    def refresh_at(self) -> int:
        """When to sign in again: a tenth of the lifetime before expiry, at least 60 s before."""
        lifetime = max(0, self.expires_at - self.obtained_at)
        return self.expires_at - max(60, lifetime // 10)

    def is_fresh(self, now: float) -> bool:
        return now < self.refresh_at()


# --- keys -----------------------------------------------------------------------------------------


def load_key(path: Path) -> Any:
    """A hex private key (64 hex digits, optional `0x`, surrounding whitespace ignored)."""
    try:
        st = path.stat()
        text = path.read_text().strip()
    except OSError as exc:
        raise SignInError(f"cannot read key file {path}: {exc.strerror}", EXIT_USAGE) from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        print(f"warning: {path} is readable by group/other; chmod 600 it", file=sys.stderr)
    hexkey = text[2:] if text.lower().startswith("0x") else text
    if len(hexkey) != 64 or any(c not in "0123456789abcdefABCDEF" for c in hexkey):
        raise SignInError(f"key file {path} must hold a 32-byte private key as 64 hex digits", EXIT_USAGE)
    return Account.from_key(bytes.fromhex(hexkey))


def save_key(account: Any, path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never overwrite a key
    with os.fdopen(fd, "w") as f:
        f.write("0x" + bytes(account.key).hex() + "\n")


# --- the session file -------------------------------------------------------------------------------


def read_session(path: Path) -> Session | None:
    try:
        doc = json.loads(path.read_text())
        return Session(**{k: doc[k] for k in Session.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_session(session: Session, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(session.__dict__, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


# --- the two calls ----------------------------------------------------------------------------------


def _error(r: httpx.Response) -> SignInError:
    """Turn a broker error answer (`{"error", "message"[, "reason"]}`) into what the daemon does next."""
    try:
        body = r.json()
    except ValueError:
        body = {}
    kind = body.get("error", "?") if isinstance(body, dict) else "?"
    reason = body.get("reason") if isinstance(body, dict) else None
    message = body.get("message", r.text[:200]) if isinstance(body, dict) else r.text[:200]
    text = f"HTTP {r.status_code} {kind}" + (f" ({reason})" if reason else "") + f": {message}"
    if r.status_code == 429:
        try:
            retry_after = float(r.headers.get("Retry-After", "60"))
        except ValueError:
            retry_after = 60.0
        return SignInError(text, EXIT_TEMPFAIL, retry_after=retry_after)
    if r.status_code == 401 and reason in RESTARTABLE_401:
        return SignInError(text, EXIT_TEMPFAIL, retry_after=0)  # start over with a fresh challenge
    if r.status_code in (400, 413):
        return SignInError(text, EXIT_USAGE)
    if r.status_code in (401, 403):
        return SignInError(text, EXIT_REFUSED)
    # 503 anchor_unavailable (nothing was issued), 502/503/500: try again later
    return SignInError(text, EXIT_TEMPFAIL)


def check_message(message: str, *, domain: str, address: str, chain_id: int) -> None:
    """Refuse to sign a message for another site, wallet or chain (SIWE's phishing defence: a
    relaying broker could otherwise have us sign a challenge another broker issued)."""
    lines = message.split("\n")
    want_first = f"{domain} wants you to sign in with your Ethereum account:"
    if not lines or lines[0] != want_first:
        raise SignInError(f"refusing to sign: the message is for {lines[0].split(' ')[0]!r}, not {domain!r} "
                          "(use --expect-domain if the broker's public host differs from --broker-url)", EXIT_REFUSED)
    if len(lines) < 2 or lines[1].lower() != address.lower():
        raise SignInError("refusing to sign: the message names another address", EXIT_REFUSED)
    if f"Chain ID: {chain_id}" not in lines:
        raise SignInError(f"refusing to sign: the message is not for chain id {chain_id}", EXIT_REFUSED)


def sign_in_once(client: httpx.Client, account: Any, *, chain_id: int, domain: str) -> Session:
    address = account.address.lower()
    r = client.post("/v1/auth/wallet/start", json={"address": address, "chain_id": chain_id})
    if r.status_code != 200:
        raise _error(r)
    challenge = r.json()
    message = challenge["siwe_message"]
    check_message(message, domain=domain, address=address, chain_id=chain_id)
    # Sign the exact text, as `personal_sign` does: keccak256("\x19Ethereum Signed Message:\n" + len + text).
    signed = account.sign_message(encode_defunct(text=message))
    signature = "0x" + bytes(signed.signature).hex()
    r = client.post("/v1/auth/wallet/verify", json={"request_id": challenge["request_id"], "signature": signature})
    if r.status_code != 200:
        raise _error(r)
    body = r.json()
    return Session(session_jwt=body["session_jwt"], session_jwt_kid=body["session_jwt_kid"],
                   expires_at=int(body["expires_at"]), omni_account=body["omni_account"],
                   wallet_address=body["wallet_address"], obtained_at=int(time.time()))


def sign_in(client: httpx.Client, account: Any, *, chain_id: int, domain: str, retries: int,
            max_wait: float) -> Session:
    """`sign_in_once`, retrying what is temporary: 429 after Retry-After (if within `max_wait`),
    503 / 5xx / network errors with exponential backoff, a consumed/expired challenge at once."""
    delay = 1.0
    for attempt in range(retries + 1):
        try:
            return sign_in_once(client, account, chain_id=chain_id, domain=domain)
        except httpx.TransportError as exc:
            err = SignInError(f"cannot reach the broker: {type(exc).__name__}: {exc}", EXIT_TEMPFAIL)
        except SignInError as exc:
            err = exc
        if err.code != EXIT_TEMPFAIL or attempt == retries:
            raise err
        wait = err.retry_after if err.retry_after is not None else delay
        if wait > max_wait:
            raise SignInError(f"{err} (Retry-After {wait:.0f} s exceeds --max-wait)", EXIT_TEMPFAIL)
        print(f"sign-in attempt {attempt + 1} failed, retrying in {wait:.1f} s: {err}", file=sys.stderr)
        time.sleep(wait)
        delay = min(delay * 2, 30.0)
    raise AssertionError("unreachable")


# --- main -------------------------------------------------------------------------------------------


def iso(unix: int) -> str:
    return datetime.fromtimestamp(unix, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Sign a daemon in to the AgentKeys broker (SIWE).")
    ap.add_argument("--broker-url", required=True, help="e.g. https://broker.example.com")
    keys = ap.add_mutually_exclusive_group(required=True)
    keys.add_argument("--key-file", type=Path, help="file holding the daemon's hex private key (mode 0600)")
    keys.add_argument("--new-key", action="store_true", help="generate a new key for this run")
    ap.add_argument("--save-key", type=Path, help="with --new-key: write the new key here (0600, never overwritten)")
    ap.add_argument("--chain-id", type=int, default=84532, help="a chain id the broker allows (default 84532)")
    ap.add_argument("--expect-domain", help="the domain the SIWE message must name (default: host[:port] of "
                                            "--broker-url; set it to the public host when behind a proxy)")
    ap.add_argument("--session-file", type=Path, help="reuse a fresh session from here; store a new one here (0600)")
    ap.add_argument("--retries", type=int, default=3, help="retries for 429/503/network errors (default 3)")
    ap.add_argument("--max-wait", type=float, default=60.0, help="longest single wait between retries, s")
    ap.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout, s (the verify answer waits for "
                                                                 "the audit anchors, up to the broker's deadline)")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = ap.parse_args(argv)
    if args.save_key and not args.new_key:
        ap.error("--save-key needs --new-key")

    try:
        account = Account.create() if args.new_key else load_key(args.key_file)
        if args.new_key and args.save_key:
            try:
                save_key(account, args.save_key)
            except OSError as exc:
                raise SignInError(f"cannot write {args.save_key}: {exc.strerror}", EXIT_USAGE) from None
        domain = args.expect_domain or urlsplit(args.broker_url).netloc
        reused = False
        session = read_session(args.session_file) if args.session_file else None
        if session and session.wallet_address == account.address.lower() and session.is_fresh(time.time()):
            reused = True
        else:
            with httpx.Client(base_url=args.broker_url.rstrip("/"), timeout=args.timeout) as client:
                session = sign_in(client, account, chain_id=args.chain_id, domain=domain,
                                  retries=args.retries, max_wait=args.max_wait)
            if args.session_file:
                write_session(session, args.session_file)
    except SignInError as exc:
        print(f"sign-in failed: {exc}", file=sys.stderr)
        return exc.code

    result = {"omni_account": session.omni_account, "wallet_address": session.wallet_address,
              "expires_at": session.expires_at, "expires_at_iso": iso(session.expires_at),
              "refresh_at_iso": iso(session.refresh_at()), "session_jwt_kid": session.session_jwt_kid,
              "reused": reused}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"omni_account: {session.omni_account}")
        print(f"wallet_address: {session.wallet_address}")
        print(f"expires_at: {iso(session.expires_at)} (unix {session.expires_at})")
        print(f"sign in again after: {iso(session.refresh_at())}")
        print("session: reused from " + str(args.session_file) if reused else "session: new")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
