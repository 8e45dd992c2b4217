"""Issue 12 item 3, design §3a "Accounting" / §8 "STS": a credential STS issued that the ledger
cannot record is never silent, and a nearly full ledger disk refuses mints before STS.

The full disk is injected in process, as design §8 pins it: the minter (the real boto3 one against
moto) fills the ledger writer's connections (`PRAGMA max_page_count`) right after AssumeRole
returns, so the `MintAuthorized` append fails with SQLITE_FULL. The free-space reading is injected
through `Services.build(free_bytes=...)`.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.config import BrokerConfig
from api.runtime import Services
from ledger.app import Ledger
from ledger.errors import LedgerUnavailable
from ledger.events import MintDenied
from ledger.ports import sts_session_name
from tests.integration.test_mint import CountingMinter, assert_no_credentials
from tests.support import LiveServer, Wallet, broker_env, sign_in, signed_mint_body
from tests.support_moto import sts_env

pytestmark = pytest.mark.slow


def cap_pooled_connections(ledger: Ledger, max_pages: int | None) -> int:
    """Set `PRAGMA max_page_count` on every idle pooled connection of the ledger (the writer takes
    one of them): `None` caps each at its current page count. Returns how many it capped."""
    pool = ledger.recorder.datastore.pool
    borrowed = []
    try:
        while pool.num_in_pool > 0:
            borrowed.append(pool.get_connection(timeout=1.0))
        for conn in borrowed:
            cur = conn.cursor()
            if max_pages is None:
                cur.execute("PRAGMA page_count")
                cur.execute(f"PRAGMA max_page_count = {int(cur.fetchone()[0])}")
            else:
                cur.execute(f"PRAGMA max_page_count = {int(max_pages)}")
    finally:
        for conn in borrowed:
            pool.put_connection(conn)
    return len(borrowed)


def fill_ledger(ledger: Ledger) -> int:
    """Make the ledger's disk "full" for its writer: cap the pooled connections at their current
    page count (`PRAGMA max_page_count`), then append small records until the writer keeps failing
    with SQLITE_FULL, so the slack left in the last pages is used up too and any larger append
    fails. Returns the number of filler records written."""
    written, failures, locked = 0, 0, 0
    while failures < 8:  # eight appends in a row refused: the last pages are full
        cap_pooled_connections(ledger, None)  # again each time: a connection made meanwhile is capped too
        try:
            ledger.append(uuid.UUID(int=uuid.uuid4().int), 0, [MintDenied(
                request_id="f", wallet="0x" + "00" * 20, omni_account="", reason="bad_request", detail="")])
            written, failures = written + 1, 0
        except LedgerUnavailable as exc:
            if "locked" in str(exc):  # a reader or the readiness probe held the lock: try again
                locked += 1
                assert locked < 50, exc
                continue
            assert "full" in str(exc), exc
            failures += 1
        assert written < 100_000, "the ledger never filled up"
    return written


def unfill_ledger(ledger: Ledger) -> None:
    """The disk has room again: lift the cap on every pooled connection."""
    cap_pooled_connections(ledger, 1073741823)


class FillingMinter:
    """The real minter; once armed, it fills the ledger right after AssumeRole returned."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.ledger: Ledger | None = None
        self.armed = False
        self.issued: list[Any] = []

    def assume_role(self, request: Any) -> Any:
        creds = self.inner.assume_role(request)
        self.issued.append(creds)
        if self.armed and self.ledger is not None:
            fill_ledger(self.ledger)
        return creds

    def check_identity(self) -> str:
        return str(self.inner.check_identity())


def records(services: Services) -> list:
    return services.ledger.read(0, 1_000_000)


def test_disk_full_after_sts_spills_the_key_id_and_records_it_once_the_ledger_recovers(
        tmp_path: Path, dev_aws: dict, caplog: pytest.LogCaptureFixture) -> None:
    from api.sts import BotoStsMinter

    config = BrokerConfig.from_env(broker_env(tmp_path, **sts_env(dev_aws), BROKER_GRANTS_REQUIRED="false"))
    minter = FillingMinter(BotoStsMinter(config.sts))
    services = Services.build(config, minter=CountingMinter(minter))
    minter.ledger = services.ledger
    w = Wallet()
    with LiveServer(services) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        jwt = sign_in(client, w)["session_jwt"]
        minter.armed = True
        body = signed_mint_body(w)
        with caplog.at_level(logging.CRITICAL, logger="agentkeys.spill"):
            r = client.post("/v1/mint-aws-creds", json=body, headers={"Authorization": f"Bearer {jwt}"})
        minter.armed = False
        assert r.status_code == 503, r.text
        answer = r.json()
        assert (answer["error"], answer["reason"]) == ("unavailable", "ledger_unavailable")
        assert_no_credentials(r)
        [creds] = minter.issued
        # the message is true: a credential was issued, not released, and will be recorded
        message = answer["message"]
        assert "nothing was recorded" not in message
        assert "issued" in message and "NOT released" in message and "when the ledger recovers" in message
        [requested] = [rec for rec in records(services) if rec.type == "MintRequested"]
        assert creds.session_name == sts_session_name(w.address, requested.seq) and creds.session_name in message
        # the key id (never the secret) is in the spill, fsync'd, and in one CRITICAL line
        [entry] = services.spill.pending()
        assert (entry.access_key_id, entry.sts_session_name) == (creds.access_key_id, creds.session_name)
        assert (entry.request_id, entry.requested_seq) == (body["request_id"], requested.seq)
        raw = services.spill.path.read_bytes()
        assert creds.access_key_id.encode() in raw and creds.secret_access_key.encode() not in raw
        assert creds.session_token.encode() not in raw
        critical = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.CRITICAL]
        assert any(creds.access_key_id in line and creds.session_name in line for line in critical), critical
        assert all(creds.secret_access_key not in line for line in critical)
        # nothing in the ledger claims the credential, and no denial was recorded for it
        types = [rec.type for rec in records(services) if rec.data.get("request_id") == body["request_id"]]
        assert types == ["MintRequested"]
    # the disk has room again and the broker restarts: the start-up recovery records the credential
    restarted = Services.build(config, minter=CountingMinter(BotoStsMinter(config.sts)))
    with LiveServer(restarted):
        assert restarted.spill.pending() == []
        after = [rec.data for rec in records(restarted)]
    [unreleased] = [data for data in after if data.get("reason") == "ledger_write_failed"]
    assert unreleased["reason"] == "ledger_write_failed"
    assert (unreleased["access_key_id"], unreleased["sts_session_name"]) == (creds.access_key_id, creds.session_name)
    assert (unreleased["request_id"], unreleased["requested_seq"]) == (body["request_id"], requested.seq)
    assert creds.secret_access_key not in str(after)


