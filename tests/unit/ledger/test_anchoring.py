"""The anchor pump and the confirmation waiter, on a real Ledger (SQLite in tmp_path)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from anchors.errors import AnchorUnavailable
from anchors.memory import MemoryAnchor
from anchors.sqlite import SQLiteAnchor
from ledger.aggregates import stream_id
from ledger.anchoring import AnchorPump, ConfirmationWaiter, wait_confirmed, wait_confirmed_async
from ledger.app import Ledger
from ledger.config import LedgerConfig
from ledger.events import WalletBound
from tests.contract.chains import make_chain


def append_one(ledger: Ledger, key: str) -> int:
    event = WalletBound(omni_account=f"omni-{key}", address=f"0x{key}", role="master")
    return ledger.append(stream_id("anchoring-test", key), 0, [event])[-1].seq


def append_many(ledger: Ledger, n: int, prefix: str = "k") -> int:
    seq = 0
    for i in range(n):
        seq = append_one(ledger, f"{prefix}{i}")
    return seq


def all_records(ledger: Ledger):
    return ledger.read(0, 1_000_000)


def eventually(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.fixture
def sqlite_anchor(tmp_path: Path):
    a = SQLiteAnchor(tmp_path / "anchor.sqlite")
    yield a
    a.close()


@pytest.fixture
def waiter():
    w = ConfirmationWaiter()
    yield w
    w.close()


def test_appends_get_confirmed_by_the_sqlite_anchor(ledger: Ledger, sqlite_anchor: SQLiteAnchor, waiter) -> None:
    with AnchorPump(ledger, [sqlite_anchor], waiter=waiter, poll_interval_s=5.0):
        for i in range(20):
            seq = append_one(ledger, f"a{i}")
            t0 = time.monotonic()
            assert wait_confirmed([sqlite_anchor], seq, 5.0, waiter=waiter) == ["sqlite"]
            assert time.monotonic() - t0 < 1.0  # woken by the commit, not by the 5 s poll
    assert all(sqlite_anchor.verify(r.seq, r.hash) for r in all_records(ledger))


def test_appends_by_another_process_are_caught_by_polling(
    ledger: Ledger, ledger_path: Path, sqlite_anchor: SQLiteAnchor, waiter
) -> None:
    """Appends through a second Ledger on the same file fire no listener of the pump's ledger."""
    with AnchorPump(ledger, [sqlite_anchor], waiter=waiter, poll_interval_s=0.1):
        with Ledger(LedgerConfig(ledger_path)) as other:
            seq = append_many(other, 5, "other")
        assert wait_confirmed([sqlite_anchor], seq, 5.0, waiter=waiter) == ["sqlite"]


def test_failing_anchor_does_not_stop_the_others(ledger: Ledger, sqlite_anchor: SQLiteAnchor, waiter) -> None:
    broken = MemoryAnchor()
    broken.fail_next_submit(AnchorUnavailable("memory is down"), times=None)
    pump = AnchorPump(ledger, [broken, sqlite_anchor], waiter=waiter, poll_interval_s=0.05, backoff_max_s=0.2)
    with pump:
        seq = append_many(ledger, 10)
        assert wait_confirmed([sqlite_anchor, broken], seq, 1.0, waiter=waiter) == ["sqlite"]
        eventually(lambda: pump.last_error("memory") is not None)
        assert "memory is down" in pump.last_error("memory")
        assert pump.status()["memory"].failures >= 1
        assert pump.last_error("sqlite") is None

        broken.clear_failures()  # recovers on a later retry (backoff is bounded)
        assert wait_confirmed([sqlite_anchor, broken], seq, 5.0, waiter=waiter) == ["sqlite", "memory"]
        eventually(lambda: pump.last_error("memory") is None)
    assert all(broken.verify(r.seq, r.hash) for r in all_records(ledger))


def test_hanging_anchor_never_makes_the_waiter_exceed_its_timeout(
    ledger: Ledger, sqlite_anchor: SQLiteAnchor, waiter
) -> None:
    hung = MemoryAnchor("hung")
    hung.hang()  # submit and confirmed_upto block until release()
    pump = AnchorPump(ledger, [hung, sqlite_anchor], waiter=waiter, poll_interval_s=0.05)
    pump.start()
    try:
        seq = append_many(ledger, 3)
        for _ in range(3):  # repeated waits do not pile up threads on the hung anchor
            t0 = time.monotonic()
            assert wait_confirmed([sqlite_anchor, hung], seq, 0.3, waiter=waiter) == ["sqlite"]
            assert time.monotonic() - t0 < 0.3 + 0.2
        pollers = [t for t in threading.enumerate() if t.name == "anchor-poll-hung"]
        assert len(pollers) <= 1
        t0 = time.monotonic()
        assert pump.stop(timeout_s=0.3) is False  # the hung worker cannot be joined ...
        assert time.monotonic() - t0 < 0.3 + 0.2  # ... and stop() does not hang either
    finally:
        hung.release()
        pump.stop()


def test_hanging_anchor_and_the_async_waiter(ledger: Ledger, sqlite_anchor: SQLiteAnchor, waiter) -> None:
    hung = MemoryAnchor("hung")
    hung.hang()
    with AnchorPump(ledger, [hung, sqlite_anchor], waiter=waiter, poll_interval_s=0.05):
        seq = append_many(ledger, 2)

        async def scenario() -> tuple[list[str], float, int]:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            task = asyncio.create_task(ticker())
            t0 = time.monotonic()
            names = await wait_confirmed_async([sqlite_anchor, hung], seq, 0.4, waiter=waiter)
            elapsed = time.monotonic() - t0
            task.cancel()
            return names, elapsed, ticks

        names, elapsed, ticks = asyncio.run(scenario())
        assert names == ["sqlite"]
        assert elapsed < 0.4 + 0.2
        assert ticks >= 10  # the event loop kept running while waiting
        hung.release()
        assert wait_confirmed([sqlite_anchor, hung], seq, 5.0, waiter=waiter) == ["sqlite", "hung"]


