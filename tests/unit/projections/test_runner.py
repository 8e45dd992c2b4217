"""The projection runner: seq order, no skipped gaps, exactly-once, isolation, waiting."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from ledger.aggregates import WalletBinding
from projections.base import Applied, BaseProjection, projection_positions
from projections.db import open_engine
from projections.errors import ProjectionFailed, UnknownProjection
from projections.runner import ProjectionRunner
from projections.wallets import WalletsProjection, get_wallet, wallets

from .helpers import FakeSource, make_record, table_rows


@pytest.fixture
def engine(tmp_path: Path):
    eng = open_engine(tmp_path / "projections.sqlite")
    yield eng
    eng.dispose()


def bound_seqs(engine: sa.Engine) -> list[int]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(sa.select(wallets.c.bound_seq).order_by(wallets.c.bound_seq))]


# --- a projection that logs every application (no unique key: a double apply would show) -----

seq_log_metadata = sa.MetaData()
seq_log = sa.Table("seq_log", seq_log_metadata, sa.Column("seq", sa.Integer, nullable=False), sa.Column("type", sa.String))


class SeqLog(BaseProjection):
    name = "seq_log"
    metadata = seq_log_metadata
    event_types = None

    def apply_batch(self, conn, items: Sequence[Applied]) -> None:
        conn.execute(seq_log.insert(), [{"seq": i.seq, "type": i.record.type} for i in items])


def logged(engine: sa.Engine) -> list[int]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(sa.select(seq_log.c.seq).order_by(seq_log.c.seq))]


# --- gaps ------------------------------------------------------------------------------------


def test_a_later_seq_visible_before_an_earlier_one_is_waited_for(engine):
    # seq 3 was taken by a transaction that commits after the one that took seq 4.
    source = FakeSource(make_record(1), make_record(2), make_record(4))
    runner = ProjectionRunner(source, engine, [WalletsProjection()])

    assert runner.catch_up() == 2
    assert runner.position("wallets") == 2
    assert bound_seqs(engine) == [1, 2]
    assert runner.waiting_for_seq == 3

    # Polling again changes nothing: 4 is never applied before 3.
    for _ in range(3):
        assert runner.catch_up() == 0
    assert runner.position("wallets") == 2
    assert bound_seqs(engine) == [1, 2]
    assert runner.lag() == 2

    source.show(make_record(3))  # the delayed commit lands
    assert runner.catch_up() == 2
    assert runner.position("wallets") == 4
    assert bound_seqs(engine) == [1, 2, 3, 4]
    assert runner.waiting_for_seq is None
    assert runner.lag() == 0


def test_gap_in_the_middle_of_a_batch_applies_the_prefix_only(engine):
    source = FakeSource(*(make_record(s) for s in (1, 2, 3, 5, 6, 7)))
    runner = ProjectionRunner(source, engine, [SeqLog()])
    assert runner.catch_up() == 3
    assert logged(engine) == [1, 2, 3]
    source.show(make_record(4))
    assert runner.catch_up() == 4
    assert logged(engine) == [1, 2, 3, 4, 5, 6, 7]


def test_background_runner_waits_for_the_gap_then_applies_in_order(engine):
    source = FakeSource(make_record(1), make_record(2), make_record(4))
    runner = ProjectionRunner(source, engine, [SeqLog()], poll_interval=0.01, gap_poll_interval=0.01)
    runner.start()
    try:
        assert runner.wait_until(2, timeout=5)
        assert not runner.wait_until(4, timeout=0.3)  # seq 3 is not visible: 4 must wait
        assert logged(engine) == [1, 2]
        source.show(make_record(3))
        assert runner.wait_until(4, timeout=5)
        assert logged(engine) == [1, 2, 3, 4]
    finally:
        runner.stop()
    assert not runner.running


def test_wait_until_without_background_catches_up_itself_and_times_out_on_a_gap(engine):
    source = FakeSource(make_record(1), make_record(3))
    runner = ProjectionRunner(source, engine, [SeqLog()])
    started = time.monotonic()
    assert runner.wait_until(3, timeout=0.2) is False
    assert time.monotonic() - started >= 0.2
    assert runner.position("seq_log") == 1
    source.show(make_record(2))
    assert runner.wait_until(3, timeout=2) is True


# --- exactly once ----------------------------------------------------------------------------


class CrashingWallets(WalletsProjection):
    """Writes half of the batch, then fails: the whole batch must roll back."""

    def apply_batch(self, conn, items):
        super().apply_batch(conn, items[: len(items) // 2])
        raise RuntimeError("simulated crash mid-batch")


def test_a_crash_mid_batch_commits_neither_rows_nor_position(engine):
    source = FakeSource(*(make_record(s) for s in range(1, 101)))
    runner = ProjectionRunner(source, engine, [CrashingWallets()])
    with pytest.raises(ProjectionFailed) as info:
        runner.catch_up()
    assert info.value.name == "wallets"
    assert table_rows(engine, wallets) == []
    assert runner.position("wallets") == 0

    # Restart with a healthy projection: everything applied, exactly once.
    runner = ProjectionRunner(source, engine, [WalletsProjection()])
    assert runner.catch_up() == 100
    assert bound_seqs(engine) == list(range(1, 101))
    assert runner.position("wallets") == 100
    assert runner.catch_up() == 0


class FailAtSeq(SeqLog):
    def __init__(self, fail_at: int) -> None:
        self.fail_at = fail_at

    def apply_batch(self, conn, items):
        for item in items:
            conn.execute(seq_log.insert().values(seq=item.seq, type=item.record.type))
            if item.seq == self.fail_at:
                raise RuntimeError(f"boom at {item.seq}")


def test_earlier_batches_stay_committed_and_the_failed_batch_is_reapplied_once(engine):
    source = FakeSource(*(make_record(s) for s in range(1, 51)))
    runner = ProjectionRunner(source, engine, [FailAtSeq(25)], batch_size=10)
    with pytest.raises(ProjectionFailed) as info:
        runner.catch_up()
    assert info.value.applied == 20
    assert runner.position("seq_log") == 20
    assert logged(engine) == list(range(1, 21))

    runner = ProjectionRunner(source, engine, [SeqLog()], batch_size=10)
    assert runner.catch_up() == 30
    assert logged(engine) == list(range(1, 51))  # each seq exactly once


def test_a_failure_writing_the_position_rolls_back_the_rows(engine):
    source = FakeSource(*(make_record(s) for s in range(1, 11)))
    runner = ProjectionRunner(source, engine, [SeqLog()])
    armed = {"on": True}

    def fail_position_update(conn, cursor, statement, parameters, context, executemany):
        if armed["on"] and statement.startswith("UPDATE projection_positions"):
            raise RuntimeError("simulated crash between rows and position")

    event.listen(engine, "before_cursor_execute", fail_position_update)
    try:
        with pytest.raises(ProjectionFailed):
            runner.catch_up()
        assert logged(engine) == []
        assert runner.position("seq_log") == 0
        armed["on"] = False
        assert runner.catch_up() == 10
        assert logged(engine) == list(range(1, 11))
    finally:
        event.remove(engine, "before_cursor_execute", fail_position_update)


def test_a_killed_process_leaves_nothing_half_applied(tmp_path: Path, ledger):
    """A real crash: the process dies (os._exit) after writing rows, before committing."""
    for i in range(30):
        addr = f"0x{i:040x}"
        ledger.execute(
            WalletBinding,
            WalletBinding.stream_for(f"omni-{i}", addr),
            lambda a, i=i, addr=addr: a.bind(omni_account=f"omni-{i}", address=addr, role="master", parent_address=None),
        )
    proj_db = tmp_path / "crash.sqlite"
    script = textwrap.dedent(
        f"""
        import os
        from projections.db import open_engine
        from projections.runner import ProjectionRunner
        from projections.source import open_ledger_source
        from projections.wallets import WalletsProjection

        class DiesMidBatch(WalletsProjection):
            def apply_batch(self, conn, items):
                super().apply_batch(conn, items)   # rows written inside the open transaction
                os._exit(9)                        # ... and the process dies before COMMIT

        source = open_ledger_source({str(ledger.config.db_path)!r})
        ProjectionRunner(source, open_engine({str(proj_db)!r}), [DiesMidBatch()]).catch_up()
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr

    eng = open_engine(proj_db)
    try:
        runner = ProjectionRunner(ledger, eng, [WalletsProjection()])
        assert runner.position("wallets") == 0
        assert table_rows(eng, wallets) == []
        assert runner.catch_up() == 30
        assert bound_seqs(eng) == list(range(1, 31))
    finally:
        eng.dispose()


