"""`agentkeys-broker`: the one console script. Each command group registers itself from the
package that owns it; heavy imports happen inside the handlers, so `audit verify` starts fast and
never loads the writer's code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from anchors import cli as anchors_cli
from api import backup_cli, client_cli, integrity_cli, keys_cli, masters_cli, operator_cli
from api import cli as api_cli
from ledger.errors import CommandError
from projections import cli as projections_cli

from . import audit_cli

__all__ = ["CommandError", "build_parser", "main"]

# Each `register(subparsers)` adds its commands and sets `handler=<callable(args) -> int>` on its
# parsers. The modules import only argparse and light helpers at module level.
_GROUPS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    api_cli.register,  # serve, dev
    keys_cli.register,  # keygen
    audit_cli.register,  # audit export|verify|prove|verify-proof
    projections_cli.register,  # projections rebuild
    anchors_cli.register,  # anchors keystore|deploy|status
    operator_cli.register,  # quarantine list|show|resolve
    backup_cli.register,  # backup, restore
    client_cli.register,  # grant create|revoke|list, creds, exec, demo (the daemon client)
    masters_cli.register,  # masters assign|revoke|list
    integrity_cli.register,  # integrity status|ack
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentkeys-broker",
        description="AgentKeys credential broker: short-lived AWS credentials gated on an anchored, hash-chained ledger.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _GROUPS:
        register(sub)
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
    from api.file_modes import set_private_umask
    from api.log_redaction import install as install_log_redaction

    install_log_redaction()  # before anything logs: no secret in any log line, at any level
    set_private_umask()  # every file the broker (and dev's children) creates: 0600, directories 0700
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
