"""Whole-export audit against the EVM anchor, and the auditor's trusted checkpoint.

`audit verify --export F --rpc URL --contract A [--contract B ...] [--checkpoint FILE]` runs the
offline verifier of `ledger.audit` (hash chain, links, SQLite anchor) and, in the same pass over the
file, keeps every record's stored hash by seq. Then:

**Against the chain** (`ChainReader`, `audit_against_chain`): every batch of every contract is read
at one pinned block (one snapshot, prior-art section 3.5) and recomputed from the export: the RFC
6962 root over the batch's record hashes and the chain head (the hash at `lastSeq`). An operator
can rewrite history and recompute every later hash so the export is internally consistent; the
anchored roots and heads are the one thing he cannot rewrite. Findings (same `{seq, kind, detail}`
shape as the offline verifier, at most one per record, the verifier's own findings first):

- `anchor_mismatch` at a batch's `lastSeq`: the anchored chain head differs from the export's hash
  at that seq (every batch from the first rewritten record on: the head commits to the prefix);
  at its `firstSeq` when only the root differs; at a contract's `startSeq` when a migration is not
  contiguous (the next contract must start at the previous one's `lastSeq() + 1`) or a contract's
  batches do not follow each other;
- `truncated`: a seq the chain anchored that the export lacks beyond its last record (one per seq);
- `missing`: a seq of an anchored batch absent inside the export (the verifier reports it too).

**The checkpoint** (`check_checkpoint`, `advance_checkpoint`): a JSON file
`{"seq": N, "hash": H, "verified_at": <unix seconds>, "source": "..."}` the auditor keeps between
runs, the client state of immudb (prior-art section 5.1). If the export's record at the checkpoint
seq has another hash, history before the checkpoint was rewritten: `diverged`. If the export ends
before the checkpoint seq, the ledger is behind a state already verified: `truncated` (one per seq).
A valid run advances the checkpoint to the verified head (written atomically). Works without RPC.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import msgspec

from ledger import audit
from ledger.audit import MAX_GAP, AuditError, Finding, Malformed, RecordLine, VerifyReport
from ledger.chain import ChainRecord

from .merkle import root_of_leaf_hashes

__all__ = [
    "ANCHOR_MISMATCH",
    "DIVERGED",
    "MISSING",
    "TRUNCATED",
    "AuditResult",
    "ChainBatch",
    "ChainError",
    "ChainReader",
    "Checkpoint",
    "CheckpointError",
    "ContractState",
    "SeqHashes",
    "advance_checkpoint",
    "audit_against_chain",
    "check_checkpoint",
    "merge_findings",
    "read_checkpoint",
    "verify_with_chain",
    "write_checkpoint",
]

ANCHOR_MISMATCH = audit.ANCHOR_MISMATCH
TRUNCATED = audit.TRUNCATED
MISSING = audit.MISSING
DIVERGED = "diverged"

RPC_BATCH = 200  # batchAt calls per JSON-RPC batch request

_HEX64 = re.compile(r"[0-9a-f]{64}")
_sha256 = hashlib.sha256
_LEAF_PREFIX = b"\x00"


class ChainError(Exception):
    """The chain cannot be read as asked: RPC unreachable, no AuditAnchor at an address, a reply
    that makes no sense (exit 2: nothing was verified)."""


class CheckpointError(Exception):
    """The checkpoint file cannot be read or written (exit 2)."""


# --- the export's hashes by seq -----------------------------------------------------------------


class SeqHashes:
    """The stored hash of every seq read (the first record read with that seq wins, as in the
    verifier), in a compact array: one state byte and 32 hash bytes per seq.

    state: 0 absent, 1 present with a well-formed hash, 3 present but its hash is unknown."""

    def __init__(self) -> None:
        self.cap = 1 << 12
        self.state = bytearray(self.cap)
        self.hashes = bytearray(self.cap << 5)
        self.count = 0
        self.max_seq = 0

    def tap(self, batches: Iterable[Iterable[Any]]) -> Iterator[Any]:
        """The items of `batches` (a reader's `batches()`), each batch recorded before its items are
        handed on (iterated in C: no per-item Python frame)."""
        return itertools.chain.from_iterable(map(self._record, batches))

    def _record(self, batch: Iterable[Any]) -> list[Any]:
        items = batch if isinstance(batch, list) else list(batch)
        self.add_all(items)
        return items

    def add_all(self, items: Iterable[Any]) -> None:
        record_line = RecordLine
        hex64 = _HEX64.fullmatch
        fromhex = bytes.fromhex
        state, hashes, cap = self.state, self.hashes, self.cap
        count, max_seq = self.count, self.max_seq
        for item in items:
            count += 1
            if type(item) is record_line:
                seq, h = item.seq, item.hash
                # the fast path: a new seq with a well-formed hash
                if seq < cap and not state[seq] and seq <= count + MAX_GAP and hex64(h) is not None:
                    state[seq] = 1
                    o = seq << 5
                    hashes[o : o + 32] = fromhex(h)
                    if seq > max_seq:
                        max_seq = seq
                    continue
            elif isinstance(item, Malformed):
                seq, h = item.seq, None
            elif isinstance(item, ChainRecord):
                seq, h = item.seq, item.hash
            elif isinstance(item, dict):
                seq, h = item.get("seq"), item.get("hash")
            else:
                continue
            if type(seq) is not int or seq < 1 or seq > count + MAX_GAP:
                continue  # the verifier reports it
            if seq + 1 >= cap:
                self._grow(seq)
                state, hashes, cap = self.state, self.hashes, self.cap
            if state[seq]:
                continue
            if type(h) is str and hex64(h) is not None:
                state[seq] = 1
                o = seq << 5
                hashes[o : o + 32] = fromhex(h)
            else:
                state[seq] = 3
            if seq > max_seq:
                max_seq = seq
        self.count, self.max_seq = count, max_seq

    def _grow(self, seq: int) -> None:
        cap = self.cap
        while cap <= seq + 1:
            cap *= 2
        self.state.extend(bytes(cap - self.cap))
        self.hashes.extend(bytes((cap - self.cap) << 5))
        self.cap = cap

    def present(self, seq: int) -> bool:
        return 0 < seq < self.cap and self.state[seq] != 0

    def hash_bytes(self, seq: int) -> bytes | None:
        """The stored hash of `seq` (32 bytes), None if absent or unknown."""
        if 0 < seq < self.cap and self.state[seq] == 1:
            o = seq << 5
            return bytes(self.hashes[o : o + 32])
        return None

    def hash_hex(self, seq: int) -> str | None:
        b = self.hash_bytes(seq)
        return b.hex() if b is not None else None


# --- reading the chain --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContractState:
    address: str  # checksummed
    start_seq: int
    last_seq: int  # start_seq - 1 before the first batch
    batch_count: int


@dataclass(frozen=True, slots=True)
class ChainBatch:
    """One anchored batch, as the contract returns it (`AuditAnchor.Batch`) plus where it lives."""

    contract: str
    index: int
    root: bytes
    first_seq: int
    last_seq: int
    chain_head: bytes
    block_number: int

    @property
    def size(self) -> int:
        return self.last_seq - self.first_seq + 1

    def describe(self) -> str:
        return f"batch #{self.index} (seqs {self.first_seq}..{self.last_seq}) of contract {self.contract}"


def _rpc_message(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]


class ChainReader:
    """Reads `AuditAnchor` contracts through one RPC endpoint, every call at one pinned block.

    `contracts`: addresses in migration order. `block`: a block number, or a tag ("latest",
    "safe", "finalized") resolved once, now. `check_code`: refuse an address whose runtime code is
    not the committed AuditAnchor artifact (a look-alike could answer anything)."""

    def __init__(
        self,
        rpc: str | Any,
        contracts: Sequence[str],
        *,
        block: int | str = "latest",
        check_code: bool = True,
        timeout_s: float = 30.0,
    ) -> None:
        from web3 import Web3

        from . import chain_tools

        self._tools = chain_tools
        if isinstance(rpc, str):
            self.rpc_url = rpc
            self.w3 = Web3(Web3.HTTPProvider(rpc, request_kwargs={"timeout": timeout_s}))
        else:
            self.w3 = rpc
            self.rpc_url = getattr(getattr(rpc, "provider", None), "endpoint_uri", None) or "<web3>"
        if not contracts:
            raise ChainError("no contract address given")
        addresses = []
        for a in contracts:
            if not isinstance(a, str) or not Web3.is_address(a):
                raise ChainError(f"not a contract address: {a!r}")
            addresses.append(Web3.to_checksum_address(a))
        if len(set(addresses)) != len(addresses):
            raise ChainError("the same contract is given twice")
        self.addresses: list[str] = addresses
        self.chain_id: int = self._call(lambda: int(self.w3.eth.chain_id), "read the chain id")
        if isinstance(block, int):
            self.block = block
        else:
            self.block = self._call(lambda: int(self.w3.eth.get_block(block)["number"]), f"read the {block} block")
        self._contracts = {a: chain_tools.contract_at(self.w3, a) for a in addresses}
        self._states: dict[str, ContractState] = {}
        for a in addresses:
            code = self._call(lambda a=a: bytes(self.w3.eth.get_code(a, block_identifier=self.block)), f"read the code at {a}")
            if not code:
                raise ChainError(f"no contract at {a} on chain {self.chain_id} (block {self.block})")
            if check_code and not self._call(lambda a=a: chain_tools.code_matches_artifact(self.w3, a), f"read the code at {a}"):
                raise ChainError(f"the code at {a} is not the AuditAnchor contract (anchors/contracts/AuditAnchor.json)")

    # --- plumbing -------------------------------------------------------------------------------

    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        try:
            return fn()
        except ChainError:
            raise
        except Exception as exc:  # web3 / requests / decoding: all mean "cannot read the chain"
            raise ChainError(f"cannot {what} via {self.rpc_url}: {_rpc_message(exc)}") from None

    def contract(self, address: str) -> Any:
        return self._contracts[self.w3.to_checksum_address(address)]

    # --- state ----------------------------------------------------------------------------------

    def state(self, address: str) -> ContractState:
        a = self.w3.to_checksum_address(address)
        s = self._states.get(a)
        if s is None:
            c = self._contracts[a]
            b = self.block
            start = self._call(lambda: int(c.functions.startSeq().call(block_identifier=b)), f"read startSeq of {a}")
            last = self._call(lambda: int(c.functions.lastSeq().call(block_identifier=b)), f"read lastSeq of {a}")
            count = self._call(lambda: int(c.functions.batchCount().call(block_identifier=b)), f"read batchCount of {a}")
            s = ContractState(a, start, last, count)
            self._states[a] = s
        return s

    def states(self) -> list[ContractState]:
        return [self.state(a) for a in self.addresses]

    def _batch(self, address: str, index: int, t: Sequence[Any]) -> ChainBatch:
        ob = self._tools.OnChainBatch.from_tuple(t)
        return ChainBatch(address, index, ob.root, ob.first_seq, ob.last_seq, ob.chain_head, ob.block_number)

    def batches(self, address: str, *, progress: Callable[[int], None] | None = None) -> Iterator[ChainBatch]:
        """Every batch of one contract, in index order: raw `eth_call`s of `batchAt(i)` in JSON-RPC
        batches of `RPC_BATCH` (web3's per-call encoding costs ~3 ms, which a long-lived contract's
        thousands of batches would feel); one web3 call at a time if the endpoint refuses batches."""
        a = self.w3.to_checksum_address(address)
        c = self._contracts[a]
        count = self.state(a).batch_count
        b = self.block
        use_batch = callable(getattr(self.w3.provider, "make_batch_request", None))
        i = 0
        while i < count:
            hi = min(count, i + RPC_BATCH)
            results: list[tuple[Any, ...]] | None = self._batch_at_raw(a, i, hi) if use_batch and hi - i > 1 else None
            if results is None:
                use_batch = False
                results = [
                    self._call(lambda j=j: c.functions.batchAt(j).call(block_identifier=b), f"read batch #{j} of {a}")
                    for j in range(i, hi)
                ]
            for j, t in zip(range(i, hi), results):
                yield self._call(lambda t=t, j=j: self._batch(a, j, t), f"decode batch #{j} of {a}")
            i = hi
            if progress is not None:
                progress(i)

    def _batch_at_raw(self, address: str, lo: int, hi: int) -> list[tuple[Any, ...]] | None:
        """`batchAt(lo..hi-1)` in one JSON-RPC batch request; None if the endpoint will not do it."""
        from eth_utils import keccak

        selector = keccak(text="batchAt(uint256)")[:4].hex()
        block = hex(self.block)
        calls = [("eth_call", [{"to": address, "data": "0x" + selector + j.to_bytes(32, "big").hex()}, block]) for j in range(lo, hi)]
        try:
            replies = self.w3.provider.make_batch_request(calls)
        except Exception:
            return None
        if not isinstance(replies, list) or len(replies) != hi - lo:
            return None
        out: list[tuple[Any, ...]] = []
        for reply in replies:
            result = reply.get("result") if isinstance(reply, dict) else None
            if not isinstance(result, str):
                return None
            raw = bytes.fromhex(result[2:] if result.startswith("0x") else result)
            if len(raw) != 160:  # Batch: five static words
                return None
            w = [raw[k : k + 32] for k in range(0, 160, 32)]
            out.append((w[0], int.from_bytes(w[1], "big"), int.from_bytes(w[2], "big"), w[3], int.from_bytes(w[4], "big")))
        return out

    def batch_for_seq(self, seq: int) -> ChainBatch | None:
        """The batch holding `seq` on the first contract whose anchored range holds it."""
        for st in self.states():
            if st.batch_count and st.start_seq <= seq <= st.last_seq:
                c = self._contracts[st.address]
                b = self.block
                index, t = self._call(
                    lambda: c.functions.batchForSeq(seq).call(block_identifier=b), f"read the batch of seq {seq} from {st.address}"
                )
                return self._call(lambda: self._batch(st.address, int(index), t), "decode a batch")
        return None

    def anchored_event(self, batch: ChainBatch) -> dict[str, Any]:
        """The `Anchored` log of `batch` (filtered by its indexed batchIndex, in the batch's own
        block) as the bundle's `anchors.evm` section."""
        c = self._contracts[batch.contract]
        logs = self._call(
            lambda: list(
                c.events.Anchored.get_logs(
                    argument_filters={"batchIndex": batch.index}, from_block=batch.block_number, to_block=batch.block_number
                )
            ),
            f"read the Anchored event of batch #{batch.index}",
        )
        for log in logs:
            args = log["args"]
            if bytes(args["root"]) == batch.root and not log.get("removed", False):
                return {
                    "chain_id": self.chain_id,
                    "contract": batch.contract,
                    "tx_hash": "0x" + bytes(log["transactionHash"]).hex(),
                    "block_number": int(log["blockNumber"]),
                    "block_hash": "0x" + bytes(log["blockHash"]).hex(),
                    "batch_index": batch.index,
                }
        raise ChainError(
            f"no Anchored event for batch #{batch.index} of {batch.contract} in block {batch.block_number} "
            f"(the RPC endpoint may have pruned its logs)"
        )

    def verify_record(self, address: str, record_hash: bytes, seq: int, path: Sequence[bytes]) -> bool:
        c = self.contract(address)
        b = self.block
        return bool(
            self._call(lambda: c.functions.verifyRecord(record_hash, seq, list(path)).call(block_identifier=b), "call verifyRecord")
        )

    def verify_inclusion(self, address: str, leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes) -> bool:
        c = self.contract(address)
        b = self.block
        return bool(
            self._call(
                lambda: c.functions.verifyInclusion(leaf, index, size, list(path), root).call(block_identifier=b),
                "call verifyInclusion",
            )
        )

    def describe(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "block": self.block,
            "contracts": [
                {"address": s.address, "start_seq": s.start_seq, "last_seq": s.last_seq, "batches": s.batch_count}
                for s in self.states()
            ],
        }


# --- the export against the chain ---------------------------------------------------------------


def _add(findings: dict[int, Finding], seq: int, kind: str, detail: str) -> None:
    if seq not in findings:
        findings[seq] = Finding(seq, kind, detail)


def _add_range(findings: dict[int, Finding], lo: int, hi: int, kind: str, detail: str) -> None:
    """One finding per seq of lo..hi, or a single one at `lo` if the run is implausibly long."""
    if hi < lo:
        return
    if hi - lo + 1 > MAX_GAP:
        _add(findings, lo, kind, f"{detail} (seqs {lo}..{hi}, {hi - lo + 1} records, reported once)")
        return
    for s in range(lo, hi + 1):
        _add(findings, s, kind, detail)


@dataclass(slots=True)
class ChainSummary:
    chain_id: int
    block: int
    contracts: list[dict[str, Any]]
    batches: int = 0
    anchored_upto: int = 0
    checked_batches: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "block": self.block,
            "contracts": self.contracts,
            "batches": self.batches,
            "checked_batches": self.checked_batches,
            "anchored_upto": self.anchored_upto,
        }


