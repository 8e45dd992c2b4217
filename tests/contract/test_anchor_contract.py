"""The one contract every `ledger.ports.Anchor` implementation passes.

To add an implementation, subclass `AnchorContract` (pytest collects `Test*` classes only) and
supply `make_anchor`; persistent anchors also supply `reopen_anchor`, asynchronous ones override
`wait_until_confirmed` (the default polls `confirmed_upto()`, which returns at once for synchronous
anchors). Refused submits must be refused at `submit` time, for every implementation.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from anchors.errors import AnchorConflict, AnchorError, AnchorGap, AnchorUnavailable
from anchors.memory import MemoryAnchor
from anchors.sqlite import SQLiteAnchor
from ledger.ports import Anchor

from .chains import extend, make_chain


class AnchorContract:
    """Behaviour shared by every anchor. Hooks below; tests after them."""

    #: seconds an asynchronous anchor may take to confirm
    confirm_timeout_s: float = 10.0
    #: records in the larger tests (lower it for slow anchors)
    big_n: int = 300

    # --- hooks ------------------------------------------------------------------------------

    def make_anchor(self, tmp_path: Path) -> Anchor:
        raise NotImplementedError

    def reopen_anchor(self, anchor: Anchor, tmp_path: Path) -> Anchor | None:
        """A new instance over the same storage; None for anchors that do not persist."""
        return None

    def close_anchor(self, anchor: Anchor) -> None:
        close = getattr(anchor, "close", None)
        if close is not None:
            close()

    def wait_until_confirmed(self, anchor: Anchor, seq: int) -> None:
        deadline = time.monotonic() + self.confirm_timeout_s
        while anchor.confirmed_upto() < seq:
            if time.monotonic() > deadline:
                raise AssertionError(f"{anchor.name} did not confirm seq {seq} in {self.confirm_timeout_s}s")
            time.sleep(0.01)

    def submit_and_confirm(self, anchor: Anchor, records) -> None:
        anchor.submit(records)
        if records:
            self.wait_until_confirmed(anchor, records[-1].seq)

    @pytest.fixture
    def anchor(self, tmp_path: Path) -> Iterator[Anchor]:
        a = self.make_anchor(tmp_path)
        yield a
        self.close_anchor(a)

    # --- the contract -----------------------------------------------------------------------

    def test_implements_the_port(self, anchor: Anchor) -> None:
        assert isinstance(anchor, Anchor)
        assert isinstance(anchor.name, str) and anchor.name

    def test_empty_anchor_confirms_nothing(self, anchor: Anchor) -> None:
        assert anchor.confirmed_upto() == 0
        assert anchor.verify(1, make_chain(1)[0].hash) is False

    def test_submit_confirms_the_prefix(self, anchor: Anchor) -> None:
        chain = make_chain(10)
        self.submit_and_confirm(anchor, chain)
        assert anchor.confirmed_upto() == 10
        more = extend(chain, 5)
        self.submit_and_confirm(anchor, more)
        assert anchor.confirmed_upto() == 15
        assert all(anchor.verify(r.seq, r.hash) for r in chain + more)

    def test_empty_submit_is_a_no_op(self, anchor: Anchor) -> None:
        anchor.submit([])
        assert anchor.confirmed_upto() == 0

    def test_verify_only_the_exact_hash_at_the_seq(self, anchor: Anchor) -> None:
        chain = make_chain(3)
        other = make_chain(3, fork="other")
        self.submit_and_confirm(anchor, chain)
        assert anchor.verify(2, chain[1].hash)
        assert not anchor.verify(2, other[1].hash)  # wrong hash
        assert not anchor.verify(2, chain[0].hash)  # a hash from another seq
        assert not anchor.verify(4, chain[0].hash)  # unknown seq
        assert not anchor.verify(0, chain[0].prev)

    def test_gap_is_refused_and_nothing_written(self, anchor: Anchor) -> None:
        chain = make_chain(6)
        with pytest.raises(AnchorGap):
            anchor.submit(chain[1:3])  # from empty: must start at seq 1
        assert anchor.confirmed_upto() == 0
        self.submit_and_confirm(anchor, chain[:3])
        with pytest.raises(AnchorGap) as info:
            anchor.submit(chain[4:])  # seq 5.. after 3
        assert isinstance(info.value, AnchorError)
        assert not isinstance(info.value, (AnchorConflict, AnchorUnavailable))
        assert anchor.confirmed_upto() == 3
        assert not anchor.verify(5, chain[4].hash)

    def test_malformed_batch_is_refused(self, anchor: Anchor) -> None:
        chain = make_chain(4)
        with pytest.raises(AnchorError):
            anchor.submit([chain[0], chain[2]])  # not consecutive
        with pytest.raises(AnchorError):
            anchor.submit([chain[0], make_chain(2, fork="x")[1]])  # not linked
        assert anchor.confirmed_upto() == 0

    def test_resubmit_is_idempotent(self, anchor: Anchor) -> None:
        chain = make_chain(8)
        self.submit_and_confirm(anchor, chain[:5])
        anchor.submit(chain[:5])  # all known
        anchor.submit(chain[2:4])  # a known middle part
        self.submit_and_confirm(anchor, chain[3:])  # overlap plus new records
        assert anchor.confirmed_upto() == 8
        assert all(anchor.verify(r.seq, r.hash) for r in chain)

    def test_conflicting_resubmit_raises_and_changes_nothing(self, anchor: Anchor) -> None:
        chain = make_chain(5)
        fork = make_chain(7, fork="fork")
        self.submit_and_confirm(anchor, chain)
        with pytest.raises(AnchorConflict):
            anchor.submit(fork[2:4])  # different hashes at anchored seqs 3..4
        with pytest.raises(AnchorConflict):
            anchor.submit(fork[3:])  # conflicting at 4..5 plus new 6..7: the batch is refused whole
        assert anchor.confirmed_upto() == 5
        assert all(anchor.verify(r.seq, r.hash) for r in chain)
        assert not anchor.verify(6, fork[5].hash)

    def test_fork_below_new_records_is_refused(self, anchor: Anchor) -> None:
        """New records must link to the hash anchored just below them."""
        chain = make_chain(3)
        self.submit_and_confirm(anchor, chain)
        forked_tail = extend(make_chain(3, fork="fork"), 2)  # seqs 4..5, prev = the fork's seq 3
        with pytest.raises(AnchorConflict):
            anchor.submit(forked_tail)
        assert anchor.confirmed_upto() == 3

    def test_batch_is_atomic_for_readers(self, anchor: Anchor) -> None:
        chain = make_chain(self.big_n * 5)
        seen: set[int] = set()
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                seen.add(anchor.confirmed_upto())

        t = threading.Thread(target=watch)
        t.start()
        try:
            self.submit_and_confirm(anchor, chain)
        finally:
            stop.set()
            t.join()
        seen.add(anchor.confirmed_upto())
        assert seen <= {0, len(chain)}

    def test_persists_across_reopen(self, anchor: Anchor, tmp_path: Path) -> None:
        chain = make_chain(12)
        self.submit_and_confirm(anchor, chain)
        reopened = self.reopen_anchor(anchor, tmp_path)
        if reopened is None:
            pytest.skip("not a persistent anchor")
        try:
            assert reopened.confirmed_upto() == 12
            assert all(reopened.verify(r.seq, r.hash) for r in chain)
            self.submit_and_confirm(reopened, extend(chain, 3))
            assert reopened.confirmed_upto() == 15
        finally:
            self.close_anchor(reopened)

    def test_concurrent_submitters_leave_no_gap_or_duplicate(self, anchor: Anchor) -> None:
        n = self.big_n
        chain = make_chain(n)
        errors: list[BaseException] = []
        deadline = time.monotonic() + 60

        def submitter(seed: int) -> None:
            rnd = random.Random(seed)
            try:
                while time.monotonic() < deadline:
                    c = anchor.confirmed_upto()
                    if c >= n:
                        return
                    anchor.submit(chain[c : c + rnd.randint(1, 25)])
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=submitter, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        self.wait_until_confirmed(anchor, n)
        assert anchor.confirmed_upto() == n
        assert all(anchor.verify(r.seq, r.hash) for r in chain)

    def test_ready_when_healthy(self, anchor: Anchor) -> None:
        readiness = anchor.ready()
        assert readiness.status == "ready" and readiness.ok
        assert readiness.detail


class TestMemoryAnchorContract(AnchorContract):
    def make_anchor(self, tmp_path: Path) -> Anchor:
        return MemoryAnchor()


class TestSQLiteAnchorContract(AnchorContract):
    def make_anchor(self, tmp_path: Path) -> Anchor:
        return SQLiteAnchor(tmp_path / "anchor.sqlite")

    def reopen_anchor(self, anchor: Anchor, tmp_path: Path) -> Anchor | None:
        self.close_anchor(anchor)
        return SQLiteAnchor(tmp_path / "anchor.sqlite")
