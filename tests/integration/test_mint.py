"""The mint gate over real HTTP: session JWT + per-call signature + grant + anchors, STS through
boto3 against moto's server on loopback (seed-spec §D.1, §H 12–38, 101–104)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import httpx
import pytest

from anchors.memory import MemoryAnchor
from api.config import BrokerConfig
from api.keys import generate_keyfile, load_keyring
from api.runtime import Services
from ledger.anchoring import default_waiter
from ledger.gate import ReleaseGate
from tests.support import LiveServer, Wallet, broker_env, ns, remember_master, sign_in, signed_mint_body
from tests.support_moto import sts_env

CRED_FIELDS = ("access_key_id", "secret_access_key", "session_token")


class CountingMinter:
    """Wraps the real boto3 minter and counts AssumeRole calls (the invariant tests assert 0)."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner = inner
        self.calls = 0
        self.requests = []

    def assume_role(self, request):  # noqa: ANN001, ANN201
        self.calls += 1
        self.requests.append(request)
        return self.inner.assume_role(request)

    def check_identity(self) -> str:
        return self.inner.check_identity()


class Broker:
    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.services: Services = server.services
        self.minter = self.services.minter  # a CountingMinter, injected at build (`build_broker`)
        self.client = httpx.Client(base_url=server.url, timeout=60)

    def session(self, wallet: Wallet) -> str:
        return sign_in(self.client, wallet)["session_jwt"]

    def grant(self, master_jwt: str, daemon: Wallet, **kw) -> dict:  # noqa: ANN003
        body = {"daemon_address": daemon.address, "service": "s3", "scope_path": ns(master_jwt),
                "expires_at": int(time.time()) + 3600, "max_uses": 10, **kw}
        r = self.client.post("/v1/grant/create", json=body, headers=auth(master_jwt))
        assert r.status_code == 200, r.text
        remember_master(daemon.address, master_jwt)
        return r.json()

    def mint(self, jwt: str, body: dict | bytes, headers: dict | None = None) -> httpx.Response:
        h = {**auth(jwt), **(headers or {})}
        if isinstance(body, bytes):
            return self.client.post("/v1/mint-aws-creds", content=body, headers=h)
        return self.client.post("/v1/mint-aws-creds", json=body, headers=h)

    def events(self, type_name: str) -> list[dict]:
        return [r.data for r in self.services.ledger.read(0, 100000) if r.type == type_name]


def auth(jwt: str) -> dict:
    return {"Authorization": f"Bearer {jwt}"}


def assert_no_credentials(r: httpx.Response) -> None:
    for field in CRED_FIELDS:
        assert field not in r.text, f"{field} leaked in a {r.status_code} response"
    assert "ASIA" not in r.text


def build_services(env: dict, *, minter=None, **inject) -> Services:  # noqa: ANN001, ANN003
    """The broker's composition root with the parts a test injects; the minter is always wrapped
    in a `CountingMinter` (the real boto3 one unless another is given)."""
    from api.sts import BotoStsMinter

    config = BrokerConfig.from_env(env)
    return Services.build(config, minter=CountingMinter(minter or BotoStsMinter(config.sts)), **inject)


@pytest.fixture
def broker(tmp_path: Path, dev_aws):
    env = broker_env(tmp_path, **sts_env(dev_aws))
    with LiveServer(build_services(env)) as server:
        b = Broker(server)
        yield b
        b.client.close()


def make_pair(broker: Broker):  # noqa: ANN201
    """A master with a session, a daemon with a session, and a grant from one to the other."""
    master, daemon = Wallet(), Wallet()
    master_jwt = broker.session(master)
    grant = broker.grant(master_jwt, daemon)
    return master, master_jwt, daemon, broker.session(daemon), grant


@pytest.fixture
def pair(broker: Broker):
    return make_pair(broker)


# --- §D.1 (a)–(f) ------------------------------------------------------------------------------

