"""Proof bundle v1: one ledger record with everything needed to check it against its anchors.

The format (design section 4, `GET /v1/audit/records/{seq}`, `agentkeys-broker audit prove`)::

    {"format": "agentkeys-proof", "v": 1,
     "record":  {<the v1 envelope>, "hash": "<64 hex>"},
     "batch":   {"root": "<64 hex>", "first_seq": F, "last_seq": L, "chain_head": "<64 hex>"},
     "proof":   {"leaf_index": seq - F, "tree_size": L - F + 1, "path": ["<64 hex>", ...]},
     "anchors": {"sqlite": {...optional...},
                 "evm": {"chain_id": 84532, "contract": "0x...", "tx_hash": "0x...",
                         "block_number": B, "block_hash": "0x...", "batch_index": I}}}

Hashes of the ledger (record hash, root, chain head, path elements) are 64 lowercase hex digits
without a prefix, as in the export; Ethereum values (address, tx and block hashes) are 0x-hex.
`batch` and `proof` are absent from a bundle whose record is confirmed by the SQLite anchor only.

Offline checks (`verify_bundle_offline`), each problem one line:
1. the record is a v1 envelope plus `hash`, and `hash` recomputes from the envelope (ledger.chain);
2. leaf = SHA-256(0x00 || record hash bytes), index = seq - first_seq,
   size = last_seq - first_seq + 1 (the bundle's `leaf_index`/`tree_size` must say the same);
3. the audit path (RFC 9162 section 2.1.3.2, `ledger.audit.merkle`) leads to `batch.root`;
4. if seq == last_seq, the record hash is `batch.chain_head`.
What these checks cannot tell is whether `batch` is what the chain holds: that is the on-chain
half (`anchors.proof_builder.verify_bundle_on_chain`, `audit verify-proof --rpc`).

The one builder (`build_bundle`) takes the records of the anchored batch and what the anchor
committed to (root, seqs, chain head): it refuses (`LedgerMismatch`) unless the records recompute
that root and head, computes the audit path, assembles the bundle and runs the offline checks once
more. The broker (`GET /v1/audit/records/{seq}`) and `audit prove` both build bundles with it.

Pure: imports only `ledger.*`, the standard library and msgspec (design section 1).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard

import msgspec

from ..chain import ENVELOPE_KEYS, FORMAT_VERSION, ChainRecord, recompute_hash
from . import merkle
from .errors import LedgerMismatch, ProofError
from .merkle import MAX_PATH, record_leaf, verify_inclusion

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "AnchoredBatch",
    "BatchCommitment",
    "LedgerMismatch",
    "ProofError",
    "build_bundle",
    "decode_bundle",
    "encode_bundle",
    "verify_bundle_offline",
]

BUNDLE_FORMAT = "agentkeys-proof"
BUNDLE_VERSION = 1

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX64_0X = re.compile(r"0x[0-9a-fA-F]{64}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_TOP_KEYS = ("format", "v", "record", "batch", "proof", "anchors")
_BATCH_KEYS = ("root", "first_seq", "last_seq", "chain_head")
_PROOF_KEYS = ("leaf_index", "tree_size", "path")
_EVM_REQUIRED = ("chain_id", "contract", "tx_hash", "block_number", "block_hash")
_EVM_OPTIONAL = ("batch_index",)


class BatchCommitment(Protocol):
    """What an anchor committed to for one batch (an on-chain batch, or the broker's own record
    of its confirmed batch)."""

    @property
    def root(self) -> bytes: ...
    @property
    def first_seq(self) -> int: ...
    @property
    def last_seq(self) -> int: ...
    @property
    def chain_head(self) -> bytes: ...
    def describe(self) -> str: ...


@dataclass(frozen=True, slots=True)
class AnchoredBatch:
    """A `BatchCommitment` from plain values."""

    root: bytes
    first_seq: int
    last_seq: int
    chain_head: bytes
    name: str = "the anchored batch"

    def describe(self) -> str:
        return f"{self.name} (seqs {self.first_seq}..{self.last_seq})"


def _is_int(v: object) -> TypeGuard[int]:
    return type(v) is int


def _is_hex64(v: object) -> TypeGuard[str]:
    return type(v) is str and _HEX64.fullmatch(v) is not None


# --- building -----------------------------------------------------------------------------------

RecordLike = ChainRecord | Mapping[str, Any]


def _export_object(record: RecordLike | None) -> dict[str, Any] | None:
    if record is None:
        return None
    # a copy: the bundle shares no mutable object (`data`) with the caller's record
    return copy.deepcopy(record.export_object() if isinstance(record, ChainRecord) else dict(record))


def build_bundle(
    records: Mapping[int, RecordLike | None],
    seq: int,
    batch: BatchCommitment | None = None,
    *,
    evm: Mapping[str, Any] | None = None,
    sqlite: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The v1 bundle of the record at `seq`, checked offline.

    `records`: the records by seq (a `ChainRecord` or an export object: envelope plus "hash";
    None for a record present but unreadable): with `batch`, every seq of the batch, else at least
    `seq`. `batch`: what the anchor committed to; without it the bundle has no `batch`/`proof` (a
    record confirmed by the SQLite anchor only). `evm` / `sqlite`: the anchors' sections, copied
    as given.

    Raises `LedgerMismatch` unless the records recompute the batch's root and chain head and the
    record at `seq` matches its own hash; `ProofError` if the bundle does not verify offline."""
    if batch is None:
        record = _export_object(records.get(seq))
        if record is None:
            raise ProofError([f"no readable record at seq {seq}"])
        return _assemble(record, None, None, evm=evm, sqlite=sqlite)
    first, last = batch.first_seq, batch.last_seq
    where = batch.describe()
    if not first <= seq <= last:
        raise ValueError(f"seq {seq} is not in {where}")
    absent = [s for s in range(first, last + 1) if s not in records]
    if absent:
        shown = ", ".join(map(str, absent[:10])) + (" ..." if len(absent) > 10 else "")
        raise LedgerMismatch(f"the ledger lacks seq(s) {shown} of {where}: it no longer matches the chain")
    objs: dict[int, dict[str, Any]] = {}
    leaves: list[bytes] = []
    for s in range(first, last + 1):
        obj = _export_object(records[s])
        h = obj.get("hash") if obj is not None else None
        if obj is None or not _is_hex64(h):
            raise LedgerMismatch(f"record seq {s} of {where} is damaged in the ledger (no valid hash): run `audit verify`")
        objs[s] = obj
        leaves.append(record_leaf(h))
    root = merkle.root_of_leaf_hashes(leaves)
    head = objs[last]["hash"]
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
    record = objs[seq]
    envelope = {k: record.get(k) for k in ENVELOPE_KEYS}
    try:
        content: str | None = recompute_hash(envelope)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
        content = None
    if content != record["hash"] or set(record) != {*ENVELOPE_KEYS, "hash"}:
        raise LedgerMismatch(
            f"record seq {seq} in the ledger does not match its own hash (its content was changed after it was "
            "anchored): run `audit verify`"
        )
    path = merkle.inclusion_proof_from_leaf_hashes(leaves, seq - first)
    section = {"root": batch.root.hex(), "first_seq": first, "last_seq": last, "chain_head": batch.chain_head.hex()}
    return _assemble(record, section, path, evm=evm, sqlite=sqlite)


