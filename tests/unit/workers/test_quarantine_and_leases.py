"""Quarantine detection under *_primary policies, and job leases."""

from __future__ import annotations

import uuid
from pathlib import Path

from ledger.aggregates import MintRequest
from ledger.app import Ledger
from ledger.events import MintAuthorized, MintRequested, MintWithheld
from workers.jobs import quarantine
from workers.leases import Leases


def authorize(ledger: Ledger, *, withheld: bool = False) -> int:
    wallet, rid = "0x" + "11" * 20, uuid.uuid4().hex
    stream = MintRequest.stream_for(wallet, rid)
    common = dict(request_id=rid, request_digest="d" * 64, omni_account="o" * 64, wallet=wallet, agent_id="a",
                  service="s3", scope_path="b/p/", grant_id="g")
    ledger.append(stream, 0, [MintRequested(**common, identity_type="evm", identity_value=wallet, session_jti="j")])
    [rec] = ledger.append(stream, 1, [MintAuthorized(**common, role_arn="arn", sts_session_name="n",
                                                     access_key_id="ASIAX", expiration=1)])
    if withheld:
        ledger.append(stream, 2, [MintWithheld(request_id=rid, wallet=wallet, authorized_seq=rec.seq,
                                               access_key_id="ASIAX", reason="anchor_deadline", missing_anchors=["sqlite"])])
    return rec.seq


def test_released_mint_unconfirmed_past_the_deadline_is_quarantined_once(ledger: Ledger) -> None:
    seq = authorize(ledger)
    withheld_seq = authorize(ledger, withheld=True)
    far_future = lambda: 10**10  # noqa: E731
    result = quarantine.run(ledger=ledger, async_anchors=[("evm", lambda: 0)], deadline_s=600, now=far_future)
    assert result.opened == [f"q-{seq}"]  # the withheld one was never released
    again = quarantine.run(ledger=ledger, async_anchors=[("evm", lambda: 0)], deadline_s=600, now=far_future)
    assert again.opened == []
    [case] = [r.data for r in ledger.read(0, 100) if r.type == "MintQuarantined"]
    assert case["missing_anchors"] == ["evm"] and case["authorized_seq"] == seq
    assert withheld_seq > seq


def test_nothing_is_quarantined_before_the_deadline_or_once_confirmed(ledger: Ledger) -> None:
    seq = authorize(ledger)
    import time

    assert quarantine.run(ledger=ledger, async_anchors=[("evm", lambda: 0)], deadline_s=600, now=time.time).opened == []
    confirmed = quarantine.run(ledger=ledger, async_anchors=[("evm", lambda: seq)], deadline_s=600, now=lambda: 10**10)
    assert confirmed.opened == []


def test_a_lease_is_held_by_one_holder_until_it_expires(tmp_path: Path) -> None:
    a, b = Leases(tmp_path / "l.sqlite", "a"), Leases(tmp_path / "l.sqlite", "b")
    assert a.acquire("job", 10, now=100)
    assert not b.acquire("job", 10, now=105)
    assert a.acquire("job", 10, now=105)  # renewal
    assert b.acquire("job", 10, now=116)  # expired
    b.release("job")
    assert a.acquire("job", 10, now=117)
