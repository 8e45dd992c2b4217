"""`agentkeys-broker projections rebuild|status`.

    agentkeys-broker projections rebuild [NAME] [--db LEDGER] [--projections-db FILE]
    agentkeys-broker projections status [--db LEDGER] [--projections-db FILE]

The files default as the server's do: `--db` to `$BROKER_LEDGER_DB`, else
`$BROKER_DATA_DIR/ledger.sqlite` (`~/.agentkeys/broker/data` without it); `--projections-db` to
`$BROKER_PROJECTIONS_DB`, else `projections.sqlite` beside the ledger. The ledger is only read (no
writer thread is started). Progress goes to stderr, the summary to stdout. Exit 0 done, 1 a
projection or database failure, 2 usage (unknown NAME, missing ledger). Rebuilding while a server
runs on the same files is safe (each batch re-reads the position under the write lock); the
server's readers see the projection catching up meanwhile.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from ledger.errors import CommandError

ENV_LEDGER_DB = "BROKER_LEDGER_DB"
ENV_PROJECTIONS_DB = "BROKER_PROJECTIONS_DB"
ENV_DATA_DIR = "BROKER_DATA_DIR"


def register(subparsers) -> None:  # noqa: ANN001
    group = subparsers.add_parser(
        "projections",
        help="read models built from the ledger (rebuild, status)",
        description="Read models built from the ledger: wallets, grants, mints, quarantine.",
    )
    sub = group.add_subparsers(dest="projections_command", metavar="SUBCOMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--db", metavar="LEDGER", help=f"ledger SQLite file (default: ${ENV_LEDGER_DB}, else ${ENV_DATA_DIR}/ledger.sqlite)"
        )
        p.add_argument(
            "--projections-db",
            metavar="FILE",
            help=f"projections SQLite file (default: ${ENV_PROJECTIONS_DB}, else projections.sqlite beside the ledger)",
        )

    rebuild = sub.add_parser(
        "rebuild",
        help="reset a projection (or all) and replay the ledger from seq 1",
        description="Reset a projection (all when NAME is omitted) and replay the whole ledger into it. Progress on stderr.",
    )
    rebuild.add_argument("name", nargs="?", metavar="NAME", help="projection to rebuild (default: all)")
    common(rebuild)
    rebuild.add_argument("--batch-size", type=int, default=2000, metavar="N", help="records per transaction (default 2000)")
    rebuild.set_defaults(handler=_one_line_errors(_rebuild))

    status = sub.add_parser("status", help="position and lag of every projection")
    common(status)
    status.set_defaults(handler=_one_line_errors(_status))

    group.set_defaults(handler=lambda args: _usage(group))


def _one_line_errors(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except CommandError as exc:
            print(f"agentkeys-broker: error: {exc}", file=sys.stderr)
            return exc.code

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """The same files the server uses: flag, else `$BROKER_LEDGER_DB` / `$BROKER_PROJECTIONS_DB`,
    else `$BROKER_DATA_DIR/ledger.sqlite` / `projections.sqlite` beside the ledger."""
    from .db import default_projections_path

    env = os.environ
    ledger_db = args.db or env.get(ENV_LEDGER_DB) or None
    if not ledger_db:
        data_dir = env.get(ENV_DATA_DIR) or str(Path(env.get("HOME") or ".") / ".agentkeys" / "broker" / "data")
        ledger_db = str(Path(data_dir).expanduser() / "ledger.sqlite")
    proj_raw = args.projections_db or env.get(ENV_PROJECTIONS_DB) or None
    proj_db = Path(proj_raw).expanduser() if proj_raw else default_projections_path(Path(ledger_db).expanduser())
    return Path(ledger_db).expanduser(), proj_db


def _one_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error with the SQL
    text = str(orig if orig is not None else exc)
    return " ".join(text.split())


class _ProgressPrinter:
    """`rebuilt wallets: 12000/50000 events`, at most every `interval` seconds per projection,
    and always the last one."""

    def __init__(self, out: TextIO, interval: float = 0.5) -> None:
        self.out = out
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}
        self._latest: dict[str, tuple[int, int | None]] = {}

    def __call__(self, name: str, seq: int, total: int | None) -> None:
        self._latest[name] = (seq, total)
        now = time.monotonic()
        last = self._last.get(name)
        if last is None or now - last[0] >= self.interval or (total is not None and seq >= total and last[1] != seq):
            self._print(name, seq, total, now)

    def finish(self, name: str, seq: int) -> None:
        _, total = self._latest.get(name, (seq, None))
        last = self._last.get(name)
        if last is None or last[1] != seq:
            self._print(name, seq, max(seq, total or 0), time.monotonic())

    def _print(self, name: str, seq: int, total: int | None, now: float) -> None:
        shown = f"{seq}/{max(seq, total)}" if total is not None else f"{seq}"
        print(f"rebuilt {name}: {shown} events", file=self.out, flush=True)
        self._last[name] = (now, seq)


def _rebuild(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from ledger.errors import LedgerError

    from . import registry
    from .db import open_engine
    from .errors import ProjectionError
    from .runner import ProjectionRunner
    from .source import open_ledger_source

    if args.name is not None and args.name not in registry.names():
        raise CommandError(f"unknown projection {args.name!r} (known: {', '.join(registry.names())})", 2)
    if args.batch_size < 1:
        raise CommandError("--batch-size must be >= 1", 2)
    ledger_db, proj_db = _paths(args)
    try:
        source = open_ledger_source(ledger_db)
    except ProjectionError as exc:
        raise CommandError(str(exc), 2) from None
    except Exception as exc:  # unreadable file, eventsourcing's wrapped driver errors
        raise CommandError(f"cannot open ledger {ledger_db}: {_one_line(exc)}", 2) from None

    targets = [registry.get(args.name)] if args.name else registry.all_projections()
    printer = _ProgressPrinter(sys.stderr)
    engine = None
    try:
        engine = open_engine(proj_db)
        runner = ProjectionRunner(source, engine, targets, batch_size=args.batch_size)
        results = runner.rebuild(None, progress=printer)
    except (ProjectionError, LedgerError, SQLAlchemyError, OSError) as exc:
        raise CommandError(f"rebuild failed: {_one_line(exc)}", 1) from None
    finally:
        source.close()
        if engine is not None:
            engine.dispose()

    for r in results:
        printer.finish(r.name, r.seq)
    seconds = max((r.seconds for r in results), default=0.0)
    events = max((r.events for r in results), default=0)
    rate = f", {events / seconds:,.0f} events/s" if seconds > 0 and events else ""
    names = ", ".join(r.name for r in results)
    head = max((r.seq for r in results), default=0)
    print(
        f"rebuilt {len(results)} projection{'s' if len(results) != 1 else ''} ({names}) to seq {head}: "
        f"{events} events in {seconds:.2f}s{rate} -> {proj_db}"
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    import sqlalchemy as sa
    from sqlalchemy.exc import SQLAlchemyError

    from . import registry
    from .base import projection_positions
    from .db import open_engine
    from .errors import ProjectionError
    from .source import open_ledger_source

    ledger_db, proj_db = _paths(args)
    try:
        source = open_ledger_source(ledger_db)
    except ProjectionError as exc:
        raise CommandError(str(exc), 2) from None
    try:
        head = source.head().seq
    finally:
        source.close()
    stored: dict[str, tuple[int, int]] = {}
    if proj_db.is_file():
        engine = open_engine(proj_db)
        try:
            with engine.connect() as conn:
                if sa.inspect(conn).has_table(projection_positions.name):
                    for name, seq, version in conn.execute(
                        sa.select(projection_positions.c.name, projection_positions.c.seq, projection_positions.c.version)
                    ):
                        stored[name] = (seq, version)
        except SQLAlchemyError as exc:
            raise CommandError(f"cannot read {proj_db}: {_one_line(exc)}", 1) from None
        finally:
            engine.dispose()
    print(f"ledger head: seq {head}  ({ledger_db})")
    for p in registry.all_projections():
        if p.name not in stored:
            print(f"{p.name}: not built")
            continue
        seq, version = stored[p.name]
        note = "" if version == p.version else f"  (built by version {version}, code is {p.version}: will be rebuilt)"
        print(f"{p.name}: seq {seq}, lag {max(0, head - seq)}{note}")
    return 0
