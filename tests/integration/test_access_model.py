"""The access model (design §3a, §8 "Access wire"; issue 10), attacked over real HTTP against a real
broker with moto's STS: who may grant which daemon, which agent may mint under a grant, who may
read a mint's audit record. STS calls are counted on moto itself (`/moto-api/data.json`, every
`AssumedRole` it issued), so "never reached STS" is checked where credentials are made.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.integration.test_mint import Broker, assert_no_credentials, auth, build_services
from tests.support import LiveServer, Wallet, broker_env, ns, remember_master, signed_mint_body
from tests.support_moto import sts_env


def issued_by_moto(dev_aws) -> int:  # noqa: ANN001
    data = httpx.get(dev_aws["sts_endpoint"].rstrip("/") + "/moto-api/data.json", timeout=10).json()
    return len(data.get("sts", {}).get("AssumedRole", []))


@pytest.fixture
def broker(tmp_path: Path, dev_aws):
    env = broker_env(tmp_path, **sts_env(dev_aws))
    with LiveServer(build_services(env)) as server:
        b = Broker(server)
        yield b
        b.client.close()


def grant_body(daemon: Wallet, master_jwt: str, **kw) -> dict:  # noqa: ANN003
    return {"daemon_address": daemon.address, "service": "s3", "scope_path": ns(master_jwt),
            "expires_at": int(time.time()) + 3600, "max_uses": 10, **kw}


def create_grant(b: Broker, jwt: str, daemon: Wallet, **kw) -> httpx.Response:  # noqa: ANN003
    r = b.client.post("/v1/grant/create", json=grant_body(daemon, jwt, **kw), headers=auth(jwt))
    if r.status_code == 200:
        remember_master(daemon.address, jwt)
    return r


def release(b: Broker, jwt: str, daemon: Wallet) -> httpx.Response:
    return b.client.post("/v1/daemon/release", json={"daemon_address": daemon.address}, headers=auth(jwt))


# --- grant hijack: a daemon belongs to one master -------------------------------------------------

def test_hijacking_grant_naming_another_masters_daemon_is_refused(broker: Broker, dev_aws) -> None:
    owner, stranger, daemon = Wallet(), Wallet(), Wallet()
    owner_jwt, stranger_jwt = broker.session(owner), broker.session(stranger)
    assert create_grant(broker, owner_jwt, daemon).status_code == 200
    r = create_grant(broker, stranger_jwt, daemon)
    assert r.status_code == 403 and r.json()["reason"] == "daemon_bound_elsewhere", r.text
    # the daemon's mints still use its own master's grant and carry its master's tag
    before = issued_by_moto(dev_aws)
    m = broker.mint(broker.session(daemon), signed_mint_body(daemon))
    assert m.status_code == 200, m.text
    assert issued_by_moto(dev_aws) == before + 1
    [authorized] = broker.events("MintAuthorized")
    grants = {g["grant_id"]: g for g in broker.events("GrantCreated")}
    assert [g["master_address"] for g in grants.values()] == [owner.address]
    assert authorized["grant_master_omni_account"] == grants[authorized["grant_id"]]["master_omni_account"]


def test_the_binding_lapses_when_its_master_holds_no_live_grant(broker: Broker) -> None:
    owner, other, daemon = Wallet(), Wallet(), Wallet()
    owner_jwt, other_jwt = broker.session(owner), broker.session(other)
    g = create_grant(broker, owner_jwt, daemon).json()
    assert broker.client.post("/v1/grant/revoke", json={"grant_id": g["grant_id"]}, headers=auth(owner_jwt)).status_code == 200
    assert create_grant(broker, other_jwt, daemon).status_code == 200


def test_squatted_daemon_releases_itself_and_its_real_master_can_then_grant(broker: Broker, dev_aws) -> None:
    squatter, real_master, daemon = Wallet(), Wallet(), Wallet()
    squatter_jwt, master_jwt, daemon_jwt = broker.session(squatter), broker.session(real_master), broker.session(daemon)
    assert create_grant(broker, squatter_jwt, daemon).status_code == 200  # squats a public address
    assert create_grant(broker, master_jwt, daemon).json()["reason"] == "daemon_bound_elsewhere"
    r = release(broker, daemon_jwt, daemon)
    assert r.status_code == 200, r.text
    assert len(r.json()["revoked_grants"]) == 1
    [released] = broker.events("DaemonReleased")
    assert released["daemon_address"] == daemon.address and released["by"] != released["master_omni_account"]
    assert create_grant(broker, master_jwt, daemon).status_code == 200
    before = issued_by_moto(dev_aws)
    assert broker.mint(daemon_jwt, signed_mint_body(daemon)).status_code == 200
    assert issued_by_moto(dev_aws) == before + 1


def test_stranger_cannot_release_someone_elses_daemon(broker: Broker) -> None:
    owner, stranger, daemon = Wallet(), Wallet(), Wallet()
    owner_jwt = broker.session(owner)
    assert create_grant(broker, owner_jwt, daemon).status_code == 200
    r = release(broker, broker.session(stranger), daemon)
    assert r.status_code == 404, r.text  # the same answer as no binding at all: no oracle
    assert release(broker, broker.session(stranger), Wallet()).status_code == 404
    assert not broker.events("DaemonReleased") and not broker.events("GrantRevoked")


def test_master_releasing_its_daemon_stops_the_next_mint_before_sts(broker: Broker, dev_aws) -> None:
    owner, daemon = Wallet(), Wallet()
    owner_jwt, daemon_jwt = broker.session(owner), broker.session(daemon)
    assert create_grant(broker, owner_jwt, daemon).status_code == 200
    assert release(broker, owner_jwt, daemon).status_code == 200
    before = issued_by_moto(dev_aws)
    r = broker.mint(daemon_jwt, signed_mint_body(daemon))
    assert r.status_code == 403 and r.json()["reason"] == "grant_revoked", r.text
    assert_no_credentials(r)
    assert issued_by_moto(dev_aws) == before


# --- agent_id pins --------------------------------------------------------------------------------

@pytest.mark.parametrize("pin,agent,allowed", [
    ({"agent_id": "agent-1"}, "agent-1", True),
    ({"agent_id": "agent-1"}, "agent-10", False),
    ({"agent_id_prefix": "team-a:"}, "team-a:worker-3", True),
    ({"agent_id_prefix": "team-a:"}, "team-b:worker-3", False),
])
def test_agent_id_pins_are_enforced_at_mint_without_reaching_sts(broker: Broker, dev_aws, pin: dict, agent: str,
                                                                 allowed: bool) -> None:
    owner, daemon = Wallet(), Wallet()
    assert create_grant(broker, broker.session(owner), daemon, **pin).status_code == 200
    before = issued_by_moto(dev_aws)
    r = broker.mint(broker.session(daemon), signed_mint_body(daemon, agent_id=agent))
    if allowed:
        assert r.status_code == 200, r.text
        assert issued_by_moto(dev_aws) == before + 1
    else:
        assert r.status_code == 403 and r.json()["reason"] == "agent_not_granted", r.text
        assert_no_credentials(r)
        assert issued_by_moto(dev_aws) == before
        assert broker.events("MintDenied")[-1]["reason"] == "agent_not_granted"
    [created] = broker.events("GrantCreated")
    assert {k: created[k] for k in pin} == pin and not ({"agent_id", "agent_id_prefix"} - set(pin)) & set(created)


@pytest.mark.parametrize("agent", ["", "a" * 65, "agent one", "agent/1", "ägent", "a\u0000b", "*"])
def test_forged_agent_ids_are_400_at_mint_and_never_reach_sts(broker: Broker, dev_aws, agent: str) -> None:
    owner, daemon = Wallet(), Wallet()
    assert create_grant(broker, broker.session(owner), daemon).status_code == 200
    before = issued_by_moto(dev_aws)
    r = broker.mint(broker.session(daemon), signed_mint_body(daemon, agent_id=agent))
    assert r.status_code == 400, r.text
    assert r.json()["reason"] == "invalid_agent_id"
    assert issued_by_moto(dev_aws) == before


def test_grant_pins_are_validated_and_exclusive(broker: Broker) -> None:
    owner, daemon = Wallet(), Wallet()
    jwt = broker.session(owner)
    r = create_grant(broker, jwt, daemon, agent_id="bad id")
    assert r.status_code == 400 and r.json()["reason"] == "invalid_agent_id"
    r = create_grant(broker, jwt, daemon, agent_id="a", agent_id_prefix="a")
    assert r.status_code == 400
    assert not broker.events("GrantCreated")


# --- audit visibility -----------------------------------------------------------------------------

def test_master_reads_its_daemons_mint_record_and_a_stranger_gets_404(broker: Broker) -> None:
    owner, daemon, stranger = Wallet(), Wallet(), Wallet()
    owner_jwt = broker.session(owner)
    assert create_grant(broker, owner_jwt, daemon).status_code == 200
    minted = broker.mint(broker.session(daemon), signed_mint_body(daemon))
    assert minted.status_code == 200, minted.text
    seq = minted.json()["seq"]
    r = broker.client.get(f"/v1/audit/records/{seq}", headers=auth(owner_jwt))
    assert r.status_code == 200, r.text
    assert r.json()["record"]["type"] == "MintAuthorized"
    r = broker.client.get(f"/v1/audit/records/{seq}", headers=auth(broker.session(stranger)))
    assert r.status_code == 404
