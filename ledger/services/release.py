"""The one release path (design §3): append the authorization, wait for the gate, and record a
`*Withheld` when nothing may be released.

Every use case that hands out a credential (session JWTs at sign-in and legacy exchange, AWS
credentials at mint, OIDC tokens later) goes through `ReleasePath.release`:

1. `append()` writes the authorizing record (`SessionIssued`, `MintAuthorized`, ...) and returns it;
2. the release gate waits until every anchor the policy requires has confirmed that record, bounded
   by the deadline, without blocking the event loop;
3. released: the caller answers with the credential. Otherwise the `*Withheld` record built by
   `withhold(reason, missing)` is appended on the authorization's stream and `Withheld` is raised:
   - `anchor_deadline`: the deadline passed, or the gate itself failed (an anchor error);
   - `request_cancelled`: the request was cut off while waiting (shutdown, client gone); the
     record is written synchronously because the task is being cancelled, then the
     cancellation propagates;
   - `anchor_mismatch`: an anchor's position covers the record but it holds another hash there
     (a stale or tampered witness): the integrity alarm is raised too (`TamperDetected`).
No credential material is ever in a `Withheld`. While an integrity alarm is open
(ledger/integrity.py) nothing is appended at all: `check_integrity()` refuses first (503
`unavailable`, reason `integrity_alarm`); the mint calls it before STS.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from ..app import Ledger
from ..chain import ChainRecord as Record
from ..errors import ConcurrencyConflict
from ..events import Event
from ..gate import ReleaseGate
from ..integrity import Finding, IntegrityMonitor, anchor_source
from .refusals import Refusal

log = logging.getLogger("agentkeys.release")

# (stream, expected version, events) of the `*Withheld` append
WithheldAppend = tuple[uuid.UUID, int, Sequence[Event]]


def _log_failed_withheld(future: Future[list[Record]]) -> None:
    exc = future.exception()
    if exc is not None:
        log.error("could not record the cancelled outcome (the outcome sweep will): %s", exc)


class Withheld(Refusal):
    """The authorization was recorded but its required anchors did not confirm it: nothing was
    released, and a `*Withheld` record says so (reason `anchor_deadline`)."""

    def __init__(self, what: str, missing: Sequence[str], reason: str = "anchor_deadline") -> None:
        item = "credential" if what == "mint" else what
        if reason == "anchor_mismatch":
            message = (f"audit anchors {', '.join(missing)} hold another hash than the ledger for the {what}; "
                       f"no {item} was released (integrity alarm raised)")
        else:
            message = f"audit anchors {', '.join(missing)} did not confirm the {what} in time; no {item} was released"
        super().__init__(reason, message)
        self.missing = list(missing)


@dataclass(frozen=True, slots=True)
class Released:
    record: Record          # the authorizing record, confirmed by every required anchor
    anchored: list[str]     # every anchor that had confirmed it when the gate decided


class ReleasePath:
    def __init__(self, *, ledger: Ledger, gate: ReleaseGate, integrity: IntegrityMonitor | None = None) -> None:
        self.ledger = ledger
        self.gate = gate
        self.integrity = integrity

    def check_integrity(self) -> None:
        """Refuse (`integrity_alarm`) while an integrity alarm is open: memory only, fine on the loop."""
        if self.integrity is not None:
            self.integrity.check()

    @property
    def required(self) -> list[str]:
        return [a.name for a in self.gate.required]

    async def release(
        self,
        *,
        what: str,
        append: Callable[[], Awaitable[Record]],
        withhold: Callable[[Record, str, list[str]], WithheldAppend],
    ) -> Released:
        """`what` names the credential in messages ("session", "mint"); `append` writes the
        authorization; `withhold(record, reason, missing_anchors)` builds the `*Withheld` append."""
        self.check_integrity()
        record = await append()
        try:
            result = await self.gate.wait_async(record.seq, record.hash)
        except asyncio.CancelledError:
            self._append_withheld_now(withhold(record, "request_cancelled", []))
            raise
        except Exception:
            log.exception("release gate failed for seq %s; withholding", record.seq)
            missing = self.required
            await self._append_withheld(withhold(record, "anchor_deadline", missing))
            raise Withheld(what, missing) from None
        if result.mismatched:
            await self._tamper(record, result.mismatched)
            if not result.released:
                await self._append_withheld(withhold(record, "anchor_mismatch", result.mismatched))
                raise Withheld(what, result.mismatched, "anchor_mismatch")
        if not result.released:
            await self._append_withheld(withhold(record, "anchor_deadline", result.missing))
            raise Withheld(what, result.missing)
        return Released(record=record, anchored=result.anchored)

    async def _tamper(self, record: Record, anchors: list[str]) -> None:
        """Raise the integrity alarm: the anchors hold another hash than `record`'s at its seq."""
        if self.integrity is None:
            log.critical("anchors %s hold another hash than the ledger at seq %s", anchors, record.seq)
            return
        by_name = {a.name: a for a in self.gate.anchors}
        anchor = by_name[anchors[0]]
        finding = Finding(anchor_source(anchor), record.seq, record.hash, None,
                          f"the release gate found anchor(s) {', '.join(anchors)} confirming seq {record.seq} "
                          "with another hash than the ledger's")
        try:
            await asyncio.to_thread(self.integrity.report, finding)
        except Exception:
            log.exception("could not record TamperDetected for seq %s", record.seq)

    async def _append_withheld(self, append: WithheldAppend) -> None:
        stream, version, events = append
        try:
            await self.ledger.append_async(stream, version, list(events))
        except ConcurrencyConflict:  # pragma: no cover - the authorization's stream is ours alone here
            log.error("could not record the withheld outcome on %s: the stream moved", stream)

    def _append_withheld_now(self, append: WithheldAppend) -> None:
        """Queued, not awaited: a cancelled task must not block the event loop on the commit; if
        the process dies first, the start-up outcome sweep records `*Withheld{interrupted}`."""
        stream, version, events = append
        future = self.ledger.submit(stream, version, list(events))
        future.add_done_callback(_log_failed_withheld)
