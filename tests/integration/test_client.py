"""The daemon client library (api/client.py) against a real broker over HTTP with moto STS:
sign-in, grants, mints, credentials that refresh themselves across an expiry (injected clock), and
the typed errors a daemon branches on."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from api.client import (
    AuthenticationFailed,
    BrokerClient,
    ClockSkew,
    ConfigurationError,
    GrantRequired,
    RateLimited,
    load_account,
)
from api.config import BrokerConfig
from api.runtime import Services
from tests.support import LiveServer, Wallet, broker_env
from tests.support_moto import sts_env

ISSUER = "https://broker.test.invalid"  # broker_env's issuer: the SIWE domain and the mint's aud


class FakeClock:
    """Real time plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def _live(tmp_path: Path, dev_aws: dict[str, Any], **env: str) -> LiveServer:
    return LiveServer(Services.build(BrokerConfig.from_env(broker_env(tmp_path, **sts_env(dev_aws), **env))))


def _mint_authorized(live: LiveServer) -> list[dict[str, Any]]:
    from ledger.audit import DatabaseReader

    with DatabaseReader(live.services.config.ledger_db) as reader:
        return [json.loads(bytes(r.data)) for r in reader if r.type == "MintAuthorized"]


def _s3(dev_aws: dict[str, Any], session: Any) -> Any:
    from botocore.config import Config

    return session.client("s3", endpoint_url=dev_aws["sts_endpoint"], region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}))


def test_sign_in_grant_mint_list_and_revoke(tmp_path: Path, dev_aws) -> None:
    master, daemon = Wallet(), Wallet()
    with _live(tmp_path, dev_aws) as live, \
            BrokerClient(live.url, master.account, issuer=ISSUER) as boss, \
            BrokerClient(live.url, daemon.account, issuer=ISSUER) as agent:
        session = boss.sign_in()
        assert session.wallet_address == master.address and len(session.omni_account) == 64 and session.seq > 0
        assert boss.sign_in() is session  # cached while fresh: no second sign-in
        scope = f"{dev_aws['bucket']}/{session.omni_account}/agents/"

        with pytest.raises(GrantRequired) as no_grant:
            agent.mint_aws("agent-1", "s3", scope + "a1/")
        assert no_grant.value.reason == "no_grant" and no_grant.value.status == 403
        assert f"agentkeys-broker grant create --url {live.url}" in str(no_grant.value)
        assert f"--daemon {daemon.address}" in str(no_grant.value)

        grant = boss.grant(daemon.address, "s3", scope, expires_in=600, max_uses=5)
        assert grant.grant_id.startswith("grn-") and grant.used_count == 0
        creds = agent.mint_aws("agent-1", "s3", scope + "a1/")
        assert creds.access_key_id.startswith("ASIA") and creds.seq > 0 and creds.anchored
        assert creds.expiration > time.time() + 600
        sts = boto3.client("sts", endpoint_url=dev_aws["sts_endpoint"], region_name="us-east-1",
                           aws_access_key_id=creds.access_key_id, aws_secret_access_key=creds.secret_access_key,
                           aws_session_token=creds.session_token)
        assert "assumed-role" in sts.get_caller_identity()["Arn"]
        [record] = _mint_authorized(live)
        assert record["access_key_id"] == creds.access_key_id and record["wallet"] == daemon.address
        assert creds.credential_process()["Version"] == 1
        assert creds.credential_process()["Expiration"].endswith("Z")

        [listed] = boss.grants()
        assert listed.grant_id == grant.grant_id and listed.used_count == 1

        assert boss.revoke(grant.grant_id) is True
        with pytest.raises(GrantRequired) as revoked:
            agent.mint_aws("agent-1", "s3", scope + "a1/")
        assert revoked.value.reason == "grant_revoked" and "grant create" in str(revoked.value)


