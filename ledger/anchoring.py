"""In-process anchoring: the pump that feeds anchors from the ledger, and the confirmation waiter
the release gate uses.

`AnchorPump` gives every anchor its own worker thread. A worker wakes on every ledger commit
(`Ledger.on_commit`), every `poll_interval_s` (appends made by other processes), and after a
failure once its backoff has passed; it then reads `ledger.read(after, batch_max)` from the
anchor's own position and submits, until the anchor has caught up with the ledger.
Invariants:
- The pump holds no position of its own: it always resumes from the anchor (`confirmed_upto()`,
  or `accepted_upto()` when an asynchronous anchor offers it, see below), so a restart, another
  pump in another process, or a retry after a half-known failure never skips or re-orders a
  record (anchors accept harmless re-submission).
- One anchor failing or hanging never delays another: only its own worker waits on it. Errors are
  logged, kept as `last_error` (for readiness), retried with bounded exponential backoff.

`ConfirmationWaiter` keeps the last confirmed position seen for each anchor and wakes waiters
when it rises. Positions come from the pump (after every drain, in-process, immediately) and
from one poller thread per anchor that calls `confirmed_upto()` every `poll_interval_s` (50 ms)
while someone waits on that anchor and it has not reached the wanted seq (confirmations made by
other processes). **Choice:** a waiting thread never calls an anchor itself; it only reads the
cached positions under a lock and sleeps on a `threading.Condition`. An anchor whose
`confirmed_upto()` hangs therefore stalls only its own poller (at most one call in flight per
anchor, so no thread pile-up), and `wait()` always returns by its deadline with the anchors that
did confirm. Cached positions only rise (a confirmation, once seen, is a fact).

Optional anchor extension: an asynchronous anchor (one whose `submit` queues) may offer
`accepted_upto() -> int`, the highest seq it has accepted; the pump then reads on from there
instead of from `confirmed_upto()`, so queued records are not re-submitted on every wake-up.

This module imports only the standard library and the ledger core.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .chain import ChainHead, ChainRecord
from .ports import Anchor

log = logging.getLogger("agentkeys.ledger.anchoring")


class LedgerSource(Protocol):
    """What the pump needs from `ledger.app.Ledger`."""

    def on_commit(self, listener: Callable[[ChainHead], None]) -> Callable[[], None]: ...

    def read(self, after_seq: int = 0, limit: int = 1000) -> list[ChainRecord]: ...


# --- the confirmation waiter ----------------------------------------------------------------


class _Watch:
    """What the waiter knows of one anchor. Fields are guarded by the waiter's condition."""

    __slots__ = ("ref", "name", "position", "targets", "poller", "poll_error", "__weakref__")

    def __init__(self, ref: Callable[[], Any], name: str) -> None:
        self.ref = ref
        self.name = name
        self.position = -1  # unknown until first seen
        self.targets: list[int] = []  # the seqs current waiters want from this anchor
        self.poller: threading.Thread | None = None
        self.poll_error: str | None = None

    def wanted(self) -> bool:
        return any(t > self.position for t in self.targets)


