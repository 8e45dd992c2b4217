"""STS settings (seed-spec F.1, D.9): role ARN fallbacks, region, duration bounds, static keys,
endpoint, timeouts, templates; every refusal is one BOOT_FAIL line naming the variable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from api.config import BootFailure, Setting
from api.session_policy import PolicyTemplates
from api.sts_config import STS_SETTINGS, StsSettings, from_env

ROLE = "arn:aws:iam::123456789012:role/agentkeys-data-role"
BASE = {"BROKER_DATA_ROLE_ARN": ROLE}


def fail(env: dict[str, str]) -> BootFailure:
    with pytest.raises(BootFailure) as info:
        from_env(env)
    assert "\n" not in str(info.value)
    return info.value


def test_defaults() -> None:
    s = from_env(BASE)
    assert (s.role_arn, s.region, s.duration_seconds) == (ROLE, "us-east-1", 3600)
    assert (s.access_key_id, s.secret_access_key, s.uses_static_keys) == (None, None, False)
    assert (s.endpoint_url, s.timeout_seconds, s.max_attempts) == (None, 5, 3)
    assert s.policy_templates == PolicyTemplates.builtin() and s.policy_templates.services == ("s3",)
    assert s.account_id == "123456789012" and s.role_arn_source == "BROKER_DATA_ROLE_ARN" and s.deprecations == ()
    assert StsSettings.from_env(BASE) == s


# --- role ARN -------------------------------------------------------------------------------


def test_role_precedence_data_then_agent_then_account_id() -> None:
    other = "arn:aws:iam::210987654321:role/legacy"
    assert from_env({"BROKER_DATA_ROLE_ARN": ROLE, "BROKER_AGENT_ROLE_ARN": other, "ACCOUNT_ID": "111122223333"}).role_arn == ROLE
    s = from_env({"BROKER_DATA_ROLE_ARN": "  ", "BROKER_AGENT_ROLE_ARN": other, "ACCOUNT_ID": "111122223333"})
    assert (s.role_arn, s.role_arn_source) == (other, "BROKER_AGENT_ROLE_ARN")
    assert any("BROKER_AGENT_ROLE_ARN" in d for d in s.deprecations)


def test_account_id_derives_the_data_role() -> None:
    # seed-spec J.7: `agentkeys-agent` (PR #60 commit) vs `agentkeys-data-role` (later code): we use the latter.
    s = from_env({"ACCOUNT_ID": "123456789012"})
    assert s.role_arn == "arn:aws:iam::123456789012:role/agentkeys-data-role"
    assert s.role_arn_source == "ACCOUNT_ID"
    assert from_env({"ACCOUNT_ID": "123456789012", "REGION": "cn-north-1"}).role_arn.startswith("arn:aws-cn:iam::")


def test_account_id_must_be_12_digits() -> None:
    # seed-spec H.97 uses ACCOUNT_ID=123; no AWS account has that id, so it is refused at boot.
    e = fail({"ACCOUNT_ID": "123"})
    assert (e.var, e.anchor) == ("ACCOUNT_ID", "sts-role")
    assert str(e) == 'BOOT_FAIL: ACCOUNT_ID="123": must be a 12-digit AWS account id; see runbook §sts-role'


def test_no_role_at_all_is_refused() -> None:
    e = fail({})
    assert (e.var, e.value, e.anchor) == ("BROKER_DATA_ROLE_ARN", None, "sts-role")
    assert str(e).startswith('BOOT_FAIL: BROKER_DATA_ROLE_ARN="(unset)": required')


@pytest.mark.parametrize("arn", [
    "arn:aws:iam::123:role/x",
    "arn:aws:iam::123456789012:user/x",
    "arn:aws:sts::123456789012:role/x",
    "arn:aws:iam::123456789012:role/",
    "arn:aws:iam::123456789012:role/has space",
    "agentkeys-data-role",
    "arn:aws:iam::123456789012:role/" + "x" * 65,
])
def test_malformed_role_arn_is_refused(arn: str) -> None:
    e = fail({"BROKER_DATA_ROLE_ARN": arn})
    assert (e.var, e.anchor) == ("BROKER_DATA_ROLE_ARN", "sts-role")


def test_malformed_legacy_arn_names_the_legacy_var() -> None:
    assert fail({"BROKER_AGENT_ROLE_ARN": "nope"}).var == "BROKER_AGENT_ROLE_ARN"


@pytest.mark.parametrize("arn", [
    "arn:aws:iam::123456789012:role/agentkeys-data-role",
    "arn:aws:iam::123456789012:role/service-role/team/agentkeys+x=y,z.w@v",
    "arn:aws-us-gov:iam::123456789012:role/r",
])
def test_valid_role_arns(arn: str) -> None:
    assert from_env({"BROKER_DATA_ROLE_ARN": f" {arn} "}).role_arn == arn


# --- region ---------------------------------------------------------------------------------


def test_region_precedence() -> None:
    assert from_env(BASE).region == "us-east-1"
    s = from_env({**BASE, "REGION": "eu-west-1"})
    assert s.region == "eu-west-1" and any("REGION" in d for d in s.deprecations)
    assert from_env({**BASE, "REGION": "eu-west-1", "BROKER_AWS_REGION": "ap-southeast-2"}).region == "ap-southeast-2"
    assert from_env({**BASE, "REGION": "eu-west-1", "BROKER_AWS_REGION": ""}).region == "eu-west-1"


@pytest.mark.parametrize("var", ["BROKER_AWS_REGION", "REGION"])
def test_bad_region(var: str) -> None:
    e = fail({**BASE, var: "Europe"})
    assert (e.var, e.anchor) == (var, "sts-region")


# --- duration (seed-spec D.9, H.96) -----------------------------------------------------------


@pytest.mark.parametrize("value,expected", [("900", 900), ("43200", 43200), (" 3600 ", 3600), ("", 3600)])
def test_duration_accepted(value: str, expected: int) -> None:
    assert from_env({**BASE, "BROKER_SESSION_DURATION_SECONDS": value}).duration_seconds == expected


@pytest.mark.parametrize("value", ["899", "43201", "abc", "0", "-1", "3600.5"])
def test_duration_refused(value: str) -> None:
    e = fail({**BASE, "BROKER_SESSION_DURATION_SECONDS": value})
    assert str(e) == (f'BOOT_FAIL: BROKER_SESSION_DURATION_SECONDS="{value}": must be an integer in '
                      "[900, 43200]; see runbook §sts-duration")


# --- static keys ----------------------------------------------------------------------------


def test_static_keys_both_set() -> None:
    s = from_env({**BASE, "DAEMON_ACCESS_KEY_ID": "AKIAEXAMPLE", "DAEMON_SECRET_ACCESS_KEY": "s3cr3t/+x"})
    assert (s.access_key_id, s.secret_access_key, s.uses_static_keys) == ("AKIAEXAMPLE", "s3cr3t/+x", True)
    assert "s3cr3t" not in repr(s)


def test_static_keys_fallback_names_and_first_non_empty_wins() -> None:
    s = from_env({**BASE, "DAEMON_ACCESS_KEY_ID": "", "BROKER_DAEMON_ACCESS_KEY_ID": "AKIAFALLBACK",
                  "DAEMON_SECRET_ACCESS_KEY": "primary", "BROKER_DAEMON_SECRET_ACCESS_KEY": "fallback"})
    assert (s.access_key_id, s.secret_access_key) == ("AKIAFALLBACK", "primary")
    assert any("BROKER_DAEMON_ACCESS_KEY_ID" in d for d in s.deprecations)
    assert not any("SECRET" in d for d in s.deprecations)


@pytest.mark.parametrize("env,missing", [
    ({"DAEMON_ACCESS_KEY_ID": "AKIAEXAMPLE"}, "DAEMON_SECRET_ACCESS_KEY"),
    ({"BROKER_DAEMON_ACCESS_KEY_ID": "AKIAEXAMPLE"}, "DAEMON_SECRET_ACCESS_KEY"),
    ({"DAEMON_SECRET_ACCESS_KEY": "topsecretvalue"}, "DAEMON_ACCESS_KEY_ID"),
    ({"BROKER_DAEMON_SECRET_ACCESS_KEY": "topsecretvalue"}, "DAEMON_ACCESS_KEY_ID"),
])
def test_exactly_one_of_the_pair_is_refused(env: dict[str, str], missing: str) -> None:
    e = fail({**BASE, **env})
    assert (e.var, e.value, e.anchor) == (missing, None, "sts-credentials")
    assert "topsecretvalue" not in str(e)


def test_neither_key_uses_the_default_chain() -> None:
    s = from_env({**BASE, "DAEMON_ACCESS_KEY_ID": " ", "BROKER_DAEMON_SECRET_ACCESS_KEY": ""})
    assert not s.uses_static_keys


def test_malformed_secret_is_not_printed() -> None:
    e = fail({**BASE, "DAEMON_ACCESS_KEY_ID": "AKIAEXAMPLE", "DAEMON_SECRET_ACCESS_KEY": "top secret"})
    assert e.var == "DAEMON_SECRET_ACCESS_KEY" and "top secret" not in str(e) and '"(hidden)"' in str(e)


# --- endpoint, timeouts, attempts ------------------------------------------------------------


@pytest.mark.parametrize("url,dev,expected", [
    ("https://sts.us-east-1.amazonaws.com/", False, "https://sts.us-east-1.amazonaws.com"),
    ("https://vpce-123.sts.us-east-1.vpce.amazonaws.com", False, "https://vpce-123.sts.us-east-1.vpce.amazonaws.com"),
    ("http://127.0.0.1:5000", False, "http://127.0.0.1:5000"),
    ("http://localhost:5000", False, "http://localhost:5000"),
    ("http://[::1]:5000", False, "http://[::1]:5000"),
    ("http://moto.internal:5000", True, "http://moto.internal:5000"),
])
def test_endpoint_accepted(url: str, dev: bool, expected: str) -> None:
    env = {**BASE, "BROKER_STS_ENDPOINT_URL": url}
    if dev:
        env["BROKER_DEV_MODE"] = "true"
    assert from_env(env).endpoint_url == expected


@pytest.mark.parametrize("url", ["http://moto.internal:5000", "ftp://x", "sts.amazonaws.com", "https://u:p@host",
                                 "https://host/?q=1", "https://host:99999"])
def test_endpoint_refused(url: str) -> None:
    e = fail({**BASE, "BROKER_STS_ENDPOINT_URL": url})
    assert (e.var, e.anchor) == ("BROKER_STS_ENDPOINT_URL", "sts-endpoint")


@pytest.mark.parametrize("var,bad,good,lo,hi", [
    ("BROKER_STS_TIMEOUT_SECONDS", ["0", "61", "x"], ["1", "60"], 1, 60),
    ("BROKER_STS_MAX_ATTEMPTS", ["0", "11", "2.5"], ["1", "10"], 1, 10),
])
def test_bounded_integers(var: str, bad: list[str], good: list[str], lo: int, hi: int) -> None:
    for value in bad:
        e = fail({**BASE, var: value})
        assert (e.var, e.anchor, e.reason) == (var, "sts-timeouts", f"must be an integer in [{lo}, {hi}]")
    for value in good:
        s = from_env({**BASE, var: value})
        assert (s.timeout_seconds if "TIMEOUT" in var else s.max_attempts) == int(value)


# --- session policy templates ---------------------------------------------------------------


def test_templates_file_overrides_and_removes(tmp_path: Path) -> None:
    path = tmp_path / "templates.json"
    path.write_text(json.dumps({
        "s3": None,
        "sqs": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sqs:SendMessage",
                                                         "Resource": "arn:aws:sqs:*:*:${bucket}"}]},
    }))
    s = from_env({**BASE, "BROKER_SESSION_POLICY_TEMPLATES": str(path)})
    assert s.policy_templates.services == ("sqs",)
    assert s.policy_templates.render("s3", "b/x/") is None


@pytest.mark.parametrize("content,reason", [
    ("{", "not valid JSON"),
    ("[]", "must hold a JSON object"),
    ('{"s3": {"Statement": []}}', "Version must be"),
    ('{"s3": {"Version": "2012-10-17", "Statement": [{"Resource": "${nope}"}]}}', "unknown placeholder ${nope}"),
    ('{"S3!": null}', "service name"),
    ('{"s3": {"Version": "2012-10-17", "Statement": [], "X": 1.5}}', "floating-point"),
])
def test_bad_templates_file(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "t.json"
    path.write_text(content)
    e = fail({**BASE, "BROKER_SESSION_POLICY_TEMPLATES": str(path)})
    assert (e.var, e.anchor) == ("BROKER_SESSION_POLICY_TEMPLATES", "sts-session-policy")
    assert reason in e.reason


def test_missing_templates_file(tmp_path: Path) -> None:
    e = fail({**BASE, "BROKER_SESSION_POLICY_TEMPLATES": str(tmp_path / "absent.json")})
    assert "cannot read" in e.reason


# --- the settings list --------------------------------------------------------------------


def test_settings_list_names_every_variable_with_an_anchor() -> None:
    names = [s.name for s in STS_SETTINGS]
    assert len(names) == len(set(names))
    assert set(names) == {
        "BROKER_DATA_ROLE_ARN", "BROKER_AGENT_ROLE_ARN", "ACCOUNT_ID", "BROKER_AWS_REGION", "REGION",
        "BROKER_SESSION_DURATION_SECONDS", "DAEMON_ACCESS_KEY_ID", "DAEMON_SECRET_ACCESS_KEY",
        "BROKER_DAEMON_ACCESS_KEY_ID", "BROKER_DAEMON_SECRET_ACCESS_KEY", "BROKER_STS_ENDPOINT_URL",
        "BROKER_STS_TIMEOUT_SECONDS", "BROKER_STS_MAX_ATTEMPTS", "BROKER_SESSION_POLICY_TEMPLATES",
    }
    assert all(isinstance(s, Setting) and s.group == "sts" and s.doc for s in STS_SETTINGS)
    assert {s.anchor for s in STS_SETTINGS} == {"sts-role", "sts-region", "sts-duration", "sts-credentials",
                                                "sts-endpoint", "sts-timeouts", "sts-session-policy"}
    defaults = {s.name: s.default for s in STS_SETTINGS if s.default is not None}
    assert defaults == {"BROKER_SESSION_DURATION_SECONDS": "3600", "BROKER_STS_TIMEOUT_SECONDS": "5",
                        "BROKER_STS_MAX_ATTEMPTS": "3"}