def test_two_runners_on_one_file_never_apply_a_record_twice(tmp_path: Path):
    source = FakeSource(*(make_record(s) for s in range(1, 2001)))
    path = tmp_path / "shared.sqlite"
    engines = [open_engine(path) for _ in range(3)]
    ProjectionRunner(source, engines[0], [SeqLog()])  # setup once
    runners = [ProjectionRunner(source, e, [SeqLog()], batch_size=37) for e in engines]
    errors: list[BaseException] = []

    def run(r: ProjectionRunner) -> None:
        try:
            r.catch_up()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(r,)) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert logged(engines[0]) == list(range(1, 2001))
    for e in engines:
        e.dispose()


# --- skipping and failing --------------------------------------------------------------------


def test_unknown_event_types_are_skipped_and_the_position_advances(engine):
    source = FakeSource(
        make_record(1),
        make_record(2, "EventFromANewerBroker", {"x": 1}),
        make_record(3, "StillUnknown", {}),
        make_record(4),
    )
    runner = ProjectionRunner(source, engine, [WalletsProjection(), SeqLog()])
    assert runner.catch_up() == 4
    assert runner.positions() == {"wallets": 4, "seq_log": 4}
    assert bound_seqs(engine) == [1, 4]
    assert logged(engine) == [1, 4]  # unknown types never reach a projection


