"""Every `BROKER_*` setting, in one place: name, default, parser, documentation, runbook anchor.

`BrokerConfig.from_env(env)` is called only by entry points (`serve`, `dev`, `workers`). A bad value
raises `BootFailure`, printed as one line (seed-spec F.3):

    BOOT_FAIL: BROKER_LEDGER_BATCH_MAX="0": must be an integer in [1, 10000]; see runbook §ledger-batching

`docs/operator-runbook.md` has a heading for every anchor used here (a test checks it) and its
configuration table is generated from `SETTINGS` (`python -m api.config --markdown`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# BootFailure and Setting live in api/settings.py (a leaf: api/sts_config.py uses them too, and this
# module imports api/sts_config.py); re-exported here for their existing importers.
from .settings import BootFailure, Setting

ANCHOR_ALIASES = {"sqlite": "sqlite", "evm": "evm", "evm_testnet": "evm"}
KNOWN_ANCHORS_BUILT = ("sqlite", "evm")  # anchors this build can construct


SETTINGS: tuple[Setting, ...] = (
    Setting("BROKER_DATA_DIR", None, "Directory for the broker's files (ledger, anchor, projections). "
            "Default `$HOME/.agentkeys/broker/data`.", "data-dir"),
    Setting("BROKER_LEDGER_DB", None, "Ledger SQLite file. Default `$BROKER_DATA_DIR/ledger.sqlite`.", "ledger-db", "ledger"),
    Setting("BROKER_SQLITE_ANCHOR_DB", None, "SQLite anchor file (keep it on another disk if you can: it is a "
            "separate failure domain). Default `$BROKER_DATA_DIR/anchor.sqlite`.", "sqlite-anchor-db", "audit"),
    Setting("BROKER_PROJECTIONS_DB", None, "Read-model SQLite file. Default `$BROKER_DATA_DIR/projections.sqlite`.",
            "projections-db", "ledger"),
    Setting("BROKER_AUDIT_ANCHORS", "sqlite", "Comma list of anchors that must confirm releases: `sqlite`, `evm` "
            "(`evm_testnet` is an alias).", "audit-anchors", "audit"),
    Setting("BROKER_LEDGER_BATCH_MAX", "256", "Group commit: most appends sharing one transaction, [1, 10000].",
            "ledger-batching", "ledger"),
    Setting("BROKER_LEDGER_BATCH_MAX_WAIT_MS", "0", "Group commit: longest wait for more appends to join a "
            "batch, milliseconds, [0, 1000].", "ledger-batching", "ledger"),
    Setting("BROKER_DEV_MODE", "false", "`true` relaxes production-only checks (an `http://` issuer). Never in "
            "production.", "dev-mode"),
    Setting("BROKER_OIDC_ISSUER", None, "Public base URL of the broker (required). `iss` of every token it signs, "
            "the SIWE domain and URI. Must be `https://` unless `BROKER_DEV_MODE=true`.", "oidc-issuer", "auth"),
    Setting("BROKER_OIDC_KEYPAIR_PATH", None, "OIDC signing keypair file (`keygen --purpose oidc`). Default "
            "`$HOME/.agentkeys/broker/oidc-keypair.json`.", "oidc-keypair", "auth"),
    Setting("BROKER_SESSION_KEYPAIR_PATH", None, "Session JWT signing keypair file (`keygen --purpose session`), a "
            "different file from the OIDC one. Default `$HOME/.agentkeys/broker/session-keypair.json`.",
            "session-keypair", "auth"),
    Setting("BROKER_SESSION_JWT_TTL_SECONDS", "18000", "Session JWT lifetime, seconds, [60, 86400].", "session-jwt-ttl", "auth"),
    Setting("BROKER_AUTH_METHODS", "wallet_sig", "Comma list of enabled sign-in methods: `wallet_sig` (SIWE), "
            "`email_link` (magic link), `oauth2_google` (Google). Set but empty: refused (`auth-method-empty`).",
            "auth-methods", "auth"),
    Setting("BROKER_SIWE_CHAIN_IDS", "84532,8453", "Chain ids a SIWE sign-in may name (Base Sepolia, Base).",
            "siwe-chain-ids", "auth"),
    Setting("BROKER_RATE_LIMIT_CHALLENGES_PER_HOUR_PER_IP", "60", "SIWE challenges one client IP may start per "
            "hour, [1, 1000000]; beyond it 429 with Retry-After.", "rate-limits", "limits"),
    Setting("BROKER_RATE_LIMIT_FAILED_VERIFIES_PER_HOUR_PER_IP", "30", "Failed sign-in verifications one client IP "
            "may make per hour, [1, 1000000]; beyond it 429 with Retry-After.", "rate-limits", "limits"),
    Setting("BROKER_TRUSTED_PROXIES", "", "Comma list of proxy addresses/networks whose `X-Forwarded-For` is "
            "believed (client IP for rate limits). Empty: the socket peer is the client.", "trusted-proxies", "limits"),
    Setting("BROKER_REQUEST_BODY_LIMIT_BYTES", "1048576", "Largest request body, bytes, [1024, 16777216]; larger "
            "bodies get 413.", "request-body-limit", "limits"),
    Setting("BROKER_REQUEST_BODY_TIMEOUT_SECONDS", "10", "Longest time a client may take to send a request body, "
            "seconds from the request's start, [1, 300]; a slower body gets 408 `request_timeout` and its "
            "connection is closed.", "request-body-timeout", "limits"),
    Setting("BROKER_SHUTDOWN_GRACE_SECONDS", "30", "On SIGTERM, how long in-flight requests may finish, [0, 3600].",
            "graceful-shutdown"),
    Setting("BROKER_AUDIT_POLICY", "dual_strict", "Which anchors must confirm a release before the response: "
            "`dual_strict` (all), `sqlite_primary`, `evm_primary`.", "audit-policy", "audit"),
    Setting("BROKER_GRANTS_REQUIRED", "true", "`true`: every mint needs an active grant for the daemon wallet, "
            "service and scope. `false`: a wallet may mint for itself without one (the seed's implicit allow).",
            "grants-required", "mint"),
    Setting("BROKER_MINT_MAX_SKEW_SECONDS", "300", "A mint request's `issued_at` must be within this many seconds "
            "of the broker's clock, [5, 3600].", "mint-skew", "mint"),
    Setting("BROKER_RATE_LIMIT_MINTS_PER_HOUR_PER_OMNI", "30", "Mints one OmniAccount may request per hour, "
            "[1, 1000000], charged once the per-call signature verified for a fresh request; beyond it 429 with "
            "Retry-After.",
            "rate-limits", "limits"),
    Setting("BROKER_RATE_LIMIT_BAD_SIGNATURES_PER_HOUR_PER_IP", "30", "Mint requests with a failed per-call "
            "signature (or a stale, foreign-audience or replayed one) one client IP may make per hour, [1, 1000000]; "
            "beyond it those requests (never a validly signed fresh one) get 429 with Retry-After.", "rate-limits", "limits"),
    Setting("BROKER_RATE_LIMIT_BAD_SIGNATURES_PER_HOUR_PER_WALLET", "30", "Mint requests with a failed per-call "
            "signature (or a stale, foreign-audience or replayed one) per session wallet per hour, [1, 1000000]; "
            "beyond it those requests (never a validly signed fresh one) get 429 with Retry-After.", "rate-limits", "limits"),
    Setting("BROKER_RATE_LIMIT_LEGACY_PER_MINUTE_PER_IP", "60", "Legacy bearer requests (mint and exchange) one "
            "client IP may make per minute, [1, 1000000], counted before the backend is asked; beyond it 429.",
            "rate-limits", "limits"),
    Setting("BROKER_LEGACY_BEARER", "false", "`true` enables the seed's legacy opaque-bearer path: "
            "`/v1/mint-aws-creds` with a non-JWT bearer and `/v1/auth/exchange`, validated by the backend.",
            "legacy-bearer", "legacy"),
    Setting("BROKER_BACKEND_URL", None, "Backend that validates legacy bearers (`GET /session/validate`); required "
            "when `BROKER_LEGACY_BEARER=true`.", "backend-url", "legacy"),
    Setting("BROKER_BACKEND_TIMEOUT_SECONDS", "10", "Timeout of a backend validation call, seconds, [1, 120].",
            "backend-url", "legacy"),
    Setting("BROKER_OPERATOR_TOKEN_FILE", None, "File holding the operator/auditor bearer token (mode 0600; "
            "at least 32 characters). An operator credential (quarantine, `/metrics`, `/operator`) that may also read any "
            "record's proof bundle.", "operator-token", "audit"),
    Setting("BROKER_OPERATOR_WALLETS", "", "Comma list of operator wallet addresses (`0x` + 40 hex). Their SIWE "
            "sessions carry the operator role: quarantine API, `/operator` page, `/metrics`.", "operator-wallets",
            "operators"),
    Setting("BROKER_IAM_ENDPOINT_URL", None, "IAM endpoint for the role kill switch (`iam:PutRolePolicy`); moto "
            "in development. `https://`, or `http://` to a loopback address or with `BROKER_DEV_MODE=true`. "
            "Default: AWS IAM.", "iam-endpoint", "operators"),
    Setting("BROKER_METRICS_AUTH", "operator", "`/metrics` access: `operator` (an operator credential) or `none` "
            "(anyone who can reach the port: keep it on a private network).", "metrics-auth", "operators"),
    Setting("BROKER_LOG_LEVEL", "INFO", "Log level: `DEBUG`, `INFO`, `WARNING`, `ERROR` or `CRITICAL`.",
            "log-level", "operators"),
    Setting("BROKER_LOG_FORMAT", "text", "`text` (readable lines) or `json` (one JSON object per line: `ts`, "
            "`level`, `logger`, `request_id`, `msg`).", "log-format", "operators"),
    Setting("BROKER_ANCHOR_DEADLINE_MS", "10000", "Longest wait for the required anchors inside a request, "
            "milliseconds, [100, 120000]; past it 503 `anchor_unavailable`, nothing released.", "anchor-deadline", "audit"),
    Setting("BROKER_READINESS_PROBE_INTERVAL_SECONDS", "2", "Period of the background readiness probes, seconds, "
            "[0.05, 60]; the STS probe runs every min(10, 5 x this).", "readiness-probes"),
    Setting("BROKER_JOB_OUTCOME_SWEEP_SECONDS", "30", "Period of the outcome sweep job (authorizations left "
            "without an outcome get `*Withheld{interrupted}`), seconds, [0.1, 3600].", "outcome-sweep", "audit"),
    Setting("BROKER_JOB_ANCHOR_RECONCILE_SECONDS", "10", "Period of the anchor reconciliation job (records an anchor "
            "lacks are submitted again), seconds, [0.1, 3600].", "workers", "audit"),
    Setting("BROKER_JOB_QUARANTINE_SECONDS", "15", "Period of the quarantine job (released mints whose asynchronous "
            "anchor missed its deadline), seconds, [0.1, 3600].", "workers", "audit"),
    Setting("BROKER_JOB_PROJECTIONS_SECONDS", "5", "Period of the projection catch-up job, seconds, [0.1, 3600].",
            "workers", "audit"),
    Setting("BROKER_JOB_INTEGRITY_SECONDS", "30", "Period of the incremental integrity check (new records re-verified, "
            "anchored hashes compared with the ledger), seconds, [0.1, 3600].", "integrity-alarm", "audit"),
    Setting("BROKER_JOB_CHAIN_VERIFY_SECONDS", "3600", "Period of the full chain verification and `PRAGMA "
            "quick_check` of the ledger, seconds, [0.1, 604800].", "integrity-alarm", "audit"),
    Setting("BROKER_SPILL_PATH", None, "Journal for credentials STS issued that the ledger could not record (key id "
            "and session name, never the secret). Default `$BROKER_DATA_DIR/spill.journal`.", "spill", "ledger"),
    Setting("BROKER_SPILL_BYTES", "1048576", "Size the spill is preallocated to at boot, bytes, [4096, 1073741824].",
            "spill", "ledger"),
    Setting("BROKER_MIN_FREE_BYTES", "67108864", "Below this many free bytes on the ledger's disk, mints are refused "
            "before STS (503 `unavailable`, `ledger_low_space`), bytes, [0, 2^50].", "spill", "ledger"),
)

AUTH_METHODS_BUILT = ("wallet_sig", "email_link", "oauth2_google")
AUTH_METHODS_KNOWN = ("wallet_sig", "email_link", "oauth2_google")
POLICIES = ("dual_strict", "sqlite_primary", "evm_primary")

SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}


def _setting(name: str) -> Setting:
    found = SETTINGS_BY_NAME.get(name)
    if found is None:
        found = next(s for s in all_settings() if s.name == name)
    return found


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value == "":
        return _setting(name).default
    return value


def _int(env: Mapping[str, str], name: str, lo: int, hi: int) -> int:
    raw = _get(env, name)
    s = _setting(name)
    try:
        value = int(str(raw).strip())
    except (TypeError, ValueError):
        raise BootFailure(name, env.get(name), f"must be an integer in [{lo}, {hi}]", s.anchor) from None
    if not lo <= value <= hi:
        raise BootFailure(name, env.get(name), f"must be an integer in [{lo}, {hi}]", s.anchor)
    return value


def _float(env: Mapping[str, str], name: str, lo: float, hi: float) -> float:
    raw = _get(env, name)
    s = _setting(name)
    try:
        value = float(str(raw).strip())
    except (TypeError, ValueError):
        raise BootFailure(name, env.get(name), f"must be a number in [{lo:g}, {hi:g}]", s.anchor) from None
    if not lo <= value <= hi:  # also refuses nan
        raise BootFailure(name, env.get(name), f"must be a number in [{lo:g}, {hi:g}]", s.anchor)
    return value


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = (_get(env, name) or "false").strip().lower()
    if raw in ("true", "1", "yes"):
        return True
    if raw in ("false", "0", "no"):
        return False
    raise BootFailure(name, env.get(name), "must be true or false", SETTINGS_BY_NAME[name].anchor)


def _anchors(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = _get(env, "BROKER_AUDIT_ANCHORS") or ""
    names: list[str] = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        canonical = ANCHOR_ALIASES.get(part)
        if canonical is None or canonical not in KNOWN_ANCHORS_BUILT:
            raise BootFailure("BROKER_AUDIT_ANCHORS", env.get("BROKER_AUDIT_ANCHORS"),
                              f"unknown or unavailable anchor {part!r} (available: {', '.join(KNOWN_ANCHORS_BUILT)})",
                              "audit-anchor-not-compiled")
        if canonical not in names:
            names.append(canonical)
    if not names:
        raise BootFailure("BROKER_AUDIT_ANCHORS", env.get("BROKER_AUDIT_ANCHORS"),
                          "at least one audit anchor must be configured (default `sqlite`)", "audit-anchor-empty")
    return tuple(names)


def _operator_token(env: Mapping[str, str]) -> str | None:
    raw = (env.get("BROKER_OPERATOR_TOKEN_FILE") or "").strip()
    if not raw:
        return None
    path = Path(raw).expanduser()
    try:
        st = path.stat()
        token = path.read_text().strip()
    except OSError as exc:
        raise BootFailure("BROKER_OPERATOR_TOKEN_FILE", raw, f"cannot read it: {exc.strerror}", "operator-token") from None
    if st.st_mode & 0o077:
        raise BootFailure("BROKER_OPERATOR_TOKEN_FILE", raw, "is readable by group/other (chmod 600)", "operator-token")
    if len(token) < 32 or any(c.isspace() for c in token):
        raise BootFailure("BROKER_OPERATOR_TOKEN_FILE", raw, "must hold one token of at least 32 characters",
                          "operator-token")
    return token


def _operator_wallets(env: Mapping[str, str]) -> tuple[str, ...]:
    import re

    raw = env.get("BROKER_OPERATOR_WALLETS") or ""
    out: list[str] = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        if not re.fullmatch(r"0x[0-9a-fA-F]{40}", part):
            raise BootFailure("BROKER_OPERATOR_WALLETS", raw, f"{part[:60]!r} is not a wallet address (0x + 40 hex)",
                              "operator-wallets")
        if part.lower() not in out:
            out.append(part.lower())
    return tuple(out)


def _iam_endpoint(env: Mapping[str, str], dev_mode: bool) -> str | None:
    import ipaddress
    from urllib.parse import urlsplit

    raw = (env.get("BROKER_IAM_ENDPOINT_URL") or "").strip()
    if not raw:
        return None
    url = raw.rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise BootFailure("BROKER_IAM_ENDPOINT_URL", raw, "must be an absolute http(s) URL", "iam-endpoint") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment or parts.username:
        raise BootFailure("BROKER_IAM_ENDPOINT_URL", raw, "must be an absolute http(s) URL without credentials, "
                          "query or fragment", "iam-endpoint")
    if parts.scheme == "http" and not dev_mode:
        host = parts.hostname
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise BootFailure("BROKER_IAM_ENDPOINT_URL", raw, "must be https:// unless it is a loopback address or "
                              "BROKER_DEV_MODE=true", "iam-endpoint")
    return url


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")


def log_settings(env: Mapping[str, str]) -> tuple[str, str]:
    """`(level, format)` from `BROKER_LOG_LEVEL` / `BROKER_LOG_FORMAT`; `BootFailure` on a bad value.
    Entry points call it before anything logs."""
    level = (_get(env, "BROKER_LOG_LEVEL") or "INFO").strip().upper()
    if level not in LOG_LEVELS:
        raise BootFailure("BROKER_LOG_LEVEL", env.get("BROKER_LOG_LEVEL"),
                          f"must be one of {', '.join(LOG_LEVELS)}", "log-level")
    fmt = (_get(env, "BROKER_LOG_FORMAT") or "text").strip().lower()
    if fmt not in LOG_FORMATS:
        raise BootFailure("BROKER_LOG_FORMAT", env.get("BROKER_LOG_FORMAT"), "must be text or json", "log-format")
    return level, fmt


def _metrics_auth(env: Mapping[str, str]) -> str:
    value = (_get(env, "BROKER_METRICS_AUTH") or "operator").strip().lower()
    if value not in ("none", "operator"):
        raise BootFailure("BROKER_METRICS_AUTH", env.get("BROKER_METRICS_AUTH"), "must be none or operator",
                          "metrics-auth")
    return value


def _backend_url(env: Mapping[str, str]) -> str | None:
    raw = (env.get("BROKER_BACKEND_URL") or "").strip()
    if not raw:
        if _bool(env, "BROKER_LEGACY_BEARER"):
            raise BootFailure("BROKER_BACKEND_URL", None, "required when BROKER_LEGACY_BEARER=true", "backend-url")
        return None
    if not (raw.startswith("http://") or raw.startswith("https://")) or any(c.isspace() for c in raw):
        raise BootFailure("BROKER_BACKEND_URL", raw, "must be an absolute http(s) URL", "backend-url")
    return raw.rstrip("/")


def _evm(env: Mapping[str, str], data_dir: Path) -> Any:
    from anchors.evm import EvmAnchorConfig, EvmConfigError

    try:
        return EvmAnchorConfig.from_env(env, default_state_path=data_dir / "evm-anchor.sqlite")
    except EvmConfigError as exc:
        raise BootFailure(exc.var, exc.value, exc.reason, exc.anchor) from None


def _sts(env: Mapping[str, str]) -> Any:
    """STS settings with the service catalogue attached (each mint assumes its service's role)."""
    import dataclasses

    from .access_config import from_env as access_from_env
    from .sts_config import StsSettings

    sts = StsSettings.from_env(env)
    access = access_from_env(env, role_arn=sts.role_arn, templates=sts.policy_templates)
    return dataclasses.replace(sts, catalogue=access.catalogue), access


def _issuer(env: Mapping[str, str], dev_mode: bool) -> str:
    raw = env.get("BROKER_OIDC_ISSUER")
    if raw is None or not raw.strip():
        raise BootFailure("BROKER_OIDC_ISSUER", None, "required: the broker's public base URL", "oidc-issuer")
    issuer = raw.strip().rstrip("/")
    if (not (issuer.startswith("https://") or issuer.startswith("http://"))
            or "://" not in issuer or not issuer.split("://", 1)[1]):
        raise BootFailure("BROKER_OIDC_ISSUER", raw, "must be an absolute https:// URL", "oidc-issuer")
    if issuer.startswith("http://") and not dev_mode:
        raise BootFailure("BROKER_OIDC_ISSUER", raw,
                          "must be https:// in non-dev mode (set BROKER_DEV_MODE=true to relax)", "oidc-issuer")
    if any(c.isspace() for c in issuer) or "#" in issuer or "?" in issuer:
        raise BootFailure("BROKER_OIDC_ISSUER", raw, "must not contain whitespace, a query or a fragment", "oidc-issuer")
    return issuer


def _auth_methods(env: Mapping[str, str]) -> tuple[str, ...]:
    # Seed §C: unset -> the default; set, even to "" or " ", -> parsed as given (entries trimmed,
    # empty entries skipped), so an empty list is refused rather than silently defaulted.
    raw = env["BROKER_AUTH_METHODS"] if "BROKER_AUTH_METHODS" in env else (_setting("BROKER_AUTH_METHODS").default or "")
    methods: list[str] = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        if part not in AUTH_METHODS_BUILT:
            raise BootFailure("BROKER_AUTH_METHODS", env.get("BROKER_AUTH_METHODS"),
                              f"unknown or unavailable auth method {part!r} (available: {', '.join(AUTH_METHODS_BUILT)})",
                              "auth-method-not-compiled")
        if part not in methods:
            methods.append(part)
    if not methods:
        raise BootFailure("BROKER_AUTH_METHODS", env.get("BROKER_AUTH_METHODS"),
                          "at least one auth method must be enabled (default `wallet_sig`)", "auth-method-empty")
    return tuple(methods)


# --- email magic link / Google OAuth2 sign-in (issue 16) ---------------------------------------

def _email_link(env: Mapping[str, str], methods: tuple[str, ...], dev_mode: bool) -> Any:
    if "email_link" not in methods:
        return None
    from .signin_config import email_link_settings

    return email_link_settings(env, dev_mode=dev_mode)


def _oauth2_google(env: Mapping[str, str], methods: tuple[str, ...], dev_mode: bool) -> Any:
    if "oauth2_google" not in methods:
        return None
    from .signin_config import oauth2_google_settings

    return oauth2_google_settings(env, dev_mode=dev_mode)


def _chain_ids(env: Mapping[str, str]) -> tuple[int, ...]:
    raw = _get(env, "BROKER_SIWE_CHAIN_IDS") or ""
    ids: list[int] = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            value = -1
        if not 1 <= value <= 2**53 - 1:
            raise BootFailure("BROKER_SIWE_CHAIN_IDS", env.get("BROKER_SIWE_CHAIN_IDS"),
                              f"chain id {part!r} is not a positive integer", "siwe-chain-ids")
        ids.append(value)
    if not ids:
        raise BootFailure("BROKER_SIWE_CHAIN_IDS", env.get("BROKER_SIWE_CHAIN_IDS"),
                          "at least one chain id is required", "siwe-chain-ids")
    return tuple(ids)


def _proxies(env: Mapping[str, str]) -> tuple[Any, ...]:
    import ipaddress

    raw = _get(env, "BROKER_TRUSTED_PROXIES") or ""
    nets = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise BootFailure("BROKER_TRUSTED_PROXIES", env.get("BROKER_TRUSTED_PROXIES"),
                              f"{part!r} is not an IP address or network", "trusted-proxies") from None
    return tuple(nets)


@dataclass(frozen=True)
class BrokerConfig:
    data_dir: Path
    ledger_db: Path
    anchor_db: Path
    projections_db: Path
    anchors: tuple[str, ...] = ("sqlite",)
    ledger_batch_max: int = 256
    ledger_batch_max_wait_ms: int = 0
    dev_mode: bool = False
    issuer: str = "http://127.0.0.1:8091"
    oidc_keypair_path: Path = Path("oidc-keypair.json")
    session_keypair_path: Path = Path("session-keypair.json")
    session_jwt_ttl_s: int = 18000
    auth_methods: tuple[str, ...] = ("wallet_sig",)
    siwe_chain_ids: tuple[int, ...] = (84532, 8453)
    challenges_per_hour_per_ip: int = 60
    failed_verifies_per_hour_per_ip: int = 30
    trusted_proxies: tuple[Any, ...] = ()
    body_limit_bytes: int = 1048576
    body_timeout_s: int = 10
    shutdown_grace_s: int = 30
    audit_policy: str = "dual_strict"
    anchor_deadline_ms: int = 10000
    grants_required: bool = True
    mint_max_skew_s: int = 300
    mints_per_hour_per_omni: int = 30
    bad_signatures_per_hour_per_ip: int = 30
    bad_signatures_per_hour_per_wallet: int = 30
    legacy_per_minute_per_ip: int = 60
    evm: Any = None  # anchors.evm.EvmAnchorConfig when `evm` is an anchor
    evm_confirm_deadline_s: int = 600
    operator_token: str | None = field(default=None, repr=False)
    operator_wallets: tuple[str, ...] = ()
    iam_endpoint_url: str | None = None
    metrics_auth: str = "operator"
    log_level: str = "INFO"
    log_format: str = "text"
    legacy_bearer: bool = False
    backend_url: str | None = None
    backend_timeout_s: int = 10
    readiness_probe_interval_s: float = 2.0
    job_outcome_sweep_s: float = 30.0
    job_anchor_reconcile_s: float = 10.0
    job_quarantine_s: float = 15.0
    job_projections_s: float = 5.0
    job_integrity_s: float = 30.0        # incremental integrity check (new records, rolling anchor window)
    job_chain_verify_s: float = 3600.0   # a full chain verification + PRAGMA quick_check
    spill_path: Path | None = None
    spill_bytes: int = 1048576
    min_free_bytes: int = 67108864
    sts: Any = None
    access: Any = None  # api.access_config.AccessSettings: catalogue, tenancy, legacy service
    extra: dict[str, Any] = field(default_factory=dict)
    # --- email magic link / Google OAuth2 sign-in (issue 16; api/signin_config.py) ---
    email_link: Any = None  # api.signin_config.EmailLinkSettings when `email_link` is enabled
    oauth2_google: Any = None  # api.signin_config.OAuth2GoogleSettings when `oauth2_google` is enabled

    @property
    def siwe_domain(self) -> str:
        rest = self.issuer.split("://", 1)[-1]
        return rest.split("/", 1)[0]

    @property
    def required_anchors(self) -> tuple[str, ...]:
        """Anchors that must confirm a release before the response, by policy (design §3)."""
        if self.audit_policy == "dual_strict":
            return self.anchors
        primary = "sqlite" if self.audit_policy == "sqlite_primary" else "evm"
        return (primary,)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BrokerConfig:
        env = os.environ if env is None else env
        data_dir_raw = _get(env, "BROKER_DATA_DIR")
        if data_dir_raw is None:
            home = env.get("HOME")
            data_dir = (Path(home) if home else Path(".")) / ".agentkeys" / "broker" / "data"
        else:
            data_dir = Path(data_dir_raw).expanduser()

        def path(name: str, default_name: str) -> Path:
            raw = _get(env, name)
            return Path(raw).expanduser() if raw else data_dir / default_name

        home_dir = Path(env.get("HOME") or ".")
        anchors = _anchors(env)
        policy = (_get(env, "BROKER_AUDIT_POLICY") or "").strip()
        if policy not in POLICIES:
            raise BootFailure("BROKER_AUDIT_POLICY", env.get("BROKER_AUDIT_POLICY"),
                              f"unknown BROKER_AUDIT_POLICY: {policy} (expected dual_strict | sqlite_primary | evm_primary)",
                              "audit-policy")
        primary = {"sqlite_primary": "sqlite", "evm_primary": "evm"}.get(policy)
        if primary is not None and primary not in anchors:
            raise BootFailure("BROKER_AUDIT_POLICY", env.get("BROKER_AUDIT_POLICY"),
                              f"policy {policy} needs the {primary} anchor in BROKER_AUDIT_ANCHORS", "audit-policy")
        dev_mode = _bool(env, "BROKER_DEV_MODE")
        issuer = _issuer(env, dev_mode)

        def keypath(name: str, default_name: str) -> Path:
            raw = _get(env, name)
            return Path(raw).expanduser() if raw else home_dir / ".agentkeys" / "broker" / default_name

        oidc_path = keypath("BROKER_OIDC_KEYPAIR_PATH", "oidc-keypair.json")
        session_path = keypath("BROKER_SESSION_KEYPAIR_PATH", "session-keypair.json")
        if oidc_path.expanduser().resolve() == session_path.expanduser().resolve():
            raise BootFailure("BROKER_SESSION_KEYPAIR_PATH", str(session_path),
                              "must be a different file from BROKER_OIDC_KEYPAIR_PATH (two keypairs, two purposes)",
                              "session-keypair")
        auth_methods = _auth_methods(env)
        fields: dict[str, Any] = dict(
            # --- email magic link / Google OAuth2 sign-in (issue 16) ---
            email_link=_email_link(env, auth_methods, dev_mode),
            oauth2_google=_oauth2_google(env, auth_methods, dev_mode),
            issuer=issuer,
            oidc_keypair_path=oidc_path,
            session_keypair_path=session_path,
            session_jwt_ttl_s=_int(env, "BROKER_SESSION_JWT_TTL_SECONDS", 60, 86400),
            auth_methods=auth_methods,
            siwe_chain_ids=_chain_ids(env),
            challenges_per_hour_per_ip=_int(env, "BROKER_RATE_LIMIT_CHALLENGES_PER_HOUR_PER_IP", 1, 1_000_000),
            failed_verifies_per_hour_per_ip=_int(env, "BROKER_RATE_LIMIT_FAILED_VERIFIES_PER_HOUR_PER_IP", 1, 1_000_000),
            trusted_proxies=_proxies(env),
            body_limit_bytes=_int(env, "BROKER_REQUEST_BODY_LIMIT_BYTES", 1024, 16 * 1024 * 1024),
            body_timeout_s=_int(env, "BROKER_REQUEST_BODY_TIMEOUT_SECONDS", 1, 300),
            shutdown_grace_s=_int(env, "BROKER_SHUTDOWN_GRACE_SECONDS", 0, 3600),
            audit_policy=policy,
            anchor_deadline_ms=_int(env, "BROKER_ANCHOR_DEADLINE_MS", 100, 120_000),
            grants_required=_bool(env, "BROKER_GRANTS_REQUIRED"),
            mint_max_skew_s=_int(env, "BROKER_MINT_MAX_SKEW_SECONDS", 5, 3600),
            mints_per_hour_per_omni=_int(env, "BROKER_RATE_LIMIT_MINTS_PER_HOUR_PER_OMNI", 1, 1_000_000),
            bad_signatures_per_hour_per_ip=_int(env, "BROKER_RATE_LIMIT_BAD_SIGNATURES_PER_HOUR_PER_IP", 1, 1_000_000),
            bad_signatures_per_hour_per_wallet=_int(env, "BROKER_RATE_LIMIT_BAD_SIGNATURES_PER_HOUR_PER_WALLET", 1,
                                                    1_000_000),
            legacy_per_minute_per_ip=_int(env, "BROKER_RATE_LIMIT_LEGACY_PER_MINUTE_PER_IP", 1, 1_000_000),
            operator_token=_operator_token(env),
            operator_wallets=_operator_wallets(env),
            iam_endpoint_url=_iam_endpoint(env, dev_mode),
            metrics_auth=_metrics_auth(env),
            log_level=log_settings(env)[0],
            log_format=log_settings(env)[1],
            legacy_bearer=_bool(env, "BROKER_LEGACY_BEARER"),
            backend_url=_backend_url(env),
            backend_timeout_s=_int(env, "BROKER_BACKEND_TIMEOUT_SECONDS", 1, 120),
            data_dir=data_dir,
            ledger_db=path("BROKER_LEDGER_DB", "ledger.sqlite"),
            anchor_db=path("BROKER_SQLITE_ANCHOR_DB", "anchor.sqlite"),
            projections_db=path("BROKER_PROJECTIONS_DB", "projections.sqlite"),
            anchors=anchors,
            ledger_batch_max=_int(env, "BROKER_LEDGER_BATCH_MAX", 1, 10000),
            ledger_batch_max_wait_ms=_int(env, "BROKER_LEDGER_BATCH_MAX_WAIT_MS", 0, 1000),
            dev_mode=dev_mode,
            evm=_evm(env, data_dir) if "evm" in anchors else None,
            evm_confirm_deadline_s=_int(env, "BROKER_EVM_CONFIRM_DEADLINE_SECONDS", 10, 7 * 24 * 3600),
            readiness_probe_interval_s=_float(env, "BROKER_READINESS_PROBE_INTERVAL_SECONDS", 0.05, 60),
            job_outcome_sweep_s=_float(env, "BROKER_JOB_OUTCOME_SWEEP_SECONDS", 0.1, 3600),
            job_anchor_reconcile_s=_float(env, "BROKER_JOB_ANCHOR_RECONCILE_SECONDS", 0.1, 3600),
            job_quarantine_s=_float(env, "BROKER_JOB_QUARANTINE_SECONDS", 0.1, 3600),
            job_projections_s=_float(env, "BROKER_JOB_PROJECTIONS_SECONDS", 0.1, 3600),
            job_integrity_s=_float(env, "BROKER_JOB_INTEGRITY_SECONDS", 0.1, 3600),
            job_chain_verify_s=_float(env, "BROKER_JOB_CHAIN_VERIFY_SECONDS", 0.1, 7 * 24 * 3600),
            spill_path=path("BROKER_SPILL_PATH", "spill.journal"),
            spill_bytes=_int(env, "BROKER_SPILL_BYTES", 4096, 1 << 30),
            min_free_bytes=_int(env, "BROKER_MIN_FREE_BYTES", 0, 1 << 50),
        )
        sts, access = _sts(env)  # last: its required role ARN must not mask the errors above
        return cls(**fields, sts=sts, access=access)

    def check_paths(self) -> None:
        """Boot-time checks that the files can be created (before binding)."""
        for var, p, anchor in (
            ("BROKER_LEDGER_DB", self.ledger_db, "ledger-db"),
            ("BROKER_SQLITE_ANCHOR_DB", self.anchor_db, "sqlite-anchor-db"),
            ("BROKER_PROJECTIONS_DB", self.projections_db, "projections-db"),
        ):
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BootFailure(var, str(p), f"cannot create directory {p.parent}: {exc.strerror}", anchor) from None
            if p.exists() and not os.access(p, os.R_OK | os.W_OK):
                raise BootFailure(var, str(p), "file is not readable and writable by the broker", anchor)
        if self.ledger_db.resolve() == self.anchor_db.resolve():
            raise BootFailure("BROKER_SQLITE_ANCHOR_DB", str(self.anchor_db),
                              "must be a different file from the ledger (an anchor is a separate failure domain)",
                              "sqlite-anchor-db")


def all_settings() -> tuple[Setting, ...]:
    """Every variable the broker reads (the STS adapter's own settings included)."""
    from anchors.evm import EVM_SETTINGS, EVM_TUNING_SETTINGS

    from .access_config import ACCESS_SETTINGS
    from .signin_config import SIGNIN_SETTINGS
    from .sts_config import STS_SETTINGS

    evm = tuple(Setting(name, default, doc, anchor, "evm") for name, default, doc, anchor in EVM_SETTINGS + EVM_TUNING_SETTINGS)
    return SETTINGS + tuple(STS_SETTINGS) + ACCESS_SETTINGS + evm + SIGNIN_SETTINGS


def markdown_table() -> str:
    lines = ["| Variable | Default | Meaning | Runbook |", "|---|---|---|---|"]
    for s in all_settings():
        default = f"`{s.default}`" if s.default is not None else "(derived)"
        lines.append(f"| `{s.name}` | {default} | {s.doc} | [§{s.anchor}](#{s.anchor}) |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(markdown_table())
