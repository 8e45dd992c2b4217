"""The `wallets` read model: which addresses are bound to which OmniAccount, with which role.

Built from `WalletBound` events. A binding is permanent within an OmniAccount (the
`WalletBinding` aggregate refuses a role flip or parent change), so the first `WalletBound` for an
`(omni_account, address)` pair wins and any later one for the same pair is ignored. Addresses are
stored and looked up lowercase.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ledger.events import WalletBound

from .base import Applied, BaseProjection
from .db import bulk_insert_ignore, reading

metadata = sa.MetaData()

wallets = sa.Table(
    "wallets",
    metadata,
    sa.Column("omni_account", sa.String, primary_key=True),
    sa.Column("address", sa.String, primary_key=True),
    sa.Column("role", sa.String, nullable=False),
    sa.Column("parent_address", sa.String, nullable=True),
    sa.Column("created_at", sa.String, nullable=False),  # the binding record's `at` (RFC 3339, UTC)
    sa.Column("bound_seq", sa.Integer, nullable=False),  # the binding record's seq
    sa.CheckConstraint("role IN ('master', 'daemon')", name="wallets_role_check"),
    sa.Index("ix_wallets_address", "address"),
)


@dataclass(frozen=True, slots=True)
class Wallet:
    omni_account: str
    address: str
    role: str
    parent_address: str | None
    created_at: str
    bound_seq: int


def _row(item: Applied) -> tuple[Any, ...]:
    """A `wallets` row, in the table's column order."""
    ev = cast(WalletBound, item.event)  # event_types admits WalletBound only
    return (
        ev.omni_account,
        ev.address.lower(),
        ev.role,
        ev.parent_address.lower() if ev.parent_address else None,
        item.record.at,
        item.record.seq,
    )


class WalletsProjection(BaseProjection):
    name = "wallets"
    version = 1
    metadata = metadata
    event_types = frozenset({"WalletBound"})

    def apply_batch(self, conn: Connection, items: Sequence[Applied]) -> None:
        rows = [_row(item) for item in items if isinstance(item.event, WalletBound)]
        bulk_insert_ignore(conn, wallets, rows)  # one executemany per batch


# --- queries -------------------------------------------------------------------------------------

_COLUMNS = (
    wallets.c.omni_account,
    wallets.c.address,
    wallets.c.role,
    wallets.c.parent_address,
    wallets.c.created_at,
    wallets.c.bound_seq,
)


def _to_wallet(row: Any) -> Wallet:
    return Wallet(*row)


def get_wallet(bind: Engine | Connection, omni_account: str, address: str) -> Wallet | None:
    """The binding of `address` in `omni_account`, or None."""
    stmt = sa.select(*_COLUMNS).where(
        wallets.c.omni_account == omni_account, wallets.c.address == address.lower()
    )
    with reading(bind) as conn:
        row = conn.execute(stmt).first()
    return _to_wallet(row) if row is not None else None


def wallets_for_address(bind: Engine | Connection, address: str) -> list[Wallet]:
    """Every binding of `address` (one per OmniAccount it is bound in), oldest first."""
    stmt = sa.select(*_COLUMNS).where(wallets.c.address == address.lower()).order_by(wallets.c.bound_seq)
    with reading(bind) as conn:
        return [_to_wallet(r) for r in conn.execute(stmt)]


def wallets_in_account(bind: Engine | Connection, omni_account: str) -> list[Wallet]:
    """Every wallet bound in `omni_account`, oldest first."""
    stmt = (
        sa.select(*_COLUMNS).where(wallets.c.omni_account == omni_account).order_by(wallets.c.bound_seq)
    )
    with reading(bind) as conn:
        return [_to_wallet(r) for r in conn.execute(stmt)]
