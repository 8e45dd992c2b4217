"""Issue 12 with real processes: `agentkeys-broker serve` as a subprocess, moto's server, anvil;
faults by signal (SIGSTOP/SIGCONT, SIGKILL).

- D: `/readyz` answers within 1 s while moto and anvil are stopped (probes run in the background);
- E: `/healthz` p99 under 50 ms while two clients mint against a stopped anvil;
- F: `/readyz` follows the policy: under `sqlite_primary` an EVM outage is `degraded`, 200;
- B: moto stopped through 4 mints -> at most 4 AssumeRole calls (moto's `/moto-api/data.json`),
  each one's session name in the ledger (`MintUnreleased{sts_outcome_unknown}`);
- A: SIGKILL of `serve` mid-mint with anvil not mining -> after a restart every authorization
  (`MintAuthorized`, `SessionIssued`) has an outcome.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.cli import start_dev_chain
from api.moto_server import MotoServer, bootstrap_dev_aws
from ledger.app import Ledger
from ledger.config import LedgerConfig
from tests.integration.test_mint_crash import ServeProcess
from tests.support import Wallet, broker_env, sign_in, signed_mint_body
from tests.support_moto import sts_env

pytestmark = pytest.mark.slow


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[tuple[MotoServer, dict[str, Any]]]:
    """A moto server of this test's own (it gets SIGSTOPped)."""
    server = MotoServer.start(log_path=tmp_path / "moto.log")
    try:
        yield server, bootstrap_dev_aws(server.endpoint)
    finally:
        try:
            os.kill(server.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        server.stop()


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[dict[str, Any]]:
    children: list = []
    info = start_dev_chain(tmp_path, children)
    yield info
    for child in children:
        try:
            os.kill(child.pid, signal.SIGCONT)
        except (ProcessLookupError, TypeError):
            pass
        child.stop()


def serve(tmp_path: Path, aws: dict[str, Any], chain: dict[str, Any] | None = None, **env: str) -> ServeProcess:
    full = {**os.environ, **broker_env(tmp_path, **sts_env(aws)), "BROKER_GRANTS_REQUIRED": "false",
            "BROKER_READINESS_PROBE_INTERVAL_SECONDS": "0.2", "BROKER_STS_TIMEOUT_SECONDS": "1",
            "BROKER_DEV_MODE": "true"}
    if chain is not None:
        full.update(chain["env"], BROKER_AUDIT_ANCHORS="sqlite,evm", BROKER_EVM_RPC_TIMEOUT_SECONDS="1")
    full.update(env)
    proc = ServeProcess(tmp_path, full)
    proc.start()
    return proc


def readyz_until(url: str, predicate, timeout_s: float = 20.0) -> tuple[httpx.Response, list[float]]:  # noqa: ANN001
    """Poll /readyz until `predicate(response)`; every answer's latency is returned too."""
    latencies = []
    deadline = time.monotonic() + timeout_s
    while True:
        started = time.monotonic()
        r = httpx.get(url + "/readyz", timeout=10)
        latencies.append(time.monotonic() - started)
        if predicate(r) or time.monotonic() > deadline:
            return r, latencies
        time.sleep(0.1)


def unready_names(r: httpx.Response) -> set[str]:
    return {c["name"] for c in r.json()["checks"] if c["status"] == "unready"}


def stopped(*pids: int):  # noqa: ANN201
    class _Stopped:
        def __enter__(self) -> None:
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)

        def __exit__(self, *exc: object) -> None:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)

    return _Stopped()


def test_readyz_answers_within_a_second_while_moto_and_anvil_are_stopped(tmp_path: Path, moto, chain) -> None:
    server, aws = moto
    proc = serve(tmp_path, aws, chain)
    try:
        r, _ = readyz_until(proc.url, lambda r: r.status_code == 200)
        assert r.status_code == 200, r.text
        with stopped(server.pid, chain["pid"]):
            r, latencies = readyz_until(proc.url, lambda r: {"sts", "anchor/evm"} <= unready_names(r))
            assert {"sts", "anchor/evm"} <= unready_names(r), r.text
            assert r.status_code == 503 and r.json()["status"] == "unready"
            assert set(r.json()["age_ms"]) >= {"sts", "anchor/evm", "ledger"}
            for _ in range(5):  # keeps answering at once while both stay stopped
                started = time.monotonic()
                assert httpx.get(proc.url + "/readyz", timeout=10).status_code == 503
                latencies.append(time.monotonic() - started)
        assert max(latencies) < 1.0, latencies
        r, _ = readyz_until(proc.url, lambda r: r.status_code == 200)
        assert r.status_code == 200, r.text
    finally:
        proc.kill()


