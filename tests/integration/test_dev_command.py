"""`agentkeys-broker dev`: writes dev.json, serves, stops on SIGTERM/SIGINT."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, cli_path
from tests.support import broker_env, free_port


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_dev_writes_dev_json_serves_and_stops_on_signal(tmp_path: Path, sig: signal.Signals, subprocess_env) -> None:
    state = tmp_path / "state"
    port = free_port()
    proc = subprocess.Popen([cli_path(), "dev", "--port", str(port), "--state-dir", str(state)],
                            cwd=ROOT, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        info = None
        while time.monotonic() < deadline:
            if (state / "dev.json").exists():
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        info = json.loads((state / "dev.json").read_text())
                        break
                except httpx.HTTPError:
                    pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        assert info is not None, "dev did not come up"
        assert info["url"] == f"http://127.0.0.1:{port}"
        assert Path(info["ledger_db"]).exists() and Path(info["anchor_db"]).exists()
        assert info["pids"]["broker"] == proc.pid
        assert info["sts_endpoint"].startswith("http://127.0.0.1:")
        sts_pid = info["pids"]["sts"]
        ready = httpx.get(info["url"] + "/readyz")
        assert ready.status_code == 200, ready.text
        assert {"anchor/sqlite", "anchor/evm", "evm/chain_id", "evm/fee_payer", "sts"} <= set(ready.json()["ready"])
        assert info["chain_id"] == 84532 and info["contract_address"].startswith("0x") and info["pids"]["anvil"]
        if sig == signal.SIGTERM:  # a sign-in under dual_strict: released only once SQLite and the chain confirm
            from tests.support import Wallet, sign_in

            with httpx.Client(base_url=info["url"], timeout=30) as c:
                session = sign_in(c, Wallet())
            assert sorted(session["anchored"]) == ["evm", "sqlite"]
            # dev enables email_link with the printing sender and its own HMAC key file.
            assert "email_link" in info["auth_methods"] and "auth/email_link" in ready.json()["ready"]
            assert (Path(info["email_hmac_key"]).stat().st_mode & 0o777) == 0o600
            r = httpx.post(info["url"] + "/v1/auth/email/request", json={"email": "dev@example.com"}, timeout=30)
            assert r.status_code == 200, r.text
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0
        import os
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(sts_pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("dev left its moto server running")
        for _ in range(100):
            try:
                os.kill(info["pids"]["anvil"], 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("dev left anvil running")
        out, err = proc.communicate()
        assert "Traceback" not in err
        # issue 11: the state directory 0700, every file dev and its children wrote 0600 (dev.json, keys,
        # ledger, anchors, projections, EVM state, fee-payer keystore and password, anvil state, moto log)
        from tests.integration.test_file_modes import loose_modes

        assert {"dev.json", "ledger.sqlite", "session-keypair.json", "evm-anchor.sqlite"} <= {p.name for p in state.iterdir()}
        assert loose_modes(state) == []
        if sig == signal.SIGTERM:
            assert "/auth/email/landing#t=" in out and "#t=" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_with_a_bad_setting_exits_1_with_one_boot_fail_line(tmp_path: Path, subprocess_env) -> None:
    env = dict(subprocess_env, **broker_env(tmp_path), BROKER_LEDGER_BATCH_MAX="0")
    out = subprocess.run([cli_path(), "serve", "--port", str(free_port())], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert 'BOOT_FAIL: BROKER_LEDGER_BATCH_MAX="0": must be an integer in [1, 10000]; see runbook §ledger-batching' in lines[0]


def _start_dev(state: Path, env: dict[str, str], port: int | None = None) -> tuple[subprocess.Popen, dict, int]:
    """`dev` on a free port; returns the process, its dev.json and the port once /healthz answers."""
    port = port or free_port()
    dev_json = state / "dev.json"
    if dev_json.exists():
        dev_json.unlink()
    proc = subprocess.Popen([cli_path(), "dev", "--port", str(port), "--state-dir", str(state)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if dev_json.exists():
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    return proc, json.loads(dev_json.read_text()), port
            except httpx.HTTPError:
                pass
        if proc.poll() is not None:
            raise AssertionError(f"dev exited {proc.returncode}: {proc.communicate()[1]}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"dev did not come up: {proc.communicate()[1]}")


def _stop_dev(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.communicate()[1]


def test_dev_honours_broker_audit_policy_from_the_environment_and_ignores_what_it_owns(
        tmp_path: Path, subprocess_env) -> None:
    state = tmp_path / "state"
    elsewhere = tmp_path / "elsewhere.sqlite"
    env = dict(subprocess_env, BROKER_AUDIT_POLICY="sqlite_primary", BROKER_LEDGER_DB=str(elsewhere))
    proc, info, _ = _start_dev(state, env)
    try:
        assert info["audit_policy"] == "sqlite_primary"
        assert info["audit_anchors"] == ["sqlite", "evm"]
        assert info["ledger_db"] == str(state.resolve() / "ledger.sqlite")
        ready = httpx.get(info["url"] + "/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        from tests.support import Wallet, sign_in

        with httpx.Client(base_url=info["url"], timeout=30) as c:  # released on SQLite alone
            session = sign_in(c, Wallet())
        assert "sqlite" in session["anchored"]
    finally:
        err = _stop_dev(proc)
    assert not elsewhere.exists()
    assert "policy: sqlite_primary  anchors: sqlite,evm" in err
    warnings = [line for line in err.splitlines() if "ignoring BROKER_LEDGER_DB" in line]
    assert len(warnings) == 1, err
    assert "Traceback" not in err


def test_dev_keeps_its_default_policy_when_the_environment_has_none(tmp_path: Path, subprocess_env) -> None:
    from api.cli import dev_environment

    environ = {"BROKER_AUDIT_ANCHORS": "", "BROKER_STS_ENDPOINT_URL": "http://x", "PATH": "/bin",
               "DAEMON_ACCESS_KEY_ID": "real"}
    env, ignored = dev_environment(environ, owned={"BROKER_DATA_DIR": "/s"},
                                   defaults={"BROKER_AUDIT_POLICY": "dual_strict", "BROKER_AUDIT_ANCHORS": "sqlite,evm",
                                             "DAEMON_ACCESS_KEY_ID": "testing"})
    assert ignored == ["BROKER_STS_ENDPOINT_URL"]
    assert "BROKER_STS_ENDPOINT_URL" not in env
    assert env["BROKER_AUDIT_ANCHORS"] == ""  # present, even empty: the environment wins
    assert env["BROKER_AUDIT_POLICY"] == "dual_strict"
    assert env["BROKER_DATA_DIR"] == "/s" and env["PATH"] == "/bin"
    assert env["DAEMON_ACCESS_KEY_ID"] == "testing"  # the moto credentials are dev's


def _gone(pid: int, timeout: float = 15.0) -> bool:
    import os

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _rpc(url: str, method: str, params: list) -> object:
    return httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, timeout=10).json()["result"]


def test_dev_sigkilled_leaves_no_orphans_and_a_restart_continues_the_same_chain(tmp_path: Path, subprocess_env) -> None:
    """SIGKILL of `dev` takes anvil and moto with it (parent-death signal); the next `dev` on the same
    state directory continues the same chain and contract, so a proof taken before still verifies."""
    import sqlite3

    from tests.support import Wallet, sign_in

    state = tmp_path / "state"
    proc, info, port = _start_dev(state, subprocess_env)
    try:
        with httpx.Client(base_url=info["url"], timeout=30) as c:
            session = sign_in(c, Wallet())
        assert sorted(session["anchored"]) == ["evm", "sqlite"]
        genesis = _rpc(info["rpc_url"], "eth_getBlockByNumber", ["0x0", False])["hash"]
        bundle = tmp_path / "proof.json"
        prove = subprocess.run([cli_path(), "audit", "prove", "--seq", str(session["seq"]), "--db", info["ledger_db"],
                                "--rpc", info["rpc_url"], "--contract", info["contract_address"], "--out", str(bundle)],
                               cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=60)
        assert prove.returncode == 0, prove.stderr
        time.sleep(1.5)  # anvil writes its state file every second
        snap = tmp_path / "snap"  # an online backup of the running dev, keys included
        done = subprocess.run([cli_path(), "backup", "--out", str(snap), "--state-dir", str(state), "--include-keys"],
                              cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    finally:
        proc.kill()
        proc.wait(10)
    assert _gone(info["pids"]["anvil"]), "anvil outlived a SIGKILLed dev"
    assert _gone(info["pids"]["sts"]), "moto outlived a SIGKILLed dev"

    proc, again, _ = _start_dev(state, subprocess_env)
    try:
        assert again["contract_address"] == info["contract_address"]
        assert _rpc(again["rpc_url"], "eth_getBlockByNumber", ["0x0", False])["hash"] == genesis
        verify = subprocess.run([cli_path(), "audit", "verify-proof", str(bundle), "--rpc", again["rpc_url"],
                                 "--contract", again["contract_address"]],
                                cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        with httpx.Client(base_url=again["url"], timeout=30) as c:  # and it keeps anchoring on that chain
            assert sorted(sign_in(c, Wallet())["anchored"]) == ["evm", "sqlite"]
    finally:
        err = _stop_dev(proc)
    assert "Traceback" not in err
    conn = sqlite3.connect(f"file:{state / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        changes = [json.loads(r[0])["data"] for r in conn.execute(
            "SELECT e.state FROM stored_events e WHERE e.topic = 'AnchorContractChanged'")]
    finally:
        conn.close()
    assert len(changes) == 1 and changes[0]["genesis_hash"] == genesis and "reason" not in changes[0]

    # the snapshot restored into a new state directory: dev runs from it, on the same chain
    manifest = json.loads((snap / "manifest.json").read_text())
    assert {"anvil-state.json", "evm-anchor.sqlite", "keys/fee-payer.keystore.json"} <= set(manifest["files"])
    restored = tmp_path / "restored"
    done = subprocess.run([cli_path(), "restore", str(snap), "--state-dir", str(restored)],
                          cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    proc, third, _ = _start_dev(restored, subprocess_env)
    try:
        assert third["contract_address"] == info["contract_address"]
        assert _rpc(third["rpc_url"], "eth_getBlockByNumber", ["0x0", False])["hash"] == genesis
        verify = subprocess.run([cli_path(), "audit", "verify-proof", str(bundle), "--rpc", third["rpc_url"],
                                 "--contract", third["contract_address"]],
                                cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        with httpx.Client(base_url=third["url"], timeout=30) as c:
            assert sorted(sign_in(c, Wallet())["anchored"]) == ["evm", "sqlite"]
    finally:
        err = _stop_dev(proc)
    assert "Traceback" not in err


def test_dev_on_a_lost_chain_records_the_change_and_re_anchors(tmp_path: Path, subprocess_env) -> None:
    """The chain file is lost between two runs: the new chain has the contract at the same address,
    so only its genesis tells them apart; the change is recorded and the old records re-anchored."""
    import sqlite3

    from tests.support import Wallet, sign_in

    state = tmp_path / "state"
    proc, info, _ = _start_dev(state, subprocess_env)
    try:
        with httpx.Client(base_url=info["url"], timeout=30) as c:
            first = sign_in(c, Wallet())
    finally:
        _stop_dev(proc)
    (state / "anvil-state.json").unlink()
    proc, again, _ = _start_dev(state, subprocess_env)
    try:
        assert again["contract_address"] == info["contract_address"]  # same deployer, same nonce
        with httpx.Client(base_url=again["url"], timeout=30) as c:
            assert sorted(sign_in(c, Wallet())["anchored"]) == ["evm", "sqlite"]
        contract = again["contract_address"]
        last_seq = _rpc(again["rpc_url"], "eth_call", [{"to": contract, "data": "0x" + _selector("lastSeq()")}, "latest"])
        assert int(last_seq, 16) > first["seq"]  # the old records are anchored on the new chain too
    finally:
        _stop_dev(proc)
    conn = sqlite3.connect(f"file:{state / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        changes = [json.loads(r[0])["data"] for r in conn.execute(
            "SELECT e.state FROM stored_events e WHERE e.topic = 'AnchorContractChanged'")]
    finally:
        conn.close()
    assert [c.get("reason") for c in changes] == [None, "chain_changed"]
    assert changes[0]["genesis_hash"] != changes[1]["genesis_hash"]


def _selector(signature: str) -> str:
    from eth_utils import keccak

    return keccak(text=signature)[:4].hex()
