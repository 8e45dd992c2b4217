"""/healthz, /readyz and /v1/audit/head over real HTTP through the Litestar app (uvicorn on a
free loopback port), on real SQLite files."""

from __future__ import annotations

import os
import stat
import time
import uuid
from pathlib import Path

import httpx
import pytest

from api.config import BrokerConfig
from api.runtime import Services
from ledger.events import WalletBound
from tests.support import LiveServer, broker_env
from tests.support_moto import sts_env


@pytest.fixture
def config(tmp_path: Path, dev_aws) -> BrokerConfig:
    return BrokerConfig.from_env(broker_env(tmp_path, **sts_env(dev_aws), BROKER_READINESS_PROBE_INTERVAL_SECONDS="0.1"))


@pytest.fixture
def live(config: BrokerConfig):
    with LiveServer(Services.build(config)) as server:
        yield server


def test_healthz_is_plain_ok(live: LiveServer) -> None:
    r = httpx.get(live.url + "/healthz")
    assert r.status_code == 200 and r.text == "ok"
    assert r.headers["content-type"].startswith("text/plain")


def test_readyz_lists_every_check_when_ready(live: LiveServer) -> None:
    r = httpx.get(live.url + "/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body == {"status": "ready", "degraded": False, "checks": [], "ready": body["ready"], "age_ms": body["age_ms"]}
    assert set(body["ready"]) == {
        "ledger",
        "ledger/integrity",
        "sts",
        "anchor/sqlite",
        "keys/session",
        "keys/oidc",
        "auth/wallet_sig",
        "projections",
    }
    assert set(body["age_ms"]) == set(body["ready"])
    assert all(isinstance(v, int) and 0 <= v < 60_000 for v in body["age_ms"].values())


def readyz_until(url: str, status: int, timeout_s: float = 10.0) -> httpx.Response:
    """The probes run in the background: poll until /readyz answers `status`."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = httpx.get(url + "/readyz")
        if r.status_code == status or time.monotonic() > deadline:
            return r
        time.sleep(0.05)


def test_readyz_turns_unready_when_the_anchor_file_goes_away_and_back(live: LiveServer, config: BrokerConfig) -> None:
    if os.geteuid() == 0:
        # root ignores permission bits: make the anchor path unusable by replacing the file with a directory
        backup = config.anchor_db.with_suffix(".bak")
        os.replace(config.anchor_db, backup)
        for suffix in ("-wal", "-shm"):
            p = Path(str(config.anchor_db) + suffix)
            if p.exists():
                os.replace(p, Path(str(backup) + suffix))
        config.anchor_db.mkdir()
        try:
            r = readyz_until(live.url, 503)
            assert r.status_code == 503, r.text
            body = r.json()
            assert body["status"] == "unready"
            [check] = [c for c in body["checks"] if c["name"] == "anchor/sqlite"]
            assert check["status"] == "unready" and check["docs"].endswith("#readyz-anchor-sqlite")
            assert "ledger" in body["ready"]
        finally:
            config.anchor_db.rmdir()
            os.replace(backup, config.anchor_db)
            for suffix in ("-wal", "-shm"):
                p = Path(str(backup) + suffix)
                if p.exists():
                    os.replace(p, Path(str(config.anchor_db) + suffix))
    else:
        mode = config.anchor_db.parent.stat().st_mode
        config.anchor_db.parent.chmod(stat.S_IRUSR | stat.S_IXUSR)
        try:
            assert readyz_until(live.url, 503).status_code == 503
        finally:
            config.anchor_db.parent.chmod(mode)
    r = readyz_until(live.url, 200)
    assert r.status_code == 200, r.text


def test_audit_head_reports_the_chain_head_and_anchor_position(live: LiveServer) -> None:
    r = httpx.get(live.url + "/v1/audit/head")
    assert r.status_code == 200
    ledger = live.services.ledger
    start = ledger.head().seq  # the signing keys in use are recorded at boot
    assert start == 2
    assert r.json()["seq"] == start
    recs = [ledger.append(uuid.uuid4(), 0, [WalletBound(omni_account="ab" * 32, address=f"0x{i:040x}", role="master")])[0]
            for i in range(3)]
    deadline = time.monotonic() + 10
    while True:
        body = httpx.get(live.url + "/v1/audit/head").json()
        if body["anchors"]["sqlite"]["confirmed_seq"] == start + 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert body == {"seq": start + 3, "hash": recs[-1].hash, "anchors": {"sqlite": {"confirmed_seq": start + 3}}}


def test_unknown_route_is_a_json_404_without_traceback(live: LiveServer) -> None:
    r = httpx.get(live.url + "/nope")
    assert r.status_code == 404
    assert r.json()["error"] == "not_found"
    assert "Traceback" not in r.text


def test_openapi_schema_is_served(live: LiveServer) -> None:
    r = httpx.get(live.url + "/schema/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    assert {"/healthz", "/readyz", "/v1/audit/head"} <= set(paths)


def test_outcome_sweep_is_scheduled_under_dual_strict_too(live: LiveServer) -> None:
    """The periodic outcome sweep runs under every policy (before issue 12 the scheduler started
    only under *_primary); the spill is preallocated at boot."""
    services = live.services
    assert services.config.audit_policy == "dual_strict"
    assert services.scheduler is not None and services.scheduler.running
    jobs = {job.id for job in services.scheduler.get_jobs()}
    assert {"outcome-sweep", "spill-recover"} <= jobs and "quarantine-detect" not in jobs
    assert services.spill.path.stat().st_size == services.config.spill_bytes
    assert services.ledger_low_on_space() is False


def test_spill_that_cannot_be_preallocated_refuses_to_boot(tmp_path: Path) -> None:
    from api.config import BootFailure

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    config = BrokerConfig.from_env(broker_env(tmp_path, BROKER_SPILL_PATH=str(blocker / "spill.journal")))
    with pytest.raises(BootFailure) as info:
        Services.build(config)
    assert info.value.var == "BROKER_SPILL_PATH" and info.value.anchor == "spill"
    assert str(info.value).startswith("BOOT_FAIL: BROKER_SPILL_PATH=")


def test_spilled_credential_enters_the_ledger_at_start_up(config: BrokerConfig) -> None:
    """A credential the previous process could not record (its key id in the spill) becomes
    `MintUnreleased{ledger_write_failed}` when the broker starts, and the spill empties."""
    from ledger.aggregates import MintRequest
    from ledger.events import MintRequested
    from ledger.ports import sts_session_name
    from ledger.spill import SpillEntry

    wallet = "0x" + "12" * 20
    services = Services.build(config)
    [requested] = services.ledger.append(MintRequest.stream_for(wallet, "r1"), 0, [MintRequested(
        request_id="r1", request_digest="d" * 64, omni_account="o" * 64, identity_type="evm", identity_value=wallet,
        wallet=wallet, agent_id="a", service="s3", scope_path="agentkeys-dev/a/", grant_id="", session_jti="j")])
    services.spill.write(SpillEntry(
        request_id="r1", wallet=wallet, requested_seq=requested.seq, sts_session_name=sts_session_name(wallet, requested.seq),
        role_arn=config.sts.role_arn, access_key_id="ASIAEXAMPLEEXAMPLE00", expiration=2_000_000_000,
        detail="ledger write failed: database or disk is full"))
    with LiveServer(services):
        records = services.ledger.read(0, 1000)
        assert services.spill.pending() == []  # recorded, acknowledged, compacted
    [unreleased] = [r.data for r in records if r.type == "MintUnreleased"]
    assert (unreleased["reason"], unreleased["access_key_id"]) == ("ledger_write_failed", "ASIAEXAMPLEEXAMPLE00")
    assert unreleased["sts_session_name"] == sts_session_name(wallet, requested.seq)
