"""Namespaces, the service catalogue and assigned tenancy (design §3a, §8 "Access wire"; issue 10),
attacked over real HTTP against a real broker with moto's STS. "Never reached STS" is counted on
moto itself (`/moto-api/data.json`: every `AssumedRole` it issued)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from ledger.services.masters import MastersService
from tests.integration.test_access_model import issued_by_moto
from tests.integration.test_mint import Broker, assert_no_credentials, auth, build_services
from tests.support import LiveServer, Wallet, broker_env, ns, omni_of, remember_master, signed_mint_body
from tests.support_moto import sts_env

STRANGE_SERVICES = ["S3", "aws", "iam", "anything", "s3 ", "ｓ3", "s3\u200b", "", "a" * 33]


def start(tmp_path: Path, dev_aws, **env: str) -> LiveServer:  # noqa: ANN001, ANN003
    return LiveServer(build_services(broker_env(tmp_path, **sts_env(dev_aws), **env)))


@pytest.fixture
def broker(tmp_path: Path, dev_aws):
    with start(tmp_path, dev_aws) as server:
        b = Broker(server)
        yield b
        b.client.close()


def grant(b: Broker, jwt: str, daemon: Wallet, **kw) -> httpx.Response:  # noqa: ANN003
    body = {"daemon_address": daemon.address, "service": "s3", "scope_path": ns(jwt),
            "expires_at": int(time.time()) + 3600, "max_uses": 10, **kw}
    r = b.client.post("/v1/grant/create", json=body, headers=auth(jwt))
    if r.status_code == 200:
        remember_master(daemon.address, jwt)
    return r


def refused(r: httpx.Response, status: int, reason: str) -> None:
    assert r.status_code == status and r.json()["reason"] == reason, r.text
    assert_no_credentials(r)


# --- namespaces ------------------------------------------------------------------------------------

@pytest.mark.parametrize("scope", ["agentkeys-dev", "agentkeys-dev/", "agentkeys-dev/agents/", "other-bucket/x/"])
def test_fresh_master_granting_the_whole_bucket_or_a_shared_prefix_is_refused(broker: Broker, scope: str) -> None:
    master, daemon = Wallet(), Wallet()
    refused(grant(broker, broker.session(master), daemon, scope_path=scope), 403, "scope_not_owned")
    assert broker.events("GrantCreated") == []


def test_granting_inside_another_masters_namespace_is_refused(broker: Broker, dev_aws) -> None:
    victim, attacker, daemon = Wallet(), Wallet(), Wallet()
    broker.session(victim)
    attacker_jwt = broker.session(attacker)
    for scope in (ns(victim), ns(victim, ""), ns(victim, "agents/a1/deeper/")):
        refused(grant(broker, attacker_jwt, daemon, scope_path=scope), 403, "scope_not_owned")
    # a prefix of the victim's omni is not the victim's namespace either (path segments)
    refused(grant(broker, attacker_jwt, daemon, scope_path=f"agentkeys-dev/{omni_of(victim)[:10]}/"), 403,
            "scope_not_owned")
    assert broker.events("GrantCreated") == []
    # its own namespace is fine, and the daemon's mint in it is tagged with the attacker's account
    assert grant(broker, attacker_jwt, daemon).status_code == 200
    before = issued_by_moto(dev_aws)
    m = broker.mint(broker.session(daemon), signed_mint_body(daemon))
    assert m.status_code == 200, m.text
    assert issued_by_moto(dev_aws) == before + 1
    [authorized] = broker.events("MintAuthorized")
    assert authorized["scope_path"].startswith(f"agentkeys-dev/{omni_of(attacker)}/")


def test_daemon_minting_outside_its_grant_in_another_namespace_never_reaches_sts(broker: Broker, dev_aws) -> None:
    master, victim, daemon = Wallet(), Wallet(), Wallet()
    broker.session(victim)
    assert grant(broker, broker.session(master), daemon, scope_path=ns(master, "")).status_code == 200
    before = issued_by_moto(dev_aws)
    r = broker.mint(broker.session(daemon), signed_mint_body(daemon, scope_path=ns(victim)))
    refused(r, 403, "scope_not_granted")
    assert issued_by_moto(dev_aws) == before


@pytest.mark.parametrize("service", STRANGE_SERVICES)
def test_stranger_services_at_grant_are_400_unknown_service(broker: Broker, service: str) -> None:
    master, daemon = Wallet(), Wallet()
    r = grant(broker, broker.session(master), daemon, service=service, scope_path="")
    refused(r, 400, "unknown_service")
    assert broker.events("GrantCreated") == []


@pytest.mark.parametrize("service", STRANGE_SERVICES)
def test_stranger_services_at_mint_never_reach_sts(broker: Broker, dev_aws, service: str) -> None:
    master, daemon = Wallet(), Wallet()
    assert grant(broker, broker.session(master), daemon).status_code == 200
    daemon_jwt = broker.session(daemon)
    before = issued_by_moto(dev_aws)
    for scope in ("", ns(master)):
        refused(broker.mint(daemon_jwt, signed_mint_body(daemon, service=service, scope_path=scope)), 400,
                "unknown_service")
    assert issued_by_moto(dev_aws) == before
    assert broker.events("MintRequested") == []


def test_self_mint_without_grants_stays_in_the_callers_namespace(tmp_path: Path, dev_aws) -> None:
    with start(tmp_path, dev_aws, BROKER_GRANTS_REQUIRED="false") as server:
        b = Broker(server)
        me, victim = Wallet(), Wallet()
        jwt = b.session(me)
        b.session(victim)
        before = issued_by_moto(dev_aws)
        for scope in (ns(victim), "agentkeys-dev/", "agentkeys-dev/shared/"):
            refused(b.mint(jwt, signed_mint_body(me, scope_path=scope)), 403, "scope_not_owned")
        assert issued_by_moto(dev_aws) == before
        assert [d["reason"] for d in b.events("MintDenied")] == ["scope_not_owned"] * 3
        ok = b.mint(jwt, signed_mint_body(me, scope_path=ns(me)))
        assert ok.status_code == 200, ok.text
        assert issued_by_moto(dev_aws) == before + 1
        b.client.close()


# --- the catalogue: each service its role and its policy -------------------------------------------

def write_catalogue(tmp_path: Path, account: str) -> Path:
    (tmp_path / "reports.json").write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::${bucket}/${prefix}*"}]}))
    path = tmp_path / "services.toml"
    path.write_text(f'''
[services.s3]
role_arn = "arn:aws:iam::{account}:role/agentkeys-data-role"
scope = "s3_prefix"
buckets = ["agentkeys-dev"]

[services.reports]
role_arn = "arn:aws:iam::{account}:role/agentkeys-reports"
scope = "s3_prefix"
buckets = ["agentkeys-reports"]
policy_template = "reports.json"

[services.legacy]
role_arn = "arn:aws:iam::{account}:role/agentkeys-legacy"
scope = "none"
unscoped = true
''')
    return path


@pytest.fixture
def catalogue_broker(tmp_path: Path, dev_aws):
    path = write_catalogue(tmp_path, dev_aws["account_id"])
    with start(tmp_path, dev_aws, BROKER_SERVICES_FILE=str(path)) as server:
        b = Broker(server)
        yield b
        b.client.close()


def test_each_mint_assumes_its_services_role_with_its_services_policy(catalogue_broker: Broker, dev_aws) -> None:
    b = catalogue_broker
    master, daemon = Wallet(), Wallet()
    jwt = b.session(master)
    assert grant(b, jwt, daemon).status_code == 200
    assert grant(b, jwt, daemon, service="reports", scope_path=ns(master, "q1/", "agentkeys-reports")).status_code == 200
    daemon_jwt = b.session(daemon)
    assert b.mint(daemon_jwt, signed_mint_body(daemon)).status_code == 200
    r = b.mint(daemon_jwt, signed_mint_body(daemon, service="reports", scope_path=ns(master, "q1/", "agentkeys-reports")))
    assert r.status_code == 200, r.text
    roles = {a["service"]: (a["role_arn"], a["policy_sha256"]) for a in b.events("MintAuthorized")}
    assert roles["s3"][0].endswith(":role/agentkeys-data-role")
    assert roles["reports"][0].endswith(":role/agentkeys-reports")
    assert roles["s3"][1] and roles["reports"][1] and roles["s3"][1] != roles["reports"][1]
    # a reports scope in the s3 bucket (or the reverse) is nobody's namespace
    refused(grant(b, jwt, daemon, service="reports", scope_path=ns(master)), 403, "scope_not_owned")


def test_unassigned_master_granting_a_scope_none_service_is_not_enrolled(catalogue_broker: Broker) -> None:
    b = catalogue_broker
    master, daemon = Wallet(), Wallet()
    refused(grant(b, b.session(master), daemon, service="legacy", scope_path=""), 403, "not_enrolled")
    MastersService(ledger=b.services.ledger, catalogue=b.services.config.access.catalogue).assign(
        omni_of(master), "legacy", "", operator="test")
    assert grant(b, b.session(master), daemon, service="legacy", scope_path="").status_code == 200
    # a scope for a service without a namespace is malformed
    refused(grant(b, b.session(master), daemon, service="legacy", scope_path="agentkeys-dev/x/"), 400, "invalid_scope")


# --- assigned tenancy ------------------------------------------------------------------------------

def test_assigned_tenancy_revoked_root_refuses_the_next_mint_before_sts(tmp_path: Path, dev_aws) -> None:
    with start(tmp_path, dev_aws, BROKER_TENANCY="assigned") as server:
        b = Broker(server)
        masters = MastersService(ledger=server.services.ledger, catalogue=server.services.config.access.catalogue)
        master, daemon = Wallet(), Wallet()
        jwt = b.session(master)
        # unassigned: its own omni namespace means nothing in assigned mode
        refused(grant(b, jwt, daemon), 403, "not_enrolled")
        masters.assign(omni_of(master), "s3", "agentkeys-dev/team-a/", operator="cli:test@host")
        masters.assign(omni_of(master), "s3", "agentkeys-dev/team-b/", operator="cli:test@host")
        refused(grant(b, jwt, daemon), 403, "scope_not_owned")  # its namespace is not an assigned root
        refused(grant(b, jwt, daemon, scope_path="agentkeys-dev/"), 403, "scope_not_owned")
        assert grant(b, jwt, daemon, scope_path="agentkeys-dev/team-a/").status_code == 200
        daemon_jwt = b.session(daemon)
        body = signed_mint_body(daemon, scope_path="agentkeys-dev/team-a/x/")
        assert b.mint(daemon_jwt, body).status_code == 200
        masters.revoke(omni_of(master), "s3", "agentkeys-dev/team-a/", operator="cli:test@host")
        before = issued_by_moto(dev_aws)
        refused(b.mint(daemon_jwt, signed_mint_body(daemon, scope_path="agentkeys-dev/team-a/x/")), 403,
                "scope_not_owned")
        assert issued_by_moto(dev_aws) == before
        denied = b.events("MintDenied")[-1]
        assert denied["reason"] == "scope_not_owned" and denied["grant_id"]
        masters.revoke(omni_of(master), "s3", "agentkeys-dev/team-b/", operator="cli:test@host")
        refused(b.mint(daemon_jwt, signed_mint_body(daemon, scope_path="agentkeys-dev/team-a/x/")), 403,
                "not_enrolled")
        assert issued_by_moto(dev_aws) == before
        assigned = b.events("MasterRootAssigned")
        assert assigned[0] == {"omni_account": omni_of(master), "service": "s3", "root": "agentkeys-dev/team-a/",
                               "operator": "cli:test@host"}
        assert len(b.events("MasterRootRevoked")) == 2
        b.client.close()


# --- the operator's command ------------------------------------------------------------------------

def test_masters_cli_assign_list_revoke_against_a_running_broker(tmp_path: Path, dev_aws) -> None:
    import os
    import subprocess

    from tests.conftest import cli_path

    env = broker_env(tmp_path, **sts_env(dev_aws), BROKER_TENANCY="assigned")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([cli_path(), "masters", *args], env={**os.environ, **env}, capture_output=True,
                              text=True, timeout=120)

    with start(tmp_path, dev_aws, BROKER_TENANCY="assigned") as server:
        b = Broker(server)
        master, daemon = Wallet(), Wallet()
        jwt = b.session(master)
        omni = omni_of(master)
        refused(grant(b, jwt, daemon, scope_path="agentkeys-dev/team-a/"), 403, "not_enrolled")
        done = cli("assign", "--omni-account", omni, "--service", "s3", "--root", "agentkeys-dev/team-a",
                   "--operator", "alice")
        assert done.returncode == 0, done.stderr
        assert cli("assign", "--omni-account", omni, "--service", "s3", "--root", "agentkeys-dev/team-a/").returncode == 1
        for bad in (["--service", "S3", "--root", "agentkeys-dev/x/"], ["--service", "s3", "--root", "other-bucket/x/"],
                    ["--service", "s3", "--root", ""]):
            r = cli("assign", "--omni-account", omni, *bad)
            assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        listed = json.loads(cli("list", "--json").stdout)
        assert listed == {"assignments": [{"omni_account": omni, "service": "s3", "root": "agentkeys-dev/team-a/"}]}
        assert grant(b, jwt, daemon, scope_path="agentkeys-dev/team-a/").status_code == 200
        assert cli("revoke", "--omni-account", omni, "--service", "s3", "--root", "agentkeys-dev/team-a/").returncode == 0
        daemon_jwt = b.session(daemon)
        refused(b.mint(daemon_jwt, signed_mint_body(daemon, scope_path="agentkeys-dev/team-a/")), 403, "not_enrolled")
        [assigned] = b.events("MasterRootAssigned")
        [revoked] = b.events("MasterRootRevoked")
        assert assigned["operator"] == "alice" and revoked["operator"].startswith("cli:")
        b.client.close()
