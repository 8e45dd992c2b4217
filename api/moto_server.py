"""A local AWS for development and tests: moto's server (STS, S3, IAM, ...) on a loopback port.

`MotoServer.start()` runs `python -m moto.server -H 127.0.0.1 -p PORT` as a child process, polls it
over HTTP until it answers, and `stop()` ends that one process by its PID. `bootstrap_dev_aws()`
creates what the broker needs there: the role `agentkeys-data-role` (trust policy allowing
`sts:AssumeRole`, `sts:TagSession`, `sts:SetSourceIdentity`; MaxSessionDuration 43200; an inline
policy on the bucket) and the bucket `agentkeys-dev`. `dev_broker_env()` gives the variables that
point the broker at it.

moto is unauthenticated and accepts any credentials, so it only ever binds a loopback address. It
does not enforce session policies or conditions, and does not require the role to exist.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anchors.dev_chain import die_with_parent_preexec

DEV_ROLE_NAME = "agentkeys-data-role"
DEV_BUCKET = "agentkeys-dev"
DEV_REGION = "us-east-1"
DEV_ACCESS_KEY_ID = "testing"  # moto accepts any keys; these never leave the machine
DEV_SECRET_ACCESS_KEY = "testing"  # noqa: S105  moto dev credential, accepted by any local moto; never a real secret
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class MotoServerError(RuntimeError):
    """The moto server did not start (or answer) in time."""


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class MotoServer:
    """One moto server child process. Use `MotoServer.start()`; `stop()` when done (or `with`)."""

    def __init__(self, process: subprocess.Popen, host: str, port: int) -> None:
        self._process = process
        self.host = host
        self.port = port

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @classmethod
    def start(cls, port: int = 0, *, host: str = "127.0.0.1", log_path: Path | None = None,
              ready_timeout: float = 30.0) -> MotoServer:
        """Start a server on `host:port` (`port=0`: a free port) and wait until it answers HTTP."""
        if host not in LOOPBACK_HOSTS:
            raise ValueError(f"moto is unauthenticated: bind it to a loopback address, not {host!r}")
        attempts = 3 if port == 0 else 1
        last: Exception | None = None
        for _ in range(attempts):
            chosen = port or _free_port(host)
            server = cls._spawn(host, chosen, log_path)
            try:
                server._wait_ready(ready_timeout)
                return server
            except MotoServerError as exc:  # e.g. the port was taken between probe and bind
                last = exc
                server.stop()
        raise MotoServerError(f"moto server did not start: {last}")

    @classmethod
    def _spawn(cls, host: str, port: int, log_path: Path | None) -> MotoServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
        env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)
        env["PYTHONUNBUFFERED"] = "1"
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            out: Any = open(log_path, "ab")
        else:
            out = subprocess.DEVNULL
        try:
            process = subprocess.Popen(  # noqa: S603  fixed argv built by this module, no shell
                [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # Ctrl-C in a terminal reaches the parent only; it stops us
                preexec_fn=die_with_parent_preexec(),  # SIGTERM when dev (or the test run) dies
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        return cls(process, host, port)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            code = self._process.poll()
            if code is not None:
                raise MotoServerError(f"moto server exited with code {code} (port {self.port} in use?)")
            try:
                self._request("GET", "/moto-api/config", timeout=1.0)
                return
            except urllib.error.HTTPError:
                return  # it answered: it is up
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise MotoServerError(f"moto server on {self.endpoint} not ready after {timeout:.0f}s")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)

    def _request(self, method: str, path: str, body: bytes | None = None, timeout: float = 5.0) -> bytes:
        req = urllib.request.Request(self.endpoint + path, data=body, method=method,  # noqa: S310  URL is the configured local http endpoint, not user input
                                     headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback only
            return resp.read()

    def running(self) -> bool:
        return self._process.poll() is None

    def reset(self) -> None:
        """Forget every resource (`POST /moto-api/reset`) and switch IAM enforcement off again."""
        self._request("POST", "/moto-api/reset", b"")
        self.set_auth_enforcement(None)

    def set_auth_enforcement(self, after_actions: int | None) -> None:
        """moto checks IAM permissions on every request after `after_actions` more requests
        (`None`: never, the default)."""
        value = "inf" if after_actions is None else str(int(after_actions))
        self._request("POST", "/moto-api/reset-auth", value.encode())

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the server's PID, SIGKILL after `timeout`, and reap it. Idempotent."""
        if self._process.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self._process.wait(timeout)
            except ProcessLookupError:
                pass
        self._process.poll()

    def __enter__(self) -> MotoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"MotoServer(endpoint={self.endpoint!r}, pid={self.pid})"


