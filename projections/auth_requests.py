"""The `auth_requests` read model: the status of email magic-link and OAuth2 sign-ins.

Built from `EmailLinkRequested` / `OAuth2FlowStarted` (pending), the `AuthSucceeded` /
`AuthFailed` that consume them (verified / failed) and the `SessionIssued` / `SessionWithheld` on
the same stream (delivered / verified again). Rebuildable from the ledger like every projection.
Rows of requests past their expiry plus the delivery grace are purged by the
`auth-requests-purge` job (`purge_expired`); a purged request is unknown to the status poll.
Decisions (consume, deliver) are made on the `SignInRequest` aggregate, never on this table.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ledger.chain import ChainRecord
from ledger.events import (
    AuthFailed,
    AuthSucceeded,
    EmailLinkRequested,
    Event,
    OAuth2FlowStarted,
    SessionIssued,
    SessionWithheld,
)
from ledger.signin_request import DELIVERY_GRACE_S

from .base import BaseProjection
from .db import reading

metadata = sa.MetaData()

auth_requests = sa.Table(
    "auth_requests",
    metadata,
    sa.Column("request_id", sa.String, primary_key=True),
    sa.Column("stream", sa.String, nullable=False, unique=True),
    sa.Column("method", sa.String, nullable=False),
    sa.Column("status", sa.String, nullable=False),  # pending | verified | failed | delivered
    sa.Column("expires_at", sa.Integer, nullable=False),
    sa.Column("omni_account", sa.String, nullable=True),
    sa.Column("failure_reason", sa.String, nullable=True),
    sa.Column("created_seq", sa.Integer, nullable=False),
    sa.Column("updated_seq", sa.Integer, nullable=False),
    sa.Index("ix_auth_requests_expires_at", "expires_at"),
)

SIGNIN_METHODS = ("email_link", "oauth2_google")


@dataclass(frozen=True, slots=True)
class AuthRequestRow:
    request_id: str
    stream: str
    method: str
    status: str
    expires_at: int
    omni_account: str | None
    failure_reason: str | None
    created_seq: int
    updated_seq: int


class AuthRequestsProjection(BaseProjection):
    name = "auth_requests"
    version = 1
    metadata = metadata
    event_types = frozenset({"EmailLinkRequested", "OAuth2FlowStarted", "AuthSucceeded", "AuthFailed",
                             "SessionIssued", "SessionWithheld"})

    def apply(self, conn: Connection, record: ChainRecord, event: Event) -> None:
        t = auth_requests
        if isinstance(event, (EmailLinkRequested, OAuth2FlowStarted)):
            method = "email_link" if isinstance(event, EmailLinkRequested) else "oauth2_google"
            conn.execute(sa.insert(t).prefix_with("OR IGNORE").values(
                request_id=event.request_id, stream=record.stream, method=method, status="pending",
                expires_at=event.expires_at, omni_account=None, failure_reason=None, created_seq=record.seq,
                updated_seq=record.seq))
            return
        pending = sa.and_(t.c.stream == record.stream, t.c.status == "pending")
        if isinstance(event, AuthSucceeded) and event.method in SIGNIN_METHODS:
            conn.execute(sa.update(t).where(pending).values(status="verified", omni_account=event.omni_account,
                                                            updated_seq=record.seq))
        elif isinstance(event, AuthFailed) and event.method in SIGNIN_METHODS:
            conn.execute(sa.update(t).where(pending).values(status="failed", failure_reason=event.detail,
                                                            updated_seq=record.seq))
        elif isinstance(event, SessionIssued):
            conn.execute(sa.update(t).where(t.c.stream == record.stream, t.c.status == "verified")
                         .values(status="delivered", updated_seq=record.seq))
        elif isinstance(event, SessionWithheld):
            conn.execute(sa.update(t).where(t.c.stream == record.stream, t.c.status == "delivered")
                         .values(status="verified", updated_seq=record.seq))


def get_request(bind: Engine | Connection, request_id: str) -> AuthRequestRow | None:
    with reading(bind) as conn:
        row = conn.execute(sa.select(*auth_requests.c).where(auth_requests.c.request_id == request_id)).first()
    return AuthRequestRow(*row) if row is not None else None


def purge_expired(engine: Engine, now_unix: int, grace_s: int = DELIVERY_GRACE_S) -> int:
    """Delete the rows of requests that expired more than `grace_s` ago; returns how many."""
    with engine.begin() as conn:
        result = conn.execute(sa.delete(auth_requests).where(auth_requests.c.expires_at < now_unix - grace_s))
    return int(result.rowcount or 0)


class AuthRequestIndex:
    """`ledger.services.signin_requests.RequestIndex` over this read model."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def known(self, request_id: str) -> bool:
        return get_request(self.engine, request_id) is not None
