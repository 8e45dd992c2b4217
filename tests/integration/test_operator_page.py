"""The operator page (`/operator`): login with the token or an operator wallet's SIWE session,
cookie attributes, CSRF on every form POST, and, in headless Chromium (Debian `chromium` +
`chromium-driver`, Selenium with /usr/bin/chromedriver), log in, see a quarantined case and resolve
it from the page. Screenshots are kept in `test-artifacts/` (before and after the resolve)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from api.config import BrokerConfig
from api.runtime import Services
from tests.conftest import ROOT
from tests.integration.test_mint import Broker
from tests.support import LiveServer, Wallet, broker_env, sign_in, signed_mint_body
from tests.support_moto import sts_env
from workers.jobs import quarantine

TOKEN = "page-" + "p" * 40
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = ROOT / "test-artifacts"


def _server(tmp_path: Path, dev_aws, **env: str) -> LiveServer:  # noqa: ANN001
    token = tmp_path / "operator.token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    full = broker_env(tmp_path, **sts_env(dev_aws), BROKER_GRANTS_REQUIRED="false",
                      BROKER_OPERATOR_TOKEN_FILE=str(token), BROKER_OIDC_ISSUER="http://127.0.0.1",
                      BROKER_DEV_MODE="true", **env)
    return LiveServer(Services.build(BrokerConfig.from_env(full)))


def quarantined_case(server: LiveServer) -> str:
    """A released mint quarantined by the real detection job; the EVM anchor is stood in for by a
    position that never moves (this test is about the page, test_operator_quarantine about anvil)."""
    b = Broker(server)
    w = Wallet()
    r = b.mint(b.session(w), signed_mint_body(w))
    assert r.status_code == 200, r.text
    b.client.close()
    result = quarantine.run(ledger=server.services.ledger, async_anchors=[("evm", lambda: 0)], deadline_s=10,
                            now=lambda: time.time() + 11)
    assert result.opened == [f"q-{r.json()['seq']}"]
    return result.opened[0]


def _login(client: httpx.Client, **fields: str) -> httpx.Response:
    page = client.get("/operator/login")
    csrf = re.search(r'name=csrf value="([^"]+)"', page.text).group(1)
    return client.post("/operator/login", data={"csrf": csrf, **fields})


def test_forged_page_posts_without_csrf_are_refused_and_the_cookie_is_strict(tmp_path: Path, dev_aws) -> None:
    operator = Wallet()
    with _server(tmp_path, dev_aws, BROKER_OPERATOR_WALLETS=operator.address) as server:
        case_id = quarantined_case(server)
        with httpx.Client(base_url=server.url) as client:
            r = client.get("/operator")
            assert r.status_code == 303 and r.headers["location"] == "/operator/login"
            # a forged login without the login form's token
            assert client.post("/operator/login", data={"token": TOKEN}).headers["location"].startswith(
                "/operator/login?error=")
            r = _login(client, token="wrong-" + "x" * 40)
            assert r.status_code == 303 and "error=" in r.headers["location"]
            r = _login(client, token=TOKEN)
            assert r.status_code == 303 and r.headers["location"] == "/operator"
            cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("ak_operator="))
            attrs = {a.strip().split("=")[0].lower(): a.strip() for a in cookie.split(";")}
            assert {"httponly", "path", "samesite", "max-age"} <= set(attrs)
            assert attrs["path"].lower() == "path=/operator" and attrs["samesite"].lower() == "samesite=strict"
            assert attrs["max-age"].lower() == "max-age=28800" and "secure" not in attrs  # plain http here
            page = client.get("/operator")
            assert page.status_code == 200 and case_id in page.text
            assert "default-src 'none'" in page.headers["content-security-policy"]
            # a resolve without (or with a wrong) CSRF token is refused and writes nothing
            head = server.services.ledger.head().seq
            for csrf in (None, "forged"):
                data = {"action": "accept", "reason": "x", **({"csrf": csrf} if csrf else {})}
                r = client.post(f"/operator/quarantine/{case_id}/resolve", data=data)
                assert r.status_code == 403 and r.json()["reason"] == "csrf"
            assert server.services.ledger.head().seq == head
        # a stranger's SIWE session cannot log in; an operator wallet's can, and acts under its address
        with httpx.Client(base_url=server.url) as client:
            stranger = sign_in(client, Wallet())["session_jwt"]
            assert "error=" in _login(client, session_jwt=stranger).headers["location"]
            jwt = sign_in(client, operator)["session_jwt"]
            assert _login(client, session_jwt=jwt).headers["location"] == "/operator"
            page = client.get("/operator")
            csrf = re.search(r"name=csrf value='([^']+)'", page.text).group(1)
            r = client.post(f"/operator/quarantine/{case_id}/resolve",
                            data={"csrf": csrf, "action": "accept", "reason": "reviewed on the page"})
            assert r.status_code == 303 and "msg=" in r.headers["location"]
            resolved = [x.data for x in server.services.ledger.read(0, 10000) if x.type == "QuarantineResolved"]
            assert resolved == [{"case_id": case_id, "action": "accept", "reason": "reviewed on the page",
                                 "operator": operator.address, "status": "resolved"}]
            again = client.post(f"/operator/quarantine/{case_id}/resolve",
                                data={"csrf": csrf, "action": "accept", "reason": "twice"})
            assert "case_closed" in httpx.URL(again.headers["location"]).params["error"]
            r = client.post("/operator/logout", data={"csrf": csrf})
            assert r.status_code == 303 and client.get("/operator").status_code == 303


@pytest.mark.skipif(not CHROMEDRIVER.exists(), reason="needs Debian chromium + chromium-driver (make install)")
def test_operator_resolves_a_case_in_headless_chromium(tmp_path: Path, dev_aws) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    with _server(tmp_path, dev_aws) as server:
        case_id = quarantined_case(server)
        options = webdriver.ChromeOptions()
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--window-size=1280,1200"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            driver.set_page_load_timeout(30)
            driver.get(server.url + "/operator")
            assert driver.current_url.endswith("/operator/login")  # 303 without a session
            driver.find_element(By.ID, "token").send_keys(TOKEN)
            driver.find_element(By.ID, "token-login").click()
            row = driver.find_element(By.ID, f"case-{case_id}")
            assert "open" in row.text and "anchor_deadline" in row.text
            assert driver.find_element(By.ID, "head-seq").text == str(server.services.ledger.head().seq)
            ARTIFACTS.mkdir(exist_ok=True)
            assert driver.save_screenshot(str(ARTIFACTS / "operator-page-open-case.png"))
            Select(row.find_element(By.NAME, "action")).select_by_value("accept")
            row.find_element(By.NAME, "reason").send_keys("reviewed in the browser")
            row.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            assert f"{case_id}: resolved" in driver.find_element(By.ID, "msg").text
            assert "No open cases." in driver.page_source
            assert driver.save_screenshot(str(ARTIFACTS / "operator-page.png"))
        finally:
            driver.quit()
        resolved = [r.data for r in server.services.ledger.read(0, 10000) if r.type == "QuarantineResolved"]
        assert len(resolved) == 1 and resolved[0]["case_id"] == case_id
        assert resolved[0]["operator"].startswith("token:") and resolved[0]["reason"] == "reviewed in the browser"