def test_readyz_follows_the_policy_sqlite_primary_evm_outage_is_degraded(tmp_path: Path, moto, chain) -> None:
    server, aws = moto
    proc = serve(tmp_path, aws, chain, BROKER_AUDIT_POLICY="sqlite_primary")
    try:
        client = httpx.Client(base_url=proc.url, timeout=30)
        w = Wallet()
        jwt = sign_in(client, w)["session_jwt"]
        with stopped(chain["pid"]):
            r, _ = readyz_until(proc.url, lambda r: "anchor/evm" in {c["name"] for c in r.json()["checks"]})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["status"] == "degraded" and body["degraded"] is True
            assert "anchor/evm" in unready_names(r) and "anchor/sqlite" in body["ready"]
            minted = client.post("/v1/mint-aws-creds", json=signed_mint_body(w), headers={"Authorization": f"Bearer {jwt}"})
            assert minted.status_code == 200, minted.text  # released on the primary anchor, as /readyz says
            assert minted.json()["anchored"] == ["sqlite"]
        client.close()
    finally:
        proc.kill()


def test_dual_strict_evm_outage_is_unready(tmp_path: Path, moto, chain) -> None:
    server, aws = moto
    proc = serve(tmp_path, aws, chain)
    try:
        with stopped(chain["pid"]):
            r, _ = readyz_until(proc.url, lambda r: r.status_code == 503)
            assert r.status_code == 503 and "anchor/evm" in unready_names(r), r.text
    finally:
        proc.kill()


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def test_healthz_stays_instant_while_mints_wait_on_a_stopped_anvil(tmp_path: Path, moto, chain) -> None:
    server, aws = moto
    # a long probe interval: the mints that start right after the stop still see anvil "ready" and
    # wait at the release gate, as in the fault report (E)
    proc = serve(tmp_path, aws, chain, BROKER_ANCHOR_DEADLINE_MS="3000", BROKER_READINESS_PROBE_INTERVAL_SECONDS="5")
    try:
        client = httpx.Client(base_url=proc.url, timeout=30)
        wallets = [Wallet(), Wallet()]
        jwts = [sign_in(client, w)["session_jwt"] for w in wallets]
        stop_minting = threading.Event()
        statuses: list[int] = []

        def mint_loop(w: Wallet, jwt: str) -> None:
            with httpx.Client(base_url=proc.url, timeout=30) as c:
                while not stop_minting.is_set():
                    r = c.post("/v1/mint-aws-creds", json=signed_mint_body(w), headers={"Authorization": f"Bearer {jwt}"})
                    statuses.append(r.status_code)

        best_p99 = None
        with stopped(chain["pid"]):
            threads = [threading.Thread(target=mint_loop, args=(w, j)) for w, j in zip(wallets, jwts, strict=False)]
            for t in threads:
                t.start()
            time.sleep(0.3)
            for _ in range(2):  # the better of two rounds of 200 (a loaded 2-core machine has hiccups)
                samples = []
                for _ in range(200):
                    started = time.monotonic()
                    h = client.get("/healthz")
                    samples.append(time.monotonic() - started)
                    assert h.status_code == 200 and h.text == "ok"
                    time.sleep(0.01)
                p99 = percentile(samples, 0.99)
                best_p99 = p99 if best_p99 is None else min(best_p99, p99)
                if best_p99 < 0.05:
                    break
            stop_minting.set()
            for t in threads:
                t.join(30)
        assert 503 in statuses  # the mints did wait on the stopped chain (and were withheld/refused)
        assert 200 not in statuses
        assert best_p99 is not None and best_p99 < 0.05, f"/healthz p99 {best_p99 * 1000:.1f} ms"
        client.close()
    finally:
        proc.kill()


def ledger_records(path: Path) -> list:
    led = Ledger(LedgerConfig(path))
    try:
        return led.read(0, 1_000_000)
    finally:
        led.close()


