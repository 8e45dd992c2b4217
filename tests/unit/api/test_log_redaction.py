"""The log scrubber (api/log_redaction.py): each kind of secret, in the shapes loggers print it."""

from __future__ import annotations

import logging

import pytest

from api import log_redaction
from api.log_redaction import REDACTED, scrub

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEJr//////////wEaDH+abc/def=="
JWT = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXBhcnQtb2YtdGhlLWp3dA"


@pytest.mark.parametrize("text", [
    f"Response body:\nb'<Credentials><SecretAccessKey>{SECRET}</SecretAccessKey><SessionToken>{TOKEN}</SessionToken>'",
    f"parsed: {{'SecretAccessKey': '{SECRET}', 'SessionToken': '{TOKEN}'}}",
    f'{{"secret_access_key": "{SECRET}", "session_token": "{TOKEN}"}}',
    f"aws_secret_access_key={SECRET} aws_session_token={TOKEN}",
    f"headers: {{'X-Amz-Security-Token': b'{TOKEN}', 'X-Amz-Date': b'20261201T000000Z'}} {SECRET}=secret_access_key:{SECRET}",
    f"CanonicalRequest:\nPOST\n/\n\nhost:sts.amazonaws.com\nx-amz-security-token:{TOKEN}\n",
])
def test_sts_secrets_in_botocore_shapes_are_scrubbed(text: str) -> None:
    clean = scrub(text)
    assert TOKEN not in clean and f"{SECRET}<" not in clean and f"'{SECRET}'" not in clean
    assert f'"{SECRET}"' not in clean and f"={SECRET} " not in clean and f":{SECRET}" not in clean
    assert REDACTED in clean


def test_jwts_and_bearer_tokens_are_scrubbed() -> None:
    clean = scrub(f"Authorization: Bearer {JWT}; also {JWT} and 'authorization': 'Bearer opaque-legacy-token_123'")
    assert JWT not in clean and "c2lnbmF0dXJl" not in clean and "opaque-legacy-token_123" not in clean


def test_private_keys_are_scrubbed() -> None:
    pem = (
        "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIrYSSNQFaA2Hwf1duRSxKtLYX5CB04fSeQ6tF1aY/PuoAoGCCqGSM49\n"
        "-----END EC PRIVATE KEY-----"
    )
    jwk = '{"kty": "EC", "crv": "P-256", "x": "pubx", "y": "puby", "d": "cHJpdmF0ZS1zY2FsYXI"}'
    clean = scrub(f"key file {jwk} pem {pem} private_key=0x{'ab' * 32} password: hunter2hunter2")
    for secret in ("MHcCAQEEII", "cHJpdmF0ZS1zY2FsYXI", "ab" * 32, "hunter2hunter2"):
        assert secret not in clean
    assert '"x": "pubx"' in clean  # public parts stay readable


def test_ordinary_lines_are_left_alone() -> None:
    line = ("mint released seq=42 hash=" + "a" * 64 + " wallet=0x" + "b" * 40 + " access_key_id=ASIAEXAMPLE "
            "password_file=/etc/broker/pw tx 0x" + "c" * 64)
    assert scrub(line) == line


def test_installed_factory_scrubs_args_exceptions_and_every_logger(caplog: pytest.LogCaptureFixture) -> None:
    log_redaction.install()
    log_redaction.install()  # idempotent
    assert log_redaction.installed()
    caplog.set_level(logging.DEBUG)
    logging.getLogger("botocore.parsers").debug("Response body:\n%r", f"<SecretAccessKey>{SECRET}</SecretAccessKey>".encode())
    try:
        raise ValueError(f"bad token Bearer {JWT}")
    except ValueError:
        logging.getLogger("agentkeys.test").exception("failed for %s", {"session_token": TOKEN})
    text = caplog.text + "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert SECRET not in text and TOKEN not in text and JWT not in text
    assert "Traceback" in text and "ValueError" in text  # the exception is still there, scrubbed
