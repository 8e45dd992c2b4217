"""Ports the core declares and outer packages implement.

`Anchor` is implemented by anchors/sqlite.py, anchors/evm.py and anchors/memory.py; every
implementation passes tests/contract/test_anchor_contract.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, Sequence, runtime_checkable

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
