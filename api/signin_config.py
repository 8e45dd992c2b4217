"""Settings of the email magic-link (`email_link`) and Google (`oauth2_google`) sign-in methods.

Read only when the method is listed in `BROKER_AUTH_METHODS` (seed-spec §F.1 "required only when
enabled"); a bad value is a `BootFailure` with the seed's runbook anchors (`email-hmac-key`,
`email-link-construct`, `oauth2-google-client-secret-file`, ...). Key files are read raw and must
hold at least 32 bytes and be private to the broker's user (mode 0600).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .config import BootFailure, Setting

EMAIL_SENDERS = ("ses", "smtp", "print")
GOOGLE_DISCOVERY_URL = "https://accounts.google.com/.well-known/openid-configuration"
MIN_KEY_BYTES = 32

SIGNIN_SETTINGS: tuple[Setting, ...] = (
    Setting("BROKER_EMAIL_HMAC_KEY_PATH", None, "`email_link`: key file (>= 32 random bytes, mode 0600) for "
            "HMAC(email): the ledger stores only that HMAC, never the address. `dev` creates one.",
            "email-hmac-key", "email"),
    Setting("BROKER_EMAIL_SENDER", "ses", "`email_link`: how magic links are sent: `ses` (Amazon SES v2), `smtp` "
            "(`BROKER_SMTP_URL`), `print` (stdout; only with `BROKER_DEV_MODE=true`).", "email-sender", "email"),
    Setting("BROKER_EMAIL_FROM_ADDRESS", None, "`email_link`: sender address (`ses`: a verified SES identity).",
            "email-from-address", "email"),
    Setting("BROKER_SMTP_URL", None, "`email_link` with `smtp`: `smtp://[user:password@]host[:port]` (STARTTLS when "
            "the server offers it), `smtp+starttls://...` (STARTTLS required) or `smtps://...` (implicit TLS).",
            "smtp-url", "email"),
    Setting("BROKER_SES_REGION", None, "`email_link` with `ses`: SES region. Else `BROKER_AWS_REGION`, `REGION`, "
            "`us-east-1`.", "email-sender", "email"),
    Setting("BROKER_SES_ENDPOINT_URL", None, "`email_link` with `ses`: endpoint override (moto in development); "
            "`http://` only to a loopback address or in dev mode.", "email-sender", "email"),
    Setting("BROKER_EMAIL_RATE_LIMIT_PER_EMAIL_HOURLY", "5", "Magic links one address may request per hour, "
            "[1, 1000]; beyond it 429 with Retry-After.", "rate-limits", "email"),
    Setting("BROKER_EMAIL_RATE_LIMIT_PER_IP_MINUTELY", "30", "Magic links one client IP may request per minute "
            "(checked before the per-address limit), [1, 100000].", "rate-limits", "email"),
    Setting("BROKER_OAUTH2_GOOGLE_CLIENT_ID", None, "`oauth2_google`: OAuth client id from the Google console.",
            "oauth2-google-client-id", "oauth2"),
    Setting("BROKER_OAUTH2_GOOGLE_CLIENT_SECRET_FILE", None, "`oauth2_google`: file holding the client secret "
            "(trimmed; mode 0600).", "oauth2-google-client-secret-file", "oauth2"),
    Setting("BROKER_OAUTH2_STATE_HMAC_KEY_PATH", None, "`oauth2_google`: key file (>= 32 random bytes, mode 0600) "
            "signing the `state` parameter and deriving the PKCE verifier and nonce.", "oauth2-state-hmac-key", "oauth2"),
    Setting("BROKER_OAUTH2_REDIRECT_URI", None, "`oauth2_google`: `<public URL>/auth/oauth2/callback`, exactly as "
            "registered in the Google console.", "oauth2-redirect-uri", "oauth2"),
    Setting("BROKER_OAUTH2_GOOGLE_DISCOVERY_URL", GOOGLE_DISCOVERY_URL, "`oauth2_google`: the provider's OpenID "
            "discovery document (authorize, token and JWKS URLs, issuer). `http://` only to a loopback address or "
            "in dev mode.", "oauth2-discovery-url", "oauth2"),
    Setting("BROKER_OAUTH2_JWKS_TTL_SECONDS", "3600", "`oauth2_google`: how long the provider's keys are cached, "
            "[60, 86400] (an unknown `kid` refreshes at once).", "oauth2-discovery-url", "oauth2"),
    Setting("BROKER_OAUTH2_START_RATE_LIMIT_PER_IP_MINUTELY", "30", "OAuth2 sign-ins one client IP may start "
            "per minute, [1, 100000]; beyond it 429 with Retry-After.", "rate-limits", "oauth2"),
)


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    tls: str  # "starttls-opportunistic" | "starttls" | "implicit"
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class EmailLinkSettings:
    hmac_key: bytes = field(repr=False)
    sender: str
    from_address: str
    smtp: SmtpTarget | None = None
    ses_region: str = "us-east-1"
    ses_endpoint_url: str | None = None
    per_email_hourly: int = 5
    per_ip_minutely: int = 30


@dataclass(frozen=True)
class OAuth2GoogleSettings:
    client_id: str
    client_secret: str = field(repr=False)
    state_key: bytes = field(repr=False)
    redirect_uri: str
    discovery_url: str = GOOGLE_DISCOVERY_URL
    jwks_ttl_s: int = 3600
    start_per_ip_minutely: int = 30
    http_timeout_s: float = 10.0


def _raw(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value.strip() if value is not None and value.strip() else None


def _default(name: str) -> str | None:
    return next(s.default for s in SIGNIN_SETTINGS if s.name == name)


def _int(env: Mapping[str, str], name: str, lo: int, hi: int, anchor: str) -> int:
    raw = _raw(env, name) or _default(name)
    try:
        value = int(str(raw))
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise BootFailure(name, env.get(name), f"must be an integer in [{lo}, {hi}]", anchor)
    return value


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _private_file(env: Mapping[str, str], name: str, anchor: str) -> tuple[str, bytes]:
    raw = _raw(env, name)
    if raw is None:
        raise BootFailure(name, None, "required when the sign-in method is enabled", anchor)
    path = Path(raw).expanduser()
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise BootFailure(name, raw, f"cannot read it: {exc.strerror}", anchor) from None
    if st.st_mode & 0o077:
        raise BootFailure(name, raw, "is readable by group/other (chmod 600)", anchor)
    return raw, data


def _key(env: Mapping[str, str], name: str, anchor: str, short_anchor: str) -> bytes:
    raw, data = _private_file(env, name, anchor)
    if len(data) < MIN_KEY_BYTES:
        raise BootFailure(name, raw, f"key file holds {len(data)} bytes; at least {MIN_KEY_BYTES} are required "
                          "(e.g. `head -c 32 /dev/urandom > FILE`)", short_anchor)
    return data


def _http_url(env: Mapping[str, str], name: str, anchor: str, dev_mode: bool, *, required: bool) -> str | None:
    raw = _raw(env, name) or _default(name)
    if raw is None:
        if required:
            raise BootFailure(name, None, "required when the sign-in method is enabled", anchor)
        return None
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise BootFailure(name, raw, "must be an absolute http(s) URL", anchor) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment or parts.username \
            or any(c.isspace() for c in raw):
        raise BootFailure(name, raw, "must be an absolute http(s) URL without credentials or fragment", anchor)
    if parts.scheme == "http" and not (_is_loopback(parts.hostname) or dev_mode):
        raise BootFailure(name, raw, "must be https:// unless it is a loopback address or BROKER_DEV_MODE=true",
                          anchor)
    return raw


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


def _smtp(env: Mapping[str, str]) -> SmtpTarget:
    raw = _raw(env, "BROKER_SMTP_URL")
    if raw is None:
        raise BootFailure("BROKER_SMTP_URL", None, "required with BROKER_EMAIL_SENDER=smtp", "smtp-url")
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        raise BootFailure("BROKER_SMTP_URL", "(hidden)", "is not a valid URL", "smtp-url") from None
    tls = {"smtp": "starttls-opportunistic", "smtp+starttls": "starttls", "smtps": "implicit"}.get(parts.scheme)
    shown = raw if parts.password is None else raw.replace(f":{parts.password}@", ":***@")
    if tls is None or not parts.hostname or (parts.path not in ("", "/")) or parts.query or parts.fragment:
        raise BootFailure("BROKER_SMTP_URL", shown, "must be smtp://, smtp+starttls:// or smtps:// "
                          "[user:password@]host[:port]", "smtp-url")
    default_port = 465 if tls == "implicit" else 587 if tls == "starttls" else 25
    return SmtpTarget(host=parts.hostname, port=port or default_port, tls=tls,
                      username=unquote(parts.username) if parts.username else None,
                      password=unquote(parts.password) if parts.password else None)


def email_link_settings(env: Mapping[str, str], *, dev_mode: bool) -> EmailLinkSettings:
    hmac_key = _key(env, "BROKER_EMAIL_HMAC_KEY_PATH", "email-hmac-key", "email-link-construct")
    sender = (_raw(env, "BROKER_EMAIL_SENDER") or "ses").lower()
    if sender not in EMAIL_SENDERS:
        raise BootFailure("BROKER_EMAIL_SENDER", env.get("BROKER_EMAIL_SENDER"),
                          f"unknown sender (expected {' | '.join(EMAIL_SENDERS)})", "email-sender")
    if sender == "print" and not dev_mode:
        raise BootFailure("BROKER_EMAIL_SENDER", env.get("BROKER_EMAIL_SENDER"),
                          "`print` writes live sign-in links to stdout: only with BROKER_DEV_MODE=true", "email-sender")
    from_address = _raw(env, "BROKER_EMAIL_FROM_ADDRESS")
    if from_address is None:
        if sender != "print":
            raise BootFailure("BROKER_EMAIL_FROM_ADDRESS", None, f"required with BROKER_EMAIL_SENDER={sender}",
                              "email-from-address")
        from_address = "agentkeys@localhost"
    if not _EMAIL.match(from_address):
        raise BootFailure("BROKER_EMAIL_FROM_ADDRESS", from_address, "is not an email address", "email-from-address")
    region = _raw(env, "BROKER_SES_REGION") or _raw(env, "BROKER_AWS_REGION") or _raw(env, "REGION") or "us-east-1"
    return EmailLinkSettings(
        hmac_key=hmac_key, sender=sender, from_address=from_address,
        smtp=_smtp(env) if sender == "smtp" else None,
        ses_region=region,
        ses_endpoint_url=_http_url(env, "BROKER_SES_ENDPOINT_URL", "email-sender", dev_mode, required=False)
        if sender == "ses" else None,
        per_email_hourly=_int(env, "BROKER_EMAIL_RATE_LIMIT_PER_EMAIL_HOURLY", 1, 1000, "rate-limits"),
        per_ip_minutely=_int(env, "BROKER_EMAIL_RATE_LIMIT_PER_IP_MINUTELY", 1, 100_000, "rate-limits"),
    )


def oauth2_google_settings(env: Mapping[str, str], *, dev_mode: bool) -> OAuth2GoogleSettings:
    client_id = _raw(env, "BROKER_OAUTH2_GOOGLE_CLIENT_ID")
    if client_id is None:
        raise BootFailure("BROKER_OAUTH2_GOOGLE_CLIENT_ID", None, "required when oauth2_google is enabled",
                          "oauth2-google-client-id")
    raw, data = _private_file(env, "BROKER_OAUTH2_GOOGLE_CLIENT_SECRET_FILE", "oauth2-google-client-secret-file")
    try:
        secret = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        secret = ""
    if not secret:
        raise BootFailure("BROKER_OAUTH2_GOOGLE_CLIENT_SECRET_FILE", raw, "client secret file is empty after trim",
                          "oauth2-google-client-secret-file")
    state_key = _key(env, "BROKER_OAUTH2_STATE_HMAC_KEY_PATH", "oauth2-state-hmac-key", "oauth2-state-hmac-key")
    redirect = _http_url(env, "BROKER_OAUTH2_REDIRECT_URI", "oauth2-redirect-uri", dev_mode, required=True)
    assert redirect is not None  # noqa: S101  type narrowing of an invariant established just above
    if urlsplit(redirect).query:
        raise BootFailure("BROKER_OAUTH2_REDIRECT_URI", redirect, "must not carry a query", "oauth2-redirect-uri")
    discovery = _http_url(env, "BROKER_OAUTH2_GOOGLE_DISCOVERY_URL", "oauth2-discovery-url", dev_mode, required=True)
    assert discovery is not None  # noqa: S101  type narrowing of an invariant established just above
    return OAuth2GoogleSettings(
        client_id=client_id, client_secret=secret, state_key=state_key, redirect_uri=redirect,
        discovery_url=discovery,
        jwks_ttl_s=_int(env, "BROKER_OAUTH2_JWKS_TTL_SECONDS", 60, 86400, "oauth2-discovery-url"),
        start_per_ip_minutely=_int(env, "BROKER_OAUTH2_START_RATE_LIMIT_PER_IP_MINUTELY", 1, 100_000, "rate-limits"),
    )


def write_key_file(path: Path) -> None:
    """A fresh 32-byte key, mode 0600 (used by `dev` for `BROKER_EMAIL_HMAC_KEY_PATH`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(MIN_KEY_BYTES))