class ConfirmationWaiter:
    """Cached confirmed positions per anchor object, with blocking and asyncio waits."""

    def __init__(self, *, poll_interval_s: float = 0.05, poller_idle_exit_s: float = 5.0) -> None:
        self.poll_interval_s = poll_interval_s
        self.poller_idle_exit_s = poller_idle_exit_s
        # Reentrant: a weakref callback may run (garbage collection) while the lock is held.
        self._cond = threading.Condition(threading.RLock())
        self._watches: dict[int, _Watch] = {}
        self._async_wakers: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._closed = False

    # -- feeding positions --

    def publish(self, anchor: Anchor, position: int) -> None:
        """Record that `anchor` has confirmed up to `position` (positions only rise)."""
        watch = self._watch(anchor)
        with self._cond:
            if position > watch.position:
                watch.position = position
                self._notify()

    def position(self, anchor: Anchor) -> int | None:
        """The last confirmed position seen for `anchor` (None: never seen). Never blocks on it."""
        watch = self._watch(anchor)
        with self._cond:
            return watch.position if watch.position >= 0 else None

    # -- waiting --

    def wait(self, anchors: Sequence[Anchor], seq: int, timeout_s: float) -> list[str]:
        """Block until every anchor has confirmed `seq` or `timeout_s` passes; return the names
        of the anchors that confirmed it (in the order given)."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        watches = [self._watch(a) for a in anchors]
        with self._cond:
            self._want(watches, seq)
            try:
                while True:
                    done = [w.name for w in watches if w.position >= seq or seq <= 0]
                    remaining = deadline - time.monotonic()
                    if len(done) == len(watches) or remaining <= 0:
                        return done
                    self._cond.wait(remaining)
            finally:
                self._unwant(watches, seq)

    async def wait_async(self, anchors: Sequence[Anchor], seq: int, timeout_s: float) -> list[str]:
        """`wait` for the event loop: never blocks it (beyond brief lock holds), woken through
        `call_soon_threadsafe` when a position rises, re-checking at least every poll interval."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout_s)
        event = asyncio.Event()
        waker = (loop, event)
        watches = [self._watch(a) for a in anchors]
        with self._cond:
            self._want(watches, seq)
            self._async_wakers.add(waker)
        try:
            while True:
                event.clear()
                with self._cond:
                    done = [w.name for w in watches if w.position >= seq or seq <= 0]
                remaining = deadline - loop.time()
                if len(done) == len(watches) or remaining <= 0:
                    return done
                try:
                    await asyncio.wait_for(event.wait(), min(remaining, self.poll_interval_s))
                except TimeoutError:
                    pass
        finally:
            with self._cond:
                self._async_wakers.discard(waker)
                self._unwant(watches, seq)

    def close(self) -> None:
        """Stop the pollers (a poller stuck in a hanging anchor exits when the call returns)."""
        with self._cond:
            self._closed = True
            self._notify()

    # -- internals --

    def _watch(self, anchor: Anchor) -> _Watch:
        key = id(anchor)
        with self._cond:
            watch = self._watches.get(key)
            if watch is not None and watch.ref() is anchor:
                return watch
            def forget(r: object, key: int = key) -> None:
                self._forget(key, r)

            def keep(anchor: Anchor = anchor) -> Anchor:
                return anchor

            try:
                ref: Callable[[], Any] = weakref.ref(anchor, forget)
            except TypeError:  # not weak-referenceable: keep it alive with the watch
                ref = keep
            watch = _Watch(ref, anchor.name)
            self._watches[key] = watch
            return watch

    def _forget(self, key: int, ref: object) -> None:
        watch = self._watches.get(key)
        if watch is not None and watch.ref is ref:
            self._watches.pop(key, None)

    def _want(self, watches: list[_Watch], seq: int) -> None:
        for w in watches:
            w.targets.append(seq)
            if w.poller is None and w.wanted() and not self._closed:
                w.poller = threading.Thread(
                    target=self._poll_loop, args=(w,), name=f"anchor-poll-{w.name}", daemon=True
                )
                w.poller.start()
        self._notify()

    def _unwant(self, watches: list[_Watch], seq: int) -> None:
        for w in watches:
            w.targets.remove(seq)

    def _notify(self) -> None:
        self._cond.notify_all()
        for loop, event in list(self._async_wakers):
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # loop closed: its waiter is gone
                self._async_wakers.discard((loop, event))

    def _poll_loop(self, watch: _Watch) -> None:
        """One per anchor while it is wanted: at most one `confirmed_upto()` call in flight."""
        while True:
            with self._cond:
                idle_until = time.monotonic() + self.poller_idle_exit_s
                while not self._closed and not watch.wanted():
                    remaining = idle_until - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._closed or not watch.wanted():
                    watch.poller = None
                    return
            anchor = watch.ref()
            if anchor is None:
                with self._cond:
                    watch.poller = None
                return
            try:
                position = anchor.confirmed_upto()
            except Exception as exc:  # an anchor error is the anchor's state, not the waiter's
                with self._cond:
                    watch.poll_error = str(exc)
                log.debug("polling %s failed: %s", watch.name, exc)
            else:
                with self._cond:
                    watch.poll_error = None
                    if position > watch.position:
                        watch.position = position
                        self._notify()
            del anchor
            time.sleep(self.poll_interval_s)


_DEFAULT_WAITER = ConfirmationWaiter()


def default_waiter() -> ConfirmationWaiter:
    """The process-wide waiter the pump publishes to unless given another."""
    return _DEFAULT_WAITER


def wait_confirmed(
    anchors: Sequence[Anchor], seq: int, timeout_s: float, *, waiter: ConfirmationWaiter | None = None
) -> list[str]:
    """Names of the anchors whose confirmed position reached `seq`, waiting until all have or
    `timeout_s` passes. Never exceeds the timeout, even when an anchor hangs."""
    return (waiter or _DEFAULT_WAITER).wait(anchors, seq, timeout_s)


async def wait_confirmed_async(
    anchors: Sequence[Anchor], seq: int, timeout_s: float, *, waiter: ConfirmationWaiter | None = None
) -> list[str]:
    """`wait_confirmed` without blocking the event loop."""
    return await (waiter or _DEFAULT_WAITER).wait_async(anchors, seq, timeout_s)


# --- the pump ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnchorStatus:
    """A worker's view of its anchor, for readiness and metrics."""

    name: str
    confirmed: int | None  # last confirmed_upto() the worker read (None: not yet)
    last_error: str | None  # the error of the last attempt, None once an attempt succeeds
    failures: int  # consecutive failed attempts
    submitted: int  # records submitted by this pump
    last_success_at: float | None  # time.time() of the last successful drain


