"""`serve` and `dev`: the broker's HTTP process.

`serve` takes its configuration from `BROKER_*` variables (api/config.py), refuses to start on a
bad value with one `BOOT_FAIL` line (exit 1), and serves until SIGINT/SIGTERM.

`dev` runs everything locally under one state directory: it points every `BROKER_*` path there,
writes `DIR/dev.json` describing what it started, serves until SIGINT/SIGTERM, then stops every
child process it started (anvil, moto). A `BROKER_*` variable present in the environment wins
over dev's defaults (policy, anchors, ...), except what dev owns (`DEV_OWNED_VARIABLES`: ignored
with a warning).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("agentkeys.cli")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8091


def register(subparsers: Any) -> None:
    serve = subparsers.add_parser("serve", help="run the broker (configuration from BROKER_* env)")
    serve.add_argument("--host", default=DEFAULT_HOST)
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument("--skip-startup-check", action="store_true",
                       help="skip the startup STS GetCallerIdentity check (offline development)")
    serve.add_argument("--no-workers", action="store_true",
                       help="do not run the leased background jobs in this process (run `agentkeys-broker "
                            "workers` beside it); readiness probes and the anchor pump still run")
    serve.set_defaults(handler=_serve)
    workers = subparsers.add_parser("workers", help="run the scheduled jobs alone, on the broker's files "
                                                    "(configuration from BROKER_* env)",
                                    description="The leased background jobs of `serve` (anchor reconciliation, "
                                                "integrity, outcome sweep, quarantine, projections) without HTTP. "
                                                "Runs until SIGINT/SIGTERM.")
    workers.set_defaults(handler=_workers)

    dev = subparsers.add_parser("dev", help="run the broker with every local part under one state directory")
    dev.add_argument("--host", default=DEFAULT_HOST)
    dev.add_argument("--port", type=int, default=DEFAULT_PORT)
    dev.add_argument("--state-dir", default="./.agentkeys-dev", type=Path)
    dev.set_defaults(handler=_dev)


def _configure_logging() -> None:
    """`BROKER_LOG_LEVEL` / `BROKER_LOG_FORMAT` (api/logs.py); a bad value is one BOOT_FAIL line."""
    from ledger.errors import CommandError

    from .config import BootFailure, log_settings
    from .logs import configure

    try:
        level, fmt = log_settings(os.environ)
    except BootFailure as exc:
        raise CommandError(str(exc), code=1) from None
    configure(level, fmt)
    from .log_redaction import install

    install()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _boot(env: dict[str, str]):  # noqa: ANN202
    from ledger.errors import CommandError

    from .config import BootFailure, BrokerConfig
    from .runtime import Services

    try:
        config = BrokerConfig.from_env(env)
        services = Services.build(config)
    except BootFailure as exc:
        raise CommandError(str(exc), code=1) from None
    except Exception as exc:  # a store that cannot be opened is a boot failure, not a traceback
        raise CommandError(f"BOOT_FAIL: startup failed: {type(exc).__name__}: {exc}", code=1) from None
    from .file_modes import secure_state

    secure_state(config)  # data directory 0700, the broker's files 0600 (also those of older versions)
    return config, services


def _run_server(services: Any, host: str, port: int) -> None:
    import uvicorn

    from .app import create_app

    if not _is_loopback(host):
        log.warning(
            "broker is binding to a non-loopback address (%s) without TLS. Bearer tokens and minted AWS "
            "credentials would traverse the network in cleartext. Terminate TLS at a reverse proxy "
            "(nginx, ALB, Traefik) before exposing the broker.", host)
    class _Server(uvicorn.Server):
        """Graceful stop on SIGINT/SIGTERM, then a normal return (uvicorn would re-raise the
        signal and kill the process before the caller stops its children)."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                self.should_exit = True

    app = create_app(services)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, proxy_headers=False,
                            log_config=None,  # keep the broker's one format (api/logs.py)
                            timeout_graceful_shutdown=services.config.shutdown_grace_s)
    _Server(config).run()


