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
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, out.stderr
    assert 'BOOT_FAIL: BROKER_LEDGER_BATCH_MAX="0": must be an integer in [1, 10000]; see runbook §ledger-batching' in lines[0]
