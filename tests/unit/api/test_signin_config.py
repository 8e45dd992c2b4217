"""Settings of `email_link` and `oauth2_google` (seed-spec §F.1, §H 94, 95)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from api.config import BootFailure, BrokerConfig

ISSUER = {"BROKER_OIDC_ISSUER": "https://broker.test.invalid",
          "BROKER_DATA_ROLE_ARN": "arn:aws:iam::123456789012:role/agentkeys-data-role",
          "BROKER_S3_BUCKETS": "agentkeys-dev"}


def private(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    path.chmod(0o600)
    return str(path)


def email(tmp_path: Path, **env: str) -> dict[str, str]:
    return {**ISSUER, "BROKER_DATA_DIR": str(tmp_path), "BROKER_AUTH_METHODS": "email_link",
            "BROKER_EMAIL_HMAC_KEY_PATH": private(tmp_path / "k", os.urandom(32)),
            "BROKER_EMAIL_FROM_ADDRESS": "noreply@example.com", **env}


def google(tmp_path: Path, **env: str) -> dict[str, str]:
    return {**ISSUER, "BROKER_DATA_DIR": str(tmp_path), "BROKER_AUTH_METHODS": "oauth2_google",
            "BROKER_OAUTH2_GOOGLE_CLIENT_ID": "cid",
            "BROKER_OAUTH2_GOOGLE_CLIENT_SECRET_FILE": private(tmp_path / "s", b"secret\n"),
            "BROKER_OAUTH2_STATE_HMAC_KEY_PATH": private(tmp_path / "st", os.urandom(32)),
            "BROKER_OAUTH2_REDIRECT_URI": "https://broker.test.invalid/auth/oauth2/callback", **env}


def fails(env: dict[str, str]) -> str:
    with pytest.raises(BootFailure) as info:
        BrokerConfig.from_env(env)
    return str(info.value)


def test_email_hmac_key_unset_is_boot_fail(tmp_path: Path) -> None:
    env = email(tmp_path)
    del env["BROKER_EMAIL_HMAC_KEY_PATH"]
    text = fails(env)
    assert text.startswith('BOOT_FAIL: BROKER_EMAIL_HMAC_KEY_PATH="(unset)"') and text.endswith("§email-hmac-key")


def test_short_email_hmac_key_is_boot_fail(tmp_path: Path) -> None:
    text = fails(email(tmp_path, BROKER_EMAIL_HMAC_KEY_PATH=private(tmp_path / "short", b"x" * 16)))
    assert text.endswith("§email-link-construct") and "16 bytes" in text


def test_group_readable_email_key_is_boot_fail(tmp_path: Path) -> None:
    env = email(tmp_path)
    Path(env["BROKER_EMAIL_HMAC_KEY_PATH"]).chmod(0o644)
    assert fails(env).endswith("§email-hmac-key")


def test_print_sender_needs_dev_mode(tmp_path: Path) -> None:
    assert fails(email(tmp_path, BROKER_EMAIL_SENDER="print")).endswith("§email-sender")
    c = BrokerConfig.from_env(email(tmp_path, BROKER_EMAIL_SENDER="print", BROKER_DEV_MODE="true"))
    assert c.email_link.sender == "print"


def test_smtp_sender_needs_a_url_and_hides_its_password(tmp_path: Path) -> None:
    assert fails(email(tmp_path, BROKER_EMAIL_SENDER="smtp")).endswith("§smtp-url")
    text = fails(email(tmp_path, BROKER_EMAIL_SENDER="smtp", BROKER_SMTP_URL="ftp://u:hunter2@mail.example.com"))
    assert "hunter2" not in text and text.endswith("§smtp-url")
    c = BrokerConfig.from_env(email(tmp_path, BROKER_EMAIL_SENDER="smtp",
                                    BROKER_SMTP_URL="smtp+starttls://u%40x:p%3Aw@mail.example.com"))
    smtp = c.email_link.smtp
    assert (smtp.host, smtp.port, smtp.tls, smtp.username, smtp.password) == ("mail.example.com", 587, "starttls",
                                                                             "u@x", "p:w")
    assert "p:w" not in repr(c)


def test_ses_needs_a_from_address(tmp_path: Path) -> None:
    env = email(tmp_path)
    del env["BROKER_EMAIL_FROM_ADDRESS"]
    assert fails(env).endswith("§email-from-address")


def test_unknown_sender_is_boot_fail(tmp_path: Path) -> None:
    assert fails(email(tmp_path, BROKER_EMAIL_SENDER="pigeon")).endswith("§email-sender")


def test_email_settings_are_ignored_when_the_method_is_off(tmp_path: Path) -> None:
    c = BrokerConfig.from_env({**ISSUER, "BROKER_DATA_DIR": str(tmp_path), "BROKER_EMAIL_SENDER": "pigeon"})
    assert c.email_link is None and c.oauth2_google is None


def test_empty_client_secret_file_is_boot_fail(tmp_path: Path) -> None:
    text = fails(google(tmp_path, BROKER_OAUTH2_GOOGLE_CLIENT_SECRET_FILE=private(tmp_path / "e", b"  \n")))
    assert "client secret file is empty after trim" in text and text.endswith("§oauth2-google-client-secret-file")


@pytest.mark.parametrize("var,anchor", [
    ("BROKER_OAUTH2_GOOGLE_CLIENT_ID", "oauth2-google-client-id"),
    ("BROKER_OAUTH2_STATE_HMAC_KEY_PATH", "oauth2-state-hmac-key"),
    ("BROKER_OAUTH2_REDIRECT_URI", "oauth2-redirect-uri"),
])
def test_missing_oauth2_setting_is_boot_fail(tmp_path: Path, var: str, anchor: str) -> None:
    env = google(tmp_path)
    del env[var]
    assert fails(env).endswith(f"§{anchor}")


def test_http_discovery_only_on_loopback_or_in_dev_mode(tmp_path: Path) -> None:
    assert fails(google(tmp_path, BROKER_OAUTH2_GOOGLE_DISCOVERY_URL="http://idp.example/.well-known/x")) \
        .endswith("§oauth2-discovery-url")
    c = BrokerConfig.from_env(google(tmp_path, BROKER_OAUTH2_GOOGLE_DISCOVERY_URL="http://127.0.0.1:9/x"))
    assert c.oauth2_google.discovery_url == "http://127.0.0.1:9/x"
    c = BrokerConfig.from_env(google(tmp_path))
    assert c.oauth2_google.discovery_url == "https://accounts.google.com/.well-known/openid-configuration"
    assert c.oauth2_google.client_secret == "secret" and "secret" not in repr(c.oauth2_google)
