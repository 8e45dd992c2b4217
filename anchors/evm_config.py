"""The EVM anchor's configuration (`BROKER_EVM_*`, design §3) and the small helpers its parts
share. Imported by `api.config` to read the settings: nothing here loads web3 at import time."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.identity import normalize_address

__all__ = [
    "DEFAULT_CHAIN_ID",
    "EVM_SETTINGS",
    "EVM_TUNING_SETTINGS",
    "EvmAnchorConfig",
    "EvmConfigError",
    "make_web3",
]

# one logger for every part of the EVM anchor (operators and tests filter on this name)
log = logging.getLogger("agentkeys.anchors.evm")

DEFAULT_CHAIN_ID = 84532  # Base Sepolia


FALLBACK_TIP_WEI = 10**9  # 1 gwei, only when neither eth_maxPriorityFeePerGas nor eth_feeHistory answers


READY_CACHE_S = 1.0


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
                 **overrides: Any) -> EvmAnchorConfig:
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
            raise EvmConfigError("BROKER_EVM_CONTRACT_ADDRESS", address, "must be 0x followed by 40 hex digits (mixed case: a "
                                                                         "valid EIP-55 checksum)",
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
        normalize_address(v)  # hex, and a valid EIP-55 checksum when mixed-case
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


def _checksum(address: str) -> str:
    from eth_utils import to_checksum_address

    return to_checksum_address(address)
