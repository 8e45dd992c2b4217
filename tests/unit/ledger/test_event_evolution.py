"""Events evolve safely (design §8 "Evolving events"; docs/events.md).

`tests/golden/events-v1.jsonl` holds records of real event types as the broker wrote them before
any event gained a field: a `GrantCreated` with its signed `audit_proof` (session key below) and a
`MintDenied` with a null optional field. Whatever fields are added later, these records must keep
decoding into today's classes, re-encoding to the same `data`, re-hashing to the same hash, chaining
and verifying; and the old grant's proof must still verify against the content the current code
derives from it. Do not regenerate the file: it is history.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import msgspec

from api.keys import public_key_from_jwk
from api.signing import verify_audit_proof
from ledger import audit
from ledger.chain import GENESIS, recompute_hash
from ledger.events import Event, GrantCreated, decode_event
from ledger.services.grants import grant_content

ROOT = Path(__file__).resolve().parents[3]
RECORDS = ROOT / "tests" / "golden" / "events-v1.jsonl"

# The public half of the session key that signed the old grant (as its `SigningKeyRotated` said).
SESSION_JWK = {"kty": "EC", "crv": "P-256", "x": "Flj0yt6DAlf47jOOKTv_21nxHCQLCL3wNmM4RpVaUac",
               "y": "ZVdkM81-ajZ4fRs3URjJwHLT6Xedmxq7gtNSWpddDlQ", "kid": "ak-session-1796147731-27e9",
               "alg": "ES256", "use": "sig"}


def old_records() -> list[dict]:
    return [json.loads(line) for line in RECORDS.read_text().splitlines()[1:] if line]  # after the header


def envelope(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "hash"}


def test_old_records_decode_reencode_and_rehash_unchanged() -> None:
    prev = GENESIS
    for record in old_records():
        event = decode_event(record["type"], record["data"])
        assert event.to_data() == record["data"], record["type"]
        assert recompute_hash(envelope(record)) == record["hash"]
        assert record["prev"] == prev
        prev = record["hash"]


def test_old_records_pass_the_offline_auditor() -> None:
    report = audit.verify_export(RECORDS)
    assert report.valid, report.findings
    assert report.records == 2


def test_an_old_grant_proof_still_verifies_against_the_content_derived_today() -> None:
    [record] = [r for r in old_records() if r["type"] == "GrantCreated"]
    event = decode_event("GrantCreated", record["data"])
    assert isinstance(event, GrantCreated)
    signed = verify_audit_proof(event.audit_proof, public_key_from_jwk(SESSION_JWK))
    assert signed == grant_content(event)


class _GrantV1(Event, frozen=True, kw_only=True):
    """Test-only: an event as first written."""

    grant_id: str
    service: str


class _GrantV2(Event, frozen=True, kw_only=True):
    """Test-only: the same event after the rule's kind of change, an optional added field."""

    ADDED_FIELDS: ClassVar[tuple[str, ...]] = ("agent_id",)

    grant_id: str
    service: str
    agent_id: str | None = None


def test_an_added_optional_field_is_omitted_while_null_so_old_bytes_stay_old() -> None:
    old = _GrantV1(grant_id="g", service="s3").to_data()
    evolved = msgspec.convert(old, _GrantV2)
    assert evolved.agent_id is None
    assert evolved.to_data() == old                      # same data, so the same hash and signed content
    assert _GrantV2(grant_id="g", service="s3", agent_id="a1").to_data() == {**old, "agent_id": "a1"}
