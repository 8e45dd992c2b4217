"""Issue 11 item 1 over real HTTP (uvicorn on loopback, moto STS through boto3): bounded ledger growth
by strangers, the mint budget charged only after the signature, bad-signature limits that never
block a validly signed mint, the legacy path limited before the backend call, atomic limits.

Design §8 "Reasons and kinds": the first refusal beyond a rate limit per key and window is a
`MintDenied{rate_limited}`, later ones only count in `agentkeys_mints_total{outcome="rate_limited"}`;
limits hit before an account exists are not recorded."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from api.config import BrokerConfig
from api.runtime import Services
from ledger.store import SELECT_RECORDS
from tests.integration.test_legacy_bearer import legacy_catalogue
from tests.integration.test_mint import Broker, assert_no_credentials, auth, broker, build_services, make_pair, pair  # noqa: F401
from tests.support import LiveServer, Wallet, broker_env, signed_mint_body
from tests.support_moto import sts_env

BIG = 200_000


def stored_bytes(services: Services) -> int:
    """Bytes the ledger stores for its records (envelope columns and the event state), read from
    the SQLite file the way an auditor reads it."""
    conn = sqlite3.connect(f"file:{services.config.ledger_db}?mode=ro", uri=True)
    try:
        rows = conn.execute(SELECT_RECORDS).fetchall()
    finally:
        conn.close()
    return sum(sum(len(v) if isinstance(v, (str, bytes)) else 8 for v in row) for row in rows)


def metric(services: Services, name: str, **labels: str) -> float:
    text = services.operator.metrics.render().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(want)}\}} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def denials(b: Broker, reason: str) -> list[dict]:
    return [d for d in b.events("MintDenied") if d["reason"] == reason]


def live_broker(tmp_path: Path, dev_aws, **env: str) -> LiveServer:
    return LiveServer(build_services(broker_env(tmp_path, **sts_env(dev_aws), **env)))


# --- ledger growth by strangers -------------------------------------------------------------------

def test_rate_limited_stranger_with_a_200kb_address_grows_the_ledger_by_less_than_1kb_per_request(
        tmp_path: Path, dev_aws) -> None:
    with live_broker(tmp_path, dev_aws, BROKER_RATE_LIMIT_MINTS_PER_HOUR_PER_OMNI="2") as server:
        b = Broker(server)
        stranger = Wallet()  # signed in, holds no grant
        jwt = b.session(stranger)
        # spend the budget: validly signed requests (no grant: 403, each recorded once)
        assert [b.mint(jwt, signed_mint_body(stranger)).status_code for _ in range(2)] == [403, 403]
        before, head = stored_bytes(b.services), b.services.ledger.head().seq
        statuses = []
        for _ in range(10):  # over the budget, validly signed: 429
            statuses.append(b.mint(jwt, signed_mint_body(stranger)).status_code)
        for _ in range(10):  # over the budget, with a 200 KB auth.address
            body = signed_mint_body(stranger)
            body["auth"]["address"] = "0x" + "a" * BIG
            r = b.mint(jwt, body)
            statuses.append(r.status_code)
            assert r.status_code == 400 and "auth.address" in r.json()["message"] and len(r.text) < 1000
            assert_no_credentials(r)
        assert statuses[:10] == [429] * 10
        grown = stored_bytes(b.services) - before
        assert grown / 20 < 1024, grown  # less than 1 KB per refused request (here: one record for all 20)
        # the first refusal of the window is one MintDenied{rate_limited}; the other nine are only counted
        new = [r for r in b.services.ledger.read(head, 1000)]
        assert [r.type for r in new] == ["MintDenied"] and new[0].data["reason"] == "rate_limited"
        assert new[0].data["wallet"] == stranger.address.lower()
        assert metric(b.services, "agentkeys_mints_total", outcome="rate_limited") == 10
        assert b.minter.calls == 0
        b.client.close()


def test_a_200kb_address_never_enters_an_event_even_before_the_limit(broker: Broker, pair) -> None:  # noqa: F811
    *_, daemon, daemon_jwt, _ = pair
    before = stored_bytes(broker.services)
    for address in ("0x" + "a" * BIG, "0x" + "g" * 40, "ab" * 20 + "\u0000" * 100):
        body = signed_mint_body(daemon)
        body["auth"]["address"] = address
        r = broker.mint(daemon_jwt, body)
        assert r.status_code == 400 and r.json()["error"] == "bad_request"
    assert stored_bytes(broker.services) == before
    assert broker.minter.calls == 0


# --- the mint budget is charged after the signature --------------------------------------------------

def test_stolen_session_jwt_without_the_wallet_key_cannot_exhaust_the_daemons_budget(tmp_path: Path, dev_aws) -> None:
    with live_broker(tmp_path, dev_aws, BROKER_RATE_LIMIT_MINTS_PER_HOUR_PER_OMNI="3") as server:
        b = Broker(server)
        *_, daemon, stolen_jwt, _ = make_pair(b)
        thief = Wallet()
        attempts = []
        for i in range(12):
            if i % 3 == 0:  # garbage signature claiming the daemon's address
                body = signed_mint_body(daemon)
                body["auth"]["signature"] = "0x" + "11" * 65
            elif i % 3 == 1:  # signed by the thief's key, claiming the daemon's address
                body = signed_mint_body(thief, address=daemon.address)
            else:  # signed by the thief's key for the thief's own address
                body = signed_mint_body(thief)
            r = b.mint(stolen_jwt, body)
            assert_no_credentials(r)
            attempts.append(r.status_code)
        assert 429 not in attempts and all(s in (400, 401) for s in attempts), attempts
        # the daemon, holding the key, still has its whole budget
        captured = signed_mint_body(daemon)
        assert b.mint(stolen_jwt, captured).status_code == 200
        # bodies the daemon signed, captured and replayed by the thief, spend nothing either
        old = signed_mint_body(daemon, issued_at="2020-01-01T00:00:00Z")
        replays = [b.mint(stolen_jwt, captured).status_code for _ in range(4)] + [b.mint(stolen_jwt, old).status_code]
        assert replays == [409] * 4 + [400]
        assert [b.mint(stolen_jwt, signed_mint_body(daemon)).status_code for _ in range(3)] == [200, 200, 429]
        assert b.minter.calls == 3
        b.client.close()


# --- bad signatures limited per IP and per wallet -------------------------------------------------------

def test_bad_signatures_beyond_the_per_ip_limit_get_429_but_a_validly_signed_mint_is_served(
        tmp_path: Path, dev_aws) -> None:
    with live_broker(tmp_path, dev_aws, BROKER_RATE_LIMIT_BAD_SIGNATURES_PER_HOUR_PER_IP="3",
                     BROKER_RATE_LIMIT_BAD_SIGNATURES_PER_HOUR_PER_WALLET="1000") as server:
        b = Broker(server)
        *_, daemon, daemon_jwt, _ = make_pair(b)
        thief = Wallet()
        statuses = []
        for _ in range(8):
            r = b.mint(daemon_jwt, signed_mint_body(thief, address=daemon.address))
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.json()["reason"] == "rate_limited" and int(r.headers["Retry-After"]) > 0
        assert statuses == [401, 401, 401] + [429] * 5
        # the limit answers only requests whose signature failed: the daemon's own mints pass
        for _ in range(2):
            ok = b.mint(daemon_jwt, signed_mint_body(daemon))
            assert ok.status_code == 200, ok.text
        assert len(denials(b, "signature_invalid")) == 3
        assert len(denials(b, "rate_limited")) == 1  # the first of the window; the other four only counted
        assert metric(b.services, "agentkeys_mints_total", outcome="rate_limited") == 5
        b.client.close()


def test_bad_signatures_beyond_the_per_wallet_limit_get_429_only_for_that_wallet(tmp_path: Path, dev_aws) -> None:
    with live_broker(tmp_path, dev_aws, BROKER_RATE_LIMIT_BAD_SIGNATURES_PER_HOUR_PER_IP="1000",
                     BROKER_RATE_LIMIT_BAD_SIGNATURES_PER_HOUR_PER_WALLET="2") as server:
        b = Broker(server)
        *_, victim, victim_jwt, _ = make_pair(b)
        *_, other, other_jwt, _ = make_pair(b)
        bad = signed_mint_body(victim)
        bad["auth"]["signature"] = "0x" + "22" * 65
        assert [b.mint(victim_jwt, {**bad, "request_id": f"r{i}"}).status_code for i in range(4)][2:] == [429, 429]
        other_bad = signed_mint_body(other)
        other_bad["auth"]["signature"] = "0x" + "22" * 65
        assert b.mint(other_jwt, other_bad).status_code != 429  # another wallet's budget is its own
        assert b.mint(victim_jwt, signed_mint_body(victim)).status_code == 200
        b.client.close()


# --- the legacy path: limited per IP before the backend call -------------------------------------------

class _CountingBackend(BaseHTTPRequestHandler):
    calls = 0
    lock = threading.Lock()

    def do_GET(self) -> None:  # noqa: N802
        with _CountingBackend.lock:
            _CountingBackend.calls += 1
        data = json.dumps({"message": "session not valid"}).encode()
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


@pytest.fixture
def counting_backend():
    _CountingBackend.calls = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CountingBackend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_200_garbage_legacy_tokens_leave_bounded_records_and_backend_calls(tmp_path: Path, dev_aws,
                                                                          counting_backend: str) -> None:
    # the legacy path mints a catalogue service of its own (BROKER_LEGACY_SERVICE): both halves of the
    # garbage reach the per-IP limiter, then the backend
    env = broker_env(tmp_path, **sts_env(dev_aws), BROKER_LEGACY_BEARER="true", BROKER_BACKEND_URL=counting_backend,
                     BROKER_GRANTS_REQUIRED="false",
                     BROKER_SERVICES_FILE=str(legacy_catalogue(tmp_path / "catalogue", dev_aws["account_id"])),
                     BROKER_LEGACY_SERVICE="legacy")
    with LiveServer(Services.build(BrokerConfig.from_env(env))) as server, \
            httpx.Client(base_url=server.url, timeout=30) as c:
        head = server.services.ledger.head().seq
        statuses = []
        for i in range(200):
            path = "/v1/mint-aws-creds" if i % 2 else "/v1/auth/exchange"
            r = c.post(path, headers=auth(f"garbage-{i}-" + "x" * 1000))
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.json()["reason"] == "legacy_per_ip" and int(r.headers["Retry-After"]) > 0
        # BROKER_RATE_LIMIT_LEGACY_PER_MINUTE_PER_IP=60 (default), counted before the backend is asked; a
        # run that straddles a minute boundary may see two windows (fixed windows, api/ratelimit.py)
        calls = _CountingBackend.calls
        assert statuses.count(401) == calls and statuses.count(429) == 200 - calls
        assert 60 <= calls <= 120, calls
        failures = [r for r in server.services.ledger.read(head, 10000) if r.type == "AuthFailed"]
        assert 1 <= len(failures) <= 2  # the first failure per IP and minute; the rest only counted
        assert len(server.services.ledger.read(head, 10000)) == len(failures)
        counted = metric(server.services, "agentkeys_auth_attempts_total", method="legacy_bearer", outcome="failed")
        assert counted == calls


# --- every limit atomic under concurrency ------------------------------------------------------------

def test_50_parallel_failed_sign_ins_against_a_limit_of_30_at_most_30_pass_the_limiter(tmp_path: Path) -> None:
    env = broker_env(tmp_path, BROKER_RATE_LIMIT_FAILED_VERIFIES_PER_HOUR_PER_IP="30")
    with LiveServer(Services.build(BrokerConfig.from_env(env))) as server:
        head = server.services.ledger.head().seq
        barrier = threading.Barrier(50)

        def attempt(i: int) -> int:
            with httpx.Client(base_url=server.url, timeout=60) as c:
                barrier.wait()
                return c.post("/v1/auth/wallet/verify",
                              json={"request_id": f"siwe-unknown-{i}", "signature": "0x" + "33" * 65}).status_code

        with ThreadPoolExecutor(50) as pool:
            statuses = list(pool.map(attempt, range(50)))
        passed = [s for s in statuses if s != 429]
        assert all(s in (400, 401) for s in passed), statuses
        assert len(passed) <= 30 and statuses.count(429) >= 20, statuses
        failed = [r for r in server.services.ledger.read(head, 10000) if r.type == "AuthFailed"]
        assert len(failed) == len(passed)


def test_a_successful_sign_in_does_not_spend_the_failed_verify_budget(tmp_path: Path) -> None:
    from tests.support import sign_in

    env = broker_env(tmp_path, BROKER_RATE_LIMIT_FAILED_VERIFIES_PER_HOUR_PER_IP="2")
    with LiveServer(Services.build(BrokerConfig.from_env(env))) as server, \
            httpx.Client(base_url=server.url, timeout=30) as c:
        for _ in range(4):  # successes are refunded
            assert sign_in(c, Wallet())["session_jwt"]
        bad = {"request_id": "siwe-unknown", "signature": "0x00"}
        assert [c.post("/v1/auth/wallet/verify", json=bad).status_code for _ in range(3)] == [401, 401, 429]