def test_the_signed_body_carries_aud_and_the_broker_accepts_it(tmp_path: Path, dev_aws) -> None:
    from ledger.services.mint import canonical_signing_input
    from ledger.signatures import verify_personal_sign

    daemon = Wallet()
    client = BrokerClient("http://127.0.0.1:1", daemon.account, issuer=ISSUER + "/")
    raw = client.mint_body("agent-1", "s3", "b/x/")
    body = json.loads(raw)
    assert body["aud"] == ISSUER  # the issuer without its trailing slash (design §8 "Access wire")
    # the server's own check over the bytes sent
    assert verify_personal_sign(canonical_signing_input(raw), body["auth"]["signature"], daemon.address) == daemon.address
    assert "aud" not in json.loads(BrokerClient("http://127.0.0.1:1", daemon.account, send_aud=False)
                                   .mint_body("agent-1", "s3", "b/x/"))


def test_boto3_session_refreshes_through_the_broker_across_an_expiry(tmp_path: Path, dev_aws) -> None:
    clock = FakeClock()
    master, daemon = Wallet(), Wallet()
    env = {"BROKER_SESSION_DURATION_SECONDS": "900", "BROKER_MINT_MAX_SKEW_SECONDS": "3600",
           "BROKER_SESSION_JWT_TTL_SECONDS": "600"}
    with _live(tmp_path, dev_aws, **env) as live, \
            BrokerClient(live.url, master.account, issuer=ISSUER) as boss, \
            BrokerClient(live.url, daemon.account, issuer=ISSUER, clock=clock) as agent:
        omni = boss.sign_in().omni_account
        scope = f"{dev_aws['bucket']}/{omni}/agents/a1/"
        boss.grant(daemon.address, "s3", scope, expires_in=3600, max_uses=10)
        session = agent.boto3_session("agent-1", "s3", scope, region_name="us-east-1")
        s3 = _s3(dev_aws, session)
        for i in range(3):  # one mint serves many calls
            s3.put_object(Bucket=dev_aws["bucket"], Key=f"{omni}/agents/a1/obj-{i}", Body=b"x")
        first_key = session.get_credentials().get_frozen_credentials().access_key
        first_session = agent.session.seq
        assert len(_mint_authorized(live)) == 1

        clock.offset = 800  # 100 s before the 900 s credentials expire, past the 600 s session
        s3.put_object(Bucket=dev_aws["bucket"], Key=f"{omni}/agents/a1/after", Body=b"y")
        second_key = session.get_credentials().get_frozen_credentials().access_key
        minted = _mint_authorized(live)
        assert len(minted) == 2 and second_key != first_key
        assert [m["access_key_id"] for m in minted] == [first_key, second_key]
        assert agent.session.seq != first_session  # the session was renewed before its expiry, too
        s3.put_object(Bucket=dev_aws["bucket"], Key=f"{omni}/agents/a1/again", Body=b"z")
        assert len(_mint_authorized(live)) == 2


def test_clock_skew_is_named_with_the_measured_offset(tmp_path: Path, dev_aws) -> None:
    clock = FakeClock()
    master, daemon = Wallet(), Wallet()
    with _live(tmp_path, dev_aws) as live, \
            BrokerClient(live.url, master.account, issuer=ISSUER) as boss, \
            BrokerClient(live.url, daemon.account, issuer=ISSUER, clock=clock) as agent:
        omni = boss.sign_in().omni_account
        boss.grant(daemon.address, "s3", f"{dev_aws['bucket']}/{omni}/", expires_in=600, max_uses=5)
        agent.sign_in()
        clock.offset = -1000  # this machine's clock is 1000 s slow
        with pytest.raises(ClockSkew) as skew:
            agent.mint_aws("agent-1", "s3", f"{dev_aws['bucket']}/{omni}/a/")
        assert skew.value.reason == "stale_request" and "NTP" in str(skew.value)
        assert skew.value.skew_seconds is not None and 900 < skew.value.skew_seconds < 1100
        with pytest.raises(ClockSkew):  # a sign-in message "issued in the future" is refused, not signed
            agent.sign_in(force=True)


