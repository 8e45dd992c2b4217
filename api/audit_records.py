"""`GET /v1/audit/records/{seq}`: the proof bundle of one record (design §4).

Access: a session whose OmniAccount the record names (any `*omni_account` field of its data), or
the operator token (`BROKER_OPERATOR_TOKEN_FILE`). The bundle is built from the ledger and the EVM
anchor's confirmed batch (its Merkle inclusion proof, batch root and chain head, transaction and
block), so an auditor can check it on chain with `audit verify-proof` and no broker involvement.
404 until the record's EVM batch is confirmed; with no EVM anchor configured, the bundle carries
the record and its SQLite anchoring only (no `batch`/`proof`).
"""

from __future__ import annotations

import hmac
from typing import Any

from ledger.audit import LedgerMismatch, proofs
from ledger.chain import ChainRecord
from ledger.services.refusals import Refusal


def _names_account(record: ChainRecord, omni: str) -> bool:
    return any(k.endswith("omni_account") and v == omni for k, v in record.data.items())


def authorize(record: ChainRecord, *, omni: str | None, operator: bool) -> None:
    if operator or (omni is not None and _names_account(record, omni)):
        return
    # the same answer as a missing record: no oracle for what other accounts' records hold
    raise Refusal("not_found", f"no record {record.seq} visible to this caller")


def operator_token_matches(presented: str, expected: str | None) -> bool:
    return bool(expected) and hmac.compare_digest(presented.encode(), expected.encode())  # type: ignore[union-attr]


def bundle_for(services: Any, seq: int, *, omni: str | None, operator: bool) -> dict[str, Any]:
    """The bundle, or 404 when the record does not exist, is not the caller's, or its EVM batch is
    not confirmed yet."""
    # out of range (0, negative, >= 2^63 that SQLite cannot bind, beyond the head): 404 before any lookup
    in_range = 1 <= seq <= services.ledger.head().seq
    records = services.ledger.read(seq - 1, 1) if in_range else []
    if not records or records[0].seq != seq:
        raise Refusal("not_found", f"no record {seq} visible to this caller")
    record = records[0]
    authorize(record, omni=omni, operator=operator)
    sqlite = services.anchor("sqlite")
    sqlite_section = {"confirmed": True} if sqlite is not None and sqlite.verify(seq, record.hash) else None
    evm = services.anchor("evm")
    if evm is None:
        return proofs.build_bundle({seq: record}, seq, sqlite=sqlite_section)
    batch = evm.batch_containing(seq)  # one indexed lookup
    if batch is None or batch["status"] != "confirmed":
        raise Refusal("not_found", f"record {seq} is not in a confirmed EVM batch yet; retry later")
    first, last = batch["first_seq"], batch["last_seq"]
    members = services.ledger.read(first - 1, last - first + 1)
    anchored = proofs.AnchoredBatch(
        root=bytes.fromhex(_plain(batch["root"])), first_seq=first, last_seq=last,
        chain_head=bytes.fromhex(_plain(batch["chain_head"])), name="the confirmed EVM batch",
    )
    evm_section = {
        "chain_id": evm.config.chain_id, "contract": evm.contract_address, "tx_hash": batch["tx_hash"],
        "block_number": batch["block_number"], "block_hash": batch["block_hash"],
    }
    try:
        return proofs.build_bundle(
            {r.seq: r for r in members}, seq, anchored, evm=evm_section, sqlite=sqlite_section
        )
    except LedgerMismatch:
        raise Refusal("anchored_batch_mismatch", "the ledger does not match its anchored batch") from None


def _plain(h: Any) -> str:
    if isinstance(h, (bytes, bytearray)):
        return bytes(h).hex()
    return str(h).removeprefix("0x").lower()
