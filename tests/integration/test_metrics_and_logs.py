"""`/metrics` (design §8 names, parsed by prometheus_client's own parser, counters moving after a
mint), the request id on every log line and in `X-Request-Id`, one access line per request, JSON
lines with no secret in a full `serve` run, and `BROKER_LOG_LEVEL` validated at boot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.config import BrokerConfig
from api.runtime import Services
from tests.conftest import ROOT, cli_path
from tests.integration.test_mint import Broker, auth
from tests.support import LiveServer, Wallet, broker_env, free_port, sign_in, signed_mint_body
from tests.support_moto import sts_env

TOKEN = "metrics-" + "t" * 40
NAMES = ("agentkeys_mints_total", "agentkeys_auth_attempts_total", "agentkeys_release_seconds",
         "agentkeys_anchor_lag_records", "agentkeys_quarantine_open", "agentkeys_projection_lag_records",
         "agentkeys_sts_errors_total")


def _token_file(tmp_path: Path) -> Path:
    path = tmp_path / "operator.token"
    path.write_text(TOKEN)
    path.chmod(0o600)
    return path


def scrape(url: str, **headers: str) -> dict[tuple[str, tuple], float]:
    r = httpx.get(url + "/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples = {}
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    for family in families.values():
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    for name in NAMES:  # counters are exposed without the _total suffix as the family name
        assert name in families or name.removesuffix("_total") in families, name
    return samples


def test_metrics_count_a_mint_and_need_an_operator(tmp_path: Path, dev_aws) -> None:
    env = broker_env(tmp_path, **sts_env(dev_aws), BROKER_GRANTS_REQUIRED="false",
                     BROKER_OPERATOR_TOKEN_FILE=str(_token_file(tmp_path)))
    with LiveServer(Services.build(BrokerConfig.from_env(env))) as server:
        assert httpx.get(server.url + "/metrics").status_code == 401  # default BROKER_METRICS_AUTH=operator
        daemon_jwt = sign_in(httpx.Client(base_url=server.url), Wallet())["session_jwt"]
        assert httpx.get(server.url + "/metrics", headers=auth(daemon_jwt)).status_code == 403
        before = scrape(server.url, **auth(TOKEN))
        b = Broker(server)
        w = Wallet()
        r = b.mint(b.session(w), signed_mint_body(w))
        assert r.status_code == 200, r.text
        after = scrape(server.url, **auth(TOKEN))

        def delta(name: str, **labels: str) -> float:
            key = (name, tuple(sorted(labels.items())))
            return after.get(key, 0.0) - before.get(key, 0.0)

        assert delta("agentkeys_mints_total", outcome="requested") == 1
        assert delta("agentkeys_mints_total", outcome="released") == 1
        assert delta("agentkeys_mints_total", outcome="denied") == 0
        assert delta("agentkeys_auth_attempts_total", method="wallet_sig", outcome="succeeded") == 1
        assert delta("agentkeys_release_seconds_count") >= 2  # the session and the mint
        assert ("agentkeys_anchor_lag_records", (("anchor", "sqlite"),)) in after
        for projection in ("wallets", "grants", "mints", "quarantine"):
            assert ("agentkeys_projection_lag_records", (("projection", projection),)) in after
        assert after[("agentkeys_quarantine_open", ())] == 0
        b.client.close()


def test_metrics_auth_none_is_open(tmp_path: Path) -> None:
    env = broker_env(tmp_path, BROKER_METRICS_AUTH="none")
    with LiveServer(Services.build(BrokerConfig.from_env(env))) as server:
        scrape(server.url)


def test_request_id_is_kept_when_well_formed_and_replaced_otherwise(tmp_path: Path) -> None:
    with LiveServer(Services.build(BrokerConfig.from_env(broker_env(tmp_path)))) as server:
        r = httpx.get(server.url + "/healthz", headers={"X-Request-Id": "abc.DEF:1-2_3"})
        assert r.headers["x-request-id"] == "abc.DEF:1-2_3"
        for bad in ("has space", "x" * 129, "semi;colon", "new\\nline"):
            r = httpx.get(server.url + "/healthz", headers={"X-Request-Id": bad})
            assert r.headers["x-request-id"] != bad and r.headers["x-request-id"].startswith("req-")
        assert httpx.get(server.url + "/nope").headers["x-request-id"].startswith("req-")  # errors too


def _serve(tmp_path: Path, env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([cli_path(), "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1, headers={"X-Request-Id": "probe-start"}).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "broker did not start"
        time.sleep(0.1)


def test_a_full_run_logs_json_lines_each_with_a_request_id_and_no_secret(tmp_path: Path, dev_aws) -> None:
    env = {**os.environ, **broker_env(tmp_path, **sts_env(dev_aws), BROKER_GRANTS_REQUIRED="false",
                                      BROKER_OPERATOR_TOKEN_FILE=str(_token_file(tmp_path)),
                                      BROKER_LOG_FORMAT="json", BROKER_LOG_LEVEL="debug")}
    log = tmp_path / "serve.log"
    proc, url = _serve(tmp_path, env, log)
    secrets: list[str] = [TOKEN]
    requests = 0
    try:
        with httpx.Client(base_url=url, timeout=30, headers={"X-Request-Id": "run-1"}) as client:
            w = Wallet()
            session = sign_in(client, w)
            secrets.append(session["session_jwt"])
            requests += 2
            r = client.post("/v1/mint-aws-creds", json=signed_mint_body(w), headers=auth(session["session_jwt"]))
            assert r.status_code == 200, r.text
            secrets += [r.json()["secret_access_key"], r.json()["session_token"]]
            requests += 1
            assert client.post("/v1/mint-aws-creds", json={"bad": 1}, headers=auth("eyJbad.x.y")).status_code in (400, 401)
            assert client.get("/metrics", headers=auth(TOKEN)).status_code == 200
            assert client.get("/readyz").status_code in (200, 503)
            requests += 3
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    lines = log.read_text().splitlines()
    assert lines
    access = []
    for line in lines:
        entry = json.loads(line)  # every line is one JSON object
        assert set(entry) >= {"ts", "level", "logger", "request_id", "msg"}, line
        assert entry["request_id"], line
        for secret in secrets:
            assert secret not in line, f"a secret leaked into the log: {line[:200]}"
        if entry["logger"] == "agentkeys.access":
            access.append(entry)
    run = [a for a in access if a["request_id"] == "run-1"]
    assert len(run) == requests, [a["msg"] for a in access]
    assert any(a["msg"].startswith("POST /v1/mint-aws-creds 200 ") for a in run)


@pytest.mark.parametrize("value", ["loud", "10"])
def test_bad_log_level_is_one_boot_fail_line(tmp_path: Path, value: str) -> None:
    env = {**os.environ, **broker_env(tmp_path, BROKER_LOG_LEVEL=value)}
    out = subprocess.run([cli_path(), "serve", "--port", str(free_port()), "--skip-startup-check"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f'agentkeys-broker: error: BOOT_FAIL: BROKER_LOG_LEVEL="{value}": must be one of DEBUG, INFO, WARNING, '
        'ERROR, CRITICAL; see runbook §log-level']
