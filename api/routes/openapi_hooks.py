"""OpenAPI details Litestar's `ResponseSpec` cannot express, added per operation."""

from __future__ import annotations

from litestar.openapi.spec import Operation

RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}}


class RetryAfterOperation(Operation):
    """Declares the `Retry-After` header on the operation's 429 response."""

    def to_schema(self) -> dict:
        out = super().to_schema()
        limited = out.get("responses", {}).get("429")
        if isinstance(limited, dict):
            limited["headers"] = {**limited.get("headers", {}), **RETRY_AFTER}
        return out


class NoAutoValidationErrorOperation(Operation):
    """Drops the 400 Litestar declares for any handler with parameters, for routes where a bad path
    parameter never reaches the handler (a typed path segment that does not match is 404)."""

    def to_schema(self) -> dict:
        out = super().to_schema()
        out.get("responses", {}).pop("400", None)
        return out
