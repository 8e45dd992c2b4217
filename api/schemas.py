"""Wire schemas (msgspec Structs). These are never ledger events."""

from __future__ import annotations

import msgspec


class ErrorBody(msgspec.Struct):
    error: str
    message: str
    reason: str | None = None


class ReadinessCheck(msgspec.Struct):
    name: str
    status: str
    reason: str
    docs: str


class ReadinessBody(msgspec.Struct):
    status: str
    degraded: bool
    checks: list[ReadinessCheck]
    ready: list[str]


class AnchorPosition(msgspec.Struct):
    confirmed_seq: int


class AuditHead(msgspec.Struct):
    seq: int
    hash: str
    anchors: dict[str, AnchorPosition]
