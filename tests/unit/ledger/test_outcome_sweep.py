"""The outcome sweep (ledger/services/outcome_sweep.py; design §8): every authorization and every
`MintRequested` ends with an outcome after a crash. Real SQLite ledger; the anchors' positions are
plain numbers (the sweep takes them as functions); time is a settable clock."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ledger.aggregates import AuthChallenge, MintRequest, stream_id
from ledger.app import Ledger
from ledger.config import LedgerConfig
from ledger.events import MintAuthorized, MintDenied, MintRequested, SessionIssued
from ledger.ports import sts_session_name
from ledger.services.outcome_sweep import PeriodicSweep, startup_sweep

WALLET = "0x" + "ab" * 20
ROLE = "arn:aws:iam::123456789012:role/agentkeys-data-role"
DEADLINE_S = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def led(tmp_path: Path, clock: Clock):
    ledger = Ledger(LedgerConfig(tmp_path / "ledger.sqlite"), clock=clock)
    yield ledger
    ledger.close()


def requested(led: Ledger, request_id: str) -> int:
    event = MintRequested(request_id=request_id, request_digest="d" * 64, omni_account="o" * 64, identity_type="evm",
                          identity_value=WALLET, wallet=WALLET, agent_id="a", service="s3", scope_path="b/p/",
                          grant_id="", session_jti="j")
    [record] = led.append(MintRequest.stream_for(WALLET, request_id), 0, [event])
    return record.seq


def authorized(led: Ledger, request_id: str) -> int:
    requested(led, request_id)
    event = MintAuthorized(request_id=request_id, request_digest="d" * 64, omni_account="o" * 64, wallet=WALLET,
                           agent_id="a", service="s3", scope_path="b/p/", grant_id="", role_arn=ROLE,
                           sts_session_name="n", access_key_id="ASIA" + request_id.upper().ljust(16, "X")[:16],
                           expiration=2_000_000_000)
    [record] = led.append(MintRequest.stream_for(WALLET, request_id), 1, [event])
    return record.seq


def session(led: Ledger, jti: str) -> int:
    event = SessionIssued(jti=jti, kid="k", omni_account="o" * 64, wallet_address=WALLET, identity_type="evm",
                          identity_value=WALLET, iat=1, exp=2, token_sha256="t" * 64)
    [record] = led.append(AuthChallenge.stream_for(jti), 0, [event])
    return record.seq


def denied(led: Ledger, request_id: str, reason: str = "sts_error") -> None:
    led.append(stream_id("mint-denial", uuid.uuid4().hex), 0, [MintDenied(
        request_id=request_id, wallet=WALLET, omni_account="o" * 64, reason=reason, detail="x")])  # type: ignore[arg-type]


def records_of(led: Ledger, type_name: str) -> list[dict]:
    return [r.data for r in led.read(0, 10_000) if r.type == type_name]


def test_startup_sweep_after_a_crash_gives_every_authorization_an_outcome(led: Ledger) -> None:
    confirmed_mint = authorized(led, "r1")
    confirmed_session = session(led, "s1")
    position = led.head().seq  # the anchor had confirmed everything up to here when the broker died
    open_mint = authorized(led, "r2")
    open_session = session(led, "s2")
    cut_before_sts = requested(led, "r3")
    requested(led, "r4")
    denied(led, "r4")  # has its outcome

    result = startup_sweep(led, required_positions=lambda: {"sqlite": position}, deadline_s=DEADLINE_S,
                           role_arn_for=lambda service: ROLE)

    assert sorted(result.unconfirmed) == [confirmed_mint, confirmed_session]
    assert sorted(result.withheld) == [open_mint, open_session]
    assert result.unreleased == [cut_before_sts]
    withheld = records_of(led, "MintWithheld")
    assert withheld == [{"request_id": "r2", "wallet": WALLET, "authorized_seq": open_mint,
                         "access_key_id": "ASIAR2XXXXXXXXXXXXXX", "reason": "interrupted", "missing_anchors": ["sqlite"]}]
    assert records_of(led, "SessionWithheld") == [{"jti": "s2", "session_seq": open_session, "reason": "interrupted",
                                                   "missing_anchors": ["sqlite"]}]
    assert sorted(records_of(led, "ReleaseUnconfirmed"), key=lambda d: d["authorized_seq"]) == [
        {"authorized_seq": confirmed_mint, "kind": "mint"}, {"authorized_seq": confirmed_session, "kind": "session"}]
    [unreleased] = records_of(led, "MintUnreleased")
    assert unreleased == {"request_id": "r3", "wallet": WALLET, "requested_seq": cut_before_sts,
                          "sts_session_name": sts_session_name(WALLET, cut_before_sts), "role_arn": ROLE,
                          "access_key_id": None, "expiration": None, "reason": "sts_outcome_unknown",
                          "detail": unreleased["detail"]}
    assert unreleased["sts_session_name"] == f"agentkeys-{'ab' * 20}-{cut_before_sts}"
    agg = led.load(MintRequest, MintRequest.stream_for(WALLET, "r3"))
    assert agg.unreleased is not None

    again = startup_sweep(led, required_positions=lambda: {"sqlite": led.head().seq}, deadline_s=DEADLINE_S)
    assert again.written == 0  # idempotent: everything has its outcome


def test_startup_sweep_leaves_records_older_than_the_window_to_the_periodic_sweep(led: Ledger, clock: Clock) -> None:
    old_open = authorized(led, "old")
    old_request = requested(led, "old-cut")
    clock.advance(DEADLINE_S + 31)
    recent_open = authorized(led, "new")

    result = startup_sweep(led, required_positions=lambda: {"sqlite": 0}, deadline_s=DEADLINE_S)
    assert result.withheld == [recent_open] and result.unreleased == []

    periodic = PeriodicSweep(led, required_positions=lambda: {"sqlite": 0}, deadline_s=DEADLINE_S,
                             now=lambda: clock.now.timestamp())
    swept = periodic.run()
    assert swept.withheld == [old_open] and swept.unreleased == [old_request]
    assert periodic.run().written == 0


def test_periodic_sweep_counts_a_confirmed_authorization_as_released(led: Ledger, clock: Clock) -> None:
    released = authorized(led, "r1")
    clock.advance(DEADLINE_S + 31)
    young_open = authorized(led, "r2")
    periodic = PeriodicSweep(led, required_positions=lambda: {"sqlite": released, "evm": released},
                             deadline_s=DEADLINE_S, now=lambda: clock.now.timestamp())
    result = periodic.run()
    assert result.written == 0  # released: nothing written; r2 is too young to judge
    assert periodic.cursor < young_open
    clock.advance(DEADLINE_S + 31)
    result = periodic.run()
    assert result.withheld == [young_open]
    assert records_of(led, "MintWithheld")[0]["missing_anchors"] == ["evm", "sqlite"]


def test_replayed_request_id_denial_does_not_close_the_original_request(led: Ledger) -> None:
    seq = requested(led, "r1")
    denied(led, "r1", reason="request_replayed")  # an attacker replaying the request id
    result = startup_sweep(led, required_positions=lambda: {"sqlite": led.head().seq}, deadline_s=DEADLINE_S)
    assert result.unreleased == [seq]


def test_a_live_outcome_written_first_wins(led: Ledger) -> None:
    seq = authorized(led, "r1")
    from ledger.events import MintWithheld

    led.append(MintRequest.stream_for(WALLET, "r1"), 2, [MintWithheld(
        request_id="r1", wallet=WALLET, authorized_seq=seq, access_key_id="ASIA", reason="anchor_deadline",
        missing_anchors=["sqlite"])])
    assert startup_sweep(led, required_positions=lambda: {"sqlite": 0}, deadline_s=DEADLINE_S).written == 0


def test_empty_ledger_sweeps_nothing(led: Ledger) -> None:
    assert startup_sweep(led, required_positions=lambda: {"sqlite": 0}, deadline_s=DEADLINE_S).written == 0


def test_a_stream_of_unexpected_shape_is_logged_and_skipped_not_fatal(led: Ledger) -> None:
    from ledger.events import WalletBound

    odd = uuid.uuid4()
    led.append(odd, 0, [WalletBound(omni_account="o" * 64, address=WALLET, role="master")])
    led.append(odd, 1, [SessionIssued(jti="x", kid="k", omni_account="o" * 64, wallet_address=WALLET,
                                      identity_type="evm", identity_value=WALLET, iat=1, exp=2, token_sha256="t" * 64)])
    normal = authorized(led, "r1")
    result = startup_sweep(led, required_positions=lambda: {"sqlite": 0}, deadline_s=DEADLINE_S)
    assert result.withheld == [normal]
