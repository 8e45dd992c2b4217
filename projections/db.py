"""The projections database: its own SQLite file (default `projections.sqlite` beside the ledger),
reached through SQLAlchemy 2 Core.

Connections run in WAL mode with a busy timeout, so readers (API handlers) never block the runner
and the runner never blocks them. Transactions are explicit: the pysqlite driver's own implicit
BEGIN is switched off (SQLAlchemy's documented recipe) and every SQLAlchemy transaction emits its
own BEGIN — a deferred `BEGIN` for readers, `BEGIN IMMEDIATE` for writers (`writer(engine)`), so
a writer that reads its position and then writes rows holds the write lock from the first read:
two runners (threads or processes) on one file cannot both apply the same record.

`synchronous=NORMAL`: in WAL mode a crash of the process never loses a committed transaction; a
power loss may lose the last few, but rows and position are lost together (they commit in one
transaction) and the runner re-applies from the stored position, and a projection can always be
rebuilt from the ledger.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

DEFAULT_FILENAME = "projections.sqlite"
_WRITE_OPTION = "agentkeys_projection_write"


def default_projections_path(ledger_db: str | Path) -> Path:
    """`projections.sqlite` in the ledger file's directory."""
    return Path(ledger_db).resolve().parent / DEFAULT_FILENAME


def open_engine(target: str | Path, *, busy_timeout_ms: int = 10_000, echo: bool = False) -> Engine:
    """An engine on the projections database. `target` is a file path or a SQLAlchemy URL
    (`sqlite:///...`); the parent directory of a path is created."""
    text = str(target)
    if "://" in text:
        url = text
    else:
        path = Path(text)
        path.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{path.resolve()}"
    engine = sa.create_engine(url, echo=echo)
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine, busy_timeout_ms)
    return engine


make_engine = open_engine  # the name the API composition root uses


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    memory = engine.url.database in (None, "", ":memory:")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (below)
        cur = dbapi_connection.cursor()
        try:
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cur.execute("PRAGMA foreign_keys=ON")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def writer(engine: Engine) -> Engine:
    """The same engine (same pool) whose transactions take the write lock at BEGIN."""
    return engine.execution_options(**{_WRITE_OPTION: True})


@contextmanager
def reading(bind: Engine | Connection) -> Iterator[Connection]:
    """A connection for reads: `bind` itself when it is a Connection (the caller's transaction),
    else a short-lived connection from the engine (one read snapshot, rolled back at the end)."""
    if isinstance(bind, Connection):
        yield bind
        return
    with bind.connect() as conn:
        yield conn


_BULK_SQL: dict[tuple[str, str], tuple[str, bool]] = {}


def bulk_insert_ignore(conn: Connection, table: sa.Table, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert `rows` (tuples in the table's column order), ignoring rows whose key exists, with
    one driver-level executemany. The statement is compiled once per dialect; this skips
    SQLAlchemy's per-row parameter processing, which dominates a rebuild's cost otherwise."""
    if not rows:
        return
    key = (conn.dialect.name, table.name)
    cached = _BULK_SQL.get(key)
    if cached is None:
        names = [c.name for c in table.columns]
        stmt = insert_ignore(conn, table).values({n: sa.bindparam(n) for n in names})
        compiled = stmt.compile(dialect=conn.dialect)
        if compiled.positional and list(compiled.positiontup or ()) != names:  # pragma: no cover
            raise AssertionError(f"unexpected bind order for {table.name}: {compiled.positiontup}")
        cached = _BULK_SQL[key] = (str(compiled), bool(compiled.positional))
    sql, positional = cached
    if positional:
        conn.exec_driver_sql(sql, list(rows))
    else:
        names = [c.name for c in table.columns]
        conn.exec_driver_sql(sql, [dict(zip(names, r, strict=False)) for r in rows])


def insert_ignore(conn: Connection, table: sa.Table) -> Any:
    """`INSERT ... ON CONFLICT DO NOTHING` for the connection's dialect (SQLite, PostgreSQL)."""
    name = conn.dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing()
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    raise NotImplementedError(f"projections do not support the {name} dialect")  # pragma: no cover - other engines
