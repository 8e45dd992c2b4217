"""Proof bundles for single records, against the EVM anchor: build (`prove`) and check on chain.

`prove(reader, seq, db=... | export=...)`:
1. find the batch holding `seq` on the contract(s) (`batchForSeq`, at the reader's pinned block);
2. read the batch's records `firstSeq..lastSeq` from the ledger (SQLite, read-only, with the
   auditor's own query: `ledger.audit.read_batch_records`) or from an export;
3. fetch the batch's `Anchored` event (by its indexed `batchIndex`, in the batch's block) for the
   tx hash and block;
4. build the bundle with the one builder, `ledger.audit.proofs.build_bundle`: it refuses
   (`LedgerMismatch`, exit 1) unless the records recompute the root and chain head the contract
   holds (a ledger that no longer matches the chain cannot yield a proof), computes the audit path
   and checks the bundle offline once more.

`verify_bundle_on_chain(reader, bundle)`: the contract's batch for the record's seq has the
bundle's root, first/last seq and head; `verifyRecord(recordHash, seq, path)` and
`verifyInclusion(leaf, index, size, path, root)` return true on chain; the `anchors.evm` section
names this chain, contract, batch, block, and a successful transaction that emitted the batch's
`Anchored` event in a block still on the canonical chain. The broker is never involved.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeGuard

from ledger.audit import LedgerMismatch, proofs, read_batch_records
from ledger.audit.merkle import leaf_hash

from .chain_reader import ChainBatch, ChainError, ChainReader

__all__ = [
    "LedgerMismatch",
    "ProveError",
    "prove",
    "verify_bundle",
    "verify_bundle_on_chain",
]

ANCHORED_EVENT_SIGNATURE = "Anchored(uint256,bytes32,uint64,uint64,bytes32)"


class ProveError(Exception):
    """No bundle can be made for a reason outside the ledger's integrity: the seq is not anchored
    yet, the ledger cannot be read (exit 2)."""


def _hex64(v: object) -> TypeGuard[str]:
    return type(v) is str and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def prove(
    reader: ChainReader,
    seq: int,
    *,
    db: str | os.PathLike[str] | None = None,
    export: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """The proof bundle of `seq`. Raises `ProveError` / `AuditError` / `ChainError` (exit 2) or
    `LedgerMismatch` (exit 1)."""
    if type(seq) is not int or seq < 1:
        raise ProveError(f"seq must be a positive integer, got {seq!r}")
    batch = reader.batch_for_seq(seq)
    if batch is None:
        states = reader.states()
        upto = max((s.last_seq for s in states), default=0)
        raise ProveError(
            f"seq {seq} is not anchored on {', '.join(s.address for s in states)} "
            f"(chain {reader.chain_id}, block {reader.block}: anchored up to seq {upto}); try again once it is"
        )
    records = read_batch_records(batch.first_seq, batch.last_seq, db=db, export=export)
    evm = reader.anchored_event(batch)
    try:
        return proofs.build_bundle(records, seq, batch, evm=evm)
    except proofs.ProofError as exc:  # cannot happen once the root matched; never emit a bad bundle
        raise LedgerMismatch(f"the bundle for seq {seq} does not verify: {exc}") from None


# --- verifying on chain --------------------------------------------------------------------------


def _path_bytes(bundle: Mapping[str, Any]) -> list[bytes] | None:
    proof = bundle.get("proof")
    path = proof.get("path") if isinstance(proof, dict) else None
    if type(path) is not list or len(path) > 64 or not all(_hex64(p) for p in path):
        return None
    return [bytes.fromhex(p) for p in path]


def verify_bundle_on_chain(reader: ChainReader, bundle: Any) -> tuple[list[str], ChainBatch | None]:
    """The on-chain half of the checks (see the module docstring). Returns (problems, the batch
    the contract holds for the record's seq). Raises `ChainError` if the chain cannot be read."""
    if type(bundle) is not dict:
        return ["the bundle is not a JSON object"], None
    rec = bundle.get("record")
    seq = rec.get("seq") if isinstance(rec, dict) else None
    rh = rec.get("hash") if isinstance(rec, dict) else None
    if type(seq) is not int or seq < 1 or not _hex64(rh):
        return ["cannot check on chain: the record has no valid seq and hash"], None
    problems: list[str] = []
    onchain = reader.batch_for_seq(seq)
    if onchain is None:
        states = reader.states()
        upto = max((s.last_seq for s in states), default=0)
        return [
            f"seq {seq} is not anchored on {', '.join(s.address for s in states)} at block {reader.block} "
            f"(anchored up to seq {upto})"
        ], None
    where = onchain.describe()
    b = bundle.get("batch")
    if not isinstance(b, dict):
        problems.append(f"the bundle has no batch to compare with {where}")
    else:
        if b.get("root") != onchain.root.hex():
            problems.append(
                f"batch.root {b.get('root')} differs from the root anchored on chain by {where}: {onchain.root.hex()}"
            )
        if b.get("first_seq") != onchain.first_seq or b.get("last_seq") != onchain.last_seq:
            problems.append(
                f"batch covers seqs {b.get('first_seq')}..{b.get('last_seq')}, but on chain seq {seq} is in {where}"
            )
        if b.get("chain_head") != onchain.chain_head.hex():
            problems.append(f"batch.chain_head differs from the chain head anchored by {where}: {onchain.chain_head.hex()}")
    path = _path_bytes(bundle)
    if path is None:
        problems.append("proof.path is missing or malformed: nothing to check on chain")
    else:
        record_hash = bytes.fromhex(rh)
        if not reader.verify_record(onchain.contract, record_hash, seq, path):
            problems.append(f"verifyRecord(recordHash, {seq}, path) returned false on chain ({onchain.contract})")
        proof = bundle["proof"]
        index = proof.get("leaf_index") if type(proof.get("leaf_index")) is int else seq - onchain.first_seq
        size = proof.get("tree_size") if type(proof.get("tree_size")) is int else onchain.size
        if index < 0 or size < 0 or index >= 1 << 256 or size >= 1 << 256:
            problems.append("proof.leaf_index / tree_size out of range for the contract")
        elif not reader.verify_inclusion(onchain.contract, leaf_hash(record_hash), index, size, path, onchain.root):
            problems.append(
                f"verifyInclusion(leaf, {index}, {size}, path, anchored root) returned false on chain ({onchain.contract})"
            )
    anchors = bundle.get("anchors")
    evm = anchors.get("evm") if isinstance(anchors, dict) else None
    if isinstance(evm, dict):
        problems.extend(_check_evm_section(reader, evm, onchain))
    return problems, onchain


def _check_evm_section(reader: ChainReader, evm: Mapping[str, Any], onchain: ChainBatch) -> list[str]:
    from eth_utils import keccak
    from web3.exceptions import BlockNotFound, TransactionNotFound

    problems: list[str] = []
    if evm.get("chain_id") != reader.chain_id:
        problems.append(f"anchors.evm.chain_id is {evm.get('chain_id')!r}, the RPC endpoint serves chain {reader.chain_id}")
    contract = evm.get("contract")
    if not isinstance(contract, str) or contract.lower() != onchain.contract.lower():
        problems.append(f"anchors.evm.contract is {contract!r}, but seq is anchored by {onchain.contract}")
    if "batch_index" in evm and evm.get("batch_index") != onchain.index:
        problems.append(f"anchors.evm.batch_index is {evm.get('batch_index')!r}, on chain it is {onchain.index}")
    if evm.get("block_number") != onchain.block_number:
        problems.append(
            f"anchors.evm.block_number is {evm.get('block_number')!r}, the contract says block {onchain.block_number}"
        )
    tx_hash, block_hash = evm.get("tx_hash"), evm.get("block_hash")
    if not (isinstance(tx_hash, str) and isinstance(block_hash, str)):
        return problems
    w3 = reader.w3
    try:
        receipt = w3.eth.get_transaction_receipt(tx_hash)
    except TransactionNotFound:
        receipt = None
    except Exception as exc:
        if "not found" in str(exc).lower():
            receipt = None
        else:
            raise ChainError(f"cannot read transaction {tx_hash} via {reader.rpc_url}: {str(exc)[:200]}") from None
    if receipt is None:
        problems.append(f"anchors.evm.tx_hash {tx_hash} is not a transaction on chain {reader.chain_id}")
    else:
        if receipt.get("status") != 1:
            problems.append(f"transaction {tx_hash} failed on chain")
        if ("0x" + bytes(receipt["blockHash"]).hex()).lower() != block_hash.lower():
            problems.append(f"transaction {tx_hash} is in block {'0x' + bytes(receipt['blockHash']).hex()}, not {block_hash}")
        topic0 = keccak(text=ANCHORED_EVENT_SIGNATURE)
        want = (topic0, onchain.index.to_bytes(32, "big"), onchain.root)
        found = any(
            str(log["address"]).lower() == onchain.contract.lower()
            and len(log["topics"]) >= 3
            and tuple(bytes(t) for t in log["topics"][:3]) == want
            for log in receipt.get("logs", [])
        )
        if not found:
            problems.append(f"transaction {tx_hash} did not emit Anchored for {onchain.describe()}")
    bn = evm.get("block_number")
    if type(bn) is int:
        try:
            blk = w3.eth.get_block(bn)
            canonical = "0x" + bytes(blk["hash"]).hex()
        except BlockNotFound:
            canonical = None
        except Exception as exc:
            raise ChainError(f"cannot read block {bn} via {reader.rpc_url}: {str(exc)[:200]}") from None
        if canonical is None or canonical.lower() != block_hash.lower():
            problems.append(f"block {bn} on chain is {canonical}, not {block_hash}: the anchoring block was reorged")
    return problems


def verify_bundle(bundle: Any, reader: ChainReader | None = None) -> tuple[list[str], ChainBatch | None]:
    """Offline checks, then (with a reader) the on-chain ones. Returns (problems, on-chain batch)."""
    problems = proofs.verify_bundle_offline(bundle)
    onchain = None
    if reader is not None:
        more, onchain = verify_bundle_on_chain(reader, bundle)
        problems.extend(p for p in more if p not in problems)
    return problems, onchain
