"""Golden files pin record format v1 byte for byte (docs/ledger-format.md).

`tests/golden/records-v1.jsonl` is the export of a small fixed ledger (fixed `at`, fixed stream
UUIDs; data with non-ASCII text, escapes, an empty string, nested objects and lists, null, booleans,
the largest safe integers). `tests/golden/records-v1.canonical` holds, one per line, the exact
canonical envelope bytes of each record (raw UTF-8; canonical JSON never contains a raw newline, so
split on b"\\n" only: U+2028 appears raw). A change of the encoder, the envelope, the domain tag,
the hash rule, the export format or the writer fails here. Such a change is a new format version:
do not regenerate these files for v1.

Regenerate (only when introducing a new format, under a new name):
    .venv/bin/python -m tests.unit.ledger.test_golden --regenerate
"""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import rfc8785

from ledger import audit
from ledger.canonical import canonical_bytes
from ledger.chain import GENESIS, recompute_hash
from ledger.events import Event

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = ROOT / "tests" / "golden"
JSONL = GOLDEN / "records-v1.jsonl"
CANONICAL = GOLDEN / "records-v1.canonical"

# The chain head of the golden ledger: a second lock besides the files themselves.
GOLDEN_HEAD_SEQ = 4
GOLDEN_HEAD_HASH = "83c301623edd1cc6bff6ed48952576d5a21980dc50b5ca47465df0fd6a995639"

STREAM_A = uuid.UUID("0b8f3c1e-1111-4d2e-9a55-7d4e0c2b9f10")
STREAM_B = uuid.UUID("f00dcafe-2222-4abc-8def-0123456789ab")
TIMES = [
    datetime(2026, 11, 29, 5, 0, 0, 0, tzinfo=UTC),
    datetime(2026, 11, 29, 5, 0, 0, 123456, tzinfo=UTC),
    datetime(2026, 11, 29, 5, 0, 2, 500000, tzinfo=UTC),
]


class AuditGoldenSample(Event, frozen=True, kw_only=True):
    """Test-only event: every kind of value a record may hold."""

    note: str
    empty: str
    nested: dict[str, Any]
    nothing: None = None
    big: int
    negative: int
    flag: bool
    wei: str


class AuditGoldenNote(Event, frozen=True, kw_only=True):
    """Test-only event: a second type, two of them in one append (same `at`)."""

    text: str


SAMPLE_1 = AuditGoldenSample(
    note='naïve café — 日本語 🔑 "quoted" back\\slash tab\t newline\n line-sep\u2028 bell\u0007 del\u007f',
    empty="",
    nested={"b": {"z": [1, -2, None, True, False, "x"], "a": {}}, "A": [], "_": "u", "a": {"k": "é"}},
    nothing=None,
    big=2**53 - 1,
    negative=-(2**53 - 1),
    flag=True,
    wei="1000000000000000000000",
)
SAMPLE_2 = AuditGoldenSample(
    note="second", empty="", nested={}, nothing=None, big=0, negative=-1, flag=False, wei="0"
)


def build_golden_ledger(path: Path) -> list[dict[str, Any]]:
    """The fixed ledger: 4 records, 2 streams, 2 types; returns the records the writer returned."""
    from ledger.app import Ledger
    from ledger.config import LedgerConfig

    times = iter(TIMES)
    with Ledger(LedgerConfig(path), clock=lambda: next(times)) as led:
        out = led.append(STREAM_A, 0, [SAMPLE_1])
        out += led.append(STREAM_B, 0, [AuditGoldenNote(text="first"), AuditGoldenNote(text="")])
        out += led.append(STREAM_A, 1, [SAMPLE_2])
    return [r.export_object() for r in out]


def golden_lines() -> list[bytes]:
    lines = JSONL.read_bytes().split(b"\n")
    assert lines[-1] == b""
    return lines[:-1]


def golden_records() -> list[dict[str, Any]]:
    return [msgspec.json.decode(line) for line in golden_lines()[1:]]


