"""The outcome sweep (design §3a "Accounting", §8 "Outcome sweep"; issue 12 item 1).

Every authorization — `MintAuthorized`, `SessionIssued` (OIDC tokens later) — ends with an
outcome: released (its required anchors confirmed it within `BROKER_ANCHOR_DEADLINE_MS` of its
`at`; a release is never recorded), `*Withheld` with a reason, or `ReleaseUnconfirmed`. Every
`MintRequested` ends with a `MintAuthorized`, a `MintDenied` or a `MintUnreleased`. A process that
is killed mid-request leaves some of them open; the sweeps close them:

- `startup_sweep` (before any anchor pump starts, so `confirmed_upto()` is what the anchors held
  when the previous process stopped) considers the records within deadline + 30 s of the last
  record's `at`: an outcome-less authorization above the lowest required `confirmed_upto()` was
  never released -> `*Withheld{interrupted}`; at or below it, it may have been delivered ->
  `ReleaseUnconfirmed{authorized_seq, kind}`; an open `MintRequested` -> `MintUnreleased{
  sts_outcome_unknown}` with the STS session name it was (or would have been) called with.
- `PeriodicSweep.run` (a scheduler job, workers/jobs/outcome_sweep.py) takes the older records:
  an outcome-less authorization older than deadline + 30 s that the required anchors have still
  not confirmed -> `*Withheld{interrupted}`; a confirmed one counts as released (nothing written);
  an open `MintRequested` older than that (plus the STS margin) -> `MintUnreleased`.

Each outcome is appended on the authorization's own stream at its current version, so a live
request that records its own outcome first wins (the sweep re-reads and leaves it). HTTP-free: the
caller passes the anchors' positions as plain functions.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..aggregates import AuthChallenge, MintRequest
from ..app import Ledger
from ..chain import ChainRecord
from ..errors import ConcurrencyConflict, LedgerError
from ..events import Event, MintUnreleased, MintWithheld, ReleaseUnconfirmed, SessionWithheld
from ..ports import sts_session_name

log = logging.getLogger("agentkeys.outcome_sweep")

SETTLE_MARGIN_S = 30.0
PAGE = 2000

# records that close an authorization: type -> the data field naming the authorization's seq
_CLOSERS = {"MintWithheld": "authorized_seq", "SessionWithheld": "session_seq", "ReleaseUnconfirmed": "authorized_seq"}
_AUTHORIZATIONS = {"MintAuthorized": "mint", "SessionIssued": "session"}

Positions = Callable[[], Mapping[str, int]]  # required anchor name -> its confirmed_upto()


def parse_at(value: str) -> float:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


@dataclass
class SweepResult:
    scanned: int = 0
    withheld: list[int] = field(default_factory=list)      # authorization seqs -> *Withheld{interrupted}
    unconfirmed: list[int] = field(default_factory=list)   # authorization seqs -> ReleaseUnconfirmed
    unreleased: list[int] = field(default_factory=list)    # MintRequested seqs -> MintUnreleased

    @property
    def written(self) -> int:
        return len(self.withheld) + len(self.unconfirmed) + len(self.unreleased)

    def summary(self) -> str:
        return (f"scanned {self.scanned} records; withheld (interrupted) {self.withheld}; release unconfirmed "
                f"{self.unconfirmed}; mint unreleased (sts_outcome_unknown) {self.unreleased}")


@dataclass
class _Scan:
    """What one pass over a range of records found: open authorizations and open mint requests."""

    authorizations: dict[int, ChainRecord] = field(default_factory=dict)
    requests: dict[tuple[str, str], ChainRecord] = field(default_factory=dict)
    scanned: int = 0
    last_seq: int = 0

    def feed(self, record: ChainRecord) -> None:
        self.scanned += 1
        self.last_seq = record.seq
        data = record.data
        if record.type in _AUTHORIZATIONS:
            self.authorizations[record.seq] = record
        elif record.type in _CLOSERS:
            self.authorizations.pop(int(data.get(_CLOSERS[record.type]) or 0), None)
        if record.type == "MintRequested":
            self.requests[(data["wallet"], data["request_id"])] = record
        elif record.type in ("MintAuthorized", "MintUnreleased") or (
                record.type == "MintDenied" and data.get("reason") != "request_replayed"):
            # a replayed request_id is denied on its own stream: it says nothing about the original
            self.requests.pop((data.get("wallet", ""), data.get("request_id", "")), None)


def _scan(ledger: Ledger, after: int) -> _Scan:
    scan = _Scan(last_seq=after)
    while True:
        records = ledger.read(scan.last_seq, PAGE)
        if not records:
            return scan
        for record in records:
            scan.feed(record)


def _first_seq_at_or_after(ledger: Ledger, moment: float, head_seq: int) -> int:
    """The lowest seq whose `at` >= `moment` (records are appended in time order)."""
    lo, hi = 1, head_seq + 1
    while lo < hi:
        mid = (lo + hi) // 2
        [record] = ledger.read(mid - 1, 1)
        if parse_at(record.at) >= moment:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _append(ledger: Ledger, cls: type, stream: uuid.UUID, decide: Callable[[object], Event | None]) -> bool:
    """Append the outcome `decide(aggregate)` returns at the stream's current version; False when it
    returns None (already settled) or a live request settled it meanwhile."""
    for _ in range(3):
        try:
            agg: Any = ledger.load(cls, stream)
        except LedgerError as exc:  # a stream of an unexpected shape: leave it, say so, go on
            log.error("outcome sweep: cannot load %s %s: %s", cls.__name__, stream, exc)
            return False
        event = decide(agg)
        if event is None:
            return False
        try:
            ledger.append(stream, agg.version, [event])
            return True
        except ConcurrencyConflict:
            continue  # someone appended to this stream: decide again on the new state
    return False


def _missing(positions: Mapping[str, int], seq: int) -> list[str]:
    return sorted(name for name, pos in positions.items() if pos < seq)


def _settle_authorization(ledger: Ledger, record: ChainRecord, positions: Mapping[str, int], *,
                          unconfirmed_allowed: bool, result: SweepResult) -> None:
    missing = _missing(positions, record.seq)
    if not missing and not unconfirmed_allowed:
        return  # confirmed: released, nothing to write
    stream = uuid.UUID(record.stream)
    kind = _AUTHORIZATIONS[record.type]
    data = record.data
    reason_detail = "interrupted"
    if kind == "mint":
        def decide_mint(agg: object) -> Event | None:
            assert isinstance(agg, MintRequest)  # noqa: S101  type narrowing of an invariant established just above
            if agg.withheld is not None or agg.unconfirmed is not None:
                return None
            if missing:
                return MintWithheld(request_id=data["request_id"], wallet=data["wallet"], authorized_seq=record.seq,
                                    access_key_id=data["access_key_id"], reason=reason_detail, missing_anchors=missing)
            return ReleaseUnconfirmed(authorized_seq=record.seq, kind="mint")
        written = _append(ledger, MintRequest, stream, decide_mint)
    else:
        def decide_session(agg: object) -> Event | None:
            assert isinstance(agg, AuthChallenge)  # noqa: S101  type narrowing of an invariant established just above
            if agg.withheld is not None or agg.unconfirmed is not None:
                return None
            if missing:
                return SessionWithheld(jti=data["jti"], session_seq=record.seq, reason=reason_detail,
                                       missing_anchors=missing)
            return ReleaseUnconfirmed(authorized_seq=record.seq, kind="session")
        written = _append(ledger, AuthChallenge, stream, decide_session)
    if written:
        (result.withheld if missing else result.unconfirmed).append(record.seq)


def _settle_request(ledger: Ledger, record: ChainRecord, role_arn_for: Callable[[str], str], detail: str,
                    result: SweepResult) -> None:
    data = record.data

    def decide(agg: object) -> Event | None:
        assert isinstance(agg, MintRequest)  # noqa: S101  type narrowing of an invariant established just above
        if agg.authorized is not None or agg.unreleased is not None or agg.denied is not None:
            return None
        return MintUnreleased(
            request_id=data["request_id"], wallet=data["wallet"], requested_seq=record.seq,
            sts_session_name=sts_session_name(data["wallet"], record.seq), role_arn=role_arn_for(data["service"]),
            access_key_id=None, expiration=None, reason="sts_outcome_unknown", detail=detail)

    if _append(ledger, MintRequest, uuid.UUID(record.stream), decide):
        result.unreleased.append(record.seq)


def startup_sweep(ledger: Ledger, *, required_positions: Positions, deadline_s: float,
                  role_arn_for: Callable[[str], str] = lambda service: "",
                  margin_s: float = SETTLE_MARGIN_S) -> SweepResult:
    """Settle what the previous process left open (call before any anchor pump starts)."""
    result = SweepResult()
    head = ledger.head()
    if head.seq == 0:
        return result
    [last] = ledger.read(head.seq - 1, 1)
    start = _first_seq_at_or_after(ledger, parse_at(last.at) - (deadline_s + margin_s), head.seq)
    positions = dict(required_positions())
    scan = _scan(ledger, start - 1)
    result.scanned = scan.scanned
    for seq in sorted(scan.authorizations):
        _settle_authorization(ledger, scan.authorizations[seq], positions, unconfirmed_allowed=True, result=result)
    for record in sorted(scan.requests.values(), key=lambda r: r.seq):
        _settle_request(ledger, record, role_arn_for,
                        "the broker stopped after admitting this mint and before recording the STS answer; STS may "
                        "have issued a credential under this session name", result)
    return result


class PeriodicSweep:
    """The periodic sweep: settles records older than deadline + `margin_s` (+ `request_margin_s` for
    `MintRequested`, which waits on STS before its `MintAuthorized`). Keeps a cursor below which
    everything is settled, so each run reads only the records since (the first run reads the whole
    ledger once, in the background)."""

    def __init__(self, ledger: Ledger, *, required_positions: Positions, deadline_s: float,
                 now: Callable[[], float], role_arn_for: Callable[[str], str] = lambda service: "",
                 margin_s: float = SETTLE_MARGIN_S, request_margin_s: float = 0.0) -> None:
        self.ledger = ledger
        self.required_positions = required_positions
        self.deadline_s = deadline_s
        self.now = now
        self.role_arn_for = role_arn_for
        self.margin_s = margin_s
        self.request_margin_s = request_margin_s
        self.cursor = 0

    def run(self) -> SweepResult:
        result = SweepResult()
        positions = dict(self.required_positions())  # read before the records: never newer than them
        now = self.now()
        auth_cutoff = now - (self.deadline_s + self.margin_s)
        request_cutoff = auth_cutoff - self.request_margin_s
        scan = _scan(self.ledger, self.cursor)
        result.scanned = scan.scanned
        settled_upto = scan.last_seq
        for seq in sorted(scan.authorizations):
            record = scan.authorizations[seq]
            if parse_at(record.at) > auth_cutoff:
                settled_upto = min(settled_upto, seq - 1)
                continue
            _settle_authorization(self.ledger, record, positions, unconfirmed_allowed=False, result=result)
        for record in sorted(scan.requests.values(), key=lambda r: r.seq):
            if parse_at(record.at) > request_cutoff:
                settled_upto = min(settled_upto, record.seq - 1)
                continue
            _settle_request(self.ledger, record, self.role_arn_for,
                            "no STS answer was recorded for this admitted mint (the process handling it stopped); "
                            "STS may have issued a credential under this session name", result)
        self.cursor = max(self.cursor, settled_upto)
        if result.written:
            log.warning("outcome sweep: %s", result.summary())
        return result
