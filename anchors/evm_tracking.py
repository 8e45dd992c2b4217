"""The EVM anchor's confirmation and reorg tracking: the open batch until one of its transactions
is mined (or the chain is found to hold it already), mined batches until `confirmations` deep,
confirmed batches within `reorg_window_blocks` (a batch whose block is gone and whose receipt is
gone is orphaned with every later batch, then re-anchored)."""

from __future__ import annotations

from typing import Any, cast

from .errors import AnchorConflict, AnchorUnavailable
from .evm_config import _hx, log
from .evm_store import LIVE, BatchRow
from .evm_tx import EvmTransactions

__all__ = ["EvmTracking"]


class EvmTracking(EvmTransactions):
    """Reorgs, confirmations, and the open batch's way to mined."""

    def _check_reorgs(self, w3: Any, head: int, head_hash: str) -> bool:
        """Re-check confirmed batches mined within the reorg window (only when the head changed):
        the newest one's block hash first (it commits to every block below), then each."""
        w = self._w
        if w.reorg_head == (head, head_hash):
            return False
        recent = self._store.batches(statuses=("confirmed",), min_block=max(0, head - self.config.reorg_window_blocks))
        changed = False
        if recent:
            newest = recent[-1]
            newest_block = cast(int, newest.block_number)  # a confirmed batch has its block
            if newest_block > head or self._block_hash(w3, newest_block) != newest.block_hash:
                for b in recent:
                    block = cast(int, b.block_number)
                    if block <= head and self._block_hash(w3, block) == b.block_hash:
                        continue
                    r = self._receipt(w3, b.tx_hash)
                    if r is not None and r["status"] == 1 and self._block_hash(w3, r["blockNumber"]) == _hx(r["blockHash"]):
                        # re-included in another block: confirmed again once deep enough there
                        deep = r["blockNumber"] + self.config.confirmations <= head
                        self._store.mark_mined(b.id, tx_hash=_hx(r["transactionHash"]), block_number=r["blockNumber"],
                                               block_hash=_hx(r["blockHash"]), gas_used=int(r["gasUsed"]),
                                               nonce=None, confirmed=deep)
                        log.warning("evm anchor: batch %d..%d moved from block %s to %s in a reorg",
                                    b.first_seq, b.last_seq, b.block_number, r["blockNumber"])
                        changed = True
                        continue
                    self._orphan(b, f"block {b.block_number} ({b.block_hash}) is no longer canonical")
                    changed = True
                    break
        w.reorg_head = (head, head_hash)
        return changed

    def _orphan(self, b: BatchRow, why: str) -> None:
        rows = self._store.orphan_from(b.first_seq)
        self._confirmed = self._store.confirmed_upto()
        log.warning("evm anchor: REORG: batch %d..%d orphaned (%s); %d batch(es) from seq %d will be re-anchored; "
                    "confirmed up to %d now", b.first_seq, b.last_seq, why, len(rows), b.first_seq, self._confirmed)
        self._w.tracked_head = None

    def _orphan_if_gone(self, w3: Any, b: BatchRow, why: str) -> bool:
        """Orphan `b` (and every later batch) unless its receipt still shows it mined: a lower
        `lastSeq()` than expected may be a read from a lagging RPC node, not a reorg."""
        if b.tx_hash is not None:
            r = self._receipt(w3, b.tx_hash)
            if r is not None and r["status"] == 1:
                log.debug("evm anchor: %s, but batch %d..%d still has its receipt; waiting", why, b.first_seq, b.last_seq)
                return False
        self._orphan(b, why)
        return True

    def _track_mined(self, w3: Any, head: int, head_hash: str) -> bool:
        w = self._w
        mined = [b for b in self._store.batches(statuses=("sent",)) if b.block_number is not None]
        if not mined or w.tracked_head == (head, head_hash):
            return False
        changed = False
        conf = self.config.confirmations
        for b in mined:
            if b.tx_hash is None:  # adopted without a known tx: the block must still be canonical
                ok = self._block_hash(w3, cast(int, b.block_number)) == b.block_hash  # `mined` keeps those with a block
                number, bhash, gas = b.block_number, b.block_hash, b.gas_used
                status_ok = ok
            else:
                r = self._receipt(w3, b.tx_hash)
                status_ok = r is not None and r["status"] == 1
                number = int(r["blockNumber"]) if r is not None else None
                bhash = _hx(r["blockHash"]) if r is not None else None
                gas = int(r["gasUsed"]) if r is not None else None
            if not status_ok or number is None or bhash is None:
                self._orphan(b, "its receipt disappeared before it was confirmed")
                return True
            if number + conf <= head:
                self._store.mark_mined(b.id, tx_hash=None, block_number=number, block_hash=bhash, gas_used=gas,
                                       nonce=None, confirmed=True)
                log.info("evm anchor: batch %d..%d confirmed (block %d, %d confirmations)", b.first_seq,
                         b.last_seq, number, head - number)
                changed = True
            elif number != b.block_number or bhash != b.block_hash:
                self._store.mark_mined(b.id, tx_hash=None, block_number=number, block_hash=bhash, gas_used=gas,
                                       nonce=None, confirmed=False)
                changed = True
        w.tracked_head = (head, head_hash)
        return changed

    def _advance(self, w3: Any, b: BatchRow, head: int) -> bool:
        addr = self.fee_payer_address
        mined_nonce = int(w3.eth.get_transaction_count(addr, "latest"))  # read before the receipts (see module doc)
        txs = self._store.txs(b.id)
        for tx in sorted(txs, key=lambda t: -t.max_fee):
            if tx.state not in LIVE:
                continue
            r = self._receipt(w3, tx.tx_hash)
            if r is None:
                continue
            if r["status"] == 1:
                self._record_mined(b, r, head)
                return True
            self._store.set_tx_state(tx.tx_hash, "failed")
            log.warning("evm anchor: tx %s for batch %d..%d reverted in block %s; re-planning", tx.tx_hash,
                        b.first_seq, b.last_seq, r["blockNumber"])
        contract = self._contract(w3)
        chain_last = int(contract.functions.lastSeq().call())
        if chain_last >= b.last_seq:
            self._adopt_known(w3, b, head)
            return True
        if chain_last >= b.first_seq:
            raise AnchorConflict(
                f"the contract's lastSeq is {chain_last}, inside this anchor's batch {b.first_seq}..{b.last_seq}: "
                f"the chain holds a batch this state does not")
        if chain_last < b.first_seq - 1:
            below = [x for x in self._store.batches(since_seq=chain_last + 1) if x.mined and x.first_seq < b.first_seq]
            if below:
                return self._orphan_if_gone(w3, below[0], f"the contract's lastSeq is {chain_last}")
            raise AnchorUnavailable(
                f"the contract's lastSeq is {chain_last} but this anchor's next batch starts at {b.first_seq}; "
                f"seqs {chain_last + 1}..{b.first_seq - 1} are in no batch (wrong contract or state file?)")
        # the chain expects exactly this batch
        live = []
        for tx in txs:
            if tx.state not in LIVE:
                continue
            if tx.nonce < mined_nonce:  # its nonce was used by another transaction and it has no receipt
                self._store.set_tx_state(tx.tx_hash, "dropped")
                self._w.sent_at.pop(tx.tx_hash, None)
                continue
            live.append(tx)
        if not live:
            if b.status == "orphaned":
                log.warning("evm anchor: re-anchoring orphaned batch %d..%d", b.first_seq, b.last_seq)
            self._send(w3, b, self._free_nonce(b.id, mined_nonce), fresh_batch=False)
            return True
        newest = max(live, key=lambda t: (t.max_fee, t.sent_at))
        if newest.state == "signed" or not self._node_knows(w3, newest.tx_hash):
            log.info("evm anchor: (re)broadcasting tx %s (nonce %d) for batch %d..%d", newest.tx_hash, newest.nonce,
                     b.first_seq, b.last_seq)
            self._broadcast(w3, newest)
            return True
        if b.status == "orphaned":
            self._store.set_status(b.id, "sent")
        first_seen = self._w.sent_at.setdefault(newest.tx_hash, self._clock())
        if self._clock() - first_seen >= self.config.replace_after_s:
            self._replace(w3, b, newest)
            return True
        return False

    def _record_mined(self, b: BatchRow, r: Any, head: int) -> None:
        number = int(r["blockNumber"])
        deep = number + self.config.confirmations <= head
        self._store.mark_mined(b.id, tx_hash=_hx(r["transactionHash"]), block_number=number,
                               block_hash=_hx(r["blockHash"]), gas_used=int(r["gasUsed"]), nonce=None, confirmed=deep)
        for t in self._store.txs(b.id):
            self._w.sent_at.pop(t.tx_hash, None)
        log.info("evm anchor: batch %d..%d mined in block %d (tx %s, gas %d)%s", b.first_seq, b.last_seq, number,
                 _hx(r["transactionHash"]), int(r["gasUsed"]), ", confirmed" if deep else "")
        self._w.tracked_head = None

    def _adopt_known(self, w3: Any, b: BatchRow, head: int) -> None:
        """The chain already covers batch `b` (e.g. mined by a transaction whose receipt we missed):
        compare and adopt it."""
        ob = self._onchain_batch_for(w3, b.first_seq)
        self._compare(ob, b.first_seq, b.last_seq, b.root, b.chain_head)
        tx_hash, block_hash = self._find_anchor_tx(w3, ob)
        self._store.mark_mined(b.id, tx_hash=tx_hash, block_number=ob.block_number, block_hash=block_hash,
                               gas_used=None, nonce=None, confirmed=ob.block_number + self.config.confirmations <= head)
        log.warning("evm anchor: batch %d..%d is already on chain (block %d); adopted it instead of re-sending",
                    b.first_seq, b.last_seq, ob.block_number)
        self._w.tracked_head = None
