"""Sign-In with Ethereum over real HTTP (seed-spec §H 39–50), every attempt a ledger event."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import pytest

from api.config import BrokerConfig
from api.runtime import Services
from ledger.aggregates import AuthChallenge
from tests.conftest import ROOT, cli_path
from tests.support import LiveServer, Wallet, broker_env, sign_in

ISSUER = "https://broker.test.invalid"


def make_live(tmp_path: Path, *, clock=None, **env: str) -> LiveServer:  # noqa: ANN001
    return LiveServer(Services.build(BrokerConfig.from_env(broker_env(tmp_path, **env)), clock=clock))


@pytest.fixture
def live(tmp_path: Path):
    with make_live(tmp_path) as server:
        yield server


@pytest.fixture
def client(live: LiveServer):
    with httpx.Client(base_url=live.url, timeout=30) as c:
        yield c


def start(client: httpx.Client, wallet: Wallet, chain_id: int = 84532) -> dict:
    r = client.post("/v1/auth/wallet/start", json={"address": wallet.address, "chain_id": chain_id})
    assert r.status_code == 200, r.text
    return r.json()


def events_of(live: LiveServer, type_name: str) -> list[dict]:
    return [r.data for r in live.services.ledger.read(0, 100000) if r.type == type_name]


# --- §H 39–41, 48, 50: the happy path ---------------------------------------------------------

def test_start_returns_the_exact_siwe_message(client: httpx.Client) -> None:
    w = Wallet()
    body = start(client, w)
    msg = body["siwe_message"]
    assert body["request_id"].startswith("siwe-") and len(body["request_id"]) == 5 + 32
    assert body["expires_in_seconds"] == 2700
    assert len(body["nonce"]) == 32
    lines = msg.split("\n")
    assert lines[0] == "broker.test.invalid wants you to sign in with your Ethereum account:"
    assert lines[1] == w.address
    assert lines[3] == "Authenticate with AgentKeys broker."
    assert f"URI: {ISSUER}" in lines and "Version: 1" in lines and "Chain ID: 84532" in lines
    assert f"Nonce: {body['nonce']}" in lines
    assert any(ln.startswith("Issued At: ") for ln in lines) and any(ln.startswith("Expiration Time: ") for ln in lines)
    assert lines[-2:] == ["Resources:", "- urn:agentkeys:client:agentkeys"]
    assert not msg.endswith("\n")


def test_full_sign_in_returns_a_session_bound_to_the_wallet(live: LiveServer, client: httpx.Client) -> None:
    w = Wallet()
    body = sign_in(client, w)
    omni = hashlib.sha256(b"agentkeys" + b"evm" + w.address.encode()).hexdigest()
    assert body["wallet_address"] == w.address and body["identity_type"] == "evm"
    assert body["identity_value"] == w.address and body["omni_account"] == omni
    assert len(body["session_jwt"].split(".")) == 3
    header = jwt.get_unverified_header(body["session_jwt"])
    claims = jwt.decode(body["session_jwt"], options={"verify_signature": False})
    assert header["kid"] == body["session_jwt_kid"] and header["alg"] == "ES256"
    assert claims["aud"] == "agentkeys:broker" and claims["iss"] == ISSUER
    assert claims["sub"] == "agentkeys:user:" + omni
    assert claims["agentkeys"]["wallet_address"] == w.address
    assert claims["exp"] - claims["iat"] == 18000 and body["expires_at"] == claims["exp"]
    # released only after the SQLite anchor confirmed the SessionIssued record
    assert body["anchored"] == ["sqlite"]
    assert live.services.anchors[0].verify(body["seq"], body["record_hash"])
    [issued] = [r for r in live.services.ledger.read(0, 1000) if r.seq == body["seq"]]
    assert issued.type == "SessionIssued"
    assert issued.data["token_sha256"] == hashlib.sha256(body["session_jwt"].encode()).hexdigest()
    assert body["session_jwt"] not in json.dumps([r.data for r in live.services.ledger.read(0, 1000)])


def test_second_verify_with_same_request_is_rejected(client: httpx.Client) -> None:
    w = Wallet()
    body = start(client, w)
    payload = {"request_id": body["request_id"], "signature": w.sign(body["siwe_message"])}
    assert client.post("/v1/auth/wallet/verify", json=payload).status_code == 200
    again = client.post("/v1/auth/wallet/verify", json=payload)
    assert again.status_code == 401 and again.json()["reason"] == "challenge_consumed"


def test_signing_in_twice_keeps_one_master_binding(live: LiveServer, client: httpx.Client) -> None:
    w = Wallet()
    sign_in(client, w)
    sign_in(client, w)
    bound = events_of(live, "WalletBound")
    assert len(bound) == 1 and bound[0]["role"] == "master" and bound[0]["address"] == w.address
    assert live.services.projections.wait_until(live.services.ledger.head().seq, timeout=10)
    from projections.wallets import wallets_for_address
    rows = wallets_for_address(live.services.projections.engine, w.address)
    assert [(r.role, r.parent_address) for r in rows] == [("master", None)]


# --- §H 42–47: refusals, each one an AuthFailed event ------------------------------------------

def test_zero_signature_is_rejected_and_consumes_the_challenge(live: LiveServer, client: httpx.Client) -> None:
    w = Wallet()
    body = start(client, w)
    r = client.post("/v1/auth/wallet/verify", json={"request_id": body["request_id"], "signature": "0x" + "00" * 65})
    assert r.status_code in (400, 401)
    good = client.post(
        "/v1/auth/wallet/verify", json={"request_id": body["request_id"], "signature": w.sign(body["siwe_message"])}
    )
    assert good.status_code == 401  # §H 43: a failed verify burns the challenge
    reasons = [e["reason"] for e in events_of(live, "AuthFailed")]
    assert reasons == ["signature_zero", "challenge_consumed"]


@pytest.mark.parametrize("address", ["0xshort", "", "ab" * 21, "0x" + "zz" * 20, "0x" + "ab" * 21])
def test_malformed_address_at_start_is_400(client: httpx.Client, address: str) -> None:
    r = client.post("/v1/auth/wallet/start", json={"address": address, "chain_id": 84532})
    assert r.status_code == 400 and r.json()["error"] == "bad_request"


def test_missing_chain_id_is_4xx(client: httpx.Client) -> None:
    r = client.post("/v1/auth/wallet/start", json={"address": Wallet().address})
    assert r.status_code == 400 and "chain_id" in r.json()["message"]


def test_chain_id_outside_the_allow_list_is_refused_at_start(client: httpx.Client) -> None:
    r = client.post("/v1/auth/wallet/start", json={"address": Wallet().address, "chain_id": 1})
    assert r.status_code == 400 and r.json()["reason"] == "chain_id_not_allowed"


def test_unknown_request_id_is_401(live: LiveServer, client: httpx.Client) -> None:
    r = client.post("/v1/auth/wallet/verify", json={"request_id": "siwe-" + "0" * 32, "signature": "0x" + "11" * 65})
    assert r.status_code == 401
    assert events_of(live, "AuthFailed")[-1]["reason"] == "challenge_unknown"


def test_expired_challenge_is_401(tmp_path: Path) -> None:
    now = [datetime.now(UTC).timestamp()]
    with make_live(tmp_path, clock=lambda: now[0]) as live, httpx.Client(base_url=live.url, timeout=30) as client:
        w = Wallet()
        body = start(client, w)
        now[0] += timedelta(seconds=2701).total_seconds()  # the injected clock moves past the challenge's expiry
        r = client.post("/v1/auth/wallet/verify",
                        json={"request_id": body["request_id"], "signature": w.sign(body["siwe_message"])})
        assert r.status_code == 401 and "expired" in r.json()["message"]
        assert events_of(live, "AuthFailed")[-1]["reason"] == "challenge_expired"


@pytest.mark.parametrize(
    "signature,status,reason",
    [
        ("0xnothex", 400, "signature_not_hex"),
        ("0x" + "11" * 64, 400, "signature_length"),
        ("0x" + "11" * 64 + "1d", 400, "signature_v"),
    ],
)
def test_malformed_signatures(live: LiveServer, client: httpx.Client, signature: str, status: int, reason: str) -> None:
    body = start(client, Wallet())
    r = client.post("/v1/auth/wallet/verify", json={"request_id": body["request_id"], "signature": signature})
    assert r.status_code == status and r.json()["reason"] == reason
    assert events_of(live, "AuthFailed")[-1]["reason"] == reason


def test_high_s_malleable_signature_is_rejected(live: LiveServer, client: httpx.Client) -> None:
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    w = Wallet()
    body = start(client, w)
    raw = bytes.fromhex(w.sign(body["siwe_message"])[2:])
    r_, s_, v_ = raw[:32], int.from_bytes(raw[32:64], "big"), raw[64]
    flipped = r_ + (n - s_).to_bytes(32, "big") + bytes([55 - v_ if v_ in (27, 28) else 1 - v_])
    r = client.post("/v1/auth/wallet/verify", json={"request_id": body["request_id"], "signature": "0x" + flipped.hex()})
    assert r.status_code == 401 and r.json()["reason"] == "signature_high_s"


@pytest.mark.parametrize("field", ["domain", "uri", "chain_id", "nonce", "expiration"])
def test_signature_over_the_message_with_a_field_altered_is_rejected(client: httpx.Client, field: str) -> None:
    w = Wallet()
    body = start(client, w)
    msg = body["siwe_message"]
    altered = {
        "domain": msg.replace("broker.test.invalid wants", "evil.example wants"),
        "uri": msg.replace(f"URI: {ISSUER}", "URI: https://evil.example"),
        "chain_id": msg.replace("Chain ID: 84532", "Chain ID: 8453"),
        "nonce": msg.replace(f"Nonce: {body['nonce']}", "Nonce: " + "0" * 32),
        "expiration": "\n".join(
            ln if not ln.startswith("Expiration Time: ") else "Expiration Time: 2099-01-01T00:00:00Z" for ln in msg.split("\n")),
    }[field]
    assert altered != msg
    r = client.post("/v1/auth/wallet/verify", json={"request_id": body["request_id"], "signature": w.sign(altered)})
    assert r.status_code == 401 and r.json()["reason"] == "address_mismatch"


def test_signature_by_another_wallet_is_rejected(client: httpx.Client) -> None:
    body = start(client, Wallet())
    r = client.post(
        "/v1/auth/wallet/verify", json={"request_id": body["request_id"], "signature": Wallet().sign(body["siwe_message"])}
    )
    assert r.status_code == 401 and r.json()["reason"] == "address_mismatch"


def test_wallet_sig_disabled_is_400(tmp_path: Path) -> None:
    with make_live(tmp_path) as live, httpx.Client(base_url=live.url) as c:
        object.__setattr__(live.services.config, "auth_methods", ())
        r = c.post("/v1/auth/wallet/start", json={"address": Wallet().address, "chain_id": 84532})
        assert r.status_code == 400 and "wallet_sig auth method is not enabled" in r.json()["message"]


# --- single use under concurrency, restart, audit -----------------------------------------------

def test_20_parallel_verifies_of_one_challenge_yield_exactly_one_session(live: LiveServer, client: httpx.Client) -> None:
    w = Wallet()
    body = start(client, w)
    payload = {"request_id": body["request_id"], "signature": w.sign(body["siwe_message"])}

    async def race() -> list[int]:
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as ac:
            rs = await asyncio.gather(*[ac.post("/v1/auth/wallet/verify", json=payload) for _ in range(20)])
        return [r.status_code for r in rs]

    codes = asyncio.run(race())
    assert sorted(codes) == [200] + [401] * 19
    assert len(events_of(live, "SessionIssued")) == 1


def test_restart_between_start_and_verify_still_works(tmp_path: Path) -> None:
    w = Wallet()
    with make_live(tmp_path) as live, httpx.Client(base_url=live.url) as c:
        body = start(c, w)
    with make_live(tmp_path) as live, httpx.Client(base_url=live.url) as c:
        r = c.post("/v1/auth/wallet/verify", json={"request_id": body["request_id"], "signature": w.sign(body["siwe_message"])})
        assert r.status_code == 200, r.text


def test_after_a_sign_in_audit_verify_passes_and_shows_the_auth_events_in_order(tmp_path: Path) -> None:
    w = Wallet()
    with make_live(tmp_path) as live, httpx.Client(base_url=live.url) as c:
        body = sign_in(c, w)
        db = live.services.config.ledger_db
        anchor_db = live.services.config.anchor_db
    out = subprocess.run([cli_path(), "audit", "verify", "--db", str(db), "--anchor-db", str(anchor_db), "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["valid"] is True and report["findings"] == []
    export = tmp_path / "export.jsonl"
    subprocess.run([cli_path(), "audit", "export", "--db", str(db), "--out", str(export)], check=True, timeout=60)
    types = [json.loads(ln)["type"] for ln in export.read_text().splitlines()[1:]]
    assert types == ["SigningKeyRotated", "SigningKeyRotated", "AuthChallengeIssued", "WalletBound",
                     "AuthSucceeded", "SessionIssued"]
    assert report["head"]["seq"] == body["seq"]


# --- anchors that do not confirm: nothing released ---------------------------------------------

def test_session_is_withheld_when_the_anchor_does_not_confirm_in_time(tmp_path: Path) -> None:
    with make_live(tmp_path, BROKER_ANCHOR_DEADLINE_MS="300") as live, httpx.Client(base_url=live.url) as c:
        live.services.pump.stop()  # the anchor stops confirming
        w = Wallet()
        body = start(c, w)
        r = c.post("/v1/auth/wallet/verify", json={"request_id": body["request_id"], "signature": w.sign(body["siwe_message"])})
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "anchor_unavailable"
        assert "eyJ" not in r.text and "session_jwt" not in r.text
        [withheld] = events_of(live, "SessionWithheld")
        assert withheld["missing_anchors"] == ["sqlite"]
        challenge = live.services.ledger.load(AuthChallenge, AuthChallenge.stream_for(body["request_id"]))
        assert challenge.withheld is not None


# --- rate limits --------------------------------------------------------------------------------

def test_challenge_starts_are_rate_limited_per_ip_with_retry_after(tmp_path: Path) -> None:
    with make_live(tmp_path, BROKER_RATE_LIMIT_CHALLENGES_PER_HOUR_PER_IP="3") as live, httpx.Client(base_url=live.url) as c:
        for _ in range(3):
            start(c, Wallet())
        r = c.post("/v1/auth/wallet/start", json={"address": Wallet().address, "chain_id": 84532})
        assert r.status_code == 429 and r.json()["error"] == "rate_limited"
        assert 0 < int(r.headers["Retry-After"]) <= 3600
        # a spoofed X-Forwarded-For from an untrusted peer changes nothing
        r = c.post("/v1/auth/wallet/start", json={"address": Wallet().address, "chain_id": 84532},
                   headers={"X-Forwarded-For": "203.0.113.9"})
        assert r.status_code == 429


def test_forwarded_for_is_believed_only_from_a_trusted_proxy(tmp_path: Path) -> None:
    env = dict(BROKER_RATE_LIMIT_CHALLENGES_PER_HOUR_PER_IP="1", BROKER_TRUSTED_PROXIES="127.0.0.1")
    with make_live(tmp_path, **env) as live, httpx.Client(base_url=live.url) as c:
        for ip in ("203.0.113.1", "203.0.113.2"):
            r = c.post("/v1/auth/wallet/start", json={"address": Wallet().address, "chain_id": 84532},
                       headers={"X-Forwarded-For": ip})
            assert r.status_code == 200
        r = c.post("/v1/auth/wallet/start", json={"address": Wallet().address, "chain_id": 84532},
                   headers={"X-Forwarded-For": "203.0.113.1"})
        assert r.status_code == 429


def test_failed_verifications_are_rate_limited_per_ip(tmp_path: Path) -> None:
    with make_live(tmp_path, BROKER_RATE_LIMIT_FAILED_VERIFIES_PER_HOUR_PER_IP="2") as live, httpx.Client(base_url=live.url) as c:
        for _ in range(2):
            r = c.post("/v1/auth/wallet/verify", json={"request_id": "siwe-unknown", "signature": "0x00"})
            assert r.status_code in (400, 401)
        r = c.post("/v1/auth/wallet/verify", json={"request_id": "siwe-unknown", "signature": "0x00"})
        assert r.status_code == 429 and "Retry-After" in r.headers
        # a good sign-in is refused too while the address is over budget (nothing is attempted)
        w = Wallet()
        body = start(c, w)
        r = c.post("/v1/auth/wallet/verify", json={"request_id": body["request_id"], "signature": w.sign(body["siwe_message"])})
        assert r.status_code == 429


def test_oversized_body_is_413(tmp_path: Path) -> None:
    with make_live(tmp_path, BROKER_REQUEST_BODY_LIMIT_BYTES="2048") as live, httpx.Client(base_url=live.url) as c:
        r = c.post("/v1/auth/wallet/start", content=b'{"address":"' + b"a" * 4096 + b'","chain_id":1}',
                   headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
