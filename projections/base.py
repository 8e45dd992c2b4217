"""What a projection is, and where the runner keeps its positions.

A projection turns ledger records into rows of read-model tables. It owns its tables (one
`MetaData` per projection), applies records given to it in `seq` order inside the runner's
transaction, and can reset its tables to empty. It never commits, never reads the ledger and never
tracks its own position: the runner does that, in the same transaction as the rows
(`projection_positions`), which is what makes application exactly-once.

Write one by subclassing `BaseProjection` (per-record `apply`, or a set-based `apply_batch` for
speed) and add it to `projections/registry.py`. Bump `version` when the tables or the meaning of
the rows change: the runner then resets and replays the projection on start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.chain import ChainRecord
from ledger.events import Event


@dataclass(frozen=True, slots=True)
class Applied:
    """One record handed to a projection: the chain record and its decoded event."""

    record: ChainRecord
    event: Event

    @property
    def seq(self) -> int:
        return self.record.seq

    @property
    def at(self) -> str:
        return self.record.at


@runtime_checkable
class Projection(Protocol):
    """The contract between a read model and the runner."""

    # Read-only members: the projections declare them as class variables (BaseProjection).
    @property
    def name(self) -> str:
        """Stable identifier: the CLI name and the key of its row in `projection_positions`."""

    @property
    def version(self) -> int:
        """Schema/semantics version; a change makes the runner rebuild the projection."""

    @property
    def metadata(self) -> sa.MetaData:
        """The projection's tables (and only them)."""

    @property
    def event_types(self) -> frozenset[str] | None:
        """Event type names the projection consumes (None: every decodable type). Records of other
        types are not passed to it, but its position still advances past them."""

    def apply_batch(self, conn: Connection, items: Sequence[Applied]) -> None:
        """Apply consecutive records (in seq order) inside the caller's transaction."""
        ...

    def reset(self, conn: Connection) -> None:
        """Make the tables exist and be empty (inside the caller's transaction)."""
        ...


class BaseProjection:
    """Defaults for `Projection`: `apply_batch` calls `apply` per record; `reset` drops and
    re-creates the projection's tables (so a schema change takes effect on rebuild)."""

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    metadata: ClassVar[sa.MetaData]
    event_types: ClassVar[frozenset[str] | None] = None

    def apply(self, conn: Connection, record: ChainRecord, event: Event) -> None:
        raise NotImplementedError

    def apply_batch(self, conn: Connection, items: Sequence[Applied]) -> None:
        for item in items:
            self.apply(conn, item.record, item.event)

    def reset(self, conn: Connection) -> None:
        self.metadata.drop_all(conn)
        self.metadata.create_all(conn)

    def create(self, conn: Connection) -> None:
        """Create missing tables (no-op when they exist)."""
        self.metadata.create_all(conn, checkfirst=True)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} v{self.version}>"


# --- tracking ------------------------------------------------------------------------------------

tracking_metadata = sa.MetaData()

projection_positions = sa.Table(
    "projection_positions",
    tracking_metadata,
    sa.Column("name", sa.String, primary_key=True),
    # Every record with seq <= this has been applied (or skipped) exactly once.
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.String, nullable=False),
)
