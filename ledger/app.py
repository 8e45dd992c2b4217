"""The ledger application: appends with group commit, aggregate loading, reading the chain.

One writer thread owns the write connection. `append()` validates and queues; the writer takes
every append queued (up to `batch_max`, waiting at most `batch_max_wait_ms` for more), writes them
in one transaction (ledger/store.py) and resolves each caller's future with its own records or its
own `ConcurrencyConflict`. An append that returned is durable (COMMIT with synchronous=FULL).
Listeners registered with `on_commit` are told the new head after every commit; the anchor pump
and the release gate use it to wake without polling (they still poll, for other processes).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from .aggregates import Aggregate
from .canonical import validate
from .chain import ChainHead, ChainRecord, format_at
from .config import LedgerConfig
from .errors import ConcurrencyConflict, InvalidEventError, LedgerUnavailable
from .events import Event, decode_event
from .store import ChainedSQLiteRecorder, PendingAppend, StreamAppend, open_recorder

if TYPE_CHECKING:
    from .ports import Readiness

log = logging.getLogger("agentkeys.ledger")

A = TypeVar("A", bound=Aggregate)
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class _Request:
    pending: PendingAppend
    future: Future[list[ChainRecord]]


_STOP = object()


class Ledger:
    def __init__(self, config: LedgerConfig, *, clock: Clock = utc_now) -> None:
        self.config = config
        self.clock = clock
        config.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.recorder: ChainedSQLiteRecorder = open_recorder(str(config.db_path), lock_timeout_s=config.lock_timeout_s)
        self._head = self.recorder.check_head()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()  # _Request items and the _STOP sentinel
        self._listeners: list[Callable[[ChainHead], None]] = []
        self._listeners_lock = threading.Lock()
        self._closed = False
        self._writer = threading.Thread(target=self._run_writer, name="ledger-writer", daemon=True)
        self._writer.start()

    # --- writing ----------------------------------------------------------------------------

    def submit(self, stream: uuid.UUID, expected_version: int, events: Sequence[Event]) -> Future[list[ChainRecord]]:
        """Queue an append; the future resolves to its `ChainRecord`s or raises."""
        return self.submit_many([(stream, expected_version, events)])

    def submit_many(self, parts: Sequence[tuple[uuid.UUID, int, Sequence[Event]]]) -> Future[list[ChainRecord]]:
        """Queue one atomic append across several streams: every part commits, or none does (a
        concurrency conflict on any part fails the whole append). Records come back in order."""
        if self._closed:
            raise LedgerUnavailable("ledger is closed")
        if not parts or any(not events for _, _, events in parts):
            raise InvalidEventError("an append needs at least one event per stream")
        if len({stream for stream, _, _ in parts}) != len(parts):
            raise InvalidEventError("an append names a stream twice")
        at = format_at(self.clock())
        stream_parts = []
        for stream, expected_version, events in parts:
            items = []
            for event in events:
                if not isinstance(event, Event):
                    raise InvalidEventError(f"{type(event).__name__} is not a ledger Event")
                data = event.to_data()
                validate(data, f"{event.type_name}")
                items.append((event.type_name, data, at))
            stream_parts.append(StreamAppend(stream, expected_version, tuple(items)))
        future: Future[list[ChainRecord]] = Future()
        self._queue.put(_Request(PendingAppend(tuple(stream_parts)), future))
        return future

    def append_many(self, parts: Sequence[tuple[uuid.UUID, int, Sequence[Event]]]) -> list[ChainRecord]:
        return self.submit_many(parts).result()

    async def append_many_async(self, parts: Sequence[tuple[uuid.UUID, int, Sequence[Event]]]) -> list[ChainRecord]:
        return await asyncio.wrap_future(self.submit_many(parts))

    def append(self, stream: uuid.UUID, expected_version: int, events: Sequence[Event]) -> list[ChainRecord]:
        return self.submit(stream, expected_version, events).result()

    async def append_async(
        self, stream: uuid.UUID, expected_version: int, events: Sequence[Event]
    ) -> list[ChainRecord]:
        return await asyncio.wrap_future(self.submit(stream, expected_version, events))

    def _run_writer(self) -> None:
        max_wait = self.config.batch_max_wait_ms / 1000.0
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch: list[_Request] = [first]
            stop_after = False
            deadline = time.monotonic() + max_wait
            while len(batch) < self.config.batch_max:
                try:
                    remaining = deadline - time.monotonic()
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop_after = True
                    break
                batch.append(item)
            self._commit(batch)
            if stop_after:
                return

    def _commit(self, batch: list[_Request]) -> None:
        try:
            results, head = self.recorder.append_batch([r.pending for r in batch])
        except Exception as exc:  # whole transaction failed: nothing committed
            err = exc if isinstance(exc, LedgerUnavailable) else LedgerUnavailable(f"ledger write failed: {exc}")
            log.error("ledger batch of %d appends failed: %s", len(batch), exc)
            for r in batch:
                r.future.set_exception(err)
            return
        self._head = head
        for r, result in zip(batch, results, strict=False):
            if isinstance(result, Exception):
                r.future.set_exception(result)
            else:
                r.future.set_result(result)
        self._notify(head)

    # --- commit listeners -------------------------------------------------------------------

    def on_commit(self, listener: Callable[[ChainHead], None]) -> Callable[[], None]:
        with self._listeners_lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._listeners_lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def _notify(self, head: ChainHead) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(head)
            except Exception:  # a listener must never break the writer
                log.exception("ledger commit listener failed")

    # --- reading ----------------------------------------------------------------------------

    def head(self) -> ChainHead:
        """The head as stored (another process may have advanced it)."""
        head = self.recorder.head()
        self._head = head
        return head

    def cached_head(self) -> ChainHead:
        return self._head

    def read(self, after_seq: int = 0, limit: int = 1000) -> list[ChainRecord]:
        return self.recorder.read_records(after_seq, limit)

    def load(self, cls: type[A], stream: uuid.UUID) -> A:
        """Rebuild an aggregate from its stream (version 0 if the stream is empty)."""
        events = [decode_event(t, d) for _, t, d in self.recorder.stream_events(stream)]
        return cls.replay(stream, events)

    def execute(
        self,
        cls: type[A],
        stream: uuid.UUID,
        command: Callable[[A], Sequence[Event]],
        *,
        retries: int = 3,
    ) -> tuple[A, list[ChainRecord]]:
        """Load, decide, append; on a concurrency conflict re-load and decide again (the command
        sees the winner's events, so idempotent commands converge and single-use ones refuse)."""
        for attempt in range(retries + 1):
            agg = self.load(cls, stream)
            events = list(command(agg))
            if not events:
                return agg, []
            try:
                return agg, self.append(stream, agg.version, events)
            except ConcurrencyConflict:
                if attempt == retries:
                    raise
        raise AssertionError("unreachable")

    def ready(self) -> Readiness:
        """Live check: the writer thread runs and the database file takes a write now."""
        from .ports import Readiness

        if self._closed:
            return Readiness("unready", "ledger is closed")
        if not self._writer.is_alive():
            return Readiness("unready", "ledger writer thread has stopped")
        try:
            self.recorder.probe_write()
        except Exception as exc:  # any driver or OS error means "cannot write now"
            return Readiness("unready", f"ledger at {self.config.db_path} is not writable: {exc}")
        return Readiness("ready", f"ledger: {self.config.db_path} (head seq {self._head.seq})")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._writer.join(timeout=30)
        self.recorder.datastore.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
