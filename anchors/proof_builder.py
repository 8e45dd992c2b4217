"""Proof bundles for single records, against the EVM anchor: build (`prove`) and check on chain.

`prove(reader, seq, db=... | export=...)`:
1. find the batch holding `seq` on the contract(s) (`batchForSeq`, at the reader's pinned block);
2. read the batch's records `firstSeq..lastSeq` from the ledger (SQLite, read-only, with the
   auditor's own query from `ledger.audit`) or from an export;
3. recompute the RFC 6962 root over their record hashes and the chain head, and refuse
   (`LedgerMismatch`, exit 1) unless both equal what the contract holds: a ledger that no longer
   matches the chain cannot yield a proof;
4. compute the audit path of `seq` (`anchors.merkle`), fetch the batch's `Anchored` event (by its
   indexed `batchIndex`, in the batch's block) for the tx hash and block, and assemble the bundle
   with `ledger.proofs.build_bundle` (which checks it offline once more).

`verify_bundle_on_chain(reader, bundle)`: the contract's batch for the record's seq has the
bundle's root, first/last seq and head; `verifyRecord(recordHash, seq, path)` and
`verifyInclusion(leaf, index, size, path, root)` return true on chain; the `anchors.evm` section
names this chain, contract, batch, block, and a successful transaction that emitted the batch's
`Anchored` event in a block still on the canonical chain. The broker is never involved.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import msgspec

from ledger import audit, proofs
from ledger.audit import Malformed, RecordLine
from ledger.chain import ENVELOPE_KEYS, ChainRecord, make_envelope, recompute_hash

from . import merkle
from .chain_audit import ChainBatch, ChainError, ChainReader

__all__ = [
    "LedgerMismatch",
    "ProveError",
    "build_proof_bundle",
    "prove",
    "read_batch_records",
    "verify_bundle",
    "verify_bundle_on_chain",
]

ANCHORED_EVENT_SIGNATURE = "Anchored(uint256,bytes32,uint64,uint64,bytes32)"


class ProveError(Exception):
    """No bundle can be made for a reason outside the ledger's integrity: the seq is not anchored
    yet, the ledger cannot be read (exit 2)."""


class LedgerMismatch(Exception):
    """The ledger's records for the batch do not recompute the anchored root or head: the ledger
    no longer matches the chain (exit 1)."""


# --- reading the batch's records ------------------------------------------------------------------


def _record_from_item(item: Any) -> dict[str, Any] | None:
    if type(item) is RecordLine:
        obj = msgspec.structs.asdict(item)
        try:
            obj["data"] = msgspec.json.decode(obj["data"])
        except msgspec.DecodeError:
            return None
        return obj
    if isinstance(item, ChainRecord):
        return item.export_object()
    if isinstance(item, dict):
        return item
    return None  # Malformed


def read_batch_records(
    first: int,
    last: int,
    *,
    db: str | os.PathLike[str] | None = None,
    export: str | os.PathLike[str] | None = None,
) -> dict[int, dict[str, Any] | None]:
    """The records with seq in first..last (export objects: envelope plus hash), by seq; the first
    record read with a seq wins; None for a record present but unreadable. Raises `AuditError`."""
    if (db is None) == (export is None):
        raise audit.AuditError("give exactly one of a ledger database or an export file")
    out: dict[int, dict[str, Any] | None] = {}

    def take(items: Iterable[Any]) -> None:
        for item in items:
            if isinstance(item, Malformed):
                seq = item.seq
            elif type(item) is RecordLine or isinstance(item, ChainRecord):
                seq = item.seq
            elif isinstance(item, dict):
                seq = item.get("seq")
            else:
                continue
            if type(seq) is int and first <= seq <= last and seq not in out:
                out[seq] = _record_from_item(item)

    if export is not None:
        with audit.ExportReader(export) as reader:
            for batch in reader.batches():
                take(batch)
        return out
    with audit.DatabaseReader(db) as reader:  # type: ignore[arg-type]  # one read snapshot
        sql = audit.SELECT_RECORDS_SQL
        ranged = sql.replace(" ORDER BY r.seq", " WHERE r.seq BETWEEN ? AND ? ORDER BY r.seq")
        if ranged == sql:  # the query's shape changed: scan the whole ledger instead
            for batch in reader.batches():
                take(batch)
            return out
        try:
            rows = reader.conn.execute(ranged, (first, last)).fetchall()
        except Exception as exc:
            raise audit.AuditError(f"cannot read ledger {db}: {exc}") from None
    for seq, stream, version, prev, h, topic, state in rows:
        if seq in out:
            continue
        try:
            body = msgspec.json.decode(state)
            if type(body) is not dict:
                raise ValueError
            env = make_envelope(seq=seq, type=topic, stream=stream, version=version, at=body.get("at"), data=body.get("data"), prev=prev)
        except (msgspec.DecodeError, ValueError, TypeError):
            out[seq] = None
            continue
        env["hash"] = h
        out[seq] = env
    return out


# --- building ------------------------------------------------------------------------------------


def _hex64(v: Any) -> bool:
    return type(v) is str and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def build_proof_bundle(
    records: Mapping[int, Mapping[str, Any] | None],
    seq: int,
    batch: ChainBatch,
    *,
    evm: Mapping[str, Any] | None = None,
    sqlite: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The bundle for `seq` from the records of its batch (by seq, as `read_batch_records`
    returns them). Raises `LedgerMismatch` unless they recompute the batch's root and head and the
    record for `seq` is intact."""
    first, last = batch.first_seq, batch.last_seq
    if not first <= seq <= last:
        raise ValueError(f"seq {seq} is not in {batch.describe()}")
    where = f"{batch.describe()}"
    absent = [s for s in range(first, last + 1) if s not in records]
    if absent:
        shown = ", ".join(map(str, absent[:10])) + (" ..." if len(absent) > 10 else "")
        raise LedgerMismatch(f"the ledger lacks seq(s) {shown} of {where}: it no longer matches the chain")
    leaves: list[bytes] = []
    for s in range(first, last + 1):
        rec = records[s]
        h = rec.get("hash") if rec is not None else None
        if not _hex64(h):
            raise LedgerMismatch(f"record seq {s} of {where} is damaged in the ledger (no valid hash): run `audit verify`")
        leaves.append(merkle.leaf_hash(bytes.fromhex(h)))  # type: ignore[arg-type]
    root = merkle.root_of_leaf_hashes(leaves)
    head = records[last]["hash"]  # type: ignore[index]
    if head != batch.chain_head.hex():
        raise LedgerMismatch(
            f"the ledger no longer matches the chain: its hash at seq {last} is {head}, but {where} anchored "
            f"chain head {batch.chain_head.hex()} (history was rewritten at or before seq {last}; run `audit verify --rpc`)"
        )
    if root != batch.root:
        raise LedgerMismatch(
            f"the ledger no longer matches the chain: the Merkle root of its seqs {first}..{last} is {root.hex()}, "
            f"but {where} anchored {batch.root.hex()} (run `audit verify --rpc`)"
        )
    record = dict(records[seq])  # type: ignore[arg-type]
    envelope = {k: record.get(k) for k in ENVELOPE_KEYS}
    try:
        content = recompute_hash(envelope)
    except Exception:
        content = None
    if content != record["hash"] or set(record) != {*ENVELOPE_KEYS, "hash"}:
        raise LedgerMismatch(
            f"record seq {seq} in the ledger does not match its own hash (its content was changed after it was "
            "anchored): run `audit verify`"
        )
    path = merkle.inclusion_proof_from_leaf_hashes(leaves, seq - first)
    try:
        return proofs.build_bundle(
            record,
            batch={"root": batch.root, "first_seq": first, "last_seq": last, "chain_head": batch.chain_head},
            path=path,
            evm=evm,
            sqlite=sqlite,
        )
    except proofs.ProofError as exc:  # cannot happen once the root matched; never emit a bad bundle
        raise LedgerMismatch(f"the bundle for seq {seq} does not verify: {exc}") from None


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
    return build_proof_bundle(records, seq, batch, evm=evm)


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
            problems.append(f"batch.root {b.get('root')} differs from the root anchored on chain by {where}: {onchain.root.hex()}")
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
        elif not reader.verify_inclusion(onchain.contract, merkle.leaf_hash(record_hash), index, size, path, onchain.root):
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
        problems.append(f"anchors.evm.block_number is {evm.get('block_number')!r}, the contract says block {onchain.block_number}")
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


def load_bundle(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a bundle file. Raises `ProveError` if it cannot be read or is not a JSON object."""
    p = Path(path)
    try:
        data = p.read_bytes() if str(path) != "-" else __import__("sys").stdin.buffer.read()
    except OSError as exc:
        raise ProveError(f"cannot read bundle {p}: {exc.strerror or exc}") from None
    try:
        return proofs.decode_bundle(data)
    except proofs.ProofError as exc:
        raise ProveError(f"{p}: {exc}") from None