def golden_canonical() -> list[bytes]:
    lines = CANONICAL.read_bytes().split(b"\n")
    assert lines[-1] == b""
    return lines[:-1]


def envelope(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "hash"}


# --- tests ---------------------------------------------------------------------------------------


def test_golden_header() -> None:
    header = json.loads(golden_lines()[0])
    assert header == {
        "format": "agentkeys-ledger",
        "v": 1,
        "records": GOLDEN_HEAD_SEQ,
        "head": {"seq": GOLDEN_HEAD_SEQ, "hash": GOLDEN_HEAD_HASH},
    }


def test_golden_data_covers_every_value_kind() -> None:
    text = JSONL.read_text(encoding="utf-8")
    for needle in ("日本語", "🔑", '\\"quoted\\"', "\\\\slash", "\\t", "\\n", "\u2028", "\\u0007", "\u007f", '"empty":""',
                   '"nothing":null', str(2**53 - 1), str(-(2**53 - 1)), '"flag":true', '"A":[]', '"a":{}'):
        assert needle in text, needle


def test_canonical_bytes_and_hashes_are_pinned() -> None:
    records = golden_records()
    canonical = golden_canonical()
    assert len(records) == len(canonical) == GOLDEN_HEAD_SEQ
    prev = GENESIS
    for seq, (record, pinned) in enumerate(zip(records, canonical, strict=False), start=1):
        env = envelope(record)
        assert (record["seq"], record["v"], record["prev"]) == (seq, 1, prev)
        assert canonical_bytes(env) == pinned
        assert recompute_hash(env) == record["hash"]
        prev = record["hash"]
    assert prev == GOLDEN_HEAD_HASH


def test_cross_check_with_rfc8785_and_hashlib() -> None:
    """Independent of the project's encoder and chain module: the reference RFC 8785
    implementation and a literal domain tag."""
    for record, pinned in zip(golden_records(), golden_canonical(), strict=False):
        env = envelope(record)
        assert rfc8785.dumps(env) == pinned
        assert hashlib.sha256(b"agentkeys.ledger.v1\x00" + pinned).hexdigest() == record["hash"]


def test_export_lines_are_sorted_canonical_json_with_the_hash() -> None:
    for line, record in zip(golden_lines()[1:], golden_records(), strict=False):
        assert line == rfc8785.dumps(record)


def test_the_golden_export_verifies() -> None:
    report = audit.verify_export(JSONL)
    assert report.valid
    assert (report.records, report.head_seq, report.head_hash) == (GOLDEN_HEAD_SEQ, GOLDEN_HEAD_SEQ, GOLDEN_HEAD_HASH)


def test_the_writer_and_the_exporter_reproduce_the_golden_file(tmp_path: Path) -> None:
    records = build_golden_ledger(tmp_path / "golden.sqlite")
    assert records == golden_records()
    audit.export_ledger(tmp_path / "golden.sqlite", tmp_path / "golden.jsonl")
    assert (tmp_path / "golden.jsonl").read_bytes() == JSONL.read_bytes()


def test_the_worked_example_in_the_format_document_is_the_golden_record() -> None:
    doc = (ROOT / "docs" / "ledger-format.md").read_text(encoding="utf-8")
    record = golden_records()[1]
    assert golden_canonical()[1].decode() in doc
    assert record["hash"] in doc


# --- regeneration --------------------------------------------------------------------------------


def regenerate() -> None:  # pragma: no cover - a deliberate, manual act
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "golden.sqlite"
        records = build_golden_ledger(db)
        audit.export_ledger(db, JSONL)
    CANONICAL.write_bytes(b"".join(canonical_bytes(envelope(r)) + b"\n" for r in records))
    print(f"head seq {records[-1]['seq']} hash {records[-1]['hash']}")


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] == ["--regenerate"]:
        regenerate()
    else:
        print(__doc__)
