"""`agentkeys-broker integrity status|ack`: the integrity alarm (ledger/integrity.py; runbook
"integrity-alarm").

`ack --reason TEXT` records `IntegrityAcknowledged{tamper_seq, reason, operator, lost_range}` on the
broker's files (the same `BROKER_*` paths as `serve`). When the ledger is behind its SQLite anchor
(restored from an older copy), the anchor file is moved aside (`<file>.superseded-<unix time>`) and a
new one started at the ledger's head + 1 before the acknowledgement is recorded, so the new file
witnesses the acknowledgement itself. Run it with the broker stopped in that case.
Exit codes: 0 done, 1 nothing to acknowledge, 2 usage or I/O error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ledger.errors import CommandError

from .operator_cli import cli_operator_name


def register(subparsers: Any) -> None:
    group = subparsers.add_parser("integrity", help="the integrity alarm: status, acknowledge after a TamperDetected",
                                  description="Show or acknowledge the integrity alarm (docs/operator-runbook.md "
                                              "#integrity-alarm).")
    sub = group.add_subparsers(dest="integrity_command", metavar="SUBCOMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--ledger-db", metavar="FILE", help="ledger file (default $BROKER_LEDGER_DB, else "
                                                          "$BROKER_DATA_DIR/ledger.sqlite)")
        p.add_argument("--anchor-db", metavar="FILE", help="SQLite anchor file (default $BROKER_SQLITE_ANCHOR_DB, "
                                                          "else $BROKER_DATA_DIR/anchor.sqlite; absent: not checked)")

    status = sub.add_parser("status", help="the open alarm, if any")
    common(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_status)
    ack = sub.add_parser("ack", help="acknowledge the open alarm (records IntegrityAcknowledged)")
    common(ack)
    ack.add_argument("--reason", required=True, help="why releases may resume (recorded)")
    ack.add_argument("--operator", metavar="NAME", help="name recorded as the operator (default cli:<user>@<host>)")
    ack.set_defaults(handler=_ack)
    group.set_defaults(handler=lambda args: (group.print_help(sys.stderr), 2)[1])


def _paths(args: argparse.Namespace) -> tuple[Path, Path]:
    env = os.environ
    data_dir = Path(env.get("BROKER_DATA_DIR") or Path(env.get("HOME") or ".") / ".agentkeys" / "broker" / "data")
    ledger_db = Path(args.ledger_db or env.get("BROKER_LEDGER_DB") or data_dir / "ledger.sqlite").expanduser()
    anchor_db = Path(args.anchor_db or env.get("BROKER_SQLITE_ANCHOR_DB") or data_dir / "anchor.sqlite").expanduser()
    return ledger_db, anchor_db


def _open(args: argparse.Namespace):  # noqa: ANN202
    from anchors.sqlite import SQLiteAnchor
    from ledger.app import Ledger
    from ledger.config import LedgerConfig
    from ledger.integrity import IntegrityMonitor

    ledger_db, anchor_db = _paths(args)
    if not ledger_db.exists():
        raise CommandError(f"no ledger at {ledger_db}", 2)
    try:
        ledger = Ledger(LedgerConfig(ledger_db))
    except Exception as exc:
        raise CommandError(f"cannot open the ledger at {ledger_db}: {exc}", 2) from None
    anchors = [SQLiteAnchor(anchor_db)] if anchor_db.exists() else []
    return ledger, anchors, anchor_db, IntegrityMonitor(ledger, anchors)


def _close(ledger: Any, anchors: list[Any]) -> None:
    for a in anchors:
        a.close()
    ledger.close()


def _status(args: argparse.Namespace) -> int:
    ledger, anchors, _, monitor = _open(args)
    try:
        alarm = monitor.alarm
        lost = monitor.lost_range()
        out = {"open": alarm is not None, "lost_range": list(lost) if lost else None,
               "tamper_seq": alarm.tamper_seq if alarm else None, "tamper": alarm.event.to_data() if alarm else None}
    finally:
        _close(ledger, anchors)
    if args.json:
        print(json.dumps(out, indent=2))
    elif alarm is None:
        print("no integrity alarm is open")
    else:
        e = alarm.event
        print(f"integrity alarm open: TamperDetected at seq {alarm.tamper_seq}: {e.source} seq {e.seq}: {e.detail}")
        if lost:
            print(f"the ledger is behind its anchors: seqs {lost[0]}..{lost[1]} are missing")
    return 0


def _ack(args: argparse.Namespace) -> int:
    from anchors.sqlite import SQLiteAnchor

    reason = args.reason.strip()
    if not reason:
        raise CommandError("--reason must not be empty", 2)
    ledger, anchors, anchor_db, monitor = _open(args)
    try:
        alarm = monitor.alarm
        if alarm is None:
            print("no integrity alarm is open; nothing to acknowledge", file=sys.stderr)
            return 1
        lost = monitor.lost_range()
        if lost is not None and anchors:
            for a in anchors:
                a.close()
            anchors = []
            moved = anchor_db.with_name(f"{anchor_db.name}.superseded-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(anchor_db) + suffix)
                if src.exists():
                    src.rename(Path(str(moved) + suffix))
            SQLiteAnchor.create_at(anchor_db, lost[0]).close()  # the restored head + 1
            print(f"the old SQLite anchor is kept at {moved}; a new one starts at seq {lost[0]}", file=sys.stderr)
        event = monitor.acknowledge(reason=reason[:500], operator=cli_operator_name(args.operator), lost_range=lost)
    finally:
        _close(ledger, anchors)
    lost_text = f", lost range {event.lost_range[0]}..{event.lost_range[1]}" if event.lost_range else ""
    print(f"acknowledged TamperDetected at seq {event.tamper_seq} as {event.operator}{lost_text}; releases resume")
    return 0
