"""The mint invariant survives SIGKILL (seed-spec §D.1; design §3, the release gate).

`agentkeys-broker serve` runs as a real subprocess against moto's STS on loopback, with the SQLite
anchor as the only (required) anchor. Each round signs in a few daemon wallets, fires 200
concurrent mints (pre-signed, 50 in flight) and SIGKILLs the broker at a seeded random moment
0.2-2 s into the burst. Requests in flight then fail with a transport error; that is expected.
Every response that *did* carry credentials is recorded with its `seq` and `record_hash`.

Right after the kill (before anything reopens the files) the anchor database must already hold
the `(seq, hash)` of every released mint: the broker answers only after the anchor confirmed.
Then `serve` restarts on the same files and:

- `agentkeys-broker audit verify --db LEDGER --anchor-db ANCHOR --json` exits 0 (valid);
- every 200 of every round so far is a `MintAuthorized` record at its `seq` with the same hash and
  the same `access_key_id` (never the secret), admitted by a `MintRequested` of the same request;
- every acknowledged event of every round so far (each sign-in's `SessionIssued`, each released
  mint) is still in the ledger with the same hash: nothing acknowledged is lost.

Three rounds on the same files (kill, restart, check, more mints), so later rounds also exercise
recovery of a ledger/anchor pair that was killed mid-write before.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, cli_path
from tests.support import Wallet, broker_env, free_port, sign_in, signed_mint_body
from tests.support_moto import sts_env

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("MINT_CRASH_SEED", "20261129"))
ROUNDS = 3
MINTS_PER_ROUND = 200
CONCURRENCY = 50
WALLETS = 8
KILL_AFTER_S = (0.2, 2.0)
CRED_FIELDS = ("access_key_id", "secret_access_key", "session_token")


class ServeProcess:
    """`agentkeys-broker serve --port P` on fixed ledger/anchor files; killed by its own PID."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.tmp / f"serve-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen([cli_path(), "serve", "--port", str(self.port)], cwd=ROOT, env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 45
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, f"serve exited {self.proc.returncode}: {self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "serve did not start: " + self.log.read_text()[-3000:]
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=15)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


async def burst(url: str, jobs: list[tuple[str, dict]], proc: subprocess.Popen, kill_after: float,
                ) -> tuple[list[dict], int, dict[str, int], float]:
    """POST every pre-signed body (at most CONCURRENCY in flight); SIGKILL `proc` `kill_after`
    seconds after the first request. Returns (credential-carrying answers, transport errors, status
    counts, seconds from the start to the kill)."""
    released: list[dict] = []
    errors = 0
    statuses: dict[str, int] = {}
    sem = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    killed_at = [0.0]

    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(30.0), limits=limits) as client:
        async def one(jwt: str, body: dict) -> None:
            nonlocal errors
            async with sem:
                try:
                    r = await client.post("/v1/mint-aws-creds", json=body, headers={"Authorization": f"Bearer {jwt}"})
                except httpx.TransportError:
                    errors += 1
                    return
            statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
            if r.status_code == 200:
                data = r.json()
                assert data["access_key_id"].startswith("ASIA") and data["anchored"] == ["sqlite"], r.text
                released.append({"request_id": body["request_id"], "wallet": body["auth"]["address"], **data})
            else:
                # an answer without credentials is fine (e.g. a 503 while shutting down): never a leak
                for field in CRED_FIELDS:
                    assert field not in r.text, f"{field} in a {r.status_code}: {r.text[:300]}"
                assert "ASIA" not in r.text

        async def killer() -> None:
            t0 = time.monotonic()
            await asyncio.sleep(kill_after)
            os.kill(proc.pid, signal.SIGKILL)
            killed_at[0] = time.monotonic() - t0

        kill_task = asyncio.create_task(killer())
        await asyncio.gather(*[one(jwt, body) for jwt, body in jobs])
        await kill_task
    return released, errors, statuses, killed_at[0]


