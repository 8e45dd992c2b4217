"""`agentkeys-broker grant create|revoke|list`, `creds`, `exec ... -- CMD` and `demo`: the client
side of the broker on the command line (design §5, §8 "Files and commands").

    agentkeys-broker grant create [--url URL | --state-dir DIR] (--key-file P | --keystore P --password-file P)
                                  --daemon ADDR --service NAME --scope PATH --expires-in SECONDS --max-uses N
                                  [--agent-id ID | --agent-id-prefix P] [--json]
    agentkeys-broker grant revoke GRANT_ID [...]
    agentkeys-broker grant list [--json] [...]
    agentkeys-broker creds [--url URL] (--key-file P | --keystore P --password-file P) --agent-id ID --service NAME [--scope PATH]
    agentkeys-broker exec  [the same options] -- CMD [ARG...]
    agentkeys-broker demo [--state-dir ./.agentkeys-dev | --url URL]

Without `--url` the broker is the one `agentkeys-broker dev` describes in `DIR/dev.json` (`--state-dir`,
default `./.agentkeys-dev`). `creds` prints the AWS `credential_process` JSON and caches it (see
api/credential_cache.py); `exec` runs CMD with the credentials in its environment, as `aws-vault exec`.

Exit codes: 0 done; 1 refused by the broker (no grant, not allowed, bad signature); 2 usage, a key
or configuration problem, or a malformed request; 75 temporarily unavailable (rate limited, anchors
or STS unavailable, broker unreachable: retry later). Errors are one line on stderr, never a
traceback; the line says what to do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC
from pathlib import Path
from typing import Any

from ledger.errors import CommandError

DEFAULT_STATE_DIR = "./.agentkeys-dev"
EXIT_REFUSED, EXIT_USAGE, EXIT_TEMPFAIL = 1, 2, 75


def register(subparsers: Any) -> None:
    grant = subparsers.add_parser("grant", help="create, revoke and list grants (masters, with a key file)",
                                  description="A master wallet grants a daemon wallet minting of one service "
                                  "under a scope in the master's namespace.")
    gsub = grant.add_subparsers(dest="grant_command", metavar="SUBCOMMAND")
    grant.set_defaults(handler=lambda args: _usage(grant))

    create = gsub.add_parser("create", help="grant a daemon wallet a service and scope")
    _broker_options(create)
    create.add_argument("--daemon", required=True, metavar="ADDR", help="the daemon's wallet address (0x + 40 hex)")
    create.add_argument("--service", required=True, metavar="NAME", help="a service of the broker's catalogue, e.g. s3")
    create.add_argument("--scope", required=True, metavar="PATH",
                        help="<bucket>/<your omni_account>/<prefix>/ (your namespace; `grant list` shows it)")
    create.add_argument("--expires-in", required=True, type=_positive, metavar="SECONDS", help="grant lifetime")
    create.add_argument("--max-uses", required=True, type=_positive, metavar="N", help="mints the grant allows")
    pin = create.add_mutually_exclusive_group()
    pin.add_argument("--agent-id", metavar="ID", help="only this agent id may mint under the grant")
    pin.add_argument("--agent-id-prefix", metavar="P", help="only agent ids starting with P may mint under the grant")
    create.add_argument("--json", action="store_true", help="print the grant as JSON")
    create.set_defaults(handler=_grant_create)

    revoke = gsub.add_parser("revoke", help="revoke a grant (effective for the next mint)")
    _broker_options(revoke)
    revoke.add_argument("grant_id", metavar="GRANT_ID")
    revoke.set_defaults(handler=_grant_revoke)

    lst = gsub.add_parser("list", help="your grants, newest first")
    _broker_options(lst)
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(handler=_grant_list)

    creds = subparsers.add_parser("creds", help="AWS credential_process: print cached or freshly minted credentials",
                                  description="Print AWS credential_process JSON (Version 1). Credentials are cached "
                                  "in ${XDG_CACHE_HOME:-~/.cache}/agentkeys/ and reused until shortly before expiry.")
    _broker_options(creds)
    _mint_options(creds)
    creds.set_defaults(handler=_creds)

    run = subparsers.add_parser("exec", help="run a command with minted AWS credentials in its environment",
                                description="Run CMD with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                                "AWS_SESSION_TOKEN and AWS_CREDENTIAL_EXPIRATION set (as aws-vault exec).",
                                usage="%(prog)s [options] -- CMD [ARG...]")
    _broker_options(run)
    _mint_options(run)
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command and its arguments")
    run.set_defaults(handler=_exec)

    demo = subparsers.add_parser("demo", help="first run: master and daemon wallets, a grant, a mint, S3 on moto, "
                                 "offline audit and the mint's proof against the chain",
                                 description="Run against `agentkeys-broker dev` (reads DIR/dev.json).")
    demo.add_argument("--state-dir", default=DEFAULT_STATE_DIR, type=Path, help="dev's state directory")
    demo.add_argument("--url", help="the broker's URL (default: the url in DIR/dev.json)")
    demo.set_defaults(handler=_demo)


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a positive integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError("expected a positive integer")
    return n


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _broker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="the broker's URL (default: the url in STATE_DIR/dev.json)")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, type=Path,
                   help=f"where `agentkeys-broker dev` wrote dev.json (default {DEFAULT_STATE_DIR})")
    keys = p.add_mutually_exclusive_group(required=True)
    keys.add_argument("--key-file", type=Path, metavar="PATH", help="the wallet's hex private key (mode 0600)")
    keys.add_argument("--keystore", type=Path, metavar="PATH", help="an encrypted Ethereum keystore (JSON)")
    p.add_argument("--password-file", type=Path, metavar="PATH", help="the keystore's password (mode 0600)")


def _mint_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--agent-id", required=True, metavar="ID", help="the agent the credentials are for")
    p.add_argument("--service", required=True, metavar="NAME", help="a service of the broker's catalogue, e.g. s3")
    p.add_argument("--scope", default="", metavar="PATH", help="<bucket>/<prefix>/ inside the grant's scope")


# --- shared -----------------------------------------------------------------------------------------


def resolve_broker(url: str | None, state_dir: Path) -> tuple[str, str | None, dict[str, Any] | None]:
    """(url, issuer, dev.json) for --url / --state-dir: dev.json supplies the issuer (and the rest of
    what dev started) when it describes the broker at that URL."""
    dev_json = state_dir.expanduser() / "dev.json"
    info: dict[str, Any] | None = None
    try:
        info = json.loads(dev_json.read_text())
    except FileNotFoundError:
        info = None
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot read {dev_json}: {exc}", EXIT_USAGE) from None
    if url is None:
        if info is None or not info.get("url"):
            raise CommandError(f"no --url given and no {dev_json}: pass --url URL, or start a local broker with "
                               "`agentkeys-broker dev` (or `make run`)", EXIT_USAGE)
        url = str(info["url"])
    url = url.rstrip("/")
    if info is not None and str(info.get("url", "")).rstrip("/") == url:
        return url, info.get("issuer"), info
    return url, None, None


def _account(args: argparse.Namespace) -> Any:
    from .client import load_account

    if args.keystore is not None and args.password_file is None:
        raise CommandError("--keystore needs --password-file", EXIT_USAGE)
    if args.key_file is not None and args.password_file is not None:
        raise CommandError("--password-file goes with --keystore, not --key-file", EXIT_USAGE)
    return load_account(key_file=args.key_file, keystore=args.keystore, password_file=args.password_file)


def _wallet_address(args: argparse.Namespace) -> str | None:
    """The wallet address without decrypting a keystore (its JSON names the address), so that a
    cached credential costs no key derivation; None when it cannot be told cheaply."""
    if args.keystore is None:
        return None
    try:
        address = json.loads(Path(args.keystore).expanduser().read_text()).get("address")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(address, str) and len(address.removeprefix("0x")) == 40:
        return "0x" + address.removeprefix("0x").lower()
    return None


def _command_error(exc: Exception) -> CommandError:
    from .client import AccessDenied, AuthenticationFailed, BrokerError, ConfigurationError, RequestReplayed

    if isinstance(exc, ConfigurationError):
        return CommandError(str(exc), EXIT_USAGE)
    if isinstance(exc, BrokerError) and exc.temporary:
        return CommandError(str(exc), EXIT_TEMPFAIL)
    if isinstance(exc, (AccessDenied, AuthenticationFailed, RequestReplayed)):
        return CommandError(str(exc), EXIT_REFUSED)
    return CommandError(str(exc), EXIT_USAGE)


def _client(args: argparse.Namespace, account: Any, *, session_file: Path | None = None) -> Any:
    from .client import BrokerClient

    url, issuer, _ = resolve_broker(args.url, args.state_dir)
    return BrokerClient(url, account, issuer=issuer, session_file=session_file)


# --- grant ------------------------------------------------------------------------------------------


def _session_file(url: str, address: str) -> Path:
    from .credential_cache import CredentialCache, cache_dir

    return CredentialCache(cache_dir()).session_file(url, address)


def _with_master(args: argparse.Namespace, fn: Any) -> int:
    from .client import BrokerError

    try:
        account = _account(args)
        url, _, _ = resolve_broker(args.url, args.state_dir)
        with _client(args, account, session_file=_session_file(url, account.address)) as client:
            return int(fn(client))
    except BrokerError as exc:
        raise _command_error(exc) from None


def _grant_json(grant: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {k: v for k, v in asdict(grant).items() if v is not None}


def _grant_create(args: argparse.Namespace) -> int:
    def run(client: Any) -> int:
        grant = client.grant(args.daemon, args.service, args.scope, expires_in=args.expires_in,
                             max_uses=args.max_uses, agent_id=args.agent_id, agent_id_prefix=args.agent_id_prefix)
        if args.json:
            print(json.dumps(_grant_json(grant)))
        else:
            print(f"granted {grant.grant_id}: {grant.daemon_address} may mint {grant.service} under "
                  f"{grant.scope_path or '(whole service)'} until {_iso(grant.expires_at)}, {grant.max_uses} use(s)")
        return 0

    return _with_master(args, run)


def _grant_revoke(args: argparse.Namespace) -> int:
    def run(client: Any) -> int:
        client.revoke(args.grant_id)
        print(f"revoked {args.grant_id}")
        return 0

    return _with_master(args, run)


def _grant_list(args: argparse.Namespace) -> int:
    def run(client: Any) -> int:
        grants = client.grants()
        if args.json:
            print(json.dumps({"omni_account": client.session.omni_account,
                              "grants": [_grant_json(g) for g in grants]}))
            return 0
        print(f"# master {client.address} omni_account {client.session.omni_account} "
              f"(namespace <bucket>/{client.session.omni_account}/)")
        if not grants:
            print("no grants")
        for g in grants:
            state = "revoked" if g.revoked_at else ("expired" if g.expires_at <= client.clock() else "active")
            pin = f" agent={g.agent_id}" if g.agent_id else (f" agent^={g.agent_id_prefix}" if g.agent_id_prefix else "")
            print(f"{g.grant_id}  {state:7}  {g.daemon_address}  {g.service}  {g.scope_path or '-'}  "
                  f"uses {g.used_count}/{g.max_uses}  until {_iso(g.expires_at)}{pin}")
        return 0

    return _with_master(args, run)


def _iso(unix: int) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- creds and exec ---------------------------------------------------------------------------------


def cached_credentials(args: argparse.Namespace) -> Any:
    """The credentials for (broker, wallet, agent, service, scope): from the cache while fresh, else
    minted once under the entry's lock (see api/credential_cache.py)."""
    from .client import BrokerError
    from .credential_cache import CredentialCache, cache_dir

    url, issuer, _ = resolve_broker(args.url, args.state_dir)
    cache = CredentialCache(cache_dir())
    try:
        address = _wallet_address(args)
        account = None
        if address is None:
            account = _account(args)
            address = account.address.lower()
        entry = cache.entry(url, address, args.agent_id, args.service, args.scope)

        def mint() -> Any:
            from .client import BrokerClient

            acct = account if account is not None else _account(args)
            with BrokerClient(url, acct, issuer=issuer, session_file=cache.session_file(url, address)) as client:
                return client.mint_aws(args.agent_id, args.service, args.scope)

        creds, minted = cache.get(entry, mint)
    except BrokerError as exc:
        raise _command_error(exc) from None
    except OSError as exc:
        raise CommandError(f"credential cache {cache.directory}: {exc.strerror or exc}", EXIT_USAGE) from None
    if minted:
        print(f"agentkeys-broker: minted {creds.access_key_id} (audit seq {creds.seq}, anchored by "
              f"{', '.join(creds.anchored) or 'none'}), valid until {creds.expiration_iso}", file=sys.stderr)
    return creds


def _creds(args: argparse.Namespace) -> int:
    creds = cached_credentials(args)
    sys.stdout.write(json.dumps(creds.credential_process()) + "\n")
    sys.stdout.flush()
    return 0


def _exec(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise CommandError("exec needs a command: agentkeys-broker exec [options] -- CMD [ARG...]", EXIT_USAGE)
    creds = cached_credentials(args)
    env = dict(os.environ)
    env.update(creds.environment())
    env.pop("AWS_PROFILE", None)  # a profile would send the SDK elsewhere (aws-vault does the same)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(cmd[0], cmd, env)  # noqa: S606  exec of the user's own command line is the purpose of this CLI
    except FileNotFoundError:
        raise CommandError(f"exec: command not found: {cmd[0]}", 127) from None
    except PermissionError:
        raise CommandError(f"exec: permission denied: {cmd[0]}", 126) from None
    return 0  # pragma: no cover - execvpe does not return


# --- demo -------------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(url=args.url, state_dir=args.state_dir)
