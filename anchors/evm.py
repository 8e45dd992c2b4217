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
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from eth_account.signers.local import LocalAccount

from ledger.chain import ChainRecord
from ledger.ports import Readiness

from . import chain_tools, merkle
from .errors import AnchorConflict, AnchorError, AnchorUnavailable, check_batch
from .evm_keys import load_fee_payer
from .evm_store import LIVE, BatchRow, EvmStore, TxRow

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

log = logging.getLogger("agentkeys.anchors.evm")

DEFAULT_CHAIN_ID = 84532  # Base Sepolia
FALLBACK_TIP_WEI = 10**9  # 1 gwei, only when neither eth_maxPriorityFeePerGas nor eth_feeHistory answers
READY_CACHE_S = 1.0

# (name, default, doc, runbook anchor): the integrator turns these into api.config Settings.
EVM_SETTINGS: tuple[tuple[str, str | None, str, str], ...] = (
    ("BROKER_EVM_RPC_URL", None, "JSON-RPC URL of the EVM chain (Base Sepolia in production), `http://` or "
     "`https://`. Required when `evm` is an anchor.", "evm-rpc"),
    ("BROKER_EVM_CHAIN_ID", str(DEFAULT_CHAIN_ID), "Chain id the RPC must report (84532 = Base Sepolia); checked "
     "at start and by /readyz.", "evm-chain-id"),
    ("BROKER_EVM_CONTRACT_ADDRESS", None, "Address of the deployed AuditAnchor contract (`agentkeys-broker "
     "anchors deploy` prints it). Required when `evm` is an anchor.", "evm-contract"),
    ("BROKER_EVM_FEE_PAYER_KEYSTORE", None, "Encrypted keystore JSON of the fee payer, the contract's submitter "
     "(`agentkeys-broker anchors keystore`). Required when `evm` is an anchor.", "evm-fee-payer"),
    ("BROKER_EVM_FEE_PAYER_PASSWORD_FILE", None, "File holding the keystore password (one trailing newline is "
     "ignored); refused if group or other can access it (chmod 600).", "evm-fee-payer"),
    ("BROKER_EVM_CONFIRMATIONS", "1", "Blocks on top of the anchor transaction's block before a batch counts as "
     "confirmed, [0, 1000]; 0: a successful receipt is enough.", "evm-confirmations"),
    ("BROKER_EVM_BATCH_MAX", "1000", "Most records per anchor transaction, [1, 100000].", "evm-batching"),
    ("BROKER_EVM_BATCH_MAX_WAIT_MS", "2000", "Longest wait before a batch smaller than BROKER_EVM_BATCH_MAX is "
     "sent, milliseconds since its oldest record was accepted, [0, 3600000].", "evm-batching"),
    ("BROKER_EVM_FEE_PAYER_MIN_BALANCE", str(10**15), "Fee-payer balance, wei as a decimal string, below which "
     "/readyz reports the EVM anchor unready (default 0.001 ETH).", "evm-fee-payer-balance"),
    ("BROKER_EVM_STATE_DB", None, "The EVM anchor's own SQLite file (accepted records, batches, write-ahead "
     "transactions). Default `$BROKER_DATA_DIR/evm-anchor.sqlite`.", "evm-state-db"),
    ("BROKER_EVM_CONFIRM_DEADLINE_SECONDS", "600", "Under `sqlite_primary`, how long a released mint may wait "
     "for the EVM anchor to confirm it before it is quarantined, seconds.", "evm-confirm-deadline"),
)

# Optional knobs with safe defaults (not in the seed); listed separately so the integrator decides
# whether to expose them.
EVM_TUNING_SETTINGS: tuple[tuple[str, str | None, str, str], ...] = (
    ("BROKER_EVM_RPC_TIMEOUT_SECONDS", "5", "Timeout of each EVM JSON-RPC request and bound of the /readyz "
     "EVM probe, seconds, (0, 60].", "evm-rpc"),
    ("BROKER_EVM_REPLACE_AFTER_SECONDS", "30", "An anchor transaction without a receipt after this long is "
     "replaced (same nonce, higher fees), seconds, (0, 86400].", "evm-stuck-transactions"),
    ("BROKER_EVM_FEE_BUMP_PERCENT", "25", "Fee increase of a replacement transaction, percent, [10, 1000].",
     "evm-stuck-transactions"),
)


class EvmConfigError(ValueError):
    """A bad EVM setting: `var`, `value`, `reason`, `anchor` (the shape of api.config.BootFailure)."""

    def __init__(self, var: str, value: str | None, reason: str, anchor: str) -> None:
        self.var, self.value, self.reason, self.anchor = var, value, reason, anchor
        super().__init__(f"{var}={value!r}: {reason}")


