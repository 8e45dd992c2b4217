"""The STS adapter: `BotoStsMinter` implements the `CredentialMinter` port with boto3.

One `AssumeRole` per mint, on the configured role (`api/sts_config.py`), with:

- `RoleSessionName` = `agentkeys-<40 hex of the wallet>-<seq of MintRequested>` (design §8 "STS",
  `ledger.ports.sts_session_name`), known before the call so the ledger names every AssumeRole
  before it is made (a request without `requested_seq` falls back to the seed rule, seed-spec B.3:
  `agentkeys-<safe wallet>-<unix secs>-<micros>`), at most 64 characters;
- `DurationSeconds` from the request (0: `BROKER_SESSION_DURATION_SECONDS`), always in [900, 43200];
- session `Tags` `omni_account`, `agent_id`, `service` (values made valid AWS tag values), none
  transitive; the role's trust policy must allow `sts:TagSession`;
- `SourceIdentity` = the lowercase wallet (CloudTrail ties every later action of the session to the
  wallet); the trust policy must allow `sts:SetSourceIdentity`;
- `RoleArn` and `Policy` from the service catalogue (`ledger/catalogue.py`, `api/access_config.py`):
  the service's role, and its session policy (an `s3_prefix` template narrowed to `scope_path`,
  `api/session_policy.py`, or the fixed policy of a scope-`none` service). Only a service declared
  `unscoped = true` is minted without a policy; an unknown service is never sent.

Port types (`AssumeRoleRequest`, `IssuedCredentials`, `StsError`, `CredentialMinter`) live in
`ledger/ports.py`; `ScopeError` (`api/session_policy.py`) is a `StsError` with code `InvalidScope`
and also a `ValueError`, so a caller may answer it with 400 (a client error) before catching
`StsError` (502).

Two clients, created once and shared (botocore clients are thread-safe; sessions are not, so the
session is used only here), both bounded by `BROKER_STS_TIMEOUT_SECONDS`:

- `client`: AssumeRole and the readiness probe's GetCallerIdentity, with botocore
  `total_max_attempts=1` (one attempt, no automatic retry: a retried AssumeRole would issue a
  credential the ledger never names; note that `max_attempts=1` would mean two attempts);
- `startup_client`: the start-up GetCallerIdentity check only, with `BROKER_STS_MAX_ATTEMPTS`.

Every SDK failure becomes `StsError(code, message, outcome_unknown=...)`: the AWS error code and a
message fit for a client (ARNs, account ids and access key ids redacted); the full error is logged.
`outcome_unknown` is True when the request may have reached STS (read timeout, connection dropped
after sending): the caller then records `MintUnreleased{sts_outcome_unknown}`.
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from ledger.catalogue import Catalogue, ServiceDef
from ledger.ports import AssumeRoleRequest, CredentialMinter, IssuedCredentials, StsError, sts_session_name

from .session_policy import PolicyTemplates, ScopeError, check_fixed_policy
from .sts_config import DURATION_MAX, DURATION_MIN, StsSettings

log = logging.getLogger("agentkeys.sts")

# =============================================================================================
# Request documents (pure functions)

SESSION_NAME_MAX = 64
TAG_VALUE_MAX = 256
SOURCE_IDENTITY_MAX = 64
TAG_KEYS = ("omni_account", "agent_id", "service")
_TAG_EXTRA = set("_.:/=+-@")
_SOURCE_IDENTITY_CHARS = re.compile(r"[^A-Za-z0-9_+=,.@-]")


def session_name(wallet: str, now_ns: int | None = None) -> str:
    """Seed rule (seed-spec B.3): `"agentkeys-" + safe_wallet + "-" + unix_secs + "-" + micros`
    (6 digits), where safe_wallet is the first 40 of the wallet's ASCII letters, digits, `-` and
    `_`; the whole name truncated to 64 characters."""
    ns = time.time_ns() if now_ns is None else now_ns
    secs, micros = ns // 1_000_000_000, (ns // 1_000) % 1_000_000
    safe = "".join(c for c in wallet if (c.isascii() and c.isalnum()) or c in "-_")[:40]
    return f"agentkeys-{safe}-{secs}-{micros:06d}"[:SESSION_NAME_MAX]


def tag_value(value: str) -> str:
    """A valid STS session tag value: letters, separators (spaces), numbers and `_.:/=+-@` kept,
    anything else replaced by `_`; at most 256 characters."""
    out = []
    for c in value[:TAG_VALUE_MAX]:
        cat = unicodedata.category(c)
        out.append(c if cat[0] in "LN" or cat[0] == "Z" or c in _TAG_EXTRA else "_")
    return "".join(out)


def session_tags(request: AssumeRoleRequest) -> tuple[tuple[str, str], ...]:
    return (
        ("omni_account", tag_value(request.omni_account)),
        ("agent_id", tag_value(request.agent_id)),
        ("service", tag_value(request.service)),
    )


def source_identity(wallet: str) -> str | None:
    """The lowercase wallet as `SourceIdentity` (characters outside `[\\w+=,.@-]` become `_`, at most
    64). None when fewer than 2 characters remain: STS would refuse it, so it is not sent."""
    value = _SOURCE_IDENTITY_CHARS.sub("_", wallet.strip().lower())[:SOURCE_IDENTITY_MAX]
    return value if len(value) >= 2 else None


# =============================================================================================
# Error mapping

_ARN = re.compile(r"arn:aws[\w-]*:[A-Za-z0-9-]*:[A-Za-z0-9-]*:\d*:[^\s,;\"'()]+")
_ACCESS_KEY = re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA|AGPA|ANPA|ANVA|APKA)[A-Z0-9]{12,}\b")
_ACCOUNT = re.compile(r"\b\d{12}\b")
MESSAGE_MAX = 300


def safe_message(text: str) -> str:
    """An AWS error message with ARNs, access key ids and account ids replaced, on one line."""
    text = _ARN.sub("<arn>", text)
    text = _ACCESS_KEY.sub("<key-id>", text)
    text = _ACCOUNT.sub("<account>", text)
    text = " ".join(text.split())
    return text[:MESSAGE_MAX]


def to_sts_error(exc: Exception) -> StsError:
    """Map a boto3/botocore exception to `StsError` (order matters: timeouts subclass connection errors)."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {}) or {}
        code = str(err.get("Code") or "ClientError")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = safe_message(str(err.get("Message") or f"STS returned HTTP {status}"))
        return StsError(re.sub(r"[^A-Za-z0-9_.-]", "_", code)[:64], message)
    if isinstance(exc, ReadTimeoutError):
        return StsError("ReadTimeout", "timed out waiting for the STS response", outcome_unknown=True)
    if isinstance(exc, ConnectTimeoutError):
        return StsError("ConnectTimeout", "timed out connecting to the STS endpoint")
    if isinstance(exc, EndpointConnectionError):
        return StsError("EndpointUnreachable", "could not connect to the STS endpoint")
    if isinstance(exc, (BotoConnectionError, HTTPClientError)):
        # connected, then lost (reset, closed mid-response): the request may have been served
        return StsError("EndpointUnreachable", "the connection to the STS endpoint failed", outcome_unknown=True)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return StsError("NoCredentials", "the broker has no usable AWS credentials to call STS with")
    if isinstance(exc, NoRegionError):
        return StsError("NoRegion", "no AWS region is configured for STS")
    if isinstance(exc, ParamValidationError):
        return StsError("ParamValidation", safe_message(str(exc.kwargs.get("report", exc))))
    return StsError("SdkError", f"AWS SDK error ({type(exc).__name__})")


