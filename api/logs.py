"""One log format for the whole process (design §8 "Operator wire"; runbook §log-format).

- `BROKER_LOG_FORMAT=text` (default): `2026-12-01T18:00:00.123Z INFO agentkeys.access [rid] message`;
  `json`: one object per line with `ts`, `level`, `logger`, `request_id`, `msg` (+ `exc`).
- Every line carries a request id: the id of the HTTP request being handled (the client's
  `X-Request-Id` when it matches `^[A-Za-z0-9._:-]{1,128}$`, else a fresh one), `job:<name>` inside
  a scheduled job, `-` elsewhere. It follows the request into worker threads (context variables are
  copied by `asyncio.to_thread` and Litestar's `sync_to_thread`).
- `RequestIdMiddleware` sets the id, echoes it in the `X-Request-Id` response header, and writes
  one access line per request (`agentkeys.access`: method, path without the query, status, ms).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

from ledger.logcontext import NO_REQUEST, request_id_var

REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
access_log = logging.getLogger("agentkeys.access")


def new_request_id() -> str:
    return "req-" + secrets.token_hex(8)


def accepted_request_id(value: str | None) -> str:
    """The client's id when it is safe to log and echo, else a new one."""
    if value is not None and REQUEST_ID.match(value):
        return value
    return new_request_id()


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


def _ts(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_ts(record)} {record.levelname} {record.name} [{getattr(record, 'request_id', NO_REQUEST)}] " \
               f"{record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": _ts(record), "level": record.levelname, "logger": record.name,
                               "request_id": getattr(record, "request_id", NO_REQUEST), "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(level: str = "INFO", fmt: str = "text", stream: Any = None) -> logging.Handler:
    """Route every logger (the broker's, uvicorn's, libraries') through one handler on stderr."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # DEBUG is the broker's own (`agentkeys.*`): libraries stay at INFO or above, because botocore's
    # debug output holds whole STS responses, secret keys included.
    root.setLevel(max(logging.INFO, logging.getLevelName(level)))
    logging.getLogger("agentkeys").setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "apscheduler"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # the broker writes its own access line
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    return handler


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    """ASGI middleware (Litestar `middleware=[request_id_middleware]`)."""

    async def middleware(scope: Scope, receive: Callable[[], Awaitable[Message]],
                         send: Callable[[Message], Awaitable[None]]) -> None:
        if scope.get("type") != "http":
            await app(scope, receive, send)
            return
        raw = None
        for key, value in scope.get("headers") or ():
            if key == b"x-request-id":
                raw = value.decode("latin-1")
                break
        rid = accepted_request_id(raw)
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message.get("type") == "http.response.start":
                status = int(message.get("status", 500))
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode("ascii")))
                message["headers"] = headers
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            ms = (time.perf_counter() - started) * 1000
            access_log.info("%s %s %d %.1fms", scope.get("method", "-"), scope.get("path", "-"), status, ms)
            request_id_var.reset(token)

    return middleware
