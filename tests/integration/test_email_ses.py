"""The SES v2 sender against moto's server over real boto3 (seed-spec §H 100 adapted; issue 16):
unready and refusing until the sender identity is verified, then the link arrives and works."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import httpx

from api.config import BrokerConfig
from api.moto_server import DEV_ACCESS_KEY_ID, DEV_REGION, DEV_SECRET_ACCESS_KEY, aws_client
from api.runtime import Services
from tests.support import LiveServer, broker_env
from tests.support_moto import moto_endpoint, moto_server  # noqa: F401
from tests.support_signin import key_file

SENDER = "noreply@broker.test.invalid"


def find_link(endpoint: str) -> str:
    text = urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=10).read().decode()  # noqa: S310  local moto http endpoint
    m = re.search(r"/auth/email/landing#t=([A-Za-z0-9_-]{43})", text)
    assert m, "no magic link in moto's data.json"
    return m.group(1)


def test_ses_sender_needs_a_verified_identity_then_delivers(tmp_path: Path, moto_endpoint: str) -> None:  # noqa: F811
    env = broker_env(tmp_path, **{
        "BROKER_AUTH_METHODS": "wallet_sig,email_link",
        "BROKER_EMAIL_HMAC_KEY_PATH": key_file(tmp_path / "email.key"),
        "BROKER_EMAIL_FROM_ADDRESS": SENDER,
        "BROKER_EMAIL_SENDER": "ses",
        "BROKER_SES_ENDPOINT_URL": moto_endpoint,
        "BROKER_AWS_REGION": DEV_REGION,
        "DAEMON_ACCESS_KEY_ID": DEV_ACCESS_KEY_ID,
        "DAEMON_SECRET_ACCESS_KEY": DEV_SECRET_ACCESS_KEY,
    })
    services = Services.build(BrokerConfig.from_env(env))
    with LiveServer(services) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        r = c.get("/readyz")
        assert r.status_code == 503
        check = next(ch for ch in r.json()["checks"] if ch["name"] == "auth/email_link")
        assert "not verified" in check["reason"] and check["docs"].endswith("#readyz-auth-email-link")
        r = c.post("/v1/auth/email/request", json={"email": "alice@example.com"})
        assert r.status_code == 502 and r.json()["reason"] == "delivery_failed"

        aws_client("sesv2", moto_endpoint).create_email_identity(EmailIdentity=SENDER)
        services._signin_probes.clear()  # the probe caches its answer for 15 s
        deadline = time.monotonic() + 20  # /readyz answers from the background probes (api/probes.py)
        while "auth/email_link" not in c.get("/readyz").json()["ready"]:
            assert time.monotonic() < deadline, c.get("/readyz").json()
            time.sleep(0.2)

        r = c.post("/v1/auth/email/request", json={"email": "alice@example.com"})
        assert r.status_code == 200, r.text
        body = r.json()
        token = find_link(moto_endpoint)
        assert c.post("/v1/auth/email/verify", json={"token": token}).status_code == 200
        got = c.get(body["poll_url"], headers={"Authorization": f"Bearer {body['poll_token']}"})
        assert got.status_code == 200 and got.json()["status"] == "verified"
