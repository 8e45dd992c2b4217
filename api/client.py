"""The daemon client library: sign in, mint, manage grants, and hand AWS SDKs credentials that
refresh themselves through the broker.

    from api.client import BrokerClient, load_account

    client = BrokerClient("https://broker.example.com", load_account(key_file="~/.agentkeys/daemon.key"))
    creds = client.mint_aws("agent-1", "s3", "my-bucket/<omni_account>/agents/a1/")
    s3 = client.boto3_session("agent-1", "s3", "my-bucket/<omni_account>/agents/a1/").client("s3")

What it does for you (docs/daemon-guide.md explains each step on the wire):

- `sign_in()`: SIWE start -> checks the returned message names this broker, this wallet and an
  allowed chain (the relaying-site defence; the checks are the broker's own, `ledger/siwe.py`)
  -> EIP-191 signature -> verify. The session is kept (in memory, and in `session_file` when given,
  mode 0600) and renewed before it expires; a session the broker refuses as expired or unknown is
  renewed once, automatically.
- `mint_aws()`: the v2 mint body with a fresh `request_id`, `issued_at` from the client's clock, the
  signed top-level `aud` (the broker's issuer without a trailing `/`, design §8 "Access wire"), and
  the EIP-191 signature over exactly the bytes the broker checks: `ledger.services.mint.canonical_signing_input`,
  the server's own function, applied to the body being sent.
- `grant()` / `revoke()` / `grants()`: the master's side (a wallet session of the master).
- `boto3_session()`: a boto3 session whose credentials are botocore `RefreshableCredentials` that
  mint again through the broker shortly before they expire.
- Errors are typed (`BrokerError` and subclasses) and their text says what to do next: which command
  creates a missing grant, how long to wait (`retry_after`), that the clock is off.

Key input: an `eth_account` local account, a hex key file (mode 0600) or an encrypted keystore with a
password file (`load_account`). The key never leaves the process; only signatures are sent.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from eth_account import Account
from eth_account.messages import encode_defunct

DEFAULT_CHAIN_ID = 84532
DEFAULT_TIMEOUT_S = 30.0  # a sign-in or a mint waits for the audit anchors (the broker's deadline, 10 s default)
SESSION_RENEW_MIN_S = 60  # renew a session at least this long before it expires (and a tenth of its lifetime)
SESSION_REFUSALS = frozenset({"expired", "unknown_kid", "bad_signature", "malformed", "wrong_audience", "claims_invalid",
                              "wrong_issuer", "revoked", "session_revoked"})
GRANT_REASONS = frozenset({"no_grant", "grant_revoked", "grant_expired", "grant_exhausted", "scope_not_granted",
                           "agent_not_granted"})

Clock = Callable[[], float]


# --- errors ----------------------------------------------------------------------------------------


class BrokerError(Exception):
    """A refusal or failure, with the broker's wire fields (`status`, `error`, `reason`, `message`)
    and a `hint` saying what to do. `str()` is one line: what happened, then what to do."""

    def __init__(self, message: str, *, status: int | None = None, error: str | None = None,
                 reason: str | None = None, hint: str = "", retry_after: float | None = None) -> None:
        self.message = message
        self.status = status
        self.error = error
        self.reason = reason
        self.hint = hint
        self.retry_after = retry_after
        super().__init__(self._text())

    def _text(self) -> str:
        head = f"HTTP {self.status} {self.error}" + (f" ({self.reason})" if self.reason else "") + ": " \
            if self.status else ""
        return head + self.message + (f" -- {self.hint}" if self.hint else "")

    @property
    def temporary(self) -> bool:
        """True when the same call may succeed later (after `retry_after` seconds if set)."""
        return False


class ConfigurationError(BrokerError):
    """A local problem: a key file, keystore or password file that cannot be used, a bad URL."""


class BrokerUnreachable(BrokerError):
    """No HTTP answer (connection refused, timeout). A mint whose answer was lost may have been
    recorded: the next mint uses a fresh `request_id`, so retrying is safe."""

    @property
    def temporary(self) -> bool:
        return True


class BadRequest(BrokerError):
    """400: the request is malformed or names an unknown service / an invalid scope."""


class ClockSkew(BadRequest):
    """The client's clock is too far from the broker's (`stale_request`, or a SIWE message issued in
    the future). `skew_seconds` is the measured offset (broker minus client) when known."""

    def __init__(self, message: str, *, skew_seconds: float | None = None, **kw: Any) -> None:
        self.skew_seconds = skew_seconds
        super().__init__(message, **kw)


class AuthenticationFailed(BrokerError):
    """401: the session or a signature was refused."""


class AccessDenied(BrokerError):
    """403: the caller may not do this (not its namespace, daemon bound to another master, ...)."""


class GrantRequired(AccessDenied):
    """403 with a grant reason (`no_grant`, `grant_revoked`, `grant_expired`, `grant_exhausted`,
    `scope_not_granted`, `agent_not_granted`): the hint names the command the daemon's master runs."""


