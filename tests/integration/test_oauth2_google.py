"""Google sign-in end to end against a LOCAL OpenID Connect provider (its own keys, discovery,
authorize and token endpoints on a loopback port): seed-spec §H 67–80, 95; issue 16."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from api.config import BrokerConfig
from api.runtime import Services
from ledger.identity import omni_account
from tests.support import LiveServer, broker_env, free_port
from tests.support_signin import LocalOidcProvider, key_file

CLIENT_ID = "agentkeys-test-client.apps.example"
SECRET = "test-client-secret"


@pytest.fixture
def provider():
    with LocalOidcProvider(CLIENT_ID, SECRET) as p:
        yield p


def oauth_env(tmp_path: Path, discovery_url: str, port: int, **extra: str) -> dict[str, str]:
    secret = tmp_path / "client-secret"
    secret.write_text(f"  {SECRET}\n")
    secret.chmod(0o600)
    return broker_env(tmp_path, **{
        "BROKER_AUTH_METHODS": "wallet_sig, oauth2_google",
        "BROKER_OAUTH2_GOOGLE_CLIENT_ID": CLIENT_ID,
        "BROKER_OAUTH2_GOOGLE_CLIENT_SECRET_FILE": str(secret),
        "BROKER_OAUTH2_STATE_HMAC_KEY_PATH": key_file(tmp_path / "state.key"),
        "BROKER_OAUTH2_REDIRECT_URI": f"http://127.0.0.1:{port}/auth/oauth2/callback",
        "BROKER_OAUTH2_GOOGLE_DISCOVERY_URL": discovery_url,
        **extra,
    })


def make_live(tmp_path: Path, provider: LocalOidcProvider, **extra: str) -> LiveServer:
    port = free_port()
    services = Services.build(BrokerConfig.from_env(oauth_env(tmp_path, provider.discovery_url, port, **extra)))
    live = LiveServer(services)
    live.port = port
    import uvicorn

    from api.app import create_app

    live.server = uvicorn.Server(uvicorn.Config(create_app(services), host="127.0.0.1", port=port,
                                                log_level="warning", lifespan="on", proxy_headers=False))
    import threading

    live.thread = threading.Thread(target=live.server.run, daemon=True)
    return live


@pytest.fixture
def live(tmp_path: Path, provider: LocalOidcProvider):
    with make_live(tmp_path, provider) as server:
        yield server


@pytest.fixture
def client(live: LiveServer):
    with httpx.Client(base_url=live.url, timeout=30) as c:
        yield c


def start(client: httpx.Client, **body: str) -> dict:
    r = client.post("/v1/auth/oauth2/start", json=body or {"provider": "google"})
    assert r.status_code == 200, r.text
    return r.json()


def poll(client: httpx.Client, flow: dict, token: str | None = "<own>") -> httpx.Response:  # noqa: S107  "<own>" is a sentinel, not a password
    headers = {} if token is None else {"Authorization": f"Bearer {flow['poll_token'] if token == '<own>' else token}"}
    return client.get(flow["poll_url"], headers=headers)


def callback_query(provider: LocalOidcProvider, flow: dict) -> str:
    location = provider.authorize(flow["authorization_url"])
    return urlsplit(location).query


def events_of(live: LiveServer, type_name: str) -> list[dict]:
    return [r.data for r in live.services.ledger.read(0, 100000) if r.type == type_name]


# --- §H 67, 68, 75: the full flow ---------------------------------------------------------------

def test_start_builds_a_pkce_authorization_url(client: httpx.Client, provider: LocalOidcProvider) -> None:
    flow = start(client)
    assert flow["request_id"].startswith("oa2-") and flow["request_id"] in flow["poll_url"]
    assert flow["provider"] == "google" and flow["expires_in_seconds"] == 600
    url = flow["authorization_url"]
    assert url.startswith(f"{provider.issuer}/authorize?")
    q = parse_qs(urlsplit(url).query)
    assert q["code_challenge_method"] == ["S256"] and q["prompt"] == ["select_account"]
    assert q["scope"] == ["openid email"] and "scope=openid+email" in url
    for name in ("state", "nonce", "code_challenge", "client_id", "redirect_uri"):
        assert q[name][0]
    payload = json.loads(base64.urlsafe_b64decode(q["state"][0].split(".")[0] + "=="))
    assert set(payload) == {"v", "rid", "n", "ts"} and payload["rid"] == flow["request_id"]
    assert payload["n"] == q["nonce"][0]
    assert poll(client, flow).json() == {"status": "pending"}


def test_full_flow_delivers_a_session_bound_to_sub_once(live: LiveServer, client: httpx.Client,
                                                         provider: LocalOidcProvider) -> None:
    flow = start(client)
    r = client.get(f"/auth/oauth2/callback?{callback_query(provider, flow)}")
    assert r.status_code == 200, r.text
    assert "Verified" in r.text and "eyJ" not in r.text
    assert r.headers["content-type"].startswith("text/html") and r.headers["cache-control"] == "no-store"
    assert r.headers["referrer-policy"] == "no-referrer" and r.headers["x-content-type-options"] == "nosniff"
    assert '<meta name="referrer" content="no-referrer">' in r.text and "AgentKeys \u2014 OAuth2" in r.text

    got = poll(client, flow)
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["status"] == "verified" and body["session_jwt"].startswith("eyJ")
    assert body["identity_type"] == "oauth2_google" and body["identity_value"] == provider.subject
    assert body["omni_account"] == omni_account("oauth2_google", provider.subject)
    assert poll(client, flow).status_code == 410
    succeeded = events_of(live, "AuthSucceeded")
    assert [(e["method"], e["identity_value"]) for e in succeeded] == [("oauth2_google", provider.subject)]
    dump = "".join(str(r.data) for r in live.services.ledger.read(0, 100000))
    assert flow["poll_token"] not in dump and "someone@example.com" not in dump


# --- §H 69–74, 76, 78–80: refusals ---------------------------------------------------------------

def test_forged_state_is_refused(client: httpx.Client, provider: LocalOidcProvider) -> None:
    flow = start(client)
    query = parse_qs(callback_query(provider, flow))
    code, state = query["code"][0], query["state"][0]
    r = client.get("/auth/oauth2/callback", params={"code": code, "state": "invalid"})
    assert r.status_code == 401 and r.json()["reason"] == "state_invalid"
    flipped = state[:-1] + ("A" if state[-1] != "A" else "B")
    r = client.get("/auth/oauth2/callback", params={"code": code, "state": flipped})
    assert r.status_code == 401 and r.json()["reason"] == "state_invalid"
    # The genuine state still works: the forgeries consumed nothing.
    assert client.get("/auth/oauth2/callback", params={"code": code, "state": state}).status_code == 200


def test_user_cancel_marks_the_request_failed(client: httpx.Client) -> None:
    flow = start(client)
    state = parse_qs(urlsplit(flow["authorization_url"]).query)["state"][0]
    r = client.get("/auth/oauth2/callback", params={"error": "user_denied", "state": state})
    assert r.status_code == 200 and "cancelled" in r.text
    got = poll(client, flow).json()
    assert got["status"] == "failed" and "user_denied" in got["reason"]


def test_replayed_code_and_state_are_refused(client: httpx.Client, provider: LocalOidcProvider) -> None:
    flow = start(client)
    query = callback_query(provider, flow)
    assert client.get(f"/auth/oauth2/callback?{query}").status_code == 200
    r = client.get(f"/auth/oauth2/callback?{query}")
    assert r.status_code == 401 and r.json()["reason"] == "challenge_consumed"


def test_expired_id_token_fails_the_flow(client: httpx.Client, provider: LocalOidcProvider) -> None:
    provider.claims_override = {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}
    flow = start(client)
    r = client.get(f"/auth/oauth2/callback?{callback_query(provider, flow)}")
    assert r.status_code == 401 and r.json()["reason"] == "id_token_expired"
    got = poll(client, flow).json()
    assert got["status"] == "failed" and "expired" in got["reason"]


def test_id_token_for_another_audience_fails_the_flow(client: httpx.Client, provider: LocalOidcProvider) -> None:
    provider.claims_override = {"aud": "someone-elses-client"}
    flow = start(client)
    assert client.get(f"/auth/oauth2/callback?{callback_query(provider, flow)}").status_code == 401
    got = poll(client, flow).json()
    assert got["status"] == "failed" and "audience" in got["reason"]


@pytest.mark.parametrize("override,reason", [
    ({"iss": "https://evil.example"}, "id_token_issuer"),
    ({"nonce": "replayed-nonce"}, "nonce_mismatch"),
    ({"iat": int(time.time()) + 3600}, "id_token_invalid"),
])
def test_id_token_with_wrong_claims_is_refused(client: httpx.Client, provider: LocalOidcProvider,
                                              override: dict, reason: str) -> None:
    provider.claims_override = override
    flow = start(client)
    r = client.get(f"/auth/oauth2/callback?{callback_query(provider, flow)}")
    assert r.status_code == 401 and r.json()["reason"] == reason


def test_id_token_signed_by_a_stranger_key_is_refused(live: LiveServer, client: httpx.Client,
                                                     provider: LocalOidcProvider) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    flow = start(client)
    assert client.get(f"/auth/oauth2/callback?{callback_query(provider, flow)}").status_code == 200
    published = provider.jwks()
    provider.jwks = lambda: published  # type: ignore[method-assign]  # the attacker cannot publish its key
    provider.keys[0] = (provider.keys[0][0], rsa.generate_private_key(public_exponent=65537, key_size=2048))
    flow = start(client)
    r = client.get(f"/auth/oauth2/callback?{callback_query(provider, flow)}")
    assert r.status_code == 401 and r.json()["reason"] == "id_token_invalid"


def test_unknown_provider_is_400(client: httpx.Client) -> None:
    r = client.post("/v1/auth/oauth2/start", json={"provider": "github"})
    assert r.status_code == 400 and r.json()["reason"] == "unknown_provider"


def test_state_older_than_ten_minutes_is_refused(live: LiveServer, client: httpx.Client,
                                                provider: LocalOidcProvider) -> None:
    flow = start(client)
    query = callback_query(provider, flow)
    service = live.services.oauth2
    real = service.clock
    service.clock = lambda: real() + 601
    try:
        r = client.get(f"/auth/oauth2/callback?{query}")
    finally:
        service.clock = real
    assert r.status_code == 401 and "expired" in r.json()["message"]


def test_callback_without_code_is_400(client: httpx.Client) -> None:
    flow = start(client)
    state = parse_qs(urlsplit(flow["authorization_url"]).query)["state"][0]
    r = client.get("/auth/oauth2/callback", params={"state": state})
    assert r.status_code == 400 and r.json()["error"] == "bad_request"


def test_status_of_unknown_flow_is_400(client: httpx.Client) -> None:
    r = client.get("/v1/auth/oauth2/status/oa2-unknown", headers={"Authorization": "Bearer x"})
    assert r.status_code == 400


def test_stranger_knowing_only_the_request_id_gets_nothing(client: httpx.Client, provider: LocalOidcProvider) -> None:
    flow = start(client)
    client.get(f"/auth/oauth2/callback?{callback_query(provider, flow)}")
    assert poll(client, flow, token=None).status_code == 401
    assert poll(client, flow, token="guess").status_code == 401
    assert poll(client, flow).json()["status"] == "verified"


def test_token_endpoint_failure_is_502(client: httpx.Client, provider: LocalOidcProvider) -> None:
    flow = start(client)
    query = callback_query(provider, flow)
    provider.token_status = 500
    r = client.get(f"/auth/oauth2/callback?{query}")
    assert r.status_code == 502 and r.json()["reason"] == "token_exchange_failed"


# --- §H 77 adapted: 429 + Retry-After, the body's source_ip ignored ------------------------------

def test_31st_start_from_one_ip_in_a_minute_is_429(client: httpx.Client) -> None:
    for i in range(30):
        assert client.post("/v1/auth/oauth2/start", json={"provider": "google", "source_ip": f"10.0.0.{i}"}).status_code == 200
    r = client.post("/v1/auth/oauth2/start", json={"provider": "google"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1


# --- races and key rotation ---------------------------------------------------------------------

def test_same_code_in_20_parallel_callbacks_wins_once(live: LiveServer, provider: LocalOidcProvider) -> None:
    with httpx.Client(base_url=live.url, timeout=30) as c:
        flow = start(c)
        query = callback_query(provider, flow)

    async def race() -> list[int]:
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as ac:
            rs = await asyncio.gather(*[ac.get(f"/auth/oauth2/callback?{query}") for _ in range(20)])
            return [r.status_code for r in rs]

    codes = asyncio.run(race())
    assert codes.count(200) == 1 and codes.count(401) == 19, codes
    assert provider.token_calls == 1
    assert len([e for e in events_of(live, "AuthSucceeded") if e["method"] == "oauth2_google"]) == 1


def test_rotated_provider_key_is_fetched_once_on_an_unknown_kid(live: LiveServer, client: httpx.Client,
                                                               provider: LocalOidcProvider) -> None:
    flow = start(client)
    assert client.get(f"/auth/oauth2/callback?{callback_query(provider, flow)}").status_code == 200
    before = provider.jwks_fetches
    provider.rotate()
    flow = start(client)
    assert client.get(f"/auth/oauth2/callback?{callback_query(provider, flow)}").status_code == 200
    assert provider.jwks_fetches == before + 1


# --- readiness and boot --------------------------------------------------------------------------

def test_readyz_covers_the_provider(tmp_path: Path, provider: LocalOidcProvider) -> None:
    with make_live(tmp_path, provider) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        assert "auth/oauth2_google" in c.get("/readyz").json()["ready"]
    dead = f"http://127.0.0.1:{free_port()}/.well-known/openid-configuration"
    (tmp_path / "b").mkdir()
    services = Services.build(BrokerConfig.from_env(oauth_env(tmp_path / "b", dead, free_port())))
    with LiveServer(services) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "auth/oauth2_google" in {ch["name"] for ch in r.json()["checks"]}
        r = c.post("/v1/auth/oauth2/start", json={"provider": "google"})
        assert r.status_code == 502 and r.json()["reason"] == "provider_unreachable"


def test_pkce_verifier_matches_the_challenge_sent(live: LiveServer, client: httpx.Client) -> None:
    flow = start(client)
    q = parse_qs(urlsplit(flow["authorization_url"]).query)
    verifier = live.services.oauth2.codec.verifier(flow["request_id"])
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    assert q["code_challenge"] == [digest] and 43 <= len(verifier) <= 128