def _startup_check(services: Any, skip: bool) -> None:
    """Seed §F.2 step 6: the broker's own AWS identity works before it binds."""
    from ledger.errors import CommandError

    from .sts import StartupCheckFailed, startup_check

    for notice in services.config.sts.deprecations:
        log.warning("%s", notice)
    if skip:
        log.warning("startup STS check skipped (--skip-startup-check)")
        return
    try:
        arn = startup_check(services.minter)
    except StartupCheckFailed as exc:
        services.ledger.close()
        raise CommandError(str(exc), code=1) from None
    log.info("STS identity: %s", arn)


def _serve(args: argparse.Namespace) -> int:
    _configure_logging()
    _, services = _boot(dict(os.environ))
    services.workers = not args.no_workers
    _startup_check(services, args.skip_startup_check)
    _run_server(services, args.host, args.port)
    return 0


def _workers(args: argparse.Namespace) -> int:
    import threading

    _configure_logging()
    _, services = _boot(dict(os.environ))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        services.start_workers_only()
        log.info("workers running on %s (stop with SIGINT/SIGTERM)", services.config.data_dir)
        stop.wait()
    finally:
        services.stop()
    return 0


def _dev(args: argparse.Namespace) -> int:
    from ledger.errors import CommandError

    _configure_logging()
    state_dir: Path = args.state_dir.expanduser().resolve()
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise CommandError(f"cannot create state directory {state_dir}: {exc.strerror}") from None
    env = dict(os.environ)
    from .moto_server import MotoServer, bootstrap_dev_aws, dev_broker_env

    children: list[Any] = []  # every child process dev starts; stopped on the way out, whatever happens
    try:
        moto = MotoServer.start(log_path=state_dir / "moto.log")
    except Exception as exc:
        raise CommandError(f"cannot start the local AWS (moto) server: {exc}", code=1) from None
    children.append(moto)
    try:
        return _dev_with_children(args, state_dir, env, children, moto, bootstrap_dev_aws, dev_broker_env)
    finally:
        for child in reversed(children):
            try:
                child.stop()
            except Exception:  # pragma: no cover - best effort on the way out
                log.exception("could not stop %s", child)


