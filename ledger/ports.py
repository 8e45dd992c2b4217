"""Ports the core declares and outer packages implement.

`Anchor` is implemented by anchors/sqlite.py, anchors/evm.py and anchors/memory.py; every
implementation passes tests/contract/test_anchor_contract.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol, Sequence, runtime_checkable

from .chain import ChainRecord

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


@dataclass(frozen=True, slots=True)
class AssumeRoleRequest:
    """What the broker asks STS for, after the ledger admitted the mint (`MintRequested`)."""

    wallet: str
    omni_account: str
    agent_id: str
    service: str
    scope_path: str
    duration_seconds: int


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
    `Timeout`, `InvalidRequest`); the message is safe to return to a client (no secrets)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@runtime_checkable
class CredentialMinter(Protocol):
    """Issues short-lived cloud credentials (AWS STS AssumeRole in production: api/sts.py)."""

    def assume_role(self, request: AssumeRoleRequest) -> IssuedCredentials: ...

    def check_identity(self) -> str: ...


# --- Email magic link and OAuth2 sign-in (issue 16) ------------------------------------------


Clock = Callable[[], float]
"""Wall-clock time in Unix seconds (`time.time` in production; tests inject their own)."""


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
