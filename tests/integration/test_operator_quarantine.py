"""Quarantine handling end to end (design §3 "Quarantine", §8 "Operator wire", "Operators"):
under `sqlite_primary` with anvil stopped, released mints are quarantined past the confirm
deadline; each action (accept, revoke, reanchor) is taken once through the API and once through
the CLI; a second resolve is 409 `case_closed`; the kill switch is read back from IAM (moto); the
worker closes the re-anchors once the chain is back; the resolutions are in the ledger, which
still verifies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from api.moto_server import DEV_ROLE_NAME, aws_client
from ledger.ports import KILL_SWITCH_POLICY_NAME
from tests.conftest import cli_path
from tests.integration.test_mint import Broker, auth
from tests.integration.test_mint_evm import chain, evm_broker  # noqa: F401  (fixture)
from tests.support import Wallet, sign_in, signed_mint_body
from tests.support_moto import sts_env
from workers.jobs import quarantine

TOKEN = "op-" + "k" * 40


def _token_file(tmp_path: Path) -> Path:
    path = tmp_path / "operator.token"
    path.write_text(TOKEN)
    path.chmod(0o600)
    return path


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([cli_path(), "quarantine", *args], env=env, capture_output=True, text=True, timeout=120)


def _kill_switch_time(dev_aws: dict) -> str:
    iam = aws_client("iam", dev_aws["sts_endpoint"], dev_aws["region"])
    doc = iam.get_role_policy(RoleName=DEV_ROLE_NAME, PolicyName=KILL_SWITCH_POLICY_NAME)["PolicyDocument"]
    if isinstance(doc, str):
        from urllib.parse import unquote

        doc = json.loads(unquote(doc))
    [statement] = doc["Statement"]
    assert statement["Effect"] == "Deny" and statement["Action"] == "*"
    return statement["Condition"]["DateLessThan"]["aws:TokenIssueTime"]


def test_quarantined_mints_resolved_by_each_action_through_api_and_cli(tmp_path: Path, dev_aws, chain) -> None:  # noqa: F811
    operator_wallet = Wallet()
    env = dict(BROKER_AUDIT_POLICY="sqlite_primary", BROKER_EVM_CONFIRM_DEADLINE_SECONDS="10",
               BROKER_OPERATOR_TOKEN_FILE=str(_token_file(tmp_path)), BROKER_OPERATOR_WALLETS=operator_wallet.address)
    with evm_broker(tmp_path, dev_aws, chain, **env) as server:
        services = server.services
        b = Broker(server)
        w = Wallet()
        jwt = b.session(w)
        op_jwt = sign_in(b.client, operator_wallet)["session_jwt"]
        os.kill(chain["pid"], signal.SIGSTOP)
        try:
            seqs = []
            for _ in range(6):
                r = b.mint(jwt, signed_mint_body(w))
                assert r.status_code == 200 and r.json()["anchored"] == ["sqlite"], r.text
                seqs.append(r.json()["seq"])
            evm = services.anchor("evm")
            opened = quarantine.run(ledger=services.ledger, async_anchors=[("evm", evm.confirmed_upto)],
                                    deadline_s=10, now=lambda: time.time() + 11).opened
            assert opened == [f"q-{s}" for s in seqs]
            api_accept, api_revoke, api_reanchor, cli_accept, cli_revoke, cli_reanchor = opened

            # never anonymous; a daemon's session is not an operator's
            url = server.url + "/v1/operator/quarantine"
            assert httpx.get(url).status_code == 401
            stranger = httpx.get(url, headers=auth(jwt))
            assert stranger.status_code == 403 and stranger.json()["reason"] == "not_operator"
            assert httpx.get(url, headers=auth("op-" + "x" * 40)).status_code == 401
            listed = httpx.get(url, headers=auth(TOKEN)).json()["cases"]
            assert [c["case_id"] for c in listed] == opened
            first = listed[0]
            assert first["status"] == "open" and first["reason"] == "anchor_deadline"
            assert first["wallet"] == w.address and first["access_key_id"].startswith("ASIA")
            assert first["authorized_seq"] == seqs[0] and first["history"][0]["type"] == "MintQuarantined"
            # the mints read model shows them quarantined, with the anchor status computed now
            mints = httpx.get(server.url + "/v1/operator/mints", headers=auth(TOKEN)).json()["mints"]
            quarantined = {m["authorized_seq"]: m for m in mints if m["status"] == "quarantined"}
            assert set(quarantined) == set(seqs)
            assert quarantined[seqs[0]]["anchors"] == {"sqlite": True, "evm": False}

            # --- through the API ---------------------------------------------------------------
            def resolve(case_id: str, action: str, credential: str) -> httpx.Response:
                return httpx.post(f"{server.url}/v1/operator/quarantine/{case_id}/resolve", headers=auth(credential),
                                  json={"action": action, "reason": f"{action} after review"}, timeout=30)

            assert resolve(api_accept, "accept", jwt).status_code == 403  # a stranger cannot resolve
            r = resolve(api_accept, "accept", TOKEN)
            assert r.status_code == 200 and r.json()["status"] == "resolved" and r.json()["seq"] > seqs[-1], r.text
            again = resolve(api_accept, "revoke", TOKEN)
            assert again.status_code == 409 and again.json()["reason"] == "case_closed"
            r = resolve(api_revoke, "revoke", TOKEN)
            assert r.status_code == 200, r.text
            api_kill_time = _kill_switch_time(dev_aws)
            r = resolve(api_reanchor, "reanchor", op_jwt)
            assert r.status_code == 202 and r.json() == {"case_id": api_reanchor, "status": "reanchoring"}
            assert resolve(api_reanchor, "accept", TOKEN).json()["reason"] == "case_closed"
            assert resolve("q-999999", "accept", TOKEN).status_code == 404
            assert resolve(cli_accept, "delete", TOKEN).status_code == 400

            # --- through the CLI -----------------------------------------------------------------
            cli_env = {**os.environ, **sts_env(dev_aws), "BROKER_LEDGER_DB": str(services.config.ledger_db),
                       "BROKER_PROJECTIONS_DB": str(services.config.projections_db)}
            out = _cli(cli_env, "list")
            assert out.returncode == 0 and cli_accept in out.stdout and api_accept not in out.stdout, out.stderr
            shown = json.loads(_cli(cli_env, "show", api_revoke).stdout)
            assert [h["type"] for h in shown["history"]] == ["MintQuarantined", "RoleSessionsRevoked",
                                                              "QuarantineResolved"]
            out = _cli(cli_env, "resolve", cli_accept, "--action", "accept", "--reason", "reviewed")
            assert out.returncode == 0 and "resolved by cli:" in out.stdout, out.stderr
            out = _cli(cli_env, "resolve", cli_accept, "--action", "accept", "--reason", "twice")
            assert out.returncode == 1 and "case_closed" in out.stderr and "Traceback" not in out.stderr
            time.sleep(1.1)  # the kill switch has whole-second times: the CLI's must be newer
            out = _cli(cli_env, "resolve", cli_revoke, "--action", "revoke", "--reason", "key leaked",
                       "--operator", "alice")
            assert out.returncode == 0, out.stderr
            assert _kill_switch_time(dev_aws) > api_kill_time  # overwritten with the newer time
            out = _cli(cli_env, "resolve", cli_reanchor, "--action", "reanchor", "--reason", "chain back soon")
            assert out.returncode == 0 and "reanchoring" in out.stdout, out.stderr
        finally:
            os.kill(chain["pid"], signal.SIGCONT)

        # the chain is back: the worker closes both re-anchors once the EVM anchor confirms them
        deadline = time.monotonic() + 90
        closed: list[str] = []
        while time.monotonic() < deadline:
            closed = [r.data["case_id"] for r in services.ledger.read(0, 100000)
                      if r.type == "QuarantineResolved" and r.data["operator"] == "worker"]
            if len(closed) == 2:
                break
            time.sleep(0.5)
        assert sorted(closed) == sorted([api_reanchor, cli_reanchor])
        assert evm.confirmed_upto() >= seqs[-1]

        # the ledger records every resolution with its operator
        resolved = {r.data["case_id"]: r.data for r in services.ledger.read(0, 100000)
                    if r.type == "QuarantineResolved" and r.data["status"] == "resolved"}
        assert set(resolved) == set(opened)
        token_name = "token:" + __import__("hashlib").sha256(TOKEN.encode()).hexdigest()[:8]
        assert resolved[api_accept]["operator"] == resolved[api_revoke]["operator"] == token_name
        assert resolved[cli_accept]["operator"].startswith("cli:") and "@" in resolved[cli_accept]["operator"]
        assert resolved[cli_revoke]["operator"] == "alice"
        reanchoring = [r.data for r in services.ledger.read(0, 100000)
                       if r.type == "QuarantineResolved" and r.data["status"] == "reanchoring"]
        assert [d["case_id"] for d in reanchoring] == [api_reanchor, cli_reanchor]
        assert reanchoring[0]["operator"] == operator_wallet.address  # the SIWE operator
        assert reanchoring[1]["operator"].startswith("cli:")
        revoked = [r.data for r in services.ledger.read(0, 100000) if r.type == "RoleSessionsRevoked"]
        assert [(d["case_id"], d["role_arn"]) for d in revoked] == [(api_revoke, dev_aws["role_arn"]),
                                                                     (cli_revoke, dev_aws["role_arn"])]
        assert revoked[1]["not_before"] == _kill_switch_time(dev_aws)
        listed = httpx.get(server.url + "/v1/operator/quarantine?status=all", headers=auth(TOKEN)).json()["cases"]
        assert {c["case_id"]: c["status"] for c in listed} == dict.fromkeys(opened, "resolved")
        assert httpx.get(server.url + "/v1/operator/quarantine", headers=auth(TOKEN)).json()["cases"] == []
        db, anchor_db = services.config.ledger_db, services.config.anchor_db
        b.client.close()
    verify = subprocess.run([cli_path(), "audit", "verify", "--db", str(db), "--anchor-db", str(anchor_db)],
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.parametrize("value", ["nope", "0x1234"])
def test_malformed_operator_wallets_refuse_to_boot(tmp_path: Path, value: str) -> None:
    from api.config import BootFailure, BrokerConfig
    from tests.support import broker_env

    with pytest.raises(BootFailure) as info:
        BrokerConfig.from_env(broker_env(tmp_path, BROKER_OPERATOR_WALLETS=value))
    assert "operator-wallets" in str(info.value)
