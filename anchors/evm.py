"""`EvmAnchor`: the chain anchored on an EVM chain through the `AuditAnchor` contract (design §3).

An asynchronous anchor. `submit(records)` checks and persists the records in the anchor's own
SQLite file (`anchors.evm_store`) and returns; a worker thread then cuts batches, sends one
`anchor(root, firstSeq, lastSeq, chainHead)` transaction per batch, and tracks each batch until it
is confirmed (receipt with status 1 at `confirmations` depth). `confirmed_upto()` reads the local
state only (never the network).

The worker, one iteration (`_step`), every `poll_interval_s` or when woken by `submit`:

1. **Chain check** (after start and after every RPC failure): chain id == `config.chain_id`, code
   at the contract address, the fee payer is the contract's `submitter()`.
2. **Reorg check** of confirmed batches mined in the last `reorg_window_blocks` blocks: the stored
   block hash must still be the canonical block at that height (one call for the newest batch when
   nothing changed: a block hash commits to every block below it). A batch whose block changed
   and whose receipt is gone is **orphaned** with every later batch; `confirmed_upto()` drops below
   it, and the batch is re-anchored (same range and root; the contract's contiguity makes this
   idempotent).
3. **Confirmation tracking** of mined batches: receipt still present with status 1, and
   `block_number + confirmations <= latest block` → confirmed.
4. **The open batch** (at most one batch is ever unmined: batch k+1 is cut only after batch k
   is mined, so contiguity on chain never depends on mempool ordering):
   - a successful receipt of any of its transactions → mined;
   - else the contract's `lastSeq()` is the source of truth: if the chain already covers the
     batch it is **adopted** (its root and chain head are compared; a mismatch is `AnchorConflict`,
     logged loudly, and the anchor stops sending); if the chain is behind an earlier batch, that
     batch is orphaned; if the chain expects exactly this batch:
   - live transactions (nonce not yet used) are re-broadcast when the node does not know them (a
     restart, a dropped mempool), and **replaced** (same nonce, fees raised by `fee_bump_percent`)
     after `replace_after_s` without a receipt; both hashes are kept, whichever is mined wins;
   - with no live transaction left, a new one is signed with the lowest nonce >= the account's
     mined nonce that no live transaction of another batch holds (never two batches on one nonce).
5. **Cutting** a new batch when none is open: from the accepted records after the last batch,
   `batch_max` of them, or fewer once the oldest has waited `batch_max_wait_ms`. The batch row
   (status `pending`) and its signed transaction (hash, nonce, fees, raw bytes) are committed
   **before** the broadcast (write-ahead), so a crash at any point leaves a transaction a restart
   can find and re-send; once a node accepts it the batch is `sent`.
   If the chain holds batches this state file does not know (a lost state file), they are adopted
   after comparing roots, never re-sent.

Batch statuses (`batches()`): pending → sent → (mined: block set) → confirmed; a reorg makes a
mined or confirmed batch `orphaned` until its re-sent transaction is accepted (`sent` again). A
`lastSeq()` lower than expected orphans a batch only if its receipt is gone too (a lagging RPC node
behind a load balancer is not a reorg).

Assumptions (documented limits): the fee payer is dedicated to this anchor (another sender using
its nonces delays batches until the nonce logic re-signs); one `EvmAnchor` per state file (an
exclusive lock on `<state>.lock` refuses a second); reorgs deeper than `reorg_window_blocks` are
not looked for. A contract deployed with `startSeq > 1` (migration) whose state file is new starts
batching at `startSeq`; records below it are the previous contract's (`verify` answers False for
them here).

The anchor is split by concern; this module is its facade (import `EvmAnchor` and the names
below from here): `evm_config` (settings), `evm_chain` (reading the chain, the shared state),
`evm_tx` (transaction manager), `evm_tracking` (confirmation and reorg tracking), `evm_batcher`
(cutting batches), and here the port, the worker loop and readiness.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount

from ledger.chain import ChainRecord
from ledger.ports import Readiness

from .errors import AnchorConflict, AnchorError, AnchorUnavailable, check_batch
from .evm_batcher import EvmBatcher
from .evm_chain import ChainBatch, _WorkerState, check_contiguity, read_chain_batches
from .evm_config import (
    EVM_SETTINGS,
    EVM_TUNING_SETTINGS,
    READY_CACHE_S,
    EvmAnchorConfig,
    EvmConfigError,
    _checksum,
    _hx,
    _rpc_reason,
    log,
    make_web3,
)
from .evm_keys import load_fee_payer
from .evm_store import EvmStore

__all__ = [
    "EVM_SETTINGS",
    "EVM_TUNING_SETTINGS",
    "ChainBatch",
    "EvmAnchor",
    "EvmAnchorConfig",
    "EvmConfigError",
    "check_contiguity",
    "make_web3",
    "read_chain_batches",
]


@dataclass
class _Probe:
    """One readiness probe of the RPC (run on the probe thread)."""

    error: str | None = None
    chain_id: int | None = None
    balance: int | None = None
    contract_problem: str | None = None
    at: float = 0.0


class EvmAnchor(EvmBatcher):
    """The `Anchor` port over an EVM `AuditAnchor` contract (see the module doc)."""

    name = "evm"

    def __init__(
        self,
        config: EvmAnchorConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        fee_payer: LocalAccount | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._account: LocalAccount = fee_payer or load_fee_payer(config.fee_payer_keystore, config.fee_payer_password_file)
        self.fee_payer_address: str = self._account.address
        self.contract_address: str = _checksum(config.contract_address)
        self._lock_fd = _lock_state(config.state_path)
        try:
            self._store = EvmStore(config.state_path)
            self._store.bind(chain_id=str(config.chain_id), contract=self.contract_address.lower(),
                             fee_payer=self.fee_payer_address.lower())
        except BaseException:
            _unlock_state(self._lock_fd)
            raise
        self._accepted = self._store.accepted_upto()
        self._confirmed = self._store.confirmed_upto()
        self._last_batched = self._store.last_batched_seq()  # worker-maintained
        self._arrivals: deque[tuple[int, float]] = deque()  # (last seq of a submit, clock() when accepted)
        self._tls = threading.local()
        self._submit_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self._w = _WorkerState()
        self._closed = False
        self._probe_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evm-anchor-probe")
        self._probe_future: Future[_Probe] | None = None
        self._probe_lock = threading.Lock()
        self._ready_cache: tuple[float, dict[str, Readiness]] | None = None
        # chain identity (issue 14): block 0's hash, checked with the chain; see _check_genesis
        self.genesis_hash: str | None = self._store.meta().get("genesis_hash")
        self.start_seq: int | None = None
        self.on_chain_changed: Callable[[], None] | None = None
        self._genesis_lock = threading.Lock()

    def submit(self, records: Sequence[ChainRecord]) -> None:
        records = list(records)
        check_batch(self.name, records)
        if not records:
            return
        if self._closed:
            raise AnchorUnavailable(f"{self.name}: the anchor is closed")
        if self._w.fatal is not None:
            raise AnchorConflict(f"{self.name}: halted: {self._w.fatal}")
        if records[-1].seq <= self._accepted:
            # nothing new (a retry): compare with a plain read, no write transaction
            held = self._store.record_hashes(records[0].seq, records[-1].seq)
            for r, h in zip(records, held, strict=False):
                if r.hash != h:
                    raise AnchorConflict(
                        f"{self.name}: seq {r.seq} is accepted with hash {h}, refusing {r.hash} (nothing written)")
            return
        with self._submit_lock:
            added, accepted = self._store.accept(self.name, records)
            if added:  # the arrival first: the worker reads `_accepted`, then the arrivals
                self._arrivals.append((accepted, self._clock()))
            self._accepted = accepted
        if added:
            self._ensure_worker()
            self._wake.set()

    def accepted_upto(self) -> int:
        """The highest seq accepted (persisted locally, maybe not yet anchored on chain)."""
        return self._accepted

    def confirmed_upto(self) -> int:
        return self._confirmed

    def verify(self, seq: int, hash: str) -> bool:
        if not isinstance(seq, int) or seq < 1 or seq > self._confirmed:
            return False
        return self._store.verify(seq, hash)

    def ready(self) -> Readiness:
        return self.readiness_checks()["anchor/evm"]

    def readiness_checks(self) -> dict[str, Readiness]:
        """`anchor/evm` (the overall answer `ready()` gives), `evm/chain_id`, `evm/fee_payer`.
        Bounded by `rpc_timeout_s` (a probe thread, at most one in flight); cached for 1 s."""
        cached = self._ready_cache
        if cached is not None and time.monotonic() - cached[0] < READY_CACHE_S:
            return cached[1]
        probe = self._probe()
        checks = self._judge(probe)
        self._ready_cache = (time.monotonic(), checks)
        return checks

    def start(self, *, check: bool = True) -> EvmAnchor:
        """Check the chain (raises `AnchorUnavailable` with the reason) and start the worker.
        With `check=False` the worker starts anyway and keeps checking (and not sending) until
        the chain is right; `ready()` reports why meanwhile."""
        if check:
            self.check_chain()
        self._ensure_worker()
        self._wake.set()
        return self

    def stop(self, timeout_s: float | None = None) -> bool:
        """Stop the worker; False if it is still stuck in an RPC call after the timeout."""
        self._stop.set()
        self._wake.set()
        t = self._thread
        if t is not None and t.is_alive():
            t.join(timeout_s if timeout_s is not None else self.config.rpc_timeout_s * 2 + 1)
            if t.is_alive():
                log.warning("evm anchor worker still busy in an RPC call after stop")
                return False
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stop()
        self._probe_pool.shutdown(wait=False, cancel_futures=True)
        self._store.close()
        _unlock_state(self._lock_fd)

    def __enter__(self) -> EvmAnchor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = str(self.config.state_path)
        return f"EvmAnchor(contract={self.contract_address}, chain_id={self.config.chain_id}, state={state!r})"

    def check_chain(self) -> None:
        """Raise `AnchorUnavailable` unless the RPC answers with `config.chain_id`, the contract
        exists there and the fee payer is its submitter."""
        w3 = self._web3()
        try:
            self._check_chain(w3)
        except AnchorError:
            raise
        except Exception as exc:
            raise AnchorUnavailable(f"{self.name}: EVM RPC {self.config.rpc_url} unreachable: {_rpc_reason(exc)}") from exc

    def balance_wei(self) -> int:
        """The fee payer's balance (one RPC call, bounded by rpc_timeout_s)."""
        try:
            return int(self._web3().eth.get_balance(self.fee_payer_address))
        except Exception as exc:
            raise AnchorUnavailable(f"{self.name}: EVM RPC {self.config.rpc_url} unreachable: {_rpc_reason(exc)}") from exc

    def chain_head_on_chain(self) -> int:
        """The contract's `lastSeq()` (bounded by rpc_timeout_s)."""
        try:
            return int(self._contract(self._web3()).functions.lastSeq().call())
        except Exception as exc:
            raise AnchorUnavailable(f"{self.name}: EVM RPC {self.config.rpc_url} unreachable: {_rpc_reason(exc)}") from exc

    def batches(self) -> list[dict[str, Any]]:
        """Every batch this anchor cut or adopted, in seq order (see `BatchRow.public`)."""
        return [b.public() for b in self._store.batches()]

    def batch_containing(self, seq: int) -> dict[str, Any] | None:
        """The batch holding `seq` (see `BatchRow.public`), any status, or None; an indexed lookup."""
        row = self._store.batch_containing(seq)
        return row.public() if row is not None else None

    @property
    def last_known_balance_wei(self) -> int | None:
        """The fee payer's balance from the last finished readiness probe (no RPC call), or None."""
        fut = self._probe_future
        if fut is None or not fut.done() or fut.cancelled() or fut.exception() is not None:
            return None
        return fut.result().balance

    def transactions(self) -> list[dict[str, Any]]:
        """Every transaction signed for a batch (write-ahead log), without the raw bytes."""
        return [t.as_dict() for t in self._store.all_txs()]

    def worker_status(self) -> dict[str, Any]:
        w = self._w
        return {"running": bool(self._thread and self._thread.is_alive()), "last_error": w.last_error,
                "failures": w.failures, "halted": w.fatal, "accepted_upto": self._accepted,
                "confirmed_upto": self._confirmed}

    def _probe(self) -> _Probe:
        with self._probe_lock:
            fut = self._probe_future
            if fut is None or fut.done():
                try:
                    fut = self._probe_pool.submit(self._probe_once)
                except RuntimeError:  # closed
                    return _Probe(error=f"{self.name}: the anchor is closed")
                self._probe_future = fut
        try:
            return fut.result(timeout=self.config.rpc_timeout_s)
        except TimeoutError:
            return _Probe(error=f"EVM RPC {self.config.rpc_url} did not answer within {self.config.rpc_timeout_s:g}s")
        except Exception as exc:  # pragma: no cover - _probe_once catches everything
            return _Probe(error=f"EVM RPC probe failed: {_rpc_reason(exc)}")

    def _probe_once(self) -> _Probe:
        p = _Probe(at=time.time())
        w3 = self._web3()
        try:
            p.chain_id = int(w3.eth.chain_id)
            p.balance = int(w3.eth.get_balance(self.fee_payer_address))
        except Exception as exc:
            p.error = f"EVM RPC {self.config.rpc_url} unreachable: {_rpc_reason(exc)}"
            return p
        if p.chain_id == self.config.chain_id:
            try:
                p.contract_problem = self._contract_problem(w3)
            except Exception as exc:
                p.error = f"EVM RPC {self.config.rpc_url} unreachable: {_rpc_reason(exc)}"
        return p

    def _judge(self, p: _Probe) -> dict[str, Readiness]:
        cfg = self.config
        if p.error is not None:
            chain = Readiness("unready", p.error)
            payer = Readiness("unready", f"fee payer {self.fee_payer_address}: balance unknown ({p.error})")
        else:
            if p.chain_id != cfg.chain_id:
                chain = Readiness("unready", f"EVM RPC reports chain id {p.chain_id}, expected {cfg.chain_id} "
                                             f"(BROKER_EVM_CHAIN_ID)")
            else:
                chain = Readiness("ready", f"chain id {p.chain_id}")
            assert p.balance is not None  # noqa: S101 - narrowing only: no probe error means the balance was read
            if p.balance < cfg.min_balance_wei:
                payer = Readiness("unready", f"EVM fee-payer balance below BROKER_EVM_FEE_PAYER_MIN_BALANCE "
                                             f"({self.fee_payer_address} has {p.balance} wei, minimum {cfg.min_balance_wei})")
            else:
                payer = Readiness("ready", f"fee payer {self.fee_payer_address}: {p.balance} wei")
        problems = [r.detail for r in (chain, payer) if not r.ok]
        if p.contract_problem:
            problems.append(p.contract_problem)
        if self._w.fatal:
            problems.append(f"halted: {self._w.fatal}")
        summary = (f"evm: contract {self.contract_address} on chain {cfg.chain_id}, confirmed up to "
                   f"{self._confirmed}, accepted up to {self._accepted}")
        if problems:
            overall = Readiness("unready", "evm: " + "; ".join(problems))
        elif self._w.last_error and self._w.failures >= 3:
            overall = Readiness("degraded", f"{summary}; worker retrying: {self._w.last_error}")
        else:
            overall = Readiness("ready", summary)
        return {"anchor/evm": overall, "evm/chain_id": chain, "evm/fee_payer": payer}

    def _ensure_worker(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._thread_lock:
            if self._closed or self._stop.is_set():
                return
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="evm-anchor-worker", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        w = self._w
        while not self._stop.is_set():
            progressed = False
            try:
                if w.fatal is None:
                    progressed = self._step()
            except AnchorConflict as exc:
                # logged before the halt becomes visible (worker_status, readiness), so whoever sees
                # the halt finds its log line
                log.error("EVM ANCHOR HALTED: %s. The chain and this anchor's state disagree; nothing more "
                          "is sent until an operator investigates (agentkeys-broker anchors status).", exc)
                w.fatal = str(exc)
            except Exception as exc:
                w.failures += 1
                w.chain_ok = False
                message = exc.args[0] if isinstance(exc, AnchorError) and exc.args else _rpc_reason(exc)
                level = logging.WARNING if message != w.last_error else logging.DEBUG
                log.log(level, "evm anchor: attempt %d failed: %s", w.failures, message)
                w.last_error = str(message)
            else:
                if w.failures:
                    log.info("evm anchor: recovered after %d failed attempts", w.failures)
                w.failures = 0
                w.last_error = None
            finally:
                try:
                    self._confirmed = self._store.confirmed_upto()
                except AnchorError:
                    pass
            w.streak = w.streak + 1 if progressed and not w.failures else 0
            if 0 < w.streak < 50:
                continue  # something changed: look again at once (bounded, never a busy loop)
            self._wake.wait(self._next_wait())
            self._wake.clear()

    def _next_wait(self) -> float:
        cfg = self.config
        w = self._w
        if w.failures:
            return min(5.0, cfg.poll_interval_s * 2 ** min(w.failures - 1, 10))
        wait = cfg.poll_interval_s
        oldest = None if w.open_batch else self._oldest_unbatched()
        if oldest is not None:
            remaining = oldest + cfg.batch_max_wait_ms / 1000 - self._clock()
            wait = min(wait, max(0.0, remaining) + 0.001)
        return wait

    def _step(self) -> bool:
        """One pass; True if it changed something (the loop then runs again at once)."""
        w = self._w
        w3 = self._web3()
        if not w.chain_ok:
            self._check_chain(w3)
            w.chain_ok = True
        latest = w3.eth.get_block("latest")
        head, head_hash = int(latest["number"]), _hx(latest["hash"])
        changed = self._check_reorgs(w3, head, head_hash)
        changed |= self._track_mined(w3, head, head_hash)
        open_batch = self._store.first_open_batch()
        w.open_batch = open_batch is not None
        if open_batch is not None:
            changed |= self._advance(w3, open_batch, head)
        else:
            changed |= self._maybe_cut(w3, head)
        return changed


def _lock_state(state_path: Path) -> int:
    """An exclusive, non-blocking lock on `<state>.lock`: one EvmAnchor per state file."""
    lock_path = Path(str(state_path) + ".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise AnchorUnavailable(f"EVM anchor state lock {lock_path}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AnchorUnavailable(
            f"EVM anchor state {state_path} is in use by another EvmAnchor (lock {lock_path}); two anchors on "
            f"one state file would sign conflicting transactions") from None
    return fd


def _unlock_state(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
