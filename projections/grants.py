"""The `grants` read model: every capability grant with its use count and revocation.

Built from `GrantCreated`, `GrantUsed` and `GrantRevoked`. The API lists grants and finds the
candidate grant for a mint here; the *decision* to consume a use is made on the `Grant` aggregate
(strong consistency), never on this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ledger.chain import ChainRecord
from ledger.events import Event, GrantCreated, GrantRevoked, GrantUsed

from .base import BaseProjection
from .db import reading

metadata = sa.MetaData()

grants = sa.Table(
    "grants",
    metadata,
    sa.Column("grant_id", sa.String, primary_key=True),
    sa.Column("master_omni_account", sa.String, nullable=False),
    sa.Column("master_address", sa.String, nullable=False),
    sa.Column("daemon_address", sa.String, nullable=False),
    sa.Column("service", sa.String, nullable=False),
    sa.Column("scope_path", sa.String, nullable=False),
    sa.Column("granted_at", sa.Integer, nullable=False),
    sa.Column("expires_at", sa.Integer, nullable=False),
    sa.Column("max_uses", sa.Integer, nullable=False),
    sa.Column("used_count", sa.Integer, nullable=False, default=0),
    sa.Column("revoked_at", sa.Integer, nullable=True),
    sa.Column("audit_proof", sa.String, nullable=False),
    sa.Column("created_seq", sa.Integer, nullable=False),
    sa.Column("agent_id", sa.String, nullable=True),
    sa.Column("agent_id_prefix", sa.String, nullable=True),
    sa.Index("ix_grants_master", "master_omni_account"),
    sa.Index("ix_grants_daemon_service", "daemon_address", "service"),
)


@dataclass(frozen=True, slots=True)
class GrantRow:
    grant_id: str
    master_omni_account: str
    master_address: str
    daemon_address: str
    service: str
    scope_path: str
    granted_at: int
    expires_at: int
    max_uses: int
    used_count: int
    revoked_at: int | None
    audit_proof: str
    created_seq: int
    agent_id: str | None = None
    agent_id_prefix: str | None = None

    def wire(self) -> dict[str, Any]:
        return {
            "grant_id": self.grant_id,
            "master_omni_account": self.master_omni_account,
            "daemon_address": self.daemon_address,
            "service": self.service,
            "scope_path": self.scope_path,
            "granted_at": self.granted_at,
            "expires_at": self.expires_at,
            "max_uses": self.max_uses,
            "used_count": self.used_count,
            "revoked_at": self.revoked_at,
            "audit_proof": self.audit_proof,
            "agent_id": self.agent_id,
            "agent_id_prefix": self.agent_id_prefix,
        }


class GrantsProjection(BaseProjection):
    name = "grants"
    version = 2  # 2: agent_id pins (rebuilt from the ledger on upgrade)
    metadata = metadata
    event_types = frozenset({"GrantCreated", "GrantUsed", "GrantRevoked"})

    def apply(self, conn: Connection, record: ChainRecord, event: Event) -> None:
        if isinstance(event, GrantCreated):
            conn.execute(
                sa.insert(grants).prefix_with("OR IGNORE").values(
                    grant_id=event.grant_id, master_omni_account=event.master_omni_account,
                    master_address=event.master_address, daemon_address=event.daemon_address.lower(),
                    service=event.service, scope_path=event.scope_path, granted_at=event.granted_at,
                    expires_at=event.expires_at, max_uses=event.max_uses, used_count=0, revoked_at=None,
                    audit_proof=event.audit_proof, created_seq=record.seq, agent_id=event.agent_id,
                    agent_id_prefix=event.agent_id_prefix,
                )
            )
        elif isinstance(event, GrantUsed):
            conn.execute(
                sa.update(grants).where(grants.c.grant_id == event.grant_id)
                .values(used_count=sa.func.max(grants.c.used_count, event.use))
            )
        elif isinstance(event, GrantRevoked):
            conn.execute(
                sa.update(grants).where(grants.c.grant_id == event.grant_id).values(revoked_at=event.revoked_at)
            )


def _rows(bind: Engine | Connection, stmt: Any) -> list[GrantRow]:
    with reading(bind) as conn:
        return [GrantRow(*r) for r in conn.execute(stmt)]


_COLUMNS = tuple(grants.c)


def grants_of_master(bind: Engine | Connection, master_omni_account: str) -> list[GrantRow]:
    """The master's grants, newest first."""
    stmt = (sa.select(*_COLUMNS).where(grants.c.master_omni_account == master_omni_account)
            .order_by(grants.c.created_seq.desc()))
    return _rows(bind, stmt)


def grants_for_daemon(bind: Engine | Connection, daemon_address: str, service: str) -> list[GrantRow]:
    """Every grant naming this daemon address for `service`, newest first."""
    stmt = (sa.select(*_COLUMNS)
            .where(grants.c.daemon_address == daemon_address.lower(), grants.c.service == service)
            .order_by(grants.c.created_seq.desc()))
    return _rows(bind, stmt)


def live_grants_for_daemon(bind: Engine | Connection, daemon_address: str, now_unix: int) -> list[GrantRow]:
    """Unexpired, unrevoked grants naming this daemon (any service, any master), newest first."""
    stmt = (sa.select(*_COLUMNS)
            .where(grants.c.daemon_address == daemon_address.lower(), grants.c.revoked_at.is_(None),
                   grants.c.expires_at > now_unix)
            .order_by(grants.c.created_seq.desc()))
    return _rows(bind, stmt)


def get_grant(bind: Engine | Connection, grant_id: str) -> GrantRow | None:
    rows = _rows(bind, sa.select(*_COLUMNS).where(grants.c.grant_id == grant_id))
    return rows[0] if rows else None


class GrantReadModel:
    """The `GrantLookup` port of the use cases (ledger/ports.py) over this table: rows for a
    daemon (mint) or a master (list), and read-your-writes after an append."""

    def __init__(self, runner: Any, *, catch_up_timeout_s: float = 5.0) -> None:
        self.runner = runner  # projections.runner.ProjectionRunner
        self.catch_up_timeout_s = catch_up_timeout_s

    def for_daemon(self, daemon_address: str, service: str) -> list[GrantRow]:
        return grants_for_daemon(self.runner.engine, daemon_address, service)

    def of_master(self, master_omni_account: str) -> list[GrantRow]:
        return grants_of_master(self.runner.engine, master_omni_account)

    def live_for_daemon(self, daemon_address: str, now_unix: int) -> list[GrantRow]:
        return live_grants_for_daemon(self.runner.engine, daemon_address, now_unix)

    async def caught_up(self, seq: int) -> None:
        await self.runner.wait_until_async(seq, timeout=self.catch_up_timeout_s)
