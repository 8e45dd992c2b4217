"""`agentkeys-broker`: the one console script. Each command group registers itself from the
package that owns it; heavy imports happen inside the handlers, so `audit verify` starts fast and
never loads the writer's code."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

# (module, function) pairs; each `register(subparsers)` adds its commands and sets
# `handler=<callable(args) -> int>` on its parsers.
_GROUPS = (
    ("api.cli", "register"),          # serve, dev
    ("api.keys_cli", "register"),     # keygen
    ("ledger.audit_cli", "register"),  # audit export|verify
    ("anchors.audit_cli", "register"),  # audit prove|verify-proof; verify --rpc/--contract/--checkpoint (after ledger.audit_cli)
    ("projections.cli", "register"),  # projections rebuild
    ("anchors.cli", "register"),      # anchors keystore|deploy|status
    ("api.client_cli", "register"),   # grant create|revoke|list, creds, exec, demo (the daemon client)
)


from ledger.errors import CommandError  # noqa: E402  (re-exported for the command modules)

__all__ = ["CommandError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="agentkeys-broker",
        description="AgentKeys credential broker: short-lived AWS credentials gated on an anchored, hash-chained ledger.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name, func in _GROUPS:
        module = importlib.import_module(module_name)
        getattr(module, func)(sub)
    _add_version(parser)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agentkeys-broker")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"


def _add_version(parser: argparse.ArgumentParser) -> None:
    """`--version` on the command and on every subcommand, at every depth."""
    if not any("--version" in a.option_strings for a in parser._actions):
        parser.add_argument("--version", action="version", version=f"agentkeys-broker {_version()}")
    for action in parser._actions:  # argparse keeps no public handle on a parser's subparsers
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                _add_version(child)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(handler(args) or 0)
    except CommandError as exc:
        print(f"agentkeys-broker: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