def export_records(ledger_db: Path, out: Path) -> dict[int, dict[str, Any]]:
    """The ledger as the offline auditor exports it (read-only), by seq."""
    run = subprocess.run([cli_path(), "audit", "export", "--db", str(ledger_db), "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    records: dict[int, dict[str, Any]] = {}
    with open(out, encoding="utf-8") as f:
        header = json.loads(f.readline())
        for line in f:
            rec = json.loads(line)
            records[rec["seq"]] = rec
    assert header["records"] == len(records)
    return records


def anchored_pairs(anchor_db: Path) -> dict[int, str]:
    """The SQLite anchor's witness table, read directly (read-only), as an auditor would."""
    conn = sqlite3.connect(f"file:{anchor_db}?mode=ro", uri=True, timeout=10)
    try:
        return dict(conn.execute("SELECT seq, hash FROM anchored").fetchall())
    finally:
        conn.close()


def audit_verify(ledger_db: Path, anchor_db: Path) -> dict[str, Any]:
    run = subprocess.run([cli_path(), "audit", "verify", "--db", str(ledger_db), "--anchor-db", str(anchor_db),
                          "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["valid"] is True and report["findings"] == [], report
    return report


def check_after_restart(tmp: Path, ledger_db: Path, anchor_db: Path, round_no: int, released: list[dict],
                        acked: dict[int, str]) -> dict[str, Any]:
    report = audit_verify(ledger_db, anchor_db)
    records = export_records(ledger_db, tmp / f"export-{round_no}.jsonl")
    assert report["records"] == len(records) and sorted(records) == list(range(1, len(records) + 1))

    # nothing acknowledged is lost: same seq, same hash
    lost = {seq: h for seq, h in acked.items() if seq not in records or records[seq]["hash"] != h}
    assert not lost, f"round {round_no}: acknowledged events lost or changed: {sorted(lost)[:20]}"

    # every released credential is a MintAuthorized for that request, admitted before STS
    requested = {(r["data"]["wallet"], r["data"]["request_id"]): seq for seq, r in records.items()
                 if r["type"] == "MintRequested"}
    for m in released:
        rec = records[m["seq"]]
        assert rec["type"] == "MintAuthorized", (m["seq"], rec["type"])
        assert rec["hash"] == m["record_hash"]
        data = rec["data"]
        assert data["access_key_id"] == m["access_key_id"]
        assert data["request_id"] == m["request_id"] and data["wallet"] == m["wallet"]
        assert m["secret_access_key"] not in json.dumps(data) and m["session_token"] not in json.dumps(data)
        admitted = requested.get((m["wallet"], m["request_id"]))
        assert admitted is not None and admitted < m["seq"], f"MintAuthorized {m['seq']} without a MintRequested before it"

    # after the restart the anchor has caught up with what it witnessed before, and still agrees
    anchored = anchored_pairs(anchor_db)
    for m in released:
        assert anchored.get(m["seq"]) == m["record_hash"]

    # each MintAuthorized is either released, withheld, or in flight at the kill; never duplicated
    authorized = [r for r in records.values() if r["type"] == "MintAuthorized"]
    keys = [(r["data"]["wallet"], r["data"]["request_id"]) for r in authorized]
    assert len(keys) == len(set(keys)), "a request was authorized twice"
    return {"records": len(records), "authorized": len(authorized)}


def test_sigkill_during_concurrent_mints_never_loses_an_acknowledged_event(tmp_path: Path, dev_aws) -> None:
    rng = random.Random(SEED)
    env = {
        **os.environ,
        **broker_env(tmp_path, **sts_env(dev_aws), BROKER_GRANTS_REQUIRED="false",
                     BROKER_RATE_LIMIT_MINTS_PER_HOUR_PER_OMNI="100000",
                     BROKER_RATE_LIMIT_CHALLENGES_PER_HOUR_PER_IP="100000",
                     BROKER_LEDGER_DB=str(tmp_path / "data" / "ledger.sqlite"),
                     BROKER_SQLITE_ANCHOR_DB=str(tmp_path / "anchor" / "anchor.sqlite"),
                     BROKER_LOG_LEVEL="WARNING"),
    }
    ledger_db = Path(env["BROKER_LEDGER_DB"])
    anchor_db = Path(env["BROKER_SQLITE_ANCHOR_DB"])
    server = ServeProcess(tmp_path, env)
    wallets = [Wallet() for _ in range(WALLETS)]
    released_all: list[dict] = []
    acked: dict[int, str] = {}  # seq -> hash of every event a client got an answer for
    summary: list[str] = []
    t_start = time.monotonic()
    try:
        server.start()
        for round_no in range(1, ROUNDS + 1):
            with httpx.Client(base_url=server.url, timeout=30) as client:
                sessions = []
                for w in wallets:
                    s = sign_in(client, w)
                    acked[s["seq"]] = s["record_hash"]
                    sessions.append(s["session_jwt"])
            jobs = [(sessions[i % WALLETS], signed_mint_body(wallets[i % WALLETS], request_id=f"r{round_no}-{i}"))
                    for i in range(MINTS_PER_ROUND)]
            kill_after = rng.uniform(*KILL_AFTER_S)
            assert server.proc is not None
            released, errors, statuses, killed_at = asyncio.run(burst(server.url, jobs, server.proc, kill_after))
            server.kill()
            assert server.proc.returncode == -signal.SIGKILL

            # before anything reopens the files: the anchor already witnessed every released mint
            anchored = anchored_pairs(anchor_db)
            unwitnessed = [m["seq"] for m in released if anchored.get(m["seq"]) != m["record_hash"]]
            assert not unwitnessed, f"round {round_no}: credentials released before the anchor confirmed: {unwitnessed}"

            for m in released:
                assert m["seq"] not in acked
                acked[m["seq"]] = m["record_hash"]
            released_all.extend(released)

            server.start()  # same files
            stats = check_after_restart(tmp_path, ledger_db, anchor_db, round_no, released_all, acked)
            summary.append(f"round {round_no}: kill at {killed_at:.2f}s, released {len(released)}, transport errors "
                           f"{errors}, statuses {statuses}, ledger {stats['records']} records, "
                           f"{stats['authorized']} MintAuthorized")

        # the restarted broker still mints, and its answers join the same chain
        with httpx.Client(base_url=server.url, timeout=30) as client:
            jwt = sign_in(client, wallets[0])["session_jwt"]
            r = client.post("/v1/mint-aws-creds", json=signed_mint_body(wallets[0]),
                            headers={"Authorization": f"Bearer {jwt}"})
            assert r.status_code == 200, r.text
        server.terminate()
        audit_verify(ledger_db, anchor_db)
    finally:
        server.kill()
        print("\n".join(summary), f"\ntotal {time.monotonic() - t_start:.1f}s, seed {SEED}")

    # the kills landed mid-burst at least once and credentials were released before a kill
    # (otherwise the test proved little)
    assert sum(1 for line in summary if "transport errors 0," not in line) >= 1, summary
    assert released_all, summary
