"""The boto3 STS adapter against a real moto server over loopback.

moto accepts session policies, tags and SourceIdentity but enforces none of them, so these tests
assert the exact documents the adapter sends (captured from botocore's event hooks, before
serialisation and on the wire); what the policy allows is proved by tests/unit/api/test_session_policy.py.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.parse
from typing import Any

import pytest

from api.config import BootFailure
from api.moto_server import MotoServer, aws_client, bootstrap_dev_aws, dev_broker_env
from api.sts import AssumeRoleRequest, BotoStsMinter, StartupCheckFailed, StsError, startup_check
from api.sts_config import StsSettings, from_env
from tests.support_moto import dev_aws, moto_endpoint, moto_server, sts_env  # noqa: F401 - fixtures

WALLET = "0xAbC0000000000000000000000000000000000001"
SCOPE = "agentkeys-dev/agents/a1/"


def request(**overrides: Any) -> AssumeRoleRequest:
    fields: dict[str, Any] = {"wallet": WALLET, "omni_account": "f" * 64, "agent_id": "agent-1",
                              "service": "s3", "scope_path": SCOPE, "duration_seconds": 0}  # 0: the default
    fields.update(overrides)
    return AssumeRoleRequest(**fields)


def minter_for(info: dict[str, Any], **env: str) -> BotoStsMinter:
    return BotoStsMinter(from_env(sts_env(info, **env)))


class Captured:
    """API parameters (after validation inputs) and wire bodies of every STS call of a client."""

    def __init__(self, client: Any) -> None:
        self.params: list[dict[str, Any]] = []
        self.bodies: list[dict[str, list[str]]] = []
        client.meta.events.register("provide-client-params.sts.AssumeRole", self._params)
        client.meta.events.register("before-send.sts.AssumeRole", self._send)

    def _params(self, params: dict[str, Any], **_: Any) -> None:
        self.params.append(json.loads(json.dumps(params)))

    def _send(self, request: Any, **_: Any) -> None:
        body = request.body.decode() if isinstance(request.body, bytes) else str(request.body)
        self.bodies.append(urllib.parse.parse_qs(body, keep_blank_values=True))


# --- minting --------------------------------------------------------------------------------


def test_assume_role_returns_working_temporary_credentials(dev_aws: dict[str, Any]) -> None:
    m = minter_for(dev_aws)
    before = time.time()
    creds = m.assume_role(request())
    after = time.time()
    assert creds.access_key_id.startswith("ASIA") and len(creds.access_key_id) == 20
    assert len(creds.secret_access_key) == 40 and creds.session_token
    assert before + 3600 - 2 <= creds.expiration <= after + 3600 + 2
    assert creds.session_name.startswith(f"agentkeys-{WALLET[:40]}-") and len(creds.session_name) <= 64
    assert creds.assumed_role_arn == (f"arn:aws:sts::{dev_aws['account_id']}:assumed-role/agentkeys-data-role/"
                                      f"{creds.session_name}")
    assert creds.secret_access_key not in repr(creds) and creds.session_token not in repr(creds)

    as_daemon = aws_client("sts", dev_aws["sts_endpoint"], aws_access_key_id=creds.access_key_id,
                           aws_secret_access_key=creds.secret_access_key, aws_session_token=creds.session_token)
    assert as_daemon.get_caller_identity()["Arn"] == creds.assumed_role_arn


def test_exact_documents_sent(dev_aws: dict[str, Any]) -> None:
    m = minter_for(dev_aws)
    cap = Captured(m.client)
    creds = m.assume_role(request(agent_id="agent #1"))
    expected_policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "AgentKeysScopedObjects", "Effect": "Allow",
             "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
             "Resource": "arn:aws:s3:::agentkeys-dev/agents/a1/*"},
            {"Sid": "AgentKeysScopedList", "Effect": "Allow", "Action": "s3:ListBucket",
             "Resource": "arn:aws:s3:::agentkeys-dev",
             "Condition": {"StringLike": {"s3:prefix": ["agents/a1/*", "agents/a1/"]}}},
        ],
    }
    policy_text = json.dumps(expected_policy, sort_keys=True, separators=(",", ":"))
    assert cap.params == [{
        "RoleArn": dev_aws["role_arn"],
        "RoleSessionName": creds.session_name,
        "DurationSeconds": 3600,
        "Tags": [{"Key": "omni_account", "Value": "f" * 64}, {"Key": "agent_id", "Value": "agent _1"},
                 {"Key": "service", "Value": "s3"}],
        "SourceIdentity": WALLET.lower(),
        "Policy": policy_text,
    }]
    assert (creds.policy_json, creds.role_arn) == (policy_text, dev_aws["role_arn"])
    assert creds.tags == (("omni_account", "f" * 64), ("agent_id", "agent _1"), ("service", "s3"))

    wire = cap.bodies[0]
    assert wire["Action"] == ["AssumeRole"] and wire["Policy"] == [policy_text]
    assert wire["SourceIdentity"] == [WALLET.lower()]
    assert [wire[f"Tags.member.{i}.Key"][0] for i in (1, 2, 3)] == ["omni_account", "agent_id", "service"]
    assert not any(k.startswith("TransitiveTagKeys") for k in wire)


def test_service_outside_the_catalogue_is_never_sent(dev_aws: dict[str, Any]) -> None:
    m = minter_for(dev_aws)
    cap = Captured(m.client)
    for service in ("ses", "S3", "aws", "iam"):
        with pytest.raises(StsError) as info:
            m.assume_role(request(service=service, scope_path=""))
        assert info.value.code == "UnknownService"
    assert cap.params == [] and cap.bodies == []


def test_declared_unscoped_service_sends_no_policy_on_its_own_role(dev_aws: dict[str, Any]) -> None:
    import dataclasses

    from ledger.catalogue import Catalogue, ServiceDef

    own = f"arn:aws:iam::{dev_aws['account_id']}:role/agentkeys-ses"
    settings = from_env(sts_env(dev_aws))
    catalogue = Catalogue({"s3": ServiceDef(name="s3", role_arn=settings.role_arn, scope="s3_prefix",
                                            buckets=("agentkeys-dev",),
                                            policy_template=settings.policy_templates.template("s3")),
                           "ses": ServiceDef(name="ses", role_arn=own, scope="none", unscoped=True)})
    m = BotoStsMinter(dataclasses.replace(settings, catalogue=catalogue))
    cap = Captured(m.client)
    creds = m.assume_role(request(service="ses", scope_path=""))
    assert "Policy" not in cap.params[0] and "Policy" not in cap.bodies[0] and creds.policy_json is None
    assert cap.params[0]["RoleArn"] == own == creds.role_arn


@pytest.mark.parametrize("duration", [900, 43200])
def test_duration_bounds_accepted(dev_aws: dict[str, Any], duration: int) -> None:
    m = minter_for(dev_aws, BROKER_SESSION_DURATION_SECONDS=str(duration))
    cap = Captured(m.client)
    now = time.time()
    creds = m.assume_role(request())
    assert cap.params[0]["DurationSeconds"] == duration
    assert abs(creds.expiration - (now + duration)) <= 3


@pytest.mark.parametrize("duration", ["899", "43201"])
def test_duration_out_of_bounds_refused_at_config(dev_aws: dict[str, Any], duration: str) -> None:
    with pytest.raises(BootFailure) as info:
        from_env(sts_env(dev_aws, BROKER_SESSION_DURATION_SECONDS=duration))
    assert info.value.var == "BROKER_SESSION_DURATION_SECONDS" and info.value.anchor == "sts-duration"


def test_per_request_duration_overrides_default(dev_aws: dict[str, Any]) -> None:
    m = minter_for(dev_aws)
    cap = Captured(m.client)
    m.assume_role(request(duration_seconds=900))
    assert cap.params[0]["DurationSeconds"] == 900


def test_concurrent_mints_share_one_client(dev_aws: dict[str, Any]) -> None:
    m = minter_for(dev_aws)
    keys: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work() -> None:
        try:
            for _ in range(5):
                c = m.assume_role(request())
                with lock:
                    keys.append(c.access_key_id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(keys) == 40 and len(set(keys)) == 40


# --- identity and startup check ----------------------------------------------------------------


def test_check_identity(dev_aws: dict[str, Any]) -> None:
    m = minter_for(dev_aws)
    assert m.check_identity() == f"arn:aws:sts::{dev_aws['account_id']}:user/moto"
    assert startup_check(m) == m.check_identity()


# --- failures -------------------------------------------------------------------------------


def dead_minter(endpoint: str, timeout: int = 5, attempts: int = 3) -> BotoStsMinter:
    return BotoStsMinter(StsSettings(role_arn="arn:aws:iam::123456789012:role/agentkeys-data-role",
                                     access_key_id="testing", secret_access_key="testing", endpoint_url=endpoint,
                                     timeout_seconds=timeout, max_attempts=attempts))


def test_unreachable_endpoint_fails_fast() -> None:
    m = dead_minter("http://127.0.0.1:1")  # defaults: 5 s timeout, 3 attempts
    started = time.monotonic()
    with pytest.raises(StsError) as info:
        m.assume_role(request())
    assert info.value.code == "EndpointUnreachable" and "127.0.0.1" not in str(info.value)
    with pytest.raises(StsError) as info:
        m.check_identity()
    assert info.value.code == "EndpointUnreachable"
    with pytest.raises(StartupCheckFailed, match="startup STS check failed: EndpointUnreachable"):
        startup_check(m)
    assert time.monotonic() - started < 12  # 3 calls x (3 refused connects + <= 3 s jittered backoff)


def test_silent_endpoint_times_out_within_the_bound() -> None:
    with socket.socket() as listener:  # accepts TCP (kernel backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        m = dead_minter(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=1, attempts=2)
        started = time.monotonic()
        with pytest.raises(StsError) as info:
            m.assume_role(request())
        elapsed = time.monotonic() - started
        assert info.value.code == "ReadTimeout" and info.value.outcome_unknown  # it may have been served
        assert 0.9 <= elapsed < 1.9  # AssumeRole: one attempt, never retried, whatever max_attempts says
        started = time.monotonic()
        with pytest.raises(StsError):
            m.check_identity()  # the start-up check: BROKER_STS_MAX_ATTEMPTS (2) attempts
        assert 1.9 <= time.monotonic() - started < 5  # 2 attempts x 1 s read timeout + <= 1 s backoff


def test_refused_connection_is_a_known_outcome() -> None:
    m = dead_minter("http://127.0.0.1:1", timeout=1, attempts=1)
    with pytest.raises(StsError) as info:
        m.assume_role(request())
    assert info.value.code == "EndpointUnreachable" and not info.value.outcome_unknown  # nothing was sent


def test_aws_error_keeps_code_and_redacts(dev_aws: dict[str, Any], moto_server: MotoServer) -> None:
    iam = aws_client("iam", dev_aws["sts_endpoint"])
    iam.create_user(UserName="no-permissions")
    key = iam.create_access_key(UserName="no-permissions")["AccessKey"]
    m = minter_for(dev_aws, DAEMON_ACCESS_KEY_ID=key["AccessKeyId"], DAEMON_SECRET_ACCESS_KEY=key["SecretAccessKey"])
    moto_server.set_auth_enforcement(0)  # from now on moto checks IAM permissions (reset by the fixture)
    with pytest.raises(StsError) as info:
        m.assume_role(request())
    err = info.value
    assert err.code == "AccessDenied"
    assert err.message == "User: <arn> is not authorized to perform: sts:AssumeRole"
    assert dev_aws["account_id"] not in str(err) and key["AccessKeyId"] not in str(err)

    unknown = minter_for(dev_aws)  # the dummy keys are not an IAM user: rejected once auth is on
    with pytest.raises(StsError) as info:
        unknown.check_identity()
    assert info.value.code == "InvalidClientTokenId"


def test_sdk_parameter_refusal_is_an_sts_error(dev_aws: dict[str, Any]) -> None:
    settings = StsSettings(role_arn="bad-role-arn", access_key_id="testing", secret_access_key="testing",
                           endpoint_url=dev_aws["sts_endpoint"])  # bypasses from_env: botocore refuses it
    with pytest.raises(StsError) as info:
        BotoStsMinter(settings).assume_role(request())
    assert info.value.code == "ParamValidation" and "RoleArn" in info.value.message


# --- the moto server and the dev bootstrap ----------------------------------------------------------


def test_moto_server_lifecycle_and_bootstrap(tmp_path: Any) -> None:
    server = MotoServer.start(log_path=tmp_path / "moto.log")
    try:
        assert server.running() and server.endpoint.startswith("http://127.0.0.1:")
        info = bootstrap_dev_aws(server.endpoint)
        assert bootstrap_dev_aws(server.endpoint) == info  # idempotent
        assert info == {"sts_endpoint": server.endpoint, "region": "us-east-1", "account_id": "123456789012",
                        "role_arn": "arn:aws:iam::123456789012:role/agentkeys-data-role", "bucket": "agentkeys-dev"}
        role = aws_client("iam", server.endpoint).get_role(RoleName="agentkeys-data-role")["Role"]
        trust = role["AssumeRolePolicyDocument"]
        trust = json.loads(urllib.parse.unquote(trust)) if isinstance(trust, str) else trust
        assert trust["Statement"][0]["Action"] == ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"]
        assert role["MaxSessionDuration"] == 43200
        s3 = aws_client("s3", server.endpoint)
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["agentkeys-dev"]

        settings = from_env(dev_broker_env(info))  # what `dev` gives the broker
        assert settings.endpoint_url == server.endpoint and settings.role_arn == info["role_arn"]
        creds = BotoStsMinter(settings).assume_role(request())
        as_daemon = aws_client("s3", server.endpoint, aws_access_key_id=creds.access_key_id,
                               aws_secret_access_key=creds.secret_access_key, aws_session_token=creds.session_token)
        as_daemon.put_object(Bucket="agentkeys-dev", Key="agents/a1/hello.txt", Body=b"hi")
        assert as_daemon.get_object(Bucket="agentkeys-dev", Key="agents/a1/hello.txt")["Body"].read() == b"hi"
    finally:
        pid = server.pid
        server.stop()
    assert not server.running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
    server.stop()  # idempotent


def test_moto_server_refuses_non_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        MotoServer.start(host="0.0.0.0")  # noqa: S104  the test checks that a non-loopback host is refused


def test_reset_fixture_gives_a_clean_server(moto_endpoint: str) -> None:
    iam = aws_client("iam", moto_endpoint)
    assert iam.list_roles()["Roles"] == []
    assert aws_client("s3", moto_endpoint).list_buckets()["Buckets"] == []
