"""Ports the core declares and outer packages implement.

`Anchor` is implemented by anchors/sqlite.py, anchors/evm.py and anchors/memory.py; every
implementation passes tests/contract/test_anchor_contract.py. `CredentialMinter` by api/sts.py.
The use cases of `ledger/services/` depend on the ports below and nothing else outside `ledger/`:
`SessionIssuer` and `GrantProofSigner` (api/signing.py: JWT/JWS with the session keyring),
`GrantLookup` (projections/grants.py: the `grants` read model), `IdentityBackend` (api/legacy.py:
the legacy bearer backend over HTTP), `RateLimit` (api/ratelimit.py), `UnrecordedOutcomes`
(api/metrics.py), `AnchorReadiness` (the runtime's cached readiness of the required anchors),
`LedgerSpace` and `UnrecordedCredentialSink` (the runtime's free-space reading and the spill of
ledger/spill.py) and `Clock`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from .chain import ChainRecord

if TYPE_CHECKING:
    from .spill import SpillEntry

ReadinessStatus = Literal["ready", "degraded", "unready"]


@dataclass(frozen=True, slots=True)
class Readiness:
    status: ReadinessStatus
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "unready"


@runtime_checkable
class Anchor(Protocol):
    """An independent witness of the chain. It confirms prefixes: `confirmed_upto() == N` means it
    durably holds the hashes of seq 1..N.

    - `submit(records)` takes contiguous records starting at `confirmed_upto() + 1` (records at or
      below the confirmed position are accepted again when their hash matches, so a retry is
      harmless, and raise `AnchorConflict` when it differs). It returns once the records are durable
      (or, for asynchronous anchors, queued; `confirmed_upto` then advances later).
    - `verify(seq, hash)` is True iff the anchor confirmed exactly that hash at that seq.
    - `ready()` checks the backing store now; it never returns a constant.
    Errors are `ledger.errors.AnchorError` subclasses.
    """

    name: str

    def ready(self) -> Readiness: ...

    def submit(self, records: Sequence[ChainRecord]) -> None: ...

    def confirmed_upto(self) -> int: ...

    def verify(self, seq: int, hash: str) -> bool: ...


@runtime_checkable
class ReadinessView(Protocol):
    """The latest result of each background readiness probe (api/probes.py), read without blocking:
    nothing on a request path calls a dependency to learn whether it is up (design §8 "Never
    blocking"). `latest(check)` is None when `check` is not probed (or not yet configured)."""

    def latest(self, check: str) -> Readiness | None: ...


STS_SESSION_NAME_MAX = 64


def sts_session_name(wallet: str, requested_seq: int) -> str:
    """`agentkeys-<40 hex of the wallet>-<seq of MintRequested>` (design §8 "STS"): known before
    AssumeRole is called, so a credential whose response was lost is matched to its ledger record
    (CloudTrail, moto's `/moto-api/data.json`). 10 + 40 + 1 characters leave 13 digits for the seq
    (up to 10^13 - 1); a longer name is refused rather than truncated (it would stop being unique)."""
    hexpart = wallet.strip().lower().removeprefix("0x")
    hexpart = "".join(c for c in hexpart if c in "0123456789abcdef")[:40]
    if requested_seq < 1:
        raise ValueError("requested_seq must be the seq of the MintRequested record (>= 1)")
    name = f"agentkeys-{hexpart}-{requested_seq}"
    if len(name) > STS_SESSION_NAME_MAX:
        raise ValueError(f"STS session name for seq {requested_seq} exceeds {STS_SESSION_NAME_MAX} characters")
    return name


@dataclass(frozen=True, slots=True)
class AssumeRoleRequest:
    """What the broker asks STS for, after the ledger admitted the mint (`MintRequested`).

    `requested_seq` is the seq of that `MintRequested` record: the STS session name is derived from
    it (`session_name`), so the ledger names every AssumeRole before it is made. 0 only for callers
    that predate it (the adapter then falls back to the seed's time-based name)."""

    wallet: str
    omni_account: str
    agent_id: str
    service: str
    scope_path: str
    duration_seconds: int
    requested_seq: int = 0

    @property
    def session_name(self) -> str | None:
        return sts_session_name(self.wallet, self.requested_seq) if self.requested_seq > 0 else None


@dataclass(frozen=True, slots=True)
class IssuedCredentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: int = 0
    session_name: str = ""
    assumed_role_arn: str = ""
    role_arn: str = ""
    policy_json: str | None = None
    tags: tuple[tuple[str, str], ...] = ()


class StsError(Exception):
    """STS refused or could not be reached. `code` is the AWS error code (or `Unreachable`,
    `Timeout`, `InvalidRequest`); the message is safe to return to a client (no secrets).

    `outcome_unknown` is True when the request may have reached STS and its answer was lost (a
    read timeout, a connection dropped after sending): STS may have issued a credential under the
    request's session name, so the caller records `MintUnreleased{sts_outcome_unknown}`, not a
    denial."""

    def __init__(self, code: str, message: str, *, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.outcome_unknown = outcome_unknown


@runtime_checkable
class CredentialMinter(Protocol):
    """Issues short-lived cloud credentials (AWS STS AssumeRole in production: api/sts.py)."""

    def assume_role(self, request: AssumeRoleRequest) -> IssuedCredentials: ...

    def check_identity(self) -> str: ...


# --- ports of the use cases (ledger/services/) ---------------------------------------------------

Clock = Callable[[], float]
"""Wall-clock time in Unix seconds (`time.time` in production; tests inject their own)."""

LedgerSpace = Callable[[], bool]
"""`low_space()`: True when the ledger's disk has less free space than `BROKER_MIN_FREE_BYTES`
(runtime: a statvfs of the ledger's file system, `ledger/spill.py` `low_on_space`). The mint use
case then refuses before STS (`ledger_low_space`), so no credential is issued that the ledger
may not be able to record."""

UnrecordedCredentialSink = Callable[["SpillEntry"], bool]
"""`keep(credential)`: durably keep a credential STS issued that the ledger could not record (its
key id and STS session name, never the secret): the preallocated spill written with fsync, and a
CRITICAL log line (runtime: `ledger/spill.py` `spill_or_log` over the boot-time spill). True when
the spill holds it (it becomes `MintUnreleased{ledger_write_failed}` once the ledger recovers),
False when only the log line does. Blocks on fsync: the mint use case calls it in a worker
thread."""


AnchorReadiness = Callable[[str], Readiness]
"""`anchor_ready(name)`: the readiness of one anchor, ideally the last result of a background
probe. The mint use case calls it in a worker thread, never on the event loop; an implementation
that probes inline must bound the probe with a timeout."""


@dataclass(frozen=True, slots=True)
class SignedSession:
    """A session JWT signed by the broker, with what its ledger record names."""

    token: str = field(repr=False)
    kid: str
    jti: str
    iat: int
    exp: int
    token_sha256: str


@runtime_checkable
class SessionIssuer(Protocol):
    """Signs session JWTs (api/signing.py with the session keyring)."""

    def issue(self, *, omni_account: str, wallet_address: str, identity_type: str,
              identity_value: str) -> SignedSession: ...


@runtime_checkable
class GrantProofSigner(Protocol):
    """Signs a grant's content (the canonical JSON of `GrantCreated` without `audit_proof`) as a
    compact JWS that auditors verify offline against a recorded `SigningKeyRotated` key."""

    def sign(self, content: Mapping[str, Any]) -> str: ...


@dataclass(frozen=True, slots=True)
class GrantCandidate:
    """A grant the read model lists for a daemon and service; the decision to use it is made on
    the `Grant` aggregate, never on this row."""

    grant_id: str
    scope_path: str


@runtime_checkable
class GrantLookup(Protocol):
    """The `grants` read model (projections/grants.py)."""

    def for_daemon(self, daemon_address: str, service: str) -> Sequence[GrantCandidate]: ...

    def of_master(self, master_omni_account: str) -> Sequence[Any]: ...

    def live_for_daemon(self, daemon_address: str, now_unix: int) -> Sequence[Any]:
        """Unexpired, unrevoked grants naming the daemon, for any service and master (rows with
        `grant_id` and `master_omni_account`): its binding (design §3a)."""
        ...

    async def caught_up(self, seq: int) -> None:
        """Return once the read model has applied `seq` (read-your-writes), or after its timeout."""
        ...


class RateDecision(Protocol):
    @property
    def allowed(self) -> bool: ...

    @property
    def retry_after_seconds(self) -> int: ...

    @property
    def first_refusal(self) -> bool:
        """The first refused attempt of this key in this window (the one refusal that is recorded)."""
        ...


@runtime_checkable
class RateLimit(Protocol):
    """Counts one attempt for `key` and says whether it is within the limit, in one atomic step
    (parallel attempts never all pass a limit below their number)."""

    def check(self, key: Hashable) -> RateDecision: ...


@runtime_checkable
class UnrecordedOutcomes(Protocol):
    """Counts outcomes that are deliberately not recorded one by one in the ledger (design §8
    "Reasons and kinds": refusals beyond a rate limit after the first of a window; legacy bearer
    failures beyond the first per client and window). Implemented by api/metrics.py (the
    `agentkeys_mints_total{outcome}` and `agentkeys_auth_attempts_total{method,outcome}` counters)."""

    def mint(self, outcome: str) -> None: ...

    def auth(self, method: str, outcome: str) -> None: ...


class NoUnrecordedOutcomes:
    """An `UnrecordedOutcomes` that counts nothing (use cases built without metrics)."""

    def mint(self, outcome: str) -> None:
        return None

    def auth(self, method: str, outcome: str) -> None:
        return None


@runtime_checkable
class IdentityBackend(Protocol):
    """The legacy bearer backend: the wallet it vouches for a token, or a `Refusal`
    (`backend_rejected`, `backend_unreachable`)."""

    async def validate(self, token: str) -> str: ...


KILL_SWITCH_POLICY_NAME = "agentkeys-kill-switch"


@runtime_checkable
class RoleKillSwitch(Protocol):
    """Denies every session of an IAM role issued before a time (design §3 "Quarantine"): the
    inline role policy `agentkeys-kill-switch` with `aws:TokenIssueTime`, overwritten with the
    newer time. Implemented over boto3 IAM in api/iam.py. Raises `StsError` when IAM refuses or
    cannot be reached (nothing was changed then)."""

    def revoke_sessions_before(self, role_arn: str, not_before: str) -> None: ...


# --- Email magic link and OAuth2 sign-in (issue 16) ------------------------------------------


class LimitDecision(Protocol):
    @property
    def allowed(self) -> bool: ...

    @property
    def retry_after_seconds(self) -> int: ...


class Limiter(Protocol):
    """A counter per key in a window: `check` counts the attempt and decides
    (api/ratelimit.py `RateLimiter`)."""

    def check(self, key: str) -> LimitDecision: ...


@dataclass(frozen=True, slots=True)
class EmailMessage:
    to: str = field(repr=False)
    subject: str
    text: str = field(repr=False)  # carries a live sign-in link: never logged
    html: str = field(repr=False)


class EmailDeliveryError(Exception):
    """The sender could not hand the message over (the message is safe to show: no link)."""


@runtime_checkable
class EmailSender(Protocol):
    """Sends magic-link emails (api/email_senders.py: SES v2, SMTP, print)."""

    name: str

    def send(self, message: EmailMessage) -> None: ...

    def ready(self) -> Readiness: ...


@dataclass(frozen=True, slots=True)
class ProviderIdentity:
    """Who the identity provider says signed in. `subject` (the `sub` claim) is the identity;
    the email is informational only and never used to identify."""

    subject: str
    email: str | None = None


class IdentityProviderError(Exception):
    """The provider refused or could not be reached. `reason` is an `AuthFailed` reason
    (`token_exchange_failed`, `id_token_invalid`, `id_token_expired`, `id_token_audience`,
    `id_token_issuer`, `nonce_mismatch`); `upstream` is True when the provider was unreachable or
    answered with an error status (the caller gets a 502, not a 401)."""

    def __init__(self, reason: str, message: str, *, upstream: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.upstream = upstream


@runtime_checkable
class IdentityProvider(Protocol):
    """An OpenID Connect provider used with the authorization-code flow and PKCE
    (api/oauth2_google.py). `redeem` exchanges the code and verifies the id_token (signature by
    the provider's JWKS, `iss`, `aud`, `exp`, `iat`, `nonce`)."""

    name: str

    def authorization_url(self, *, state: str, code_challenge: str, nonce: str) -> str: ...

    def redeem(self, *, code: str, code_verifier: str, nonce: str) -> ProviderIdentity: ...

    def ready(self) -> Readiness: ...


class IssuedToken(Protocol):
    """A signed session token (api/auth/session_jwt.py `IssuedSession`)."""

    token: str
    kid: str
    token_sha256: str

    def session_issued_event(self) -> Any: ...


class SessionTokenIssuer(Protocol):
    def issue(self, omni_account: str, wallet_address: str, identity_type: str, identity_value: str) -> Any: ...
