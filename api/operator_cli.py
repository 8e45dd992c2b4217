"""`agentkeys-broker quarantine list|show|resolve` (design §3 "Quarantine", §8 "Operators").

    agentkeys-broker quarantine list [--all] [--json]
    agentkeys-broker quarantine show CASE_ID
    agentkeys-broker quarantine resolve CASE_ID --action reanchor|accept|revoke --reason TEXT [--operator NAME]

Files as the server's (`--db`, else `$BROKER_LEDGER_DB`, else `$BROKER_DATA_DIR/ledger.sqlite`;
`--projections-db`, else `$BROKER_PROJECTIONS_DB`, else beside the ledger). Safe while a server
runs on the same files: the ledger takes the write lock per append, the read model catches up
under its own lock. The operator recorded is `cli:<os-user>@<host>` unless `--operator NAME`.
`revoke` needs IAM: the STS settings' region and credentials (`BROKER_AWS_REGION`,
`DAEMON_ACCESS_KEY_ID`/`DAEMON_SECRET_ACCESS_KEY` or the AWS default chain) and
`BROKER_IAM_ENDPOINT_URL` when not AWS. Exit 0 done, 1 refused (e.g. `case_closed`), 2 usage or I/O.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import sys
from typing import Any

from ledger.errors import CommandError


def register(subparsers: Any) -> None:
    group = subparsers.add_parser("quarantine", help="list, inspect and resolve quarantined mints",
                                  description="Quarantined mints: released mints whose asynchronous anchor did not "
                                              "confirm in time. See docs/operator-runbook.md §quarantine.")
    sub = group.add_subparsers(dest="quarantine_command", metavar="SUBCOMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db", metavar="LEDGER", help="ledger SQLite file (default: $BROKER_LEDGER_DB, else "
                                                     "$BROKER_DATA_DIR/ledger.sqlite)")
        p.add_argument("--projections-db", metavar="FILE", help="read-model SQLite file (default: "
                                                               "$BROKER_PROJECTIONS_DB, else beside the ledger)")

    ls = sub.add_parser("list", help="open cases (or --all)")
    ls.add_argument("--all", action="store_true", help="closed cases too")
    ls.add_argument("--json", action="store_true", help="the API's JSON shape")
    common(ls)
    ls.set_defaults(handler=_list)
    show = sub.add_parser("show", help="one case with its history (JSON)")
    show.add_argument("case_id", metavar="CASE_ID")
    common(show)
    show.set_defaults(handler=_show)
    resolve = sub.add_parser("resolve", help="resolve a case; revoke applies the role kill switch (every tenant!)")
    resolve.add_argument("case_id", metavar="CASE_ID")
    resolve.add_argument("--action", required=True, choices=("reanchor", "accept", "revoke"))
    resolve.add_argument("--reason", required=True, help="why (recorded in the ledger)")
    resolve.add_argument("--operator", metavar="NAME", help="name recorded as the operator (default cli:<user>@<host>)")
    common(resolve)
    resolve.set_defaults(handler=_resolve)
    group.set_defaults(handler=lambda args: (group.print_help(sys.stderr), 2)[1])


def cli_operator_name(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (containers)
        user = str(os.getuid())
    return f"cli:{user}@{socket.gethostname()}"


def _cases_engine(args: argparse.Namespace) -> Any:
    """The read-model engine, caught up with the ledger for the quarantine projection."""
    from projections.cli import _paths
    from projections.db import open_engine
    from projections.errors import ProjectionError
    from projections.quarantine import QuarantineProjection
    from projections.runner import ProjectionRunner
    from projections.source import open_ledger_source

    ledger_db, proj_db = _paths(args)
    try:
        source = open_ledger_source(ledger_db)
    except ProjectionError as exc:
        raise CommandError(str(exc), 2) from None
    engine = open_engine(proj_db)
    try:
        ProjectionRunner(source, engine, [QuarantineProjection()]).catch_up()
    except Exception as exc:
        engine.dispose()
        raise CommandError(f"cannot update the quarantine read model: {exc}", 2) from None
    finally:
        source.close()
    return engine


def _list(args: argparse.Namespace) -> int:
    from projections.quarantine import list_cases

    engine = _cases_engine(args)
    try:
        found = list_cases(engine, status="all" if args.all else "open")
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({"cases": [c.wire() for c in found]}, indent=2))
        return 0
    if not found:
        print("no open quarantine cases" if not args.all else "no quarantine cases")
        return 0
    print(f"{'CASE':<10} {'STATUS':<12} {'REASON':<20} {'WALLET':<43} {'ACCESS KEY':<22} OPENED")
    for c in found:
        print(f"{c.case_id:<10} {c.status:<12} {c.reason:<20} {c.wallet:<43} {c.access_key_id:<22} {c.opened_at}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from projections.quarantine import get_case

    engine = _cases_engine(args)
    try:
        case = get_case(engine, args.case_id)
    finally:
        engine.dispose()
    if case is None:
        raise CommandError(f"no quarantine case {args.case_id}", 2)
    print(json.dumps(case.wire(), indent=2))
    return 0


def _kill_switch() -> Any:
    from .config import BootFailure, _iam_endpoint
    from .iam import BotoIamKillSwitch
    from .sts_config import StsSettings

    env = dict(os.environ)
    try:
        sts = StsSettings.from_env(env)
        dev = (env.get("BROKER_DEV_MODE") or "").strip().lower() in ("true", "1", "yes")
        return BotoIamKillSwitch.from_sts_settings(sts, _iam_endpoint(env, dev))
    except BootFailure as exc:
        raise CommandError(f"cannot build the IAM client for the kill switch: {exc}", 2) from None


def _resolve(args: argparse.Namespace) -> int:
    from ledger.app import Ledger
    from ledger.config import LedgerConfig
    from ledger.services.quarantine import QuarantineRefusal, QuarantineService
    from projections.cli import _paths

    ledger_db, _ = _paths(args)
    if not ledger_db.is_file():
        raise CommandError(f"ledger database not found: {ledger_db}", 2)
    kill_switch = _kill_switch() if args.action == "revoke" else None
    operator = cli_operator_name(args.operator)
    ledger = Ledger(LedgerConfig(ledger_db))
    try:
        result = QuarantineService(ledger=ledger, kill_switch=kill_switch).resolve(
            args.case_id, action=args.action, reason=args.reason, operator=operator)
    except QuarantineRefusal as exc:
        raise CommandError(f"{exc.reason}: {exc.message}", 2 if exc.reason == "bad_request" else 1) from None
    finally:
        ledger.close()
    if result.status == "reanchoring":
        print(f"{result.case_id}: reanchoring (seq {result.seq}); the broker's worker closes it once the anchor "
              f"confirms")
    else:
        extra = f"; sessions of the role issued before {result.revoked_not_before} are denied" \
            if result.revoked_not_before else ""
        print(f"{result.case_id}: resolved by {operator} (seq {result.seq}){extra}")
    return 0
