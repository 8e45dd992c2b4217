"""The docs UI renders in headless Chromium (Debian `chromium`) with the network blocked: every host
but 127.0.0.1 unresolvable and every non-loopback request sent to a dead proxy. Swagger UI drawing
its operation rows proves its scripts and styles came from the broker itself."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from api.config import BrokerConfig
from api.runtime import Services
from tests.support import LiveServer, broker_env

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (make install)")


def _dump_dom(url: str, profile: Path) -> str:
    out = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
         f"--user-data-dir={profile}", "--proxy-server=http://127.0.0.1:9",  # nothing listens there
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--virtual-time-budget=15000",
         "--dump-dom", url],
        capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_the_docs_page_renders_with_the_network_blocked(tmp_path: Path) -> None:
    assert "Example Domain" not in _dump_dom("http://example.com/", tmp_path / "control")  # the block works
    with LiveServer(Services.build(BrokerConfig.from_env(broker_env(tmp_path)))) as live:
        dom = _dump_dom(live.url + "/schema", tmp_path / "profile")
    # rendered by Swagger UI's scripts (the raw page only holds the spec inside a <script>)
    assert dom.count("opblock-summary-path") >= 10, dom[:2000]
    assert "/v1/mint-aws-creds" in dom and "AgentKeys Broker" in dom
