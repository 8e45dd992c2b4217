"""The legacy opaque-bearer path (seed-spec §B.3, §B.6, §H 2–7) against a small local backend."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from api.config import BrokerConfig
from api.runtime import Services
from ledger.identity import evm_omni_account
from ledger.services.masters import MastersService
from tests.integration.test_access_model import issued_by_moto
from tests.support import LiveServer, broker_env, free_port
from tests.support_moto import sts_env

WALLET = "0x" + "ab" * 20


class _Backend(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        if self.path != "/session/validate":
            self._send(404, {"message": "no"})
        elif token == "good-token":
            self._send(200, {"session": "s", "wallet": WALLET.upper().replace("0X", "0x")})
        elif token == "boom":
            self._send(500, {"message": "down"})
        else:
            self._send(401, {"message": "session not valid"})

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


@pytest.fixture
def backend():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


LEGACY_ROLE = "agentkeys-legacy"


def legacy_catalogue(tmp_path: Path, account: str) -> Path:
    """s3 for v2 mints, and `legacy`: scope none, on a narrow role of its own, no session policy."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "services.toml"
    path.write_text(f"""
[services.s3]
role_arn = "arn:aws:iam::{account}:role/agentkeys-data-role"
scope = "s3_prefix"
buckets = ["agentkeys-dev"]

[services.legacy]
role_arn = "arn:aws:iam::{account}:role/{LEGACY_ROLE}"
scope = "none"
unscoped = true
""")
    return path


def legacy_broker(tmp_path: Path, dev_aws, backend_url: str, *, assign: bool = True, **env: str) -> LiveServer:
    """A legacy-enabled broker minting service `legacy` (BROKER_LEGACY_SERVICE), whose wallet is
    assigned to that service (design §8: scope-none services belong only to assigned masters)."""
    env = {"BROKER_SERVICES_FILE": str(legacy_catalogue(tmp_path, dev_aws["account_id"])),
           "BROKER_LEGACY_SERVICE": "legacy", **env}
    e = broker_env(tmp_path, **sts_env(dev_aws), BROKER_LEGACY_BEARER="true", BROKER_BACKEND_URL=backend_url,
                   BROKER_GRANTS_REQUIRED="false", **{k: v for k, v in env.items() if v is not None})
    for key in [k for k, v in env.items() if v is None]:
        e.pop(key, None)
    services = Services.build(BrokerConfig.from_env(e))
    if assign and services.config.access.legacy_service:
        MastersService(ledger=services.ledger, catalogue=services.config.access.catalogue).assign(
            evm_omni_account(WALLET), "legacy", "", operator="test")
    return LiveServer(services)


def events(live: LiveServer, type_name: str) -> list[dict]:
    return [r.data for r in live.services.ledger.read(0, 10000) if r.type == type_name]