@dataclass(frozen=True, kw_only=True)
class EvmAnchorConfig:
    rpc_url: str
    chain_id: int = DEFAULT_CHAIN_ID  # expected
    contract_address: str
    fee_payer_keystore: Path
    fee_payer_password_file: Path
    confirmations: int = 1
    batch_max: int = 1000
    batch_max_wait_ms: int = 2000
    min_balance_wei: int = 10**15
    state_path: Path
    rpc_timeout_s: float = 5.0
    replace_after_s: float = 30.0
    fee_bump_percent: int = 25
    # worker tuning (no env var by default)
    poll_interval_s: float = 0.5
    reorg_window_blocks: int = 64
    gas_margin_percent: int = 25

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"EvmAnchorConfig: {what}")

        need(isinstance(self.rpc_url, str) and self.rpc_url.startswith(("http://", "https://")),
             f"rpc_url must be an http(s) URL, got {self.rpc_url!r}")
        need(_is_int(self.chain_id) and self.chain_id > 0, "chain_id must be a positive integer")
        need(_is_address(self.contract_address), f"contract_address must be 0x + 40 hex, got {self.contract_address!r}")
        need(_is_int(self.confirmations) and 0 <= self.confirmations <= 1000, "confirmations must be in [0, 1000]")
        need(_is_int(self.batch_max) and 1 <= self.batch_max <= 100_000, "batch_max must be in [1, 100000]")
        need(_is_int(self.batch_max_wait_ms) and 0 <= self.batch_max_wait_ms <= 3_600_000,
             "batch_max_wait_ms must be in [0, 3600000]")
        need(_is_int(self.min_balance_wei) and self.min_balance_wei >= 0, "min_balance_wei must be an int >= 0")
        need(0 < self.rpc_timeout_s <= 60, "rpc_timeout_s must be in (0, 60]")
        need(0 < self.replace_after_s <= 86400, "replace_after_s must be in (0, 86400]")
        need(_is_int(self.fee_bump_percent) and 10 <= self.fee_bump_percent <= 1000,
             "fee_bump_percent must be in [10, 1000] (nodes refuse replacements below +10%)")
        need(0 < self.poll_interval_s <= 60, "poll_interval_s must be in (0, 60]")
        need(_is_int(self.reorg_window_blocks) and self.reorg_window_blocks >= 0, "reorg_window_blocks must be >= 0")
        need(_is_int(self.gas_margin_percent) and 0 <= self.gas_margin_percent <= 500, "gas_margin_percent in [0, 500]")
        object.__setattr__(self, "fee_payer_keystore", Path(self.fee_payer_keystore))
        object.__setattr__(self, "fee_payer_password_file", Path(self.fee_payer_password_file))
        object.__setattr__(self, "state_path", Path(self.state_path))

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, default_state_path: str | os.PathLike[str] | None = None,
                 **overrides: Any) -> "EvmAnchorConfig":
        """Build from `BROKER_EVM_*` variables (EVM_SETTINGS and EVM_TUNING_SETTINGS). Raises
        `EvmConfigError(var, value, reason, anchor)` for the first bad or missing value."""
        anchors = {name: anchor for name, _, _, anchor in EVM_SETTINGS + EVM_TUNING_SETTINGS}
        defaults = {name: default for name, default, _, _ in EVM_SETTINGS + EVM_TUNING_SETTINGS}

        def raw(var: str) -> str | None:
            v = env.get(var)
            return v if v not in (None, "") else defaults[var]

        def required(var: str) -> str:
            v = raw(var)
            if v is None:
                raise EvmConfigError(var, None, "required when the evm anchor is enabled", anchors[var])
            return v

        def integer(var: str, lo: int, hi: int | None) -> int:
            v = required(var)
            try:
                n = int(v, 10)
            except ValueError:
                n = None
            if n is None or n < lo or (hi is not None and n > hi) or not v.strip().isdigit():
                rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
                raise EvmConfigError(var, v, f"must be an integer {rng}", anchors[var])
            return n

        def seconds(var: str, hi: float) -> float:
            v = required(var)
            try:
                f = float(v)
            except ValueError:
                f = math.nan
            if not (0 < f <= hi):
                raise EvmConfigError(var, v, f"must be a number of seconds in (0, {hi:g}]", anchors[var])
            return f

        url = required("BROKER_EVM_RPC_URL")
        if not url.startswith(("http://", "https://")):
            raise EvmConfigError("BROKER_EVM_RPC_URL", url, "must be an http:// or https:// URL", anchors["BROKER_EVM_RPC_URL"])
        address = required("BROKER_EVM_CONTRACT_ADDRESS")
        if not _is_address(address):
            raise EvmConfigError("BROKER_EVM_CONTRACT_ADDRESS", address, "must be 0x followed by 40 hex digits",
                                 anchors["BROKER_EVM_CONTRACT_ADDRESS"])
        state = env.get("BROKER_EVM_STATE_DB") or (str(default_state_path) if default_state_path else None)
        if not state:
            raise EvmConfigError("BROKER_EVM_STATE_DB", None, "required when the evm anchor is enabled",
                                 anchors["BROKER_EVM_STATE_DB"])
        values: dict[str, Any] = dict(
            rpc_url=url,
            chain_id=integer("BROKER_EVM_CHAIN_ID", 1, None),
            contract_address=address,
            fee_payer_keystore=Path(required("BROKER_EVM_FEE_PAYER_KEYSTORE")).expanduser(),
            fee_payer_password_file=Path(required("BROKER_EVM_FEE_PAYER_PASSWORD_FILE")).expanduser(),
            confirmations=integer("BROKER_EVM_CONFIRMATIONS", 0, 1000),
            batch_max=integer("BROKER_EVM_BATCH_MAX", 1, 100_000),
            batch_max_wait_ms=integer("BROKER_EVM_BATCH_MAX_WAIT_MS", 0, 3_600_000),
            min_balance_wei=integer("BROKER_EVM_FEE_PAYER_MIN_BALANCE", 0, None),
            state_path=Path(state).expanduser(),
            rpc_timeout_s=seconds("BROKER_EVM_RPC_TIMEOUT_SECONDS", 60),
            replace_after_s=seconds("BROKER_EVM_REPLACE_AFTER_SECONDS", 86400),
            fee_bump_percent=integer("BROKER_EVM_FEE_BUMP_PERCENT", 10, 1000),
        )
        values.update(overrides)
        return cls(**values)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_address(v: Any) -> bool:
    if not isinstance(v, str) or len(v) != 42 or not v.startswith(("0x", "0X")):
        return False
    try:
        int(v[2:], 16)
    except ValueError:
        return False
    return True


