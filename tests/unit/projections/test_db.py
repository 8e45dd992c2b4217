"""The projections database: WAL, explicit transactions, default path."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event

from projections.db import default_projections_path, open_engine, writer


def test_wal_busy_timeout_and_explicit_begins(tmp_path: Path):
    engine = open_engine(tmp_path / "sub" / "p.sqlite")
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10000
        with writer(engine).begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        assert "BEGIN" in statements and "BEGIN IMMEDIATE" in statements
    finally:
        engine.dispose()


def test_a_rolled_back_write_leaves_nothing(tmp_path: Path):
    engine = open_engine(tmp_path / "p.sqlite")
    with writer(engine).begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    try:
        with writer(engine).begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
            raise RuntimeError("abort")
    except RuntimeError:
        pass
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM t")).scalar() == 0
    engine.dispose()


def test_default_path_is_beside_the_ledger(tmp_path: Path):
    assert default_projections_path(tmp_path / "data" / "ledger.sqlite") == (tmp_path / "data" / "projections.sqlite").resolve()
