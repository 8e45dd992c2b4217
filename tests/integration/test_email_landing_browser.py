"""The magic-link landing page driven in headless Chromium (Debian `chromium` + `chromium-driver`,
Selenium with /usr/bin/chromedriver): open the link, the page posts the token from the fragment,
the terminal's poll receives the session; the token never reaches the server logs (issue 16)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import httpx
import pytest

from api.config import BrokerConfig
from api.runtime import Services
from tests.integration.test_email_link import email_env
from tests.support import LiveServer, free_port
from tests.support_signin import SmtpSink

CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.mark.skipif(not CHROMEDRIVER.exists(), reason="needs Debian chromium + chromium-driver (make install)")
def test_magic_link_opened_in_headless_chromium_signs_the_terminal_in(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("selenium", reason="needs selenium (the dev extra)")
    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from api.app import create_app

    port = free_port()
    with SmtpSink() as sink:
        env = email_env(tmp_path, sink, BROKER_OIDC_ISSUER=f"http://127.0.0.1:{port}", BROKER_DEV_MODE="true")
        services = Services.build(BrokerConfig.from_env(env))
        live = LiveServer(services)
        live.port = port
        live.server = uvicorn.Server(uvicorn.Config(create_app(services), host="127.0.0.1", port=port,
                                                    log_level="info", access_log=True, lifespan="on",
                                                    log_config=None))
        live.thread = threading.Thread(target=live.server.run, daemon=True)
        caplog.set_level(logging.DEBUG)
        access = logging.getLogger("uvicorn.access")
        access.addHandler(caplog.handler)
        options = webdriver.ChromeOptions()
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync"):
            options.add_argument(flag)
        try:
            with live, httpx.Client(base_url=live.url, timeout=30) as cli:
                r = cli.post("/v1/auth/email/request", json={"email": "browser@example.com"})
                assert r.status_code == 200, r.text
                req = r.json()
                link, token = sink.link_for("browser@example.com")
                assert link.startswith(live.url + "/auth/email/landing#t=")
                assert cli.get(req["poll_url"], headers={"Authorization": f"Bearer {req['poll_token']}"}).json() \
                    == {"status": "pending"}

                driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
                try:
                    driver.set_page_load_timeout(30)
                    driver.get(link)
                    deadline = time.monotonic() + 20
                    text = ""
                    while time.monotonic() < deadline:
                        text = driver.find_element(By.ID, "msg").text
                        if "Verified" in text or "failed" in text:
                            break
                        time.sleep(0.1)
                    assert "Verified" in text, text
                    assert "#t=" not in driver.current_url  # the page stripped the fragment from history
                    assert "eyJ" not in driver.page_source  # the browser never sees the session
                finally:
                    driver.quit()

                got = cli.get(req["poll_url"], headers={"Authorization": f"Bearer {req['poll_token']}"})
                assert got.status_code == 200 and got.json()["status"] == "verified"
                assert got.json()["session_jwt"].startswith("eyJ")
        finally:
            access.removeHandler(caplog.handler)
    # the test's own tools log the link they handle: the SMTP sink (aiosmtpd, `mail.log`) what it received,
    # the WebDriver client (`selenium`) the URL it told the browser to open; neither is the broker
    logs = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(("mail.log", "selenium")))
    assert "/auth/email/landing" in logs and "/v1/auth/email/verify" in logs  # the access log saw the page
    assert token not in logs and req["poll_token"] not in logs
