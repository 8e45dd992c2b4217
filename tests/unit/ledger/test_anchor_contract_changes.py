"""`AnchorContractChanged` grew optional `genesis_hash`, `start_seq`, `reason` (design §8 "Evolving
events"): records written before decode, re-encode and re-hash unchanged; the aggregate records a
chain change even when the contract address is the same (a fresh node deploys at the same address)."""

from __future__ import annotations

import uuid

from ledger.aggregates import AnchorContract
from ledger.chain import GENESIS, make_envelope, record_hash
from ledger.events import AnchorContractChanged, decode_event

OLD_DATA = {"anchor": "evm", "chain_id": 84532, "contract": "0x" + "ab" * 20, "previous_contract": None,
            "fee_payer": "0x" + "cd" * 20}
G1, G2 = "0x" + "11" * 32, "0x" + "22" * 32


def _envelope(data: dict) -> dict:
    return make_envelope(seq=1, type="AnchorContractChanged", stream=str(uuid.UUID(int=1)), version=1,
                         at="2026-11-29T05:00:00.000000Z", data=data, prev=GENESIS)


def test_a_record_written_before_the_new_fields_decodes_and_rehashes_unchanged() -> None:
    event = decode_event("AnchorContractChanged", dict(OLD_DATA))
    assert event.genesis_hash is None and event.start_seq is None and event.reason is None
    assert event.to_data() == OLD_DATA  # null optional fields are omitted, not written as null
    assert record_hash(_envelope(event.to_data())) == record_hash(_envelope(OLD_DATA))


def test_new_fields_are_written_when_known() -> None:
    event = AnchorContractChanged(**OLD_DATA, genesis_hash=G1, start_seq=7, reason="chain_changed")
    assert event.to_data() == {**OLD_DATA, "genesis_hash": G1, "start_seq": 7, "reason": "chain_changed"}


def _agg(*events: AnchorContractChanged) -> AnchorContract:
    return AnchorContract.replay(AnchorContract.stream_for("evm"), list(events))


def _use(agg: AnchorContract, contract: str = OLD_DATA["contract"], genesis: str | None = G1, chain_id: int = 84532):
    return agg.use(anchor="evm", chain_id=chain_id, contract=contract, fee_payer=OLD_DATA["fee_payer"],
                   genesis_hash=genesis, start_seq=1)


def test_first_contract_is_recorded_with_its_chain_and_no_reason() -> None:
    [event] = _use(_agg())
    assert event.genesis_hash == G1 and event.start_seq == 1 and event.reason is None
    assert event.previous_contract is None


def test_same_contract_same_chain_records_nothing() -> None:
    first = AnchorContractChanged(**{**OLD_DATA, "genesis_hash": G1})
    assert _use(_agg(first)) == []
    assert _use(_agg(first), genesis=None) == []  # chain unknown right now (RPC down): no guess


def test_same_address_on_another_chain_is_a_recorded_chain_change() -> None:
    first = AnchorContractChanged(**{**OLD_DATA, "genesis_hash": G1})
    [event] = _use(_agg(first), genesis=G2)
    assert (event.reason, event.genesis_hash, event.previous_contract) == ("chain_changed", G2, OLD_DATA["contract"])


def test_an_old_record_without_a_chain_gets_its_chain_recorded_once() -> None:
    old = AnchorContractChanged(**OLD_DATA)
    [event] = _use(_agg(old))
    assert event.reason == "chain_recorded"
    assert _use(_agg(old, event)) == []


def test_another_address_is_a_contract_change() -> None:
    first = AnchorContractChanged(**{**OLD_DATA, "genesis_hash": G1})
    [event] = _use(_agg(first), contract="0x" + "ef" * 20)
    assert event.reason == "contract_changed"
