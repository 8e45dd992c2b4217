"""Typed refusals raised by the use cases. `api/` maps each `reason` to `(kind, status)` in one
table; the core never names an HTTP status."""

from __future__ import annotations


class Refusal(Exception):
    """A use case declined a request. `reason` is the wire reason (design §4, §8), `message` is
    safe to show to the caller, `retry_after` (seconds) feeds the `Retry-After` header."""

    def __init__(self, reason: str, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, {self.message!r})"
