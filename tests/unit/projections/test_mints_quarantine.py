"""The `mints` and `quarantine` read models: statuses, cases with history, and a rebuild equal
to the incremental build (each projection on its own)."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import pytest

from ledger.aggregates import MintRequest, QuarantineCase
from ledger.events import (
    MintAuthorized,
    MintDenied,
    MintQuarantined,
    MintRequested,
    MintUnreleased,
    MintWithheld,
    QuarantineResolved,
    ReleaseUnconfirmed,
    RoleSessionsRevoked,
)
from projections.db import open_engine
from projections.mints import MintsProjection, get_mint, recent_mints, status_counts, with_anchor_status
from projections.quarantine import QuarantineProjection, get_case, list_cases, open_count
from projections.runner import ProjectionRunner

from .helpers import table_rows

ROLE = "arn:aws:iam::123456789012:role/agentkeys-data-role"


@pytest.fixture
def engine(tmp_path: Path):
    eng = open_engine(tmp_path / "projections.sqlite")
    yield eng
    eng.dispose()


def _requested(wallet: str, rid: str) -> MintRequested:
    return MintRequested(request_id=rid, request_digest="d" * 64, omni_account="o" * 64, identity_type="evm",
                         identity_value=wallet, wallet=wallet, agent_id="agent-1", service="s3",
                         scope_path="bucket/o/agents/", grant_id="g-1", session_jti="j")


def _authorized(wallet: str, rid: str, key: str) -> MintAuthorized:
    return MintAuthorized(request_id=rid, request_digest="d" * 64, omni_account="o" * 64, wallet=wallet,
                          agent_id="agent-1", service="s3", scope_path="bucket/o/agents/", grant_id="g-1",
                          role_arn=ROLE, sts_session_name=f"agentkeys-{wallet[2:]}-1", access_key_id=key,
                          expiration=2_000_000_000)


def populate(ledger, rng: random.Random, n: int) -> dict[str, str]:
    """n mints with every outcome this build records; returns wallet:request_id -> expected status."""
    expected: dict[str, str] = {}
    for i in range(n):
        wallet = f"0x{rng.getrandbits(160):040x}"
        rid = f"req-{i}"
        stream = MintRequest.stream_for(wallet, rid)
        outcome = rng.choice(["denied", "requested", "released", "withheld", "quarantined", "accepted",
                              "revoked", "reanchoring", "reanchored", "unreleased", "unconfirmed"])
        if outcome == "denied":
            ledger.append(uuid.uuid4(), 0, [MintDenied(request_id=rid, wallet=wallet, omni_account="o" * 64,
                                                       reason="no_grant", detail="no active grant")])
            expected[f"{wallet}:{rid}"] = "denied"
            continue
        ledger.append(stream, 0, [_requested(wallet, rid)])
        if outcome == "requested":
            expected[f"{wallet}:{rid}"] = "requested"
            continue
        if outcome == "unreleased":  # STS issued it; the ledger recorded it only after recovering
            ledger.append(stream, 1, [MintUnreleased(
                request_id=rid, wallet=wallet, requested_seq=1, sts_session_name=f"agentkeys-{wallet[2:]}-1",
                role_arn=ROLE, access_key_id=f"ASIA{i:016d}", expiration=2_000_000_000,
                reason=rng.choice(["ledger_write_failed", "sts_outcome_unknown"]), detail="x")])
            expected[f"{wallet}:{rid}"] = "unreleased"
            continue
        [auth] = ledger.append(stream, 1, [_authorized(wallet, rid, f"ASIA{i:016d}")])
        if outcome == "released":
            expected[f"{wallet}:{rid}"] = "released"
            continue
        if outcome == "unconfirmed":  # anchored, then the broker died: it may have been delivered
            ledger.append(uuid.uuid4(), 0, [ReleaseUnconfirmed(authorized_seq=auth.seq, kind="mint")])
            expected[f"{wallet}:{rid}"] = "unconfirmed"
            continue
        if outcome == "withheld":
            ledger.append(stream, 2, [MintWithheld(request_id=rid, wallet=wallet, authorized_seq=auth.seq,
                                                   access_key_id=f"ASIA{i:016d}", reason="anchor_deadline",
                                                   missing_anchors=["evm"])])
            expected[f"{wallet}:{rid}"] = "withheld"
            continue
        case_id = f"q-{auth.seq}"
        cstream = QuarantineCase.stream_for(auth.seq)
        ledger.append(cstream, 0, [MintQuarantined(case_id=case_id, authorized_seq=auth.seq,
                                                   access_key_id=f"ASIA{i:016d}", wallet=wallet,
                                                   reason="anchor_deadline", missing_anchors=["evm"],
                                                   expiration=2_000_000_000)])
        if outcome == "quarantined":
            expected[f"{wallet}:{rid}"] = "quarantined"
            continue
        if outcome == "revoked":
            ledger.append(cstream, 1, [
                RoleSessionsRevoked(role_arn=ROLE, not_before="2026-12-01T00:00:00Z", case_id=case_id,
                                    operator="token:abcdef01"),
                QuarantineResolved(case_id=case_id, action="revoke", reason="leaked", operator="token:abcdef01",
                                   status="resolved")])
        elif outcome == "accepted":
            ledger.append(cstream, 1, [QuarantineResolved(case_id=case_id, action="accept", reason="fine",
                                                          operator="cli:ops@host", status="resolved")])
        else:
            ledger.append(cstream, 1, [QuarantineResolved(case_id=case_id, action="reanchor", reason="chain back",
                                                          operator="0x" + "ab" * 20, status="reanchoring")])
            if outcome == "reanchored":
                ledger.append(cstream, 2, [QuarantineResolved(case_id=case_id, action="reanchor", reason="done",
                                                              operator="worker", status="resolved")])
        expected[f"{wallet}:{rid}"] = "quarantined" if outcome == "reanchoring" else "resolved"
    return expected


@pytest.mark.parametrize("projection", [MintsProjection, QuarantineProjection], ids=["mints", "quarantine"])
def test_rebuilt_projection_equals_the_incrementally_built_one(ledger, tmp_path: Path, projection) -> None:
    rng = random.Random(15)
    incremental_engine = open_engine(tmp_path / "incremental.sqlite")
    rebuilt_engine = open_engine(tmp_path / "rebuilt.sqlite")
    try:
        incremental = ProjectionRunner(ledger, incremental_engine, [projection()], batch_size=3)
        for _ in range(6):  # catch up between bursts of appends, in small batches
            populate(ledger, rng, 15)
            incremental.catch_up()
        rebuilt = ProjectionRunner(ledger, rebuilt_engine, [projection()], batch_size=2000)
        rebuilt.rebuild()
        assert incremental.positions() == rebuilt.positions() == {projection.name: ledger.head().seq}
        for table in projection.metadata.sorted_tables:
            rows = table_rows(incremental_engine, table)
            assert rows, f"{table.name} is empty: the test would prove nothing"
            assert rows == table_rows(rebuilt_engine, table), table.name
    finally:
        incremental_engine.dispose()
        rebuilt_engine.dispose()


def test_mint_statuses_follow_the_ledger(ledger, engine) -> None:
    expected = populate(ledger, random.Random(7), 60)
    runner = ProjectionRunner(ledger, engine, [MintsProjection()])
    runner.catch_up()
    for key, status in expected.items():
        wallet, rid = key.split(":")
        row = get_mint(engine, wallet, rid)
        assert row is not None and row.status == status, (key, row)
    counts = status_counts(engine)
    assert sum(counts.values()) == len(expected)
    for status in ("unreleased", "unconfirmed"):
        assert counts[status] == sum(1 for s in expected.values() if s == status) > 0, status
    assert counts["resolved"] == sum(1 for s in expected.values() if s == "resolved")
    newest = recent_mints(engine, limit=5)
    assert [r.first_seq for r in newest] == sorted((r.first_seq for r in newest), reverse=True)


def test_anchor_status_is_computed_at_query_time(ledger, engine) -> None:
    ledger.append(MintRequest.stream_for("0x" + "11" * 20, "r1"), 0, [_requested("0x" + "11" * 20, "r1")])
    [auth] = ledger.append(MintRequest.stream_for("0x" + "11" * 20, "r1"), 1,
                           [_authorized("0x" + "11" * 20, "r1", "ASIAKEY")])
    ProjectionRunner(ledger, engine, [MintsProjection()]).catch_up()
    row = get_mint(engine, "0x" + "11" * 20, "r1")
    assert row is not None and row.access_key_id == "ASIAKEY" and row.role_arn == ROLE
    assert with_anchor_status(row, {"sqlite": auth.seq, "evm": auth.seq - 1})["anchors"] == {"sqlite": True, "evm": False}
    assert with_anchor_status(row, {"sqlite": auth.seq, "evm": auth.seq})["anchors"] == {"sqlite": True, "evm": True}


def test_quarantine_cases_with_history(ledger, engine) -> None:
    populate(ledger, random.Random(3), 80)
    ProjectionRunner(ledger, engine, [QuarantineProjection()]).catch_up()
    everything = list_cases(engine, status="all")
    still_open = list_cases(engine, status="open")
    assert {c.status for c in still_open} <= {"open", "reanchoring"}
    assert open_count(engine) == len(still_open)
    assert len(everything) > len(still_open) > 0
    revoked = [c for c in everything if c.action == "revoke"]
    assert revoked, "the seed should produce a revoked case"
    case = get_case(engine, revoked[0].case_id)
    assert case is not None and case.closed and case.operator == "token:abcdef01"
    assert [h["type"] for h in case.history] == ["MintQuarantined", "RoleSessionsRevoked", "QuarantineResolved"]
    assert case.history[1]["detail"] == {"role_arn": ROLE, "not_before": "2026-12-01T00:00:00Z"}
    reanchored = [c for c in everything if c.action == "reanchor" and c.closed]
    assert reanchored and reanchored[0].operator == "0x" + "ab" * 20  # who asked, not the worker
    assert reanchored[0].history[-1]["operator"] == "worker"