def audit_against_chain(
    seqs: SeqHashes,
    reader: ChainReader,
    *,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Finding], ChainSummary]:
    """Check every batch of every contract of `reader` against the export's hashes `seqs`.
    Returns the findings (at most one per seq) and a summary. Raises `ChainError`."""
    findings: dict[int, Finding] = {}
    summary = ChainSummary(reader.chain_id, reader.block, [])
    max_seq = seqs.max_seq
    prev_state: ContractState | None = None
    expected_next: int | None = None  # first seq the next batch must start at
    previous_matched: bool | None = None  # did the batch before match (None: unknown)?
    n = 0
    for st in reader.states():
        summary.contracts.append(
            {"address": st.address, "start_seq": st.start_seq, "last_seq": st.last_seq, "batches": st.batch_count}
        )
        if prev_state is not None and st.start_seq != prev_state.last_seq + 1:
            if st.start_seq > prev_state.last_seq + 1:
                why = f"seqs {prev_state.last_seq + 1}..{st.start_seq - 1} are anchored by neither"
            else:
                why = f"seqs {st.start_seq}..{prev_state.last_seq} are anchored by both"
            _add(
                findings,
                st.start_seq,
                ANCHOR_MISMATCH,
                f"migration not contiguous: contract {st.address} starts at seq {st.start_seq} but contract "
                f"{prev_state.address} ends at seq {prev_state.last_seq} ({why})",
            )
        expected_next = st.start_seq
        if prev_state is None and st.start_seq == 1:
            previous_matched = True  # nothing before the first batch
        for batch in reader.batches(st.address):
            n += 1
            summary.batches += 1
            if batch.first_seq != expected_next or batch.last_seq < batch.first_seq:
                _add(
                    findings,
                    max(batch.first_seq, 1),
                    ANCHOR_MISMATCH,
                    f"{batch.describe()} does not follow the previous batch (expected it to start at seq {expected_next})",
                )
            expected_next = batch.last_seq + 1
            status = _check_batch(seqs, batch, findings, max_seq, previous_matched)
            if status is not None:
                summary.checked_batches += 1
            previous_matched = status
            if progress is not None and n % 1000 == 0:
                progress(n)
        if st.batch_count and expected_next != st.last_seq + 1:
            _add(
                findings,
                max(expected_next, 1),
                ANCHOR_MISMATCH,
                f"contract {st.address} reports lastSeq {st.last_seq} but its batches end at seq {expected_next - 1}",
            )
        summary.anchored_upto = max(summary.anchored_upto, st.last_seq)
        prev_state = st
    return sorted(findings.values(), key=lambda f: (f.seq, f.kind)), summary


