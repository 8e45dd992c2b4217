"""`agentkeys-broker projections rebuild|status` as a real subprocess."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from ledger.aggregates import WalletBinding
from ledger.app import Ledger
from ledger.config import LedgerConfig
from tests.conftest import cli_path

EVENTS = 300


@pytest.fixture(scope="module")
def ledger_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "ledger.sqlite"
    with Ledger(LedgerConfig(path)) as led:
        futures = []
        for i in range(EVENTS // 3):
            omni, master = f"omni-{i}", f"0x{i:040x}"
            futures.append(
                led.submit(WalletBinding.stream_for(omni, master), 0, WalletBinding(WalletBinding.stream_for(omni, master)).bind(
                    omni_account=omni, address=master, role="master", parent_address=None
                ))
            )
            for d in range(2):
                daemon = f"0xd{i:035x}{d:04x}"
                futures.append(
                    led.submit(
                        WalletBinding.stream_for(omni, daemon),
                        0,
                        WalletBinding(WalletBinding.stream_for(omni, daemon)).bind(
                            omni_account=omni, address=daemon, role="daemon", parent_address=master
                        ),
                    )
                )
        for f in futures:
            f.result()
        assert led.head().seq == EVENTS
    return path


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    return {**env, **extra}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [cli_path(), *args], capture_output=True, text=True, timeout=120, env=env if env is not None else clean_env()
    )


def wallet_rows(db: Path) -> list[tuple]:
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text("SELECT * FROM wallets ORDER BY bound_seq"))]
    finally:
        engine.dispose()


def test_rebuild_wallets_reports_progress_on_stderr(ledger_file: Path):
    proc = run("projections", "rebuild", "wallets", "--db", str(ledger_file), "--batch-size", "100")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    progress = re.findall(r"^rebuilt wallets: (\d+)/(\d+) events$", proc.stderr, re.M)
    assert progress and progress[-1] == (str(EVENTS), str(EVENTS))
    assert "to seq 300" in proc.stdout and "300 events" in proc.stdout

    db = ledger_file.parent / "projections.sqlite"  # default: beside the ledger
    rows = wallet_rows(db)
    assert len(rows) == EVENTS
    assert {r[2] for r in rows} == {"master", "daemon"}

    # Rebuilding again (over existing rows) gives the same table, with an explicit file too.
    other = ledger_file.parent / "elsewhere" / "p.sqlite"
    again = run("projections", "rebuild", "--db", str(ledger_file), "--projections-db", str(other))
    assert again.returncode == 0, again.stderr
    assert wallet_rows(other) == rows

    status = run("projections", "status", "--db", str(ledger_file))
    assert status.returncode == 0, status.stderr
    assert "wallets: seq 300, lag 0" in status.stdout


def test_paths_from_the_servers_environment(ledger_file: Path, tmp_path: Path):
    env = clean_env(BROKER_LEDGER_DB=str(ledger_file))
    proc = run("projections", "rebuild", "--projections-db", str(tmp_path / "p.sqlite"), env=env)
    assert proc.returncode == 0, proc.stderr
    assert len(wallet_rows(tmp_path / "p.sqlite")) == EVENTS

    # BROKER_PROJECTIONS_DB (as the server uses it) wins over "beside the ledger".
    env = clean_env(BROKER_LEDGER_DB=str(ledger_file), BROKER_PROJECTIONS_DB=str(tmp_path / "env.sqlite"))
    assert run("projections", "rebuild", "wallets", env=env).returncode == 0
    assert len(wallet_rows(tmp_path / "env.sqlite")) == EVENTS

    # BROKER_DATA_DIR/ledger.sqlite when nothing names the ledger.
    env = clean_env(BROKER_DATA_DIR=str(tmp_path / "empty-data-dir"))
    proc = run("projections", "rebuild", env=env)
    assert proc.returncode == 2
    assert f"ledger database not found: {tmp_path / 'empty-data-dir' / 'ledger.sqlite'}" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["projections", "rebuild", "nonsense"], "unknown projection 'nonsense' (known: wallets, grants, sessions, mints, "
                                                 "quarantine, auth_requests)"),
        (["projections", "rebuild", "wallets", "--db", "/nonexistent/ledger.sqlite"], "ledger database not found"),
    ],
)
def test_expected_failures_are_one_line_and_exit_2(ledger_file: Path, args, message):
    if "--db" not in args:
        args = [*args, "--db", str(ledger_file)]
    proc = run(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_not_a_ledger_file(tmp_path: Path):
    bogus = tmp_path / "bogus.sqlite"
    bogus.write_bytes(b"this is not sqlite at all" * 100)
    proc = run("projections", "rebuild", "--db", str(bogus))
    assert proc.returncode == 2
    assert "not a ledger database" in proc.stderr and "Traceback" not in proc.stderr