class _Worker:
    def __init__(self, pump: AnchorPump, anchor: Anchor) -> None:
        self.pump = pump
        self.anchor = anchor
        self.name = anchor.name
        self.wake = threading.Event()
        self.wake.set()  # catch up at start
        self.failures = 0
        self.last_error: str | None = None
        self.confirmed: int | None = None
        self.submitted = 0
        self.last_success_at: float | None = None
        self.thread = threading.Thread(target=self.run, name=f"anchor-pump-{self.name}", daemon=True)

    def status(self) -> AnchorStatus:
        return AnchorStatus(self.name, self.confirmed, self.last_error, self.failures, self.submitted, self.last_success_at)

    def run(self) -> None:
        pump, stop = self.pump, self.pump._stop
        while not stop.is_set():
            if self.failures:
                if stop.wait(pump.backoff_s(self.failures)):
                    return
            else:
                self.wake.wait(pump.poll_interval_s)
                if stop.is_set():
                    return
            self.wake.clear()
            try:
                self.drain()
            except Exception as exc:
                self.failures += 1
                message = f"{type(exc).__name__}: {exc}"
                level = logging.WARNING if message != self.last_error else logging.DEBUG
                log.log(level, "anchor %s: attempt %d failed: %s", self.name, self.failures, message)
                self.last_error = message
            else:
                if self.failures:
                    log.info("anchor %s: recovered after %d failed attempts", self.name, self.failures)
                self.failures = 0
                self.last_error = None
                self.last_success_at = time.time()

    def drain(self) -> None:
        """Submit everything the anchor lacks, batch by batch, until it has caught up."""
        pump, anchor = self.pump, self.anchor
        accepted_upto = getattr(anchor, "accepted_upto", None)
        while not pump._stop.is_set():
            self.confirmed = anchor.confirmed_upto()
            pump.waiter.publish(anchor, self.confirmed)
            after = accepted_upto() if accepted_upto is not None else self.confirmed
            records = pump.ledger.read(after, pump.batch_max)
            if not records:
                return
            anchor.submit(records)
            self.submitted += len(records)


class AnchorPump:
    """Feeds every anchor from the ledger, one worker thread per anchor (see module doc)."""

    def __init__(
        self,
        ledger: LedgerSource,
        anchors: Sequence[Anchor],
        *,
        batch_max: int = 1000,
        poll_interval_s: float = 0.5,
        backoff_max_s: float = 10.0,
        waiter: ConfirmationWaiter | None = None,
        stop_timeout_s: float = 5.0,
    ) -> None:
        names = [a.name for a in anchors]
        if len(set(names)) != len(names):
            raise ValueError(f"anchor names must be unique, got {names}")
        if batch_max < 1 or poll_interval_s <= 0 or backoff_max_s <= 0:
            raise ValueError("batch_max >= 1, poll_interval_s > 0 and backoff_max_s > 0 are required")
        self.ledger = ledger
        self.anchors = list(anchors)
        self.batch_max = batch_max
        self.poll_interval_s = poll_interval_s
        self.backoff_max_s = backoff_max_s
        self.stop_timeout_s = stop_timeout_s
        self.waiter = waiter or _DEFAULT_WAITER
        self._stop = threading.Event()
        self._workers = [_Worker(self, a) for a in self.anchors]
        self._by_name = {w.name: w for w in self._workers}
        self._unsubscribe: Callable[[], None] | None = None
        self._started = False

    def backoff_s(self, failures: int) -> float:
        """Delay before retry number `failures`: doubling from the poll interval, capped."""
        delay: float = self.poll_interval_s * 2 ** min(failures - 1, 30)
        return min(self.backoff_max_s, delay)

    def start(self) -> AnchorPump:
        if self._started:
            raise RuntimeError("an AnchorPump starts once")
        self._started = True
        self._unsubscribe = self.ledger.on_commit(self._on_commit)
        for w in self._workers:
            w.thread.start()
        return self

    def wake(self) -> None:
        """Wake every worker now (as a commit does)."""
        for w in self._workers:
            w.wake.set()

    def _on_commit(self, head: ChainHead) -> None:  # runs on the ledger's writer thread: cheap
        self.wake()

    def stop(self, timeout_s: float | None = None) -> bool:
        """Stop the workers; wait at most `timeout_s` in all. False if a worker is still stuck in
        an anchor call (its daemon thread exits when the call returns)."""
        self._stop.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.wake()
        deadline = time.monotonic() + (self.stop_timeout_s if timeout_s is None else timeout_s)
        stuck = []
        for w in self._workers:
            if w.thread.is_alive():
                w.thread.join(max(0.0, deadline - time.monotonic()))
                if w.thread.is_alive():
                    stuck.append(w.name)
        if stuck:
            log.warning("anchor pump stopped with workers stuck in anchor calls: %s", ", ".join(stuck))
        return not stuck

    def confirmed(self, name: str) -> int:
        """The highest position anchor `name` was seen to confirm (0 before the first read).
        Reads cached positions only, so it never blocks on a hanging anchor."""
        worker = self._by_name[name]
        return max(self.waiter.position(worker.anchor) or 0, worker.confirmed or 0)

    def status(self) -> dict[str, AnchorStatus]:
        return {w.name: w.status() for w in self._workers}

    def last_error(self, name: str) -> str | None:
        return self.status()[name].last_error

    def __enter__(self) -> AnchorPump:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