def test_disk_full_then_space_back_the_spill_recover_job_records_it_without_a_restart(
        tmp_path: Path, dev_aws: dict) -> None:
    """The periodic `spill-recover` job (`Services.recover_spill`) takes the entry once the ledger
    writes again, in the same process; while the ledger is full it leaves it in the spill."""
    from api.sts import BotoStsMinter

    config = BrokerConfig.from_env(broker_env(tmp_path, **sts_env(dev_aws), BROKER_GRANTS_REQUIRED="false",
                                              BROKER_METRICS_AUTH="none"))
    minter = FillingMinter(BotoStsMinter(config.sts))
    services = Services.build(config, minter=minter)
    minter.ledger = services.ledger
    w = Wallet()
    with LiveServer(services) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        jwt = sign_in(client, w)["session_jwt"]
        minter.armed = True
        r = client.post("/v1/mint-aws-creds", json=signed_mint_body(w), headers={"Authorization": f"Bearer {jwt}"})
        minter.armed = False
        assert r.status_code == 503 and r.json()["reason"] == "ledger_unavailable", r.text
        assert services.recover_spill() == []  # still full: the entry stays
        assert len(services.spill.pending()) == 1
        unfill_ledger(services.ledger)
        [creds] = minter.issued
        assert services.recover_spill() == [creds.access_key_id]
        assert services.spill.pending() == []
        unreleased = [rec.data for rec in records(services) if rec.type == "MintUnreleased"]
        assert [(u["reason"], u["access_key_id"]) for u in unreleased] == [("ledger_write_failed", creds.access_key_id)]
        # the mints read model and the metric call it `unreleased`
        services.projections.catch_up("mints")
        from projections.mints import recent_mints

        rows = recent_mints(services.projections.engine, status="unreleased")
        assert [(row.access_key_id, row.reason) for row in rows] == [(creds.access_key_id, "ledger_write_failed")]
        metrics = client.get("/metrics").text
        assert 'agentkeys_mints_total{outcome="unreleased"} 1.0' in metrics


def test_low_disk_refuses_the_mint_before_sts_with_a_recorded_denial(tmp_path: Path, dev_aws: dict) -> None:
    from api.sts import BotoStsMinter

    config = BrokerConfig.from_env(broker_env(tmp_path, **sts_env(dev_aws), BROKER_GRANTS_REQUIRED="false",
                                              BROKER_MIN_FREE_BYTES=str(64 << 20)))
    free = {"bytes": 1 << 40}
    minter = CountingMinter(BotoStsMinter(config.sts))
    services = Services.build(config, minter=minter, free_bytes=lambda: free["bytes"])
    w = Wallet()
    with LiveServer(services) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        jwt = sign_in(client, w)["session_jwt"]
        free["bytes"] = (64 << 20) - 1
        assert services.ledger_low_on_space() is True
        body = signed_mint_body(w)
        r = client.post("/v1/mint-aws-creds", json=body, headers={"Authorization": f"Bearer {jwt}"})
        assert r.status_code == 503, r.text
        assert (r.json()["error"], r.json()["reason"]) == ("unavailable", "ledger_low_space")
        assert "nothing was issued" in r.json()["message"]
        assert_no_credentials(r)
        assert minter.calls == 0  # refused before STS
        mine = [rec for rec in records(services) if rec.data.get("request_id") == body["request_id"]]
        assert [(rec.type, rec.data["reason"]) for rec in mine] == [("MintDenied", "ledger_low_space")]
        # the ledger itself cannot take the denial either: the refusal stands, still before STS
        fill_ledger(services.ledger)
        r = client.post("/v1/mint-aws-creds", json=signed_mint_body(w), headers={"Authorization": f"Bearer {jwt}"})
        assert r.status_code == 503 and r.json()["reason"] == "ledger_low_space", r.text
        assert minter.calls == 0
        unfill_ledger(services.ledger)
        free["bytes"] = 64 << 20  # room again: mints go through
        r = client.post("/v1/mint-aws-creds", json=signed_mint_body(w), headers={"Authorization": f"Bearer {jwt}"})
        assert r.status_code == 200, r.text
        assert minter.calls == 1
