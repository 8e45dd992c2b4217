"""Boot validation as a real process (seed-spec §H 89–93): one BOOT_FAIL line, exit 1, no bind."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, cli_path
from tests.support import broker_env, free_port


def serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([cli_path(), "serve", "--port", str(free_port()), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def one_line(out: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    return lines[0]


def test_http_issuer_without_dev_mode_refuses_to_boot(tmp_path: Path, subprocess_env) -> None:
    out = serve({**subprocess_env, **broker_env(tmp_path, BROKER_OIDC_ISSUER="http://oidc.local")})
    assert out.returncode == 1
    line = one_line(out)
    assert 'BOOT_FAIL: BROKER_OIDC_ISSUER="http://oidc.local": must be https' in line
    assert line.endswith("see runbook §oidc-issuer")


def test_missing_oidc_keypair_refuses_to_boot(tmp_path: Path, subprocess_env) -> None:
    env = {**subprocess_env, **broker_env(tmp_path, BROKER_OIDC_KEYPAIR_PATH=str(tmp_path / "nope.json"))}
    out = serve(env)
    assert out.returncode == 1
    line = one_line(out)
    assert "does not exist" in line and line.endswith("§oidc-keypair")


def test_keypairs_in_the_wrong_slots_refuse_to_boot(tmp_path: Path, subprocess_env) -> None:
    env = broker_env(tmp_path)
    swapped = {**subprocess_env, **env, "BROKER_OIDC_KEYPAIR_PATH": env["BROKER_SESSION_KEYPAIR_PATH"],
               "BROKER_SESSION_KEYPAIR_PATH": env["BROKER_OIDC_KEYPAIR_PATH"]}
    out = serve(swapped)
    assert out.returncode == 1 and one_line(out).endswith("§oidc-keypair")
    session_gets_oidc = {**subprocess_env, **env}
    other = tmp_path / "other-oidc.json"
    subprocess.run([cli_path(), "keygen", "--purpose", "oidc", "--out", str(other)], check=True, capture_output=True)
    session_gets_oidc["BROKER_SESSION_KEYPAIR_PATH"] = str(other)
    out = serve(session_gets_oidc)
    assert out.returncode == 1 and one_line(out).endswith("§session-keypair")


def test_untagged_session_keypair_refuses_to_boot(tmp_path: Path, subprocess_env) -> None:
    env = broker_env(tmp_path)
    path = Path(env["BROKER_SESSION_KEYPAIR_PATH"])
    data = json.loads(path.read_text())
    data.pop("purpose")
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    out = serve({**subprocess_env, **env})
    assert out.returncode == 1 and one_line(out).endswith("§session-keypair")


def test_group_readable_keypair_refuses_to_boot(tmp_path: Path, subprocess_env) -> None:
    env = broker_env(tmp_path)
    Path(env["BROKER_SESSION_KEYPAIR_PATH"]).chmod(0o644)
    out = serve({**subprocess_env, **env})
    assert out.returncode == 1 and one_line(out).endswith("§session-keypair")


@pytest.mark.parametrize(
    "var,value,anchor",
    [
        ("BROKER_AUTH_METHODS", "foo", "auth-method-not-compiled"),
        ("BROKER_AUTH_METHODS", ",", "auth-method-empty"),
        ("BROKER_AUTH_METHODS", "", "auth-method-empty"),
        ("BROKER_AUDIT_ANCHORS", "foo", "audit-anchor-not-compiled"),
        ("BROKER_AUDIT_POLICY", "nonsense", "audit-policy"),
    ],
)
def test_bad_plugin_selection_refuses_to_boot(tmp_path: Path, subprocess_env, var: str, value: str, anchor: str) -> None:
    out = serve({**subprocess_env, **broker_env(tmp_path, **{var: value})})
    assert out.returncode == 1
    assert one_line(out).endswith(f"§{anchor}")


def test_serve_boots_warns_on_non_loopback_and_stops_on_sigterm(tmp_path: Path, subprocess_env) -> None:
    port = free_port()
    proc = subprocess.Popen([cli_path(), "serve", "--host", "0.0.0.0",  # noqa: S104  the test checks a non-loopback bind
                             "--port", str(port), "--skip-startup-check"], cwd=ROOT,
                            env={**subprocess_env, **broker_env(tmp_path)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        err = proc.stderr.read() if proc.stderr else ""
        assert "non-loopback" in err and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_failing_startup_sts_check_refuses_to_bind(tmp_path: Path, subprocess_env) -> None:
    """§H 99: without --skip-startup-check a failing GetCallerIdentity means no bind."""
    port = free_port()
    out = subprocess.run([cli_path(), "serve", "--port", str(port)], cwd=ROOT,
                         env={**subprocess_env, **broker_env(tmp_path)}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "startup STS check failed" in out.stderr and "--skip-startup-check" in out.stderr
    assert "Traceback" not in out.stderr


def test_startup_sts_check_passes_against_a_reachable_sts(tmp_path: Path, subprocess_env, dev_aws) -> None:
    from tests.support_moto import sts_env

    port = free_port()
    env = {**subprocess_env, **broker_env(tmp_path, **sts_env(dev_aws))}
    proc = subprocess.Popen([cli_path(), "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.1)
        assert r.status_code == 200, r.text
        assert "sts" in r.json()["ready"]
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
