"""Sign-In with Ethereum (EIP-4361) messages, exactly as the seed issues them (seed-spec §B.5).

The broker issues the message and keeps it; the wallet signs it; verify recovers the signer over the
*stored* text (the client never resends it). Domain, URI, chain id, nonce and expiry are therefore bound
by construction: a signature over any other text recovers some other address (`address_mismatch`).
`parse_message` + `check_message` are a second, explicit line of defence (and what tests use): a
strict parse of our template and the relying-party checks of prior-art §8 (domain, uri, version,
chain-id allow-list, nonce compared as a parsed field, issued-at skew, expiry).

Template (`\\n` separators, no trailing newline):

    {domain} wants you to sign in with your Ethereum account:
    {address_lowercase}

    Authenticate with AgentKeys broker.

    URI: {uri}
    Version: 1
    Chain ID: {chain_id}
    Nonce: {nonce}
    Issued At: {YYYY-MM-DDTHH:MM:SSZ}
    Expiration Time: {issued_at + 2700 s}
    Resources:
    - urn:agentkeys:client:agentkeys

Addresses are lowercase as in the seed (EIP-4361 asks for EIP-55; wallets sign what they are given).
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ledger.identity import normalize_address

from .signatures import verify_personal_sign

SIWE_TTL_SECONDS = 2700
ISSUED_AT_SKEW_SECONDS = 60
STATEMENT = "Authenticate with AgentKeys broker."
RESOURCES = ("urn:agentkeys:client:agentkeys",)
VERSION = "1"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

_DOMAIN = re.compile(r"[^\s/?#]+")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S*")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_CHAIN_ID = re.compile(r"[1-9][0-9]{0,19}")
_NONCE = re.compile(r"[A-Za-z0-9]{8,}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_STATEMENT = re.compile(r"[^\n]+")
_RESOURCE = re.compile(r"- (\S+)")


class SiweMessageError(ValueError):
    """Text that is not a message of our template (names the first offending line)."""


@dataclass(frozen=True, slots=True)
class SiweFields:
    domain: str
    address: str
    statement: str
    uri: str
    version: str
    chain_id: int
    nonce: str
    issued_at: datetime
    expiration_time: datetime
    resources: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SiweChallenge:
    """A freshly issued challenge: what `/v1/auth/wallet/start` returns and the ledger records."""

    request_id: str
    nonce: str
    domain: str
    uri: str
    address: str
    chain_id: int
    issued_at: datetime
    expires_at: datetime
    message: str

    @property
    def issued_at_iso(self) -> str:
        return format_time(self.issued_at)

    @property
    def expires_at_iso(self) -> str:
        return format_time(self.expires_at)

    @property
    def expires_at_unix(self) -> int:
        return int(self.expires_at.timestamp())


# --- building ----------------------------------------------------------------------------------

def siwe_domain_and_uri(issuer: str) -> tuple[str, str]:
    """(domain, uri) from `BROKER_OIDC_ISSUER`: domain = host[:port] (strip `scheme://`, cut at the
    first `/`, and also at `?`/`#`), uri = the issuer verbatim. `http://localhost:8080` ->
    (`localhost:8080`, `http://localhost:8080`)."""
    if not isinstance(issuer, str) or not issuer or any(c.isspace() for c in issuer):
        raise ValueError(f"issuer must be a non-empty URL without whitespace: {issuer!r}")
    rest = issuer.split("://", 1)[1] if "://" in issuer else issuer
    domain = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if not domain:
        raise ValueError(f"issuer has no host: {issuer!r}")
    return domain, issuer


def new_nonce() -> str:
    """128 random bits as 32 lowercase hex characters (the seed's size)."""
    return secrets.token_hex(16)


def new_request_id() -> str:
    return "siwe-" + secrets.token_hex(16)


def _utc(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (naive datetimes are ambiguous)")
    return value.astimezone(UTC).replace(microsecond=0)


def format_time(value: datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SSZ` in UTC, sub-seconds dropped."""
    d = _utc(value, "time")
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}Z"


def parse_time(text: str) -> datetime:
    if not _TIME.fullmatch(text):
        raise ValueError(f"not a YYYY-MM-DDTHH:MM:SSZ time: {text!r}")
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


def render_message(fields: SiweFields) -> str:
    """The exact text of `fields` in our template (inverse of `parse_message`)."""
    for name, value, rx in (("domain", fields.domain, _DOMAIN), ("address", fields.address, _ADDRESS),
                            ("statement", fields.statement, _STATEMENT), ("uri", fields.uri, _URI),
                            ("nonce", fields.nonce, _NONCE)):
        if not isinstance(value, str) or not rx.fullmatch(value):
            raise ValueError(f"bad SIWE {name}: {value!r}")
    if fields.version != VERSION:
        raise ValueError(f"bad SIWE version: {fields.version!r}")
    if isinstance(fields.chain_id, bool) or not isinstance(fields.chain_id, int) \
            or not _CHAIN_ID.fullmatch(str(fields.chain_id)):
        raise ValueError(f"bad SIWE chain id: {fields.chain_id!r}")
    if not fields.resources or any(not isinstance(r, str) or not _RESOURCE.fullmatch("- " + r)
                                   for r in fields.resources):
        raise ValueError(f"bad SIWE resources: {fields.resources!r}")
    lines = [
        f"{fields.domain} wants you to sign in with your Ethereum account:",
        fields.address,
        "",
        fields.statement,
        "",
        f"URI: {fields.uri}",
        f"Version: {fields.version}",
        f"Chain ID: {fields.chain_id}",
        f"Nonce: {fields.nonce}",
        f"Issued At: {format_time(fields.issued_at)}",
        f"Expiration Time: {format_time(fields.expiration_time)}",
        "Resources:",
        *(f"- {r}" for r in fields.resources),
    ]
    return "\n".join(lines)


def build_message(*, domain: str, address: str, uri: str, chain_id: int, nonce: str,
                  issued_at: datetime, expires_at: datetime) -> str:
    """The seed's SIWE message. `address` is validated and lowercased; times must be tz-aware."""
    return render_message(SiweFields(
        domain=domain,
        address=normalize_address(address),
        statement=STATEMENT,
        uri=uri,
        version=VERSION,
        chain_id=chain_id,
        nonce=nonce,
        issued_at=_utc(issued_at, "issued_at"),
        expiration_time=_utc(expires_at, "expires_at"),
        resources=RESOURCES,
    ))


def new_challenge(*, issuer: str, address: str, chain_id: int, now: datetime) -> SiweChallenge:
    """A fresh challenge: new request id and nonce, expiry `now + SIWE_TTL_SECONDS`."""
    domain, uri = siwe_domain_and_uri(issuer)
    issued = _utc(now, "now")
    expires = issued + timedelta(seconds=SIWE_TTL_SECONDS)
    addr = normalize_address(address)
    nonce = new_nonce()
    message = build_message(domain=domain, address=addr, uri=uri, chain_id=chain_id, nonce=nonce,
                            issued_at=issued, expires_at=expires)
    return SiweChallenge(request_id=new_request_id(), nonce=nonce, domain=domain, uri=uri, address=addr,
                         chain_id=chain_id, issued_at=issued, expires_at=expires, message=message)


# --- parsing and checking -----------------------------------------------------------------------

def _field(line: str, prefix: str, rx: re.Pattern[str], lineno: int) -> str:
    if not line.startswith(prefix):
        raise SiweMessageError(f"line {lineno}: expected {prefix!r}")
    value = line[len(prefix):]
    if not rx.fullmatch(value):
        raise SiweMessageError(f"line {lineno}: malformed {prefix.rstrip(': ')!r} value")
    return value


def parse_message(text: str) -> SiweFields:
    """Strict parse of our template (no optional EIP-4361 lines, no `\\r`, no trailing newline)."""
    if not isinstance(text, str):
        raise SiweMessageError("message must be a string")
    if "\r" in text:
        raise SiweMessageError("message contains a carriage return")
    lines = text.split("\n")
    if len(lines) < 13:
        raise SiweMessageError(f"message has {len(lines)} lines, want at least 13")
    header = " wants you to sign in with your Ethereum account:"
    if not lines[0].endswith(header):
        raise SiweMessageError("line 1: expected '<domain> wants you to sign in with your Ethereum account:'")
    domain = lines[0][: -len(header)]
    if not _DOMAIN.fullmatch(domain):
        raise SiweMessageError("line 1: malformed domain")
    address = lines[1]
    if not _ADDRESS.fullmatch(address):
        raise SiweMessageError("line 2: malformed address")
    if lines[2] != "" or lines[4] != "":
        raise SiweMessageError("lines 3 and 5 must be empty")
    statement = lines[3]
    if not _STATEMENT.fullmatch(statement):
        raise SiweMessageError("line 4: empty statement")
    uri = _field(lines[5], "URI: ", _URI, 6)
    version = _field(lines[6], "Version: ", re.compile(r"\S+"), 7)
    chain_id = int(_field(lines[7], "Chain ID: ", _CHAIN_ID, 8))
    nonce = _field(lines[8], "Nonce: ", _NONCE, 9)
    try:
        issued_at = parse_time(_field(lines[9], "Issued At: ", _TIME, 10))
        expiration = parse_time(_field(lines[10], "Expiration Time: ", _TIME, 11))
    except SiweMessageError:
        raise
    except ValueError as exc:
        raise SiweMessageError(f"impossible date: {exc}") from None
    if lines[11] != "Resources:":
        raise SiweMessageError("line 12: expected 'Resources:'")
    resources = tuple(_field(line, "- ", re.compile(r"\S+"), 13 + i) for i, line in enumerate(lines[12:]))
    return SiweFields(domain=domain, address=address, statement=statement, uri=uri, version=version,
                      chain_id=chain_id, nonce=nonce, issued_at=issued_at, expiration_time=expiration,
                      resources=resources)


def _as_datetime(now: datetime | int | float) -> datetime:
    if isinstance(now, datetime):
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        return now.astimezone(UTC)
    if isinstance(now, bool) or not isinstance(now, (int, float)):
        raise TypeError("now must be a datetime or Unix seconds")
    return datetime.fromtimestamp(now, tz=UTC)


def check_message(fields: SiweFields, *, expected_domain: str, expected_uri: str,
                  allowed_chain_ids: Iterable[int], expected_nonce: str,
                  now: datetime | int | float, expected_address: str | None = None,
                  skew_seconds: int = ISSUED_AT_SKEW_SECONDS) -> str | None:
    """The first failed relying-party check, or None. Names, in check order: `domain_mismatch`,
    `uri_mismatch`, `version_unsupported`, `chain_id_not_allowed`, `nonce_mismatch` (the parsed
    field, compared whole, never a substring search), `address_mismatch` (only if
    `expected_address` is given), `issued_in_future` (beyond `skew_seconds`), `expired`
    (now >= expiration time, as the seed's `>= 2700 s after issued_at`)."""
    at = _as_datetime(now)
    if fields.domain != expected_domain:
        return "domain_mismatch"
    if fields.uri != expected_uri:
        return "uri_mismatch"
    if fields.version != VERSION:
        return "version_unsupported"
    if fields.chain_id not in set(allowed_chain_ids):
        return "chain_id_not_allowed"
    if not hmac.compare_digest(fields.nonce.encode("utf-8"), expected_nonce.encode("utf-8")):
        return "nonce_mismatch"
    if expected_address is not None and fields.address.lower() != expected_address.lower():
        return "address_mismatch"
    if fields.issued_at > at + timedelta(seconds=skew_seconds):
        return "issued_in_future"
    if at >= fields.expiration_time:
        return "expired"
    return None


def verify_signed_message(message: str, signature_hex: str, expected_address: str) -> str:
    """EIP-191 recovery over the stored `message`; returns the recovered lowercase address, or raises
    `SignatureError` (parse reasons as `signatures.parse_signature`; `address_mismatch` 401
    "signature recovers to X not Y")."""
    return verify_personal_sign(message, signature_hex, expected_address, label="signature")