# =============================================================================================
# The adapter


def client_config(settings: StsSettings, *, attempts: int | None = None) -> Config:
    """Bounded timeouts and attempts; `total_max_attempts` counts the first attempt too (1: no
    retry at all). `attempts` None: `BROKER_STS_MAX_ATTEMPTS` (the start-up check only)."""
    return Config(
        region_name=settings.region,
        connect_timeout=settings.timeout_seconds,
        read_timeout=settings.timeout_seconds,
        retries={"total_max_attempts": settings.max_attempts if attempts is None else attempts, "mode": "standard"},
        user_agent_extra="agentkeys-broker",
    )


class BotoStsMinter:
    """`CredentialMinter` over one shared boto3 STS client."""

    def __init__(self, settings: StsSettings, *, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.settings = settings
        self._clock_ns = clock_ns
        session = boto3.session.Session(
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            region_name=settings.region,
        )
        self._client = session.client("sts", endpoint_url=settings.endpoint_url,
                                      config=client_config(settings, attempts=1))
        self._startup_client = session.client("sts", endpoint_url=settings.endpoint_url,
                                              config=client_config(settings))
        catalogue = settings.catalogue
        if catalogue is None:
            template = settings.policy_templates.template("s3")
            catalogue = Catalogue({"s3": ServiceDef(name="s3", role_arn=settings.role_arn, scope="s3_prefix",
                                                    buckets=("unchecked",),  # buckets are the use case's concern
                                                    policy_template=template)})
        self._catalogue: Catalogue = catalogue
        self._templates = PolicyTemplates({svc.name: svc.policy_template for svc in catalogue
                                           if svc.namespaced and svc.policy_template is not None})
        self._fixed = {svc.name: check_fixed_policy(svc.policy_template, f"service {svc.name!r}") for svc in catalogue
                       if not svc.namespaced and svc.policy_template is not None}

    @property
    def client(self) -> Any:
        """The single-attempt boto3 STS client of AssumeRole and the probe (tests hook its `meta.events`)."""
        return self._client

    @property
    def role_arn(self) -> str:
        """The role every AssumeRole assumes (for records naming a call whose answer was lost)."""
        return str(self.settings.role_arn)

    @property
    def startup_client(self) -> Any:
        """The client of the start-up GetCallerIdentity check (`BROKER_STS_MAX_ATTEMPTS` attempts)."""
        return self._startup_client

    def request_params(self, request: AssumeRoleRequest) -> dict[str, Any]:
        """The exact `AssumeRole` parameters for `request` (`duration_seconds` 0 means the configured
        default). Raises `ScopeError` (a bad scope_path) or `StsError("InvalidRequest")` (a duration
        outside [900, 43200]); nothing is sent."""
        duration = request.duration_seconds or self.settings.duration_seconds
        if isinstance(duration, bool) or not isinstance(duration, int) or not DURATION_MIN <= duration <= DURATION_MAX:
            raise StsError("InvalidRequest", f"duration_seconds must be an integer in [{DURATION_MIN}, {DURATION_MAX}]")
        role_arn, policy = self.role_and_policy(request.service, request.scope_path)
        params: dict[str, Any] = {
            "RoleArn": role_arn,
            "RoleSessionName": (sts_session_name(request.wallet, request.requested_seq) if request.requested_seq > 0
                                else session_name(request.wallet, self._clock_ns())),
            "DurationSeconds": duration,
            "Tags": [{"Key": k, "Value": v} for k, v in session_tags(request)],
        }
        identity = source_identity(request.wallet)
        if identity is not None:
            params["SourceIdentity"] = identity
        if policy is not None:
            params["Policy"] = policy
        return params

    def role_and_policy(self, service: str, scope_path: str) -> tuple[str, str | None]:
        """The role a mint of `service` assumes and its session policy. Only a service declared
        `unscoped = true` (scope none, a role of its own) goes without a policy; an unknown service
        or a missing template is refused here too (`StsError`, nothing sent), although the mint use
        case refuses both long before (defence in depth)."""
        svc = self._catalogue.get(service)
        if svc is None:
            raise StsError("UnknownService", f"service {service[:40]!r} is not in the catalogue")
        if svc.unscoped:
            return svc.role_arn, None
        if svc.namespaced:
            policy = self._templates.render(svc.name, scope_path)
        else:
            policy = self._fixed.get(svc.name)
        if policy is None:
            raise StsError("NoSessionPolicy", f"service {svc.name!r} has no session policy")
        return svc.role_arn, policy

    def assume_role(self, request: AssumeRoleRequest) -> IssuedCredentials:
        params = self.request_params(request)  # ScopeError / InvalidRequest: nothing was sent
        try:
            response = self._client.assume_role(**params)
        except (ClientError, BotoCoreError) as exc:
            error = to_sts_error(exc)
            log.warning("sts AssumeRole failed: %s (session %s): %r", error.code, params["RoleSessionName"], exc)
            raise error from None
        creds = response["Credentials"]
        expiration = creds["Expiration"]
        return IssuedCredentials(
            access_key_id=creds["AccessKeyId"],
            secret_access_key=creds["SecretAccessKey"],
            session_token=creds["SessionToken"],
            expiration=int(expiration.timestamp()) if hasattr(expiration, "timestamp") else int(expiration),
            session_name=params["RoleSessionName"],
            assumed_role_arn=response.get("AssumedRoleUser", {}).get("Arn", ""),
            role_arn=params["RoleArn"],
            policy_json=params.get("Policy"),
            tags=tuple((t["Key"], t["Value"]) for t in params["Tags"]),
        )

    def check_identity(self) -> str:
        """GetCallerIdentity with up to `BROKER_STS_MAX_ATTEMPTS` attempts (the start-up check)."""
        return self._caller_arn(self._startup_client)

    def probe_identity(self) -> str:
        """GetCallerIdentity, one attempt (the background readiness probe)."""
        return self._caller_arn(self._client)

    @staticmethod
    def _caller_arn(client: Any) -> str:
        try:
            return str(client.get_caller_identity()["Arn"])
        except (ClientError, BotoCoreError) as exc:
            error = to_sts_error(exc)
            log.warning("sts GetCallerIdentity failed: %s: %r", error.code, exc)
            raise error from None


# =============================================================================================
# Startup check (seed-spec F.2 step 6)


class StartupCheckFailed(Exception):
    """`GetCallerIdentity` failed at boot: the broker refuses to bind. `str()` is the operator message."""

    def __init__(self, error: StsError) -> None:
        self.error = error
        super().__init__(startup_check_message(error))


def startup_check_message(error: StsError) -> str:
    return (f"startup STS check failed: {error.code}: {error.message}. Either set AWS_PROFILE (or another source of the AWS "
            "default credential chain) or set DAEMON_ACCESS_KEY_ID + DAEMON_SECRET_ACCESS_KEY for the "
            "broker's own identity. Verify BROKER_AWS_REGION (and BROKER_STS_ENDPOINT_URL if set) too. "
            "Pass --skip-startup-check for offline dev.")


def startup_check(minter: CredentialMinter) -> str:
    """Call `GetCallerIdentity` once; return the caller ARN or raise `StartupCheckFailed`."""
    try:
        return minter.check_identity()
    except StsError as exc:
        raise StartupCheckFailed(exc) from None


__all__ = [
    "AssumeRoleRequest", "BotoStsMinter", "CredentialMinter", "IssuedCredentials", "ScopeError",
    "StartupCheckFailed", "StsError", "client_config", "safe_message", "session_name", "session_tags",
    "source_identity", "startup_check", "startup_check_message", "tag_value", "to_sts_error",
]
