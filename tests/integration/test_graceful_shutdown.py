"""Graceful shutdown of `agentkeys-broker serve` (seed-spec §F.4, §H 87–88), as a real subprocess.

SIGTERM stops the listener at once (new connections are refused), lets requests already in flight
finish with their normal answer for up to `BROKER_SHUTDOWN_GRACE_SECONDS`, then exits 0 on its own,
without a second signal, even when a request would outlast the grace period.

The slow request is a SIWE verify whose session waits for the SQLite anchor: after start-up the
anchor file is moved away and a directory put in its place, so the anchor stops confirming (the
anchor refuses to re-create a vanished file). Moving the file back lets it confirm again.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, cli_path
from tests.support import Wallet, broker_env, free_port

SLACK_S = 3.0


class Broker:
    def __init__(self, tmp: Path, **env: str) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        self.anchor_db = tmp / "anchor" / "anchor.sqlite"
        self.ledger_db = tmp / "data" / "ledger.sqlite"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **broker_env(tmp, BROKER_SQLITE_ANCHOR_DB=str(self.anchor_db),
                                               BROKER_LEDGER_DB=str(self.ledger_db), **env)}
        self.log = tmp / "serve.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        self.proc = subprocess.Popen([cli_path(), "serve", "--port", str(self.port), "--skip-startup-check"],
                                     cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"))
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "broker did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    # the anchor stops confirming / confirms again
    def break_anchor(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.anchor_db) + suffix)
            if p.exists():
                os.replace(p, Path(str(p) + ".moved"))
        self.anchor_db.mkdir()

    def repair_anchor(self) -> None:
        shutil.rmtree(self.anchor_db)
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.anchor_db) + suffix + ".moved")
            if p.exists():
                os.replace(p, Path(str(self.anchor_db) + suffix))

    def accepts_connections(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def events(self) -> list[str]:
        from ledger.app import Ledger
        from ledger.config import LedgerConfig

        led = Ledger(LedgerConfig(self.ledger_db))
        try:
            return [r.type for r in led.read(0, 100000)]
        finally:
            led.close()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as ex:
        yield ex


def start_challenge(url: str) -> tuple[Wallet, dict]:
    w = Wallet()
    r = httpx.post(url + "/v1/auth/wallet/start", json={"address": w.address, "chain_id": 84532}, timeout=10)
    assert r.status_code == 200, r.text
    return w, r.json()


def verify_in_background(pool: ThreadPoolExecutor, url: str, wallet: Wallet, challenge: dict) -> Future:
    payload = {"request_id": challenge["request_id"], "signature": wallet.sign(challenge["siwe_message"])}
    return pool.submit(httpx.post, url + "/v1/auth/wallet/verify", json=payload, timeout=60)


def head_seq(broker: Broker) -> int:
    r = httpx.get(broker.url + "/v1/audit/head", timeout=5)
    assert r.status_code == 200, r.text
    return r.json()["seq"]


def wait_until_waiting_for_the_anchor(broker: Broker, before: int, inflight: Future) -> None:
    """The verify has appended its records (`SessionIssued` last, in one atomic append) and now
    waits for the anchor: the chain head moved past `before` and no answer has come back."""
    deadline = time.monotonic() + 15
    while head_seq(broker) <= before:
        assert not inflight.done(), inflight.result().text
        assert time.monotonic() < deadline, "the verify never reached the ledger"
        time.sleep(0.02)
    time.sleep(0.1)


def sigterm_and_watch_listener(broker: Broker, inflight: Future) -> float:
    """SIGTERM, then wait until the listener refuses connections; that must happen while the
    request is still in flight. Returns the monotonic time of the signal."""
    assert broker.proc is not None
    assert not inflight.done(), "the request was not in flight when SIGTERM was sent"
    sent = time.monotonic()
    broker.proc.send_signal(signal.SIGTERM)
    while broker.accepts_connections():
        assert time.monotonic() - sent < 1.0, "still accepting new connections 1 s after SIGTERM"
        time.sleep(0.02)
    assert not inflight.done(), "the listener closed only after the in-flight request finished"
    with pytest.raises(httpx.TransportError):
        httpx.get(broker.url + "/healthz", timeout=1)
    return sent


def test_in_flight_sign_in_completes_with_200_after_sigterm(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    """§H 87: a request in flight when SIGTERM arrives completes with 200."""
    broker = Broker(tmp_path, BROKER_SHUTDOWN_GRACE_SECONDS="5", BROKER_ANCHOR_DEADLINE_MS="5000").start()
    try:
        wallet, challenge = start_challenge(broker.url)
        broker.break_anchor()
        before = head_seq(broker)
        inflight = verify_in_background(pool, broker.url, wallet, challenge)
        wait_until_waiting_for_the_anchor(broker, before, inflight)
        sent = sigterm_and_watch_listener(broker, inflight)
        broker.repair_anchor()  # the anchor catches up while the broker drains
        r = inflight.result(timeout=15)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["anchored"] == ["sqlite"] and body["wallet_address"] == wallet.address
        assert broker.proc.wait(timeout=5 + SLACK_S) == 0, broker.log.read_text()[-3000:]
        assert time.monotonic() - sent < 5 + SLACK_S
    finally:
        broker.stop()
    types = broker.events()
    assert types[-2:] == ["AuthSucceeded", "SessionIssued"]


def test_in_flight_request_gets_its_503_when_the_anchor_stays_down(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    """The drained request gets exactly the answer it would have had without the signal: past
    `BROKER_ANCHOR_DEADLINE_MS` a 503 `anchor_unavailable`, a `SessionWithheld` on record, no token."""
    broker = Broker(tmp_path, BROKER_SHUTDOWN_GRACE_SECONDS="5", BROKER_ANCHOR_DEADLINE_MS="1500").start()
    try:
        wallet, challenge = start_challenge(broker.url)
        broker.break_anchor()
        before = head_seq(broker)
        inflight = verify_in_background(pool, broker.url, wallet, challenge)
        wait_until_waiting_for_the_anchor(broker, before, inflight)
        sent = sigterm_and_watch_listener(broker, inflight)
        r = inflight.result(timeout=15)
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "anchor_unavailable" and "eyJ" not in r.text
        rc = broker.proc.wait(timeout=5 + SLACK_S)
        elapsed = time.monotonic() - sent
        assert rc == 0, broker.log.read_text()[-3000:]
        assert elapsed < 5 + SLACK_S
    finally:
        broker.stop()
    assert broker.events()[-1] == "SessionWithheld"


def test_exits_within_the_grace_period_when_a_request_would_outlast_it(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    """§H 88: grace 1 s, a request that would wait 5 s for the anchor: one SIGTERM, exit 0 in about
    1 s. The cut-off request gets no session token (a closed connection or an error answer)."""
    broker = Broker(tmp_path, BROKER_SHUTDOWN_GRACE_SECONDS="1", BROKER_ANCHOR_DEADLINE_MS="5000").start()
    try:
        wallet, challenge = start_challenge(broker.url)
        broker.break_anchor()
        before = head_seq(broker)
        inflight = verify_in_background(pool, broker.url, wallet, challenge)
        wait_until_waiting_for_the_anchor(broker, before, inflight)
        sent = sigterm_and_watch_listener(broker, inflight)
        rc = broker.proc.wait(timeout=1 + SLACK_S)
        elapsed = time.monotonic() - sent
        assert rc == 0, broker.log.read_text()[-3000:]
        assert elapsed < 1 + SLACK_S, elapsed
        try:
            r = inflight.result(timeout=10)
        except httpx.TransportError:
            pass  # the connection was closed
        else:
            # today: 500 `internal` (uvicorn cancels the handler; CancelledError reaches the catch-all)
            assert r.status_code >= 500 and "eyJ" not in r.text and "session_jwt" not in r.text, r.text
    finally:
        broker.stop()
    types = broker.events()
    # Recorded before the wait, never released. Note: no `SessionWithheld` follows it today, so the
    # ledger cannot tell this session from a released one: the process exits without cancelling the
    # request, so the release path (ledger/services/release.py) never runs its cancellation branch;
    # the start-up sweep of design §8 (`*Withheld{interrupted}`) is what will close this.
    assert "SessionIssued" in types


def test_idle_broker_exits_promptly_on_sigterm_and_sigint(tmp_path: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        broker = Broker(tmp_path / sig.name, BROKER_SHUTDOWN_GRACE_SECONDS="30").start()
        try:
            sent = time.monotonic()
            broker.proc.send_signal(sig)
            assert broker.proc.wait(timeout=SLACK_S + 2) == 0, broker.log.read_text()[-3000:]
            assert time.monotonic() - sent < SLACK_S
        finally:
            broker.stop()
