"""Mints under the audit policies with the EVM anchor on anvil (design §3; issue: EVM anchor).

dual_strict: the response arrives only after the batch holding `MintAuthorized` is confirmed on
chain. Faults assert that no credential material is released where the policy forbids it.
sqlite_primary: with the chain down, mints are released on the SQLite anchor alone and then
quarantined past the confirm deadline; once the chain is back later batches anchor normally."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from anchors import chain_tools
from anchors.evm import check_contiguity, read_chain_batches
from api.cli import start_dev_chain
from api.config import BootFailure, BrokerConfig
from api.runtime import Services
from tests.integration.test_mint import Broker, assert_no_credentials, auth, build_services
from tests.support import LiveServer, Wallet, broker_env, signed_mint_body
from tests.support_moto import sts_env
from workers.jobs import quarantine


@pytest.fixture
def chain(tmp_path: Path):
    children: list = []
    info = start_dev_chain(tmp_path, children)
    yield info
    for child in children:
        try:
            os.kill(child.pid, signal.SIGCONT)
        except (ProcessLookupError, TypeError):
            pass
        child.stop()


def evm_broker(tmp_path: Path, dev_aws, chain, **env: str) -> LiveServer:
    full = broker_env(tmp_path, **sts_env(dev_aws), **chain["env"], BROKER_AUDIT_ANCHORS="sqlite,evm",
                      BROKER_GRANTS_REQUIRED="false", **env)
    return LiveServer(build_services(full))


def contiguous_on_chain(chain) -> list:  # noqa: ANN001
    from web3 import Web3

    w3 = Web3(Web3.HTTPProvider(chain["rpc_url"]))
    batches = read_chain_batches(chain_tools.contract_at(w3, chain["contract_address"]))
    assert check_contiguity(batches) == []
    return batches


def test_dual_strict_releases_only_after_the_chain_confirms(tmp_path: Path, dev_aws, chain) -> None:
    with evm_broker(tmp_path, dev_aws, chain) as server:
        b = Broker(server)
        w = Wallet()
        session = httpx.post(server.url + "/v1/auth/wallet/start", json={"address": w.address, "chain_id": 84532})
        body = session.json()
        verify = httpx.post(server.url + "/v1/auth/wallet/verify",
                            json={"request_id": body["request_id"], "signature": w.sign(body["siwe_message"])}, timeout=30)
        assert verify.status_code == 200 and sorted(verify.json()["anchored"]) == ["evm", "sqlite"]
        r = b.mint(verify.json()["session_jwt"], signed_mint_body(w))
        assert r.status_code == 200, r.text
        minted = r.json()
        assert sorted(minted["anchored"]) == ["evm", "sqlite"]
        evm = next(a for a in server.services.anchors if a.name == "evm")
        assert evm.verify(minted["seq"], minted["record_hash"])  # confirmed before the response
        batches = contiguous_on_chain(chain)
        assert batches[-1].last_seq >= minted["seq"]
        b.client.close()


def test_chain_not_answering_means_503_within_the_deadline(tmp_path: Path, dev_aws, chain) -> None:
    with evm_broker(tmp_path, dev_aws, chain, BROKER_ANCHOR_DEADLINE_MS="1500") as server:
        b = Broker(server)
        w = Wallet()
        jwt = b.session(w)
        os.kill(chain["pid"], signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            r = b.mint(jwt, signed_mint_body(w))
            elapsed = time.monotonic() - t0
            assert r.status_code == 503, r.text
            assert_no_credentials(r)
            assert elapsed < 12  # deadline (or the readiness probe's RPC timeout), never a hang
        finally:
            os.kill(chain["pid"], signal.SIGCONT)
        b.client.close()


def test_drained_fee_payer_is_503_and_readyz_unready(tmp_path: Path, dev_aws, chain) -> None:
    from web3 import Web3

    with evm_broker(tmp_path, dev_aws, chain) as server:
        b = Broker(server)
        w = Wallet()
        jwt = b.session(w)
        evm = next(a for a in server.services.anchors if a.name == "evm")
        w3 = Web3(Web3.HTTPProvider(chain["rpc_url"]))
        w3.provider.make_request("anvil_setBalance", [evm.fee_payer_address, "0x0"])
        deadline = time.monotonic() + 15  # probed in the background (every 2 s by default)
        while (ready := httpx.get(server.url + "/readyz")).status_code != 503 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.status_code == 503
        [fee] = [c for c in ready.json()["checks"] if c["name"] == "evm/fee_payer"]
        assert "BROKER_EVM_FEE_PAYER_MIN_BALANCE" in fee["reason"]
        r = b.mint(jwt, signed_mint_body(w))
        assert r.status_code == 503 and r.json()["reason"] == "anchor_unready"
        assert_no_credentials(r)
        assert b.minter.calls == 0  # refused before STS
        b.client.close()


def test_wrong_chain_id_refuses_to_boot(tmp_path: Path, dev_aws, chain) -> None:
    full = broker_env(tmp_path, **sts_env(dev_aws), **{**chain["env"], "BROKER_EVM_CHAIN_ID": "8453"},
                      BROKER_AUDIT_ANCHORS="sqlite,evm")
    with pytest.raises(BootFailure) as info:
        Services.build(BrokerConfig.from_env(full))
    assert "evm-chain-id" in str(info.value)


def test_sqlite_primary_releases_with_the_chain_down_then_quarantines_and_recovers(tmp_path: Path, dev_aws, chain) -> None:
    env = dict(BROKER_AUDIT_POLICY="sqlite_primary", BROKER_EVM_CONFIRM_DEADLINE_SECONDS="10")
    with evm_broker(tmp_path, dev_aws, chain, **env) as server:
        b = Broker(server)
        w = Wallet()
        jwt = b.session(w)
        os.kill(chain["pid"], signal.SIGSTOP)
        try:
            r = b.mint(jwt, signed_mint_body(w))
            assert r.status_code == 200, r.text
            assert r.json()["anchored"] == ["sqlite"]
            seq = r.json()["seq"]
            evm = next(a for a in server.services.anchors if a.name == "evm")
            result = quarantine.run(ledger=server.services.ledger, async_anchors=[("evm", evm.confirmed_upto)],
                                    deadline_s=10, now=lambda: time.time() + 11)
            assert result.opened == [f"q-{seq}"]
        finally:
            os.kill(chain["pid"], signal.SIGCONT)
        # the chain is back: later records anchor normally and the batches stay contiguous
        r2 = b.mint(jwt, signed_mint_body(w))
        assert r2.status_code == 200
        deadline = time.monotonic() + 30
        while evm.confirmed_upto() < r2.json()["seq"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert evm.confirmed_upto() >= r2.json()["seq"]
        contiguous_on_chain(chain)
        b.client.close()


def test_proof_bundle_of_a_mint_verifies_offline_and_on_chain(tmp_path: Path, dev_aws, chain) -> None:
    from anchors.chain_reader import ChainReader
    from anchors.proof_builder import verify_bundle
    from ledger.audit.proofs import verify_bundle_offline

    token_file = tmp_path / "operator.token"
    token_file.write_text("op-" + "x" * 40)
    token_file.chmod(0o600)
    with evm_broker(tmp_path, dev_aws, chain, BROKER_OPERATOR_TOKEN_FILE=str(token_file)) as server:
        b = Broker(server)
        w = Wallet()
        jwt = b.session(w)
        minted = b.mint(jwt, signed_mint_body(w)).json()
        r = httpx.get(f"{server.url}/v1/audit/records/{minted['seq']}", headers=auth(jwt))
        assert r.status_code == 200, r.text
        bundle = r.json()
        assert bundle["format"] == "agentkeys-proof" and bundle["record"]["hash"] == minted["record_hash"]
        assert bundle["record"]["type"] == "MintAuthorized"
        assert verify_bundle_offline(bundle) == []
        problems, _ = verify_bundle(bundle, ChainReader(chain["rpc_url"], [chain["contract_address"]]))
        assert problems == []
        # another account's session cannot read it; the operator token can; no bearer is 401
        other = b.session(Wallet())
        assert httpx.get(f"{server.url}/v1/audit/records/{minted['seq']}", headers=auth(other)).status_code == 404
        assert httpx.get(f"{server.url}/v1/audit/records/{minted['seq']}",
                         headers=auth(token_file.read_text())).status_code == 200
        assert httpx.get(f"{server.url}/v1/audit/records/{minted['seq']}").status_code == 401
        assert httpx.get(f"{server.url}/v1/audit/records/999999", headers=auth(jwt)).status_code == 404
        # the chain head reported by /v1/audit/head includes both anchors' positions
        head = httpx.get(server.url + "/v1/audit/head").json()
        assert head["anchors"]["evm"]["confirmed_seq"] >= minted["seq"]
        b.client.close()


def test_contract_migration_is_recorded_and_audit_spans_both_contracts(tmp_path: Path, dev_aws, chain) -> None:
    import subprocess

    from web3 import Web3

    from tests.conftest import ROOT, cli_path

    def contract_events(server) -> list[dict]:  # noqa: ANN001
        return [r.data for r in server.services.ledger.read(0, 100000) if r.type == "AnchorContractChanged"]

    with evm_broker(tmp_path, dev_aws, chain) as server:
        b = Broker(server)
        w = Wallet()
        assert b.mint(b.session(w), signed_mint_body(w)).status_code == 200
        [first] = contract_events(server)
        assert first["contract"] == chain["contract_address"].lower() and first["previous_contract"] is None
        b.client.close()
    w3 = Web3(Web3.HTTPProvider(chain["rpc_url"]))
    old = chain_tools.contract_at(w3, chain["contract_address"])
    last = old.functions.lastSeq().call()
    from eth_account import Account

    from anchors.dev_chain import WELL_KNOWN_KEYS

    payer = Account.from_key(WELL_KNOWN_KEYS[0])
    new = chain_tools.deploy(w3, payer, payer.address, start_seq=last + 1)
    # retire the old contract (its submitter can no longer anchor) and point the broker at the new one
    chain_tools.send_transaction(w3, payer, old.functions.setSubmitter("0x" + "00" * 20))
    env = {**chain["env"], "BROKER_EVM_CONTRACT_ADDRESS": new.address,
           "BROKER_EVM_STATE_DB": str(tmp_path / "evm-anchor-2.sqlite")}
    with evm_broker(tmp_path, dev_aws, {**chain, "env": env}) as server:
        b = Broker(server)
        w = Wallet()
        assert b.mint(b.session(w), signed_mint_body(w)).status_code == 200
        events = contract_events(server)
        assert [e["previous_contract"] for e in events] == [None, chain["contract_address"].lower()]
        db = server.services.config.ledger_db
        b.client.close()
    export = tmp_path / "export.jsonl"
    subprocess.run([cli_path(), "audit", "export", "--db", str(db), "--out", str(export)], check=True, timeout=60)
    out = subprocess.run([cli_path(), "audit", "verify", "--export", str(export), "--rpc", chain["rpc_url"],
                          "--contract", chain["contract_address"], "--contract", new.address, "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_evm_primary_releases_on_chain_confirmation(tmp_path: Path, dev_aws, chain) -> None:
    with evm_broker(tmp_path, dev_aws, chain, BROKER_AUDIT_POLICY="evm_primary") as server:
        assert server.services.config.required_anchors == ("evm",)
        assert server.services.async_anchor_names() == ["sqlite"]  # watched by the quarantine job
        b = Broker(server)
        w = Wallet()
        r = b.mint(b.session(w), signed_mint_body(w))
        assert r.status_code == 200, r.text
        assert "evm" in r.json()["anchored"]
        evm = next(a for a in server.services.anchors if a.name == "evm")
        assert evm.verify(r.json()["seq"], r.json()["record_hash"])
        b.client.close()
