"""The shared anchor contract (tests/contract/test_anchor_contract.py) for `anchors.evm.EvmAnchor`
on a real anvil node (chain id 84532).

One anvil per module, producing a block every 0.2 s besides mining each transaction at once
(`--block-time 0.2 --mixed-mining`), so `confirmations=1` is reached within a block time as on a
real chain. Every test deploys its own `AuditAnchor` and uses its own state file; the fee payer is
loaded from an encrypted keystore (as in production). `wait_until_confirmed` waits for the
asynchronous confirmation; every test ends by checking that the chain's batches cover 1..N
contiguously and match the anchor's confirmed prefix.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from anchors import chain_tools
from anchors.evm import EvmAnchor, EvmAnchorConfig, check_contiguity, read_chain_batches
from anchors.evm_keys import write_keystore
from ledger.ports import Anchor
from tests.support_anvil import Anvil

from .test_anchor_contract import AnchorContract


@pytest.fixture(scope="module")
def mixed_anvil() -> Iterator[Anvil]:
    node = Anvil("--block-time", "0.2", "--mixed-mining").start()
    try:
        yield node
    finally:
        if node.pid:
            os.kill(node.pid, signal.SIGKILL)  # a throwaway node: no need for the 1-1.5 s SIGTERM exit
        node.stop()


@pytest.fixture(scope="module")
def fee_payer_files(mixed_anvil: Anvil, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("evm-keys")
    password = d / "password"
    password.write_text("correct horse battery staple\n")
    password.chmod(0o600)
    keystore = d / "fee-payer.json"
    # a fast KDF for tests only (operators use `anchors keystore`, scrypt)
    write_keystore(keystore, "correct horse battery staple", mixed_anvil.private_keys[1], kdf="pbkdf2", iterations=1024)
    return keystore, password


class TestEvmAnchorContract(AnchorContract):
    confirm_timeout_s = 30.0
    big_n = 100
    confirmations = 1

    @pytest.fixture(autouse=True)
    def _chain(self, mixed_anvil: Anvil, fee_payer_files: tuple[Path, Path]) -> Iterator[None]:
        self.node = mixed_anvil
        self.keystore, self.password = fee_payer_files
        self.w3 = mixed_anvil.web3()
        self.contracts: list[Any] = []
        yield
        for contract in self.contracts:  # whatever a test did, the chain holds contiguous batches
            batches = read_chain_batches(contract)
            assert check_contiguity(batches) == []

    def config(self, tmp_path: Path, address: str) -> EvmAnchorConfig:
        return EvmAnchorConfig(
            rpc_url=self.node.rpc_url, chain_id=84532, contract_address=address,
            fee_payer_keystore=self.keystore, fee_payer_password_file=self.password,
            state_path=tmp_path / "evm-state.sqlite", confirmations=self.confirmations,
            batch_max=5000, batch_max_wait_ms=20, poll_interval_s=0.02, rpc_timeout_s=5,
        )

    def make_anchor(self, tmp_path: Path) -> Anchor:
        owner, payer = self.node.accounts[0], self.node.accounts[1]
        deployment = chain_tools.deploy(self.w3, owner, payer.address, 1)
        self.contracts.append(deployment.contract)
        self.address = deployment.address
        return EvmAnchor(self.config(tmp_path, deployment.address))

    def reopen_anchor(self, anchor: Anchor, tmp_path: Path) -> Anchor | None:
        self.close_anchor(anchor)
        return EvmAnchor(self.config(tmp_path, self.address))

    def wait_until_confirmed(self, anchor: Anchor, seq: int) -> None:
        deadline = time.monotonic() + self.confirm_timeout_s
        while anchor.confirmed_upto() < seq:
            if time.monotonic() > deadline:
                status = getattr(anchor, "worker_status", lambda: {})()
                raise AssertionError(f"evm did not confirm seq {seq} in {self.confirm_timeout_s}s: {status}")
            time.sleep(0.01)

    # --- EVM-specific additions to the contract -------------------------------------------------

    def test_confirmed_prefix_is_on_chain(self, anchor: Anchor) -> None:
        from .chains import make_chain

        chain = make_chain(40)
        self.submit_and_confirm(anchor, chain)
        batches = read_chain_batches(self.contracts[-1])
        assert check_contiguity(batches) == []
        assert batches[-1].last_seq == 40
        assert batches[-1].chain_head == "0x" + chain[-1].hash
        assert [b["status"] for b in anchor.batches()] == ["confirmed"] * len(batches)  # type: ignore[attr-defined]


class TestEvmAnchorContractReceiptOnly(TestEvmAnchorContract):
    """The same contract with `confirmations=0` (the receipt is enough)."""

    confirmations = 0
    big_n = 100