def _assemble(
    record: dict[str, Any],
    batch: dict[str, Any] | None,
    path: Sequence[bytes] | None,
    *,
    evm: Mapping[str, Any] | None,
    sqlite: Mapping[str, Any] | None,
) -> dict[str, Any]:
    bundle: dict[str, Any] = {"format": BUNDLE_FORMAT, "v": BUNDLE_VERSION, "record": record}
    if batch is not None and path is not None:
        first, last, seq = batch["first_seq"], batch["last_seq"], record.get("seq")
        bundle["batch"] = batch
        bundle["proof"] = {
            "leaf_index": seq - first if _is_int(seq) else None,
            "tree_size": last - first + 1,
            "path": [p.hex() for p in path],
        }
    anchors: dict[str, Any] = {}
    if sqlite is not None:
        anchors["sqlite"] = dict(sqlite)
    if evm is not None:
        anchors["evm"] = dict(evm)
    bundle["anchors"] = anchors
    problems = verify_bundle_offline(bundle, require_proof=batch is not None)
    if problems:
        raise ProofError(problems)
    return bundle


_FORMATTED = msgspec.json.Encoder()


def encode_bundle(bundle: Mapping[str, Any], *, indent: int = 2) -> bytes:
    """The bundle as JSON text (keys in the documented order, the record's keys sorted as in the
    export), with a trailing newline."""
    ordered = {k: bundle[k] for k in _TOP_KEYS if k in bundle}
    ordered.update({k: v for k, v in bundle.items() if k not in ordered})
    if isinstance(ordered.get("record"), Mapping):
        ordered["record"] = dict(sorted(ordered["record"].items()))
    raw = _FORMATTED.encode(ordered)
    return (msgspec.json.format(raw, indent=indent) if indent else raw) + b"\n"


