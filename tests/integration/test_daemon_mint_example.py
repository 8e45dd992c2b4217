"""`examples/daemon_mint.py` (docs/daemon-guide.md, "Minting AWS credentials") run as a subprocess
against a live broker with moto STS: the guide's mint code cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import httpx

from api.config import BrokerConfig
from api.runtime import Services
from tests.conftest import ROOT
from tests.support import LiveServer, Wallet, broker_env, ns, sign_in
from tests.support_moto import sts_env

EXAMPLE = ROOT / "examples" / "daemon_mint.py"


def test_daemon_mints_with_a_grant_and_gets_credential_process_output(tmp_path: Path, dev_aws) -> None:
    daemon = Wallet()
    key_file = tmp_path / "daemon.key"
    key_file.write_text(daemon.account.key.hex())
    key_file.chmod(0o600)
    with LiveServer(Services.build(BrokerConfig.from_env(broker_env(tmp_path, **sts_env(dev_aws))))) as live:
        with httpx.Client(base_url=live.url, timeout=30) as c:
            master = Wallet()
            master_jwt = sign_in(c, master)["session_jwt"]
            r = c.post("/v1/grant/create", headers={"Authorization": f"Bearer {master_jwt}"},
                       json={"daemon_address": daemon.address, "service": "s3", "scope_path": ns(master, "agents/"),
                             "expires_at": int(time.time()) + 600, "max_uses": 5})
            assert r.status_code == 200, r.text
        args = [sys.executable, str(EXAMPLE), "--broker-url", live.url, "--key-file", str(key_file),
                "--expect-domain", "broker.test.invalid", "--scope-path", ns(master)]
        out = subprocess.run(args, cwd=ROOT, env={**os.environ}, capture_output=True, text=True, timeout=90)
        assert out.returncode == 0, out.stderr
        creds = json.loads(out.stdout)
        assert creds["Version"] == 1 and creds["AccessKeyId"].startswith("ASIA")
        sts = boto3.client("sts", endpoint_url=dev_aws["sts_endpoint"], region_name="us-east-1",
                           aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                           aws_session_token=creds["SessionToken"])
        assert "assumed-role" in sts.get_caller_identity()["Arn"]
        # outside the grant's scope: refused with exit 1 and one line
        bad = subprocess.run(args[:-1] + ["other-bucket/x/"], cwd=ROOT, capture_output=True, text=True, timeout=90)
        assert bad.returncode == 1 and "scope" in bad.stderr and "Traceback" not in bad.stderr