def _check_batch(
    seqs: SeqHashes, batch: ChainBatch, findings: dict[int, Finding], max_seq: int, previous_matched: bool | None
) -> bool | None:
    """Compare one batch with the export: True if it matches, False if not, None if its root and
    head could not be recomputed (records absent or damaged)."""
    first, last = batch.first_seq, batch.last_seq
    if last > max_seq:
        _add_range(
            findings,
            max(first, max_seq + 1),
            last,
            TRUNCATED,
            f"anchored on chain in {batch.describe()}, but beyond the export's last record (seq {max_seq})",
        )
        last_present = min(last, max_seq)
    else:
        last_present = last
    complete = last <= max_seq
    state, hashes = seqs.state, seqs.hashes
    lo, hi = first, last_present + 1
    if hi > lo and (hi > seqs.cap or state.count(1, lo, hi) != hi - lo):
        complete = False
        for s in range(first, last_present + 1):
            if (state[s] if s < seqs.cap else 0) == 0:
                _add(findings, s, MISSING, f"absent from the export, anchored on chain in {batch.describe()}")
    if not complete:
        return None
    with memoryview(hashes) as view:  # released at once: the bytearray stays resizable
        leaves = [_sha256(_LEAF_PREFIX + view[o : o + 32]).digest() for o in range(first << 5, (last + 1) << 5, 32)]
    root = root_of_leaf_hashes(leaves)
    head = seqs.hash_bytes(last)
    if head != batch.chain_head:
        if previous_matched is True:
            where = f"the first rewritten record is in seqs {first}..{last}"
        elif previous_matched is False:
            where = "this follows from an earlier batch's mismatch (a rewrite changes every later hash)"
        else:
            where = f"a record at or before seq {last} differs"
        also = "; the Merkle root differs too" if root != batch.root else ""
        _add(
            findings,
            last,
            ANCHOR_MISMATCH,
            f"the chain head anchored by {batch.describe()} is {batch.chain_head.hex()}, the export's hash at seq {last} "
            f"is {head.hex() if head else None}: {where}{also}",
        )
        return False
    if root != batch.root:
        _add(
            findings,
            first,
            ANCHOR_MISMATCH,
            f"the Merkle root of seqs {first}..{last} recomputed from the export differs from the root anchored by "
            f"{batch.describe()}: a record of this batch is not the one anchored",
        )
        return False
    return True


