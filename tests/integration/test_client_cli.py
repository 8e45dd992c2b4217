"""`agentkeys-broker grant|creds|exec` as real subprocesses against a live broker with moto: the
AWS CLI (Debian `awscli`) and boto3 through an AWS config file whose profile uses
`credential_process`; many calls cost one mint (counted as MintAuthorized records in the ledger),
also when several start at once; `exec` hands the child the credentials."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest

from api.config import BrokerConfig
from api.runtime import Services
from tests.conftest import ROOT, cli_path
from tests.support import LiveServer, Wallet, broker_env
from tests.support_moto import sts_env

ISSUER = "https://broker.test.invalid"
AWS_CLI = shutil.which("aws", path="/usr/bin:/usr/local/bin")


def _key_file(path: Path, wallet: Wallet) -> Path:
    path.write_text("0x" + bytes(wallet.account.key).hex() + "\n")
    path.chmod(0o600)
    return path


def _mints(live: LiveServer) -> list[dict[str, Any]]:
    from ledger.audit import DatabaseReader

    with DatabaseReader(live.services.config.ledger_db) as reader:
        return [json.loads(bytes(r.data)) for r in reader if r.type == "MintAuthorized"]


class Setup:
    def __init__(self, tmp_path: Path, live: LiveServer, dev_aws: dict[str, Any]) -> None:
        self.tmp, self.live, self.aws = tmp_path, live, dev_aws
        self.state = tmp_path / "state"
        self.state.mkdir()
        # what `agentkeys-broker dev` writes: the commands find the broker (and its issuer) there
        (self.state / "dev.json").write_text(json.dumps({"url": live.url, "issuer": ISSUER}))
        self.master, self.daemon = Wallet(), Wallet()
        self.master_key = _key_file(tmp_path / "master.key", self.master)
        self.daemon_key = _key_file(tmp_path / "daemon.key", self.daemon)
        self.env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"),
                    "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
                    "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
                    "AWS_EC2_METADATA_DISABLED": "true", "PYTHONUNBUFFERED": "1"}
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            self.env.pop(k, None)

    def run(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        out = subprocess.run([cli_path(), *args], cwd=ROOT, env=env or self.env, capture_output=True, text=True,
                             timeout=120)
        if check:
            assert out.returncode == 0, out.stderr
        assert "Traceback" not in out.stderr, out.stderr
        return out

    def grant(self, scope: str, max_uses: int = 100) -> dict[str, Any]:
        out = self.run("grant", "create", "--state-dir", str(self.state), "--key-file", str(self.master_key),
                       "--daemon", self.daemon.address, "--service", "s3", "--scope", scope,
                       "--expires-in", "3600", "--max-uses", str(max_uses), "--json")
        return json.loads(out.stdout)

    def omni(self) -> str:
        out = self.run("grant", "list", "--state-dir", str(self.state), "--key-file", str(self.master_key), "--json")
        return json.loads(out.stdout)["omni_account"]

    def creds_args(self, scope: str, agent: str = "agent-1") -> list[str]:
        return ["--state-dir", str(self.state), "--key-file", str(self.daemon_key), "--agent-id", agent,
                "--service", "s3", "--scope", scope]

    def profile(self, name: str, scope: str, agent: str = "agent-1") -> None:
        command = " ".join([cli_path(), "creds", *self.creds_args(scope, agent)])
        with open(self.env["AWS_CONFIG_FILE"], "a") as f:
            f.write(f"[profile {name}]\ncredential_process = {command}\nregion = us-east-1\n\n")


@pytest.fixture
def setup(tmp_path: Path, dev_aws):  # noqa: ANN201
    with LiveServer(Services.build(BrokerConfig.from_env(broker_env(tmp_path, **sts_env(dev_aws))))) as live:
        yield Setup(tmp_path, live, dev_aws)


def test_grant_commands_create_list_and_revoke(setup: Setup) -> None:
    omni = setup.omni()
    scope = f"{setup.aws['bucket']}/{omni}/agents/"
    grant = setup.grant(scope, max_uses=3)
    assert grant["grant_id"].startswith("grn-") and grant["scope_path"] == scope and grant["max_uses"] == 3
    listed = setup.run("grant", "list", "--state-dir", str(setup.state), "--key-file", str(setup.master_key)).stdout
    assert grant["grant_id"] in listed and "active" in listed and omni in listed
    out = setup.run("creds", *setup.creds_args(scope + "a1/"))
    assert json.loads(out.stdout)["AccessKeyId"].startswith("ASIA")
    setup.run("grant", "revoke", "--state-dir", str(setup.state), "--key-file", str(setup.master_key),
              grant["grant_id"])
    assert "revoked" in setup.run("grant", "list", "--state-dir", str(setup.state), "--key-file",
                                  str(setup.master_key)).stdout
    # a new scope (no cache entry): refused, exit 1, one line naming the command that creates a grant
    refused = setup.run("creds", *setup.creds_args(scope + "a2/"), check=False)
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "grant_revoked" in lines[0] and "agentkeys-broker grant create" in lines[0]


def test_creds_without_a_grant_says_which_command_creates_it(setup: Setup) -> None:
    out = setup.run("creds", *setup.creds_args(f"{setup.aws['bucket']}/x/"), check=False)
    assert out.returncode == 1 and "no_grant" in out.stderr
    assert f"--daemon {setup.daemon.address}" in out.stderr and out.stdout == ""


def test_a_stranger_cannot_revoke_anothers_grant(setup: Setup) -> None:
    grant = setup.grant(f"{setup.aws['bucket']}/{setup.omni()}/")
    stranger = _key_file(setup.tmp / "stranger.key", Wallet())
    out = setup.run("grant", "revoke", "--state-dir", str(setup.state), "--key-file", str(stranger),
                    grant["grant_id"], check=False)
    assert out.returncode != 0 and out.stderr.count("\n") == 1
    listed = json.loads(setup.run("grant", "list", "--state-dir", str(setup.state), "--key-file",
                                  str(setup.master_key), "--json").stdout)
    assert [g.get("revoked_at") for g in listed["grants"]] == [None]


def test_creds_cache_files_are_private_and_keyed_by_scope(setup: Setup) -> None:
    omni = setup.omni()
    setup.grant(f"{setup.aws['bucket']}/{omni}/")
    a = json.loads(setup.run("creds", *setup.creds_args(f"{setup.aws['bucket']}/{omni}/a/")).stdout)
    b = json.loads(setup.run("creds", *setup.creds_args(f"{setup.aws['bucket']}/{omni}/b/")).stdout)
    again = json.loads(setup.run("creds", *setup.creds_args(f"{setup.aws['bucket']}/{omni}/a/")).stdout)
    assert a["AccessKeyId"] != b["AccessKeyId"] and again == a
    assert set(a) == {"Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}
    cache = setup.tmp / "cache" / "agentkeys"
    assert (cache.stat().st_mode & 0o777) == 0o700
    files = [p for p in cache.iterdir() if p.suffix == ".json"]
    assert sorted(p.name.split("-")[0] for p in files) == ["creds", "creds", "session", "session"]  # master, daemon
    assert all((p.stat().st_mode & 0o777) == 0o600 for p in files)
    assert len(_mints(setup.live)) == 2


def test_boto3_through_credential_process_20_calls_one_mint(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    omni = setup.omni()
    scope = f"{setup.aws['bucket']}/{omni}/agents/a1/"
    setup.grant(scope)
    setup.profile("agent", scope)
    for k, v in setup.env.items():
        monkeypatch.setenv(k, v)
    arns = set()
    for _ in range(20):  # a new session each time: botocore runs the credential_process every time
        sts = boto3.Session(profile_name="agent").client("sts", endpoint_url=setup.aws["sts_endpoint"])
        arns.add(sts.get_caller_identity()["Arn"])
    assert len(arns) == 1 and "assumed-role" in arns.pop()
    assert len(_mints(setup.live)) == 1


@pytest.mark.skipif(AWS_CLI is None, reason="the AWS CLI is not installed (make install installs Debian awscli)")
def test_aws_cli_through_credential_process_costs_one_mint_also_5_at_once(setup: Setup) -> None:
    omni = setup.omni()
    scope = f"{setup.aws['bucket']}/{omni}/agents/a1/"
    setup.grant(scope)
    setup.profile("agent", scope)
    env = {**setup.env, "AWS_PROFILE": "agent"}
    key = f"{omni}/agents/a1/hello.txt"
    (setup.tmp / "hello.txt").write_text("hello")

    def aws(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([AWS_CLI, "--endpoint-url", setup.aws["sts_endpoint"], *args], env=env,
                              capture_output=True, text=True, timeout=120)

    with ThreadPoolExecutor(5) as pool:  # a cold cache and five AWS CLI calls at once
        results = list(pool.map(lambda _: aws("sts", "get-caller-identity", "--output", "json"), range(5)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert len({json.loads(r.stdout)["Arn"] for r in results}) == 1
    assert len(_mints(setup.live)) == 1
    put = aws("s3", "cp", str(setup.tmp / "hello.txt"), f"s3://{setup.aws['bucket']}/{key}")
    assert put.returncode == 0, put.stderr
    for _ in range(14):
        r = aws("sts", "get-caller-identity")
        assert r.returncode == 0, r.stderr
    listed = aws("s3", "ls", f"s3://{setup.aws['bucket']}/{omni}/agents/a1/")
    assert listed.returncode == 0 and "hello.txt" in listed.stdout
    assert len(_mints(setup.live)) == 1  # 21 AWS CLI calls, one mint


def test_exec_runs_the_command_with_the_credentials(setup: Setup) -> None:
    omni = setup.omni()
    scope = f"{setup.aws['bucket']}/{omni}/"
    setup.grant(scope)
    probe = ("import os, json; print(json.dumps({k: os.environ.get(k) for k in "
             "('AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_CREDENTIAL_EXPIRATION', "
             "'AWS_PROFILE')})); raise SystemExit(3)")
    env = {**setup.env, "AWS_PROFILE": "something-else"}
    out = setup.run("exec", *setup.creds_args(scope), "--", sys.executable, "-c", probe, check=False, env=env)
    assert out.returncode == 3, out.stderr  # the child's exit status
    seen = json.loads(out.stdout)
    creds = json.loads(setup.run("creds", *setup.creds_args(scope)).stdout)  # the same cached credentials
    assert seen["AWS_ACCESS_KEY_ID"] == creds["AccessKeyId"] and seen["AWS_SESSION_TOKEN"] == creds["SessionToken"]
    assert seen["AWS_SECRET_ACCESS_KEY"] == creds["SecretAccessKey"] and seen["AWS_PROFILE"] is None
    assert seen["AWS_CREDENTIAL_EXPIRATION"] == creds["Expiration"]
    missing = setup.run("exec", *setup.creds_args(scope), "--", "no-such-command-xyz", check=False)
    assert missing.returncode == 127 and "command not found" in missing.stderr
    assert len(_mints(setup.live)) == 1


def test_usage_errors_are_one_line(setup: Setup, tmp_path: Path) -> None:
    nowhere = setup.run("creds", "--state-dir", str(tmp_path / "none"), "--key-file", str(setup.daemon_key),
                        "--agent-id", "a", "--service", "s3", check=False)
    assert nowhere.returncode == 2 and "agentkeys-broker dev" in nowhere.stderr
    open_key = tmp_path / "open.key"
    _key_file(open_key, Wallet())
    open_key.chmod(0o644)
    loose = setup.run("creds", *["--state-dir", str(setup.state), "--key-file", str(open_key), "--agent-id", "a",
                                 "--service", "s3"], check=False)
    assert loose.returncode == 2 and "chmod 600" in loose.stderr and loose.stderr.count("\n") == 1
    version = setup.run("creds", "--version")
    assert version.stdout.startswith("agentkeys-broker ")
    started = time.monotonic()
    assert setup.run("--version").stdout == version.stdout
    assert time.monotonic() - started < 60
