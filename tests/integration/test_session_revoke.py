"""`POST /v1/auth/session/revoke` over real HTTP: a revoked session is refused by every session
check, also after a restart (issue 11 item 2, design §8 "Access wire")."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from api.config import BrokerConfig
from api.runtime import Services
from tests.integration.test_mint import Broker, assert_no_credentials, auth, broker, pair  # noqa: F401
from tests.support import LiveServer, Wallet, broker_env, sign_in, signed_mint_body


def revoke(client: httpx.Client, jwt: str, body: dict | None = None) -> httpx.Response:
    if body is None:
        return client.post("/v1/auth/session/revoke", headers=auth(jwt))
    return client.post("/v1/auth/session/revoke", headers=auth(jwt), json=body)


def refused_as_revoked(r: httpx.Response) -> bool:
    return r.status_code == 401 and r.json().get("reason") == "session_revoked"


def test_stolen_session_revoked_by_its_owner_is_refused_by_every_session_check(tmp_path: Path) -> None:
    with LiveServer(Services.build(BrokerConfig.from_env(broker_env(tmp_path)))) as live, \
            httpx.Client(base_url=live.url, timeout=30) as client:
        owner, other = Wallet(), Wallet()
        stolen = sign_in(client, owner)["session_jwt"]
        kept = sign_in(client, owner)["session_jwt"]  # the owner's other session (another device)
        bystander = sign_in(client, other)["session_jwt"]
        r = revoke(client, stolen)  # empty body: this session
        assert r.status_code == 200 and r.json() == {"revoked": 1}, r.text
        assert r.headers["cache-control"] == "no-store"
        [event] = [rec.data for rec in live.services.ledger.read(0, 10_000) if rec.type == "SessionRevoked"]
        assert event["jti"] and event["not_before"] is None
        head = live.services.ledger.head().seq
        for attempt in (client.get("/v1/grant/list", headers=auth(stolen)),
                        client.get(f"/v1/audit/records/{head}", headers=auth(stolen)),
                        client.post("/v1/grant/create", headers=auth(stolen), json={
                            "daemon_address": Wallet().address, "service": "s3", "scope_path": "agentkeys-dev/a/",
                            "expires_at": int(time.time()) + 3600, "max_uses": 1}),
                        revoke(client, stolen)):
            assert refused_as_revoked(attempt), attempt.text
        assert live.services.ledger.head().seq == head  # nothing recorded for the refused session
        assert client.get("/v1/grant/list", headers=auth(kept)).status_code == 200
        assert client.get("/v1/grant/list", headers=auth(bystander)).status_code == 200


def test_revoke_all_logs_out_every_session_of_the_account_and_only_it(tmp_path: Path) -> None:
    with LiveServer(Services.build(BrokerConfig.from_env(broker_env(tmp_path)))) as live, \
            httpx.Client(base_url=live.url, timeout=30) as client:
        owner, other = Wallet(), Wallet()
        sessions = [sign_in(client, owner)["session_jwt"] for _ in range(3)]
        bystander = sign_in(client, other)["session_jwt"]
        r = revoke(client, sessions[0], {"all": True})
        assert r.status_code == 200 and r.json() == {"revoked": 3}, r.text
        for jwt in sessions:
            assert refused_as_revoked(client.get("/v1/grant/list", headers=auth(jwt)))
        assert client.get("/v1/grant/list", headers=auth(bystander)).status_code == 200
        # signing in again (even within the same second) gives a working session
        fresh = sign_in(client, owner)["session_jwt"]
        assert client.get("/v1/grant/list", headers=auth(fresh)).status_code == 200
        [event] = [rec.data for rec in live.services.ledger.read(0, 10_000) if rec.type == "SessionRevoked"]
        assert event["jti"] is None and abs(event["not_before"] - time.time()) < 60


@pytest.mark.parametrize("body", [b"[]", b"{\"all\": \"yes\"}", b"{\"everything\": true}", b"not json"])
def test_revoke_with_a_malformed_body_is_400_and_revokes_nothing(tmp_path: Path, body: bytes) -> None:
    with LiveServer(Services.build(BrokerConfig.from_env(broker_env(tmp_path)))) as live, \
            httpx.Client(base_url=live.url, timeout=30) as client:
        jwt = sign_in(client, Wallet())["session_jwt"]
        r = client.post("/v1/auth/session/revoke", headers={**auth(jwt), "content-type": "application/json"},
                        content=body)
        assert r.status_code == 400 and r.json()["error"] == "bad_request", r.text
        assert client.get("/v1/grant/list", headers=auth(jwt)).status_code == 200
        assert client.post("/v1/auth/session/revoke", json={"all": False}).status_code == 401  # no session


@pytest.mark.parametrize("lose_read_models", [False, True])
def test_revoked_session_is_refused_after_a_restart(tmp_path: Path, lose_read_models: bool) -> None:
    """Revocations live in the ledger and the `sessions` read model: a restart keeps them, and so
    does a restart whose read-model database was lost (rebuilt from the ledger before serving)."""
    env = broker_env(tmp_path)
    with LiveServer(Services.build(BrokerConfig.from_env(env))) as live, \
            httpx.Client(base_url=live.url, timeout=30) as client:
        owner = Wallet()
        revoked, live_one = sign_in(client, owner)["session_jwt"], sign_in(client, Wallet())["session_jwt"]
        assert revoke(client, revoked).json() == {"revoked": 1}
    config = BrokerConfig.from_env(env)
    if lose_read_models:
        for suffix in ("", "-wal", "-shm"):
            Path(str(config.projections_db) + suffix).unlink(missing_ok=True)
    with LiveServer(Services.build(config)) as live, httpx.Client(base_url=live.url, timeout=30) as client:
        assert refused_as_revoked(client.get("/v1/grant/list", headers=auth(revoked)))
        assert client.get("/v1/grant/list", headers=auth(live_one)).status_code == 200


def test_revoked_daemon_session_cannot_mint(broker: Broker, pair) -> None:
    *_, daemon, daemon_jwt, _ = pair
    assert revoke(broker.client, daemon_jwt).json() == {"revoked": 1}
    r = broker.mint(daemon_jwt, signed_mint_body(daemon))
    assert refused_as_revoked(r), r.text
    assert_no_credentials(r)
    assert broker.minter.calls == 0
    fresh = broker.session(daemon)
    assert broker.mint(fresh, signed_mint_body(daemon)).status_code == 200
