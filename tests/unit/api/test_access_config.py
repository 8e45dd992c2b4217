"""The service catalogue and access settings at boot (design §3a, §8 "Access wire"): every bad
catalogue is one BOOT_FAIL line naming a runbook anchor; no configuration can leave a service
without a session policy unless it is declared unscoped on a role of its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from api.access_config import from_env
from api.config import BootFailure, BrokerConfig
from api.session_policy import PolicyTemplates
from api.sts import BotoStsMinter
from api.sts_config import StsSettings
from ledger.ports import AssumeRoleRequest, StsError

ROLE = "arn:aws:iam::123456789012:role/agentkeys-data-role"
BASE = {"BROKER_OIDC_ISSUER": "https://broker.test.invalid", "BROKER_DATA_ROLE_ARN": ROLE}


def catalogue_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "services.toml"
    path.write_text(text)
    return str(path)


def boot_fail(env: dict, anchor: str, tmp_path: Path) -> str:
    with pytest.raises(BootFailure) as info:
        BrokerConfig.from_env({**BASE, "BROKER_DATA_DIR": str(tmp_path), **env})
    line = str(info.value)
    assert line.startswith("BOOT_FAIL: ") and "\n" not in line and line.endswith(f"see runbook §{anchor}"), line
    return line


def test_builtin_catalogue_needs_its_buckets(tmp_path: Path) -> None:
    boot_fail({}, "s3-buckets", tmp_path)
    boot_fail({"BROKER_S3_BUCKETS": "Not_A_Bucket"}, "s3-buckets", tmp_path)
    c = BrokerConfig.from_env({**BASE, "BROKER_DATA_DIR": str(tmp_path), "BROKER_S3_BUCKETS": "a-bucket, b-bucket"})
    s3 = c.access.catalogue.get("s3")
    assert s3.buckets == ("a-bucket", "b-bucket") and s3.role_arn == ROLE and not s3.unscoped
    assert c.access.tenancy == "namespaced" and c.access.legacy_service is None


def test_services_file_and_templates_file_together_is_services_file_conflict(tmp_path: Path) -> None:
    (tmp_path / "t.json").write_text("{}")
    boot_fail({"BROKER_SERVICES_FILE": catalogue_file(tmp_path, '[services.s3]\nrole_arn = "x"'),
               "BROKER_SESSION_POLICY_TEMPLATES": str(tmp_path / "t.json")}, "services-file-conflict", tmp_path)


def test_templates_file_removing_the_s3_template_cannot_unscope_s3(tmp_path: Path) -> None:
    (tmp_path / "t.json").write_text(json.dumps({"s3": None}))
    boot_fail({"BROKER_S3_BUCKETS": "agentkeys-dev", "BROKER_SESSION_POLICY_TEMPLATES": str(tmp_path / "t.json")},
              "sts-session-policy", tmp_path)


@pytest.mark.parametrize("text,needle", [
    ('[services.S3]\nrole_arn = "{r}"\nscope = "s3_prefix"\nbuckets = ["b-1"]', "must match"),
    ('[services.s3]\nrole_arn = "{r}"\nscope = "s3_prefix"', "at least one bucket"),
    ('[services.s3]\nrole_arn = "{r}"\nscope = "bucket"\nbuckets = ["b-1"]', "scope must be one of"),
    ('[services.s3]\nrole_arn = "not-an-arn"\nscope = "s3_prefix"\nbuckets = ["b-1"]', "role_arn"),
    ('[services.s3]\nrole_arn = "{r}"\nscope = "s3_prefix"\nbuckets = ["b-1"]\nunscoped = true', "requires scope"),
    ('[services.x]\nrole_arn = "{r}"\nscope = "none"', "needs a policy_template"),
    ('[services.s3]\nrole_arn = "{r}"\nscope = "s3_prefix"\nbuckets = ["b-1"]\n'
     '[services.all]\nrole_arn = "{r}"\nscope = "none"\nunscoped = true', "a role no other service uses"),
    ('[services.s3]\nrole_arn = "{r}"\nscope = "s3_prefix"\nbuckets = ["b-1"]\nextra = 1', "unknown key"),
    ('[services.s3]\nrole_arn = "{r}"\nscope = "s3_prefix"\nbuckets = ["b-1"]\npolicy_template = "missing.json"',
     "cannot read"),
    ("not toml [", "not valid TOML"),
    ("", "declares no"),
])
def test_bad_catalogues_fail_boot_with_one_line(tmp_path: Path, text: str, needle: str) -> None:
    line = boot_fail({"BROKER_SERVICES_FILE": catalogue_file(tmp_path, text.replace("{r}", ROLE))},
                     "services-file", tmp_path)
    assert needle in line


def test_tenancy_and_legacy_service_are_checked(tmp_path: Path) -> None:
    env = {"BROKER_S3_BUCKETS": "agentkeys-dev"}
    boot_fail({**env, "BROKER_TENANCY": "open"}, "tenancy", tmp_path)
    boot_fail({**env, "BROKER_LEGACY_SERVICE": "aws"}, "legacy-service", tmp_path)
    boot_fail({**env, "BROKER_LEGACY_SERVICE": "s3"}, "legacy-service", tmp_path)


def minter_for(tmp_path: Path, text: str) -> BotoStsMinter:
    access = from_env({"BROKER_SERVICES_FILE": catalogue_file(tmp_path, text)}, role_arn=ROLE,
                      templates=PolicyTemplates.builtin())
    return BotoStsMinter(StsSettings(role_arn=ROLE, catalogue=access.catalogue))


def request(service: str, scope: str = "") -> AssumeRoleRequest:
    return AssumeRoleRequest(wallet="0x" + "ab" * 20, omni_account="o" * 64, agent_id="a", service=service,
                             scope_path=scope, duration_seconds=900, requested_seq=7)


def test_the_sts_adapter_never_sends_an_unknown_service_or_one_without_a_policy(tmp_path: Path) -> None:
    other = "arn:aws:iam::123456789012:role/agentkeys-ses"
    (tmp_path / "ro.json").write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "ses:SendEmail", "Resource": "*"}]}))
    minter = minter_for(tmp_path, f'[services.s3]\nrole_arn = "{ROLE}"\nscope = "s3_prefix"\nbuckets = ["b-1"]\n'
                                  f'[services.ses]\nrole_arn = "{other}"\nscope = "none"\npolicy_template = "ro.json"\n')
    s3 = minter.request_params(request("s3", "b-1/o/"))
    assert s3["RoleArn"] == ROLE and "b-1/o/" in s3["Policy"]
    ses = minter.request_params(request("ses"))
    assert ses["RoleArn"] == other and "ses:SendEmail" in ses["Policy"]
    for name in ("S3", "aws", "iam", "anything"):
        with pytest.raises(StsError) as info:
            minter.request_params(request(name, "b-1/o/"))
        assert info.value.code == "UnknownService"


def test_only_a_declared_unscoped_service_goes_without_a_policy(tmp_path: Path) -> None:
    own = "arn:aws:iam::123456789012:role/agentkeys-own"
    minter = minter_for(tmp_path, f'[services.s3]\nrole_arn = "{ROLE}"\nscope = "s3_prefix"\nbuckets = ["b-1"]\n'
                                  f'[services.own]\nrole_arn = "{own}"\nscope = "none"\nunscoped = true\n')
    params = minter.request_params(request("own"))
    assert params["RoleArn"] == own and "Policy" not in params
    # settings without a catalogue: s3 with its template, nothing else
    bare = BotoStsMinter(StsSettings(role_arn=ROLE))
    assert "Policy" in bare.request_params(request("s3", "b-1/o/"))
    with pytest.raises(StsError):
        bare.request_params(request("aws", "b-1/o/"))


def test_an_oidc_service_is_never_minted_as_aws_credentials(tmp_path: Path) -> None:
    import dataclasses

    from ledger.services.access import Access
    from ledger.services.mint import MintIntent, MintService
    from ledger.services.refusals import Refusal

    access_settings = from_env({"BROKER_SERVICES_FILE": catalogue_file(
        tmp_path, f'[services.s3]\nrole_arn = "{ROLE}"\nscope = "s3_prefix"\nbuckets = ["b-1"]\n'
                  f'[services.web]\nrole_arn = "arn:aws:iam::123456789012:role/web"\nscope = "oidc"\n')},
        role_arn=ROLE, templates=PolicyTemplates.builtin())
    access = Access(catalogue=access_settings.catalogue, tenancy="namespaced", roots_of=lambda omni: {})
    service = MintService.__new__(MintService)  # only the field checks run: nothing else is touched
    service.access = access
    intent = MintIntent(request_id="r", issued_at="x", agent_id="a", service="web", scope_path="", address="0x",
                        signature="")
    with pytest.raises(Refusal) as info:
        service._validated(intent)
    assert info.value.reason == "bad_request" and "OIDC" in info.value.message
    with pytest.raises(Refusal) as info:
        service._validated(dataclasses.replace(intent, service="S3"))
    assert info.value.reason == "unknown_service"
