"""`examples/daemon_sign_in.py`, the program docs/daemon-guide.md walks through, run as a subprocess
against a live broker: if the guide's code stops working, this fails."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from api.config import BrokerConfig
from api.runtime import Services
from tests.conftest import ROOT
from tests.support import LiveServer, Wallet, broker_env

EXAMPLE = ROOT / "examples" / "daemon_sign_in.py"
DOMAIN = "broker.test.invalid"  # broker_env's BROKER_OIDC_ISSUER host: what the SIWE message names


def make_live(tmp_path: Path, **env: str) -> LiveServer:
    return LiveServer(Services.build(BrokerConfig.from_env(broker_env(tmp_path, **env))))


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveServer]:
    with make_live(tmp_path) as server:
        yield server


def run(live: LiveServer, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(EXAMPLE), "--broker-url", live.url, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def key_file(tmp_path: Path, wallet: Wallet, name: str = "daemon.key") -> Path:
    path = tmp_path / name
    path.write_text("0x" + bytes(wallet.account.key).hex() + "\n")
    path.chmod(0o600)
    return path


def events_of(live: LiveServer, type_name: str) -> list[dict]:
    return [r.data for r in live.services.ledger.read(0, 100000) if r.type == type_name]


def test_sign_in_with_a_key_file_prints_the_account_and_stores_the_session(live: LiveServer, tmp_path: Path) -> None:
    w = Wallet()
    session_file = tmp_path / "session.json"
    out = run(live, "--key-file", str(key_file(tmp_path, w)), "--expect-domain", DOMAIN,
              "--session-file", str(session_file))
    assert out.returncode == 0, out.stdout + out.stderr
    omni = hashlib.sha256(b"agentkeys" + b"evm" + w.address.encode()).hexdigest()
    assert f"omni_account: {omni}" in out.stdout
    assert f"wallet_address: {w.address}" in out.stdout
    assert "expires_at: " in out.stdout and "session: new" in out.stdout
    # the bearer credential goes to the 0600 file only, never to stdout
    assert "eyJ" not in out.stdout + out.stderr
    assert stat.S_IMODE(session_file.stat().st_mode) == 0o600
    stored = json.loads(session_file.read_text())
    claims = jwt.decode(stored["session_jwt"], options={"verify_signature": False})
    assert claims["exp"] == stored["expires_at"] and claims["agentkeys"]["wallet_address"] == w.address
    assert len(events_of(live, "SessionIssued")) == 1

    # run again: the stored session is still fresh, so nothing is signed or issued
    again = run(live, "--key-file", str(key_file(tmp_path, w, "same.key")), "--expect-domain", DOMAIN,
                "--session-file", str(session_file), "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    result = json.loads(again.stdout)
    assert result["reused"] is True and result["omni_account"] == omni
    assert result["expires_at"] == stored["expires_at"]
    assert len(events_of(live, "SessionIssued")) == 1


def test_a_session_due_for_renewal_is_replaced(live: LiveServer, tmp_path: Path) -> None:
    w = Wallet()
    session_file = tmp_path / "session.json"
    kf = key_file(tmp_path, w)
    assert run(live, "--key-file", str(kf), "--expect-domain", DOMAIN, "--session-file", str(session_file)).returncode == 0
    stale = json.loads(session_file.read_text())
    stale["expires_at"] = stale["obtained_at"] + 30  # inside the renewal margin
    session_file.write_text(json.dumps(stale))
    out = run(live, "--key-file", str(kf), "--expect-domain", DOMAIN, "--session-file", str(session_file), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["reused"] is False
    assert len(events_of(live, "SessionIssued")) == 2


def test_new_key_can_be_saved_and_reused(live: LiveServer, tmp_path: Path) -> None:
    saved = tmp_path / "new.key"
    out = run(live, "--new-key", "--save-key", str(saved), "--expect-domain", DOMAIN, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    first = json.loads(out.stdout)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    again = run(live, "--key-file", str(saved), "--expect-domain", DOMAIN, "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["omni_account"] == first["omni_account"]
    # --save-key never overwrites a key
    clash = run(live, "--new-key", "--save-key", str(saved), "--expect-domain", DOMAIN)
    assert clash.returncode == 2 and "cannot write" in clash.stderr


def test_refuses_to_sign_a_message_for_another_domain(live: LiveServer, tmp_path: Path) -> None:
    """By default the expected domain is the --broker-url host (127.0.0.1:port); the broker's issuer
    names broker.test.invalid, as a relaying broker would: the daemon signs nothing."""
    out = run(live, "--new-key")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "refusing to sign" in out.stderr and "broker.test.invalid" in out.stderr
    assert events_of(live, "AuthFailed") == [] and events_of(live, "SessionIssued") == []


def test_a_malformed_key_file_is_a_usage_error(live: LiveServer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    bad.chmod(0o600)
    out = run(live, "--key-file", str(bad), "--expect-domain", DOMAIN)
    assert out.returncode == 2 and "64 hex digits" in out.stderr
    missing = run(live, "--key-file", str(tmp_path / "nope.key"), "--expect-domain", DOMAIN)
    assert missing.returncode == 2 and "cannot read key file" in missing.stderr


def test_a_chain_the_broker_does_not_allow_is_a_400(live: LiveServer) -> None:
    out = run(live, "--new-key", "--expect-domain", DOMAIN, "--chain-id", "1")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "HTTP 400 bad_request (chain_id_not_allowed)" in out.stderr


def test_anchor_unavailable_is_retried_then_reported_as_temporary(tmp_path: Path) -> None:
    with make_live(tmp_path, BROKER_ANCHOR_DEADLINE_MS="200") as live:
        live.services.pump.stop()  # the anchor stops confirming: every session is withheld
        out = run(live, "--new-key", "--expect-domain", DOMAIN, "--retries", "1", "--max-wait", "5")
        assert out.returncode == 75, out.stdout + out.stderr
        assert "anchor_unavailable" in out.stderr and "retrying" in out.stderr
        assert "eyJ" not in out.stdout + out.stderr
        assert len(events_of(live, "SessionWithheld")) == 2  # two attempts, nothing released


def test_rate_limited_start_honours_retry_after_or_gives_up(tmp_path: Path) -> None:
    with make_live(tmp_path, BROKER_RATE_LIMIT_CHALLENGES_PER_HOUR_PER_IP="1") as live:
        assert run(live, "--new-key", "--expect-domain", DOMAIN).returncode == 0
        out = run(live, "--new-key", "--expect-domain", DOMAIN, "--max-wait", "5")
        assert out.returncode == 75, out.stdout + out.stderr
        assert "HTTP 429 rate_limited" in out.stderr and "exceeds --max-wait" in out.stderr
