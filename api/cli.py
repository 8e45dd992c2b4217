"""`serve` and `dev`: the broker's HTTP process.

`serve` takes its configuration from `BROKER_*` variables (api/config.py), refuses to start on a
bad value with one `BOOT_FAIL` line (exit 1), and serves until SIGINT/SIGTERM.

`dev` runs everything locally under one state directory: it points every `BROKER_*` path there,
writes `DIR/dev.json` describing what it started, serves until SIGINT/SIGTERM, then stops every
child process it started. Later parts (anvil, moto) add themselves as children.
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
    env.update(dev_broker_env(aws))
    chain = start_dev_chain(state_dir, children)
    env.update(chain["env"])

    url = f"http://{args.host}:{args.port}"
    env.update({
        "BROKER_OIDC_ISSUER": url,
        "BROKER_OIDC_KEYPAIR_PATH": str(dev_keyfile(state_dir, "oidc")),
        "BROKER_SESSION_KEYPAIR_PATH": str(dev_keyfile(state_dir, "session")),
        "BROKER_DATA_DIR": str(state_dir),
        "BROKER_LEDGER_DB": str(state_dir / "ledger.sqlite"),
        "BROKER_SQLITE_ANCHOR_DB": str(state_dir / "anchor.sqlite"),
        "BROKER_PROJECTIONS_DB": str(state_dir / "projections.sqlite"),
        "BROKER_AUDIT_ANCHORS": "sqlite,evm",
        "BROKER_AUDIT_POLICY": "dual_strict",
        "BROKER_DEV_MODE": "true",
    })
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
        "pids": {"broker": os.getpid(), "sts": moto.pid, "anvil": chain["pid"]},
    }
    dev_json = state_dir / "dev.json"
    tmp = dev_json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, dev_json)
    print(
        f"AgentKeys broker (dev) on {url}\n"
        f"  state:  {state_dir}  (described in {dev_json})\n"
        f"  try:    curl {url}/readyz ; curl {url}/v1/audit/head\n"
        f"  audit:  agentkeys-broker audit verify --db {config.ledger_db} --anchor-db {config.anchor_db}\n"
        f"  docs:   {url}/schema  (OpenAPI)\n"
        "  stop:   Ctrl-C",
        file=sys.stderr, flush=True,
    )
    _startup_check(services, skip=False)
    _run_server(services, args.host, args.port)
    return 0


def start_dev_chain(state_dir: Path, children: list[Any]) -> dict[str, Any]:
    """anvil (chain id 84532, automine) from node_modules, a fee-payer keystore in the state
    directory, and a freshly deployed AuditAnchor whose submitter is that fee payer. A new chain
    each run, so the anchor's bookkeeping file from a previous run is moved aside."""
    from ledger.errors import CommandError

    from anchors.chain_tools import deploy
    from anchors.dev_chain import Anvil
    from anchors.evm_keys import write_keystore

    try:
        node = Anvil().start()
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
    deployment = deploy(node.web3(), fee_payer_key, node.accounts[0].address if hasattr(node.accounts[0], "address") else node.accounts[0])
    evm_state = state_dir / "evm-anchor.sqlite"
    for suffix in ("", "-wal", "-shm", ".lock"):
        old = Path(str(evm_state) + suffix)
        if old.exists():
            old.rename(Path(str(old) + ".previous-chain"))
    return {
        "rpc_url": node.rpc_url,
        "chain_id": node.chain_id,
        "contract_address": deployment.address,
        "pid": node.pid,
        "env": {
            "BROKER_EVM_RPC_URL": node.rpc_url,
            "BROKER_EVM_CHAIN_ID": str(node.chain_id),
            "BROKER_EVM_CONTRACT_ADDRESS": deployment.address,
            "BROKER_EVM_FEE_PAYER_KEYSTORE": str(keystore),
            "BROKER_EVM_FEE_PAYER_PASSWORD_FILE": str(password_file),
            "BROKER_EVM_CONFIRMATIONS": "0",  # automine: a receipt is final on this local chain
            "BROKER_EVM_BATCH_MAX_WAIT_MS": "200",
            "BROKER_EVM_STATE_DB": str(evm_state),
        },
    }