def _hx(value: Any) -> str:
    """0x-prefixed lowercase hex of bytes / HexBytes / hex str."""
    if isinstance(value, str):
        return value.lower() if value.startswith("0x") else "0x" + value.lower()
    return "0x" + bytes(value).hex()


def make_web3(rpc_url: str, timeout_s: float) -> Any:
    """A synchronous Web3 whose every request is bounded by `timeout_s` and never retried by web3
    itself (the anchor's worker retries with its own backoff)."""
    from web3 import Web3

    provider = Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout_s}, exception_retry_configuration=None)
    return Web3(provider)


def _rpc_reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if "Read timed out" in text or "timed out" in text.lower():
        return "timed out"
    if "Connection refused" in text:
        return "connection refused"
    if len(text) > 200:
        text = text[:200] + "…"
    return f"{type(exc).__name__}: {text}"


# --- reading the chain's batches (status, tests, auditors) ------------------------------------


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


# --- the anchor ---------------------------------------------------------------------------------


@dataclass
class _Probe:
    """One readiness probe of the RPC (run on the probe thread)."""

    error: str | None = None
    chain_id: int | None = None
    balance: int | None = None
    contract_problem: str | None = None
    at: float = 0.0


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


class EvmAnchor:
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

    # --- the port -------------------------------------------------------------------------

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
            for r, h in zip(records, held):
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

    # --- extras ---------------------------------------------------------------------------

    def start(self, *, check: bool = True) -> "EvmAnchor":
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

    def __enter__(self) -> "EvmAnchor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EvmAnchor(contract={self.contract_address}, chain_id={self.config.chain_id}, state={str(self.config.state_path)!r})"

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

    def transactions(self) -> list[dict[str, Any]]:
        """Every transaction signed for a batch (write-ahead log), without the raw bytes."""
        return [t.as_dict() for t in self._store.all_txs()]

    def worker_status(self) -> dict[str, Any]:
        w = self._w
        return {"running": bool(self._thread and self._thread.is_alive()), "last_error": w.last_error,
                "failures": w.failures, "halted": w.fatal, "accepted_upto": self._accepted,
                "confirmed_upto": self._confirmed}

    # --- readiness internals ----------------------------------------------------------------

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
            assert p.balance is not None
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

    # --- web3 plumbing ----------------------------------------------------------------------

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

    # --- the worker -------------------------------------------------------------------------

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
                w.fatal = str(exc)
                log.error("EVM ANCHOR HALTED: %s. The chain and this anchor's state disagree; nothing more "
                          "is sent until an operator investigates (agentkeys-broker anchors status).", exc)
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

    # -- reorgs and confirmations --

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
            if newest.block_number > head or self._block_hash(w3, newest.block_number) != newest.block_hash:
                for b in recent:
                    if b.block_number <= head and self._block_hash(w3, b.block_number) == b.block_hash:
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
                ok = self._block_hash(w3, b.block_number) == b.block_hash
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

    # -- the open batch --

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

    def _node_knows(self, w3: Any, tx_hash: str) -> bool:
        from web3.exceptions import TransactionNotFound

        try:
            w3.eth.get_transaction(tx_hash)
        except TransactionNotFound:
            return False
        return True

    def _free_nonce(self, batch_id: int, mined_nonce: int) -> int:
        """The lowest nonce >= the mined count that no live transaction of another batch holds."""
        taken = {t.nonce for t in self._store.live_txs_of_other_batches(batch_id)}
        n = mined_nonce
        while n in taken:
            n += 1
        return n

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

    # -- cutting and sending --

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


def _checksum(address: str) -> str:
    from eth_utils import to_checksum_address

    return to_checksum_address(address)


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

