"""Quarantine detection (design §3): under a `*_primary` policy a mint is released once the
primary anchor confirms; the other anchor follows asynchronously. A released `MintAuthorized`
whose asynchronous anchor has not confirmed it within the confirm deadline becomes a
`MintQuarantined` case `q-<seq>` (once: the case is an aggregate keyed by the seq)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ledger.aggregates import MintRequest, QuarantineCase
from ledger.app import Ledger
from ledger.events import MintQuarantined


@dataclass(frozen=True)
class QuarantineResult:
    scanned: int
    opened: list[str]


def _at(record_at: str) -> float:
    return datetime.strptime(record_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def run(
    *,
    ledger: Ledger,
    async_anchors: Sequence[tuple[str, Callable[[], int]]],
    deadline_s: float,
    now: Callable[[], float],
    page: int = 2000,
) -> QuarantineResult:
    """`async_anchors`: (name, confirmed_upto) of every anchor the policy does not wait for."""
    if not async_anchors:
        return QuarantineResult(0, [])
    positions = {name: upto() for name, upto in async_anchors}
    start = min(positions.values())
    cutoff = now() - deadline_s
    scanned = 0
    opened: list[str] = []
    after = start
    while True:
        records = ledger.read(after, page)
        if not records:
            break
        for record in records:
            after = record.seq
            if record.type != "MintAuthorized":
                continue
            scanned += 1
            if _at(record.at) > cutoff:
                return QuarantineResult(scanned, opened)  # records are in time order: the rest are younger
            missing = sorted(n for n, pos in positions.items() if pos < record.seq)
            if not missing:
                continue
            request = ledger.load(MintRequest, MintRequest.stream_for(record.data["wallet"], record.data["request_id"]))
            if request.withheld is not None:
                continue  # never released: nothing to quarantine
            event = MintQuarantined(
                case_id=f"q-{record.seq}", authorized_seq=record.seq, access_key_id=record.data["access_key_id"],
                wallet=record.data["wallet"], reason="anchor_deadline", missing_anchors=missing,
                expiration=record.data["expiration"],
            )
            _, written = ledger.execute(QuarantineCase, QuarantineCase.stream_for(record.seq), lambda agg: agg.open(event))  # noqa: B023  lambda runs synchronously inside this iteration
            if written:
                opened.append(event.case_id)
    return QuarantineResult(scanned, opened)
