"""The release gate (design §3): nothing that grants access leaves the process until every anchor
the audit policy requires has confirmed the ledger record that names it.

`ReleaseGate.wait(seq)` waits (without blocking the event loop) until the required anchors'
confirmed positions reach `seq`, or the deadline passes. Positions are not enough: with the
record's hash (`wait(seq, record_hash)`), a confirmation counts only if the anchor holds exactly
that hash at `seq` (`Anchor.verify`); an anchor whose position covers `seq` with another hash is
listed in `mismatched` (a tampered or stale witness: the caller withholds with `anchor_mismatch`
and raises the integrity alarm, ledger/integrity.py). It never calls an anchor on the waiting
path (see ledger/anchoring.py), so a hanging anchor costs at most the deadline, never a hung
request. The caller decides what to do with a `Withheld` result: append the matching `...Withheld`
event and answer 503 `anchor_unavailable` with no credential material.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .anchoring import ConfirmationWaiter, default_waiter
from .ports import Anchor, ReadinessView

log = logging.getLogger("agentkeys.gate")

READY_TTL_S = 1.0


@dataclass(frozen=True, slots=True)
class GateResult:
    released: bool
    anchored: list[str]   # every anchor that had confirmed `seq` when the gate decided
    missing: list[str]    # required anchors that had not
    mismatched: list[str] = field(default_factory=list)  # anchors whose position covers `seq` with another hash


class ReleaseGate:
    def __init__(
        self,
        anchors: Sequence[Anchor],
        required: Sequence[str],
        deadline_ms: int,
        *,
        waiter: ConfirmationWaiter | None = None,
        readiness: ReadinessView | None = None,
    ) -> None:
        by_name = {a.name: a for a in anchors}
        unknown = [n for n in required if n not in by_name]
        if unknown:
            raise ValueError(f"required anchors not configured: {unknown}")
        if not required:
            raise ValueError("a release gate needs at least one required anchor (fail closed)")
        self.anchors = list(anchors)
        self.required = [by_name[n] for n in required]
        self.deadline_s = deadline_ms / 1000.0
        self.waiter = waiter or default_waiter()
        self.readiness = readiness
        self._ready_cache: dict[str, tuple[float, bool]] = {}
        self.observers: list[Callable[[GateResult, float], None]] = []

    def unready_required(self) -> list[str]:
        """Required anchors that are unready now, so a release that cannot be confirmed is refused
        before any work (and before STS is called).

        With a `readiness` view (every serving process has one: api/probes.py) this reads the
        latest background probe result of `anchor/<name>` and never blocks. Without one (unit tests,
        offline tools) it calls `anchor.ready()` itself, cached READY_TTL_S per anchor."""
        if self.readiness is not None:
            out = []
            for anchor in self.required:
                latest = self.readiness.latest(f"anchor/{anchor.name}")
                if latest is not None and not latest.ok:
                    out.append(anchor.name)
            return out
        now = time.monotonic()
        out = []
        for anchor in self.required:
            cached = self._ready_cache.get(anchor.name)
            if cached is None or now - cached[0] >= READY_TTL_S:
                try:
                    ok = anchor.ready().ok
                except Exception:
                    ok = False
                cached = (now, ok)
                self._ready_cache[anchor.name] = cached
            if not cached[1]:
                out.append(anchor.name)
        return out

    def _result(self, seq: int, record_hash: str | None = None) -> GateResult:
        """Which anchors confirmed `seq`; with `record_hash`, only those holding that very hash
        (`verify` reads the anchor's local store: this runs in a worker thread on async paths)."""
        anchored = []
        mismatched = []
        for anchor in self.anchors:
            pos = self.waiter.position(anchor)
            if pos is None or pos < seq:
                continue
            if record_hash is not None:
                try:
                    holds = anchor.verify(seq, record_hash)
                except Exception as exc:  # cannot tell: not a confirmation, not (yet) tamper evidence
                    log.warning("anchor %s could not verify seq %s: %s", anchor.name, seq, exc)
                    continue
                if not holds:
                    mismatched.append(anchor.name)
                    continue
            anchored.append(anchor.name)
        missing = [a.name for a in self.required if a.name not in anchored]
        return GateResult(released=not missing, anchored=anchored, missing=missing, mismatched=mismatched)

    def wait(self, seq: int, record_hash: str | None = None) -> GateResult:
        started = time.monotonic()
        self.waiter.wait(self.required, seq, self.deadline_s)
        return self._observed(self._result(seq, record_hash), started)

    async def wait_async(self, seq: int, record_hash: str | None = None) -> GateResult:
        started = time.monotonic()
        await self.waiter.wait_async(self.required, seq, self.deadline_s)
        if record_hash is None:
            return self._observed(self._result(seq), started)
        result = await asyncio.to_thread(self._result, seq, record_hash)
        return self._observed(result, started)

    def _observed(self, result: GateResult, started: float) -> GateResult:
        """Tell every observer (metrics: `agentkeys_release_seconds`) how long the gate waited."""
        elapsed = time.monotonic() - started
        for observe in self.observers:
            try:
                observe(result, elapsed)
            except Exception:  # pragma: no cover - an observer never changes a release  # noqa: S110  an observer must never change a release; failure deliberately ignored
                pass
        return result
