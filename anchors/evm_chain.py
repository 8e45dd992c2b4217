"""Reading the chain for the EVM anchor: web3 plumbing (one `Web3` per thread), the contract's
state and batches, blocks and receipts, the `Anchored` event of a batch. `EvmChainReader` is the
base of the anchor's parts (it declares the state they share); `read_chain_batches` and
`check_contiguity` serve `anchors status`, tests and benchmarks."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_account.signers.local import LocalAccount

from . import chain_tools
from .errors import AnchorConflict, AnchorUnavailable
from .evm_config import EvmAnchorConfig, _hx, log, make_web3
from .evm_store import EvmStore

__all__ = ["ChainBatch", "EvmChainReader", "check_contiguity", "read_chain_batches"]


@dataclass(frozen=True)
class ChainBatch:
    index: int
    root: str
    first_seq: int
    last_seq: int
    chain_head: str
    block_number: int

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "root": self.root, "first_seq": self.first_seq, "last_seq": self.last_seq,
                "chain_head": self.chain_head, "block_number": self.block_number}


def read_chain_batches(contract: Any, *, start: int = 0, block_identifier: Any = "latest") -> list[ChainBatch]:
    """Every batch stored by the contract (batchCount, then batchAt(i)), from index `start`."""
    count = int(contract.functions.batchCount().call(block_identifier=block_identifier))
    out = []
    for i in range(start, count):
        b = chain_tools.OnChainBatch.from_tuple(contract.functions.batchAt(i).call(block_identifier=block_identifier))
        out.append(ChainBatch(i, _hx(b.root), b.first_seq, b.last_seq, _hx(b.chain_head), b.block_number))
    return out


def check_contiguity(batches: Sequence[Any], start_seq: int = 1) -> list[str]:
    """Problems (empty: fine) with batches meant to cover start_seq..N contiguously, each with
    `first_seq`/`last_seq` (attributes or keys): gaps, overlaps, inverted ranges."""
    problems: list[str] = []
    expected = start_seq
    for i, b in enumerate(batches):
        first = b["first_seq"] if isinstance(b, Mapping) else b.first_seq
        last = b["last_seq"] if isinstance(b, Mapping) else b.last_seq
        if last < first:
            problems.append(f"batch {i}: inverted range {first}..{last}")
        if first > expected:
            problems.append(f"gap: seqs {expected}..{first - 1} are in no batch (before batch {i})")
        elif first < expected:
            problems.append(f"overlap: batch {i} ({first}..{last}) repeats seqs {first}..{min(last, expected - 1)}")
        expected = max(expected, last + 1)
    return problems


@dataclass
class _WorkerState:
    last_error: str | None = None
    failures: int = 0
    chain_ok: bool = False
    fatal: str | None = None
    reorg_head: tuple[int, str] | None = None
    tracked_head: tuple[int, str] | None = None
    open_batch: bool = False
    streak: int = 0
    sent_at: dict[str, float] = field(default_factory=dict)  # tx hash -> clock() of its (re)broadcast


class EvmChainReader:
    """The state every part of `EvmAnchor` shares (set by `EvmAnchor.__init__`), and the chain
    reads."""

    name = "evm"
    config: EvmAnchorConfig
    contract_address: str
    fee_payer_address: str
    _account: LocalAccount
    _clock: Callable[[], float]
    _store: EvmStore
    _tls: threading.local
    _w: _WorkerState
    _accepted: int
    _confirmed: int
    _last_batched: int
    _arrivals: deque[tuple[int, float]]
    # chain identity (issue 14): block 0's hash, checked with the chain; see _check_genesis
    genesis_hash: str | None
    start_seq: int | None
    on_chain_changed: Callable[[], None] | None
    _genesis_lock: threading.Lock

    def _web3(self) -> Any:
        w3 = getattr(self._tls, "w3", None)
        if w3 is None:
            w3 = make_web3(self.config.rpc_url, self.config.rpc_timeout_s)
            self._tls.w3 = w3
            self._tls.contract = chain_tools.contract_at(w3, self.contract_address)
        return w3

    def _contract(self, w3: Any) -> Any:
        if getattr(self._tls, "w3", None) is not w3:
            return chain_tools.contract_at(w3, self.contract_address)
        return self._tls.contract

    def _contract_problem(self, w3: Any) -> str | None:
        code = bytes(w3.eth.get_code(self.contract_address))
        if not code:
            return (f"no contract at {self.contract_address} on chain {self.config.chain_id} "
                    f"(BROKER_EVM_CONTRACT_ADDRESS)")
        try:
            submitter = self._contract(w3).functions.submitter().call()
        except Exception as exc:
            from web3.exceptions import BadFunctionCallOutput, ContractLogicError

            if isinstance(exc, (BadFunctionCallOutput, ContractLogicError)):
                return f"the contract at {self.contract_address} is not an AuditAnchor ({type(exc).__name__})"
            raise
        if str(submitter).lower() != self.fee_payer_address.lower():
            return (f"fee payer {self.fee_payer_address} is not the contract's submitter ({submitter}); "
                    f"anchor transactions would revert")
        return None

    def _check_chain(self, w3: Any) -> None:
        got = int(w3.eth.chain_id)
        if got != self.config.chain_id:
            raise AnchorUnavailable(
                f"{self.name}: EVM RPC {self.config.rpc_url} reports chain id {got}, expected "
                f"{self.config.chain_id} (BROKER_EVM_CHAIN_ID)")
        problem = self._contract_problem(w3)
        if problem:
            raise AnchorUnavailable(f"{self.name}: {problem}")
        self._check_genesis(w3)

    # -- chain identity (issue 14: a chain change is recorded; re-anchoring after it packs batches) --

    def _check_genesis(self, w3: Any) -> None:
        """Chains are identified by block 0's hash. The first check records it in the state file; a
        different one later means the chain this state's batches were sent to is gone (a fresh dev
        node, a wiped testnet): `_chain_replaced`."""
        genesis = _hx(w3.eth.get_block(0)["hash"])
        start_seq = int(self._contract(w3).functions.startSeq().call())
        with self._genesis_lock:
            self.start_seq = start_seq
            held = self._store.meta().get("genesis_hash")
            if held is None:
                self._store.set_meta("genesis_hash", genesis)
            elif held != genesis:
                self._chain_replaced(held, genesis)
            changed = self.genesis_hash != genesis
            self.genesis_hash = genesis
        if changed and self.on_chain_changed is not None:
            try:
                self.on_chain_changed()
            except Exception:  # recording is the caller's business; anchoring goes on
                log.exception("evm anchor: recording the chain change failed")

    def _chain_replaced(self, old: str, new: str) -> None:
        """Forget every batch of the old chain (its receipts, blocks and nonces mean nothing on this
        one) and re-cut the accepted records into full batches (`batch_max` records per
        transaction), instead of re-sending the old batches one transaction each."""
        dropped = self._store.forget_batches(genesis_hash=new)
        self._last_batched = 0
        self._confirmed = self._store.confirmed_upto()
        self._arrivals.clear()  # every accepted record is now old: cut at once
        w = self._w
        w.open_batch = False
        w.tracked_head = None
        w.reorg_head = None
        w.sent_at.clear()
        log.warning("evm anchor: CHAIN REPLACED: genesis %s -> %s (same chain id %d); %d batch(es) of the old chain "
                    "forgotten, records 1..%d are re-anchored on this chain, up to %d per transaction",
                    old, new, self.config.chain_id, dropped, self._accepted, self.config.batch_max)

    def _block_hash(self, w3: Any, number: int) -> str | None:
        from web3.exceptions import BlockNotFound

        try:
            block = w3.eth.get_block(number)
        except BlockNotFound:
            return None
        return _hx(block["hash"]) if block is not None else None

    def _receipt(self, w3: Any, tx_hash: str | None) -> Any:
        from web3.exceptions import TransactionNotFound

        if tx_hash is None:
            return None
        try:
            return w3.eth.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            return None

    def _node_knows(self, w3: Any, tx_hash: str) -> bool:
        from web3.exceptions import TransactionNotFound

        try:
            w3.eth.get_transaction(tx_hash)
        except TransactionNotFound:
            return False
        return True

    def _onchain_batch_for(self, w3: Any, seq: int) -> chain_tools.OnChainBatch:
        _, t = self._contract(w3).functions.batchForSeq(seq).call()
        return chain_tools.OnChainBatch.from_tuple(t)

    def _compare(self, ob: chain_tools.OnChainBatch, first: int, last: int, root: str, chain_head: str) -> None:
        mine = (first, last, root.lower(), chain_head.lower())
        theirs = (ob.first_seq, ob.last_seq, _hx(ob.root), _hx(ob.chain_head))
        if mine != theirs:
            raise AnchorConflict(
                f"the chain's batch {ob.first_seq}..{ob.last_seq} (root {theirs[2]}, chain head {theirs[3]}) does "
                f"not match this anchor's records {first}..{last} (root {mine[2]}, chain head {mine[3]})")

    def _find_anchor_tx(self, w3: Any, ob: chain_tools.OnChainBatch) -> tuple[str | None, str | None]:
        """(tx hash, block hash) of the `Anchored` event for `ob` in its block."""
        block_hash = self._block_hash(w3, ob.block_number)
        try:
            logs = self._contract(w3).events.Anchored.get_logs(
                from_block=ob.block_number, to_block=ob.block_number, argument_filters={"root": ob.root})
        except Exception as exc:
            log.debug("evm anchor: could not read Anchored logs of block %d: %s", ob.block_number, exc)
            return None, block_hash
        for entry in logs:
            if bytes(entry["args"]["root"]) == ob.root:
                return _hx(entry["transactionHash"]), _hx(entry["blockHash"])
        return None, block_hash
