"""ledger/integrity.py and the gate's content check, on a real ledger file and a real SQLite anchor."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest

from anchors.errors import AnchorUnavailable
from anchors.sqlite import SQLiteAnchor
from ledger.anchoring import ConfirmationWaiter
from ledger.app import Ledger
from ledger.config import LedgerConfig
from ledger.events import AuthChallengeIssued
from ledger.gate import ReleaseGate
from ledger.integrity import IntegrityMonitor, open_events
from ledger.services.refusals import Refusal


def _events(n: int, tag: str = "x") -> list:
    out = []
    for j in range(n):
        rid = f"{tag}-{j}"
        out.append((uuid.uuid5(uuid.NAMESPACE_URL, rid), 0, [AuthChallengeIssued(
            method="wallet_sig", request_id=rid, address="0x" + "3" * 40, chain_id=1, nonce="n", domain="d", uri="u",
            issued_at="2026-11-29T05:00:00Z", expires_at=1, message="m")]))
    return out


@pytest.fixture
def parts(tmp_path: Path):
    ledger = Ledger(LedgerConfig(tmp_path / "ledger.sqlite"))
    anchor = SQLiteAnchor(tmp_path / "anchor.sqlite")
    ledger.append_many(_events(20))
    anchor.submit(ledger.read(0, 100))
    yield ledger, anchor, tmp_path
    anchor.close()
    ledger.close()


def _tamper_count(ledger: Ledger) -> int:
    return sum(type(e).__name__ == "TamperDetected" for e in open_events(ledger))


def test_forged_anchor_ahead_of_the_ledger_is_no_confirmation(parts) -> None:
    ledger, anchor, tmp_path = parts
    conn = sqlite3.connect(tmp_path / "anchor.sqlite")
    with conn:
        conn.executemany("INSERT INTO anchored (seq, hash) VALUES (?, ?)", [(s, "f" * 64) for s in range(21, 40)])
    conn.close()
    [record] = ledger.append_many(_events(1, "y"))
    gate = ReleaseGate([anchor], ["sqlite"], 100, waiter=ConfirmationWaiter())
    assert gate.wait(record.seq).released  # a position alone would have released it
    result = gate.wait(record.seq, record.hash)
    assert not result.released and result.mismatched == ["sqlite"] and result.missing == ["sqlite"]


def test_one_tamper_detected_per_alarm_and_refusal_until_acknowledged(parts) -> None:
    ledger, anchor, tmp_path = parts
    monitor = IntegrityMonitor(ledger, [anchor])
    assert monitor.startup_check() == [] and monitor.full_check() == [] and monitor.incremental_check() == []
    monitor.check()  # no alarm: no refusal
    conn = sqlite3.connect(tmp_path / "anchor.sqlite")
    with conn:
        conn.execute("UPDATE anchored SET hash = ? WHERE seq = 5", ("e" * 64,))
    conn.close()
    [finding] = monitor.incremental_check()
    assert (finding.source, finding.seq, finding.found_hash) == ("anchor/sqlite", 5, "e" * 64)
    assert monitor.startup_check() and monitor.incremental_check()  # still disagreeing...
    assert _tamper_count(ledger) == 1  # ...but recorded once
    with pytest.raises(Refusal) as refused:
        monitor.check()
    assert refused.value.reason == "integrity_alarm"
    assert monitor.readiness().status == "unready"
    other = IntegrityMonitor(ledger, [anchor])  # another process sees the same alarm
    assert other.alarm is not None and other.alarm.tamper_seq == monitor.alarm.tamper_seq
    ack = other.acknowledge(reason="anchor restored", operator="cli:test@host", lost_range=None)
    assert ack.lost_range is None and ack.tamper_seq == monitor.alarm.tamper_seq
    assert monitor.readiness().status == "ready"
    monitor.check()


def test_a_ledger_behind_its_anchor_names_the_lost_range(parts) -> None:
    ledger, anchor, tmp_path = parts
    conn = sqlite3.connect(tmp_path / "anchor.sqlite")
    with conn:
        conn.executemany("INSERT INTO anchored (seq, hash) VALUES (?, ?)", [(s, "a" * 64) for s in range(21, 31)])
    conn.close()
    monitor = IntegrityMonitor(ledger, [anchor])
    [finding] = monitor.startup_check()
    assert finding.lost_range == (21, 30) and finding.seq == 21 and "21..30" in finding.detail
    assert monitor.lost_range() == (21, 30)


def test_a_new_sqlite_anchor_file_starts_at_its_start_seq(parts) -> None:
    ledger, _, tmp_path = parts
    fresh = SQLiteAnchor.create_at(tmp_path / "anchor2.sqlite", 21)
    try:
        assert fresh.start_seq == 21 and fresh.confirmed_upto() == 20
        records = ledger.append_many(_events(3, "z"))
        fresh.submit(records)
        assert fresh.confirmed_upto() == 23 and fresh.verify(21, records[0].hash)
        assert not fresh.verify(5, ledger.read(4, 1)[0].hash)  # never witnessed
        monitor = IntegrityMonitor(ledger, [fresh])
        assert monitor.startup_check() == [] and monitor.incremental_check() == []
    finally:
        fresh.close()
    with pytest.raises(AnchorUnavailable):
        SQLiteAnchor.create_at(tmp_path / "anchor2.sqlite", 1)  # never over an existing file
