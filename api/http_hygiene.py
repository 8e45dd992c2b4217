"""HTTP hygiene applied to every request (issue 11): slow bodies are cut off, credential-bearing
responses are never cached.

- `BodyTimeoutMiddleware`: the request body must arrive completely within
  `BROKER_REQUEST_BODY_TIMEOUT_SECONDS` of the request's start. A client that sends its headers and
  part of a body and then stalls (or trickles) gets 408 `request_timeout` and its connection is
  closed, instead of holding a connection and a handler forever. The deadline wraps the ASGI
  `receive`, so it holds whichever handler reads the body; the error is raised inside the handler
  and mapped to HTTP by api/errors.py like any other.
- `no_store`: a `before_send` hook that adds `Cache-Control: no-store` to every `/v1/` response
  (sessions from sign-in, credentials from mint and exchange, proof bundles, errors alike), so no
  browser or intermediary cache keeps a session or a credential. One simple rule instead of a list
  of routes that would have to be kept in step with the API.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .errors import ApiError

V1_PREFIX = "/v1/"
NO_STORE = (b"cache-control", b"no-store")


class BodyTimeoutMiddleware:
    """Pure ASGI middleware: `receive` of an HTTP request body fails with 408 `request_timeout` once
    `timeout_s` have passed since the request started (headers received)."""

    def __init__(self, app: Any, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        body_done = False

        async def timed_receive() -> Any:
            nonlocal body_done
            if body_done:  # after the body, receive() only waits for a disconnect: no deadline
                return await receive()
            remaining = deadline - loop.time()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(remaining, 0.0))
            except TimeoutError:
                raise ApiError("request_timeout",
                               f"request timeout: the request body did not arrive within {self.timeout_s:g} s",
                               headers={"Connection": "close"}) from None
            if message.get("type") != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, timed_receive, send)


async def no_store(message: Any, scope: Any) -> None:
    """`before_send` hook: `Cache-Control: no-store` on every `/v1/` response."""
    if message.get("type") != "http.response.start" or scope.get("type") != "http":
        return
    if not str(scope.get("path", "")).startswith(V1_PREFIX):
        return
    headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"cache-control"]
    headers.append(NO_STORE)
    message["headers"] = headers