def test_moto_stopped_through_four_mints_means_at_most_four_assume_roles_each_named(tmp_path: Path, moto) -> None:
    server, aws = moto
    proc = serve(tmp_path, aws, BROKER_STS_MAX_ATTEMPTS="3")  # the start-up check's attempts: not AssumeRole's
    try:
        client = httpx.Client(base_url=proc.url, timeout=30)
        w = Wallet()
        jwt = sign_in(client, w)["session_jwt"]
        with stopped(server.pid):
            for _ in range(4):
                r = client.post("/v1/mint-aws-creds", json=signed_mint_body(w), headers={"Authorization": f"Bearer {jwt}"})
                assert r.status_code == 502 and r.json()["error"] == "sts_error", r.text
                assert "secret_access_key" not in r.text
        client.close()
        deadline = time.monotonic() + 15
        while True:  # moto serves the requests queued while it was stopped
            assumed = httpx.get(server.endpoint + "/moto-api/data.json", timeout=10).json()["sts"].get("AssumedRole", [])
            if len(assumed) >= 4 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        proc.kill()
    assert 1 <= len(assumed) <= 4, [a["session_name"] for a in assumed]  # no retries: at most one per mint
    records = ledger_records(tmp_path / "data" / "ledger.sqlite")
    unreleased = [r.data for r in records if r.type == "MintUnreleased"]
    requested = {r.seq: r.data for r in records if r.type == "MintRequested"}
    assert len(unreleased) == 4 and len(requested) == 4
    assert {u["reason"] for u in unreleased} == {"sts_outcome_unknown"}
    named = {u["sts_session_name"] for u in unreleased}
    assert named == {f"agentkeys-{w.address.removeprefix('0x')}-{seq}" for seq in requested}
    assert {a["session_name"] for a in assumed} <= named  # every credential STS issued is named in the ledger


def test_sigkill_mid_mint_with_anvil_not_mining_leaves_no_authorization_without_outcome(tmp_path: Path, moto, chain) -> None:
    from web3 import Web3

    server, aws = moto
    w3 = Web3(Web3.HTTPProvider(chain["rpc_url"]))
    env = dict(BROKER_ANCHOR_DEADLINE_MS="60000")  # the requests are still waiting when the broker dies
    proc = serve(tmp_path, aws, chain, **env)
    try:
        client = httpx.Client(base_url=proc.url, timeout=90)
        wallets = [Wallet() for _ in range(4)]
        jwts = [sign_in(client, w)["session_jwt"] for w in wallets]  # released: confirmed by both anchors
        start_seq = client.get("/v1/audit/head").json()["seq"]
        w3.provider.make_request("evm_setAutomine", [False])  # anvil answers, but mines nothing

        def mint(w: Wallet, jwt: str) -> None:
            try:
                httpx.post(proc.url + "/v1/mint-aws-creds", json=signed_mint_body(w),
                           headers={"Authorization": f"Bearer {jwt}"}, timeout=90)
            except httpx.TransportError:
                pass  # the broker was killed

        def sign_in_cut_off(w: Wallet) -> None:
            try:
                sign_in(httpx.Client(base_url=proc.url, timeout=90), w)
            except (httpx.TransportError, AssertionError):
                pass

        threads = [threading.Thread(target=mint, args=(w, j)) for w, j in zip(wallets, jwts, strict=False)]
        threads.append(threading.Thread(target=sign_in_cut_off, args=(Wallet(),)))
        for t in threads:
            t.start()
        # 4 x (MintRequested, MintAuthorized) + the sign-in's AuthChallengeIssued, WalletBound,
        # AuthSucceeded, SessionIssued: then all five wait at the release gate for the chain
        deadline = time.monotonic() + 30
        while client.get("/v1/audit/head").json()["seq"] < start_seq + 12:
            assert time.monotonic() < deadline, "the mints did not reach the release gate"
            time.sleep(0.1)
        time.sleep(0.3)
        proc.kill()
        for t in threads:
            t.join(30)
        client.close()

        proc.start()  # same files; the start-up sweep runs before the anchor pump
        proc.kill()
    finally:
        proc.kill()
        w3.provider.make_request("evm_setAutomine", [True])

    records = ledger_records(tmp_path / "data" / "ledger.sqlite")
    closers = {}
    for r in records:
        if r.type in ("MintWithheld", "ReleaseUnconfirmed"):
            closers[r.data["authorized_seq"]] = r
        elif r.type == "SessionWithheld":
            closers[r.data["session_seq"]] = r
    authorizations = [r for r in records if r.type in ("MintAuthorized", "SessionIssued")]
    assert len(authorizations) == 9
    without = [(r.seq, r.type) for r in authorizations if r.seq not in closers]
    assert without == [], f"authorizations without an outcome after the restart: {without}"
    stalled = [closers[r.seq] for r in authorizations if r.type == "MintAuthorized"]
    assert {(c.type, c.data["reason"]) for c in stalled} == {("MintWithheld", "interrupted")}
    released_sign_ins = [closers[r.seq] for r in authorizations if r.type == "SessionIssued"][:4]
    assert {c.type for c in released_sign_ins} == {"ReleaseUnconfirmed"}  # confirmed: may have been delivered
    cut_sign_in = [closers[r.seq] for r in authorizations if r.type == "SessionIssued"][4]
    assert (cut_sign_in.type, cut_sign_in.data["reason"]) == ("SessionWithheld", "interrupted")
