"""Integrity (issue 13; design §8 "Start-up integrity"): the gate checks content, the ledger checks
itself, and any disagreement is one `TamperDetected` that stops every release until acknowledged.

Everything real: the SQLite ledger and anchor files, moto STS through boto3, HTTP through the app.
The attacks are done to the files with sqlite3, as an attacker with file access would."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path

from ledger.app import Ledger
from ledger.config import LedgerConfig
from ledger.events import AuthChallengeIssued
from tests.integration.test_mint import Broker, assert_no_credentials, build_services, make_pair
from tests.support import LiveServer, broker_env, signed_mint_body
from tests.support_moto import sts_env


def _tamper_events(broker: Broker) -> list[dict]:
    """The `integrity` stream's `TamperDetected` records (read by stream: a damaged page elsewhere
    in the file does not stop this read)."""
    from ledger.integrity import open_events

    return [e.to_data() for e in open_events(broker.services.ledger) if type(e).__name__ == "TamperDetected"]


def _wait_for(predicate, timeout: float = 20.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _env(tmp_path: Path, dev_aws, **extra: str) -> dict:  # noqa: ANN001
    return broker_env(tmp_path, **sts_env(dev_aws), BROKER_READINESS_PROBE_INTERVAL_SECONDS="0.2", **extra)


def _fill(ledger_db: Path, n: int) -> None:
    """`n` ordinary records (sign-in challenges), written by the ledger itself."""
    with Ledger(LedgerConfig(ledger_db)) as ledger:
        for i in range(0, n, 100):
            parts = []
            for j in range(i, min(n, i + 100)):
                rid = f"fill-{j}"
                parts.append((uuid.uuid5(uuid.NAMESPACE_URL, rid), 0, [AuthChallengeIssued(
                    method="wallet_sig", request_id=rid, address="0x" + "1" * 40, chain_id=84532, nonce=f"n{j:08d}",
                    domain="broker.test.invalid", uri="https://broker.test.invalid", issued_at="2026-11-29T05:00:00Z",
                    expires_at=1, message="m")]))
            ledger.append_many(parts)


def _checkpoint(db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _refused_for_integrity(broker: Broker, daemon, daemon_jwt: str) -> None:  # noqa: ANN001
    calls = broker.minter.calls
    r = broker.mint(daemon_jwt, signed_mint_body(daemon))
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "unavailable" and r.json()["reason"] == "integrity_alarm", r.text
    assert_no_credentials(r)
    assert broker.minter.calls == calls, "STS was called during an integrity alarm"


# --- the gate checks content ---------------------------------------------------------------------

def test_tampered_sqlite_anchor_ahead_of_the_ledger_releases_nothing(tmp_path: Path, dev_aws) -> None:
    """A stale or forged SQLite anchor whose `confirmed_upto()` is beyond the ledger's head, holding
    other hashes, must not let the gate release: a position is not a confirmation of content."""
    env = _env(tmp_path, dev_aws, BROKER_JOB_INTEGRITY_SECONDS="3600")  # only the gate can notice here
    with LiveServer(build_services(env)) as server:
        broker = Broker(server)
        _, _, daemon, daemon_jwt, _ = make_pair(broker)
        ledger = broker.services.ledger
        head = ledger.head().seq
        _wait_for(lambda: broker.services.anchors[0].confirmed_upto() >= head)
        conn = sqlite3.connect(broker.services.config.anchor_db)
        with conn:
            conn.executemany("INSERT INTO anchored (seq, hash) VALUES (?, ?)",
                             [(s, "f" * 64) for s in range(head + 1, head + 200)])
        conn.close()
        calls = broker.minter.calls
        r = broker.mint(daemon_jwt, signed_mint_body(daemon))
        assert r.status_code == 503, r.text
        assert_no_credentials(r)
        assert broker.minter.calls == calls + 1  # STS issued it; the gate withheld it
        withheld = broker.events("MintWithheld")
        assert [w["reason"] for w in withheld] == ["anchor_mismatch"]
        tamper = _tamper_events(broker)
        assert len(tamper) == 1
        assert tamper[0]["source"] == "anchor/sqlite" and tamper[0]["seq"] == withheld[0]["authorized_seq"]
        # the alarm now refuses before STS, and readiness says why
        _refused_for_integrity(broker, daemon, daemon_jwt)
        _wait_for(lambda: broker.client.get("/readyz").status_code == 503, timeout=5)
        failing = {c["name"]: c for c in broker.client.get("/readyz").json()["checks"]}
        assert "TamperDetected" in failing["ledger/integrity"]["reason"]
        assert len(_tamper_events(broker)) == 1
        broker.client.close()


def test_anchor_row_changed_behind_a_running_broker_is_detected_within_one_job_period(tmp_path: Path,
                                                                                      dev_aws) -> None:
    env = _env(tmp_path, dev_aws, BROKER_JOB_INTEGRITY_SECONDS="1")
    with LiveServer(build_services(env)) as server:
        broker = Broker(server)
        _, _, daemon, daemon_jwt, _ = make_pair(broker)
        r = broker.mint(daemon_jwt, signed_mint_body(daemon))
        assert r.status_code == 200, r.text
        assert _tamper_events(broker) == []
        conn = sqlite3.connect(broker.services.config.anchor_db)
        with conn:
            conn.execute("UPDATE anchored SET hash = ? WHERE seq = 3", ("e" * 64,))
        conn.close()
        changed = time.monotonic()
        _wait_for(lambda: _tamper_events(broker) != [], timeout=10)
        assert time.monotonic() - changed < 1 + 2 * 1.0 + 1  # one period (+ the lease/scheduler jitter)
        [tamper] = _tamper_events(broker)
        assert tamper["source"] == "anchor/sqlite" and tamper["seq"] == 3 and tamper["found_hash"] == "e" * 64
        _refused_for_integrity(broker, daemon, daemon_jwt)
        broker.client.close()


# --- start-up integrity --------------------------------------------------------------------------

def _first_run(tmp_path: Path, dev_aws, fill: int = 0):  # noqa: ANN001, ANN202
    env = _env(tmp_path, dev_aws)
    if fill:
        (tmp_path / "data").mkdir(parents=True, exist_ok=True)
        _fill(tmp_path / "data" / "ledger.sqlite", fill)
    with LiveServer(build_services(env)) as server:
        broker = Broker(server)
        pair = make_pair(broker)
        _wait_for(lambda: broker.services.anchors[0].confirmed_upto() >= broker.services.ledger.head().seq)
        broker.client.close()
    return env, pair


def test_edited_old_record_is_detected_at_startup_and_nothing_is_released(tmp_path: Path, dev_aws) -> None:
    env, (_, _, daemon, daemon_jwt, _) = _first_run(tmp_path, dev_aws)
    db = tmp_path / "data" / "ledger.sqlite"
    _checkpoint(db)
    conn = sqlite3.connect(db)
    with conn:  # the attacker rewrites when an old record happened, keeping its stored hash
        [(stream, version)] = conn.execute("SELECT stream, version FROM ledger_records WHERE seq = 2").fetchall()
        key = (stream.replace("-", ""), version)
        [(state,)] = conn.execute("SELECT state FROM stored_events WHERE originator_id = ? AND originator_version = ?",
                                  key).fetchall()
        body = json.loads(bytes(state))
        body["at"] = "2020-01-01T00:00:00.000000Z"
        conn.execute("UPDATE stored_events SET state = ? WHERE originator_id = ? AND originator_version = ?",
                     (json.dumps(body, separators=(",", ":")).encode(), *key))
    conn.close()
    with LiveServer(build_services(env)) as server:
        broker = Broker(server)
        assert len(_tamper_events(broker)) == 1  # the synchronous tail check found it before serving
        [tamper] = _tamper_events(broker)
        assert tamper["source"] == "ledger/chain" and tamper["seq"] == 2
        _refused_for_integrity(broker, daemon, daemon_jwt)
        assert broker.events("MintAuthorized") == []
        time.sleep(0.5)  # the background full check finds the same record: still one alarm
        assert len(_tamper_events(broker)) == 1
        broker.client.close()


def test_damaged_page_is_detected_at_startup_and_nothing_is_released(tmp_path: Path, dev_aws) -> None:
    env, (_, _, daemon, daemon_jwt, _) = _first_run(tmp_path, dev_aws, fill=3000)
    db = tmp_path / "data" / "ledger.sqlite"
    _checkpoint(db)
    conn = sqlite3.connect(db)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    leaves = [p for (p,) in conn.execute(
        "SELECT pageno FROM dbstat WHERE name = 'stored_events' AND pagetype = 'leaf' ORDER BY pageno")]
    conn.close()
    victim = leaves[len(leaves) // 4]  # an old page, far from the last 1,000 records
    with open(db, "r+b") as f:
        f.seek((victim - 1) * page_size)
        f.write(b"\xa5" * page_size)
    with LiveServer(build_services(env)) as server:
        broker = Broker(server)
        _wait_for(lambda: _tamper_events(broker) != [])
        [tamper] = _tamper_events(broker)
        assert tamper["source"] in ("ledger/quick_check", "ledger/chain")
        _refused_for_integrity(broker, daemon, daemon_jwt)
        assert len(_tamper_events(broker)) == 1
        broker.client.close()


def test_ledger_restored_from_an_older_snapshot_is_named_refused_and_acknowledged(tmp_path: Path, dev_aws) -> None:
    """The runbook's old advice (restore a `sqlite3 .backup`) leaves the ledger behind its anchor:
    the broker names the lost range and releases nothing; `integrity ack` records it, starts a new
    SQLite anchor file at head + 1, and mints work again."""
    import shutil

    from workers.cli import main

    env, (_, _, daemon, daemon_jwt, _) = _first_run(tmp_path, dev_aws)
    data = tmp_path / "data"
    _checkpoint(data / "ledger.sqlite")
    shutil.copy(data / "ledger.sqlite", tmp_path / "snapshot.sqlite")
    with LiveServer(build_services(env)) as server:  # life goes on after the snapshot
        broker = Broker(server)
        assert broker.mint(daemon_jwt, signed_mint_body(daemon)).status_code == 200
        lost_last = broker.services.ledger.head().seq
        _wait_for(lambda: broker.services.anchors[0].confirmed_upto() >= lost_last)
        broker.client.close()
    # the restore: the old ledger back, its read models rebuilt
    for suffix in ("", "-wal", "-shm"):
        Path(str(data / "ledger.sqlite") + suffix).unlink(missing_ok=True)
    (data / "projections.sqlite").unlink()
    shutil.copy(tmp_path / "snapshot.sqlite", data / "ledger.sqlite")
    with Ledger(LedgerConfig(data / "ledger.sqlite")) as ledger:
        head = ledger.head().seq
    assert head < lost_last
    with LiveServer(build_services(env)) as server:
        broker = Broker(server)
        [tamper] = _tamper_events(broker)
        assert tamper["source"] == "anchor/sqlite" and tamper["seq"] == head + 1
        assert f"{head + 1}..{lost_last}" in tamper["detail"]
        _refused_for_integrity(broker, daemon, daemon_jwt)
        broker.client.close()
    args = ["integrity", "ack", "--reason", "restored from the nightly snapshot", "--operator", "alice",
            "--ledger-db", str(data / "ledger.sqlite"), "--anchor-db", str(data / "anchor.sqlite")]
    assert main(args) == 0
    assert main(args) == 1  # nothing left to acknowledge
    assert list(data.glob("anchor.sqlite.superseded-*"))
    with LiveServer(build_services(env)) as server:
        broker = Broker(server)
        acks = [e.to_data() for e in __import__("ledger.integrity", fromlist=["open_events"]).open_events(
            broker.services.ledger) if type(e).__name__ == "IntegrityAcknowledged"]
        assert acks == [{"tamper_seq": acks[0]["tamper_seq"], "reason": "restored from the nightly snapshot",
                         "operator": "alice", "lost_range": [head + 1, lost_last]}]
        r = broker.mint(daemon_jwt, signed_mint_body(daemon))
        assert r.status_code == 200, r.text
        assert len(_tamper_events(broker)) == 1
        assert broker.services.anchors[0].start_seq == head + 1
        broker.client.close()