def test_a_happy_path_releases_credentials_after_the_anchor_confirms(broker: Broker, pair, dev_aws) -> None:
    master, _, daemon, daemon_jwt, grant = pair
    r = broker.mint(daemon_jwt, signed_mint_body(daemon))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["access_key_id"].startswith("ASIA") and body["secret_access_key"] and body["session_token"]
    assert body["wallet"] == daemon.address and body["audit_record_id"].startswith("aud_")
    assert body["anchored"] == ["sqlite"] and broker.minter.calls == 1
    assert broker.services.anchors[0].verify(body["seq"], body["record_hash"])
    [authorized] = broker.events("MintAuthorized")
    assert authorized["access_key_id"] == body["access_key_id"] and authorized["grant_id"] == grant["grant_id"]
    assert body["secret_access_key"] not in json.dumps([r.data for r in broker.services.ledger.read(0, 10000)])
    # the credentials work against (moto's) STS
    sts = boto3.client("sts", endpoint_url=dev_aws["sts_endpoint"], region_name="us-east-1",
                       aws_access_key_id=body["access_key_id"], aws_secret_access_key=body["secret_access_key"],
                       aws_session_token=body["session_token"])
    assert "assumed-role/agentkeys-data-role" in sts.get_caller_identity()["Arn"]
    # what was asked of STS: tags, source identity and the scoped policy
    [req] = broker.minter.requests
    assert (req.wallet, req.service, req.scope_path) == (daemon.address, "s3", ns(master))


def test_b_zero_signature_never_reaches_sts(broker: Broker, pair) -> None:
    *_, daemon, daemon_jwt, _ = pair
    body = signed_mint_body(daemon)
    body["auth"]["signature"] = "0x" + "00" * 65
    r = broker.mint(daemon_jwt, body)
    assert r.status_code in (400, 401)
    assert_no_credentials(r)
    assert broker.minter.calls == 0
    assert broker.events("MintDenied")[-1]["reason"] == "signature_invalid"


def test_c_wrong_wallet_body_signed_by_b_with_a_session_of_a(broker: Broker, pair) -> None:
    *_, daemon_jwt, _ = pair
    other = Wallet()
    r = broker.mint(daemon_jwt, signed_mint_body(other))
    assert r.status_code == 401 and r.json()["reason"] == "wallet_mismatch"
    assert_no_credentials(r)
    assert broker.minter.calls == 0


def test_d_jwt_signed_by_an_attacker_keypair_is_rejected(broker: Broker, pair, tmp_path: Path) -> None:
    *_, daemon, _, _ = pair
    from api.auth.session_jwt import SessionSigner
    from ledger.identity import evm_omni_account

    attacker_file = tmp_path / "attacker.json"
    generate_keyfile(attacker_file, "session")
    real_kid = broker.services.session_keys.active.kid
    attacker = load_keyring(attacker_file, "session")
    # same kid as the broker's key, same claims: only the signature differs
    object.__setattr__(attacker.active, "kid", real_kid)
    forged = SessionSigner(attacker, broker.services.config.issuer).issue(
        omni_account=evm_omni_account(daemon.address), wallet_address=daemon.address, identity_type="evm",
        identity_value=daemon.address)
    r = broker.mint(forged.token, signed_mint_body(daemon))
    assert r.status_code == 401
    assert_no_credentials(r)
    assert broker.minter.calls == 0


def test_e_anchor_that_never_confirms_means_503_within_the_deadline_and_nothing_released(tmp_path: Path, dev_aws) -> None:
    env = broker_env(tmp_path, **sts_env(dev_aws), BROKER_ANCHOR_DEADLINE_MS="400")
    with LiveServer(build_services(env)) as server:
        broker = Broker(server)
        *_, daemon, daemon_jwt, _ = make_pair(broker)
        broker.services.pump.stop()
        t0 = time.monotonic()
        r = broker.mint(daemon_jwt, signed_mint_body(daemon))
        assert r.status_code == 503 and r.json()["error"] == "anchor_unavailable"
        assert time.monotonic() - t0 < 5
        assert_no_credentials(r)
        [withheld] = broker.events("MintWithheld")
        assert withheld["missing_anchors"] == ["sqlite"]
        assert broker.minter.calls == 1  # STS was called (speculatively); the credential was withheld
        broker.client.close()


