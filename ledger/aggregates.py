"""Aggregates: consistency boundaries decided by optimistic concurrency.

An aggregate is rebuilt by folding its stream's events (`when_<EventType>` methods). A command
method checks the current state and returns the new events; `Ledger.append(stream, version, ...)`
writes them at the next versions, so two racing commands on one aggregate cannot both win: the
loser gets `ConcurrencyConflict` and re-reads. Single-use things (challenges, request ids, grant
uses) are aggregates for exactly this reason.
"""

from __future__ import annotations

import uuid
from typing import ClassVar, Self

from .errors import LedgerError
from .events import Event, WalletBound, WalletRole

# Namespace for deterministic stream ids: uuid5(NAMESPACE, "<kind>:<natural key>").
STREAM_NAMESPACE = uuid.UUID("5f0c3a52-8a0e-4c55-9a3b-6d1f4e2b7c90")


def stream_id(kind: str, key: str) -> uuid.UUID:
    """The stream of the aggregate `kind` with natural key `key` (stable across processes)."""
    return uuid.uuid5(STREAM_NAMESPACE, f"{kind}:{key}")


class Aggregate:
    kind: ClassVar[str] = "aggregate"

    def __init__(self, stream: uuid.UUID) -> None:
        self.stream = stream
        self.version = 0

    def apply(self, event: Event) -> None:
        handler = getattr(self, f"when_{type(event).__name__}", None)
        if handler is None:
            raise LedgerError(f"{type(self).__name__} cannot apply {type(event).__name__}")
        handler(event)
        self.version += 1

    @classmethod
    def replay(cls, stream: uuid.UUID, events: list[Event]) -> Self:
        agg = cls(stream)
        for event in events:
            agg.apply(event)
        return agg


class WalletRoleConflict(LedgerError):
    """A wallet is already bound in this OmniAccount with another role or parent."""


class WalletBinding(Aggregate):
    """The binding of one address inside one OmniAccount (stream key `omni:address`)."""

    kind = "wallet-binding"

    def __init__(self, stream: uuid.UUID) -> None:
        super().__init__(stream)
        self.bound: WalletBound | None = None

    @staticmethod
    def stream_for(omni_account: str, address: str) -> uuid.UUID:
        return stream_id(WalletBinding.kind, f"{omni_account}:{address.lower()}")

    def when_WalletBound(self, event: WalletBound) -> None:
        self.bound = event

    def bind(
        self, *, omni_account: str, address: str, role: WalletRole, parent_address: str | None
    ) -> list[Event]:
        address = address.lower()
        parent = parent_address.lower() if parent_address else None
        if self.bound is None:
            return [WalletBound(omni_account=omni_account, address=address, role=role, parent_address=parent)]
        if self.bound.role == role and self.bound.parent_address == parent:
            return []  # idempotent
        raise WalletRoleConflict(
            f"{address} is bound as {self.bound.role}"
            + (f" under {self.bound.parent_address}" if self.bound.parent_address else "")
            + f" in {omni_account}; refusing {role}" + (f" under {parent}" if parent else "")
        )
