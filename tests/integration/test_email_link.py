"""Email magic-link sign-in over real HTTP with a real SMTP sink (seed-spec §H 51–66, 100;
issue 16): token only in the fragment, single use, poll_token, single delivery, rate limits."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
from pathlib import Path

import httpx
import jwt
import pytest

from api.config import BrokerConfig
from api.email_senders import PrintSender
from api.runtime import Services
from ledger.identity import omni_account
from tests.support import LiveServer, Wallet, broker_env, signed_mint_body
from tests.support_signin import LINK, SmtpSink, key_file

ISSUER = "https://broker.test.invalid"


@pytest.fixture
def sink():
    with SmtpSink() as s:
        yield s


def email_env(tmp_path: Path, sink: SmtpSink | None = None, **extra: str) -> dict[str, str]:
    env = {"BROKER_AUTH_METHODS": "wallet_sig,email_link",
           "BROKER_EMAIL_HMAC_KEY_PATH": key_file(tmp_path / "email.key"),
           "BROKER_EMAIL_FROM_ADDRESS": "noreply@broker.test.invalid"}
    if sink is not None:
        env.update(BROKER_EMAIL_SENDER="smtp", BROKER_SMTP_URL=sink.url)
    env.update(extra)
    return broker_env(tmp_path, **env)


@pytest.fixture
def live(tmp_path: Path, sink: SmtpSink):
    with LiveServer(Services.build(BrokerConfig.from_env(email_env(tmp_path, sink)))) as server:
        yield server


@pytest.fixture
def client(live: LiveServer):
    with httpx.Client(base_url=live.url, timeout=30) as c:
        yield c


def request_link(client: httpx.Client, sink: SmtpSink, email: str = "alice@example.com") -> tuple[dict, str, str]:
    r = client.post("/v1/auth/email/request", json={"email": email})
    assert r.status_code == 200, r.text
    link, token = sink.link_for(email.strip().lower())
    return r.json(), link, token


def poll(client: httpx.Client, body: dict, token: str | None = "<own>") -> httpx.Response:  # noqa: S107  "<own>" is a sentinel, not a password
    headers = {} if token is None else {"Authorization": f"Bearer {body['poll_token'] if token == '<own>' else token}"}
    return client.get(body["poll_url"], headers=headers)


def events_of(live: LiveServer, type_name: str) -> list[dict]:
    return [r.data for r in live.services.ledger.read(0, 100000) if r.type == type_name]


# --- §H 51–54, 59, 66: the happy path ----------------------------------------------------------

def test_magic_link_flow_delivers_the_session_to_the_poller_once(live: LiveServer, client: httpx.Client,
                                                                 sink: SmtpSink) -> None:
    body, link, token = request_link(client, sink)
    assert body["request_id"].startswith("eml-") and body["request_id"] in body["poll_url"]
    assert body["expires_in_seconds"] == 600 and len(body["poll_token"]) >= 43
    assert link == f"{ISSUER}/auth/email/landing#t={token}" and len(token) == 43
    assert token not in link.split("#")[0]
    assert poll(client, body).json() == {"status": "pending"}

    r = client.post("/v1/auth/email/verify", json={"token": token})
    assert r.status_code == 200 and r.json() == {"ok": True}
    assert r.headers["cache-control"] == "no-store" and r.headers["referrer-policy"] == "no-referrer"
    assert "session_jwt" not in r.text

    first = poll(client, body)
    assert first.status_code == 200, first.text
    got = first.json()
    mac = hmac.new(live.services.config.email_link.hmac_key, b"alice@example.com", hashlib.sha256).hexdigest()
    assert got["status"] == "verified" and got["session_jwt"].startswith("eyJ")
    assert got["omni_account"] == omni_account("email", mac) and got["identity_type"] == "email"
    assert got["identity_value"] == mac and got["wallet_address"] == ""
    assert got["session_jwt_kid"] and got["expires_at"] > 0 and got["anchored"] == ["sqlite"]
    claims = jwt.decode(got["session_jwt"], options={"verify_signature": False})
    assert claims["agentkeys"]["wallet_address"] == "" and claims["agentkeys"]["identity_value"] == mac

    again = poll(client, body)
    assert again.status_code == 410 and again.json()["error"] == "gone"

    # The ledger holds the HMAC, never the address nor the token.
    dump = "".join(str(r.data) for r in live.services.ledger.read(0, 100000))
    assert "alice@example.com" not in dump and token not in dump and body["poll_token"] not in dump
    requested = events_of(live, "EmailLinkRequested")
    assert requested[0]["email_hmac"] == mac
    assert requested[0]["poll_token_sha256"] == hashlib.sha256(body["poll_token"].encode()).hexdigest()
    assert [e["method"] for e in events_of(live, "AuthSucceeded")] == ["email_link"]
    assert len(events_of(live, "SessionIssued")) == 1


def test_mixed_case_address_is_normalised(client: httpx.Client, sink: SmtpSink) -> None:
    client.post("/v1/auth/email/request", json={"email": "  Alice@Example.COM "})
    sink.link_for("alice@example.com")


def test_landing_page_headers_and_script(client: httpx.Client) -> None:
    r = client.get("/auth/email/landing")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-store" and r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["x-content-type-options"] == "nosniff"
    for text in ("AgentKeys", "/v1/auth/email/verify", "window.location.hash", "history.replaceState"):
        assert text in r.text


# --- §H 55–58, 61, 64, 65: refusals --------------------------------------------------------------

def test_prefetcher_get_on_verify_is_405_and_does_not_consume(client: httpx.Client, sink: SmtpSink) -> None:
    body, _, token = request_link(client, sink)
    r = client.get("/v1/auth/email/verify", params={"token": token})
    assert r.status_code == 405 and "POST" in r.headers["allow"]
    assert client.post("/v1/auth/email/verify", json={"token": token}).status_code == 200


def test_replayed_magic_link_token_is_refused(client: httpx.Client, sink: SmtpSink) -> None:
    _, _, token = request_link(client, sink)
    assert client.post("/v1/auth/email/verify", json={"token": token}).status_code == 200
    r = client.post("/v1/auth/email/verify", json={"token": token})
    assert r.status_code == 401 and r.json()["reason"] == "challenge_consumed"


def test_forged_token_is_refused(client: httpx.Client) -> None:
    for token in ("this-token-was-never-issued", "A" * 43):
        r = client.post("/v1/auth/email/verify", json={"token": token})
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"


def test_token_for_another_request_id_is_refused_and_burned(client: httpx.Client, sink: SmtpSink) -> None:
    body, _, token = request_link(client, sink)
    other, _, _ = request_link(client, sink, "bob@example.com")
    r = client.post("/v1/auth/email/verify", json={"token": token, "request_id": other["request_id"]})
    assert r.status_code == 401 and r.json()["reason"] == "request_id_mismatch"
    assert client.post("/v1/auth/email/verify", json={"token": token}).status_code == 401
    assert poll(client, body).json()["status"] == "failed"


def test_malformed_email_is_400(client: httpx.Client) -> None:
    for bad in ("no-at-sign", "@example.com", "a@", "a b@example.com", ""):
        r = client.post("/v1/auth/email/request", json={"email": bad})
        assert r.status_code == 400 and r.json()["reason"] == "malformed_email", bad


def test_status_of_unknown_request_is_400(client: httpx.Client) -> None:
    r = client.get("/v1/auth/email/status/req-never-existed", headers={"Authorization": "Bearer x"})
    assert r.status_code == 400 and r.json()["reason"] == "unknown_request"


def test_stranger_knowing_only_the_request_id_gets_nothing(client: httpx.Client, sink: SmtpSink) -> None:
    body, _, token = request_link(client, sink)
    assert client.post("/v1/auth/email/verify", json={"token": token}).status_code == 200
    r = poll(client, body, token=None)
    assert r.status_code == 401 and r.json()["reason"] == "poll_token_required"
    r = poll(client, body, token="guessed-poll-token")
    assert r.status_code == 401 and r.json()["reason"] == "poll_token_invalid"
    assert poll(client, body).json()["status"] == "verified"  # the owner still collects it


def test_expired_link_is_refused(live: LiveServer, client: httpx.Client, sink: SmtpSink) -> None:
    body, _, token = request_link(client, sink)
    service = live.services.email_link
    real = service.clock
    service.clock = lambda: real() + 601
    try:
        r = client.post("/v1/auth/email/verify", json={"token": token})
    finally:
        service.clock = real
    assert r.status_code == 401 and "expired" in r.json()["message"]
    assert poll(client, body).json()["status"] == "failed"


def test_expired_requests_are_purged_from_the_read_model(live: LiveServer, client: httpx.Client, sink: SmtpSink) -> None:
    from projections.auth_requests import get_request, purge_expired

    body, _, _ = request_link(client, sink)
    engine = live.services.projections.engine
    assert get_request(engine, body["request_id"]).status == "pending"
    row = get_request(engine, body["request_id"])
    assert purge_expired(engine, row.expires_at) == 0
    assert purge_expired(engine, row.expires_at + 601) == 1
    assert get_request(engine, body["request_id"]) is None
    assert poll(client, body).status_code == 400


def test_read_model_follows_the_request_and_rebuilds(live: LiveServer, client: httpx.Client, sink: SmtpSink) -> None:
    from projections.auth_requests import get_request

    body, _, token = request_link(client, sink)
    client.post("/v1/auth/email/verify", json={"token": token})
    engine = live.services.projections.engine
    live.services.projections.wait_until(live.services.ledger.head().seq, name="auth_requests")
    assert get_request(engine, body["request_id"]).status == "verified"
    poll(client, body)
    live.services.projections.wait_until(live.services.ledger.head().seq, name="auth_requests")
    assert get_request(engine, body["request_id"]).status == "delivered"
    live.services.projections.stop()
    live.services.projections.rebuild("auth_requests")
    assert get_request(engine, body["request_id"]).status == "delivered"


# --- rate limits (§H 62, 63, adapted: 429 + Retry-After, the body's source_ip ignored) ----------

def test_sixth_request_for_one_address_is_429(client: httpx.Client, sink: SmtpSink) -> None:
    for _ in range(5):
        assert client.post("/v1/auth/email/request", json={"email": "carol@example.com"}).status_code == 200
    r = client.post("/v1/auth/email/request", json={"email": "Carol@example.com"})
    assert r.status_code == 429 and "rate limited" in r.json()["message"] and int(r.headers["retry-after"]) >= 1


def test_per_ip_limit_is_checked_before_the_per_address_limit(tmp_path: Path) -> None:
    env = email_env(tmp_path, None, BROKER_EMAIL_SENDER="print", BROKER_DEV_MODE="true",
                    BROKER_EMAIL_RATE_LIMIT_PER_IP_MINUTELY="3")
    services = Services.build(BrokerConfig.from_env(env))
    services.email_link.sender = PrintSender(io.StringIO())
    with LiveServer(services) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        for i in range(3):
            assert c.post("/v1/auth/email/request", json={"email": f"u{i}@example.com",
                                                          "source_ip": f"10.0.0.{i}"}).status_code == 200
        r = c.post("/v1/auth/email/request", json={"email": "victim@example.com", "source_ip": "10.9.9.9"})
        assert r.status_code == 429 and "per-IP" in r.json()["message"]
    # The refused request did not spend the victim's per-address budget.
    assert services.email_link.email_limiter.check("x").allowed


# --- races ---------------------------------------------------------------------------------------

def test_same_token_in_20_parallel_verifies_wins_once(live: LiveServer, sink: SmtpSink) -> None:
    with httpx.Client(base_url=live.url, timeout=30) as c:
        body, _, token = request_link(c, sink)

    async def race() -> list[int]:
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as ac:
            rs = await asyncio.gather(*[ac.post("/v1/auth/email/verify", json={"token": token}) for _ in range(20)])
            return [r.status_code for r in rs]

    codes = asyncio.run(race())
    assert codes.count(200) == 1 and codes.count(401) == 19
    assert len(events_of(live, "AuthSucceeded")) == 1


def test_20_parallel_polls_deliver_the_session_once(live: LiveServer, sink: SmtpSink) -> None:
    with httpx.Client(base_url=live.url, timeout=30) as c:
        body, _, token = request_link(c, sink)
        assert c.post("/v1/auth/email/verify", json={"token": token}).status_code == 200

    async def race() -> list[int]:
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as ac:
            rs = await asyncio.gather(*[ac.get(body["poll_url"], headers={"Authorization": f"Bearer {body['poll_token']}"})
                                        for _ in range(20)])
            return [r.status_code for r in rs]

    codes = asyncio.run(race())
    assert codes.count(200) == 1 and codes.count(410) == 19, codes
    assert len(events_of(live, "SessionIssued")) == 1


# --- sessions without a wallet manage nothing ---------------------------------------------------

def test_email_session_cannot_grant_or_mint(client: httpx.Client, sink: SmtpSink) -> None:
    body, _, token = request_link(client, sink)
    client.post("/v1/auth/email/verify", json={"token": token})
    session = poll(client, body).json()["session_jwt"]
    auth = {"Authorization": f"Bearer {session}"}
    r = client.post("/v1/grant/create", headers=auth, json={"daemon_address": Wallet().address, "service": "s3",
                                                            "scope_path": "b/x/", "expires_at": 2_000_000_000,
                                                            "max_uses": 1})
    assert r.status_code == 403 and r.json()["reason"] == "not_owner"
    w = Wallet()
    r = client.post("/v1/mint-aws-creds", headers=auth, json=signed_mint_body(w))
    assert r.status_code == 403 and r.json()["reason"] == "not_owner"


# --- method selection and readiness -----------------------------------------------------------

def test_email_routes_refuse_when_the_method_is_not_enabled(tmp_path: Path) -> None:
    with LiveServer(Services.build(BrokerConfig.from_env(broker_env(tmp_path)))) as live, \
            httpx.Client(base_url=live.url, timeout=30) as c:
        r = c.post("/v1/auth/email/request", json={"email": "a@example.com"})
        assert r.status_code == 400 and "email_link auth method is not enabled" in r.json()["message"]


def test_readyz_reports_an_unreachable_smtp_server(tmp_path: Path) -> None:
    from tests.support import free_port

    env = email_env(tmp_path, None, BROKER_EMAIL_SENDER="smtp", BROKER_SMTP_URL=f"smtp://127.0.0.1:{free_port()}")
    with LiveServer(Services.build(BrokerConfig.from_env(env))) as live, \
            httpx.Client(base_url=live.url, timeout=30) as c:
        r = c.get("/readyz")
        assert r.status_code == 503
        names = {ch["name"] for ch in r.json()["checks"]}
        assert "auth/email_link" in names


def test_readyz_auth_email_link_ready_with_a_reachable_smtp_server(client: httpx.Client) -> None:
    r = client.get("/readyz")
    assert "auth/email_link" in r.json()["ready"], r.json()


def test_unreachable_smtp_server_fails_the_request_with_502(tmp_path: Path) -> None:
    from tests.support import free_port

    env = email_env(tmp_path, None, BROKER_EMAIL_SENDER="smtp", BROKER_SMTP_URL=f"smtp://127.0.0.1:{free_port()}")
    with LiveServer(Services.build(BrokerConfig.from_env(env))) as live, \
            httpx.Client(base_url=live.url, timeout=30) as c:
        r = c.post("/v1/auth/email/request", json={"email": "a@example.com"})
        assert r.status_code == 502 and r.json()["reason"] == "delivery_failed"
        failed = [e for e in events_of(live, "AuthFailed") if e["method"] == "email_link"]
        assert failed and failed[0]["reason"] == "delivery_failed"


def test_print_sender_writes_the_link_to_stdout(tmp_path: Path) -> None:
    out = io.StringIO()
    env = email_env(tmp_path, None, BROKER_EMAIL_SENDER="print", BROKER_DEV_MODE="true")
    services = Services.build(BrokerConfig.from_env(env))
    services.email_link.sender = PrintSender(out)
    with LiveServer(services) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        assert c.post("/v1/auth/email/request", json={"email": "d@example.com"}).status_code == 200
    assert LINK.search(out.getvalue())


# --- the release gate: a withheld delivery leaves the request collectable ----------------------

def test_session_withheld_by_the_anchors_is_not_delivered_and_stays_verified(tmp_path: Path, sink: SmtpSink) -> None:
    from ledger.signin_request import SignInRequest
    from projections.auth_requests import get_request

    env = email_env(tmp_path, sink, BROKER_ANCHOR_DEADLINE_MS="300")
    with LiveServer(Services.build(BrokerConfig.from_env(env))) as live, \
            httpx.Client(base_url=live.url, timeout=30) as c:
        body, _, token = request_link(c, sink)
        assert c.post("/v1/auth/email/verify", json={"token": token}).status_code == 200
        live.services.pump.stop()  # the anchor stops confirming
        for _ in range(2):  # withheld twice: never 410, since nothing was delivered
            r = poll(c, body)
            assert r.status_code == 503 and r.json()["reason"] == "anchor_deadline"
            assert "eyJ" not in r.text
        assert len(events_of(live, "SessionWithheld")) == 2 and len(events_of(live, "SessionIssued")) == 2
        request = live.services.ledger.load(SignInRequest, SignInRequest.stream_for(body["request_id"]))
        assert request.session is None
        live.services.projections.wait_until(live.services.ledger.head().seq, name="auth_requests")
        assert get_request(live.services.projections.engine, body["request_id"]).status == "verified"


def test_the_token_never_reaches_the_server_logs(tmp_path: Path, sink: SmtpSink, caplog: pytest.LogCaptureFixture) -> None:
    """Access log on, every logger at DEBUG: the token travels in the fragment (never sent) and in
    the verify body (never logged); the poll token only in a header."""
    import logging
    import threading

    import uvicorn

    from api.app import create_app
    from tests.support import free_port

    services = Services.build(BrokerConfig.from_env(email_env(tmp_path, sink)))
    live = LiveServer(services)
    live.port = free_port()
    live.server = uvicorn.Server(uvicorn.Config(create_app(services), host="127.0.0.1", port=live.port,
                                                log_level="debug", access_log=True, lifespan="on",
                                                log_config=None))
    live.thread = threading.Thread(target=live.server.run, daemon=True)
    caplog.set_level(logging.DEBUG)
    # uvicorn's default logging config (applied by earlier servers in this process) stops its
    # loggers from propagating: listen on them directly.
    uvicorn_loggers = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.access", "uvicorn.error")]
    for lg in uvicorn_loggers:
        lg.addHandler(caplog.handler)
    try:
        _drive_a_sign_in(live, sink, caplog)
    finally:
        for lg in uvicorn_loggers:
            lg.removeHandler(caplog.handler)


def _drive_a_sign_in(live: LiveServer, sink: SmtpSink, caplog: pytest.LogCaptureFixture) -> None:
    with live, httpx.Client(base_url=live.url, timeout=30) as c:
        body, link, token = request_link(c, sink)
        from urllib.parse import urlsplit

        # What a browser fetches: the path, never the fragment.
        assert c.get(urlsplit(link).path).status_code == 200
        assert c.post("/v1/auth/email/verify", json={"token": token}).status_code == 200
        assert poll(c, body).status_code == 200
    # the test's own SMTP sink (aiosmtpd, logger `mail.log`) logs the message it received: that is
    # the mailbox, not the broker; every other logger in the process is the broker's or its libraries'
    text = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("mail.log"))
    assert "/auth/email/landing" in text  # the access log did record the requests
    assert token not in text and body["poll_token"] not in text
