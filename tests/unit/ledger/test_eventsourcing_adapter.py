"""ledger/store.py uses eventsourcing through its public surface; the one private method it needs is
named by `EventsourcingAdapter`. These tests fail loudly when the pinned library changes it."""

from __future__ import annotations

import importlib.metadata
import sqlite3
import uuid
from pathlib import Path

import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import SQLiteApplicationRecorder

from ledger.errors import LedgerError, LedgerUnavailable
from ledger.store import (
    EventsourcingAdapter,
    PendingAppend,
    StreamAppend,
    open_recorder,
)
from tests.conftest import ROOT


def _event(stream: uuid.UUID, version: int) -> StoredEvent:
    return StoredEvent(originator_id=stream, originator_version=version, topic="Probe", state=b'{"at":"x","data":{}}')


def _count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM stored_events").fetchone()[0])
    finally:
        conn.close()


def test_the_pinned_library_is_the_one_the_adapter_was_written_for() -> None:
    """A new eventsourcing version must be reviewed against the adapter (then update the pin here)."""
    pinned = next(
        line.split("==", 1)[1].strip()
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line.lower().startswith("eventsourcing==")
    )
    assert importlib.metadata.version("eventsourcing") == pinned == "9.5.6"


def test_the_private_insert_still_has_the_shape_the_adapter_uses() -> None:
    EventsourcingAdapter.check()


def test_check_fails_loudly_when_the_private_insert_is_gone_or_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    name = EventsourcingAdapter.PRIVATE_INSERT
    for cls in SQLiteApplicationRecorder.__mro__:  # gone from the class and from its bases
        if name in vars(cls):
            monkeypatch.delattr(cls, name)
    with pytest.raises(RuntimeError, match="is gone"):
        EventsourcingAdapter.check()
    monkeypatch.setattr(SQLiteApplicationRecorder, EventsourcingAdapter.PRIVATE_INSERT, lambda self, events: None, raising=False)
    with pytest.raises(RuntimeError, match="changed"):
        EventsourcingAdapter.check()


def test_the_private_insert_joins_the_callers_transaction(tmp_path: Path) -> None:
    """What the group commit relies on: rolled back with the caller's transaction, committed with
    it, and a duplicate key surfaces as the driver's IntegrityError."""
    path = tmp_path / "ledger.sqlite"
    recorder = open_recorder(str(path))
    try:
        stream = uuid.uuid4()
        with recorder.datastore.get_connection(commit=True) as conn:
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            EventsourcingAdapter.insert_events_in(recorder, cur, [_event(stream, 1)])
            conn.rollback()
        assert _count(path) == 0
        with recorder.datastore.get_connection(commit=True) as conn:
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            EventsourcingAdapter.insert_events_in(recorder, cur, [_event(stream, 1)])
            with pytest.raises(sqlite3.IntegrityError):
                EventsourcingAdapter.insert_events_in(recorder, cur, [_event(stream, 1)])
            conn.commit()
        assert _count(path) == 1
        assert [e.originator_version for e in recorder.select_events(stream)] == [1]
    finally:
        recorder.datastore.close()


def test_an_event_written_around_the_chain_is_refused(tmp_path: Path) -> None:
    """The library's public insert would store an event with no ledger_records row: invisible to
    every auditor. The recorder refuses it."""
    path = tmp_path / "ledger.sqlite"
    recorder = open_recorder(str(path))
    try:
        with pytest.raises(LedgerError, match="append_batch"):
            recorder.insert_events([_event(uuid.uuid4(), 1)])
        assert _count(path) == 0
    finally:
        recorder.datastore.close()


def test_library_errors_are_caught_by_class(tmp_path: Path) -> None:
    """The pool closed under the recorder raises the library's own error class: the ledger reports
    it as unavailable, nothing written."""
    path = tmp_path / "ledger.sqlite"
    recorder = open_recorder(str(path))
    recorder.datastore.close()
    append = PendingAppend([StreamAppend(uuid.uuid4(), 0, [("Probe", {}, "2026-01-01T00:00:00.000000Z")])])
    with pytest.raises(LedgerUnavailable, match="ledger write failed"):
        recorder.append_batch([append])
    assert _count(path) == 0
