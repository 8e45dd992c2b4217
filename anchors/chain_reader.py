"""Reading `AuditAnchor` contracts for the auditor: every call at one pinned block (one snapshot,
prior-art section 3.5), batches read in JSON-RPC batch requests, the `Anchored` event of a batch,
and the contract's own `verifyRecord` / `verifyInclusion`.

Used by `audit verify --rpc` (`anchors.chain_audit`), `audit prove` and `audit verify-proof`
(`anchors.proof_builder`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["RPC_BATCH", "ChainBatch", "ChainError", "ChainReader", "ContractState"]

RPC_BATCH = 200  # batchAt calls per JSON-RPC batch request


class ChainError(Exception):
    """The chain cannot be read as asked: RPC unreachable, no AuditAnchor at an address, a reply
    that makes no sense (exit 2: nothing was verified)."""



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
            self.w3: Any = Web3(Web3.HTTPProvider(rpc, request_kwargs={"timeout": timeout_s}))
        else:
            self.w3 = rpc
            self.rpc_url = getattr(getattr(rpc, "provider", None), "endpoint_uri", None) or "<web3>"
        if not contracts:
            raise ChainError("no contract address given")
        addresses: list[str] = []
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
        self._contracts: dict[str, Any] = {a: chain_tools.contract_at(self.w3, a) for a in addresses}
        self._states: dict[str, ContractState] = {}
        for a in addresses:
            code = self._call(lambda a=a: bytes(self.w3.eth.get_code(a, block_identifier=self.block)), f"read the code at {a}")
            if not code:
                raise ChainError(f"no contract at {a} on chain {self.chain_id} (block {self.block})")
            if check_code and not self._call(lambda a=a: chain_tools.code_matches_artifact(self.w3, a), f"read the code at {a}"):
                raise ChainError(f"the code at {a} is not the AuditAnchor contract (anchors/contracts/AuditAnchor.json)")

    # --- plumbing -------------------------------------------------------------------------------

    def _call(self, fn: Callable[..., Any], what: str) -> Any:
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
            for j, t in zip(range(i, hi), results, strict=True):
                yield self._call(lambda t=t, j=j: self._batch(a, j, t), f"decode batch #{j} of {a}")
            i = hi
            if progress is not None:
                progress(i)

    def _batch_at_raw(self, address: str, lo: int, hi: int) -> list[tuple[Any, ...]] | None:
        """`batchAt(lo..hi-1)` in one JSON-RPC batch request; None if the endpoint will not do it."""
        from eth_utils import keccak

        selector = keccak(text="batchAt(uint256)")[:4].hex()
        block = hex(self.block)
        calls = [
            ("eth_call", [{"to": address, "data": "0x" + selector + j.to_bytes(32, "big").hex()}, block]) for j in range(lo, hi)
        ]
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
                address, c, b = st.address, self._contracts[st.address], self.block
                index, t = self._call(
                    lambda c=c, b=b: c.functions.batchForSeq(seq).call(block_identifier=b),
                    f"read the batch of seq {seq} from {address}",
                )
                return self._call(lambda a=address, i=int(index), t=t: self._batch(a, i, t), "decode a batch")
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
            self._call(
                lambda: c.functions.verifyRecord(record_hash, seq, list(path)).call(block_identifier=b), "call verifyRecord"
            )
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