def test_async_waiter_is_woken_promptly(ledger: Ledger, sqlite_anchor: SQLiteAnchor, waiter) -> None:
    with AnchorPump(ledger, [sqlite_anchor], waiter=waiter, poll_interval_s=5.0):

        async def scenario() -> float:
            seq = (await asyncio.gather(asyncio.to_thread(append_one, ledger, "x")))[0]
            t0 = time.monotonic()
            assert await wait_confirmed_async([sqlite_anchor], seq, 5.0, waiter=waiter) == ["sqlite"]
            return time.monotonic() - t0

        assert asyncio.run(scenario()) < 1.0


def test_a_new_pump_resumes_from_the_anchor(ledger: Ledger, tmp_path: Path, waiter) -> None:
    path = tmp_path / "anchor.sqlite"
    first = SQLiteAnchor(path)
    with AnchorPump(ledger, [first], waiter=waiter, poll_interval_s=0.05):
        seq = append_many(ledger, 5, "before")
        assert wait_confirmed([first], seq, 5.0, waiter=waiter) == ["sqlite"]
    first.close()

    seq = append_many(ledger, 7, "between")  # no pump running
    second = SQLiteAnchor(path)
    assert second.confirmed_upto() == 5
    with AnchorPump(ledger, [second], waiter=waiter, poll_interval_s=0.05, batch_max=3) as pump:
        assert wait_confirmed([second], seq, 5.0, waiter=waiter) == ["sqlite"]
        assert pump.status()["sqlite"].submitted == 7  # only what was missing, in batches of 3
    assert all(second.verify(r.seq, r.hash) for r in all_records(ledger))
    second.close()


@pytest.mark.slow
def test_thousand_appends_from_twenty_threads_all_anchored(
    ledger: Ledger, sqlite_anchor: SQLiteAnchor, waiter
) -> None:
    memory = MemoryAnchor()
    with AnchorPump(ledger, [sqlite_anchor, memory], waiter=waiter, poll_interval_s=0.05, batch_max=100):
        with ThreadPoolExecutor(20) as pool:
            seqs = list(pool.map(lambda i: append_one(ledger, f"t{i}"), range(1000)))
        assert sorted(seqs) == list(range(1, 1001))
        assert wait_confirmed([sqlite_anchor, memory], 1000, 30.0, waiter=waiter) == ["sqlite", "memory"]
    records = all_records(ledger)
    assert [r.seq for r in records] == list(range(1, 1001))
    assert all(sqlite_anchor.verify(r.seq, r.hash) for r in records)
    assert all(memory.verify(r.seq, r.hash) for r in records)


# --- the waiter alone ---------------------------------------------------------------------------


def test_waiter_polls_confirmations_made_elsewhere(waiter) -> None:
    """No pump publishes: the waiter's poller sees what another writer confirmed."""
    anchor = MemoryAnchor()
    chain = make_chain(4)
    threading.Timer(0.1, anchor.submit, args=(chain,)).start()
    t0 = time.monotonic()
    assert waiter.wait([anchor], 4, 5.0) == ["memory"]
    assert time.monotonic() - t0 < 1.0
    assert waiter.position(anchor) == 4


def test_waiter_returns_partial_list_on_timeout_and_handles_errors(waiter) -> None:
    ok, failing = MemoryAnchor("ok"), MemoryAnchor("failing")
    ok.submit(make_chain(2))
    failing.hang(calls=("confirmed_upto",))
    assert waiter.wait([ok, failing], 2, 0.2) == ["ok"]
    assert waiter.wait([ok, failing], 3, 0.1) == []
    assert waiter.wait([ok], 0, 0.0) == ["ok"]
    failing.release()


def test_pump_validates_its_arguments(ledger: Ledger) -> None:
    with pytest.raises(ValueError):
        AnchorPump(ledger, [MemoryAnchor(), MemoryAnchor()])
    with pytest.raises(ValueError):
        AnchorPump(ledger, [MemoryAnchor()], batch_max=0)


def test_backoff_is_bounded(ledger: Ledger) -> None:
    pump = AnchorPump(ledger, [MemoryAnchor()], poll_interval_s=0.5, backoff_max_s=10.0)
    assert [pump.backoff_s(n) for n in (1, 2, 3, 4, 5, 6, 100)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_pump_reports_cached_positions_without_calling_the_anchor(
    ledger: Ledger, sqlite_anchor: SQLiteAnchor, waiter
) -> None:
    hung = MemoryAnchor("hung")
    pump = AnchorPump(ledger, [sqlite_anchor, hung], waiter=waiter, poll_interval_s=0.05)
    assert pump.confirmed("sqlite") == 0  # not started: nothing seen yet
    with pump:
        seq = append_many(ledger, 3)
        assert wait_confirmed([sqlite_anchor, hung], seq, 5.0, waiter=waiter) == ["sqlite", "hung"]
        hung.hang(calls=("submit", "confirmed_upto", "verify", "ready"))
        t0 = time.monotonic()
        assert (pump.confirmed("sqlite"), pump.confirmed("hung")) == (seq, seq)
        assert time.monotonic() - t0 < 0.1
        hung.release()
    with pytest.raises(KeyError):
        pump.confirmed("evm")