class RequestReplayed(BrokerError):
    """409 `request_replayed`: the request id was already spent (the client never reuses one)."""


class RateLimited(BrokerError):
    """429: wait `retry_after` seconds (the broker's `Retry-After`)."""

    @property
    def temporary(self) -> bool:
        return True


class AnchorUnavailable(BrokerError):
    """503 `anchor_unavailable`: the audit anchors did not confirm in time; nothing was released.
    Retry after `retry_after` seconds with a new request (the client makes a new request id)."""

    @property
    def temporary(self) -> bool:
        return True


class BrokerUnavailable(BrokerError):
    """502/503/500: STS or the broker's ledger failed; nothing was released. Retry later."""

    @property
    def temporary(self) -> bool:
        return True


# --- keys ------------------------------------------------------------------------------------------


def _read_private(path: Path, what: str) -> str:
    path = path.expanduser()
    try:
        st = path.stat()
        text = path.read_text()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigurationError(f"{what} {path} is readable by other users (mode {stat.S_IMODE(st.st_mode):04o})",
                                 hint=f"run `chmod 600 {path}`")
    return text


def load_account(*, key_file: str | Path | None = None, keystore: str | Path | None = None,
                 password_file: str | Path | None = None) -> Any:
    """An eth_account `LocalAccount` from a hex key file (64 hex digits, optional `0x`, mode 0600) or
    from an encrypted JSON keystore and a file holding its password (both mode 0600)."""
    if (key_file is None) == (keystore is None):
        raise ConfigurationError("give either a key file or a keystore (with a password file)")
    if key_file is not None:
        text = _read_private(Path(key_file), "key file").strip()
        hexkey = text[2:] if text.lower().startswith("0x") else text
        if len(hexkey) != 64 or any(c not in "0123456789abcdefABCDEF" for c in hexkey):
            raise ConfigurationError(f"key file {key_file} must hold a 32-byte private key as 64 hex digits")
        return Account.from_key(bytes.fromhex(hexkey))
    if password_file is None:
        raise ConfigurationError("a keystore needs a password file (--password-file)")
    document = _read_private(Path(keystore), "keystore")  # type: ignore[arg-type]  # checked above: not None
    password = _read_private(Path(password_file), "password file").rstrip("\r\n")
    try:
        key = Account.decrypt(json.loads(document), password)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(f"cannot decrypt keystore {keystore}: {exc}",
                                 hint="check the password file and that the file is an Ethereum keystore") from None
    return Account.from_key(key)


def new_key_file(path: str | Path) -> Any:
    """Create a fresh key in a new file of mode 0600 (never over an existing file)."""
    account = Account.create()
    p = Path(path).expanduser()
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("0x" + bytes(account.key).hex() + "\n")
    return account