def test_f_second_anchor_failing_withholds_even_though_sqlite_confirmed(tmp_path: Path, dev_aws) -> None:
    failing = MemoryAnchor(name="failing")
    confirming = MemoryAnchor(name="sqlite")
    env = broker_env(tmp_path, **sts_env(dev_aws))
    gate = ReleaseGate([confirming, failing], ["sqlite", "failing"], 500, waiter=default_waiter())
    with LiveServer(build_services(env, anchors=[confirming, failing], gate=gate)) as server:
        broker = Broker(server)
        *_, daemon, daemon_jwt, _ = make_pair(broker)  # sessions released: both anchors confirm so far
        failing.fail_next_submit(RuntimeError("disk on fire"), times=None)
        r = broker.mint(daemon_jwt, signed_mint_body(daemon))
        assert r.status_code == 503
        assert_no_credentials(r)
        [withheld] = broker.events("MintWithheld")
        assert withheld["missing_anchors"] == ["failing"]
        broker.client.close()


# --- grants --------------------------------------------------------------------------------------

def test_grant_create_list_revoke_round_trip(broker: Broker) -> None:
    master, daemon = Wallet(), Wallet()
    jwt = broker.session(master)
    g = broker.grant(jwt, daemon)
    assert g["grant_id"].startswith("grn-") and g["audit_proof"].startswith("eyJ")
    [row] = broker.client.get("/v1/grant/list", headers=auth(jwt)).json()["grants"]
    assert row["used_count"] == 0 and row["revoked_at"] is None and row["daemon_address"] == daemon.address
    assert broker.client.post("/v1/grant/revoke", json={"grant_id": g["grant_id"]}, headers=auth(jwt)).status_code == 200
    again = broker.client.post("/v1/grant/revoke", json={"grant_id": g["grant_id"]}, headers=auth(jwt))
    assert again.status_code == 400
    [row] = broker.client.get("/v1/grant/list", headers=auth(jwt)).json()["grants"]
    assert row["revoked_at"] is not None
    bound = [e for e in broker.events("WalletBound") if e["address"] == daemon.address]
    assert bound == [{"omni_account": bound[0]["omni_account"], "address": daemon.address, "role": "daemon",
                      "parent_address": master.address}]


def test_grant_audit_proof_verifies_offline_with_the_recorded_public_key(broker: Broker) -> None:
    import jwt as pyjwt

    from api.keys import public_key_from_jwk
    from api.signing import verify_audit_proof

    master, daemon = Wallet(), Wallet()
    g = broker.grant(broker.session(master), daemon)
    kid = pyjwt.get_unverified_header(g["audit_proof"])["kid"]
    [jwk] = [e["public_jwk"] for e in broker.events("SigningKeyRotated") if e["kid"] == kid]
    content = verify_audit_proof(g["audit_proof"], public_key_from_jwk(jwk))
    assert content["grant_id"] == g["grant_id"] and content["daemon_address"] == daemon.address


def test_non_owner_cannot_revoke_and_lists_are_private(broker: Broker) -> None:
    a, b, daemon = Wallet(), Wallet(), Wallet()
    ja, jb = broker.session(a), broker.session(b)
    g = broker.grant(ja, daemon)
    assert broker.client.post("/v1/grant/revoke", json={"grant_id": g["grant_id"]}, headers=auth(jb)).status_code == 400
    assert broker.client.get("/v1/grant/list", headers=auth(jb)).json() == {"grants": []}
    assert broker.client.post("/v1/grant/revoke", json={"grant_id": g["grant_id"]}, headers=auth(ja)).status_code == 200


