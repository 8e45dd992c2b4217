"""`agentkeys-broker demo` against a real `agentkeys-broker dev` (anvil, moto, the broker): exit 0,
one progress line per step with the ledger record's seq, and the records really are in the ledger."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.conftest import ROOT, cli_path
from tests.support import free_port


def test_demo_runs_end_to_end_against_dev(tmp_path: Path, subprocess_env) -> None:
    state = tmp_path / "state"
    port = free_port()
    env = {**subprocess_env, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    dev = subprocess.Popen([cli_path(), "dev", "--port", str(port), "--state-dir", str(state)], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert dev.poll() is None, dev.communicate()[1]
            try:
                if (state / "dev.json").exists() and httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "dev did not become ready"
            time.sleep(0.2)
        out = subprocess.run([cli_path(), "demo", "--state-dir", str(state)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "Traceback" not in out.stderr
        steps = [line for line in out.stdout.splitlines() if re.match(r"\[ ?\d+/9\] ", line)]
        assert len(steps) == 9 and not any("skipped" in s or "FAILED" in s for s in steps), out.stdout
        seqs = {name: int(m.group(1)) for name in ("SessionIssued", "GrantCreated", "MintAuthorized")
                for m in [re.search(rf"{name} seq (\d+)", out.stdout)] if m}
        assert set(seqs) == {"SessionIssued", "GrantCreated", "MintAuthorized"}, out.stdout
        assert "sqlite + evm confirmed it" in out.stdout
        assert "wrote s3://agentkeys-dev/" in out.stdout
        assert re.search(r"proof of the mint \(seq \d+\) verified against chain 84532", out.stdout)

        export = next((state / "demo").glob("*/ledger.jsonl"))
        records = {json.loads(line)["seq"]: json.loads(line) for line in export.read_text().splitlines()[1:]}
        assert records[seqs["MintAuthorized"]]["type"] == "MintAuthorized"
        assert records[seqs["GrantCreated"]]["type"] == "GrantCreated"
        grant = records[seqs["GrantCreated"]]["data"]
        master = re.search(r"omni_account ([0-9a-f]{64})", out.stdout).group(1)  # type: ignore[union-attr]
        assert grant["scope_path"].startswith(f"agentkeys-dev/{master}/")  # the master's own namespace
        for key in (state / "demo").glob("*/*.key"):
            assert key.stat().st_mode & 0o777 == 0o600
    finally:
        dev.send_signal(signal.SIGTERM)
        try:
            dev.wait(timeout=30)
        except subprocess.TimeoutExpired:
            dev.kill()
            dev.wait()


def test_demo_without_a_broker_says_how_to_start_one(tmp_path: Path, subprocess_env) -> None:
    out = subprocess.run([cli_path(), "demo", "--state-dir", str(tmp_path / "none")], cwd=tmp_path,
                         env=subprocess_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "agentkeys-broker dev" in out.stderr and out.stderr.count("\n") == 1
