"""The AssumeRole request documents, without a network: session name (seed-spec B.3, H.38), tags,
SourceIdentity, the parameter set, error mapping and message redaction."""

from __future__ import annotations

import re

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)
from hypothesis import given
from hypothesis import strategies as st

from api.session_policy import S3_TEMPLATE, ScopeError
from api.sts import (
    AssumeRoleRequest,
    BotoStsMinter,
    CredentialMinter,
    IssuedCredentials,
    StartupCheckFailed,
    StsError,
    safe_message,
    session_name,
    session_tags,
    source_identity,
    startup_check,
    tag_value,
    to_sts_error,
)
from api.sts_config import StsSettings
from ledger.catalogue import Catalogue, ServiceDef
from ledger.ports import sts_session_name

WALLET = "0xAbC0000000000000000000000000000000000001"
NOW_NS = 1_764_392_400_123_456_789  # 2025-11-29T05:00:00.123456789Z


# --- session name (H.38) -------------------------------------------------------------------


def test_session_name_rule() -> None:
    # A 42-character address keeps its first 40; 10 + 40 + 1 + 10 + 1 + 6 = 68 > 64, so the seed's
    # truncation leaves two digits of the microseconds (10 ms resolution) for every 0x wallet.
    assert session_name(WALLET, NOW_NS) == f"agentkeys-{WALLET[:40]}-1764392400-12"
    assert session_name("0xabc", NOW_NS) == "agentkeys-0xabc-1764392400-123456"


def test_session_name_micros_are_zero_padded() -> None:
    assert session_name("w1", 1_700_000_000_000_042_000).endswith("-1700000000-000042")


def test_empty_wallet() -> None:
    assert session_name("", NOW_NS) == "agentkeys--1764392400-123456"


def test_safe_wallet_filters_then_takes_40() -> None:
    wallet = "a/b c" + "é" + "x_y-z" + "9" * 60
    safe = ("abc" + "x_y-z" + "9" * 60)[:40]
    assert session_name(wallet, NOW_NS) == f"agentkeys-{safe}-1764392400-123456"[:64]


@given(st.text(max_size=200), st.integers(min_value=0, max_value=2**62))
def test_session_name_properties(wallet: str, now_ns: int) -> None:
    name = session_name(wallet, now_ns)
    assert name.startswith("agentkeys-") and len(name) <= 64 and name.count("-") >= 3
    assert "/" not in name and " " not in name
    assert re.fullmatch(r"[A-Za-z0-9_-]{2,64}", name)  # inside STS's [\w+=,.@-]{2,64}


def test_same_second_names_differ_by_micros() -> None:
    assert session_name("0xabc", NOW_NS) != session_name("0xabc", NOW_NS + 1_000)
    assert session_name(WALLET, NOW_NS) != session_name(WALLET, NOW_NS + 10_000_000)


# --- tags and source identity -------------------------------------------------------------------


@pytest.mark.parametrize("raw,expected", [
    ("s3", "s3"),
    ("agent 7: déjà-vu/x=y+z@w.", "agent 7: déjà-vu/x=y+z@w."),
    ("a*b?c\"d'e\n<f>", "a_b_c_d_e__f_"),
    ("x" * 300, "x" * 256),
    ("", ""),
])
def test_tag_values(raw: str, expected: str) -> None:
    assert tag_value(raw) == expected


@given(st.text(max_size=400))
def test_tag_value_always_valid(raw: str) -> None:
    import unicodedata

    value = tag_value(raw)
    assert len(value) <= 256
    assert all(unicodedata.category(c)[0] in "LZN" or c in "_.:/=+-@" for c in value)


def test_session_tags_order_and_keys() -> None:
    req = AssumeRoleRequest(wallet=WALLET, omni_account="ab" * 32, agent_id="agent#1", service="s3",
                            scope_path="", duration_seconds=0)
    assert session_tags(req) == (("omni_account", "ab" * 32), ("agent_id", "agent_1"), ("service", "s3"))


