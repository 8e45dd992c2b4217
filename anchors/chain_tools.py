"""Small helpers around the `AuditAnchor` contract: the committed artifact, deployment, sending
locally signed transactions, decoding the contract's custom errors, and its `Batch` struct.

The artifact (`anchors/contracts/AuditAnchor.json`) is produced by `node scripts/compile_contract.js`
(solc 0.8.37, evmVersion cancun, optimizer 200 runs) and checked against a fresh compile in CI.
Synchronous web3.py (v8) only; an async anchor can reuse `load_artifact`, `abi`,
`decode_custom_error` and `OnChainBatch` as they are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak

__all__ = [
    "ARTIFACT_PATH",
    "Deployment",
    "OnChainBatch",
    "abi",
    "as_account",
    "bytecode",
    "code_matches_artifact",
    "contract_at",
    "decode_custom_error",
    "deploy",
    "deployed_bytecode",
    "error_selectors",
    "load_artifact",
    "send_transaction",
]

ARTIFACT_PATH = Path(__file__).resolve().parent / "contracts" / "AuditAnchor.json"


@lru_cache(maxsize=4)
def _load(path: str) -> Mapping[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_artifact(path: str | Path | None = None) -> Mapping[str, Any]:
    """The compiled artifact: ``abi``, ``bytecode``, ``deployedBytecode`` (0x-hex), ``immutableRanges``,
    ``compiler`` ({name, version}), ``settings`` ({evmVersion, optimizer, metadata}), names. Cached."""
    return _load(str(Path(path) if path else ARTIFACT_PATH))


def abi() -> list[dict[str, Any]]:
    return list(load_artifact()["abi"])


def bytecode() -> str:
    """Creation bytecode, 0x-hex (constructor arguments not included)."""
    return load_artifact()["bytecode"]


def deployed_bytecode() -> str:
    """Runtime bytecode, 0x-hex, with the immutable ranges zeroed (as solc emits it)."""
    return load_artifact()["deployedBytecode"]


def as_account(key_or_account: str | bytes | LocalAccount) -> LocalAccount:
    if isinstance(key_or_account, LocalAccount):
        return key_or_account
    return Account.from_key(key_or_account)


def contract_at(w3: Any, address: str) -> Any:
    """A web3 contract object for an `AuditAnchor` at `address` (checksummed here)."""
    return w3.eth.contract(address=w3.to_checksum_address(address), abi=abi())


def send_transaction(
    w3: Any,
    sender: str | bytes | LocalAccount,
    call: Any = None,
    *,
    tx: Mapping[str, Any] | None = None,
    nonce: int | None = None,
    gas: int | None = None,
    wait: bool = True,
    timeout_s: float = 30.0,
) -> Any:
    """Sign locally and send a contract function call (``contract.functions.f(...)``) or a raw ``tx``
    dict; return the receipt (``wait``) or the tx hash. Without ``gas`` it is estimated, so a call
    that would revert raises web3's ``ContractCustomError`` / ``ContractLogicError`` before anything
    is sent. With an explicit ``gas`` the transaction is sent as is (and may be mined as a failure:
    check ``receipt["status"]``).
    """
    acct = as_account(sender)
    params: dict[str, Any] = dict(tx or {})
    params.setdefault("from", acct.address)
    params.setdefault("chainId", w3.eth.chain_id)
    params["nonce"] = nonce if nonce is not None else w3.eth.get_transaction_count(acct.address, "pending")
    if gas is not None:
        params["gas"] = gas
    built = call.build_transaction(params) if call is not None else _fill_tx(w3, params)
    signed = acct.sign_transaction(built)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    if not wait:
        return tx_hash
    return w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout_s, poll_latency=0.05)


def _fill_tx(w3: Any, params: dict[str, Any]) -> dict[str, Any]:
    if "maxFeePerGas" not in params and "gasPrice" not in params:
        base = w3.eth.get_block("latest").get("baseFeePerGas") or 0
        tip = w3.eth.max_priority_fee
        params["maxPriorityFeePerGas"] = tip
        params["maxFeePerGas"] = 2 * base + tip
    if "gas" not in params:
        params["gas"] = w3.eth.estimate_gas(params)
    return params


@dataclass(frozen=True)
class Deployment:
    address: str
    contract: Any
    receipt: Any

    @property
    def gas_used(self) -> int:
        return int(self.receipt["gasUsed"])


def deploy(
    w3: Any,
    deployer: str | bytes | LocalAccount,
    submitter: str,
    start_seq: int = 1,
    *,
    timeout_s: float = 30.0,
) -> Deployment:
    """Deploy `AuditAnchor(submitter, start_seq)` from `deployer` (who becomes the owner).
    Raises RuntimeError if the deployment transaction failed."""
    factory = w3.eth.contract(abi=abi(), bytecode=bytecode())
    receipt = send_transaction(
        w3, deployer, factory.constructor(w3.to_checksum_address(submitter), start_seq), timeout_s=timeout_s
    )
    if receipt["status"] != 1 or not receipt.get("contractAddress"):
        raise RuntimeError(f"AuditAnchor deployment failed: {receipt!r}")
    address = receipt["contractAddress"]
    return Deployment(address=address, contract=contract_at(w3, address), receipt=receipt)


def code_matches_artifact(w3: Any, address: str) -> bool:
    """Is the runtime code at `address` this artifact's (ignoring the constructor-set immutables)?"""
    onchain = bytes(w3.eth.get_code(w3.to_checksum_address(address)))
    expected = bytes.fromhex(deployed_bytecode()[2:])
    if len(onchain) != len(expected):
        return False
    masked = bytearray(onchain)
    for r in load_artifact().get("immutableRanges", []):
        masked[r["start"] : r["start"] + r["length"]] = bytes(r["length"])
    return bytes(masked) == expected


@lru_cache(maxsize=1)
def error_selectors() -> Mapping[bytes, tuple[str, tuple[str, ...]]]:
    """4-byte selector -> (error name, argument types) for the contract's custom errors."""
    out: dict[bytes, tuple[str, tuple[str, ...]]] = {}
    for item in abi():
        if item.get("type") == "error":
            types = tuple(i["type"] for i in item.get("inputs", []))
            sig = f"{item['name']}({','.join(types)})"
            out[keccak(text=sig)[:4]] = (item["name"], types)
    return out


def decode_custom_error(data: bytes | str | None) -> tuple[str, tuple[Any, ...]] | None:
    """Decode revert data (bytes or 0x-hex, e.g. ``ContractCustomError.data``) into
    ``(name, args)`` for one of the contract's custom errors; None if it is not one of them."""
    if data is None:
        return None
    if isinstance(data, str):
        text = data[2:] if data.startswith(("0x", "0X")) else data
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            return None
    else:
        raw = bytes(data)
    entry = error_selectors().get(raw[:4])
    if entry is None:
        return None
    name, types = entry
    from eth_abi import decode

    try:
        args = tuple(decode(list(types), raw[4:])) if types else ()
    except Exception:
        return None
    return name, args


@dataclass(frozen=True)
class OnChainBatch:
    """`AuditAnchor.Batch` as returned by batchAt / batchByRoot / batchForSeq."""

    root: bytes
    first_seq: int
    last_seq: int
    chain_head: bytes
    block_number: int

    @classmethod
    def from_tuple(cls, t: Sequence[Any]) -> OnChainBatch:
        root, first, last, head, block = t
        return cls(bytes(root), int(first), int(last), bytes(head), int(block))

    @property
    def size(self) -> int:
        return self.last_seq - self.first_seq + 1
