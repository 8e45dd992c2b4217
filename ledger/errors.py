"""The ledger's error hierarchy. Every error the core raises derives from `LedgerError`;
`api/errors.py` maps them to HTTP in one place."""

from __future__ import annotations


class LedgerError(Exception):
    """Root of every error raised by the ledger core."""


class InvalidEventError(LedgerError):
    """An event cannot enter the ledger: a float, an integer beyond +/-(2**53-1), a non-ASCII
    object key, an unregistered type, or a field of the wrong type."""


class ConcurrencyConflict(LedgerError):
    """An append lost an optimistic-concurrency race: the stream was not at the expected
    version. Only this append failed; the rest of its group-commit batch committed."""

    def __init__(self, stream: object, expected_version: int, detail: str = "") -> None:
        self.stream = stream
        self.expected_version = expected_version
        super().__init__(
            f"stream {stream} is not at version {expected_version}" + (f": {detail}" if detail else "")
        )


class LedgerUnavailable(LedgerError):
    """The ledger database could not be written (I/O error, lock timeout, closed ledger).
    Nothing from the failed batch is committed."""


class ChainCorrupted(LedgerError):
    """The stored chain head does not match the stored records (found at open)."""


class AnchorError(LedgerError):
    """Base for errors an anchor implementation raises through the `Anchor` port."""


class AnchorUnavailable(AnchorError):
    """The anchor's backing store cannot be reached or written."""


class AnchorConflict(AnchorError):
    """The anchor already holds a different hash for a seq it is asked to confirm."""


class CommandError(Exception):
    """An expected failure of a command-line command: printed as one line on stderr, exit `code`
    (2 = usage or I/O error, 1 = the check ran and failed). Defined here, the innermost package, so
    every package's commands can raise it without importing the CLI edge."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code
