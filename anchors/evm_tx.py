"""The EVM anchor's transaction manager: fees (EIP-1559), gas estimate, signing, the write-ahead of
every signed transaction before its broadcast, re-broadcast, and replacement of a stuck
transaction (same nonce, fees raised by `fee_bump_percent`); never two batches on one nonce."""

from __future__ import annotations

import time
from typing import Any

from . import chain_tools
from .errors import AnchorUnavailable
from .evm_chain import EvmChainReader
from .evm_config import FALLBACK_TIP_WEI, _hx, log
from .evm_store import BatchRow, TxRow

__all__ = ["EvmTransactions"]


class EvmTransactions(EvmChainReader):
    """Signs, writes ahead, broadcasts and replaces the anchor transactions."""

    def _free_nonce(self, batch_id: int, mined_nonce: int) -> int:
        """The lowest nonce >= the mined count that no live transaction of another batch holds."""
        taken = {t.nonce for t in self._store.live_txs_of_other_batches(batch_id)}
        n = mined_nonce
        while n in taken:
            n += 1
        return n

    def _fees(self, w3: Any) -> tuple[int, int]:
        """(maxFeePerGas, maxPriorityFeePerGas): tip from eth_maxPriorityFeePerGas, else the median
        reward of eth_feeHistory, else 1 gwei; max fee = 2 x next base fee + tip."""
        base: int | None = None
        tip: int | None = None
        rewards: list[int] = []
        try:
            fh = w3.eth.fee_history(5, "latest", [50])
            bases = fh.get("baseFeePerGas") or []
            if bases:
                base = int(bases[-1])
            rewards = sorted(int(r[0]) for r in (fh.get("reward") or []) if r)
        except Exception as exc:
            log.debug("evm anchor: eth_feeHistory failed: %s", exc)
        try:
            tip = int(w3.eth.max_priority_fee)
        except Exception as exc:
            log.debug("evm anchor: eth_maxPriorityFeePerGas failed: %s", exc)
            tip = rewards[len(rewards) // 2] if rewards else None
        if tip is None:
            tip = FALLBACK_TIP_WEI
        tip = max(tip, 1)
        if base is None:
            block = w3.eth.get_block("latest")
            base = int(block.get("baseFeePerGas") or 0) or int(w3.eth.gas_price)
        return 2 * base + tip, tip

    def _send(self, w3: Any, b: BatchRow, nonce: int, *, fresh_batch: bool) -> None:
        """Sign the anchor transaction for `b` with `nonce`, write it ahead, then broadcast."""
        max_fee, tip = self._fees(w3)
        fn = self._contract(w3).functions.anchor(bytes.fromhex(b.root[2:]), b.first_seq, b.last_seq,
                                                 bytes.fromhex(b.chain_head[2:]))
        gas = self._estimate_gas(fn, b)
        tx = self._sign(fn, nonce=nonce, gas=gas, max_fee=max_fee, tip=tip)
        if fresh_batch:
            self._store.insert_batch(b.first_seq, b.last_seq, b.root, b.chain_head, status="pending", tx=tx)
            self._last_batched = self._store.last_batched_seq()
        else:
            self._store.add_tx(b.id, tx)
        log.info("evm anchor: sending batch %d..%d (%d records) tx %s nonce %d", b.first_seq, b.last_seq, b.size,
                 tx.tx_hash, nonce)
        self._broadcast(w3, tx)

    def _estimate_gas(self, fn: Any, b: BatchRow) -> int:
        from web3.exceptions import ContractCustomError, ContractLogicError

        try:
            estimate = int(fn.estimate_gas({"from": self.fee_payer_address}))
        except ContractCustomError as exc:
            decoded = chain_tools.decode_custom_error(getattr(exc, "data", None))
            name = decoded[0] if decoded else "unknown error"
            args = decoded[1] if decoded else ()
            self._w.chain_ok = False  # re-check submitter / chain next time
            raise AnchorUnavailable(f"anchor({b.first_seq}..{b.last_seq}) would revert: {name}{tuple(args)}") from exc
        except ContractLogicError as exc:
            raise AnchorUnavailable(f"anchor({b.first_seq}..{b.last_seq}) would revert: {exc}") from exc
        return estimate * (100 + self.config.gas_margin_percent) // 100

    def _sign(self, fn: Any, *, nonce: int, gas: int, max_fee: int, tip: int) -> TxRow:
        params = {"from": self.fee_payer_address, "nonce": nonce, "gas": gas, "maxFeePerGas": max_fee,
                  "maxPriorityFeePerGas": tip, "chainId": self.config.chain_id, "type": 2}
        built = fn.build_transaction(params)
        signed = self._account.sign_transaction(built)
        return TxRow(tx_hash=_hx(signed.hash), batch_id=0, nonce=nonce, max_fee=max_fee, max_priority_fee=tip, gas=gas,
                     raw=_hx(signed.raw_transaction), sent_at=time.time(), state="signed")

    def _broadcast(self, w3: Any, tx: TxRow) -> None:
        from web3.exceptions import Web3RPCError

        try:
            w3.eth.send_raw_transaction(tx.raw)
        except Web3RPCError as exc:
            text = str(exc).lower()
            if "already known" in text or "known transaction" in text or "already imported" in text:
                pass
            elif "nonce too low" in text:
                # mined already (a receipt will show it) or the nonce went to another tx (dropped next pass)
                log.info("evm anchor: tx %s: nonce %d already used", tx.tx_hash, tx.nonce)
                self._w.sent_at.setdefault(tx.tx_hash, self._clock())
                return
            else:
                raise AnchorUnavailable(f"broadcasting tx {tx.tx_hash} (nonce {tx.nonce}) failed: {exc}") from exc
        self._store.mark_broadcast(tx.tx_hash)
        self._w.sent_at[tx.tx_hash] = self._clock()

    def _replace(self, w3: Any, b: BatchRow, old: TxRow) -> None:
        """Re-sign `old`'s call with the same nonce and fees raised by fee_bump_percent (at least
        the market's), write it ahead and broadcast it; the old transaction stays recorded."""
        bump = 100 + self.config.fee_bump_percent
        market_fee, market_tip = self._fees(w3)
        tip = max(-(-old.max_priority_fee * bump // 100), market_tip)
        max_fee = max(-(-old.max_fee * bump // 100), market_fee, tip)
        fn = self._contract(w3).functions.anchor(bytes.fromhex(b.root[2:]), b.first_seq, b.last_seq,
                                                 bytes.fromhex(b.chain_head[2:]))
        tx = self._sign(fn, nonce=old.nonce, gas=old.gas, max_fee=max_fee, tip=tip)
        self._store.add_tx(b.id, tx)
        log.warning("evm anchor: tx %s (nonce %d) for batch %d..%d has no receipt after %gs; replacing it with %s "
                    "(max fee %d -> %d wei, tip %d -> %d)", old.tx_hash, old.nonce, b.first_seq, b.last_seq,
                    self.config.replace_after_s, tx.tx_hash, old.max_fee, max_fee, old.max_priority_fee, tip)
        self._broadcast(w3, tx)
