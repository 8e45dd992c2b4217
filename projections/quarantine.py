"""The `quarantine` read model: every quarantine case, open and closed, with its history.

Built from `MintQuarantined` (opens case `q-<seq>`), `QuarantineResolved` (an operator's action:
`reanchoring`, or `resolved`; the worker closes a re-anchor) and `RoleSessionsRevoked` (the kill
switch applied for the case). `cases` holds the current state, `quarantine_history` one row per
record. Operators list and inspect cases here; the decision to resolve is made on the
`QuarantineCase` aggregate (`ledger/services/quarantine.py`), never on these tables.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .base import Applied, BaseProjection
from .db import reading

metadata = sa.MetaData()

cases = sa.Table(
    "quarantine_cases",
    metadata,
    sa.Column("case_id", sa.String, primary_key=True),
    sa.Column("authorized_seq", sa.Integer, nullable=False),
    sa.Column("status", sa.String, nullable=False),  # open | reanchoring | resolved
    sa.Column("reason", sa.String, nullable=False),
    sa.Column("missing_anchors", sa.String, nullable=False),  # JSON list
    sa.Column("access_key_id", sa.String, nullable=False),
    sa.Column("wallet", sa.String, nullable=False),
    sa.Column("expiration", sa.Integer, nullable=False),
    sa.Column("opened_at", sa.String, nullable=False),
    sa.Column("opened_seq", sa.Integer, nullable=False),
    sa.Column("action", sa.String, nullable=True),
    sa.Column("operator", sa.String, nullable=True),
    sa.Column("resolution_reason", sa.String, nullable=True),
    sa.Column("closed_at", sa.String, nullable=True),
    sa.Column("closed_seq", sa.Integer, nullable=True),
    sa.CheckConstraint("status IN ('open', 'reanchoring', 'resolved')", name="quarantine_status_check"),
    sa.Index("ix_quarantine_status", "status"),
)

history = sa.Table(
    "quarantine_history",
    metadata,
    sa.Column("case_id", sa.String, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("at", sa.String, nullable=False),
    sa.Column("type", sa.String, nullable=False),
    sa.Column("status", sa.String, nullable=True),
    sa.Column("action", sa.String, nullable=True),
    sa.Column("operator", sa.String, nullable=True),
    sa.Column("reason", sa.String, nullable=True),
    sa.Column("detail", sa.String, nullable=True),  # JSON: e.g. the kill switch's role and time
)


@dataclass(frozen=True, slots=True)
class Case:
    case_id: str
    authorized_seq: int
    status: str
    reason: str
    missing_anchors: list[str]
    access_key_id: str
    wallet: str
    expiration: int
    opened_at: str
    opened_seq: int
    action: str | None
    operator: str | None
    resolution_reason: str | None
    closed_at: str | None
    closed_seq: int | None
    history: list[dict[str, Any]]

    @property
    def closed(self) -> bool:
        return self.status == "resolved"

    def wire(self) -> dict[str, Any]:
        """The shape of design §8 "Operator wire" (plus the resolution fields)."""
        return {
            "case_id": self.case_id, "status": self.status, "reason": self.reason,
            "authorized_seq": self.authorized_seq, "access_key_id": self.access_key_id, "wallet": self.wallet,
            "expiration": self.expiration, "opened_at": self.opened_at, "missing_anchors": self.missing_anchors,
            "action": self.action, "operator": self.operator, "resolution_reason": self.resolution_reason,
            "closed_at": self.closed_at, "history": self.history,
        }


class QuarantineProjection(BaseProjection):
    name = "quarantine"
    version = 1
    metadata = metadata
    event_types = frozenset({"MintQuarantined", "QuarantineResolved", "RoleSessionsRevoked"})

    def apply_batch(self, conn: Connection, items: Sequence[Applied]) -> None:
        for item in items:
            d: Mapping[str, Any] = item.record.data
            kind = item.record.type
            if kind == "MintQuarantined":
                conn.execute(sa.insert(cases).prefix_with("OR IGNORE").values(
                    case_id=d["case_id"], authorized_seq=d["authorized_seq"], status="open", reason=d["reason"],
                    missing_anchors=json.dumps(list(d.get("missing_anchors") or [])),
                    access_key_id=d["access_key_id"], wallet=d["wallet"], expiration=d["expiration"],
                    opened_at=item.at, opened_seq=item.seq))
                self._history(conn, item, d["case_id"], status="open", reason=d["reason"])
            elif kind == "QuarantineResolved":
                values: dict[str, Any] = dict(status=d["status"], action=d["action"], operator=d["operator"],
                                              resolution_reason=d["reason"])
                if d["status"] == "resolved":
                    values.update(closed_at=item.at, closed_seq=item.seq)
                if d["operator"] == "worker":  # the worker closes a re-anchor: keep who asked for it
                    values.pop("operator")
                    values.pop("resolution_reason")
                conn.execute(sa.update(cases).where(cases.c.case_id == d["case_id"]).values(**values))
                self._history(conn, item, d["case_id"], status=d["status"], action=d["action"],
                              operator=d["operator"], reason=d["reason"])
            elif kind == "RoleSessionsRevoked":
                self._history(conn, item, d["case_id"], action="revoke", operator=d["operator"],
                              detail=json.dumps({"role_arn": d["role_arn"], "not_before": d["not_before"]},
                                                sort_keys=True))

    @staticmethod
    def _history(conn: Connection, item: Applied, case_id: str, **values: Any) -> None:
        conn.execute(sa.insert(history).prefix_with("OR IGNORE").values(
            case_id=case_id, seq=item.seq, at=item.at, type=item.record.type, **values))


# --- queries -------------------------------------------------------------------------------------


def _history_of(conn: Connection, case_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {c: [] for c in case_ids}
    if not case_ids:
        return out
    rows = conn.execute(sa.select(history).where(history.c.case_id.in_(case_ids))
                        .order_by(history.c.case_id, history.c.seq))
    for r in rows:
        entry = {"seq": r.seq, "at": r.at, "type": r.type, "status": r.status, "action": r.action,
                 "operator": r.operator, "reason": r.reason}
        if r.detail:
            entry["detail"] = json.loads(r.detail)
        out[r.case_id].append({k: v for k, v in entry.items() if v is not None})
    return out


def _cases(conn: Connection, stmt: Any) -> list[Case]:
    rows = list(conn.execute(stmt))
    hist = _history_of(conn, [r.case_id for r in rows])
    return [Case(case_id=r.case_id, authorized_seq=r.authorized_seq, status=r.status, reason=r.reason,
                 missing_anchors=json.loads(r.missing_anchors), access_key_id=r.access_key_id, wallet=r.wallet,
                 expiration=r.expiration, opened_at=r.opened_at, opened_seq=r.opened_seq, action=r.action,
                 operator=r.operator, resolution_reason=r.resolution_reason, closed_at=r.closed_at,
                 closed_seq=r.closed_seq, history=hist[r.case_id]) for r in rows]


def list_cases(bind: Engine | Connection, *, status: str = "open", limit: int = 500) -> list[Case]:
    """`status="open"`: every case not yet resolved (open or re-anchoring), oldest first;
    `"all"`: every case; `"reanchoring"`/`"resolved"`: those only."""
    stmt = sa.select(cases).order_by(cases.c.opened_seq).limit(max(1, min(limit, 10_000)))
    if status == "open":
        stmt = stmt.where(cases.c.status != "resolved")
    elif status != "all":
        stmt = stmt.where(cases.c.status == status)
    with reading(bind) as conn:
        return _cases(conn, stmt)


def get_case(bind: Engine | Connection, case_id: str) -> Case | None:
    with reading(bind) as conn:
        found = _cases(conn, sa.select(cases).where(cases.c.case_id == case_id))
    return found[0] if found else None


def open_count(bind: Engine | Connection) -> int:
    with reading(bind) as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(cases)
                                .where(cases.c.status != "resolved")).scalar_one())
