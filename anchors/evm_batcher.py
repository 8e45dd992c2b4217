"""The EVM anchor's batcher: cut the next batch from the accepted records (`batch_max` of them, or
fewer once the oldest has waited `batch_max_wait_ms`), its RFC 6962 root (`ledger.audit.merkle`)
and chain head; adopt batches the chain holds that this state file does not know (never re-sent)."""

from __future__ import annotations

import math
from typing import Any

from ledger.audit import merkle

from .errors import AnchorConflict, AnchorUnavailable
from .evm_config import _hx, log
from .evm_store import BatchRow
from .evm_tracking import EvmTracking

__all__ = ["EvmBatcher"]


class EvmBatcher(EvmTracking):
    """Cuts batches and adopts unknown on-chain batches."""

    def _oldest_unbatched(self) -> float | None:
        """clock() when the oldest accepted-but-unbatched record was accepted (None: none; -inf
        for records accepted before this process started)."""
        last_batched = self._last_batched
        if self._accepted <= last_batched:
            return None
        while self._arrivals and self._arrivals[0][0] <= last_batched:
            self._arrivals.popleft()
        if not self._arrivals:
            return -math.inf
        # the first arrival whose submit reached past last_batched holds the oldest unbatched record
        return self._arrivals[0][1]

    def _maybe_cut(self, w3: Any, head: int) -> bool:
        accepted = self._accepted
        self._last_batched = self._store.last_batched_seq()
        last_batched = self._last_batched
        if accepted <= last_batched:
            return False
        if accepted - last_batched < self.config.batch_max:  # not full: wait for the oldest record's age limit
            oldest = self._oldest_unbatched()
            if oldest is not None and self._clock() - oldest < self.config.batch_max_wait_ms / 1000:
                return False
        contract = self._contract(w3)
        chain_last = int(contract.functions.lastSeq().call())
        next_first = last_batched + 1
        if chain_last > last_batched:
            if last_batched == 0 and int(contract.functions.batchCount().call()) == 0:
                next_first = chain_last + 1  # a migrated contract (startSeq > 1): earlier seqs are its predecessor's
                if accepted < next_first:
                    return False
            else:
                return self._adopt_unknown(w3, last_batched + 1, chain_last, head)
        elif chain_last < last_batched:
            below = [x for x in self._store.batches(since_seq=chain_last + 1) if x.mined]
            if below:
                return self._orphan_if_gone(w3, below[0], f"the contract's lastSeq is {chain_last}")
            return False
        last = min(accepted, next_first + self.config.batch_max - 1)
        hashes = self._store.record_hashes(next_first, last)
        if len(hashes) != last - next_first + 1:
            raise AnchorUnavailable(f"internal: accepted records {next_first}..{last} are incomplete")
        root = _hx(merkle.root(merkle.leaves_from_record_hashes(hashes)))
        chain_head = "0x" + hashes[-1]
        batch = BatchRow(id=0, first_seq=next_first, last_seq=last, root=root, chain_head=chain_head, status="pending",
                         tx_hash=None, block_number=None, block_hash=None, nonce=None, gas_used=None,
                         orphaned_count=0, created_at=0.0, updated_at=0.0)
        mined_nonce = int(w3.eth.get_transaction_count(self.fee_payer_address, "latest"))
        self._send(w3, batch, self._free_nonce(-1, mined_nonce), fresh_batch=True)
        return True

    def _adopt_unknown(self, w3: Any, from_seq: int, chain_last: int, head: int) -> bool:
        """The chain holds batches from `from_seq` that this state file never recorded: adopt
        them (comparing roots) as far as the accepted records reach; never re-send them."""
        seq = from_seq
        adopted = 0
        while seq <= chain_last:
            ob = self._onchain_batch_for(w3, seq)
            if ob.first_seq != seq:
                raise AnchorConflict(
                    f"the chain's batch {ob.first_seq}..{ob.last_seq} straddles this anchor's last batch end {seq - 1}")
            if ob.last_seq > self._accepted:
                break  # wait for the records (the pump submits them)
            hashes = self._store.record_hashes(ob.first_seq, ob.last_seq)
            root = _hx(merkle.root(merkle.leaves_from_record_hashes(hashes)))
            self._compare(ob, ob.first_seq, ob.last_seq, root, "0x" + hashes[-1])
            tx_hash, block_hash = self._find_anchor_tx(w3, ob)
            deep = ob.block_number + self.config.confirmations <= head
            self._store.insert_batch(ob.first_seq, ob.last_seq, root, "0x" + hashes[-1],
                                     status="confirmed" if deep else "sent", block_number=ob.block_number,
                                     block_hash=block_hash, tx_hash=tx_hash)
            self._last_batched = self._store.last_batched_seq()
            adopted += 1
            seq = ob.last_seq + 1
        if adopted:
            log.warning("evm anchor: adopted %d batch(es) already on chain up to seq %d (not re-sent)", adopted, seq - 1)
            self._w.tracked_head = None
        return adopted > 0
