"""Errors raised by the projection machinery. Every one derives from `ProjectionError`."""

from __future__ import annotations


class ProjectionError(Exception):
    """Root of every error raised by `projections`."""


class UnknownProjection(ProjectionError, KeyError):
    """A projection name that no registered projection has."""

    def __init__(self, name: str, known: list[str] | tuple[str, ...] = ()) -> None:
        self.name = name
        self.known = tuple(known)
        super().__init__(
            f"unknown projection {name!r}" + (f" (known: {', '.join(self.known)})" if self.known else "")
        )

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UndecodableRecord(ProjectionError):
    """A record whose type is a known event class but whose data does not decode to it. The
    projection stops at this record (it is never skipped): its position does not advance and
    its lag grows until the code is fixed."""

    def __init__(self, seq: int, type_name: str, detail: str) -> None:
        self.seq = seq
        self.type_name = type_name
        super().__init__(f"record seq {seq} ({type_name}) cannot be decoded: {detail}")


class ProjectionFailed(ProjectionError):
    """Applying records to a projection failed; its transaction was rolled back, so neither rows
    nor position of the failed batch were committed. `applied` counts the records applied (by any
    projection) before the failure during the same catch-up."""

    def __init__(self, name: str, cause: BaseException, applied: int = 0) -> None:
        self.name = name
        self.cause = cause
        self.applied = applied
        super().__init__(f"projection {name!r} failed: {cause}")
