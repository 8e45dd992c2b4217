"""The `sessions` read model: every session the broker issued and whether it was revoked.

Built from `SessionIssued` and `SessionRevoked`. A `SessionRevoked` with a `jti` marks that session;
one without (`not_before` set) marks every session of the account issued earlier in the ledger than
the revocation record, so the order of records, not the second they were stamped with, decides: a
session signed in the same second but after the revocation stays valid. Every session check asks
`session_revoked(jti)`; the table lives in the projections database, so revocations survive restarts
(and a rebuilt database replays them from the ledger).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ledger.chain import ChainRecord
from ledger.events import Event, SessionIssued, SessionRevoked

from .base import BaseProjection
from .db import reading

metadata = sa.MetaData()

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("jti", sa.String, primary_key=True),
    sa.Column("omni_account", sa.String, nullable=False),
    sa.Column("iat", sa.Integer, nullable=False),
    sa.Column("exp", sa.Integer, nullable=False),
    sa.Column("issued_seq", sa.Integer, nullable=False),
    sa.Column("revoked_seq", sa.Integer, nullable=True),
    sa.Index("ix_sessions_account", "omni_account", "revoked_seq"),
)


class SessionsProjection(BaseProjection):
    name = "sessions"
    version = 1
    metadata = metadata
    event_types = frozenset({"SessionIssued", "SessionRevoked"})

    def apply(self, conn: Connection, record: ChainRecord, event: Event) -> None:
        if isinstance(event, SessionIssued):
            conn.execute(sa.insert(sessions).prefix_with("OR IGNORE").values(
                jti=event.jti, omni_account=event.omni_account, iat=event.iat, exp=event.exp,
                issued_seq=record.seq, revoked_seq=None))
        elif isinstance(event, SessionRevoked):
            match = [sessions.c.omni_account == event.omni_account, sessions.c.revoked_seq.is_(None),
                     sessions.c.issued_seq < record.seq]
            if event.jti is not None:
                match.append(sessions.c.jti == event.jti)
            conn.execute(sa.update(sessions).where(*match).values(revoked_seq=record.seq))


def session_revoked(bind: Engine | Connection, jti: str) -> bool:
    """True when the session `jti` was revoked (a session this model does not know is not)."""
    with reading(bind) as conn:
        row = conn.execute(sa.select(sessions.c.revoked_seq).where(sessions.c.jti == jti)).first()
    return row is not None and row[0] is not None


def revoked_by(bind: Engine | Connection, revocation_seq: int, *, live_at: int) -> int:
    """How many sessions the revocation record `revocation_seq` revoked that were unexpired at `live_at`."""
    with reading(bind) as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(sessions).where(
            sessions.c.revoked_seq == revocation_seq, sessions.c.exp > live_at)).scalar_one())
