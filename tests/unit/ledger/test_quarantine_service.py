"""`ledger/services/quarantine.py` on a real ledger file; the IAM kill switch is a recording fake
(this is the unit test of the use case alone; tests/integration/test_operator_quarantine.py uses
moto's IAM)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from anchors.memory import MemoryAnchor
from ledger.aggregates import MintRequest, QuarantineCase
from ledger.events import MintAuthorized, MintQuarantined
from ledger.ports import StsError
from ledger.services.quarantine import QuarantineRefusal, QuarantineService
from ledger.services.refusals import Refusal

ROLE = "arn:aws:iam::123456789012:role/agentkeys-data-role"
NOW = datetime(2026, 12, 1, 18, 0, 0, tzinfo=UTC)


class RecordingKillSwitch:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail = fail

    def revoke_sessions_before(self, role_arn: str, not_before: str) -> None:
        if self.fail:
            raise StsError("AccessDenied", "not allowed to iam:PutRolePolicy")
        self.calls.append((role_arn, not_before))


def open_case(ledger) -> str:  # noqa: ANN001
    wallet = "0x" + "22" * 20
    [auth] = ledger.append(MintRequest.stream_for(wallet, "r"), 0, [MintAuthorized(
        request_id="r", request_digest="d" * 64, omni_account="o" * 64, wallet=wallet, agent_id="a", service="s3",
        scope_path="b/p/", grant_id="g", role_arn=ROLE, sts_session_name="agentkeys-x-1", access_key_id="ASIAX",
        expiration=2_000_000_000)])
    case_id = f"q-{auth.seq}"
    ledger.append(QuarantineCase.stream_for(auth.seq), 0, [MintQuarantined(
        case_id=case_id, authorized_seq=auth.seq, access_key_id="ASIAX", wallet=wallet, reason="anchor_deadline",
        missing_anchors=["evm"], expiration=2_000_000_000)])
    return case_id


def types(ledger) -> list[str]:  # noqa: ANN001
    return [r.type for r in ledger.read(0, 1000)]


def test_accept_resolves_and_names_the_operator(ledger) -> None:
    service = QuarantineService(ledger=ledger, kill_switch=RecordingKillSwitch(), clock=lambda: NOW)
    case_id = open_case(ledger)
    result = service.resolve(case_id, action="accept", reason="anchor outage, reviewed", operator="cli:ops@host")
    assert result.status == "resolved" and result.seq == ledger.head().seq
    last = ledger.read(result.seq - 1, 1)[0]
    assert last.type == "QuarantineResolved" and last.data["operator"] == "cli:ops@host"


def test_second_resolve_is_refused_case_closed(ledger) -> None:
    service = QuarantineService(ledger=ledger, kill_switch=RecordingKillSwitch(), clock=lambda: NOW)
    case_id = open_case(ledger)
    service.resolve(case_id, action="accept", reason="ok", operator="token:01234567")
    head = ledger.head().seq
    with pytest.raises(QuarantineRefusal) as info:
        service.resolve(case_id, action="revoke", reason="again", operator="token:01234567")
    assert info.value.reason == "case_closed" and isinstance(info.value, Refusal)
    assert ledger.head().seq == head  # nothing written


def test_revoke_applies_the_kill_switch_before_recording_it(ledger) -> None:
    switch = RecordingKillSwitch()
    service = QuarantineService(ledger=ledger, kill_switch=switch, clock=lambda: NOW)
    case_id = open_case(ledger)
    result = service.resolve(case_id, action="revoke", reason="key leaked", operator="0x" + "ab" * 20)
    assert switch.calls == [(ROLE, "2026-12-01T18:00:00Z")]
    assert result.revoked_not_before == "2026-12-01T18:00:00Z"
    assert types(ledger)[-2:] == ["RoleSessionsRevoked", "QuarantineResolved"]


def test_iam_refusing_the_kill_switch_records_nothing(ledger) -> None:
    service = QuarantineService(ledger=ledger, kill_switch=RecordingKillSwitch(fail=True), clock=lambda: NOW)
    case_id = open_case(ledger)
    head = ledger.head().seq
    with pytest.raises(QuarantineRefusal) as info:
        service.resolve(case_id, action="revoke", reason="leak", operator="token:01234567")
    assert info.value.reason == "kill_switch_failed" and ledger.head().seq == head


def test_reanchor_waits_for_the_worker_which_closes_it_once_the_anchor_confirms(ledger) -> None:
    service = QuarantineService(ledger=ledger, kill_switch=None, clock=lambda: NOW)
    case_id = open_case(ledger)
    result = service.resolve(case_id, action="reanchor", reason="chain is back", operator="cli:ops@host")
    assert result.status == "reanchoring"
    with pytest.raises(QuarantineRefusal) as info:  # a resolve while re-anchoring
        service.resolve(case_id, action="accept", reason="x", operator="cli:ops@host")
    assert info.value.reason == "case_closed"
    evm = MemoryAnchor("evm")
    assert service.close_reanchored([case_id], [evm]) == []  # not confirmed yet
    evm.submit(ledger.read(0, 1000))
    assert service.close_reanchored([case_id], [evm]) == [case_id]
    last = ledger.read(ledger.head().seq - 1, 1)[0]
    assert last.data["operator"] == "worker" and last.data["status"] == "resolved"
    assert service.close_reanchored([case_id], [evm]) == []  # once


@pytest.mark.parametrize("case_id", ["q-999", "q-0", "x-1", "q-1; drop", ""])
def test_unknown_or_malformed_case_is_not_found(ledger, case_id: str) -> None:
    service = QuarantineService(ledger=ledger, kill_switch=None)
    with pytest.raises(QuarantineRefusal) as info:
        service.resolve(case_id, action="accept", reason="x", operator="cli:a@b")
    assert info.value.reason == "case_not_found"


@pytest.mark.parametrize("kw", [dict(action="delete"), dict(reason=" "), dict(reason="x" * 501),
                                dict(operator="worker"), dict(operator="a b")])
def test_bad_action_reason_or_operator_is_a_bad_request(ledger, kw: dict) -> None:
    service = QuarantineService(ledger=ledger, kill_switch=None)
    case_id = open_case(ledger)
    args = {"action": "accept", "reason": "ok", "operator": "cli:a@b", **kw}
    with pytest.raises(QuarantineRefusal) as info:
        service.resolve(case_id, **args)
    assert info.value.reason == "bad_request"
