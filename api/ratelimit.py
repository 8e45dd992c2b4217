"""In-process fixed-window rate limiter (the seed's algorithm, seed-spec §B.7 / §C.6).

Fixed window: time is cut into windows `[k*W, (k+1)*W)` of the limiter's clock; each key has one
counter per window. Every attempt counts (`check`/`hit`), allowed or not, and the n-th attempt in a
window is allowed iff n <= limit. A denied caller gets `retry_after_seconds` = whole seconds until the
window ends (at least 1). Known property of fixed windows: up to 2*limit attempts can land around a
window boundary; the seed accepts this and so do we.

Limits on *failures* (failed sign-ins) reserve before the work and give the slot back when the work
succeeded: `check(key)` counts the attempt atomically (so N parallel attempts can never all pass a
limit below N) and `refund(key, decision)` uncounts it in the same window. `peek(key)` decides
without counting (for displays and tests; a peek-then-count sequence is not atomic: never use it as
a limit).

`Decision.first_refusal` is True for exactly one refused attempt per key and window (the
`limit + 1`-th; a limiter that refunds may see it again after a refund): callers that record a
refusal once per window (design §8 "Reasons and kinds") record that one and only count the others.

Memory is bounded: at most `max_keys` keys are tracked. Entries are kept in window order; inserting
a new key first drops every entry of a past window, then, if the bound is still reached, the oldest
entries of the current window (which forgets their counts: an attacker able to create `max_keys` distinct
keys in one window can reset others' counters, so size `max_keys` well above the expected number of
active clients). One lock guards all state and the clock is read under it; decisions are linearisable, so
threads never over-admit.
State is per process (a multi-process deployment multiplies the effective limit by the process
count).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after_seconds: int  # 0 when allowed
    remaining: int = 0  # attempts left in the current window after this one
    # bookkeeping, not part of the decision's value (equality compares the three fields above)
    first_refusal: bool = field(default=False, compare=False)  # the first refused attempt of this key in this window
    window: int = field(default=0, compare=False)  # the window the attempt was counted in (for `refund`)


class RateLimiter:
    def __init__(self, limit: int, window_seconds: float, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an integer >= 1, got {limit!r}")
        if isinstance(window_seconds, bool) or not isinstance(window_seconds, (int, float)) \
                or not math.isfinite(window_seconds) or window_seconds <= 0:
            raise ValueError(f"window_seconds must be a positive number, got {window_seconds!r}")
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ValueError(f"max_keys must be an integer >= 1, got {max_keys!r}")
        self.limit = limit
        self.window_seconds = window_seconds
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        # key -> [window_index, count]; ordered by window_index (ascending), ties by first use.
        self._entries: OrderedDict[Hashable, list[int]] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _window(self, now: float) -> int:
        return math.floor(now / self.window_seconds)

    def _retry_after(self, window: int, now: float) -> int:
        end = (window + 1) * self.window_seconds
        return max(1, math.ceil(end - now))

    def _decide(self, count: int, window: int, now: float) -> Decision:
        if count <= self.limit:
            return Decision(True, 0, self.limit - count, window=window)
        return Decision(False, self._retry_after(window, now), 0, first_refusal=count == self.limit + 1,
                        window=window)

    def check(self, key: Hashable) -> Decision:
        """Count one attempt for `key` and decide it (n-th in the window allowed iff n <= limit)."""
        with self._lock:
            now = self._clock()
            window = self._window(now)
            entry = self._entries.get(key)
            if entry is None:
                self._make_room(window)
                self._entries[key] = [window, 1]
                return self._decide(1, window, now)
            if entry[0] < window:
                entry[0], entry[1] = window, 0
                self._entries.move_to_end(key)
            entry[1] += 1
            return self._decide(entry[1], entry[0], now)

    hit = check

    def peek(self, key: Hashable) -> Decision:
        """Would one more attempt be allowed now? Counts nothing."""
        with self._lock:
            now = self._clock()
            window = self._window(now)
            entry = self._entries.get(key)
            if entry is not None and entry[0] >= window:
                window, count = entry[0], entry[1]
            else:
                count = 0
        if count < self.limit:
            return Decision(True, 0, self.limit - count)
        return Decision(False, self._retry_after(window, now), 0)

    def refund(self, key: Hashable, decision: Decision) -> None:
        """Give back an attempt `check` counted and allowed (the work it guarded succeeded): the
        key's count drops by one if it is still in the decision's window (a past window is gone)."""
        if not decision.allowed:
            return
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == decision.window and entry[1] > 0:
                entry[1] -= 1

    def reset(self, key: Hashable) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def _make_room(self, window: int) -> None:
        """Called under the lock before inserting a new key. Entries are in window order, so past
        windows sit at the front: drop them all (amortised O(1): each entry is dropped once), then,
        if still full, the oldest entries of the current window."""
        entries = self._entries
        while entries:
            first = next(iter(entries.values()))
            if first[0] >= window:
                break
            entries.popitem(last=False)
        while len(entries) >= self.max_keys:
            entries.popitem(last=False)
