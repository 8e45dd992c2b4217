"""Scope paths (`<bucket>[/<prefix>]`): parsing and normalisation, shared by the use cases
(grants, mints) and the STS adapter's session policies (`api/session_policy.py` documents the
syntax). Pure: no I/O."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from .ports import StsError

MAX_SCOPE_PATH_CHARS = 1024
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class ScopeError(StsError, ValueError):
    """A mint request's `scope_path` cannot be turned into a session policy: a client error (answer
    400), raised before any call to AWS. It is also a `StsError` (code `InvalidScope`), so a caller
    that only catches `StsError` still records and refuses the mint instead of failing with 500."""

    def __init__(self, message: str) -> None:
        super().__init__("InvalidScope", message)



@dataclass(frozen=True, slots=True)
class Scope:
    """A parsed scope path: `bucket` and `prefix` (`""` or ending in `/`)."""

    bucket: str
    prefix: str

    @property
    def scope_path(self) -> str:
        return f"{self.bucket}/{self.prefix}"

    def values(self) -> dict[str, str]:
        return {"scope_path": self.scope_path, "bucket": self.bucket, "prefix": self.prefix}


def parse_scope(scope_path: str, service: str = "s3") -> Scope:
    """Parse and check `<bucket>[/<prefix>]`; `ScopeError` says what is wrong."""
    if not isinstance(scope_path, str) or scope_path == "":
        raise ScopeError(f"scope_path is required for service {service!r} (format <bucket>[/<prefix>])")
    if len(scope_path) > MAX_SCOPE_PATH_CHARS:
        raise ScopeError(f"scope_path is longer than {MAX_SCOPE_PATH_CHARS} characters")
    for ch in scope_path:
        if ch in "*?$":
            raise ScopeError(f"scope_path must not contain {ch!r} (wildcards and policy variables are not allowed)")
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            raise ScopeError("scope_path must not contain control or unassigned characters")
    if ".." in scope_path:
        raise ScopeError("scope_path must not contain '..'")
    if scope_path.startswith("/"):
        raise ScopeError("scope_path must start with a bucket name, not '/'")
    bucket, _, rest = scope_path.partition("/")
    if "//" in scope_path:
        raise ScopeError("scope_path must not contain an empty segment ('//')")
    if service == "s3" and not _valid_bucket(bucket):
        raise ScopeError(f"scope_path bucket {bucket!r} is not a valid S3 bucket name")
    prefix = rest if rest == "" or rest.endswith("/") else rest + "/"
    return Scope(bucket, prefix)


def _valid_bucket(name: str) -> bool:
    return bool(_BUCKET.match(name)) and ".." not in name and not re.fullmatch(r"\d+\.\d+\.\d+\.\d+", name)
