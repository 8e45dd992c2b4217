"""Typed configuration: defaults, refusals with one BOOT_FAIL line, runbook anchors exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from api import config as cfg
from api.config import BootFailure, BrokerConfig
from tests.conftest import ROOT

RUNBOOK = (ROOT / "docs" / "operator-runbook.md").read_text()
HEADINGS = set(re.findall(r"^#{2,4} ([\w-]+)\s*$", RUNBOOK, flags=re.M))
ISSUER = {"BROKER_OIDC_ISSUER": "https://broker.test.invalid",
          "BROKER_DATA_ROLE_ARN": "arn:aws:iam::123456789012:role/agentkeys-data-role",
          "BROKER_S3_BUCKETS": "agentkeys-dev"}


def test_defaults_put_every_file_under_the_data_dir(tmp_path: Path) -> None:
    c = BrokerConfig.from_env({**ISSUER, "BROKER_DATA_DIR": str(tmp_path)})
    assert c.ledger_db == tmp_path / "ledger.sqlite"
    assert c.anchor_db == tmp_path / "anchor.sqlite"
    assert c.projections_db == tmp_path / "projections.sqlite"
    assert c.anchors == ("sqlite",)
    assert (c.ledger_batch_max, c.ledger_batch_max_wait_ms, c.dev_mode) == (256, 0, False)


def test_home_default(tmp_path: Path) -> None:
    c = BrokerConfig.from_env({**ISSUER, "HOME": str(tmp_path)})
    assert c.data_dir == tmp_path / ".agentkeys" / "broker" / "data"


@pytest.mark.parametrize(
    "env,line",
    [
        ({"BROKER_LEDGER_BATCH_MAX": "0"}, 'BOOT_FAIL: BROKER_LEDGER_BATCH_MAX="0": must be an integer in [1, 10000]; see '
                                           'runbook §ledger-batching'),
        ({"BROKER_LEDGER_BATCH_MAX": "abc"}, 'BOOT_FAIL: BROKER_LEDGER_BATCH_MAX="abc": must be an integer in [1, 10000]; see '
                                             'runbook §ledger-batching'),
        ({"BROKER_LEDGER_BATCH_MAX_WAIT_MS": "5000"}, 'BOOT_FAIL: BROKER_LEDGER_BATCH_MAX_WAIT_MS="5000": must be an integer in '
                                                      '[0, 1000]; see runbook §ledger-batching'),
        ({"BROKER_AUDIT_ANCHORS": "foo"}, "see runbook §audit-anchor-not-compiled"),
        ({"BROKER_AUDIT_ANCHORS": ","}, 'BOOT_FAIL: BROKER_AUDIT_ANCHORS=",": at least one audit anchor must be configured '
                                        '(default `sqlite`); see runbook §audit-anchor-empty'),
        ({"BROKER_DEV_MODE": "maybe"}, 'BOOT_FAIL: BROKER_DEV_MODE="maybe": must be true or false; see runbook §dev-mode'),
    ],
)
def test_bad_values_fail_boot_with_one_line(tmp_path: Path, env: dict, line: str) -> None:
    with pytest.raises(BootFailure) as info:
        BrokerConfig.from_env({**ISSUER, "BROKER_DATA_DIR": str(tmp_path), **env})
    text = str(info.value)
    assert "\n" not in text and line in text


def test_anchor_alias_evm_testnet_is_recognised_as_evm() -> None:
    assert cfg.ANCHOR_ALIASES["evm_testnet"] == "evm"


def test_anchor_file_must_differ_from_the_ledger(tmp_path: Path) -> None:
    c = BrokerConfig.from_env(
        {**ISSUER, "BROKER_DATA_DIR": str(tmp_path), "BROKER_SQLITE_ANCHOR_DB": str(tmp_path / "ledger.sqlite")}
    )
    with pytest.raises(BootFailure, match="sqlite-anchor-db"):
        c.check_paths()


def _boot_failure_anchors() -> set[str]:
    """The `anchor` argument (last positional) of every `BootFailure(...)` call in api/."""
    import ast

    found: set[str] = set()
    for path in (ROOT / "api").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "BootFailure" and node.args:
                last = node.args[-1]
                if isinstance(last, ast.Constant) and isinstance(last.value, str):
                    found.add(last.value)
    return found


def test_every_runbook_anchor_used_in_code_is_a_heading() -> None:
    used = {s.anchor for s in cfg.all_settings()} | _boot_failure_anchors()
    assert "audit-anchor-empty" in used  # the scan sees literal anchors
    missing = sorted(a for a in used if a not in HEADINGS)
    assert not missing, f"runbook lacks headings for: {missing}"


def test_readiness_check_anchors_are_headings() -> None:
    from api.readiness import Check

    for name in ("ledger", "anchor/sqlite", "projections"):
        anchor = Check(name, lambda: None).docs.split("#", 1)[1]  # type: ignore[arg-type, return-value]
        assert anchor in HEADINGS, anchor


def test_runbook_configuration_table_is_generated_from_the_settings() -> None:
    assert cfg.markdown_table() in RUNBOOK, "regenerate the table: python -m api.config"


@pytest.mark.parametrize(
    "env,anchor,fragment",
    [
        ({"BROKER_OIDC_ISSUER": "http://oidc.local"}, "oidc-issuer", "must be https:// in non-dev mode"),
        ({"BROKER_OIDC_ISSUER": ""}, "oidc-issuer", '"(unset)"'),
        ({"BROKER_AUTH_METHODS": "foo"}, "auth-method-not-compiled", "unknown or unavailable auth method"),
        ({"BROKER_AUTH_METHODS": ""}, "auth-method-empty", "at least one auth method"),
        ({"BROKER_AUTH_METHODS": ","}, "auth-method-empty", "at least one auth method"),
        ({"BROKER_AUTH_METHODS": " "}, "auth-method-empty", "at least one auth method"),
        ({"BROKER_AUTH_METHODS": "wallet_sig,foo"}, "auth-method-not-compiled", "'foo'"),
        ({"BROKER_AUDIT_POLICY": "nonsense"}, "audit-policy", "unknown BROKER_AUDIT_POLICY: nonsense (expected dual_strict | "
                                                              "sqlite_primary | evm_primary)"),
        ({"BROKER_AUDIT_POLICY": "evm_primary"}, "audit-policy", "needs the evm anchor"),
        ({"BROKER_SESSION_JWT_TTL_SECONDS": "59"}, "session-jwt-ttl", "[60, 86400]"),
        ({"BROKER_SIWE_CHAIN_IDS": "84532,abc"}, "siwe-chain-ids", "not a positive integer"),
        ({"BROKER_TRUSTED_PROXIES": "10.0.0.0/8,nope"}, "trusted-proxies", "not an IP address"),
        ({"BROKER_ANCHOR_DEADLINE_MS": "50"}, "anchor-deadline", "[100, 120000]"),
        ({"BROKER_READINESS_PROBE_INTERVAL_SECONDS": "0"}, "readiness-probes", "a number in [0.05, 60]"),
        ({"BROKER_READINESS_PROBE_INTERVAL_SECONDS": "nan"}, "readiness-probes", "a number in [0.05, 60]"),
        ({"BROKER_JOB_OUTCOME_SWEEP_SECONDS": "soon"}, "outcome-sweep", "a number in [0.1, 3600]"),
        ({"BROKER_SPILL_BYTES": "100"}, "spill", "[4096, 1073741824]"),
    ],
)
def test_seed_boot_failures(tmp_path: Path, env: dict, anchor: str, fragment: str) -> None:
    full = {**ISSUER, "BROKER_DATA_DIR": str(tmp_path), **env}
    with pytest.raises(BootFailure) as info:
        BrokerConfig.from_env(full)
    text = str(info.value)
    assert text.startswith("BOOT_FAIL: ") and text.endswith(f"; see runbook §{anchor}"), text
    assert fragment in text


def test_http_issuer_is_allowed_in_dev_mode(tmp_path: Path) -> None:
    c = BrokerConfig.from_env({**ISSUER, "BROKER_OIDC_ISSUER": "http://localhost:8080", "BROKER_DEV_MODE": "true",
                               "BROKER_DATA_DIR": str(tmp_path)})
    assert c.siwe_domain == "localhost:8080" and c.issuer == "http://localhost:8080"


def test_same_file_for_both_keypairs_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BootFailure, match="session-keypair"):
        BrokerConfig.from_env({**ISSUER, "BROKER_DATA_DIR": str(tmp_path), "BROKER_OIDC_KEYPAIR_PATH": "/k.json",
                               "BROKER_SESSION_KEYPAIR_PATH": "/k.json"})


def test_issue_12_defaults(tmp_path: Path) -> None:
    c = BrokerConfig.from_env({**ISSUER, "BROKER_DATA_DIR": str(tmp_path)})
    assert (c.readiness_probe_interval_s, c.job_outcome_sweep_s) == (2.0, 30.0)
    assert (c.spill_path, c.spill_bytes, c.min_free_bytes) == (tmp_path / "spill.journal", 1 << 20, 64 << 20)
