"""The correlation id on every log line (api/logs.py formats it): the HTTP request being handled,
`job:<name>` inside a scheduled job, `-` elsewhere. A context variable, so it follows a request into
`asyncio.to_thread` and Litestar's `sync_to_thread` workers. Kept in the core (stdlib only) so that
every edge (api, workers) sets the same variable."""

from __future__ import annotations

import contextvars

NO_REQUEST = "-"

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("agentkeys_request_id", default=NO_REQUEST)
