"""STS settings: which role the broker assumes, where, for how long, with which identity.

`StsSettings.from_env(env)` reads the variables below (seed-spec F.1, D.9) and raises
`api.config.BootFailure` on a bad value. `STS_SETTINGS` lists them with defaults, documentation and
runbook anchors, in the same `Setting` shape as `api.config.SETTINGS` (group `"sts"`).

Role ARN: `BROKER_DATA_ROLE_ARN`, else the legacy `BROKER_AGENT_ROLE_ARN`, else derived from
`ACCOUNT_ID` as `arn:aws:iam::$ACCOUNT_ID:role/agentkeys-data-role`. The seed contradicts itself on
the derived name (the PR #60 commit says `agentkeys-agent`, later code and tests say
`agentkeys-data-role`); this broker uses `agentkeys-data-role`. `ACCOUNT_ID` must be 12 digits (the
seed's own example `ACCOUNT_ID=123` is refused: no AWS account has that id, and refusing at boot
beats an `AccessDenied` on the first mint).

Static keys: `DAEMON_ACCESS_KEY_ID` + `DAEMON_SECRET_ACCESS_KEY` (each falling back to its
`BROKER_DAEMON_*` name, first non-empty wins). Both set: the STS client signs with them. Neither:
the boto3 default credential chain (environment, `AWS_PROFILE`, `~/.aws`, container/instance
roles). Exactly one: refused. A secret is never printed, not even in a BOOT_FAIL line.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .session_policy import PolicyTemplates, TemplateError
from .settings import BootFailure, Setting

DEFAULT_ROLE_NAME = "agentkeys-data-role"
DEFAULT_REGION = "us-east-1"
DURATION_MIN, DURATION_MAX = 900, 43200  # STS AssumeRole bounds (seed-spec D.9)
TIMEOUT_MIN, TIMEOUT_MAX = 1, 60
ATTEMPTS_MIN, ATTEMPTS_MAX = 1, 10

STS_SETTINGS: tuple[Setting, ...] = (
    Setting("BROKER_DATA_ROLE_ARN", None, "IAM role the broker assumes for every mint, "
            "`arn:aws:iam::<12 digits>:role/<name>`. Else `BROKER_AGENT_ROLE_ARN`, else derived from `ACCOUNT_ID`; "
            "none of them: refused.", "sts-role", "sts"),
    Setting("BROKER_AGENT_ROLE_ARN", None, "Legacy name of `BROKER_DATA_ROLE_ARN` (used only when that is unset).",
            "sts-role", "sts"),
    Setting("ACCOUNT_ID", None, "Legacy: 12-digit AWS account id; with no role ARN set the role is "
            "`arn:aws:iam::$ACCOUNT_ID:role/agentkeys-data-role`.", "sts-role", "sts"),
    Setting("BROKER_AWS_REGION", None, "STS region. Else `REGION`, else `us-east-1`.", "sts-region", "sts"),
    Setting("REGION", None, "Legacy name of `BROKER_AWS_REGION` (used only when that is unset).", "sts-region", "sts"),
    Setting("BROKER_SESSION_DURATION_SECONDS", "3600", "Lifetime of minted credentials, seconds, [900, 43200]; the "
            "role's MaxSessionDuration must be at least this.", "sts-duration", "sts"),
    Setting("DAEMON_ACCESS_KEY_ID", None, "Static access key id the broker signs STS calls with (with "
            "`DAEMON_SECRET_ACCESS_KEY`; both or neither). Unset: the AWS default credential chain.",
            "sts-credentials", "sts"),
    Setting("DAEMON_SECRET_ACCESS_KEY", None, "Secret of `DAEMON_ACCESS_KEY_ID` (never printed).",
            "sts-credentials", "sts"),
    Setting("BROKER_DAEMON_ACCESS_KEY_ID", None, "Fallback name of `DAEMON_ACCESS_KEY_ID`.", "sts-credentials", "sts"),
    Setting("BROKER_DAEMON_SECRET_ACCESS_KEY", None, "Fallback name of `DAEMON_SECRET_ACCESS_KEY`.",
            "sts-credentials", "sts"),
    Setting("BROKER_STS_ENDPOINT_URL", None, "STS endpoint override (a VPC endpoint, or moto in development). "
            "`https://`, or `http://` to a loopback address or with `BROKER_DEV_MODE=true`. Default: the "
            "regional AWS endpoint.", "sts-endpoint", "sts"),
    Setting("BROKER_STS_TIMEOUT_SECONDS", "5", "Connect and read timeout of each STS call, seconds, [1, 60].",
            "sts-timeouts", "sts"),
    Setting("BROKER_STS_MAX_ATTEMPTS", "3", "Attempts per STS call including the first, [1, 10] (botocore "
            "`standard` retry mode, backoff with jitter).", "sts-timeouts", "sts"),
    Setting("BROKER_SESSION_POLICY_TEMPLATES", None, "JSON file of inline session policy templates per service, "
            "overriding the built-in ones (`s3`: objects and listing under the granted `scope_path`).",
            "sts-session-policy", "sts"),
)

STS_SETTINGS_BY_NAME = {s.name: s for s in STS_SETTINGS}

_ROLE_ARN = re.compile(r"^arn:(aws(?:-[a-z]+)*):iam::(\d{12}):role/((?:[\w+=,.@-]+/)*)([\w+=,.@-]{1,64})$")
_REGION = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$")
_ACCOUNT = re.compile(r"^\d{12}$")


@dataclass(frozen=True)
class StsSettings:
    role_arn: str
    region: str = DEFAULT_REGION
    duration_seconds: int = 3600
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    endpoint_url: str | None = None
    timeout_seconds: int = 5
    max_attempts: int = 3
    policy_templates: PolicyTemplates = field(default_factory=PolicyTemplates.builtin)
    role_arn_source: str = "BROKER_DATA_ROLE_ARN"
    deprecations: tuple[str, ...] = ()
    # the service catalogue (`api/access_config.py`): each mint assumes its service's role with its
    # session policy; None (settings built without one): `s3` on `role_arn` only
    catalogue: Any = None

    @property
    def uses_static_keys(self) -> bool:
        return self.access_key_id is not None

    @property
    def account_id(self) -> str:
        return self.role_arn.split(":")[4]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StsSettings:
        return from_env(env)


def _first(env: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    for name in names:
        value = env.get(name)
        if value is not None and value.strip() != "":
            return name, value
    return None


def _int(env: Mapping[str, str], name: str, lo: int, hi: int) -> int:
    s = STS_SETTINGS_BY_NAME[name]
    raw = env.get(name)
    text = s.default if raw is None or raw.strip() == "" else raw
    try:
        value = int(str(text).strip())
    except ValueError:
        raise BootFailure(name, raw, f"must be an integer in [{lo}, {hi}]", s.anchor) from None
    if not lo <= value <= hi:
        raise BootFailure(name, raw, f"must be an integer in [{lo}, {hi}]", s.anchor)
    return value


def _partition(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def _region(env: Mapping[str, str]) -> str:
    found = _first(env, "BROKER_AWS_REGION", "REGION")
    if found is None:
        return DEFAULT_REGION
    name, raw = found
    region = raw.strip()
    if not _REGION.match(region):
        raise BootFailure(name, raw, "must be an AWS region name such as us-east-1", "sts-region")
    return region


def _role_arn(env: Mapping[str, str], region: str) -> tuple[str, str]:
    found = _first(env, "BROKER_DATA_ROLE_ARN", "BROKER_AGENT_ROLE_ARN")
    if found is not None:
        name, raw = found
        arn = raw.strip()
        if not _ROLE_ARN.match(arn):
            raise BootFailure(name, raw, "must be an IAM role ARN: arn:aws:iam::<12-digit account>:role/<name>", "sts-role")
        return arn, name
    account = _first(env, "ACCOUNT_ID")
    if account is None:
        raise BootFailure("BROKER_DATA_ROLE_ARN", None, "required: the IAM role to assume (or the legacy "
                          "BROKER_AGENT_ROLE_ARN, or ACCOUNT_ID to derive role/agentkeys-data-role)", "sts-role")
    account_id = account[1].strip()
    if not _ACCOUNT.match(account_id):
        raise BootFailure("ACCOUNT_ID", account[1], "must be a 12-digit AWS account id", "sts-role")
    return f"arn:{_partition(region)}:iam::{account_id}:role/{DEFAULT_ROLE_NAME}", "ACCOUNT_ID"


def _static_keys(env: Mapping[str, str]) -> tuple[str | None, str | None, list[str]]:
    key = _first(env, "DAEMON_ACCESS_KEY_ID", "BROKER_DAEMON_ACCESS_KEY_ID")
    secret = _first(env, "DAEMON_SECRET_ACCESS_KEY", "BROKER_DAEMON_SECRET_ACCESS_KEY")
    if key is None and secret is None:
        return None, None, []
    if key is None:
        raise BootFailure("DAEMON_ACCESS_KEY_ID", None, f"{secret[0]} is set without an access key id: set both "  # type: ignore[index]
                          "(or neither, to use the AWS default credential chain)", "sts-credentials")
    if secret is None:
        raise BootFailure("DAEMON_SECRET_ACCESS_KEY", None, f"{key[0]} is set without a secret: set both "
                          "(or neither, to use the AWS default credential chain)", "sts-credentials")
    key_id, secret_value = key[1].strip(), secret[1].strip()
    if not re.fullmatch(r"[A-Za-z0-9]{1,128}", key_id):
        raise BootFailure(key[0], "(hidden)", "must be an access key id (letters and digits only)", "sts-credentials")
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in secret_value):
        raise BootFailure(secret[0], "(hidden)", "must be printable ASCII without spaces", "sts-credentials")
    notes = [f"{name} is a legacy name; prefer {name.removeprefix('BROKER_')}"
             for name in (key[0], secret[0]) if name.startswith("BROKER_DAEMON_")]
    return key_id, secret_value, notes


def _dev_mode(env: Mapping[str, str]) -> bool:
    return (env.get("BROKER_DEV_MODE") or "").strip().lower() in ("true", "1", "yes")


def _endpoint(env: Mapping[str, str]) -> str | None:
    found = _first(env, "BROKER_STS_ENDPOINT_URL")
    if found is None:
        return None
    raw = found[1]
    url = raw.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise BootFailure("BROKER_STS_ENDPOINT_URL", raw, "must be an absolute http(s) URL", "sts-endpoint") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment or parts.username:
        raise BootFailure("BROKER_STS_ENDPOINT_URL", raw, "must be an absolute http(s) URL without credentials, "
                          "query or fragment", "sts-endpoint")
    if parts.scheme == "http" and not (_is_loopback(parts.hostname) or _dev_mode(env)):
        raise BootFailure("BROKER_STS_ENDPOINT_URL", raw, "must be https:// unless it is a loopback address or "
                          "BROKER_DEV_MODE=true (minted credentials would cross the network in cleartext)", "sts-endpoint")
    return url


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _templates(env: Mapping[str, str]) -> PolicyTemplates:
    found = _first(env, "BROKER_SESSION_POLICY_TEMPLATES")
    if found is None:
        return PolicyTemplates.builtin()
    try:
        return PolicyTemplates.from_file(Path(found[1].strip()).expanduser())
    except TemplateError as exc:
        raise BootFailure("BROKER_SESSION_POLICY_TEMPLATES", found[1], str(exc), "sts-session-policy") from None


def from_env(env: Mapping[str, str]) -> StsSettings:
    """Every STS setting from `env`, checked; `BootFailure` names the first bad one."""
    region = _region(env)
    role_arn, role_source = _role_arn(env, region)
    notes: list[str] = []
    if role_source == "BROKER_AGENT_ROLE_ARN":
        notes.append("BROKER_AGENT_ROLE_ARN is a legacy name; prefer BROKER_DATA_ROLE_ARN")
    if role_source == "ACCOUNT_ID":
        notes.append(f"role ARN derived from ACCOUNT_ID ({role_arn}); prefer setting BROKER_DATA_ROLE_ARN")
    if _first(env, "BROKER_AWS_REGION") is None and _first(env, "REGION") is not None:
        notes.append("REGION is a legacy name; prefer BROKER_AWS_REGION")
    key_id, secret, key_notes = _static_keys(env)
    notes.extend(key_notes)
    return StsSettings(
        role_arn=role_arn,
        region=region,
        duration_seconds=_int(env, "BROKER_SESSION_DURATION_SECONDS", DURATION_MIN, DURATION_MAX),
        access_key_id=key_id,
        secret_access_key=secret,
        endpoint_url=_endpoint(env),
        timeout_seconds=_int(env, "BROKER_STS_TIMEOUT_SECONDS", TIMEOUT_MIN, TIMEOUT_MAX),
        max_attempts=_int(env, "BROKER_STS_MAX_ATTEMPTS", ATTEMPTS_MIN, ATTEMPTS_MAX),
        policy_templates=_templates(env),
        role_arn_source=role_source,
        deprecations=tuple(notes),
    )


__all__ = ["STS_SETTINGS", "StsSettings", "from_env", "DURATION_MIN", "DURATION_MAX", "DEFAULT_ROLE_NAME"]