def merge_findings(*groups: Iterable[Finding]) -> list[Finding]:
    """At most one finding per seq: the first group's finding wins, then the next group's..."""
    out: dict[int, Finding] = {}
    for group in groups:
        for f in group:
            if f.seq not in out:
                out[f.seq] = f
    return sorted(out.values(), key=lambda f: (f.seq, f.kind))


# --- the checkpoint -----------------------------------------------------------------------------


class _CheckpointFile(msgspec.Struct, forbid_unknown_fields=False):
    seq: int
    hash: str
    verified_at: int | str | None = None
    source: str | None = None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    hash: str
    verified_at: int | str | None = None
    source: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, "verified_at": self.verified_at, "source": self.source}

    def describe(self) -> str:
        when = self.verified_at
        if isinstance(when, int):
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
        parts = [f"seq {self.seq}"]
        if when is not None:
            parts.append(f"verified at {when}")
        if self.source:
            parts.append(f"from {self.source}")
        return "checkpoint (" + ", ".join(parts) + ")"


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint | None:
    """The checkpoint in `path`, None if the file does not exist. Raises `CheckpointError`."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {p}: {exc.strerror or exc}") from None
    try:
        cp = msgspec.json.decode(raw, type=_CheckpointFile)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CheckpointError(f"checkpoint {p} is not a checkpoint file ({exc})") from None
    if cp.seq < 0 or _HEX64.fullmatch(cp.hash) is None:
        raise CheckpointError(f"checkpoint {p}: seq must be >= 0 and hash 64 lowercase hex digits")
    return Checkpoint(cp.seq, cp.hash, cp.verified_at, cp.source)


def write_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> None:
    """Write atomically: a temporary file beside `path`, fsync, rename, fsync the directory."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    data = msgspec.json.format(msgspec.json.encode(checkpoint.to_json()), indent=2) + b"\n"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {p}: {exc.strerror or exc}") from None
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            pass
    try:
        fd = os.open(p.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_checkpoint(cp: Checkpoint, seqs: SeqHashes) -> list[Finding]:
    """`diverged` / `truncated` findings of the export against a trusted checkpoint."""
    if cp.seq == 0:
        return []
    findings: dict[int, Finding] = {}
    if cp.seq > seqs.max_seq:
        _add_range(
            findings,
            seqs.max_seq + 1,
            cp.seq,
            TRUNCATED,
            f"the export ends at seq {seqs.max_seq}, before the {cp.describe()}: the ledger is behind a state already verified",
        )
    else:
        h = seqs.hash_hex(cp.seq)
        if h is not None and h != cp.hash:
            _add(
                findings,
                cp.seq,
                DIVERGED,
                f"hash {h} differs from {cp.hash} in the {cp.describe()}: history up to seq {cp.seq} was rewritten",
            )
    return sorted(findings.values(), key=lambda f: (f.seq, f.kind))


def advance_checkpoint(path: str | os.PathLike[str], head_seq: int, head_hash: str, source: str) -> Checkpoint:
    cp = Checkpoint(head_seq, head_hash, int(time.time()), source)
    write_checkpoint(path, cp)
    return cp


# --- the whole run ------------------------------------------------------------------------------


@dataclass(slots=True)
class AuditResult:
    """The verifier's report with the chain's and the checkpoint's findings merged in."""

    report: VerifyReport
    chain: ChainSummary | None = None
    checkpoint_before: Checkpoint | None = None
    checkpoint_after: Checkpoint | None = None
    checkpoint_path: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.report.valid

    def to_json(self) -> dict[str, Any]:
        out = self.report.to_json()
        if self.chain is not None:
            out["chain"] = self.chain.to_json()
        if self.checkpoint_path is not None:
            out["checkpoint"] = {
                "path": self.checkpoint_path,
                "before": self.checkpoint_before.to_json() if self.checkpoint_before else None,
                "after": self.checkpoint_after.to_json() if self.checkpoint_after else None,
            }
        if self.notes:
            out["notes"] = self.notes
        return out

    def summary_lines(self) -> list[str]:
        lines = self.report.summary_lines()
        verdict = lines.pop()
        lines.extend(self.notes)
        return [*lines, verdict]


def verify_with_chain(
    *,
    export: str | os.PathLike[str] | None = None,
    db: str | os.PathLike[str] | None = None,
    anchor_db: str | os.PathLike[str] | None = None,
    reader: ChainReader | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> AuditResult:
    """`audit verify` with the chain and/or a checkpoint: one pass over the export (or ledger) for
    the offline verifier and the hash table, then the chain's batches, then the checkpoint.
    Raises `AuditError`, `ChainError`, `CheckpointError` (exit 2)."""
    if (export is None) == (db is None):
        raise AuditError("give exactly one of an export file or a ledger database")
    cp_before = read_checkpoint(checkpoint) if checkpoint is not None else None
    if checkpoint is not None and not Path(checkpoint).resolve().parent.is_dir():
        # found now rather than after a long run whose result could not be kept
        raise CheckpointError(f"cannot write checkpoint {checkpoint}: its directory does not exist")
    seqs = SeqHashes()
    if export is not None:
        with audit.ExportReader(export, progress=progress) as r:
            anchored = audit.read_anchors(anchor_db) if anchor_db is not None else None
            report = audit.verify_records(
                seqs.tap(r.batches()), anchored=anchored, claimed_head=r.claimed_head, head_source="export header"
            )
        source = f"export {Path(export).resolve()}"
    else:
        with audit.DatabaseReader(db, progress=progress) as r:  # type: ignore[arg-type]
            anchored = audit.read_anchors(anchor_db) if anchor_db is not None else None
            report = audit.verify_records(
                seqs.tap(r.batches()), anchored=anchored, claimed_head=r.claimed_head, head_source="ledger_head row"
            )
        source = f"ledger {Path(db).resolve()}"  # type: ignore[arg-type]

    result = AuditResult(report=report, checkpoint_before=cp_before, checkpoint_path=str(checkpoint) if checkpoint else None)
    chain_findings: list[Finding] = []
    if reader is not None:
        chain_findings, summary = audit_against_chain(seqs, reader)
        result.chain = summary
        result.notes.append(
            f"chain {summary.chain_id} at block {summary.block}: {summary.batches} batches on "
            f"{len(summary.contracts)} contract(s), anchored up to seq {summary.anchored_upto}"
        )
        if summary.contracts and summary.contracts[0]["start_seq"] > 1:
            result.notes.append(f"note: seqs 1..{summary.contracts[0]['start_seq'] - 1} are before the first contract's startSeq")
        if report.head_seq > summary.anchored_upto:
            result.notes.append(
                f"note: seqs {summary.anchored_upto + 1}..{report.head_seq} are not anchored on chain yet "
                "(checked by the hash chain only)"
            )
    cp_findings = check_checkpoint(cp_before, seqs) if cp_before is not None else []
    if chain_findings or cp_findings:
        merged = merge_findings(report.findings, chain_findings, cp_findings)
        result.report = VerifyReport(report.records, report.head_seq, report.head_hash, merged)
    if checkpoint is not None:
        if result.valid and report.head_hash is not None:
            result.checkpoint_after = advance_checkpoint(checkpoint, report.head_seq, report.head_hash, source)
            verb = "created" if cp_before is None else "advanced"
            if cp_before is not None and cp_before.seq == report.head_seq:
                verb = "confirmed"
            result.notes.append(f"checkpoint {verb}: seq {report.head_seq} hash {report.head_hash} ({checkpoint})")
        else:
            result.notes.append(f"checkpoint not advanced (the run has findings): {checkpoint}")
    return result
