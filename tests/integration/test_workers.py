"""The scheduled workers (issue 13; design §3 "Workers"): started inside `serve`, off with
`--no-workers`, alone with `agentkeys-broker workers`, each job under a lease."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

from ledger.app import Ledger
from ledger.config import LedgerConfig
from ledger.events import AuthChallengeIssued
from tests.conftest import cli_path
from tests.integration.test_mint import build_services
from tests.support import LiveServer, broker_env

FAST = {name: "0.2" for name in ("BROKER_JOB_OUTCOME_SWEEP_SECONDS", "BROKER_JOB_ANCHOR_RECONCILE_SECONDS",
                                  "BROKER_JOB_QUARANTINE_SECONDS", "BROKER_JOB_PROJECTIONS_SECONDS",
                                  "BROKER_JOB_INTEGRITY_SECONDS", "BROKER_JOB_CHAIN_VERIFY_SECONDS")}
JOBS = {"outcome-sweep", "spill-recover", "anchor-reconcile", "quarantine-reanchor", "integrity", "chain-verify",
        "projections"}


def _wait_for(predicate, timeout: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_serve_starts_the_scheduler_and_every_job_runs_under_its_lease(tmp_path: Path) -> None:
    env = broker_env(tmp_path, **FAST)
    services = build_services(env)
    with LiveServer(services):
        workers = services.scheduler
        assert workers is not None and workers.running
        assert {j.name for j in workers.jobs} == JOBS
        _wait_for(lambda: set(workers.runs) == JOBS)
        conn = sqlite3.connect(services.config.data_dir / "leases.sqlite")
        holders = dict(conn.execute("SELECT name, holder FROM job_leases").fetchall())
        conn.close()
        assert set(holders) == JOBS and len(set(holders.values())) == 1  # all held by this process
    conn = sqlite3.connect(services.config.data_dir / "leases.sqlite")
    assert conn.execute("SELECT COUNT(*) FROM job_leases").fetchone()[0] == 0  # released on a clean stop
    conn.close()


def test_serve_no_workers_runs_no_leased_job(tmp_path: Path) -> None:
    env = broker_env(tmp_path, **FAST)
    services = build_services(env)
    services.workers = False  # what `serve --no-workers` sets
    with LiveServer(services):
        time.sleep(0.6)
        assert services.scheduler is None
        assert services.pump is not None  # the release path still anchors
    conn = sqlite3.connect(services.config.data_dir / "leases.sqlite") if (
        services.config.data_dir / "leases.sqlite").exists() else None
    if conn is not None:
        assert conn.execute("SELECT COUNT(*) FROM job_leases").fetchone()[0] == 0
        conn.close()


def _append(ledger: Ledger, first: int, n: int) -> None:
    parts = []
    for j in range(first, first + n):
        rid = f"w-{j}"
        parts.append((uuid.uuid5(uuid.NAMESPACE_URL, rid), 0, [AuthChallengeIssued(
            method="wallet_sig", request_id=rid, address="0x" + "2" * 40, chain_id=84532, nonce=f"n{j:08d}",
            domain="broker.test.invalid", uri="https://broker.test.invalid", issued_at="2026-11-29T05:00:00Z",
            expires_at=1, message="m")]))
    ledger.append_many(parts)


def test_two_workers_processes_on_one_ledger_never_anchor_a_batch_twice(tmp_path: Path, subprocess_env) -> None:
    """Two `agentkeys-broker workers` on the same files while 2,000 events arrive: every record is
    anchored exactly once, by whichever process holds the `anchor-reconcile` lease, and the
    anchor ends equal to the ledger."""
    periods = {**{k: "2" for k in FAST}, "BROKER_JOB_ANCHOR_RECONCILE_SECONDS": "0.2",
               "BROKER_JOB_CHAIN_VERIFY_SECONDS": "3600"}
    env = {**subprocess_env, **broker_env(tmp_path, **periods), "BROKER_LOG_LEVEL": "INFO"}
    data = Path(env["BROKER_DATA_DIR"])
    data.mkdir(parents=True, exist_ok=True)
    logs = [tmp_path / f"workers-{i}.log" for i in range(2)]
    procs = []
    try:
        for log_path in logs:
            procs.append(subprocess.Popen([cli_path(), "workers"], env=env, stdout=subprocess.DEVNULL,
                                          stderr=open(log_path, "wb")))  # noqa: SIM115 - closed with the process
        _wait_for(lambda: all("workers running" in p.read_text() for p in logs), timeout=60)
        ledger = Ledger(LedgerConfig(data / "ledger.sqlite"))
        try:
            for i in range(0, 2000, 50):
                _append(ledger, i, 50)
                time.sleep(0.01)
            head = ledger.head()
        finally:
            ledger.close()
        anchor_db = data / "anchor.sqlite"

        def anchored_all() -> bool:
            conn = sqlite3.connect(anchor_db)
            try:
                top = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM anchored").fetchone()[0]
                return top >= head.seq
            finally:
                conn.close()

        _wait_for(anchored_all, timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)
    assert all(p.returncode == 0 for p in procs), [p.read_text()[-2000:] for p in logs]
    ranges: list[tuple[int, int, int]] = []
    for i, log_path in enumerate(logs):
        for a, b in re.findall(r"anchor sqlite: anchored seqs (\d+)\.\.(\d+)", log_path.read_text()):
            ranges.append((int(a), int(b), i))
    ranges.sort()
    covered = 0
    for first, last, _ in ranges:
        assert first == covered + 1, f"seqs {first}..{last} anchored twice or after a gap (covered {covered})"
        covered = last
    assert covered == head.seq
    conn = sqlite3.connect(anchor_db)
    rows = conn.execute("SELECT seq, hash FROM anchored ORDER BY seq").fetchall()
    conn.close()
    with Ledger(LedgerConfig(data / "ledger.sqlite")) as ledger:
        assert rows == [(r.seq, r.hash) for r in ledger.read(0, head.seq + 10)[:len(rows)]]
    assert len(rows) >= head.seq