@pytest.mark.parametrize("wallet,expected", [
    (WALLET, WALLET.lower()),
    ("  0xABC  ", "0xabc"),
    ("user@example.com", "user@example.com"),
    ("a b/c", "a_b_c"),
    ("x" * 80, "x" * 64),
    ("", None),
    ("x", None),
])
def test_source_identity(wallet: str, expected: str | None) -> None:
    assert source_identity(wallet) == expected


def test_request_duration_bounds() -> None:
    m = minter()
    for requested, sent in ((0, 3600), (900, 900), (43200, 43200)):
        assert m.request_params(AssumeRoleRequest(WALLET, "o", "a", "ses", "", requested))["DurationSeconds"] == sent
    for bad in (899, 43201, True, 3600.0):
        with pytest.raises(StsError) as info:
            m.request_params(AssumeRoleRequest(WALLET, "o", "a", "ses", "", bad))  # type: ignore[arg-type]
        assert info.value.code == "InvalidRequest"


def test_issued_credentials_repr_hides_secrets() -> None:
    c = IssuedCredentials(access_key_id="ASIAX", secret_access_key="the-secret", session_token="the-token")
    assert "the-secret" not in repr(c) and "the-token" not in repr(c) and "ASIAX" in repr(c)


# --- parameters (no network: building the client makes no call) -----------------------------


SES_ROLE = "arn:aws:iam::123456789012:role/agentkeys-ses"


def catalogue() -> Catalogue:
    """s3 with the built-in template, and `ses`: scope none, declared unscoped on a role of its own."""
    return Catalogue({
        "s3": ServiceDef(name="s3", role_arn="arn:aws:iam::123456789012:role/agentkeys-data-role", scope="s3_prefix",
                         buckets=("my-bucket",), policy_template=S3_TEMPLATE),
        "ses": ServiceDef(name="ses", role_arn=SES_ROLE, scope="none", unscoped=True),
    })


def minter(**kw: object) -> BotoStsMinter:
    kw.setdefault("catalogue", catalogue())
    settings = StsSettings(role_arn="arn:aws:iam::123456789012:role/agentkeys-data-role",
                           access_key_id="AKIAEXAMPLE", secret_access_key="x", endpoint_url="http://127.0.0.1:1", **kw)
    return BotoStsMinter(settings, clock_ns=lambda: NOW_NS)


def test_request_params_for_s3() -> None:
    m = minter()
    assert isinstance(m, CredentialMinter)
    params = m.request_params(AssumeRoleRequest(WALLET, "omni1", "agent-1", "s3", "my-bucket/agents/a1", 0))
    assert params == {
        "RoleArn": "arn:aws:iam::123456789012:role/agentkeys-data-role",
        "RoleSessionName": f"agentkeys-{WALLET[:40]}-1764392400-12",
        "DurationSeconds": 3600,
        "Tags": [{"Key": "omni_account", "Value": "omni1"}, {"Key": "agent_id", "Value": "agent-1"},
                 {"Key": "service", "Value": "s3"}],
        "SourceIdentity": WALLET.lower(),
        "Policy": m.settings.policy_templates.render("s3", "my-bucket/agents/a1/"),
    }
    assert "TransitiveTagKeys" not in params


def test_request_params_of_a_declared_unscoped_service_without_identity() -> None:
    params = minter(duration_seconds=900).request_params(AssumeRoleRequest("", "o", "a", "ses", "", 43200))
    assert "Policy" not in params and "SourceIdentity" not in params
    assert params["RoleArn"] == SES_ROLE  # its own role, never the scoped services' one
    assert params["DurationSeconds"] == 43200


def test_bad_scope_fails_before_any_call() -> None:
    m = minter()
    calls: list[object] = []
    m.client.meta.events.register("before-call.sts.AssumeRole", lambda **kw: calls.append(kw))
    with pytest.raises(ScopeError) as info:
        m.assume_role(AssumeRoleRequest(WALLET, "o", "a", "s3", "my-bucket/*", 0))
    assert calls == []
    # a client error (400) for callers that look for it, a StsError for callers that only catch that
    assert isinstance(info.value, StsError) and isinstance(info.value, ValueError)
    assert info.value.code == "InvalidScope" and "'*'" in info.value.message


