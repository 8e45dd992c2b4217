"""Appends: chain linking, optimistic concurrency, group-commit isolation, restart, refusals."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from pathlib import Path

import pytest

from ledger.aggregates import WalletBinding, WalletRoleConflict, stream_id
from ledger.app import Ledger
from ledger.chain import GENESIS, recompute_hash
from ledger.config import LedgerConfig
from ledger.errors import ChainCorrupted, ConcurrencyConflict, InvalidEventError
from ledger.events import Event, WalletBound

OMNI = "ab" * 32


class _Probe(Event, frozen=True, kw_only=True):
    """Test-only event."""

    n: int
    note: str = ""


def bound(i: int, role: str = "master") -> WalletBound:
    return WalletBound(omni_account=OMNI, address=f"0x{i:040x}", role=role)  # type: ignore[arg-type]


def assert_chain(records) -> None:
    prev = GENESIS
    for expected_seq, r in enumerate(records, start=1):
        assert r.seq == expected_seq
        assert r.prev == prev
        assert recompute_hash(r.envelope()) == r.hash
        prev = r.hash


def test_first_record_links_to_genesis_and_chain_links(ledger: Ledger) -> None:
    for i in range(5):
        ledger.append(uuid.uuid4(), 0, [bound(i)])
    records = ledger.read()
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[0].prev == GENESIS
    assert_chain(records)
    assert ledger.head().seq == 5 and ledger.head().hash == records[-1].hash


def test_multi_event_append_gets_consecutive_seqs_and_versions(ledger: Ledger) -> None:
    s = uuid.uuid4()
    recs = ledger.append(s, 0, [_Probe(n=1), _Probe(n=2), _Probe(n=3)])
    assert [(r.seq, r.version) for r in recs] == [(1, 1), (2, 2), (3, 3)]
    more = ledger.append(s, 3, [_Probe(n=4)])
    assert (more[0].seq, more[0].version) == (4, 4)


def test_stale_expected_version_is_a_concurrency_conflict(ledger: Ledger) -> None:
    s = uuid.uuid4()
    ledger.append(s, 0, [_Probe(n=1)])
    with pytest.raises(ConcurrencyConflict):
        ledger.append(s, 0, [_Probe(n=2)])
    with pytest.raises(ConcurrencyConflict):  # ahead of the stream: refused, no gap in versions
        ledger.append(s, 5, [_Probe(n=2)])
    assert ledger.head().seq == 1


def test_conflict_fails_alone_inside_a_group_commit_batch(ledger_path: Path) -> None:
    """Appends queued together share one transaction; the loser of a race fails, the rest commit."""
    led = Ledger(LedgerConfig(ledger_path, batch_max=64, batch_max_wait_ms=200))
    try:
        s = uuid.uuid4()
        futures = [led.submit(uuid.uuid4(), 0, [_Probe(n=i)]) for i in range(10)]
        futures.insert(5, led.submit(s, 0, [_Probe(n=100)]))
        futures.insert(6, led.submit(s, 0, [_Probe(n=101)]))  # same stream, same version: loses
        results = []
        for f in futures:
            try:
                results.append(f.result(timeout=10))
            except ConcurrencyConflict as exc:
                results.append(exc)
        conflicts = [r for r in results if isinstance(r, ConcurrencyConflict)]
        assert len(conflicts) == 1
        assert led.head().seq == 11
        assert_chain(led.read())
    finally:
        led.close()


def test_restart_resumes_the_chain_from_the_stored_head(ledger_path: Path) -> None:
    with Ledger(LedgerConfig(ledger_path)) as led:
        for i in range(3):
            led.append(uuid.uuid4(), 0, [bound(i)])
        head = led.head()
    with Ledger(LedgerConfig(ledger_path)) as led:
        assert led.head() == head
        rec = led.append(uuid.uuid4(), 0, [bound(9)])[0]
        assert rec.seq == 4 and rec.prev == head.hash
        assert_chain(led.read())


def test_edited_head_is_detected_at_open(ledger_path: Path) -> None:
    with Ledger(LedgerConfig(ledger_path)) as led:
        led.append(uuid.uuid4(), 0, [bound(1)])
    with sqlite3.connect(ledger_path) as conn:
        conn.execute("UPDATE ledger_head SET seq = 7")
    with pytest.raises(ChainCorrupted):
        Ledger(LedgerConfig(ledger_path))


@pytest.mark.parametrize("note", ["\x00control", "é unicode 😀", ""])
def test_unicode_and_control_characters_round_trip(ledger: Ledger, note: str) -> None:
    rec = ledger.append(uuid.uuid4(), 0, [_Probe(n=1, note=note)])[0]
    back = ledger.read()[0]
    assert back.data["note"] == note and back.hash == rec.hash


def test_out_of_range_integer_is_refused_before_anything_is_written(ledger: Ledger) -> None:
    with pytest.raises(InvalidEventError):
        ledger.append(uuid.uuid4(), 0, [_Probe(n=2**53)])
    assert ledger.head().seq == 0


def test_wallet_binding_is_idempotent_and_refuses_a_role_flip(ledger: Ledger) -> None:
    addr = "0x" + "11" * 20
    stream = WalletBinding.stream_for(OMNI, addr)

    def bind(role: str, parent: str | None = None):
        return lambda agg: agg.bind(omni_account=OMNI, address=addr, role=role, parent_address=parent)

    _, first = ledger.execute(WalletBinding, stream, bind("master"))
    _, second = ledger.execute(WalletBinding, stream, bind("master"))
    assert len(first) == 1 and second == []
    with pytest.raises(WalletRoleConflict):
        ledger.execute(WalletBinding, stream, bind("daemon", "0x" + "22" * 20))
    assert ledger.head().seq == 1


def test_racing_binds_of_one_wallet_write_one_event(ledger: Ledger) -> None:
    addr = "0x" + "33" * 20
    stream = WalletBinding.stream_for(OMNI, addr)
    barrier = threading.Barrier(10)
    written = []

    def worker() -> None:
        barrier.wait()
        _, recs = ledger.execute(
            WalletBinding, stream,
            lambda agg: agg.bind(omni_account=OMNI, address=addr, role="master", parent_address=None),
        )
        written.extend(recs)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(written) == 1
    assert ledger.head().seq == 1


def test_stream_ids_are_deterministic() -> None:
    assert stream_id("x", "k") == stream_id("x", "k") != stream_id("x", "j")


def test_closed_ledger_refuses_appends(ledger_path: Path) -> None:
    from ledger.errors import LedgerUnavailable

    led = Ledger(LedgerConfig(ledger_path))
    led.close()
    with pytest.raises(LedgerUnavailable):
        led.append(uuid.uuid4(), 0, [bound(1)])


def test_multi_stream_append_is_atomic(ledger: Ledger) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    ledger.append(b, 0, [_Probe(n=0)])
    recs = ledger.append_many([(a, 0, [_Probe(n=1)]), (uuid.uuid4(), 0, [_Probe(n=2), _Probe(n=3)])])
    assert [r.seq for r in recs] == [2, 3, 4]
    with pytest.raises(ConcurrencyConflict):  # second part conflicts: the first part is not written either
        ledger.append_many([(uuid.uuid4(), 0, [_Probe(n=4)]), (b, 0, [_Probe(n=5)])])
    assert ledger.head().seq == 4
    assert_chain(ledger.read())
    with pytest.raises(InvalidEventError):
        ledger.append_many([(a, 1, [_Probe(n=6)]), (a, 2, [_Probe(n=7)])])
