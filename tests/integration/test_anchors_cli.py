"""`agentkeys-broker anchors keystore|deploy|status` as real subprocesses against anvil.

The operator's path end to end: create the fee payer's keystore, deploy the contract with it,
run a ledger whose records the anchor pump feeds to the SQLite anchor and the EVM anchor (the
keystore-loaded fee payer), then `anchors status` over the three files and the chain. Expected
failures are one line on stderr with exit 2 (usage, I/O) or 1 (a check failed), never a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from anchors.evm import EvmAnchor, EvmAnchorConfig, check_contiguity
from tests.conftest import cli_path
from tests.support import free_port
from tests.support_anvil import Anvil


@pytest.fixture(scope="module")
def node() -> Iterator[Anvil]:
    n = Anvil().start()
    try:
        yield n
    finally:
        if n.pid:
            os.kill(n.pid, signal.SIGKILL)
        n.stop()


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([cli_path(), "anchors", *args], capture_output=True, text=True, timeout=timeout,
                          env=env or dict(os.environ))


def one_line_error(p: subprocess.CompletedProcess[str], code: int) -> str:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("agentkeys-broker: error: "), p.stderr
    assert "Traceback" not in p.stderr
    return lines[0]


def secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture(scope="module")
def keys(node: Anvil, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli-keys")
    pw = secret(d / "password", "hunter2 but longer\n")
    key = secret(d / "key.hex", node.private_keys[1] + "\n")
    ks = d / "fee-payer.json"
    p = run("keystore", "--out", str(ks), "--password-file", str(pw), "--private-key-file", str(key))
    assert p.returncode == 0, p.stderr
    assert f"address: {node.accounts[1].address}" in p.stdout
    assert node.private_keys[1][2:] not in p.stdout + p.stderr
    assert oct(ks.stat().st_mode & 0o777) == "0o600"
    return {"dir": d, "password": pw, "keystore": ks}


def test_keystore_refusals(keys: dict[str, Path], tmp_path: Path) -> None:
    line = one_line_error(run("keystore", "--out", str(keys["keystore"]), "--password-file", str(keys["password"])), 2)
    assert "already exists" in line
    loose = secret(tmp_path / "loose-pw", "pw\n", 0o644)
    line = one_line_error(run("keystore", "--out", str(tmp_path / "k.json"), "--password-file", str(loose)), 2)
    assert "accessible by group or other" in line and not (tmp_path / "k.json").exists()
    bad_key = secret(tmp_path / "bad.hex", "0x1234\n")
    line = one_line_error(run("keystore", "--out", str(tmp_path / "k2.json"), "--password-file", str(keys["password"]),
                              "--private-key-file", str(bad_key)), 2)
    assert "not a valid" in line and not (tmp_path / "k2.json").exists()
    # a new random key
    p = run("keystore", "--out", str(tmp_path / "new.json"), "--password-file", str(keys["password"]))
    assert p.returncode == 0 and p.stdout.startswith("address: 0x"), p.stderr


def test_deploy_refusals(node: Anvil, keys: dict[str, Path]) -> None:
    base = ["deploy", "--keystore", str(keys["keystore"]), "--password-file", str(keys["password"])]
    line = one_line_error(run(*base, "--rpc", node.rpc_url, "--chain-id", "8453"), 1)
    assert "chain id 84532, expected 8453" in line
    line = one_line_error(run(*base, "--rpc", f"http://127.0.0.1:{free_port()}"), 2)
    assert "connection refused" in line
    line = one_line_error(run(*base, "--rpc", node.rpc_url, "--submitter", "nope"), 2)
    assert "not an address" in line


def test_keystore_deploy_anchor_status(node: Anvil, keys: dict[str, Path], tmp_path: Path) -> None:
    from anchors.sqlite import SQLiteAnchor
    from ledger.anchoring import AnchorPump, ConfirmationWaiter
    from ledger.app import Ledger
    from ledger.config import LedgerConfig
    from ledger.events import WalletBound

    p = run("deploy", "--rpc", node.rpc_url, "--keystore", str(keys["keystore"]), "--password-file",
            str(keys["password"]), "--chain-id", "84532")
    assert p.returncode == 0, p.stderr
    env_line = p.stdout.strip().splitlines()[-1]
    assert env_line.startswith("BROKER_EVM_CONTRACT_ADDRESS=0x")
    address = env_line.split("=", 1)[1]
    assert f"AuditAnchor deployed at {address}" in p.stdout
    assert bytes(node.web3().eth.get_code(address))

    # the broker side: ledger -> pump -> sqlite + evm anchors (fee payer from the keystore)
    ledger_db, sqlite_db, evm_db = tmp_path / "ledger.sqlite", tmp_path / "anchor.sqlite", tmp_path / "evm.sqlite"
    ledger = Ledger(LedgerConfig(ledger_db))
    sqlite_anchor = SQLiteAnchor(sqlite_db)
    evm = EvmAnchor(EvmAnchorConfig(
        rpc_url=node.rpc_url, contract_address=address, fee_payer_keystore=keys["keystore"],
        fee_payer_password_file=keys["password"], state_path=evm_db, confirmations=0, batch_max=7,
        batch_max_wait_ms=50, poll_interval_s=0.02, rpc_timeout_s=2))
    evm.start()
    pump = AnchorPump(ledger, [sqlite_anchor, evm], waiter=ConfirmationWaiter(), poll_interval_s=0.05)
    try:
        with pump:
            for i in range(30):
                ledger.append(uuid.uuid4(), 0, [WalletBound(omni_account="ab" * 32, address=f"0x{i:040x}", role="master")])
            deadline = time.monotonic() + 20
            while evm.confirmed_upto() < 30 or sqlite_anchor.confirmed_upto() < 30:
                assert time.monotonic() < deadline, evm.worker_status()
                time.sleep(0.02)
        assert check_contiguity(evm.batches()) == []
        local_firsts = [b["first_seq"] for b in evm.batches()]
    finally:
        evm.close()
        sqlite_anchor.close()
        ledger.close()

    files = ["--ledger-db", str(ledger_db), "--sqlite-anchor-db", str(sqlite_db), "--evm-state-db", str(evm_db)]
    p = run("status", *files, "--rpc", node.rpc_url)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "ledger: head seq 30" in p.stdout
    assert "sqlite anchor: confirmed up to 30 (lag 0)" in p.stdout
    assert "evm anchor: accepted up to 30, confirmed up to 30 (lag 0)" in p.stdout
    assert "contiguous" in p.stdout and "NOT CONTIGUOUS" not in p.stdout
    assert p.stdout.strip().endswith("OK")

    p = run("status", *files, "--rpc", node.rpc_url, "--contract", address, "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["problems"] == []
    chain = report["chain"]
    assert (chain["start_seq"], chain["last_seq"], chain["contiguous"]) == (1, 30, True)
    # where batches split depends on timing (a 50 ms age limit under load); what must hold: the chain
    # holds exactly the batches the anchor cut, none larger than batch_max, covering 1..30
    firsts = [b["first_seq"] for b in chain["batches"]]
    assert firsts == local_firsts and firsts[0] == 1 and chain["batch_count"] == len(firsts) >= 5
    assert all(b - a <= 7 for a, b in zip(firsts, firsts[1:] + [31], strict=False))
    assert chain["fee_payer"] == node.accounts[1].address and int(chain["fee_payer_balance_wei"]) > 0
    assert report["anchors"]["evm"]["pending_batches"] == []

    # without the chain: local files only
    p = run("status", "--evm-state-db", str(evm_db), "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["anchors"]["evm"]["confirmed_upto"] == 30

    # a chain behind what the anchor recorded as confirmed (e.g. a reorg deeper than its window)
    node.rpc("anvil_reorg", [3, []])  # drops the last anchor transactions
    p = run("status", *files, "--rpc", node.rpc_url)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "PROBLEM: chain: lastSeq() is" in p.stdout and "below the EVM anchor's confirmed_upto 30" in p.stdout


def test_status_usage_errors(tmp_path: Path) -> None:
    one_line_error(run("status"), 2)
    line = one_line_error(run("status", "--evm-state-db", str(tmp_path / "missing.sqlite")), 2)
    assert "no such file" in line
    line = one_line_error(run("status", "--ledger-db", str(tmp_path / "missing.sqlite")), 2)
    assert "no such file" in line
    one_line_error(run("status", "--rpc", "http://127.0.0.1:1"), 2)  # no contract known