def _dev_with_children(args: argparse.Namespace, state_dir: Path, env: dict[str, str], children: list[Any],
                       moto: Any, bootstrap_dev_aws: Any, dev_broker_env: Any) -> int:
    from .keys import dev_keyfile

    aws = bootstrap_dev_aws(moto.endpoint)
    owned: dict[str, str] = {}
    defaults: dict[str, str] = {}
    for name, value in dev_broker_env(aws).items():
        (owned if name in DEV_OWNED_VARIABLES else defaults)[name] = value
    chain = start_dev_chain(state_dir, children)
    for name, value in chain["env"].items():
        (owned if name in DEV_OWNED_VARIABLES else defaults)[name] = value

    url = f"http://{args.host}:{args.port}"
    owned.update({
        "BROKER_OIDC_ISSUER": url,
        "BROKER_OIDC_KEYPAIR_PATH": str(dev_keyfile(state_dir, "oidc")),
        "BROKER_SESSION_KEYPAIR_PATH": str(dev_keyfile(state_dir, "session")),
        "BROKER_DATA_DIR": str(state_dir),
        "BROKER_LEDGER_DB": str(state_dir / "ledger.sqlite"),
        "BROKER_SQLITE_ANCHOR_DB": str(state_dir / "anchor.sqlite"),
        "BROKER_PROJECTIONS_DB": str(state_dir / "projections.sqlite"),
    })
    defaults.update({
        "BROKER_AUDIT_ANCHORS": "sqlite,evm",
        "BROKER_AUDIT_POLICY": "dual_strict",
        "BROKER_DEV_MODE": "true",
    })
    # email magic link in dev (issue 16): on, with the printing sender, unless the environment says
    # otherwise; the HMAC key is dev's own file, like the signing keys.
    from .signin_config import write_key_file

    email_key = state_dir / "email-hmac.key"
    if not email_key.exists():
        write_key_file(email_key)
    owned["BROKER_EMAIL_HMAC_KEY_PATH"] = str(email_key)
    defaults.update({"BROKER_AUTH_METHODS": "wallet_sig,email_link", "BROKER_EMAIL_SENDER": "print"})
    env, ignored = dev_environment(env, owned=owned, defaults=defaults)
    for name in ignored:
        log.warning("dev: ignoring %s from the environment: dev owns it (set by dev under --state-dir)", name)
    config, services = _boot(env)
    info: dict[str, Any] = {
        "url": url,
        "state_dir": str(state_dir),
        "ledger_db": str(config.ledger_db),
        "anchor_db": str(config.anchor_db),
        "projections_db": str(config.projections_db),
        "issuer": config.issuer,
        "oidc_keypair": str(config.oidc_keypair_path),
        "session_keypair": str(config.session_keypair_path),
        "rpc_url": chain["rpc_url"],
        "chain_id": chain["chain_id"],
        "contract_address": chain["contract_address"],
        "evm_state_db": str(config.evm.state_path) if config.evm else None,
        "sts_endpoint": aws["sts_endpoint"],
        "aws": aws,
        "audit_policy": config.audit_policy,
        "audit_anchors": list(config.anchors),
        "pids": {"broker": os.getpid(), "sts": moto.pid, "anvil": chain["pid"]},
        "auth_methods": list(config.auth_methods),
        "email_hmac_key": str(email_key),
    }
    dev_json = state_dir / "dev.json"
    tmp = dev_json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, dev_json)
    print(
        f"AgentKeys broker (dev) on {url}\n"
        f"  state:  {state_dir}  (described in {dev_json})\n"
        f"  policy: {config.audit_policy}  anchors: {','.join(config.anchors)}\n"
        f"  try:    curl {url}/readyz ; curl {url}/v1/audit/head\n"
        f"  audit:  agentkeys-broker audit verify --db {config.ledger_db} --anchor-db {config.anchor_db}\n"
        f"  docs:   {url}/schema  (OpenAPI)\n"
        f"  chain:  anvil {chain['rpc_url']} (chain id {chain['chain_id']}), AuditAnchor {chain['contract_address']}\n"
        f"  aws:    moto {aws['sts_endpoint']} (STS, IAM, S3 bucket {aws['bucket']})\n"
        f"  first run, in another terminal:  agentkeys-broker demo --state-dir {state_dir}\n"
        f"  email:  curl -XPOST {url}/v1/auth/email/request -d '{{\"email\":\"you@example.com\"}}'"
        "  (the link is printed here)\n"
        "  stop:   Ctrl-C",
        file=sys.stderr, flush=True,
    )
    _startup_check(services, skip=False)
    _run_server(services, args.host, args.port)
    return 0


#: What `dev` owns (design §8 "Files and commands"): the paths, keys, issuer, RPC/contract and STS
#: endpoint it sets up under its state directory. Present in the environment, they are ignored with
#: a warning; every other `BROKER_*` variable present (even empty) wins over dev's defaults.
DEV_OWNED_VARIABLES: frozenset[str] = frozenset({
    "BROKER_EMAIL_HMAC_KEY_PATH",
    "BROKER_DATA_DIR", "BROKER_LEDGER_DB", "BROKER_SQLITE_ANCHOR_DB", "BROKER_PROJECTIONS_DB",
    "BROKER_DATABASE_URL", "BROKER_SPILL_PATH", "BROKER_EVM_STATE_DB",
    "BROKER_OIDC_KEYPAIR_PATH", "BROKER_SESSION_KEYPAIR_PATH",
    "BROKER_EVM_FEE_PAYER_KEYSTORE", "BROKER_EVM_FEE_PAYER_PASSWORD_FILE",
    "BROKER_OIDC_ISSUER",
    "BROKER_EVM_RPC_URL", "BROKER_EVM_CHAIN_ID", "BROKER_EVM_CONTRACT_ADDRESS",
    "BROKER_STS_ENDPOINT_URL",
})


