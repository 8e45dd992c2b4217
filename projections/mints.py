"""The `mints` read model: one row per mint request, its accounts, grant, resource, STS key id,
expiry and status (design §8): `requested`, `released`, `withheld`, `unreleased`, `unconfirmed`,
`quarantined`, `resolved`, `denied`.

Built from `MintRequested` (requested), `MintAuthorized` (released: STS issued it and nothing
says it was held back; a release itself is never recorded), `MintWithheld`, `MintUnreleased`,
`ReleaseUnconfirmed` (kind `mint`), `MintQuarantined`, `QuarantineResolved` (status `resolved`)
and `MintDenied`. Keyed by `wallet:request_id` (the `MintRequest` aggregate's key). Events a build
does not know yet (`MintUnreleased`, `ReleaseUnconfirmed` before their issues land) are read from
the record's data when they arrive, so this file needs no change then.

The anchor status of a mint is not stored: it changes without a ledger event, so `with_anchor_status`
computes it at query time from the anchors' `confirmed_upto()`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .base import Applied, BaseProjection
from .db import reading

STATUSES = ("requested", "released", "withheld", "unreleased", "unconfirmed", "quarantined", "resolved", "denied")

metadata = sa.MetaData()

mints = sa.Table(
    "mints",
    metadata,
    sa.Column("mint_key", sa.String, primary_key=True),  # wallet:request_id
    sa.Column("request_id", sa.String, nullable=False),
    sa.Column("wallet", sa.String, nullable=False),
    sa.Column("omni_account", sa.String, nullable=True),
    sa.Column("grant_master_omni_account", sa.String, nullable=True),
    sa.Column("agent_id", sa.String, nullable=True),
    sa.Column("grant_id", sa.String, nullable=True),
    sa.Column("service", sa.String, nullable=True),
    sa.Column("scope_path", sa.String, nullable=True),
    sa.Column("role_arn", sa.String, nullable=True),
    sa.Column("sts_session_name", sa.String, nullable=True),
    sa.Column("access_key_id", sa.String, nullable=True),
    sa.Column("expiration", sa.Integer, nullable=True),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("reason", sa.String, nullable=True),
    sa.Column("case_id", sa.String, nullable=True),
    sa.Column("first_seq", sa.Integer, nullable=False),
    sa.Column("authorized_seq", sa.Integer, nullable=True),
    sa.Column("updated_seq", sa.Integer, nullable=False),
    sa.Column("created_at", sa.String, nullable=False),  # `at` of the first record
    sa.Column("updated_at", sa.String, nullable=False),
    sa.CheckConstraint("status IN (" + ", ".join(f"'{s}'" for s in STATUSES) + ")", name="mints_status_check"),
    sa.Index("ix_mints_authorized_seq", "authorized_seq"),
    sa.Index("ix_mints_first_seq", "first_seq"),
    sa.Index("ix_mints_omni", "omni_account"),
)


@dataclass(frozen=True, slots=True)
class MintRow:
    mint_key: str
    request_id: str
    wallet: str
    omni_account: str | None
    grant_master_omni_account: str | None
    agent_id: str | None
    grant_id: str | None
    service: str | None
    scope_path: str | None
    role_arn: str | None
    sts_session_name: str | None
    access_key_id: str | None
    expiration: int | None
    status: str
    reason: str | None
    case_id: str | None
    first_seq: int
    authorized_seq: int | None
    updated_seq: int
    created_at: str
    updated_at: str

    def wire(self) -> dict[str, Any]:
        return asdict(self)


def _key(wallet: str, request_id: str) -> str:
    return f"{wallet.lower()}:{request_id}"


class MintsProjection(BaseProjection):
    name = "mints"
    version = 1
    metadata = metadata
    event_types = frozenset({
        "MintRequested", "MintAuthorized", "MintWithheld", "MintDenied", "MintUnreleased",
        "ReleaseUnconfirmed", "MintQuarantined", "QuarantineResolved",
    })

    def apply_batch(self, conn: Connection, items: Sequence[Applied]) -> None:
        for item in items:
            handler: Callable[[Connection, Applied, Mapping[str, Any]], None] | None = getattr(
                self, "_on_" + item.record.type, None)
            if handler is not None:
                handler(conn, item, item.record.data)

    # --- helpers ----------------------------------------------------------------------------

    def _upsert(self, conn: Connection, item: Applied, wallet: str, request_id: str, **values: Any) -> None:
        key = _key(wallet, request_id)
        values = {k: v for k, v in values.items() if v is not None or k == "reason"}
        values.update(updated_seq=item.seq, updated_at=item.at)
        done = conn.execute(sa.update(mints).where(mints.c.mint_key == key).values(**values))
        if done.rowcount == 0:
            conn.execute(sa.insert(mints).values(mint_key=key, request_id=request_id, wallet=wallet.lower(),
                                                 first_seq=item.seq, created_at=item.at, **values))

    def _by_authorized_seq(self, conn: Connection, item: Applied, seq: int, **values: Any) -> None:
        values.update(updated_seq=item.seq, updated_at=item.at)
        conn.execute(sa.update(mints).where(mints.c.authorized_seq == seq).values(**values))

    # --- events -----------------------------------------------------------------------------

    def _on_MintRequested(self, conn: Connection, item: Applied, d: Mapping[str, Any]) -> None:
        self._upsert(conn, item, d["wallet"], d["request_id"], status="requested", reason=None,
                     omni_account=d.get("omni_account"), agent_id=d.get("agent_id"), grant_id=d.get("grant_id") or None,
                     service=d.get("service"), scope_path=d.get("scope_path"))

    def _on_MintAuthorized(self, conn: Connection, item: Applied, d: Mapping[str, Any]) -> None:
        self._upsert(conn, item, d["wallet"], d["request_id"], status="released", reason=None,
                     omni_account=d.get("omni_account"), agent_id=d.get("agent_id"), grant_id=d.get("grant_id") or None,
                     service=d.get("service"), scope_path=d.get("scope_path"), role_arn=d.get("role_arn"),
                     sts_session_name=d.get("sts_session_name"), access_key_id=d.get("access_key_id"),
                     expiration=d.get("expiration"), authorized_seq=item.seq,
                     grant_master_omni_account=d.get("grant_master_omni_account"))

    def _on_MintWithheld(self, conn: Connection, item: Applied, d: Mapping[str, Any]) -> None:
        self._upsert(conn, item, d["wallet"], d["request_id"], status="withheld", reason=d.get("reason"),
                     access_key_id=d.get("access_key_id"))

    def _on_MintDenied(self, conn: Connection, item: Applied, d: Mapping[str, Any]) -> None:
        self._upsert(conn, item, d["wallet"], d["request_id"], status="denied", reason=d.get("reason"),
                     omni_account=d.get("omni_account") or None, grant_id=d.get("grant_id"), service=d.get("service"))

    def _on_MintUnreleased(self, conn: Connection, item: Applied, d: Mapping[str, Any]) -> None:
        self._upsert(conn, item, d["wallet"], d["request_id"], status="unreleased", reason=d.get("reason"),
                     role_arn=d.get("role_arn"), sts_session_name=d.get("sts_session_name"),
                     access_key_id=d.get("access_key_id"), expiration=d.get("expiration"))

    def _on_ReleaseUnconfirmed(self, conn: Connection, item: Applied, d: Mapping[str, Any]) -> None:
        if d.get("kind", "mint") == "mint" and isinstance(d.get("authorized_seq"), int):
            self._by_authorized_seq(conn, item, d["authorized_seq"], status="unconfirmed", reason="outcome_unknown")

    def _on_MintQuarantined(self, conn: Connection, item: Applied, d: Mapping[str, Any]) -> None:
        self._by_authorized_seq(conn, item, d["authorized_seq"], status="quarantined", reason=d.get("reason"),
                                case_id=d.get("case_id"))

    def _on_QuarantineResolved(self, conn: Connection, item: Applied, d: Mapping[str, Any]) -> None:
        if d.get("status") != "resolved":
            return  # re-anchoring: still quarantined until the worker closes the case
        conn.execute(sa.update(mints).where(mints.c.case_id == d["case_id"]).values(
            status="resolved", reason=f"{d.get('action')}", updated_seq=item.seq, updated_at=item.at))


# --- queries -------------------------------------------------------------------------------------

_COLUMNS = tuple(mints.c)


def recent_mints(bind: Engine | Connection, *, limit: int = 50, status: str | None = None,
                 omni_account: str | None = None) -> list[MintRow]:
    """The newest mints first (by the seq of their first record)."""
    stmt = sa.select(*_COLUMNS).order_by(mints.c.first_seq.desc()).limit(max(1, min(limit, 1000)))
    if status is not None:
        stmt = stmt.where(mints.c.status == status)
    if omni_account is not None:
        stmt = stmt.where(mints.c.omni_account == omni_account)
    with reading(bind) as conn:
        return [MintRow(*r) for r in conn.execute(stmt)]


def get_mint(bind: Engine | Connection, wallet: str, request_id: str) -> MintRow | None:
    with reading(bind) as conn:
        row = conn.execute(sa.select(*_COLUMNS).where(mints.c.mint_key == _key(wallet, request_id))).first()
    return MintRow(*row) if row is not None else None


def status_counts(bind: Engine | Connection) -> dict[str, int]:
    """Mints per status (every status present, zero when none)."""
    counts = dict.fromkeys(STATUSES, 0)
    with reading(bind) as conn:
        for status, n in conn.execute(sa.select(mints.c.status, sa.func.count()).group_by(mints.c.status)):
            counts[status] = int(n)
    return counts


def with_anchor_status(row: MintRow, positions: Mapping[str, int]) -> dict[str, Any]:
    """The row's wire form plus `anchors`: for each anchor, whether it has confirmed the mint's
    `MintAuthorized` record, computed now from `positions` (anchor name -> `confirmed_upto()`)."""
    out = row.wire()
    seq = row.authorized_seq
    out["anchors"] = {name: (seq is not None and pos >= seq) for name, pos in positions.items()}
    return out
