"""`agentkeys-broker keygen --purpose oidc|session --out PATH [--rotate] [--retire-after SECONDS]`.

Writes an ES256 (P-256) keypair file of mode 0600 (api/keys.py). An existing file is never
overwritten; `--rotate` adds a new active key and keeps the current one valid for verification for
`--retire-after` seconds (default 86400, the longest session JWT lifetime). Prints the new kid and
the path. Expected failures are one line: exit 2 for usage and I/O problems (including a file that
already exists), exit 1 when the existing file fails its checks during `--rotate`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ledger.errors import CommandError

_EXIT_FOR_KIND = {"exists": 2, "missing": 2, "io": 2, "usage": 2, "permissions": 1, "invalid": 1, "purpose": 1}


# api.keys.DEFAULT_RETIRE_AFTER_SECONDS, repeated so building the parser imports no crypto
# (tests/unit/api/test_keys.py checks the two agree).
DEFAULT_RETIRE_AFTER_SECONDS = 86400


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "keygen",
        help="write an ES256 signing keypair file (mode 0600) for the OIDC or session slot",
        description="Write an ES256 (P-256) signing keypair file, mode 0600. The broker never generates "
                    "keys itself (except `dev`, in its state directory).",
    )
    p.add_argument("--purpose", required=True, choices=("oidc", "session"),
                   help="the slot the key is for (the two keypairs must be different files)")
    p.add_argument("--out", required=True, type=Path, metavar="PATH", help="keypair file to write")
    p.add_argument("--rotate", action="store_true",
                   help="replace the active key of an existing file, keeping the old one for verification")
    p.add_argument("--retire-after", type=int, default=DEFAULT_RETIRE_AFTER_SECONDS, metavar="SECONDS",
                   help="with --rotate: how long the previous key still verifies (default %(default)s, "
                        "the longest lifetime of the tokens it signed)")
    p.set_defaults(handler=_keygen)


def _keygen(args: argparse.Namespace) -> int:
    from .keys import KeyFileError, generate_keyfile, rfc3339

    path: Path = args.out.expanduser()
    try:
        keyring = generate_keyfile(path, args.purpose, rotate=args.rotate,
                                   retire_after_seconds=args.retire_after)
    except KeyFileError as exc:
        reason = exc.reason if str(path) in exc.reason else f"{path}: {exc.reason}"
        raise CommandError(f"keygen: {reason}", _EXIT_FOR_KIND.get(exc.kind, 1)) from None
    print(f"kid: {keyring.active.kid}")
    print(f"path: {path.resolve()}")
    print(f"purpose: {keyring.purpose}")
    if args.rotate and keyring.previous:
        prev = keyring.previous[-1]
        print(f"previous: {prev.kid} (verifies until {rfc3339(prev.verify_until or 0)})")
    return 0