def write_private_json(path: Path, value: Any) -> None:
    """Atomically replace `path` with `value` as JSON, mode 0600 from the start."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(value, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- values ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    session_jwt: str = field(repr=False)
    expires_at: int  # Unix seconds, this machine's clock (the broker's `expires_at` corrected for skew)
    omni_account: str
    wallet_address: str
    obtained_at: int  # Unix seconds, the client's clock
    seq: int = 0  # the SessionIssued record
    url: str = ""

    def renew_at(self) -> int:
        """A tenth of the lifetime before expiry, at least `SESSION_RENEW_MIN_S` before."""
        lifetime = max(0, self.expires_at - self.obtained_at)
        return self.expires_at - max(SESSION_RENEW_MIN_S, lifetime // 10)

    def fresh(self, now: float) -> bool:
        return now < self.renew_at()


@dataclass(frozen=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: int  # Unix seconds, the broker's clock (STS's expiry)
    seq: int  # the MintAuthorized record
    record_hash: str
    anchored: tuple[str, ...]
    wallet: str
    audit_record_id: str
    local_expiration: int = 0  # the same instant on this machine's clock (0: assume no skew)

    @classmethod
    def from_wire(cls, body: Mapping[str, Any], *, clock_offset: float | None = None) -> AwsCredentials:
        """`clock_offset`: the broker's clock minus ours when the answer arrived (its `Date`), so that
        expiry is judged by our clock even when the two disagree."""
        expiration = int(body["expiration"])
        local = body.get("local_expiration") or (
            int(expiration - clock_offset) - 1 if clock_offset is not None else expiration)
        return cls(access_key_id=body["access_key_id"], secret_access_key=body["secret_access_key"],
                   session_token=body["session_token"], expiration=expiration, seq=int(body["seq"]),
                   record_hash=body["record_hash"], anchored=tuple(body.get("anchored") or ()),
                   wallet=body.get("wallet", ""), audit_record_id=body.get("audit_record_id", ""),
                   local_expiration=int(local))

    @property
    def expires(self) -> int:
        """When these credentials expire, by this machine's clock."""
        return self.local_expiration or self.expiration

    @property
    def expiration_iso(self) -> str:
        """`expires` as RFC 3339 (what local AWS SDKs compare with their clock)."""
        return datetime.fromtimestamp(self.expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def credential_process(self) -> dict[str, Any]:
        """The AWS `credential_process` output (Version 1)."""
        return {"Version": 1, "AccessKeyId": self.access_key_id, "SecretAccessKey": self.secret_access_key,
                "SessionToken": self.session_token, "Expiration": self.expiration_iso}

    def environment(self) -> dict[str, str]:
        """The variables AWS SDKs and the AWS CLI read (as `aws-vault exec` sets them)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
                "AWS_SESSION_TOKEN": self.session_token, "AWS_CREDENTIAL_EXPIRATION": self.expiration_iso}

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["anchored"] = list(self.anchored)
        return d


@dataclass(frozen=True)
class Grant:
    grant_id: str
    daemon_address: str
    service: str
    scope_path: str
    expires_at: int
    max_uses: int
    used_count: int = 0
    granted_at: int = 0
    revoked_at: int | None = None
    master_omni_account: str = ""
    audit_proof: str = field(default="", repr=False)
    agent_id: str | None = None
    agent_id_prefix: str | None = None

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> Grant:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in body.items() if k in known})


# --- the client ------------------------------------------------------------------------------------


def _origin(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"broker URL must be http(s)://host[:port], got {url!r}")
    return url.rstrip("/")


def _retry_after(response: httpx.Response, default: float | None) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
        except (TypeError, ValueError):
            return default


class BrokerClient:
    """One wallet talking to one broker. Thread-safe: a lock serialises sign-ins.

    `url`: the broker's base URL. `issuer`: the broker's public issuer (`BROKER_OIDC_ISSUER`) when
    it differs from `url` (behind a proxy, or in tests); the SIWE message must name its host and the
    mint's `aud` is it. `clock`: Unix seconds (injectable: tests move time forward).
    `session_file`: keep the session there (0600) so that several processes share one sign-in.
    `send_aud`: sign and send the top-level `aud` (on by default)."""

    def __init__(self, url: str, account: Any, *, issuer: str | None = None, chain_id: int = DEFAULT_CHAIN_ID,
                 timeout: float = DEFAULT_TIMEOUT_S, clock: Clock = time.time, session_file: str | Path | None = None,
                 send_aud: bool = True, transport: httpx.BaseTransport | None = None) -> None:
        if not hasattr(account, "sign_message") or not hasattr(account, "address"):
            account = load_account(key_file=account) if isinstance(account, (str, Path)) else account
        self.url = _origin(url)
        self.account = account
        self.address = account.address.lower()
        self.issuer = _origin(issuer) if issuer else self.url
        self.chain_id = chain_id
        self.clock = clock
        self.send_aud = send_aud
        self.session_file = Path(session_file).expanduser() if session_file else None
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport,
                                  headers={"User-Agent": f"agentkeys-broker-client/{_version()}"})
        self._lock = threading.RLock()
        self._session: Session | None = None
        self._last_offset: float | None = None  # the broker's clock minus ours, at the last answer

    @classmethod
    def from_key_file(cls, url: str, key_file: str | Path, **kw: Any) -> BrokerClient:
        """A client for the wallet in a hex key file (mode 0600)."""
        return cls(url, load_account(key_file=key_file), **kw)

    @classmethod
    def from_keystore(cls, url: str, keystore: str | Path, password_file: str | Path, **kw: Any) -> BrokerClient:
        """A client for the wallet in an encrypted keystore, its password in a file (both mode 0600)."""
        return cls(url, load_account(keystore=keystore, password_file=password_file), **kw)

    # -- lifecycle --

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- HTTP --

    def _call(self, method: str, path: str, *, json_body: Any = None, content: bytes | None = None,
              bearer: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        if content is not None:
            headers["Content-Type"] = "application/json"
        try:
            return self._http.request(method, path, json=json_body, content=content, headers=headers)
        except httpx.TimeoutException as exc:
            raise BrokerUnreachable(f"no answer from {self.url}{path} ({type(exc).__name__})",
                                    hint="retry later; raise the timeout if the broker's anchor deadline is long",
                                    retry_after=5) from None
        except httpx.TransportError as exc:
            raise BrokerUnreachable(f"cannot reach the broker at {self.url}: {exc}",
                                    hint="check the URL and that the broker runs (`curl URL/healthz`)",
                                    retry_after=5) from None

    def _error(self, r: httpx.Response, *, context: Mapping[str, Any] | None = None) -> BrokerError:
        try:
            body = r.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {"error": "internal" if r.status_code >= 500 else "bad_request", "message": r.text[:200]}
        kind, reason = str(body.get("error", "?")), body.get("reason")
        message = str(body.get("message", ""))
        kw: dict[str, Any] = {"status": r.status_code, "error": kind, "reason": reason}
        ctx = dict(context or {})
        if r.status_code == 429:
            after = _retry_after(r, 60.0)
            return RateLimited(message, hint=f"wait {after:.0f} s (Retry-After) before trying again",
                               retry_after=after, **kw)
        if kind == "anchor_unavailable":
            after = _retry_after(r, 5.0)
            return AnchorUnavailable(message, hint=f"nothing was released; retry in {after:.0f} s "
                                     "(the broker's /readyz names the anchor)", retry_after=after, **kw)
        if r.status_code in (500, 502, 503, 504):
            after = _retry_after(r, 10.0)
            return BrokerUnavailable(message, hint=f"nothing was released; retry in {after:.0f} s and tell the "
                                     "operator if it persists", retry_after=after, **kw)
        if reason == "stale_request":
            skew = self._measured_skew(r)
            measured = f" (the broker's clock is {skew:+.0f} s from this machine's)" if skew is not None else ""
            return ClockSkew(message, skew_seconds=skew, hint="synchronise this machine's clock (NTP)" + measured,
                             **kw)
        if r.status_code == 403 and reason in GRANT_REASONS:
            return GrantRequired(message, hint=_grant_hint(reason, self.address, ctx), **kw)
        if r.status_code == 403:
            return AccessDenied(message, hint=_forbidden_hint(reason), **kw)
        if r.status_code == 401:
            hint = "sign in again" if reason in SESSION_REFUSALS else \
                "the request must be signed by the session's own wallet"
            return AuthenticationFailed(message, hint=hint, **kw)
        if r.status_code == 409 and reason == "request_replayed":
            return RequestReplayed(message, hint="send a new request id", **kw)
        if r.status_code == 404:
            return BrokerError(message, hint="not found, or not visible to this session", **kw)
        return BadRequest(message, hint=_bad_request_hint(reason), **kw)

    def _measured_skew(self, r: httpx.Response) -> float | None:
        date = r.headers.get("Date")
        if not date:
            return None
        try:
            return parsedate_to_datetime(date).timestamp() - self.clock()
        except (TypeError, ValueError):
            return None

    # -- session --

    def sign_in(self, *, force: bool = False) -> Session:
        """A fresh session for this wallet: the cached one while it is fresh, else a new SIWE sign-in."""
        with self._lock:
            now = self.clock()
            if not force:
                session = self._session or self._load_session()
                if session is not None and session.fresh(now):
                    self._session = session
                    return session
            session = self._sign_in_now()
            self._session = session
            if self.session_file is not None:
                self.session_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                write_private_json(self.session_file, {**asdict(session), "url": self.url})
            return session

    @property
    def session(self) -> Session:
        return self.sign_in()

    def _load_session(self) -> Session | None:
        if self.session_file is None:
            return None
        try:
            doc = json.loads(self.session_file.read_text())
            session = Session(**{k: doc[k] for k in Session.__dataclass_fields__ if k in doc})
        except (OSError, ValueError, TypeError):
            return None
        if session.wallet_address.lower() != self.address or doc.get("url") != self.url:
            return None
        return session

    def _sign_in_now(self) -> Session:
        from ledger.siwe import SiweMessageError, check_message, parse_message, siwe_domain_and_uri

        r = self._call("POST", "/v1/auth/wallet/start", json_body={"address": self.address, "chain_id": self.chain_id})
        if r.status_code != 200:
            raise self._error(r)
        challenge = r.json()
        message = challenge["siwe_message"]
        domain, uri = siwe_domain_and_uri(self.issuer)
        try:
            fields = parse_message(message)
        except SiweMessageError as exc:
            raise AuthenticationFailed(f"refusing to sign: the broker's sign-in message is malformed: {exc}") from None
        problem = check_message(fields, expected_domain=domain, expected_uri=uri, allowed_chain_ids=[self.chain_id],
                                expected_nonce=challenge.get("nonce", fields.nonce), now=self.clock(),
                                expected_address=self.address)
        if problem in ("issued_in_future", "expired"):
            skew = fields.issued_at.timestamp() - self.clock()
            raise ClockSkew(f"refusing to sign: the sign-in message was issued {skew:+.0f} s from this machine's "
                            "clock", skew_seconds=skew, hint="synchronise this machine's clock (NTP)")
        if problem is not None:
            raise AuthenticationFailed(
                f"refusing to sign: the sign-in message fails the {problem} check (it names {fields.domain!r}, "
                f"{fields.uri!r}, chain {fields.chain_id}; expected {domain!r}, {uri!r}, chain {self.chain_id})",
                hint="pass issuer= (the broker's BROKER_OIDC_ISSUER) when you reach it through another address")
        signature = "0x" + bytes(self.account.sign_message(encode_defunct(text=message)).signature).hex()
        r = self._call("POST", "/v1/auth/wallet/verify",
                       json_body={"request_id": challenge["request_id"], "signature": signature})
        if r.status_code != 200:
            raise self._error(r)
        body = r.json()
        offset = self._measured_skew(r) or 0.0
        return Session(session_jwt=body["session_jwt"], expires_at=int(int(body["expires_at"]) - offset),
                       omni_account=body["omni_account"], wallet_address=body["wallet_address"].lower(),
                       obtained_at=int(self.clock()), seq=int(body.get("seq", 0)), url=self.url)

    def _authed(self, method: str, path: str, *, json_body: Any = None, content_fn: Callable[[], bytes] | None = None,
                context: Mapping[str, Any] | None = None) -> Any:
        """A call with the session; a session the broker refuses (expired, key rotated, revoked) is
        renewed once. `content_fn` builds the body anew for the retry (a mint needs a new request id)."""
        for attempt in (0, 1):
            session = self.sign_in(force=attempt == 1)
            content = content_fn() if content_fn is not None else None
            r = self._call(method, path, json_body=json_body, content=content, bearer=session.session_jwt)
            if r.status_code == 200:
                self._last_offset = self._measured_skew(r)
                return r.json()
            err = self._error(r, context=context)
            if attempt == 0 and isinstance(err, AuthenticationFailed) and (
                    err.reason in SESSION_REFUSALS or err.reason is None):
                continue
            raise err
        raise AssertionError("unreachable")

    # -- mint --

    def mint_body(self, agent_id: str, service: str, scope: str = "", *, request_id: str | None = None) -> bytes:
        """The signed v2 mint body, as bytes to send (exposed for tests and for other transports)."""
        from ledger.services.mint import canonical_signing_input  # the broker's own definition of the signed form

        body: dict[str, Any] = {
            "request_id": request_id or f"req-{secrets.token_hex(16)}",
            "issued_at": datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "intent": {"agent_id": agent_id, "service": service, "scope_path": scope},
            "auth": {"address": self.address, "signature": ""},
        }
        if self.send_aud:
            body["aud"] = self.issuer
        signed_form = canonical_signing_input(json.dumps(body, ensure_ascii=False).encode("utf-8"))
        body["auth"]["signature"] = "0x" + bytes(
            self.account.sign_message(encode_defunct(primitive=signed_form)).signature).hex()
        return json.dumps(body, ensure_ascii=False).encode("utf-8")

    def mint_aws(self, agent_id: str, service: str, scope: str = "") -> AwsCredentials:
        """Mint AWS credentials for `agent_id` under the grant covering `service` and `scope`."""
        body = self._authed("POST", "/v1/mint-aws-creds", content_fn=lambda: self.mint_body(agent_id, service, scope),
                            context={"agent_id": agent_id, "service": service, "scope": scope, "url": self.url})
        return AwsCredentials.from_wire(body, clock_offset=self._last_offset)

    # -- grants (masters) --

    def grant(self, daemon_address: str, service: str, scope: str, *, expires_in: int, max_uses: int,
              agent_id: str | None = None, agent_id_prefix: str | None = None) -> Grant:
        """Grant `daemon_address` minting of `service` under `scope` for `expires_in` seconds, at most
        `max_uses` times (optionally only for one `agent_id` or an `agent_id_prefix`)."""
        if agent_id is not None and agent_id_prefix is not None:
            raise ConfigurationError("give agent_id or agent_id_prefix, not both")
        request: dict[str, Any] = {"daemon_address": daemon_address, "service": service, "scope_path": scope,
                                   "expires_at": int(self.clock()) + int(expires_in), "max_uses": int(max_uses)}
        if agent_id is not None:
            request["agent_id"] = agent_id
        if agent_id_prefix is not None:
            request["agent_id_prefix"] = agent_id_prefix
        answer = self._authed("POST", "/v1/grant/create", json_body=request)
        found = [g for g in self.grants() if g.grant_id == answer["grant_id"]]
        if found and (found[0].agent_id, found[0].agent_id_prefix) != (agent_id, agent_id_prefix):
            # a broker that predates agent pinning ignores the field: never leave a wider grant behind
            self.revoke(answer["grant_id"])
            raise BadRequest(f"the broker did not record the agent pin of grant {answer['grant_id']}, so it was "
                             "revoked", hint="this broker does not support --agent-id/--agent-id-prefix; grant "
                             "without them, or upgrade the broker")
        if found:
            return found[0]
        return Grant(grant_id=answer["grant_id"], daemon_address=daemon_address.lower(), service=service,
                     scope_path=scope, expires_at=request["expires_at"], max_uses=max_uses,
                     audit_proof=answer.get("audit_proof", ""), agent_id=agent_id, agent_id_prefix=agent_id_prefix)

    def revoke(self, grant_id: str) -> bool:
        return bool(self._authed("POST", "/v1/grant/revoke", json_body={"grant_id": grant_id}).get("revoked"))

    def grants(self) -> list[Grant]:
        return [Grant.from_wire(g) for g in self._authed("GET", "/v1/grant/list")["grants"]]

    # -- audit --

    def audit_head(self) -> dict[str, Any]:
        r = self._call("GET", "/v1/audit/head")
        if r.status_code != 200:
            raise self._error(r)
        return dict(r.json())

    def proof_bundle(self, seq: int) -> dict[str, Any]:
        """The proof bundle of a record this session may read (404 until its EVM batch is confirmed)."""
        return dict(self._authed("GET", f"/v1/audit/records/{int(seq)}"))

    # -- AWS SDKs --

    def boto3_session(self, agent_id: str, service: str = "s3", scope: str = "", *, region_name: str | None = None,
                      botocore_session: Any = None) -> Any:
        """A boto3 `Session` whose credentials mint through the broker and refresh themselves before
        they expire (botocore `RefreshableCredentials` with refresh windows scaled to the lifetime)."""
        import boto3
        import botocore.session
        from botocore.credentials import CredentialProvider, CredentialResolver

        client = self
        refresher = _Refresher(self, agent_id, service, scope)

        class _BrokerProvider(CredentialProvider):
            METHOD = "agentkeys-broker"
            CANONICAL_NAME = "agentkeys-broker"

            def load(self) -> Any:
                return refresher.credentials(client.clock)

        core = botocore_session or botocore.session.get_session()
        core.register_component("credential_provider", CredentialResolver([_BrokerProvider()]))
        return boto3.Session(botocore_session=core, region_name=region_name)


class _Refresher:
    """Builds the `RefreshableCredentials` of one (agent, service, scope)."""

    def __init__(self, client: BrokerClient, agent_id: str, service: str, scope: str) -> None:
        self.client, self.agent_id, self.service, self.scope = client, agent_id, service, scope
        self.mints = 0

    def metadata(self) -> dict[str, str]:
        creds = self.client.mint_aws(self.agent_id, self.service, self.scope)
        self.mints += 1
        return {"access_key": creds.access_key_id, "secret_key": creds.secret_access_key,
                "token": creds.session_token, "expiry_time": creds.expiration_iso}

    def credentials(self, clock: Clock) -> Any:
        from botocore.credentials import RefreshableCredentials

        def now() -> datetime:
            return datetime.fromtimestamp(clock(), UTC)

        first = self.metadata()
        expiry = datetime.fromisoformat(first["expiry_time"].replace("Z", "+00:00"))
        lifetime = expiry.timestamp() - clock()
        # botocore's defaults (refresh 15 min ahead, block 10 min ahead) would mint on every call for
        # credentials living 15 minutes; scale them to the lifetime, keeping botocore's ratio.
        advisory = int(min(15 * 60, max(30, lifetime / 4)))
        mandatory = int(min(10 * 60, max(15, lifetime / 6)))
        return RefreshableCredentials(first["access_key"], first["secret_key"], first["token"], expiry,
                                      self.metadata, "agentkeys-broker", time_fetcher=now,
                                      advisory_timeout=advisory, mandatory_timeout=mandatory)


# --- hints -----------------------------------------------------------------------------------------


def _grant_command(address: str, ctx: Mapping[str, Any]) -> str:
    scope = ctx.get("scope") or "<bucket>/<master omni_account>/..."
    url = f" --url {ctx['url']}" if ctx.get("url") else ""
    return (f"agentkeys-broker grant create{url} --key-file MASTER.key --daemon {address} "
            f"--service {ctx.get('service', 's3')} --scope {scope} --expires-in 86400 --max-uses 100")


def _grant_hint(reason: str | None, address: str, ctx: Mapping[str, Any]) -> str:
    command = _grant_command(address, ctx)
    what = {
        "no_grant": "no grant covers this wallet, service and scope",
        "grant_revoked": "the grant was revoked",
        "grant_expired": "the grant expired",
        "grant_exhausted": "the grant's uses are spent",
        "scope_not_granted": "the grant does not cover this scope",
        "agent_not_granted": "the grant is pinned to another agent id",
    }.get(reason or "", "a grant is needed")
    return f"{what}; the daemon's master creates one with: {command}"


def _forbidden_hint(reason: str | None) -> str:
    return {
        "scope_not_owned": "a master may grant only inside its own namespace: <bucket>/<its omni_account>/",
        "daemon_bound_elsewhere": "this daemon wallet belongs to another master; that master (or the daemon) "
                                  "releases it first (POST /v1/daemon/release)",
        "not_enrolled": "the operator has not assigned this master a root for the service "
                        "(agentkeys-broker masters assign)",
        "not_owner": "only a wallet (SIWE) session of the owning master may do this",
    }.get(reason or "", "this session may not do that")


def _bad_request_hint(reason: str | None) -> str:
    return {
        "unknown_service": "use a service the broker's catalogue lists",
        "invalid_scope": "a scope is <bucket>/<prefix>/ without wildcards or '..'",
        "invalid_agent_id": "an agent id is 1-64 characters of [A-Za-z0-9._:-]",
        "audience_mismatch": "the mint was signed for another broker: pass issuer= (the broker's "
                             "BROKER_OIDC_ISSUER)",
        "chain_id_not_allowed": "use a chain id the broker allows (chain_id=)",
    }.get(reason or "", "fix the request")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("agentkeys-broker")
    except Exception:  # not installed (running from a checkout)
        return "0"


__all__ = ["AccessDenied", "AnchorUnavailable", "AuthenticationFailed", "AwsCredentials", "BadRequest",
           "BrokerClient", "BrokerError", "BrokerUnavailable", "BrokerUnreachable", "ClockSkew", "ConfigurationError",
           "Grant", "GrantRequired", "RateLimited", "RequestReplayed", "Session", "load_account", "new_key_file",
           "write_private_json"]
