"""`agentkeys-broker audit export|verify`: the offline auditor's commands.

    agentkeys-broker audit export --db LEDGER --out FILE.jsonl [--progress]
    agentkeys-broker audit verify (--db LEDGER | --export FILE.jsonl) [--anchor-db ANCHOR] [--json] [--progress]

Exit codes: 0 valid, 1 findings, 2 usage or I/O error (one line on stderr, never a traceback).
Expected failures print `agentkeys-broker: error: <message>` and return 2 here, the same line
`workers.cli.main` prints for its `CommandError`: `ledger` may not import `workers` (design §1,
tests/unit/test_layering.py). `ledger.audit` is imported inside the handlers, so parsing the command line loads nothing else, and
the verifier never loads the writer's code (ledger/store.py, eventsourcing).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

EXIT_VALID = 0
EXIT_FINDINGS = 1
EXIT_ERROR = 2


def register(subparsers) -> None:  # noqa: ANN001
    group = subparsers.add_parser(
        "audit",
        help="export and verify the hash-chained ledger offline",
        description="Offline auditor: export the ledger to JSONL and verify the hash chain, without trusting the broker.",
    )
    sub = group.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    group.set_defaults(handler=_missing_subcommand(group))

    export = sub.add_parser(
        "export",
        help="write the ledger as JSONL (header line, then one record per line)",
        description="Write the ledger as JSONL: a header line, then one record (envelope plus hash) per line. "
        "The database is opened read-only; the file is written atomically.",
    )
    export.add_argument("--db", required=True, metavar="LEDGER", help="the SQLite ledger file")
    export.add_argument("--out", required=True, metavar="FILE.jsonl", help="the export file to write")
    export.add_argument("--progress", action="store_true", help="report progress on stderr (default: only on a terminal)")
    export.set_defaults(handler=_export)

    verify = sub.add_parser(
        "verify",
        help="recompute every hash and link; compare with an anchor",
        description="Recompute every record hash and every link of the chain, and compare anchored hashes. "
        "Exit 0 valid, 1 findings, 2 usage or I/O error.",
    )
    source = verify.add_mutually_exclusive_group(required=True)
    source.add_argument("--db", metavar="LEDGER", help="verify a SQLite ledger (opened read-only)")
    source.add_argument("--export", metavar="FILE.jsonl", help="verify an export file")
    verify.add_argument("--anchor-db", metavar="ANCHOR", help="a SQLite anchor database (table `anchored(seq, hash)`)")
    verify.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    verify.add_argument("--progress", action="store_true", help="report progress on stderr (default: only on a terminal)")
    verify.set_defaults(handler=_verify)


def _missing_subcommand(parser: argparse.ArgumentParser):  # noqa: ANN202
    def handler(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return EXIT_ERROR

    return handler


def _fail(message: str) -> int:
    """An expected failure: one line on stderr, exit 2 (as `workers.cli.CommandError` would)."""
    print(f"agentkeys-broker: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def _progress(args: argparse.Namespace, label: str) -> Any:
    from ledger import audit

    if args.progress or sys.stderr.isatty():
        return audit.stderr_progress(label)
    return None


def _export(args: argparse.Namespace) -> int:
    from ledger import audit

    try:
        result = audit.export_ledger(args.db, args.out, progress=_progress(args, "audit export"))
    except audit.AuditError as exc:
        return _fail(str(exc))
    print(f"exported {result.records} records to {args.out}, head seq {result.head_seq} hash {result.head_hash}")
    return EXIT_VALID


def _verify(args: argparse.Namespace) -> int:
    import msgspec

    from ledger import audit

    progress = _progress(args, "audit verify")
    try:
        if args.export is not None:
            report = audit.verify_export(args.export, anchor_db=args.anchor_db, progress=progress)
        else:
            report = audit.verify_database(args.db, anchor_db=args.anchor_db, progress=progress)
    except audit.AuditError as exc:
        return _fail(str(exc))
    out = sys.stdout
    if args.json:
        out.write(msgspec.json.encode(report.to_json()).decode() + "\n")
    else:
        out.write("\n".join(report.summary_lines()) + "\n")
    out.flush()
    return EXIT_VALID if report.valid else EXIT_FINDINGS


def run(argv: Sequence[str]) -> int:
    """Run `audit ...` in-process, as the console script would (tests)."""
    parser = argparse.ArgumentParser(prog="agentkeys-broker")
    register(parser.add_subparsers(dest="command"))
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # argparse usage errors exit 2
        return int(exc.code or 0)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    return int(handler(args) or 0)
