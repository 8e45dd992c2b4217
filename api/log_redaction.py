"""No secret in any log line, at any level (issue 11).

`install()` wraps the process's `LogRecord` factory, so every record any logger creates (the broker's,
uvicorn's, botocore's DEBUG wire logging, urllib3, eventsourcing...) is scrubbed once, before any
handler or formatter sees it, whatever handlers are configured later and whether or not the record
propagates. The factory runs only for records that pass their logger's level, so a quiet logger
costs nothing.

What is scrubbed (values replaced by `[redacted]`, labels kept so that the line stays useful):
- STS credentials: `<SecretAccessKey>`/`<SessionToken>` XML elements (botocore logs raw response
  bodies at DEBUG) and labelled values such as `"SecretAccessKey": "..."`, `secret_access_key=...`,
  `x-amz-security-token: ...` (request headers and the SigV4 canonical request);
- session JWTs and any other JWT (`eyJ...`.`...`.`...`), bearer tokens (`Bearer ...`);
- private keys: PEM blocks, JWK private parts (`"d": "..."`), labelled `private_key`/`password`/
  `client_secret`/`*_token` values.

Messages are rendered (`msg % args`) before they are scrubbed; a record whose text changed carries
the scrubbed text as its `msg` with no `args`. A record's exception text is rendered and scrubbed
into `exc_text` (formatters use it as is) and `stack_info` is scrubbed too.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any

REDACTED = "[redacted]"

_LABELS = (
    "SecretAccessKey", "SessionToken", "SecurityToken", "secret_access_key", "session_token",
    "aws_secret_access_key", "aws_session_token", "x-amz-security-token", "private_key", "privateKey",
    "password", "passphrase", "client_secret", "session_jwt", "poll_token", "operator_token", "access_token",
    "id_token", "refresh_token",
)

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # PEM private keys (whole block)
    (re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S),
     "[redacted private key]"),
    # XML elements of an STS response body
    (re.compile(r"<(SecretAccessKey|SessionToken|SecurityToken)>[^<]*(</\1>)?"), r"<\1>" + REDACTED + r"\2"),
    # JWTs (session JWTs, OIDC tokens): three base64url parts, the first a JSON header
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[redacted jwt]"),
    # bearer credentials in Authorization headers, however they are quoted
    (re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/=-]+"), r"\1\2" + REDACTED),
    # labelled values: `label: value`, `"label": "value"`, `label=value`, `'label': b'value'`
    (re.compile(r"(?i)([\"']?\b(?:" + "|".join(re.escape(label) for label in _LABELS) + r")\b[\"']?\s*[:=]\s*"
                r"(?:b?[\"'])?)([^\"'\s,;}<>&)\]]+)"), r"\1" + REDACTED),
    # JWK private parts: "d", "p", "q", "dp", "dq", "qi" members of a key object
    (re.compile(r"([\"'](?:d|p|q|dp|dq|qi)[\"']\s*:\s*[\"'])[^\"']+"), r"\1" + REDACTED),
)


def scrub(text: str) -> str:
    """`text` with every secret value this module recognises replaced."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def scrub_record(record: logging.LogRecord) -> None:
    """Scrub one record in place (message, exception text, stack)."""
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: logging reports it itself; keep nothing unscrubbed
        message = str(record.msg)
        record.args = None
    clean = scrub(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = scrub(record.exc_text)
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)


class RedactingFilter(logging.Filter):
    """The same scrubbing as a filter, for a handler that should scrub records made elsewhere
    (e.g. by `logging.makeLogRecord`); `install()` does not need it."""

    def filter(self, record: logging.LogRecord) -> bool:
        scrub_record(record)
        return True


_lock = threading.Lock()
_installed: list[Callable[..., logging.LogRecord]] = []


def install() -> None:
    """Scrub every log record this process creates from now on. Idempotent; call it at each entry
    point (CLI `main`, `create_app`) before anything logs."""
    with _lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            scrub_record(record)
            return record

        factory.agentkeys_redaction = True  # type: ignore[attr-defined]  # marks the installed factory
        logging.setLogRecordFactory(factory)
        _installed.append(factory)


def installed() -> bool:
    return bool(getattr(logging.getLogRecordFactory(), "agentkeys_redaction", False))