def test_client_config_is_bounded() -> None:
    m = minter(timeout_seconds=2, max_attempts=4)
    cfg = m.startup_client.meta.config
    assert (cfg.connect_timeout, cfg.read_timeout, cfg.region_name) == (2, 2, "us-east-1")
    assert cfg.retries == {"total_max_attempts": 4, "mode": "standard"}  # the start-up check only


def test_assume_role_client_never_retries() -> None:
    """A retried AssumeRole would issue a credential the ledger never names (issue 12, fault B):
    one attempt, whatever BROKER_STS_MAX_ATTEMPTS says (`max_attempts=1` would mean two)."""
    cfg = minter(timeout_seconds=2, max_attempts=4).client.meta.config
    assert (cfg.connect_timeout, cfg.read_timeout) == (2, 2)
    assert cfg.retries == {"total_max_attempts": 1, "mode": "standard"}


def test_session_name_is_named_by_the_mint_requested_seq() -> None:
    m = minter()
    params = m.request_params(AssumeRoleRequest(WALLET, "o", "a", "s3", "my-bucket/agents/a1/", 0, requested_seq=12345))
    assert params["RoleSessionName"] == f"agentkeys-{WALLET.lower().removeprefix('0x')[:40]}-12345"
    assert params["RoleSessionName"] == sts_session_name(WALLET, 12345)
    longest = sts_session_name("0x" + "F" * 40, 10**13 - 1)
    assert longest == "agentkeys-" + "f" * 40 + f"-{10**13 - 1}" and len(longest) == 64
    for bad_seq in (0, 10**13):  # no record has seq 0; a longer name is refused, never truncated
        with pytest.raises(ValueError):
            sts_session_name(WALLET, bad_seq)


# --- errors -------------------------------------------------------------------------------------


def client_error(code: str, message: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": 403}},
                       "AssumeRole")


@pytest.mark.parametrize("exc,code", [
    (client_error("AccessDenied", "nope"), "AccessDenied"),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:1/"), "EndpointUnreachable"),
    (ConnectTimeoutError(endpoint_url="http://10.0.0.1/"), "ConnectTimeout"),
    (ReadTimeoutError(endpoint_url="http://10.0.0.1/"), "ReadTimeout"),
    (NoCredentialsError(), "NoCredentials"),
    (ParamValidationError(report="Invalid length for parameter RoleArn"), "ParamValidation"),
])
def test_error_mapping(exc: Exception, code: str) -> None:
    err = to_sts_error(exc)
    assert isinstance(err, StsError) and err.code == code and err.message
    assert "127.0.0.1" not in err.message and "10.0.0.1" not in err.message


def test_messages_are_redacted() -> None:
    msg = ("User: arn:aws:sts::210987654321:assumed-role/broker/i-0abc is not authorized to perform: "
           "sts:AssumeRole on resource: arn:aws:iam::123456789012:role/agentkeys-data-role with key "
           "AKIAIOSFODNN7EXAMPLE in account 123456789012\n")
    out = safe_message(msg)
    assert out == ("User: <arn> is not authorized to perform: sts:AssumeRole on resource: <arn> with key "
                   "<key-id> in account <account>")
    err = to_sts_error(client_error("AccessDenied", msg))
    assert (err.code, err.message) == ("AccessDenied", out)


def test_startup_check_message() -> None:
    class Dead:
        def assume_role(self, request: AssumeRoleRequest) -> IssuedCredentials:
            raise AssertionError

        def check_identity(self) -> str:
            raise StsError("EndpointUnreachable", "could not connect to the STS endpoint")

    with pytest.raises(StartupCheckFailed) as info:
        startup_check(Dead())
    text = str(info.value)
    assert text.startswith("startup STS check failed: EndpointUnreachable: could not connect")
    assert "DAEMON_ACCESS_KEY_ID + DAEMON_SECRET_ACCESS_KEY" in text and "BROKER_AWS_REGION" in text
    assert text.endswith("Pass --skip-startup-check for offline dev.")
