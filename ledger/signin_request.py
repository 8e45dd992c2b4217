"""The `SignInRequest` aggregate: one email magic-link request or one OAuth2 flow (issue 16).

Stream key: the request id (`eml-...` / `oa2-...`). Version 1 starts it (`EmailLinkRequested` or
`OAuth2FlowStarted`); the first answer, right or wrong, consumes it at version 2 (`AuthSucceeded` /
`AuthFailed`), so a magic-link token or an OAuth2 code works once: two racing answers cannot both
write version 2. After a success the session is delivered to the poller once: `SessionIssued` at
the next version (two racing polls cannot both write it); a `SessionWithheld` (the anchors did not
confirm in time) makes the request deliverable again.
"""

from __future__ import annotations

import hmac
import uuid

from .aggregates import Aggregate, stream_id
from .errors import LedgerError
from .events import (
    AuthFailed,
    AuthSucceeded,
    EmailLinkRequested,
    OAuth2FlowStarted,
    SessionIssued,
    SessionWithheld,
)

# A verified request whose session was not collected within this many seconds after the request
# expired is no longer delivered (and the read model purges it).
DELIVERY_GRACE_S = 600


class SignInNotPending(LedgerError):
    """The request cannot be answered: unknown, already consumed, or expired (`reason` is the
    `AuthFailed` reason)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SignInRequest(Aggregate):
    kind = "signin-request"

    def __init__(self, stream: uuid.UUID) -> None:
        super().__init__(stream)
        self.started: EmailLinkRequested | OAuth2FlowStarted | None = None
        self.outcome: AuthSucceeded | AuthFailed | None = None
        self.session: SessionIssued | None = None

    @staticmethod
    def stream_for(request_id: str) -> uuid.UUID:
        return stream_id(SignInRequest.kind, request_id)

    @property
    def method(self) -> str | None:
        if isinstance(self.started, EmailLinkRequested):
            return "email_link"
        if isinstance(self.started, OAuth2FlowStarted):
            return "oauth2_google"
        return None

    @property
    def expires_at(self) -> int:
        return self.started.expires_at if self.started is not None else 0

    def when_EmailLinkRequested(self, event: EmailLinkRequested) -> None:
        self.started = event

    def when_OAuth2FlowStarted(self, event: OAuth2FlowStarted) -> None:
        self.started = event

    def when_AuthSucceeded(self, event: AuthSucceeded) -> None:
        if self.outcome is None:
            self.outcome = event

    def when_AuthFailed(self, event: AuthFailed) -> None:
        if self.outcome is None:
            self.outcome = event

    def when_SessionIssued(self, event: SessionIssued) -> None:
        self.session = event

    def when_SessionWithheld(self, event: SessionWithheld) -> None:
        self.session = None  # not released: the poller may collect again

    # --- decisions ----------------------------------------------------------------------------

    def check_pending(self, now_unix: int, method: str) -> EmailLinkRequested | OAuth2FlowStarted:
        """The started event when the request may be answered now, else `SignInNotPending`.
        Unknown and consumed collapse into one message (no probing oracle)."""
        if self.started is None or self.method != method:
            raise SignInNotPending("challenge_unknown", "sign-in request unknown or already consumed")
        if self.outcome is not None:
            raise SignInNotPending("challenge_consumed", "sign-in request unknown or already consumed")
        if now_unix > self.started.expires_at:
            raise SignInNotPending("challenge_expired", "sign-in request expired (>10 min after it was issued)")
        return self.started

    def poll_token_matches(self, poll_token_sha256: str) -> bool:
        if self.started is None:
            return False
        return hmac.compare_digest(self.started.poll_token_sha256.encode(), poll_token_sha256.encode())

    def collectable(self, now_unix: int) -> bool:
        return now_unix <= self.expires_at + DELIVERY_GRACE_S
