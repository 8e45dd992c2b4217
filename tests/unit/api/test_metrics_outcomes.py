"""`agentkeys_mints_total{outcome}` counts the accounting outcomes of design §8: `MintUnreleased`
is `unreleased`, `ReleaseUnconfirmed` of kind `mint` is `unconfirmed` (a session's is not a mint)."""

from __future__ import annotations

import uuid

from api.metrics import MINT_OUTCOMES, Metrics
from ledger.aggregates import MintRequest
from ledger.events import MintRequested, MintUnreleased, ReleaseUnconfirmed

WALLET = "0x" + "ab" * 20


def test_unreleased_and_unconfirmed_mints_are_counted(ledger) -> None:  # noqa: ANN001
    metrics = Metrics(read=ledger.read, head_seq=lambda: 0, sample=dict)
    assert {"unreleased", "unconfirmed"} <= set(MINT_OUTCOMES)
    stream = MintRequest.stream_for(WALLET, "r1")
    [requested] = ledger.append(stream, 0, [MintRequested(
        request_id="r1", request_digest="d" * 64, omni_account="o" * 64, identity_type="evm", identity_value=WALLET,
        wallet=WALLET, agent_id="a", service="s3", scope_path="b/", grant_id="", session_jti="j")])
    ledger.append(stream, 1, [MintUnreleased(
        request_id="r1", wallet=WALLET, requested_seq=requested.seq, sts_session_name=f"agentkeys-{WALLET[2:]}-1",
        role_arn="arn:aws:iam::123456789012:role/r", access_key_id="ASIAEXAMPLE", expiration=2_000_000_000,
        reason="ledger_write_failed", detail="disk full")])
    ledger.append(uuid.uuid4(), 0, [ReleaseUnconfirmed(authorized_seq=1, kind="mint")])
    ledger.append(uuid.uuid4(), 0, [ReleaseUnconfirmed(authorized_seq=1, kind="session")])
    metrics.catch_up()

    def value(outcome: str) -> float:
        return metrics.registry.get_sample_value("agentkeys_mints_total", {"outcome": outcome}) or 0.0

    assert (value("requested"), value("unreleased"), value("unconfirmed")) == (1.0, 1.0, 1.0)
    assert value("released") == value("denied") == 0.0
