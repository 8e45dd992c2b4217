"""`MemoryAnchor`: the `Anchor` port in memory, a fake for unit tests.

Same semantics as `SQLiteAnchor` (the rules of `anchors.errors.plan_submit`), nothing durable.
Invariants: `_hashes` holds exactly seqs 1..confirmed_upto(); every operation runs under one
lock, so a batch is applied all at once or not at all and readers never see part of it.

Test knobs, named loudly so they never pass for production behaviour:

- `fail_next_submit(exc, times=1)`: the next `times` submits raise `exc` (None = every submit
  until `clear_failures()`); nothing is written.
- `fail_readiness(detail)`: `ready()` reports unready until `clear_failures()`.
- `hang(seconds=None, ...)`: calls block at a gate (a `threading.Event`) until `release()`, or
  for at most `seconds`, then proceed normally. By default `submit` and `confirmed_upto` hang,
  the case a confirmation waiter must survive.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from ledger.chain import ChainRecord
from ledger.ports import Readiness

from .errors import check_batch, existing_range, plan_submit

_HANGABLE = frozenset({"submit", "confirmed_upto", "verify", "ready"})


class MemoryAnchor:
    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._hashes: dict[int, str] = {}
        self._confirmed = 0
        # knobs
        self._fail_exc: BaseException | None = None
        self._fail_times: int | None = 0
        self._unready: str | None = None
        self._gate = threading.Event()
        self._gate.set()
        self._hang_s: float | None = None
        self._hang_calls: frozenset[str] = frozenset()
        self.submit_calls = 0

    # --- the port -------------------------------------------------------------------------

    def ready(self) -> Readiness:
        self._maybe_hang("ready")
        if self._unready is not None:
            return Readiness("unready", f"{self.name}: {self._unready}")
        return Readiness("ready", f"{self.name}: in memory")

    def submit(self, records: Sequence[ChainRecord]) -> None:
        self._maybe_hang("submit")
        records = list(records)
        with self._lock:
            self.submit_calls += 1
            self._maybe_fail()
            check_batch(self.name, records)
            span = existing_range(records, self._confirmed)
            anchored = {s: self._hashes[s] for s in range(span[0], span[1] + 1)} if span else {}
            for r in plan_submit(self.name, records, self._confirmed, anchored):
                self._hashes[r.seq] = r.hash
                self._confirmed = r.seq

    def confirmed_upto(self) -> int:
        self._maybe_hang("confirmed_upto")
        with self._lock:
            return self._confirmed

    def verify(self, seq: int, hash: str) -> bool:
        self._maybe_hang("verify")
        with self._lock:
            return self._hashes.get(seq) == hash

    # --- test knobs -----------------------------------------------------------------------

    def fail_next_submit(self, exc: BaseException, *, times: int | None = 1) -> None:
        """Make the next `times` submits raise `exc` (None: all, until `clear_failures`)."""
        with self._lock:
            self._fail_exc, self._fail_times = exc, times

    def fail_readiness(self, detail: str = "simulated outage") -> None:
        self._unready = detail

    def clear_failures(self) -> None:
        with self._lock:
            self._fail_exc, self._fail_times = None, 0
        self._unready = None

    def hang(self, seconds: float | None = None, *, calls: Iterable[str] = ("submit", "confirmed_upto")) -> None:
        """Block `calls` at the gate until `release()` (or for at most `seconds` each)."""
        calls = frozenset(calls)
        if not calls <= _HANGABLE:
            raise ValueError(f"cannot hang {sorted(calls - _HANGABLE)}")
        self._hang_s, self._hang_calls = seconds, calls
        self._gate.clear()

    def release(self) -> None:
        """Open the gate: hung calls proceed, new calls no longer hang."""
        self._hang_calls = frozenset()
        self._gate.set()

    def _maybe_hang(self, call: str) -> None:
        if call in self._hang_calls:
            self._gate.wait(self._hang_s)

    def _maybe_fail(self) -> None:
        if self._fail_exc is None or self._fail_times == 0:
            return
        exc = self._fail_exc
        if self._fail_times is not None:
            self._fail_times -= 1
            if self._fail_times == 0:
                self._fail_exc = None
        raise exc
