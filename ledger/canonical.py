"""Canonical JSON for ledger records: RFC 8785 (JCS) restricted to the value types events may hold.

Events hold only integers within +/-(2**53-1), strings, booleans, null, lists and objects with ASCII
keys (design section 2). For exactly that subset, msgspec's encoder with sorted keys produces the
RFC 8785 bytes: keys sorted by code unit (ASCII, so byte order equals UTF-16 order), no whitespace,
strings with only '"', '\\' and control characters escaped (`\\b \\t \\n \\f \\r`, else `\\u00xx`
lowercase), non-ASCII written as UTF-8. `tests/unit/ledger/test_canonical.py` proves the bytes
identical to the `rfc8785` reference implementation with generated values.

`validate()` rejects everything outside the subset so the fast encoder is never asked to encode
a value where it would differ from RFC 8785 (floats, huge integers, non-ASCII keys).
"""

from __future__ import annotations

from typing import Any

import msgspec

from .errors import InvalidEventError

MAX_SAFE_INTEGER = 2**53 - 1

_ENCODER = msgspec.json.Encoder(order="sorted")


def validate(value: Any, path: str = "$") -> None:
    """Raise `InvalidEventError` unless `value` is inside the canonical subset."""
    if value is None or value is True or value is False:
        return
    t = type(value)
    if t is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidEventError(f"{path}: string is not valid Unicode (lone surrogate)") from exc
        return
    if t is int:
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return
        raise InvalidEventError(f"{path}: integer {value} is outside +/-(2**53-1); encode it as a decimal string")
    if t is list or t is tuple:
        for i, item in enumerate(value):
            validate(item, f"{path}[{i}]")
        return
    if t is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise InvalidEventError(f"{path}: object key {key!r} is not a string")
            if not key.isascii():
                raise InvalidEventError(f"{path}: object key {key!r} is not ASCII")
            validate(item, f"{path}.{key}")
        return
    if t is float:
        raise InvalidEventError(f"{path}: floats are not allowed in ledger records")
    raise InvalidEventError(f"{path}: unsupported type {t.__name__}")


def canonical_bytes(value: Any) -> bytes:
    """RFC 8785 bytes of a value inside the canonical subset (validated)."""
    validate(value)
    return _ENCODER.encode(value)


def canonical_bytes_unchecked(value: Any) -> bytes:
    """Encode without validation. Only for values already validated, or for re-hashing records
    read back from storage or an export, where a value outside the subset simply produces a hash
    that cannot match (the record is then reported as modified)."""
    return _ENCODER.encode(value)