def decode_bundle(data: bytes | str) -> dict[str, Any]:
    """Parse a bundle file's bytes. Raises `ProofError` if it is not a JSON object."""
    try:
        obj = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise ProofError([f"not valid JSON ({exc})"]) from None
    if type(obj) is not dict:
        raise ProofError(["not a JSON object"])
    return obj


# --- verifying ----------------------------------------------------------------------------------


def verify_bundle_offline(bundle: Any, *, require_proof: bool = True) -> list[str]:
    """Every problem found in `bundle` without any network (empty list: valid).

    `require_proof=False` accepts a bundle without `batch`/`proof` (a record confirmed by the
    SQLite anchor only); its record is still checked. Never raises."""
    if type(bundle) is not dict:
        return ["the bundle is not a JSON object"]
    problems: list[str] = []
    if bundle.get("format") != BUNDLE_FORMAT:
        problems.append(f"format is {bundle.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    v = bundle.get("v")
    if not _is_int(v) or v != BUNDLE_VERSION:
        problems.append(f"v is {v!r}, expected {BUNDLE_VERSION}")
    if problems:
        return problems  # not a v1 bundle: nothing else is meaningful
    extra = sorted(k for k in bundle if k not in _TOP_KEYS)
    if extra:
        problems.append("unexpected bundle fields: " + ", ".join(extra))

    record_hash, seq = _check_record(bundle.get("record"), problems)
    _check_anchors(bundle.get("anchors"), record_hash, problems)

    batch, proof = bundle.get("batch"), bundle.get("proof")
    if batch is None and proof is None:
        if require_proof:
            problems.append("no batch and proof: the record is not proven against an EVM anchor batch")
        return problems
    if batch is None or proof is None:
        problems.append("batch and proof must both be present" if batch is None else "batch without proof")
        return problems
    b = _check_batch(batch, problems)
    p = _check_proof(proof, problems)
    if b is None or p is None or seq is None:
        return problems
    root, first, last, head = b
    leaf_index, tree_size, path = p
    if not first <= seq <= last:
        problems.append(f"record seq {seq} is outside the batch {first}..{last}")
        return problems
    index, size = seq - first, last - first + 1
    if leaf_index != index:
        problems.append(f"proof.leaf_index is {leaf_index}, expected seq - first_seq = {index}")
    if tree_size != size:
        problems.append(f"proof.tree_size is {tree_size}, expected last_seq - first_seq + 1 = {size}")
    if record_hash is not None:
        # the derived index and size, as the contract's verifyRecord uses them
        if not verify_inclusion(record_leaf(record_hash), index, size, path, root):
            problems.append(
                f"the inclusion proof does not lead from the record hash (leaf {index} of {size}) to the batch root"
            )
        if seq == last and record_hash != head:
            problems.append("the record is the batch's last (seq == last_seq) but its hash differs from batch.chain_head")
    return problems


def _check_record(rec: Any, problems: list[str]) -> tuple[str | None, int | None]:
    """Shape and hash of `record`. Returns (record hash if it is trustworthy, seq if readable)."""
    if type(rec) is not dict:
        problems.append("record is missing or not an object")
        return None, None
    seq = rec.get("seq")
    seq_ok = _is_int(seq) and seq >= 1
    if not seq_ok:
        problems.append("record.seq is not a positive integer")
    missing = [k for k in (*ENVELOPE_KEYS, "hash") if k not in rec]
    if missing:
        problems.append("record is missing " + ", ".join(missing))
    extra = sorted(k for k in rec if k not in ENVELOPE_KEYS and k != "hash")
    if extra:
        problems.append("record has unexpected fields: " + ", ".join(extra))
    if "v" in rec and (not _is_int(rec["v"]) or rec["v"] != FORMAT_VERSION):
        problems.append(f"record.v is {rec['v']!r}, expected {FORMAT_VERSION}")
    for key, typ in (("type", str), ("stream", str), ("version", int), ("at", str)):
        if key in rec and type(rec[key]) is not typ:
            problems.append(f"record.{key} is not {'an integer' if typ is int else 'a string'}")
    if "prev" in rec and not _is_hex64(rec["prev"]):
        problems.append("record.prev is not 64 lowercase hex digits")
    h = rec.get("hash")
    if not _is_hex64(h):
        problems.append("record.hash is not 64 lowercase hex digits")
        return None, seq if seq_ok else None
    if missing or extra:
        return None, seq if seq_ok else None
    envelope = {k: rec[k] for k in ENVELOPE_KEYS}
    try:
        content = recompute_hash(envelope)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
        content = None
    if content != h:
        problems.append("record.hash does not match the record's content")
        return None, seq if seq_ok else None
    return h, seq if seq_ok else None


def _check_batch(batch: Any, problems: list[str]) -> tuple[bytes, int, int, str] | None:
    if type(batch) is not dict:
        problems.append("batch is not an object")
        return None
    n = len(problems)
    extra = sorted(k for k in batch if k not in _BATCH_KEYS)
    if extra:
        problems.append("batch has unexpected fields: " + ", ".join(extra))
    for key in ("root", "chain_head"):
        if not _is_hex64(batch.get(key)):
            problems.append(f"batch.{key} is not 64 lowercase hex digits")
    first, last = batch.get("first_seq"), batch.get("last_seq")
    if not _is_int(first) or first < 1:
        problems.append("batch.first_seq is not a positive integer")
    elif not _is_int(last) or last < first:
        problems.append("batch.last_seq is not an integer >= first_seq")
    if len(problems) > n:
        return None
    return bytes.fromhex(batch["root"]), batch["first_seq"], batch["last_seq"], batch["chain_head"]


def _check_proof(proof: Any, problems: list[str]) -> tuple[int, int, list[bytes]] | None:
    if type(proof) is not dict:
        problems.append("proof is not an object")
        return None
    n = len(problems)
    extra = sorted(k for k in proof if k not in _PROOF_KEYS)
    if extra:
        problems.append("proof has unexpected fields: " + ", ".join(extra))
    for key in ("leaf_index", "tree_size"):
        if not _is_int(proof.get(key)):
            problems.append(f"proof.{key} is not an integer")
    path: Any = proof.get("path")
    if type(path) is not list:
        problems.append("proof.path is not a list")
    elif len(path) > MAX_PATH:
        problems.append(f"proof.path has {len(path)} elements, more than any tree allows ({MAX_PATH})")
    else:
        bad = [i for i, p in enumerate(path) if not _is_hex64(p)]
        if bad:
            problems.append(f"proof.path[{bad[0]}] is not 64 lowercase hex digits")
    if len(problems) > n:
        return None
    return proof["leaf_index"], proof["tree_size"], [bytes.fromhex(p) for p in path]


def _check_anchors(anchors: Any, record_hash: str | None, problems: list[str]) -> None:
    if anchors is None:
        return
    if type(anchors) is not dict:
        problems.append("anchors is not an object")
        return
    sqlite = anchors.get("sqlite")
    if sqlite is not None:
        if type(sqlite) is not dict:
            problems.append("anchors.sqlite is not an object")
        elif "hash" in sqlite and record_hash is not None and sqlite["hash"] != record_hash:
            problems.append("anchors.sqlite.hash differs from the record hash")
    evm = anchors.get("evm")
    if evm is None:
        return
    if type(evm) is not dict:
        problems.append("anchors.evm is not an object")
        return
    missing = [k for k in _EVM_REQUIRED if k not in evm]
    if missing:
        problems.append("anchors.evm is missing " + ", ".join(missing))
    extra = sorted(k for k in evm if k not in _EVM_REQUIRED and k not in _EVM_OPTIONAL)
    if extra:
        problems.append("anchors.evm has unexpected fields: " + ", ".join(extra))
    for key in ("chain_id", "block_number", "batch_index"):
        if key in evm and (not _is_int(evm[key]) or evm[key] < 0):
            problems.append(f"anchors.evm.{key} is not a non-negative integer")
    if "contract" in evm and (type(evm["contract"]) is not str or not _ADDRESS.fullmatch(evm["contract"])):
        problems.append("anchors.evm.contract is not a 0x-prefixed 20-byte address")
    for key in ("tx_hash", "block_hash"):
        if key in evm and (type(evm[key]) is not str or not _HEX64_0X.fullmatch(evm[key])):
            problems.append(f"anchors.evm.{key} is not a 0x-prefixed 32-byte hash")
