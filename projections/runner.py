"""The projection runner: applies ledger records, in `seq` order, to read-model tables.

Guarantees:

- **Exactly once.** Each batch of records is applied to a projection and its position
  (`projection_positions`) is advanced in ONE transaction (`BEGIN IMMEDIATE`, so the position is
  re-read under the write lock). A crash or an exception between the two commits nothing;
  the next run re-applies from the stored position. Two runners (threads or processes) on one
  projections file never apply the same record twice.
- **No skipped gaps.** A projection at position P only ever applies seq P+1 next. If the source
  shows a later record before P+1 is visible (a delayed commit: the PostgreSQL case, or any
  source whose order of visibility differs from seq order), the runner stops at P and polls until
  P+1 appears. It never skips; a gap that persists is logged.
- **Unknown event types are skipped** (a newer writer's events): the position moves past them. A
  record of a *known* type that does not decode stops the projections consuming that type.
- **Rebuildable.** `rebuild(name)` resets the projection's tables and position in one transaction,
  then replays from seq 1 in batches (readers meanwhile see a projection catching up: `lag()`).

Each projection is handled in its own transaction, so a failing projection never blocks or rolls
back another. Records are read once per batch for all projections that need them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ledger.chain import ChainRecord, format_at
from ledger.errors import InvalidEventError
from ledger.events import decode_event, event_class

from .base import Applied, Projection, projection_positions, tracking_metadata
from .db import writer
from .errors import ProjectionError, ProjectionFailed, UndecodableRecord, UnknownProjection
from .source import RecordSource

log = logging.getLogger("agentkeys.projections")

# progress(name, seq reached, head seq at start of the rebuild or None if unknown)
Progress = Callable[[str, int, "int | None"], None]

DEFAULT_BATCH_SIZE = 2000


@dataclass(frozen=True, slots=True)
class RebuildResult:
    name: str
    seq: int  # position reached
    events: int  # records replayed (applied or skipped)
    seconds: float


@dataclass(frozen=True, slots=True)
class ProjectionStatus:
    name: str
    position: int
    lag: int


def _now() -> str:
    return format_at(datetime.now(UTC))


class ProjectionRunner:
    """Keeps `projections` up to date with `source` in the database behind `engine`.

    `source` needs only `read(after_seq, limit)`; `head()` is used for `lag()` when present and
    `on_commit(listener)` (a `ledger.app.Ledger`) wakes the background loop without waiting for
    the next poll.
    """

    def __init__(
        self,
        source: RecordSource,
        engine: Engine,
        projections: Iterable[Projection],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        poll_interval: float = 0.5,
        gap_poll_interval: float = 0.02,
        gap_warn_after: float = 10.0,
        setup: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.source = source
        self.engine = engine
        self._write = writer(engine)
        self._projections: dict[str, Projection] = {}
        for p in projections:
            if not p.name:
                raise ValueError(f"{p!r} has no name")
            if p.name in self._projections:
                raise ValueError(f"two projections are named {p.name!r}")
            self._projections[p.name] = p
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.gap_poll_interval = gap_poll_interval
        self.gap_warn_after = gap_warn_after

        self._lock = threading.RLock()  # one catch-up or rebuild at a time in this process
        self._advanced = threading.Condition()  # notified after every committed batch
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._seen_seq = 0  # highest seq the source has shown
        self._gap: tuple[int, float] | None = None  # (awaited seq, since monotonic)
        self._gap_warned = False
        self.last_error: BaseException | None = None
        if setup:
            self.setup()

    # --- schema -------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self._projections)

    def setup(self) -> None:
        """Create the tracking table and every projection's tables. A projection without a
        position row, with missing tables, or whose `version` changed is reset to empty at
        position 0 (it is then rebuilt by catching up)."""
        with self._write.begin() as conn:
            tracking_metadata.create_all(conn, checkfirst=True)
            stored = {
                row.name: row
                for row in conn.execute(
                    sa.select(projection_positions.c.name, projection_positions.c.seq, projection_positions.c.version)
                )
            }
            inspector = sa.inspect(conn)
            for p in self._projections.values():
                row = stored.get(p.name)
                tables_ok = all(inspector.has_table(t.name) for t in p.metadata.sorted_tables)
                if row is not None and row.version == p.version and tables_ok:
                    continue
                if row is not None:
                    reason = f"version {row.version} -> {p.version}" if row.version != p.version else "tables missing"
                    log.info("projection %s: %s; resetting (was at seq %d)", p.name, reason, row.seq)
                self._reset(conn, p)

    def _reset(self, conn: Connection, p: Projection) -> None:
        p.reset(conn)
        updated = conn.execute(
            projection_positions.update()
            .where(projection_positions.c.name == p.name)
            .values(seq=0, version=p.version, updated_at=_now())
        )
        if updated.rowcount == 0:
            conn.execute(
                projection_positions.insert().values(name=p.name, seq=0, version=p.version, updated_at=_now())
            )

    def _check_names(self, names: str | Sequence[str] | None) -> list[str]:
        if names is None:
            return list(self._projections)
        if isinstance(names, str):
            names = [names]
        for n in names:
            if n not in self._projections:
                raise UnknownProjection(n, list(self._projections))
        return list(names)

    # --- positions ----------------------------------------------------------------------------

    def _read_positions(self, conn: Connection, names: Sequence[str]) -> dict[str, int]:
        rows = conn.execute(
            sa.select(projection_positions.c.name, projection_positions.c.seq).where(
                projection_positions.c.name.in_(list(names))
            )
        )
        found = {name: seq for name, seq in rows}
        missing = [n for n in names if n not in found]
        if missing:
            raise ProjectionError(f"projection position missing for {', '.join(missing)} (run setup())")
        return found

    def positions(self) -> dict[str, int]:
        """Committed position of every projection: every record with seq <= it is applied."""
        with self.engine.connect() as conn:
            return self._read_positions(conn, list(self._projections))

    def position(self, name: str) -> int:
        self._check_names(name)
        with self.engine.connect() as conn:
            return self._read_positions(conn, [name])[name]

    def head_seq(self) -> int:
        """The source's head seq (`source.head()` when it has one, else the highest seq seen)."""
        head = getattr(self.source, "head", None)
        if callable(head):
            h = head()
            seq = int(getattr(h, "seq", h))
            self._seen_seq = max(self._seen_seq, seq)
            return seq
        return self._seen_seq

    def lag(self, name: str | None = None) -> int:
        """Head seq minus the position of `name` (or of the furthest-behind projection)."""
        names = self._check_names(name)
        with self.engine.connect() as conn:
            low = min(self._read_positions(conn, names).values(), default=0)
        return max(0, self.head_seq() - low)

    def status(self) -> list[ProjectionStatus]:
        head = self.head_seq()
        return [ProjectionStatus(n, pos, max(0, head - pos)) for n, pos in self.positions().items()]

    @property
    def waiting_for_seq(self) -> int | None:
        """The seq the runner is waiting for while a later one is already visible (a gap)."""
        gap = self._gap
        return gap[0] if gap else None

    # --- applying -----------------------------------------------------------------------------

    def catch_up(self, names: str | Sequence[str] | None = None) -> int:
        """Apply every record visible now (up to the first gap) to the projections; returns the
        number of records applied (each counted once, however many projections took it).
        Raises `ProjectionFailed` if a projection failed (the others are still caught up)."""
        return self._catch_up(self._check_names(names), None, None)

    def _catch_up(
        self,
        names: list[str],
        stop: threading.Event | None,
        on_batch: Callable[[dict[str, int]], None] | None,
    ) -> int:
        total = 0
        failed: dict[str, BaseException] = {}
        with self._lock:
            while stop is None or not stop.is_set():
                active = [n for n in names if n not in failed]
                if not active:
                    break
                applied, positions = self._step(active, failed)
                total += applied
                if on_batch is not None and positions:
                    on_batch(positions)
                if applied == 0:
                    break
        if failed:
            name, exc = next(iter(failed.items()))
            raise ProjectionFailed(name, exc, total) from exc
        return total

    def _step(self, names: list[str], failed: dict[str, BaseException]) -> tuple[int, dict[str, int]]:
        with self.engine.connect() as conn:
            positions = self._read_positions(conn, names)
        low = min(positions.values())
        records = self.source.read(low, self.batch_size)
        prefix = self._contiguous(low, records)
        if not prefix:
            return 0, positions
        entries = self._decode(prefix, names, positions)
        applied = 0
        for name in names:
            if positions[name] >= prefix[-1].seq:
                continue
            try:
                n, new_pos, err = self._apply(name, low, prefix, entries)
            except Exception as exc:  # rolled back: neither rows nor position committed
                log.debug("projection %s failed after seq %d: %s", name, positions[name], exc)
                failed[name] = exc
                continue
            if n:
                positions[name] = new_pos
                applied = max(applied, n)
            if err is not None:
                failed[name] = err
        if applied:
            with self._advanced:
                self._advanced.notify_all()
        return applied, positions

    def _contiguous(self, low: int, records: Sequence[ChainRecord]) -> list[ChainRecord]:
        """The records low+1, low+2, ... up to the first missing seq."""
        expected = low + 1
        prefix: list[ChainRecord] = []
        gap_at: int | None = None
        for r in records:
            if r.seq < expected:  # already applied (a source must not return these; be safe)
                continue
            if r.seq != expected:
                gap_at = expected
                break
            prefix.append(r)
            expected += 1
        if records:
            self._seen_seq = max(self._seen_seq, records[-1].seq)
        if gap_at is None:
            self._gap = None
            self._gap_warned = False
        elif not prefix:  # we are at the gap now: wait for it, never skip it
            now = time.monotonic()
            if self._gap is None or self._gap[0] != gap_at:
                self._gap = (gap_at, now)
                self._gap_warned = False
            elif not self._gap_warned and now - self._gap[1] >= self.gap_warn_after:
                self._gap_warned = True
                log.warning(
                    "projections waiting %.0fs for seq %d (a later record is already visible)",
                    now - self._gap[1],
                    gap_at,
                )
        return prefix

    def _decode(
        self, prefix: Sequence[ChainRecord], names: Sequence[str], positions: dict[str, int]
    ) -> list[Applied | UndecodableRecord | None]:
        """One entry per record: the decoded event, None (no projection here consumes the type,
        or the type is unknown to this code: skipped), or the decode error."""
        wanted: set[str] | None = set()
        for n in names:
            types = self._projections[n].event_types
            if types is None:
                wanted = None
                break
            wanted |= types  # type: ignore[operator]
        entries: list[Applied | UndecodableRecord | None] = []
        for r in prefix:
            if (wanted is not None and r.type not in wanted) or event_class(r.type) is None:
                entries.append(None)
                continue
            try:
                entries.append(Applied(r, decode_event(r.type, r.data)))
            except InvalidEventError as exc:
                entries.append(UndecodableRecord(r.seq, r.type, str(exc)))
        return entries

    def _apply(
        self,
        name: str,
        low: int,
        prefix: Sequence[ChainRecord],
        entries: Sequence[Applied | UndecodableRecord | None],
    ) -> tuple[int, int, UndecodableRecord | None]:
        """Apply the part of `prefix` after `name`'s stored position and advance the position, in
        one transaction. Returns (records advanced, new position, decode error that stopped it)."""
        p = self._projections[name]
        types = p.event_types
        err: UndecodableRecord | None = None
        with self._write.begin() as conn:
            stored = self._read_positions(conn, [name])[name]  # under the write lock
            start = stored - low
            if start < 0 or start >= len(prefix):
                return 0, stored, None  # another runner moved it (or reset it) meanwhile
            end = len(prefix)
            items: list[Applied] = []
            for i in range(start, len(prefix)):
                entry = entries[i]
                if entry is None or (types is not None and prefix[i].type not in types):
                    continue
                if isinstance(entry, UndecodableRecord):
                    end, err = i, entry
                    break
                items.append(entry)
            if end == start:
                return 0, stored, err
            if items:
                p.apply_batch(conn, items)
            new_pos = prefix[end - 1].seq
            conn.execute(
                projection_positions.update()
                .where(projection_positions.c.name == name)
                .values(seq=new_pos, updated_at=_now())
            )
        return end - start, new_pos, err

    # --- rebuilding ---------------------------------------------------------------------------

    def rebuild(self, name: str | Sequence[str] | None = None, *, progress: Progress | None = None) -> list[RebuildResult]:
        """Reset the named projections (all when None) and replay them from seq 1. `progress`
        is called after every batch with (name, seq reached, head seq at the start or None)."""
        names = self._check_names(name)
        with self._lock:
            started = time.perf_counter()
            with self._write.begin() as conn:
                for n in names:
                    self._reset(conn, self._projections[n])
            with self._advanced:
                self._advanced.notify_all()
            total = self.head_seq() if callable(getattr(self.source, "head", None)) else None

            def on_batch(positions: dict[str, int]) -> None:
                if progress is not None:
                    for n in names:
                        progress(n, positions[n], total)

            self._catch_up(names, None, on_batch)
            elapsed = time.perf_counter() - started
            final = self.positions()
        return [RebuildResult(n, final[n], final[n], elapsed) for n in names]

    # --- waiting ------------------------------------------------------------------------------

    def wait_until(self, seq: int, timeout: float = 5.0, name: str | Sequence[str] | None = None) -> bool:
        """Block until the named projections (all when None) have applied `seq`: an API handler
        reads its own write by waiting for the seq its append returned. Returns False on timeout.
        With the background loop running this only waits; otherwise it catches up itself."""
        names = self._check_names(name)
        deadline = time.monotonic() + timeout
        while True:
            if self.running:
                self._wake.set()
                with self._advanced:
                    if self._low(names) >= seq:
                        return True
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._advanced.wait(min(remaining, self.poll_interval))
                continue
            if self._low(names) >= seq:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                applied = self.catch_up(names)
            except ProjectionError as exc:
                log.warning("wait_until(%d): %s", seq, exc)
                applied = 0
            if applied == 0 and self._low(names) < seq:
                time.sleep(min(max(0.0, deadline - time.monotonic()), self.gap_poll_interval))

    async def wait_until_async(
        self, seq: int, timeout: float = 5.0, name: str | Sequence[str] | None = None
    ) -> bool:
        return await asyncio.to_thread(self.wait_until, seq, timeout, name)

    def _low(self, names: Sequence[str]) -> int:
        with self.engine.connect() as conn:
            return min(self._read_positions(conn, names).values(), default=0)

    # --- background mode ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Catch up in a background thread: woken by the ledger's commits (when the source has
        `on_commit`), polling every `poll_interval` for other processes' commits."""
        if self.running:
            return
        self._stop.clear()
        subscribe = getattr(self.source, "on_commit", None)
        if callable(subscribe):
            self._unsubscribe = subscribe(self._on_commit)
        self._thread = threading.Thread(target=self._run, name="projections-runner", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _on_commit(self, _head: Any) -> None:
        self._wake.set()

    def _run(self) -> None:
        failures = 0
        names = list(self._projections)
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self._catch_up(names, self._stop, None)
                failures = 0
                self.last_error = None
            except Exception as exc:  # never let the loop die; readiness shows the lag
                failures += 1
                if self.last_error is None or str(exc) != str(self.last_error):
                    log.error("projection runner: %s", exc, exc_info=not isinstance(exc, ProjectionError))
                self.last_error = exc
            if self._stop.is_set():
                break
            if failures:
                delay = min(self.poll_interval * (2 ** min(failures, 6)), 30.0)
            elif self._gap is not None:
                delay = self.gap_poll_interval
            else:
                delay = self.poll_interval
            self._wake.wait(delay)

    def __enter__(self) -> ProjectionRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
