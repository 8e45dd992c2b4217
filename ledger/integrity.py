"""Integrity of the chain against itself and its witnesses (design §8 "Start-up integrity").

Checks:
- the chain checks itself: every record hashes to its stored hash, links to the one before, seqs
  have no gap (`ledger/chain`); SQLite finds no damaged page (`PRAGMA quick_check`,
  `ledger/quick_check`);
- every anchor holds the ledger's hash at each seq it confirmed (`anchor/<name>`), and confirms no
  seq beyond the ledger's head (a ledger restored from an older snapshot is *behind its anchors*:
  the missing range is named).

Where: synchronously at start-up over the last `STARTUP_TAIL` records (`startup_check`); in the
background at start-up and on a schedule over the whole chain (`full_check`); at run time
incrementally (`incremental_check`, a leased job: every new record, plus a rolling window over
every anchored seq). The release gate checks content too (ledger/gate.py).

Any disagreement is one `TamperDetected` record on the `integrity` stream (never a second one
while that alarm is open); until an operator records `IntegrityAcknowledged`
(`agentkeys-broker integrity ack --reason TEXT`) every release is refused before STS: 503
`unavailable`, reason `integrity_alarm`, and readiness check `ledger/integrity` is unready.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .aggregates import Aggregate, stream_id
from .app import Ledger
from .chain import GENESIS, ChainRecord, recompute_hash
from .errors import ConcurrencyConflict, LedgerError
from .events import Event, IntegrityAcknowledged, TamperDetected
from .ports import Anchor, Readiness
from .services.refusals import Refusal

log = logging.getLogger("agentkeys.integrity")

STARTUP_TAIL = 1000
WINDOW = 5000  # anchored seqs compared per anchor per incremental run (rolling over the whole range)
PAGE = 5000


class _Stopped(Exception):
    """The monitor was closed during a check."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One disagreement, as a `TamperDetected` would record it."""

    source: str
    seq: int | None
    expected_hash: str | None
    found_hash: str | None
    detail: str
    lost_range: tuple[int, int] | None = None

    def event(self) -> TamperDetected:
        return TamperDetected(source=self.source,  # type: ignore[arg-type]  # a TamperSource by construction
                              seq=self.seq, expected_hash=self.expected_hash, found_hash=self.found_hash,
                              detail=self.detail[:500])


class IntegrityAlarm(Aggregate):
    """The `integrity` stream: `TamperDetected` opens the alarm, `IntegrityAcknowledged` closes it."""

    kind = "integrity"

    def __init__(self, stream: uuid.UUID) -> None:
        super().__init__(stream)
        self.open: TamperDetected | None = None
        self.open_version = 0

    @staticmethod
    def stream_for() -> uuid.UUID:
        return stream_id(IntegrityAlarm.kind, "alarm")

    def when_TamperDetected(self, event: TamperDetected) -> None:
        self.open = event
        self.open_version = self.version + 1

    def when_IntegrityAcknowledged(self, event: IntegrityAcknowledged) -> None:
        self.open = None


@dataclass(frozen=True, slots=True)
class OpenAlarm:
    tamper_seq: int
    event: TamperDetected


def anchor_source(anchor: Anchor) -> str:
    return "anchor/evm" if anchor.name in ("evm", "evm_testnet") else "anchor/sqlite"


def anchor_start(anchor: Anchor) -> int:
    """The first seq an anchor witnesses (1, or head+1 of a ledger whose lost range was acknowledged)."""
    try:
        return int(getattr(anchor, "start_seq", 1) or 1)
    except Exception:
        return 1


def _anchored(anchor: Anchor, first: int, last: int, records: Sequence[ChainRecord]) -> dict[int, str | None]:
    """What the anchor holds for seqs first..last: its hashes when it can list them, else the
    ledger's hash when `verify` agrees and None when it does not."""
    ranged = getattr(anchor, "anchored_range", None)
    if ranged is not None:
        held: dict[int, Any] = ranged(first, last)
        return {seq: held.get(seq) for seq in range(first, last + 1)}
    by_seq = {r.seq: r.hash for r in records}
    return {seq: (by_seq[seq] if anchor.verify(seq, by_seq[seq]) else None) for seq in range(first, last + 1)
            if seq in by_seq}


