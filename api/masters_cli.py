"""`agentkeys-broker masters assign|revoke|list` (design §3a, §8 "Access wire", "Operators").

    agentkeys-broker masters assign --omni-account HEX --service NAME --root BUCKET/PREFIX/ [--operator NAME]
    agentkeys-broker masters revoke --omni-account HEX --service NAME --root BUCKET/PREFIX/ [--operator NAME]
    agentkeys-broker masters list [--json]

The service catalogue comes from the broker's environment (`BROKER_SERVICES_FILE`, else the
built-in `s3` with `BROKER_S3_BUCKETS`); the ledger file as the server's (`--db`, else
`$BROKER_LEDGER_DB`, else `$BROKER_DATA_DIR/ledger.sqlite`). Services of scope `none`/`oidc` take
`--root ""`. Safe while a server runs on the same ledger; the next mint sees the change. Exit 0
done, 1 refused (already assigned, not assigned), 2 usage, configuration or I/O.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ledger.errors import CommandError

from .operator_cli import cli_operator_name


def register(subparsers: Any) -> None:
    group = subparsers.add_parser("masters", help="assign and revoke the roots masters own",
                                  description="Roots masters own (BROKER_TENANCY=assigned; services of scope none/oidc "
                                              "under any tenancy). See docs/operator-runbook.md §tenancy.")
    sub = group.add_subparsers(dest="masters_command", metavar="SUBCOMMAND")

    def db(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db", metavar="LEDGER", help="ledger SQLite file (default: $BROKER_LEDGER_DB, else "
                                                     "$BROKER_DATA_DIR/ledger.sqlite)")

    for name, helptext in (("assign", "give a master a root of a service"), ("revoke", "take a root back")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--omni-account", required=True, metavar="HEX", help="the master's OmniAccount (64 hex)")
        p.add_argument("--service", required=True, metavar="NAME", help="a service of the catalogue")
        p.add_argument("--root", required=True, metavar="BUCKET/PREFIX/",
                       help='the root (BUCKET/ or BUCKET/PREFIX/); "" for services of scope none/oidc')
        p.add_argument("--operator", metavar="NAME", help="name recorded as the operator (default cli:<user>@<host>)")
        db(p)
        p.set_defaults(handler=_change, action=name)
    ls = sub.add_parser("list", help="every assigned root")
    ls.add_argument("--json", action="store_true", help='{"assignments": [{omni_account, service, root}]}')
    db(ls)
    ls.set_defaults(handler=_list)
    group.set_defaults(handler=lambda args: (group.print_help(sys.stderr), 2)[1])


def _ledger_path(args: argparse.Namespace) -> Path:
    from projections.cli import _paths

    args.projections_db = None
    return _paths(args)[0]


def _catalogue() -> Any:
    from .access_config import from_env as access_from_env
    from .settings import BootFailure
    from .sts_config import StsSettings

    env = dict(os.environ)
    try:
        if (env.get("BROKER_SERVICES_FILE") or "").strip():
            from .access_config import load_services_file
            return load_services_file(Path(env["BROKER_SERVICES_FILE"].strip()).expanduser(), env["BROKER_SERVICES_FILE"])
        sts = StsSettings.from_env(env)
        return access_from_env(env, role_arn=sts.role_arn, templates=sts.policy_templates).catalogue
    except BootFailure as exc:
        raise CommandError(f"cannot load the service catalogue: {exc}", 2) from None


def _service(ledger_db: Path) -> tuple[Any, Any]:
    from ledger.app import Ledger
    from ledger.config import LedgerConfig
    from ledger.services.masters import MastersService

    if not ledger_db.is_file():
        raise CommandError(f"ledger database not found: {ledger_db}", 2)
    ledger = Ledger(LedgerConfig(ledger_db))
    return ledger, MastersService(ledger=ledger, catalogue=_catalogue())


def _change(args: argparse.Namespace) -> int:
    from ledger.services.refusals import Refusal

    ledger, service = _service(_ledger_path(args))
    operator = cli_operator_name(args.operator)
    try:
        change = service.assign if args.action == "assign" else service.revoke
        done = change(args.omni_account, args.service, args.root, operator=operator)
    except Refusal as exc:
        code = 1 if exc.reason in ("already_assigned", "not_assigned") else 2
        raise CommandError(f"{exc.reason}: {exc.message}", code) from None
    finally:
        ledger.close()
    verb = "assigned to" if args.action == "assign" else "revoked from"
    print(f"{args.service} root {done.root!r} {verb} {done.omni_account} by {operator}")
    return 0


def _list(args: argparse.Namespace) -> int:
    ledger, service = _service(_ledger_path(args))
    try:
        found = service.list()
    finally:
        ledger.close()
    if args.json:
        print(json.dumps({"assignments": [a.wire() for a in found]}, indent=2))
        return 0
    if not found:
        print("no assigned roots")
        return 0
    print(f"{'OMNI ACCOUNT':<66} {'SERVICE':<16} ROOT")
    for a in found:
        print(f"{a.omni_account:<66} {a.service:<16} {a.root or '(whole service)'}")
    return 0
