"""The `wallets` read model: rows, queries, and rebuilt == incrementally built."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import sqlalchemy as sa

from ledger.aggregates import WalletBinding, WalletRoleConflict, stream_id
from ledger.events import WalletBound
from projections.db import open_engine
from projections.runner import ProjectionRunner
from projections.wallets import (
    Wallet,
    WalletsProjection,
    get_wallet,
    wallets,
    wallets_for_address,
    wallets_in_account,
)

from .helpers import FakeSource, make_record, table_rows


@pytest.fixture
def engine(tmp_path: Path):
    eng = open_engine(tmp_path / "projections.sqlite")
    yield eng
    eng.dispose()


def bind(ledger, omni: str, address: str, role: str, parent: str | None = None) -> int:
    _, records = ledger.execute(
        WalletBinding,
        WalletBinding.stream_for(omni, address),
        lambda a: a.bind(omni_account=omni, address=address, role=role, parent_address=parent),
    )
    return len(records)


def populate(ledger, rng: random.Random, accounts: int, daemons_per_account: int) -> list[tuple]:
    """A realistic mix: each master signs in (its own OmniAccount), then grants bind daemons
    under it; some daemons serve several accounts; some binds repeat (idempotent: no event)."""
    ops = []
    masters = [f"0x{rng.getrandbits(160):040X}" for _ in range(accounts)]  # mixed case on purpose
    shared_daemons = [f"0x{rng.getrandbits(160):040x}" for _ in range(5)]
    for i, m in enumerate(masters):
        omni = f"omni-{i:04d}"
        ops.append((omni, m, "master", None))
        for _ in range(daemons_per_account):
            ops.append((omni, f"0x{rng.getrandbits(160):040x}", "daemon", m))
        ops.append((omni, rng.choice(shared_daemons), "daemon", m))
    ops += rng.sample(ops, 20)  # re-binds: the aggregate makes them no-ops
    return ops


def test_rebuilt_projection_equals_the_incrementally_built_one(ledger, tmp_path: Path):
    rng = random.Random(1234)
    ops = populate(ledger, rng, accounts=80, daemons_per_account=3)
    incremental_engine = open_engine(tmp_path / "incremental.sqlite")
    incremental = ProjectionRunner(ledger, incremental_engine, [WalletsProjection()], batch_size=7)

    appended = 0
    for n, (omni, address, role, parent) in enumerate(ops):
        appended += bind(ledger, omni, address, role, parent)
        if n % 13 == 0:
            incremental.catch_up()  # catch up after some of the appends, at uneven points
    incremental.catch_up()
    head = ledger.head().seq
    assert head == appended >= 300
    assert incremental.position("wallets") == head

    incremental_rows = table_rows(incremental_engine, wallets)
    assert len(incremental_rows) == head  # one row per WalletBound
    roles = {r[2] for r in incremental_rows}
    assert roles == {"master", "daemon"}

    # 1. a fresh database, built from scratch by rebuild
    fresh_engine = open_engine(tmp_path / "fresh.sqlite")
    fresh = ProjectionRunner(ledger, fresh_engine, [WalletsProjection()])
    fresh.rebuild("wallets")
    assert table_rows(fresh_engine, wallets) == incremental_rows

    # 2. rebuilt in place, over the incrementally built tables
    incremental.rebuild()
    assert table_rows(incremental_engine, wallets) == incremental_rows
    assert incremental.position("wallets") == head

    for e in (incremental_engine, fresh_engine):
        e.dispose()


def test_rows_and_queries(ledger, engine):
    master, daemon, other_master = "0xMaStEr", "0xDaEmOn", "0xOtHeR"
    bind(ledger, "omni-1", master, "master")
    bind(ledger, "omni-1", daemon, "daemon", master)
    bind(ledger, "omni-2", other_master, "master")
    bind(ledger, "omni-2", daemon, "daemon", other_master)
    with pytest.raises(WalletRoleConflict):
        bind(ledger, "omni-1", daemon, "master")  # refused: no event
    runner = ProjectionRunner(ledger, engine, [WalletsProjection()])
    runner.catch_up()

    w = get_wallet(engine, "omni-1", "0xDAEMON")
    assert isinstance(w, Wallet)
    assert (w.omni_account, w.address, w.role, w.parent_address, w.bound_seq) == (
        "omni-1",
        "0xdaemon",
        "daemon",
        "0xmaster",
        2,
    )
    first = ledger.read(0, 1)[0]
    assert get_wallet(engine, "omni-1", master).created_at == first.at
    assert get_wallet(engine, "omni-1", "0xnobody") is None
    assert get_wallet(engine, "omni-3", master) is None

    assert [(x.omni_account, x.parent_address) for x in wallets_for_address(engine, daemon)] == [
        ("omni-1", "0xmaster"),
        ("omni-2", "0xother"),
    ]
    assert [x.address for x in wallets_in_account(engine, "omni-1")] == ["0xmaster", "0xdaemon"]
    assert wallets_in_account(engine, "omni-9") == []

    # The query functions also take a Connection (e.g. inside the caller's transaction).
    with engine.connect() as conn:
        assert get_wallet(conn, "omni-2", other_master).role == "master"


def test_the_first_binding_of_a_pair_wins(ledger, engine):
    # Two WalletBound for one (omni, address) on different streams (not via the aggregate).
    ledger.append(stream_id("test", "a"), 0, [WalletBound(omni_account="o", address="0xab", role="master")])
    ledger.append(stream_id("test", "b"), 0, [WalletBound(omni_account="o", address="0xAB", role="daemon", parent_address="0x1")])
    runner = ProjectionRunner(ledger, engine, [WalletsProjection()])
    assert runner.catch_up() == 2
    rows = table_rows(engine, wallets)
    assert len(rows) == 1 and rows[0][2] == "master" and rows[0][5] == 1


def test_schema_role_check_and_address_index(engine):
    ProjectionRunner(FakeSource(), engine, [WalletsProjection()])
    with engine.connect() as conn:
        indexes = {ix["name"]: ix["column_names"] for ix in sa.inspect(conn).get_indexes("wallets")}
        assert indexes["ix_wallets_address"] == ["address"]
        pk = sa.inspect(conn).get_pk_constraint("wallets")["constrained_columns"]
        assert pk == ["omni_account", "address"]
    with pytest.raises(sa.exc.IntegrityError):
        with engine.begin() as conn:
            conn.execute(
                wallets.insert().values(
                    omni_account="o", address="0x1", role="admin", parent_address=None, created_at="t", bound_seq=1
                )
            )


def test_non_wallet_events_are_ignored(engine):
    source = FakeSource(make_record(1), make_record(2, "SomethingElse", {}), make_record(3))
    runner = ProjectionRunner(source, engine, [WalletsProjection()])
    assert runner.catch_up() == 3
    assert [r[5] for r in table_rows(engine, wallets)] == [1, 3]


def test_the_ledger_is_a_record_source(ledger):
    from projections.source import RecordSource

    assert isinstance(ledger, RecordSource)
    assert isinstance(FakeSource(), RecordSource)


@pytest.mark.slow
def test_rebuild_throughput(ledger, engine):
    """Rebuild reads 2,000-record batches and inserts with one executemany per batch (about
    40,000 events/s measured on the reference machine; the floor here is deliberately low)."""
    import time

    futures = []
    for i in range(20_000):
        omni = f"omni-{i // 4}"
        address = f"0x{i:040x}"
        futures.append(
            ledger.submit(
                WalletBinding.stream_for(omni, address),
                0,
                [WalletBound(omni_account=omni, address=address, role="master" if i % 4 == 0 else "daemon",
                             parent_address=None if i % 4 == 0 else f"0x{i - i % 4:040x}")],
            )
        )
    for f in futures:
        f.result()
    runner = ProjectionRunner(ledger, engine, [WalletsProjection()])
    started = time.perf_counter()
    [result] = runner.rebuild("wallets")
    rate = result.events / (time.perf_counter() - started)
    assert result.seq == 20_000
    assert rate > 5_000, f"rebuild ran at {rate:.0f} events/s"