def dev_environment(environ: dict[str, str], *, owned: dict[str, str],
                    defaults: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The environment `dev` boots the broker with, and the names it ignored.

    `owned` values always apply (a variable of `DEV_OWNED_VARIABLES` present in `environ` is
    dropped and named in the second result, even if dev sets no value for it, so the broker falls
    back to its default under the state directory); a `BROKER_*` variable present in `environ`, even
    empty, wins over `defaults`; other defaults (the moto credentials `DAEMON_*`) always apply."""
    env = dict(environ)
    ignored = sorted(name for name in env if name in DEV_OWNED_VARIABLES)
    for name in ignored:
        del env[name]
    env.update(owned)
    for name, value in defaults.items():
        if name.startswith("BROKER_"):
            env.setdefault(name, value)
        else:
            env[name] = value
    return env, ignored


def start_dev_chain(state_dir: Path, children: list[Any]) -> dict[str, Any]:
    """anvil (chain id 84532, automine) from node_modules, its chain kept in
    `<state_dir>/anvil-state.json` (`--state`, written every second, so a restart — even after a
    SIGKILL — continues the same chain), a fee-payer keystore in the state directory, and the
    AuditAnchor the EVM anchor's state file names, reused when the chain still holds it; else a
    freshly deployed one whose submitter is that fee payer (a lost chain: the EVM anchor sees the
    new genesis, records `AnchorContractChanged{chain_changed}` and re-anchors in full batches)."""
    from anchors.chain_tools import deploy
    from anchors.dev_chain import Anvil
    from anchors.evm_keys import write_keystore
    from ledger.errors import CommandError

    anvil_state = state_dir / "anvil-state.json"
    try:
        node = Anvil("--state", str(anvil_state), "--state-interval", "1").start()
    except Exception as exc:
        raise CommandError(f"cannot start anvil (run `make install`; node_modules holds it): {exc}", code=1) from None
    children.append(node)
    password_file = state_dir / "fee-payer.password"
    keystore = state_dir / "fee-payer.keystore.json"
    if not password_file.exists():
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(16).hex())
    fee_payer_key = node.private_keys[0]
    if keystore.exists():
        keystore.unlink()
    write_keystore(keystore, password_file.read_text().strip(), fee_payer_key, kdf="pbkdf2", iterations=1000)
    evm_state = state_dir / "evm-anchor.sqlite"
    w3 = node.web3()
    address = _dev_contract_in_use(w3, evm_state)
    if address is None:
        from eth_account import Account

        fee_payer = Account.from_key(fee_payer_key)
        address = deploy(w3, fee_payer, fee_payer.address).address
        held = _dev_evm_state_contract(evm_state)
        if held is not None and held != address.lower():  # bound to another address: cannot continue it
            for suffix in ("", "-wal", "-shm", ".lock"):
                old = Path(str(evm_state) + suffix)
                if old.exists():
                    old.rename(Path(str(old) + ".previous-chain"))
        log.info("dev: deployed AuditAnchor at %s", address)
    else:
        log.info("dev: continuing the chain in %s (AuditAnchor %s)", anvil_state, address)
    deployment_address = address
    return {
        "rpc_url": node.rpc_url,
        "chain_id": node.chain_id,
        "contract_address": deployment_address,
        "anvil_state": str(anvil_state),
        "pid": node.pid,
        "env": {
            "BROKER_EVM_RPC_URL": node.rpc_url,
            "BROKER_EVM_CHAIN_ID": str(node.chain_id),
            "BROKER_EVM_CONTRACT_ADDRESS": deployment_address,
            "BROKER_EVM_FEE_PAYER_KEYSTORE": str(keystore),
            "BROKER_EVM_FEE_PAYER_PASSWORD_FILE": str(password_file),
            "BROKER_EVM_CONFIRMATIONS": "0",  # automine: a receipt is final on this local chain
            "BROKER_EVM_BATCH_MAX_WAIT_MS": "200",
            "BROKER_EVM_STATE_DB": str(evm_state),
        },
    }


def _dev_evm_state_contract(evm_state: Path) -> str | None:
    """The contract address an EVM anchor state file is bound to (None: no file or no binding)."""
    import sqlite3

    if not evm_state.is_file():
        return None
    try:
        conn = sqlite3.connect(f"{evm_state.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT value FROM evm_meta WHERE key = 'contract'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return str(row[0]).lower() if row else None


def _dev_contract_in_use(w3: Any, evm_state: Path) -> str | None:
    """The state file's contract if this chain holds an AuditAnchor there (a restarted `dev`)."""
    from anchors.chain_tools import code_matches_artifact

    held = _dev_evm_state_contract(evm_state)
    if held is None:
        return None
    from web3 import Web3

    address = Web3.to_checksum_address(held)
    try:
        return address if code_matches_artifact(w3, address) else None
    except Exception:  # an unreadable chain: deploy afresh
        return None