def compare_with_anchor(anchor: Anchor, records: Sequence[ChainRecord], confirmed: int) -> Finding | None:
    """The first record (of contiguous `records`) whose hash the anchor does not hold, among the
    seqs it confirmed."""
    start = anchor_start(anchor)
    mine = [r for r in records if start <= r.seq <= confirmed]
    if not mine:
        return None
    held = _anchored(anchor, mine[0].seq, mine[-1].seq, mine)
    for r in mine:
        found = held.get(r.seq)
        if found != r.hash:
            return Finding(anchor_source(anchor), r.seq, r.hash, found,
                           f"anchor {anchor.name} holds another hash than the ledger at seq {r.seq}")
    return None


def behind_anchor(anchor: Anchor, head_seq: int, confirmed: int) -> Finding | None:
    if confirmed <= head_seq:
        return None
    first = head_seq + 1
    found: str | None = None
    ranged = getattr(anchor, "anchored_range", None)
    if ranged is not None:
        try:
            found = ranged(first, first).get(first)
        except Exception:
            found = None
    return Finding(anchor_source(anchor), first, None, found,
                   f"the ledger is behind its anchor {anchor.name}: seqs {first}..{confirmed} are anchored but "
                   f"missing from the ledger (head {head_seq}; restored from an older copy?)",
                   lost_range=(first, confirmed))


def is_lost_range(event: TamperDetected) -> bool:
    """A `TamperDetected` naming a ledger behind its anchors (see `behind_anchor`)."""
    return event.source.startswith("anchor/") and event.seq is not None and event.expected_hash is None


def check_chain(records: Iterable[ChainRecord], prev_seq: int, prev_hash: str) -> tuple[Finding | None, int, str]:
    """Re-verify contiguous records following (prev_seq, prev_hash): gapless seqs, links, hashes.
    Returns the first finding and the last verified (seq, hash)."""
    for r in records:
        if r.seq != prev_seq + 1:
            return Finding("ledger/chain", prev_seq + 1, None, None,
                           f"seq {prev_seq + 1} is missing from the chain (next record is {r.seq})"), prev_seq, prev_hash
        if r.prev != prev_hash:
            return Finding("ledger/chain", r.seq, prev_hash, r.prev,
                           f"record {r.seq} does not link to record {prev_seq}"), prev_seq, prev_hash
        actual = recompute_hash(r.envelope())
        if actual != r.hash:
            return Finding("ledger/chain", r.seq, r.hash, actual,
                           f"record {r.seq} does not hash to its stored hash (edited)"), prev_seq, prev_hash
        prev_seq, prev_hash = r.seq, r.hash
    return None, prev_seq, prev_hash