def test_rate_limited_mint_says_when_to_retry(tmp_path: Path, dev_aws) -> None:
    master, daemon = Wallet(), Wallet()
    with _live(tmp_path, dev_aws, BROKER_RATE_LIMIT_MINTS_PER_HOUR_PER_OMNI="1") as live, \
            BrokerClient(live.url, master.account, issuer=ISSUER) as boss, \
            BrokerClient(live.url, daemon.account, issuer=ISSUER) as agent:
        omni = boss.sign_in().omni_account
        boss.grant(daemon.address, "s3", f"{dev_aws['bucket']}/{omni}/", expires_in=600, max_uses=5)
        agent.mint_aws("agent-1", "s3", f"{dev_aws['bucket']}/{omni}/a/")
        with pytest.raises(RateLimited) as limited:
            agent.mint_aws("agent-1", "s3", f"{dev_aws['bucket']}/{omni}/a/")
        assert limited.value.temporary and limited.value.retry_after and limited.value.retry_after > 0
        assert "Retry-After" in str(limited.value)


def test_relayed_challenge_for_another_broker_is_not_signed(tmp_path: Path, dev_aws) -> None:
    """A broker reached at one address whose SIWE message names another domain (a relaying site)
    gets no signature: the client refuses before signing."""
    daemon = Wallet()
    with _live(tmp_path, dev_aws) as live, BrokerClient(live.url, daemon.account) as client:  # expects 127.0.0.1
        with pytest.raises(AuthenticationFailed) as refused:
            client.sign_in()
        assert "domain_mismatch" in str(refused.value) and "issuer=" in str(refused.value)
        from ledger.audit import DatabaseReader

        with DatabaseReader(live.services.config.ledger_db) as reader:
            assert not [r for r in reader if r.type in ("AuthSucceeded", "AuthFailed")]


def test_key_files_and_keystores(tmp_path: Path) -> None:
    from eth_account import Account

    acct = Account.create()
    key = tmp_path / "k.key"
    key.write_text("0x" + bytes(acct.key).hex() + "\n")
    key.chmod(0o600)
    assert load_account(key_file=key).address == acct.address
    key.chmod(0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        load_account(key_file=key)
    store, password = tmp_path / "k.json", tmp_path / "k.pw"
    store.write_text(json.dumps(Account.encrypt(acct.key, "s3cret", kdf="pbkdf2", iterations=1000)))
    password.write_text("s3cret\n")
    store.chmod(0o600)
    password.chmod(0o600)
    assert load_account(keystore=store, password_file=password).address == acct.address
    password.write_text("wrong")
    with pytest.raises(ConfigurationError, match="cannot decrypt"):
        load_account(keystore=store, password_file=password)


def test_an_agent_pin_the_broker_drops_never_leaves_a_wider_grant(tmp_path: Path, dev_aws) -> None:
    """A broker that ignores `agent_id` on grant create would leave a grant for every agent: the
    client then revokes it and says so. A broker that records the pin returns it."""
    from api.client import BadRequest

    master, daemon = Wallet(), Wallet()
    with _live(tmp_path, dev_aws) as live, BrokerClient(live.url, master.account, issuer=ISSUER) as boss:
        scope = f"{dev_aws['bucket']}/{boss.sign_in().omni_account}/"
        try:
            grant = boss.grant(daemon.address, "s3", scope, expires_in=600, max_uses=1, agent_id="agent-7")
        except BadRequest as exc:
            assert "revoked" in str(exc)
            [listed] = boss.grants()
            assert listed.revoked_at is not None
        else:
            assert grant.agent_id == "agent-7"
            assert [g.agent_id for g in boss.grants() if g.revoked_at is None] == ["agent-7"]


def test_from_key_file_and_from_keystore(tmp_path: Path) -> None:
    from eth_account import Account

    acct = Account.create()
    key, store, password = tmp_path / "k.key", tmp_path / "k.json", tmp_path / "k.pw"
    key.write_text(bytes(acct.key).hex())
    store.write_text(json.dumps(Account.encrypt(acct.key, "pw", kdf="pbkdf2", iterations=1000)))
    password.write_text("pw")
    for p in (key, store, password):
        p.chmod(0o600)
    assert BrokerClient.from_key_file("http://127.0.0.1:1", key).address == acct.address.lower()
    assert BrokerClient.from_keystore("http://127.0.0.1:1", store, password).address == acct.address.lower()