def test_grant_create_refusals(broker: Broker) -> None:
    master = Wallet()
    jwt = broker.session(master)
    body = {"daemon_address": Wallet().address, "service": "s3", "scope_path": ns(master, "x/"),
            "expires_at": int(time.time()) + 60, "max_uses": 1}
    assert broker.client.post("/v1/grant/create", json=body, headers=auth(jwt)).status_code == 200
    assert broker.client.post("/v1/grant/create", json=body).status_code == 401
    assert broker.client.post("/v1/grant/create", json={**body, "expires_at": 1}, headers=auth(jwt)).status_code == 400
    assert (
        broker.client.post("/v1/grant/create", json={**body, "scope_path": "agentkeys-dev/*"}, headers=auth(jwt)).status_code
        == 400
    )
    assert broker.client.post("/v1/grant/create", json={**body, "max_uses": 0}, headers=auth(jwt)).status_code == 400
    assert (
        broker.client.post("/v1/grant/create", json={**body, "daemon_address": master.address}, headers=auth(jwt)).status_code
        == 400
    )


@pytest.mark.parametrize("case", ["revoked", "expired", "exhausted", "other_service", "other_daemon", "scope"])
def test_unusable_grants_are_403_with_a_typed_reason_and_never_reach_sts(broker: Broker, case: str) -> None:
    master, daemon = Wallet(), Wallet()
    mj = broker.session(master)
    dj = broker.session(daemon)
    kw = {"max_uses": 1} if case == "exhausted" else {}
    if case == "expired":
        kw["expires_at"] = int(time.time()) + 2
    g = broker.grant(mj, daemon if case != "other_daemon" else Wallet(), **kw)
    body = signed_mint_body(daemon)
    if case == "revoked":
        broker.client.post("/v1/grant/revoke", json={"grant_id": g["grant_id"]}, headers=auth(mj))
    elif case == "expired":
        time.sleep(2.1)
    elif case == "exhausted":
        assert broker.mint(dj, signed_mint_body(daemon)).status_code == 200
        broker.minter.calls = 0
    elif case == "other_service":
        body = signed_mint_body(daemon, service="dynamodb", scope_path="")
    elif case == "scope":
        body = signed_mint_body(daemon, scope_path=ns(mj, "agents/a10/"))
    r = broker.mint(dj, body)
    expected = {"revoked": "grant_revoked", "expired": "grant_expired", "exhausted": "grant_exhausted",
                "other_service": "unknown_service", "other_daemon": "no_grant", "scope": "scope_not_granted"}[case]
    assert r.status_code == (400 if case == "other_service" else 403), r.text
    assert r.json()["reason"] == expected
    assert_no_credentials(r)
    assert broker.minter.calls == 0
    if case != "other_service":  # a service outside the catalogue is malformed input: refused, not recorded
        assert broker.events("MintDenied")[-1]["reason"] == expected


def test_self_mint_without_grant_only_when_grants_are_not_required(tmp_path: Path, dev_aws) -> None:
    for required, expected in (("true", 403), ("false", 200)):
        env = broker_env(tmp_path / required, **sts_env(dev_aws), BROKER_GRANTS_REQUIRED=required)
        with LiveServer(build_services(env)) as server:
            b = Broker(server)
            w = Wallet()
            r = b.mint(b.session(w), signed_mint_body(w))
            assert r.status_code == expected, r.text
            b.client.close()


def test_20_racing_mints_on_a_grant_with_max_uses_5_yield_exactly_5_credentials(broker: Broker) -> None:
    master, daemon = Wallet(), Wallet()
    broker.grant(broker.session(master), daemon, max_uses=5)
    dj = broker.session(daemon)
    bodies = [signed_mint_body(daemon) for _ in range(20)]

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=broker.server.url, timeout=60) as ac:
            return await asyncio.gather(*[ac.post("/v1/mint-aws-creds", json=b, headers=auth(dj)) for b in bodies])

    responses = asyncio.run(race())
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 5 + [403] * 15, codes
    for r in responses:
        if r.status_code != 200:
            assert r.json()["reason"] == "grant_exhausted"
            assert_no_credentials(r)
    assert broker.minter.calls == 5
    assert len(broker.events("GrantUsed")) == 5


# --- request checks (§H 12–38 adapted; compat.md) ------------------------------------------------