class IntegrityMonitor:
    """Holds the alarm state of this process (read on request paths without I/O) and runs the
    checks. `refresh()` re-reads the `integrity` stream (another process may have raised or
    acknowledged the alarm); the `ledger/integrity` readiness probe calls it."""

    def __init__(self, ledger: Ledger, anchors: Sequence[Anchor]) -> None:
        self.ledger = ledger
        self.anchors = list(anchors)
        self._lock = threading.Lock()
        self._open: OpenAlarm | None = None
        self._chain_cursor: tuple[int, str] = (0, GENESIS)
        self._anchor_cursor: dict[str, int] = {}
        self._fresh_cursor: dict[str, int] = {}
        self._closed = threading.Event()
        self.refresh()

    def close(self) -> None:
        """Stop: a check in progress ends early and reports nothing (the process is stopping, so an
        error from a closed ledger is not evidence of tampering)."""
        self._closed.set()

    def _records(self, after: int) -> Iterator[ChainRecord]:
        for record in self.ledger.recorder.iter_records(after, PAGE):
            if self._closed.is_set():
                raise _Stopped()
            yield record

    # --- state ----------------------------------------------------------------------------------

    @property
    def alarm(self) -> OpenAlarm | None:
        return self._open

    def refresh(self) -> OpenAlarm | None:
        agg = self.ledger.load(IntegrityAlarm, IntegrityAlarm.stream_for())
        if agg.open is None:
            self._open = None
        elif self._open is None or self._open.event != agg.open:
            seq = self.ledger.recorder.seq_of(IntegrityAlarm.stream_for(), agg.open_version) or 0
            self._open = OpenAlarm(seq, agg.open)
        return self._open

    def check(self) -> None:
        """Raise the `integrity_alarm` refusal while an alarm is open (memory only: fine on the loop)."""
        alarm = self._open
        if alarm is not None:
            raise Refusal("integrity_alarm", f"integrity alarm open since seq {alarm.tamper_seq} "
                          f"({alarm.event.source}): no credential is released until an operator runs "
                          "`agentkeys-broker integrity ack` (see docs/operator-runbook.md)")

    def readiness(self) -> Readiness:
        try:
            alarm = self.refresh()
        except Exception as exc:
            return Readiness("unready", f"cannot read the integrity alarm: {type(exc).__name__}: {exc}"[:300])
        if alarm is None:
            return Readiness("ready", "no integrity alarm")
        e = alarm.event
        return Readiness("unready", f"integrity alarm (TamperDetected at seq {alarm.tamper_seq}): {e.source}: "
                                    f"{e.detail}"[:500])

    def report(self, finding: Finding) -> bool:
        """Record `finding` as a `TamperDetected` unless an alarm is already open. True if recorded."""
        with self._lock:
            for _ in range(5):
                agg = self.ledger.load(IntegrityAlarm, IntegrityAlarm.stream_for())
                if agg.open is not None:
                    self.refresh()
                    return False
                try:
                    [record] = self.ledger.append(agg.stream, agg.version, [finding.event()])
                except ConcurrencyConflict:
                    continue
                self._open = OpenAlarm(record.seq, finding.event())
                log.critical("TamperDetected at seq %s: %s (seq %s): %s; every release is refused until "
                             "`agentkeys-broker integrity ack`", record.seq, finding.source, finding.seq,
                             finding.detail)
                return True
        return False

    def acknowledge(self, *, reason: str, operator: str, lost_range: tuple[int, int] | None) -> IntegrityAcknowledged:
        """Close the open alarm (raises `LedgerError` when none is open)."""
        alarm = self.refresh()
        if alarm is None:
            raise LedgerError("no integrity alarm is open")
        agg = self.ledger.load(IntegrityAlarm, IntegrityAlarm.stream_for())
        event = IntegrityAcknowledged(tamper_seq=alarm.tamper_seq, reason=reason, operator=operator,
                                      lost_range=list(lost_range) if lost_range else None)
        self.ledger.append(agg.stream, agg.version, [event])
        self._open = None
        return event

    # --- checks ---------------------------------------------------------------------------------

    def _run(self, findings: Iterable[Finding | None]) -> list[Finding]:
        out = [f for f in findings if f is not None]
        if out and not self._closed.is_set():
            self.report(out[0])
        return out

    def lost_range(self) -> tuple[int, int] | None:
        """The seqs the anchors hold that the ledger lost: from the first missing seq the open alarm
        named (records appended since reuse those seqs with other content) or else the head + 1, up
        to the highest anchored seq; None when no anchor is ahead."""
        first = self.ledger.head().seq + 1
        alarm = self._open
        if alarm is not None and is_lost_range(alarm.event):
            first = min(first, int(alarm.event.seq or first))
        top = max((a.confirmed_upto() for a in self.anchors), default=0)
        return (first, top) if top >= first else None

    def startup_check(self, tail: int = STARTUP_TAIL) -> list[Finding]:
        """Synchronous, before serving: the last `tail` records re-verified and checked against every
        anchor; every anchor's position against the head."""
        # positions before the head: records are anchored only after they commit, so an anchor
        # read first can never be ahead of a head read after it unless the ledger lost records
        positions = self._positions()
        head = self.ledger.head()
        after = max(0, head.seq - tail)
        records = self.ledger.read(max(0, after - 1), tail + 1)
        prev_seq, prev_hash = 0, GENESIS
        if records and records[0].seq == after and after > 0:
            prev_seq, prev_hash = records[0].seq, records[0].hash
            records = records[1:]
        findings: list[Finding | None] = []
        if after == 0 or prev_seq == after:
            findings.append(check_chain(records, prev_seq, prev_hash)[0])
        if records and records[-1].seq < head.seq:  # (another process may have appended since)
            findings.append(Finding("ledger/chain", head.seq, head.hash, records[-1].hash,
                                    f"the chain head says seq {head.seq} but the last record is {records[-1].seq}"))
        for anchor, confirmed in positions:
            try:
                findings.append(behind_anchor(anchor, head.seq, confirmed))
                findings.append(compare_with_anchor(anchor, records, min(confirmed, head.seq)))
            except Exception as exc:  # an anchor that cannot answer is a readiness matter, not tamper
                log.warning("start-up integrity check could not read anchor %s: %s", anchor.name, exc)
        return self._run(findings)

    def _positions(self) -> list[tuple[Anchor, int]]:
        out = []
        for anchor in self.anchors:
            try:
                out.append((anchor, anchor.confirmed_upto()))
            except Exception as exc:  # an anchor that cannot answer is a readiness matter, not tamper
                log.warning("integrity check could not read anchor %s: %s", anchor.name, exc)
        return out

    def full_check(self) -> list[Finding]:
        """Background: `PRAGMA quick_check`, then every record re-verified from seq 1."""
        try:
            result = self.ledger.recorder.quick_check()
        except Exception as exc:
            return self._run([Finding("ledger/quick_check", None, None, None, f"PRAGMA quick_check failed: {exc}")])
        if result != ["ok"]:
            return self._run([Finding("ledger/quick_check", None, None, None,
                                      "PRAGMA quick_check: " + "; ".join(result[:5]))])
        try:
            finding, seq, h = check_chain(self._records(0), 0, GENESIS)
        except _Stopped:
            return []
        except Exception as exc:
            return self._run([Finding("ledger/quick_check", None, None, None,
                                      f"reading the chain failed: {type(exc).__name__}: {exc}")])
        if finding is None and self._chain_cursor[0] < seq:
            self._chain_cursor = (seq, h)
        return self._run([finding])

    def incremental_check(self, window: int = WINDOW) -> list[Finding]:
        """Run time (a leased job): every record since the last run re-verified; every anchor
        compared with the ledger over its new seqs and a rolling window of `window` older ones."""
        findings: list[Finding | None] = []
        seq, h = self._chain_cursor
        new = self.ledger.read(seq, PAGE * 2)
        finding, seq, h = check_chain(new, seq, h)
        self._chain_cursor = (seq, h)
        findings.append(finding)
        positions = self._positions()  # before the head (see `startup_check`)
        head = self.ledger.head().seq
        for anchor, confirmed in positions:
            findings.append(behind_anchor(anchor, head, confirmed))
            top = min(confirmed, head)
            start = anchor_start(anchor)
            fresh = max(self._fresh_cursor.get(anchor.name, start - 1), start - 1)
            if top > fresh:
                records = self.ledger.read(fresh, min(top - fresh, PAGE * 2))
                findings.append(compare_with_anchor(anchor, records, top))
                if records:
                    self._fresh_cursor[anchor.name] = records[-1].seq
            cursor = self._anchor_cursor.get(anchor.name, start - 1)
            if cursor >= top:
                cursor = start - 1
            records = self.ledger.read(cursor, window)
            findings.append(compare_with_anchor(anchor, records, top))
            self._anchor_cursor[anchor.name] = records[-1].seq if records else start - 1
        return self._run(findings)


def open_events(ledger: Ledger) -> list[Event]:
    """The `integrity` stream's events (for the CLI and tests)."""
    from .events import decode_event

    return [decode_event(t, d) for _, t, d in ledger.recorder.stream_events(IntegrityAlarm.stream_for())]
