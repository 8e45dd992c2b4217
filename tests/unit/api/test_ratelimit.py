"""Fixed-window rate limiter: the n-th attempt in a window is allowed iff n <= limit (seed §B.7)."""

from __future__ import annotations

import threading

import pytest

from api.ratelimit import Decision, RateLimiter


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_nth_attempt_allowed_iff_n_le_limit() -> None:
    rl = RateLimiter(3, 60, clock=FakeClock(0))
    decisions = [rl.check("ip:a") for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]


def test_every_attempt_counts_even_when_denied() -> None:
    clock = FakeClock(0)
    rl = RateLimiter(1, 60, clock=clock)
    assert rl.check("k").allowed
    for _ in range(10):
        assert not rl.check("k").allowed
    clock.now = 60  # next window: the denied attempts did not carry over
    assert rl.check("k").allowed


def test_keys_are_independent() -> None:
    rl = RateLimiter(1, 60, clock=FakeClock(0))
    assert rl.check("a").allowed and rl.check("b").allowed
    assert not rl.check("a").allowed


def test_retry_after_is_seconds_until_window_end() -> None:
    clock = FakeClock(3600 * 5 + 100.5)  # 100.5 s into a 1-hour window
    rl = RateLimiter(1, 3600, clock=clock)
    assert rl.check("k") == Decision(True, 0, 0)
    denied = rl.check("k")
    assert denied == Decision(False, 3500, 0)  # ceil(3499.5)
    clock.now = 3600 * 6 - 0.25
    assert rl.check("k").retry_after_seconds == 1  # never 0 for a denial


def test_window_rollover() -> None:
    clock = FakeClock(0)
    rl = RateLimiter(2, 10, clock=clock)
    assert rl.check("k").allowed and rl.check("k").allowed and not rl.check("k").allowed
    clock.now = 9.999
    assert not rl.check("k").allowed
    clock.now = 10.0
    assert rl.check("k").allowed and rl.check("k").allowed and not rl.check("k").allowed
    clock.now = 35
    assert rl.check("k").allowed


def test_fixed_window_boundary_burst_is_at_most_twice_the_limit() -> None:
    clock = FakeClock(9.9)
    rl = RateLimiter(5, 10, clock=clock)
    first = sum(rl.check("k").allowed for _ in range(20))
    clock.now = 10.1
    second = sum(rl.check("k").allowed for _ in range(20))
    assert (first, second) == (5, 5)


def test_peek_does_not_count() -> None:
    clock = FakeClock(0)
    rl = RateLimiter(2, 60, clock=clock)
    for _ in range(10):
        assert rl.peek("k") == Decision(True, 0, 2)
    rl.hit("k")
    assert rl.peek("k") == Decision(True, 0, 1)
    rl.hit("k")
    clock.now = 15
    assert rl.peek("k") == Decision(False, 45, 0)
    clock.now = 60
    assert rl.peek("k").allowed


def test_failed_verification_pattern_reserve_then_refund_on_success() -> None:
    rl = RateLimiter(3, 3600, clock=FakeClock(0))
    admitted = 0
    for i in range(10):  # every other attempt succeeds and gives its slot back
        d = rl.check("verify:ip")
        if not d.allowed:
            continue
        admitted += 1
        if i % 2:
            rl.refund("verify:ip", d)
    assert admitted == 5  # three failures and the two successes admitted before the third failure


def test_invalid_configuration_is_refused() -> None:
    for bad in (0, -1, True, 1.5, "3"):
        with pytest.raises(ValueError):
            RateLimiter(bad, 60)  # type: ignore[arg-type]
    for bad_window in (0, -1, float("inf"), float("nan"), "60"):
        with pytest.raises(ValueError):
            RateLimiter(1, bad_window)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RateLimiter(1, 60, max_keys=0)


def test_memory_is_bounded_within_one_window() -> None:
    rl = RateLimiter(1, 60, clock=FakeClock(0), max_keys=100)
    for i in range(1000):
        rl.check(f"ip:{i}")
        assert len(rl) <= 100
    assert len(rl) == 100
    # the newest keys are kept (their counts survive), the oldest were evicted
    assert not rl.check("ip:999").allowed
    assert rl.check("ip:0").allowed


def test_past_windows_are_dropped_first() -> None:
    clock = FakeClock(0)
    rl = RateLimiter(1, 60, clock=clock, max_keys=10)
    for i in range(10):
        rl.check(f"old:{i}")
    clock.now = 60
    rl.check("old:9")  # refreshed into the current window
    rl.check("new")
    assert len(rl) == 2  # the nine stale entries went, the current-window ones stayed
    assert not rl.check("old:9").allowed


def test_reset_forgets_a_key() -> None:
    rl = RateLimiter(1, 60, clock=FakeClock(0))
    rl.check("k")
    rl.reset("k")
    assert rl.check("k").allowed


def test_concurrent_threads_never_over_admit() -> None:
    rl = RateLimiter(50, 3600)
    allowed = 0
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def worker() -> None:
        nonlocal allowed
        barrier.wait()
        mine = sum(rl.check("shared").allowed for _ in range(200))
        with lock:
            allowed += mine

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert allowed == 50


def test_concurrent_threads_with_eviction_stay_bounded() -> None:
    rl = RateLimiter(1, 3600, max_keys=64)

    def worker(n: int) -> None:
        for i in range(2000):
            rl.check((n, i))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(rl) == 64


def test_exactly_one_first_refusal_per_key_and_window() -> None:
    """The refusal a caller records once per window (design §8): the limit+1-th attempt only."""
    clock = FakeClock(0)
    rl = RateLimiter(2, 60, clock=clock)
    decisions = [rl.check("acct") for _ in range(6)]
    assert [d.first_refusal for d in decisions] == [False, False, True, False, False, False]
    clock.now = 60  # a new window: a new first refusal
    decisions = [rl.check("acct") for _ in range(4)]
    assert [d.first_refusal for d in decisions] == [False, False, True, False]


def test_refund_gives_an_allowed_attempt_back_in_its_window_only() -> None:
    clock = FakeClock(0)
    rl = RateLimiter(1, 60, clock=clock)
    d = rl.check("ip")
    rl.refund("ip", d)
    assert rl.check("ip").allowed  # the refunded slot is free again
    refused = rl.check("ip")
    assert not refused.allowed
    rl.refund("ip", refused)  # a refused attempt holds no slot: nothing to give back
    assert not rl.check("ip").allowed
    old = rl.peek("ip")
    clock.now = 61
    fresh = rl.check("ip")
    rl.refund("ip", Decision(True, 0, 0, window=0))  # a past window's refund does not touch the new one
    assert fresh.allowed and not rl.check("ip").allowed and not old.allowed


def test_parallel_reservations_never_pass_a_failure_limit() -> None:
    """The failed-sign-in pattern: reserve with `check` before the work, refund on success. With
    every attempt failing, at most `limit` of many parallel attempts pass."""
    rl = RateLimiter(30, 3600)
    passed = 0
    lock = threading.Lock()
    barrier = threading.Barrier(50)

    def attempt() -> None:
        nonlocal passed
        barrier.wait()
        if rl.check("ip").allowed:
            with lock:
                passed += 1

    threads = [threading.Thread(target=attempt) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert passed == 30