def test_a_record_that_does_not_decode_stops_only_its_consumers(engine):
    bad = make_record(3, data={"omni_account": "o", "address": "0xabc", "role": "admin", "parent_address": None})
    source = FakeSource(make_record(1), make_record(2), bad, make_record(4))

    class OnlyOtherTypes(SeqLog):
        name = "others"
        event_types = frozenset({"NothingHere"})

    runner = ProjectionRunner(source, engine, [WalletsProjection(), OnlyOtherTypes()])
    with pytest.raises(ProjectionFailed) as info:
        runner.catch_up()
    assert "seq 3" in str(info.value)
    assert runner.position("wallets") == 2  # stops before the bad record, never skips it
    assert bound_seqs(engine) == [1, 2]
    assert runner.position("others") == 4  # a projection not consuming the type is unaffected


def test_a_failing_projection_does_not_hold_back_the_others(engine):
    source = FakeSource(*(make_record(s) for s in range(1, 21)))
    runner = ProjectionRunner(source, engine, [CrashingWallets(), SeqLog()], batch_size=5)
    with pytest.raises(ProjectionFailed):
        runner.catch_up()
    assert runner.positions() == {"wallets": 0, "seq_log": 20}


# --- schema, rebuild, status -----------------------------------------------------------------


def test_version_change_resets_and_replays(engine):
    source = FakeSource(*(make_record(s) for s in range(1, 11)))
    ProjectionRunner(source, engine, [SeqLog()]).catch_up()

    class SeqLogV2(SeqLog):
        version = 2

    runner = ProjectionRunner(source, engine, [SeqLogV2()])
    assert runner.position("seq_log") == 0
    assert logged(engine) == []
    assert runner.catch_up() == 10
    assert logged(engine) == list(range(1, 11))
    with engine.connect() as conn:
        assert conn.execute(sa.select(projection_positions.c.version)).scalar_one() == 2


def test_rebuild_replays_from_seq_one_with_progress(engine):
    source = FakeSource(*(make_record(s) for s in range(1, 101)))
    runner = ProjectionRunner(source, engine, [SeqLog(), WalletsProjection()], batch_size=30)
    runner.catch_up()
    before = table_rows(engine, wallets)
    seen: list[tuple[str, int, int | None]] = []
    results = runner.rebuild("seq_log", progress=lambda *a: seen.append(a))
    assert [(r.name, r.seq, r.events) for r in results] == [("seq_log", 100, 100)]
    assert logged(engine) == list(range(1, 101))  # once each, not twice
    assert [s for _, s, _ in seen] == [30, 60, 90, 100, 100]
    assert all(name == "seq_log" and total == 100 for name, _, total in seen)
    assert table_rows(engine, wallets) == before  # the other projection is untouched
    with pytest.raises(UnknownProjection):
        runner.rebuild("nope")


def test_position_lag_and_status(engine):
    source = FakeSource(*(make_record(s) for s in range(1, 6)))
    runner = ProjectionRunner(source, engine, [WalletsProjection()])
    assert runner.lag() == 5
    assert runner.lag("wallets") == 5
    runner.catch_up()
    assert runner.lag() == 0
    source.show(make_record(6))
    assert [(s.name, s.position, s.lag) for s in runner.status()] == [("wallets", 5, 1)]
    with pytest.raises(UnknownProjection):
        runner.position("grants-from-the-future")


def test_duplicate_names_are_refused(engine):
    with pytest.raises(ValueError):
        ProjectionRunner(FakeSource(), engine, [WalletsProjection(), WalletsProjection()])


# --- with the real ledger --------------------------------------------------------------------


def bind(ledger, omni: str, address: str, role: str = "master", parent: str | None = None):
    _, records = ledger.execute(
        WalletBinding,
        WalletBinding.stream_for(omni, address),
        lambda a: a.bind(omni_account=omni, address=address, role=role, parent_address=parent),
    )
    return records


def test_background_runner_is_woken_by_ledger_commits(ledger, engine):
    runner = ProjectionRunner(ledger, engine, [WalletsProjection()], poll_interval=60)
    runner.start()
    try:
        time.sleep(0.1)  # the loop is now waiting (for up to a minute) for a wake-up
        records = bind(ledger, "omni-a", "0xAAAA")
        deadline = time.monotonic() + 5
        while runner.position("wallets") < records[-1].seq and time.monotonic() < deadline:
            time.sleep(0.01)
        assert runner.position("wallets") == records[-1].seq
    finally:
        runner.stop()


def test_read_your_own_write_with_wait_until(ledger, engine):
    runner = ProjectionRunner(ledger, engine, [WalletsProjection()], poll_interval=5)
    with runner:
        runner.start()
        records = bind(ledger, "omni-b", "0xBbBb")
        assert runner.wait_until(records[-1].seq, timeout=5)
        w = get_wallet(engine, "omni-b", "0xbbbb")
        assert w is not None and w.role == "master" and w.bound_seq == records[-1].seq


@pytest.mark.asyncio
async def test_wait_until_async(ledger, engine):
    runner = ProjectionRunner(ledger, engine, [WalletsProjection()])
    records = bind(ledger, "omni-c", "0xcccc")
    assert await runner.wait_until_async(records[-1].seq, timeout=5)
    assert get_wallet(engine, "omni-c", "0xCCCC") is not None