def test_request_id_replay_is_409_and_sts_is_called_once(broker: Broker, pair) -> None:
    *_, daemon, dj, _ = pair
    body = signed_mint_body(daemon)
    assert broker.mint(dj, body).status_code == 200
    r = broker.mint(dj, body)
    assert r.status_code == 409 and r.json()["reason"] == "request_replayed"
    assert_no_credentials(r)
    assert broker.minter.calls == 1


@pytest.mark.parametrize("delta", [timedelta(seconds=-301), timedelta(seconds=301)])
def test_stale_issued_at_is_refused(broker: Broker, pair, delta: timedelta) -> None:
    *_, daemon, dj, _ = pair
    issued = (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = broker.mint(dj, signed_mint_body(daemon, issued_at=issued))
    assert r.status_code == 400 and r.json()["reason"] == "stale_request"
    assert broker.minter.calls == 0


def test_missing_bearer_and_bad_bearers_are_401(broker: Broker, pair) -> None:
    *_, daemon, dj, _ = pair
    body = signed_mint_body(daemon)
    assert broker.client.post("/v1/mint-aws-creds", json=body).status_code == 401
    for header in ("bearer " + dj, "Token " + dj, "Bearer", "Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.deadbeef"):
        r = broker.client.post("/v1/mint-aws-creds", json=body, headers={"Authorization": header})
        assert r.status_code == 401, header
    assert broker.minter.calls == 0


def test_empty_and_malformed_bodies_are_400(broker: Broker, pair) -> None:
    *_, dj, _ = pair
    assert broker.mint(dj, b"").status_code == 400
    assert "requires a JSON body" in broker.mint(dj, b"").json()["message"]
    assert broker.mint(dj, b"{not json").status_code == 400
    assert broker.mint(dj, b'{"request_id": 1}').status_code == 400


@pytest.mark.parametrize(
    "signature,reason,message",
    [
        ("0xzz", "signature_not_hex", "signature is not hex"),
        ("0x" + "11" * 64, "signature_length", "signature must be 65 bytes, got 64"),
        ("0x" + "11" * 64 + "1d", "signature_v", "unsupported v byte: 29"),
    ],
)
def test_malformed_per_call_signatures(broker: Broker, pair, signature: str, reason: str, message: str) -> None:
    *_, daemon, dj, _ = pair
    body = signed_mint_body(daemon)
    body["auth"]["signature"] = signature
    r = broker.mint(dj, body)
    assert r.status_code == 400 and r.json()["reason"] == reason and message in r.json()["message"]


def test_v_27_and_v_0_are_equivalent(broker: Broker, pair) -> None:
    *_, daemon, dj, _ = pair
    body = signed_mint_body(daemon)
    sig = bytes.fromhex(body["auth"]["signature"][2:])
    body["auth"]["signature"] = "0x" + (sig[:64] + bytes([sig[64] - 27])).hex()
    assert broker.mint(dj, body).status_code == 200


def test_reordered_keys_and_whitespace_do_not_change_validity(broker: Broker, pair) -> None:
    *_, daemon, dj, _ = pair
    body = signed_mint_body(daemon)
    raw = json.dumps({"auth": body["auth"], "intent": body["intent"], "issued_at": body["issued_at"],
                      "request_id": body["request_id"]}, indent=3).encode()
    assert broker.mint(dj, raw).status_code == 200


def test_a_field_added_after_signing_invalidates_the_signature(broker: Broker, pair) -> None:
    *_, daemon, dj, _ = pair
    body = signed_mint_body(daemon)
    body["extra"] = "sneaky"
    r = broker.mint(dj, body)
    assert r.status_code == 401
    assert broker.minter.calls == 0


def test_claimed_address_differs_from_signer(broker: Broker, pair) -> None:
    *_, daemon, dj, _ = pair
    r = broker.mint(dj, signed_mint_body(daemon, address=Wallet().address))
    assert r.status_code == 401


def test_sts_failure_is_502_with_no_credentials(tmp_path: Path, dev_aws) -> None:
    from ledger.ports import StsError

    class Failing:
        def assume_role(self, request):  # noqa: ANN001, ANN201
            raise StsError("AccessDenied", "simulated AccessDenied")

        def check_identity(self) -> str:
            return "x"

    env = broker_env(tmp_path, **sts_env(dev_aws))
    with LiveServer(build_services(env, minter=Failing())) as server:
        broker = Broker(server)
        *_, daemon, dj, _ = make_pair(broker)
        r = broker.mint(dj, signed_mint_body(daemon))
        assert r.status_code == 502 and r.json()["error"] == "sts_error" and "simulated AccessDenied" in r.json()["message"]
        assert_no_credentials(r)
        assert broker.events("MintDenied")[-1]["reason"] == "sts_error"
        broker.client.close()


def test_mints_are_rate_limited_per_omni_account(tmp_path: Path, dev_aws) -> None:
    env = broker_env(tmp_path, **sts_env(dev_aws), BROKER_RATE_LIMIT_MINTS_PER_HOUR_PER_OMNI="2",
                     BROKER_GRANTS_REQUIRED="false")
    with LiveServer(build_services(env)) as server:
        b = Broker(server)
        w = Wallet()
        jwt = b.session(w)
        assert [b.mint(jwt, signed_mint_body(w)).status_code for _ in range(3)] == [200, 200, 429]
        r = b.mint(jwt, signed_mint_body(w))
        assert int(r.headers["Retry-After"]) > 0
        b.client.close()


def test_oversized_mint_body_is_413(broker: Broker, pair) -> None:
    *_, daemon, dj, _ = pair
    r = broker.mint(dj, signed_mint_body(daemon, extra={"pad": "x" * 2_000_000}))
    assert r.status_code == 413
    assert broker.minter.calls == 0


def test_services_without_a_scope_take_an_empty_scope_path(tmp_path: Path, dev_aws) -> None:
    from ledger.identity import evm_omni_account
    from ledger.services.masters import MastersService

    (tmp_path / "ddb.json").write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "dynamodb:GetItem", "Resource": "*"}]}))
    (tmp_path / "services.toml").write_text(f"""
[services.s3]
role_arn = "arn:aws:iam::{dev_aws['account_id']}:role/agentkeys-data-role"
scope = "s3_prefix"
buckets = ["agentkeys-dev"]

[services.dynamodb]
role_arn = "arn:aws:iam::{dev_aws['account_id']}:role/agentkeys-ddb"
scope = "none"
policy_template = "ddb.json"
""")
    env = broker_env(tmp_path, **sts_env(dev_aws), BROKER_GRANTS_REQUIRED="false",
                     BROKER_SERVICES_FILE=str(tmp_path / "services.toml"))
    with LiveServer(build_services(env)) as server:
        b = Broker(server)
        w = Wallet()
        jwt = b.session(w)
        r = b.mint(jwt, signed_mint_body(w, service="dynamodb", scope_path=""))
        assert r.status_code == 403 and r.json()["reason"] == "not_enrolled", r.text  # no namespace: assigned only
        MastersService(ledger=server.services.ledger, catalogue=server.services.config.access.catalogue).assign(
            evm_omni_account(w.address), "dynamodb", "", operator="test")
        assert b.mint(jwt, signed_mint_body(w, service="dynamodb", scope_path="")).status_code == 200
        r = b.mint(jwt, signed_mint_body(w, service="dynamodb", scope_path="agentkeys-dev/x/"))
        assert r.status_code == 400 and r.json()["reason"] == "invalid_scope"
        [authorized] = b.events("MintAuthorized")
        assert authorized["role_arn"].endswith(":role/agentkeys-ddb") and authorized["policy_sha256"]
        b.client.close()


def test_after_mints_audit_verify_passes(broker: Broker, pair) -> None:
    import subprocess

    from tests.conftest import ROOT, cli_path

    *_, daemon, dj, _ = pair
    for _ in range(3):
        assert broker.mint(dj, signed_mint_body(daemon)).status_code == 200
    cfg = broker.services.config
    out = subprocess.run([cli_path(), "audit", "verify", "--db", str(cfg.ledger_db), "--anchor-db", str(cfg.anchor_db)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