# ---------------------------------------------------------------------------------------------
# Development AWS: the broker's role and a bucket


_SESSION: Any = None
_SESSION_LOCK = threading.Lock()


def aws_client(service: str, endpoint: str, region: str = DEV_REGION, **credentials: str) -> Any:
    """A boto3 client for `service` on the moto server at `endpoint` (dummy keys by default). One
    shared boto3 session (its loaded service models make later clients cheap); clients are created
    under a lock because sessions are not thread-safe."""
    global _SESSION
    import boto3
    from botocore.config import Config

    with _SESSION_LOCK:
        if _SESSION is None:
            _SESSION = boto3.session.Session()
        return _SESSION.client(
            service,
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id=credentials.get("aws_access_key_id", DEV_ACCESS_KEY_ID),
            aws_secret_access_key=credentials.get("aws_secret_access_key", DEV_SECRET_ACCESS_KEY),
            aws_session_token=credentials.get("aws_session_token"),
            config=Config(connect_timeout=5, read_timeout=10, retries={"total_max_attempts": 2, "mode": "standard"},
                          s3={"addressing_style": "path"}),
        )


def trust_policy(account_id: str) -> dict[str, Any]:
    """Who may assume the broker's role: principals of the account, with tags and source identity."""
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{account_id}:root"},
            "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
        }],
    }


def role_policy(bucket: str) -> dict[str, Any]:
    """The role's own permissions: objects and listing in the namespace of the session's master
    (`${aws:PrincipalTag/omni_account}`, docs/operator-runbook.md §tenancy); sessions narrow it
    further. moto does not enforce it; AWS would, even if the broker were wrong."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
             "Resource": f"arn:aws:s3:::{bucket}/${{aws:PrincipalTag/omni_account}}/*"},
            {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{bucket}",
             "Condition": {"StringLike": {"s3:prefix": ["${aws:PrincipalTag/omni_account}/*"]}}},
        ],
    }


def bootstrap_dev_aws(endpoint: str, *, region: str = DEV_REGION, role_name: str = DEV_ROLE_NAME,
                      bucket: str = DEV_BUCKET) -> dict[str, Any]:
    """Create (or find) the broker's role and the dev bucket on the moto server at `endpoint`.
    Idempotent. Returns what `dev.json` records and `dev_broker_env` needs."""
    sts = aws_client("sts", endpoint, region)
    account_id = sts.get_caller_identity()["Account"]
    iam = aws_client("iam", endpoint, region)
    try:
        role_arn = iam.create_role(
            RoleName=role_name,
            AssumeRolePolicyDocument=json.dumps(trust_policy(account_id)),
            Description="AgentKeys broker: credentials minted for daemons (development)",
            MaxSessionDuration=43200,
        )["Role"]["Arn"]
    except iam.exceptions.EntityAlreadyExistsException:
        role_arn = iam.get_role(RoleName=role_name)["Role"]["Arn"]
    iam.put_role_policy(RoleName=role_name, PolicyName="agentkeys-dev-bucket",
                        PolicyDocument=json.dumps(role_policy(bucket)))
    s3 = aws_client("s3", endpoint, region)
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(**kwargs)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    return {
        "sts_endpoint": endpoint,
        "region": region,
        "account_id": account_id,
        "role_arn": role_arn,
        "bucket": bucket,
    }


def dev_broker_env(info: Mapping[str, Any]) -> dict[str, str]:
    """The broker variables that point it at the moto server described by `info`."""
    return {
        "BROKER_STS_ENDPOINT_URL": str(info["sts_endpoint"]),
        "BROKER_IAM_ENDPOINT_URL": str(info["sts_endpoint"]),  # one moto server serves every service
        "BROKER_DATA_ROLE_ARN": str(info["role_arn"]),
        "BROKER_S3_BUCKETS": str(info["bucket"]),
        "BROKER_AWS_REGION": str(info["region"]),
        "DAEMON_ACCESS_KEY_ID": DEV_ACCESS_KEY_ID,
        "DAEMON_SECRET_ACCESS_KEY": DEV_SECRET_ACCESS_KEY,
    }


__all__ = ["DEV_BUCKET", "DEV_REGION", "DEV_ROLE_NAME", "MotoServer", "MotoServerError", "aws_client",
           "bootstrap_dev_aws", "dev_broker_env", "role_policy", "trust_policy"]