def test_legacy_mint_with_a_backend_valid_bearer(tmp_path: Path, dev_aws, backend) -> None:
    with legacy_broker(tmp_path, dev_aws, backend) as live:
        r = httpx.post(live.url + "/v1/mint-aws-creds", headers={"Authorization": "Bearer good-token"}, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["access_key_id"].startswith("ASIA") and body["wallet"] == WALLET
        assert body["anchored"] == ["sqlite"]
        [requested] = events(live, "MintRequested")
        assert requested["identity_type"] == "legacy_bearer" and requested["service"] == "legacy"
        [authorized] = events(live, "MintAuthorized")  # the legacy service's own role, declared unscoped
        assert authorized["role_arn"].endswith(f":role/{LEGACY_ROLE}") and authorized.get("policy_sha256") is None
        assert "good-token" not in json.dumps([r.data for r in live.services.ledger.read(0, 10000)])


def test_legacy_bearer_the_backend_rejects_is_401_and_recorded(tmp_path: Path, dev_aws, backend) -> None:
    with legacy_broker(tmp_path, dev_aws, backend) as live:
        r = httpx.post(live.url + "/v1/mint-aws-creds", headers={"Authorization": "Bearer this-token-was-never-minted"})
        assert r.status_code == 401 and "session not valid" in r.json()["message"]
        assert events(live, "AuthFailed")[-1]["reason"] == "backend_rejected"
        assert "access_key_id" not in r.text


def test_backend_errors_are_502_backend_unreachable(tmp_path: Path, dev_aws, backend) -> None:
    with legacy_broker(tmp_path, dev_aws, backend) as live:
        r = httpx.post(live.url + "/v1/mint-aws-creds", headers={"Authorization": "Bearer boom"})
        assert r.status_code == 502 and r.json()["error"] == "backend_unreachable"
    dead = f"http://127.0.0.1:{free_port()}"
    with legacy_broker(tmp_path / "dead", dev_aws, dead) as live:
        r = httpx.post(live.url + "/v1/mint-aws-creds", headers={"Authorization": "Bearer good-token"})
        assert r.status_code == 502 and r.json()["error"] == "backend_unreachable"
        assert events(live, "AuthFailed")[-1]["reason"] == "backend_unreachable"


def test_exchange_trades_a_legacy_bearer_for_a_session(tmp_path: Path, dev_aws, backend) -> None:
    with legacy_broker(tmp_path, dev_aws, backend) as live:
        r = httpx.post(live.url + "/v1/auth/exchange", headers={"Authorization": "Bearer good-token"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["wallet_address"] == WALLET and body["session_jwt"].startswith("eyJ")
        assert body["anchored"] == ["sqlite"]
        assert httpx.post(live.url + "/v1/auth/exchange", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_legacy_path_is_off_by_default(tmp_path: Path, dev_aws, backend) -> None:
    e = broker_env(tmp_path, **sts_env(dev_aws), BROKER_BACKEND_URL=backend)
    with LiveServer(Services.build(BrokerConfig.from_env(e))) as live:
        r = httpx.post(live.url + "/v1/mint-aws-creds", headers={"Authorization": "Bearer good-token"})
        assert r.status_code == 401  # treated as a (malformed) session JWT, never sent to the backend
        assert httpx.post(live.url + "/v1/auth/exchange", headers={"Authorization": "Bearer good-token"}).status_code == 400


def test_jwt_shaped_bearers_take_the_v2_path_even_with_legacy_on(tmp_path: Path, dev_aws, backend) -> None:
    with legacy_broker(tmp_path, dev_aws, backend) as live:
        r = httpx.post(live.url + "/v1/mint-aws-creds",
                       headers={"Authorization": "Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.deadbeef"})
        assert r.status_code == 401 and "session jwt" in r.json()["message"]
        assert events(live, "AuthFailed") == []  # the backend was not asked


def test_legacy_on_without_backend_url_refuses_to_boot(tmp_path: Path) -> None:
    from api.config import BootFailure

    with pytest.raises(BootFailure, match="backend-url"):
        BrokerConfig.from_env(broker_env(tmp_path, BROKER_LEGACY_BEARER="true"))


def test_legacy_mint_without_a_legacy_service_is_not_enrolled_and_never_reaches_sts(tmp_path: Path, dev_aws,
                                                                                    backend) -> None:
    with legacy_broker(tmp_path, dev_aws, backend, BROKER_LEGACY_SERVICE=None, BROKER_SERVICES_FILE=None) as live:
        before = issued_by_moto(dev_aws)
        r = httpx.post(live.url + "/v1/mint-aws-creds", headers={"Authorization": "Bearer good-token"}, timeout=30)
        assert r.status_code == 403 and r.json()["reason"] == "not_enrolled", r.text
        assert "access_key_id" not in r.text and issued_by_moto(dev_aws) == before


def test_legacy_wallet_not_assigned_to_the_legacy_service_is_refused_before_sts(tmp_path: Path, dev_aws,
                                                                                backend) -> None:
    with legacy_broker(tmp_path, dev_aws, backend, assign=False) as live:
        before = issued_by_moto(dev_aws)
        r = httpx.post(live.url + "/v1/mint-aws-creds", headers={"Authorization": "Bearer good-token"}, timeout=30)
        assert r.status_code == 403 and r.json()["reason"] == "not_enrolled", r.text
        assert issued_by_moto(dev_aws) == before
        assert [d["reason"] for d in events(live, "MintDenied")] == ["not_enrolled"]


def test_legacy_service_must_be_of_scope_none(tmp_path: Path, dev_aws, backend) -> None:
    from api.config import BootFailure

    with pytest.raises(BootFailure, match="legacy-service"):
        legacy_broker(tmp_path, dev_aws, backend, BROKER_LEGACY_SERVICE="s3")
