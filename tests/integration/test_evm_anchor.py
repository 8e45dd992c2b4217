"""`anchors.evm.EvmAnchor` against real anvil nodes: batching, confirmations, outages, wrong chain,
drained fee payer, reorgs, restarts with transactions in flight, stuck-transaction replacement,
a lost state file, and gas per anchored event.

A fresh anvil per test (chain id 84532 unless the test says otherwise; killed with SIGKILL at the
end, it is throwaway), automine unless a test needs otherwise. Every test ends by reading the
contract's batches with batchCount/batchAt and checking they cover 1..N contiguously, and most
check that the fee payer sent exactly one transaction per batch (its nonce equals batchCount).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from anchors import chain_tools
from anchors.errors import AnchorConflict, AnchorUnavailable
from anchors.evm import (
    EVM_SETTINGS,
    EvmAnchor,
    EvmAnchorConfig,
    EvmConfigError,
    check_contiguity,
    read_chain_batches,
)
from anchors.evm_keys import KeystoreError, load_fee_payer, write_keystore
from tests.contract.chains import extend, make_chain
from tests.support_anvil import Anvil

GAS_REPORT: dict[int, int] = {}


# --- fixtures and helpers ----------------------------------------------------------------------


def _kill(node: Anvil) -> None:
    if node.pid:
        try:
            os.kill(node.pid, signal.SIGCONT)  # in case a test left it stopped
            os.kill(node.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    node.stop()


@pytest.fixture
def node() -> Iterator[Anvil]:
    n = Anvil().start()
    try:
        yield n
    finally:
        _kill(n)


class Env:
    """One deployed AuditAnchor plus helpers to build anchors on it."""

    def __init__(self, node: Anvil, tmp_path: Path, *, chain_id: int = 84532) -> None:
        self.node = node
        self.tmp_path = tmp_path
        self.w3 = node.web3()
        self.owner, self.payer = node.accounts[0], node.accounts[1]
        self.deployment = chain_tools.deploy(self.w3, self.owner, self.payer.address, 1)
        self.contract = self.deployment.contract
        self.address = self.deployment.address
        self.chain_id = chain_id
        self.anchors: list[EvmAnchor] = []
        self.nonce0 = self.nonce()

    def config(self, **overrides: Any) -> EvmAnchorConfig:
        values: dict[str, Any] = dict(
            rpc_url=self.node.rpc_url, chain_id=self.chain_id, contract_address=self.address,
            fee_payer_keystore=self.tmp_path / "unused.json", fee_payer_password_file=self.tmp_path / "unused.pw",
            state_path=self.tmp_path / "evm-state.sqlite", confirmations=0, batch_max=1000, batch_max_wait_ms=0,
            poll_interval_s=0.02, rpc_timeout_s=1.0,
        )
        values.update(overrides)
        return EvmAnchorConfig(**values)

    def anchor(self, *, clock: Callable[[], float] = time.monotonic, **overrides: Any) -> EvmAnchor:
        a = EvmAnchor(self.config(**overrides), fee_payer=self.payer, clock=clock)
        self.anchors.append(a)
        return a

    def nonce(self) -> int:
        return int(self.w3.eth.get_transaction_count(self.payer.address, "latest"))

    def chain_batches(self) -> list[Any]:
        return read_chain_batches(self.contract)

    def assert_contiguous(self, n: int, *, one_tx_per_batch: bool = True) -> list[Any]:
        batches = self.chain_batches()
        assert check_contiguity(batches) == [], batches
        assert (batches[-1].last_seq if batches else 0) == n
        if one_tx_per_batch:
            assert self.nonce() - self.nonce0 == len(batches), "the fee payer sent a transaction that is not a batch"
        return batches

    def close(self) -> None:
        for a in self.anchors:
            a.close()


@pytest.fixture
def env(node: Anvil, tmp_path: Path) -> Iterator[Env]:
    e = Env(node, tmp_path)
    try:
        yield e
    finally:
        e.close()


def wait_for(cond: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.01)


def wait_confirmed(anchor: EvmAnchor, seq: int, timeout_s: float = 10.0) -> None:
    wait_for(lambda: anchor.confirmed_upto() >= seq, timeout_s,
             f"confirmed_upto >= {seq} (now {anchor.confirmed_upto()}, {anchor.worker_status()})")


# --- batching ----------------------------------------------------------------------------------


def test_batches_cut_by_size_then_by_age_one_tx_each(env: Env) -> None:
    now = [0.0]  # the anchor's clock (batch ages); frozen unless the test moves it
    anchor = env.anchor(batch_max=10, batch_max_wait_ms=400, clock=lambda: now[0])
    chain = make_chain(25)
    anchor.submit(chain)
    wait_confirmed(anchor, 20)  # two full batches go at once
    assert [(b["first_seq"], b["last_seq"]) for b in anchor.batches()] == [(1, 10), (11, 20)]
    time.sleep(0.3)
    now[0] += 0.39
    time.sleep(0.2)
    assert len(anchor.batches()) == 2 and anchor.confirmed_upto() == 20  # 21..25 wait for their age limit
    now[0] += 0.02
    wait_confirmed(anchor, 25)
    assert [(b["first_seq"], b["last_seq"]) for b in anchor.batches()] == [(1, 10), (11, 20), (21, 25)]
    anchor.close()
    # with the real clock: a lone record waits batch_max_wait_ms, then goes alone
    anchor = env.anchor(batch_max=10, batch_max_wait_ms=400)
    t1 = time.monotonic()
    anchor.submit(extend(chain, 1))
    wait_confirmed(anchor, 26)
    assert time.monotonic() - t1 >= 0.4
    batches = env.assert_contiguous(26)
    assert len(batches) == 4
    logs = env.contract.events.Anchored.get_logs(from_block=0, to_block="latest")
    assert len(logs) == 4  # one Anchored event, one transaction, per batch
    assert {b["tx_hash"] for b in anchor.batches()} == {"0x" + bytes(e["transactionHash"]).hex() for e in logs}
    for local, onchain in zip(anchor.batches(), batches, strict=False):
        assert (local["root"], local["chain_head"]) == (onchain.root, onchain.chain_head)
    assert all(anchor.verify(r.seq, r.hash) for r in chain)


def test_migrated_contract_starts_at_its_start_seq(env: Env) -> None:
    migrated = chain_tools.deploy(env.w3, env.owner, env.payer.address, 11)  # the old contract held 1..10
    anchor = env.anchor(contract_address=migrated.address, state_path=env.tmp_path / "migrated.sqlite")
    chain = make_chain(15)
    anchor.submit(chain)
    wait_confirmed(anchor, 15)
    assert [(b["first_seq"], b["last_seq"]) for b in anchor.batches()] == [(11, 15)]
    assert not anchor.verify(5, chain[4].hash)  # not witnessed by this contract
    assert anchor.verify(12, chain[11].hash)
    batches = read_chain_batches(migrated.contract)
    assert check_contiguity(batches, 11) == [] and batches[-1].last_seq == 15


def test_confirmation_depth_is_respected(env: Env) -> None:
    anchor = env.anchor(confirmations=2)
    chain = make_chain(5)
    anchor.submit(chain)
    wait_for(lambda: anchor.batches() and anchor.batches()[0]["block_number"] is not None, what="the batch mined")
    mined_in = anchor.batches()[0]["block_number"]
    assert env.node.block_number() == mined_in  # automine: nothing on top yet
    time.sleep(0.2)
    assert anchor.confirmed_upto() == 0 and anchor.batches()[0]["status"] == "sent"
    assert not anchor.verify(1, chain[0].hash)
    env.node.rpc("evm_mine")
    time.sleep(0.2)
    assert anchor.confirmed_upto() == 0, "confirmed with 1 block on top, 2 required"
    env.node.rpc("evm_mine")
    wait_confirmed(anchor, 5, 3)
    assert anchor.batches()[0]["status"] == "confirmed"
    assert anchor.verify(1, chain[0].hash)
    env.assert_contiguous(5)


# --- the RPC going away ------------------------------------------------------------------------


def test_rpc_hang_sigstop_mid_batch_then_resume(env: Env) -> None:
    anchor = env.anchor(batch_max=5, rpc_timeout_s=1.0)
    chain = make_chain(10)
    anchor.submit(chain)
    wait_confirmed(anchor, 10)
    assert anchor.ready().ok
    broadcast = anchor._broadcast
    stopped = threading.Event()

    def hang_mid_batch(w3: Any, tx: Any) -> None:  # the node hangs after write-ahead, during the broadcast
        if not stopped.is_set():
            stopped.set()
            os.kill(env.node.pid, signal.SIGSTOP)
        broadcast(w3, tx)

    anchor._broadcast = hang_mid_batch  # type: ignore[method-assign]
    more = extend(chain, 12)
    try:
        anchor.submit(more)
        wait_for(stopped.is_set, 5, "the broadcast of batch 11..15")
        time.sleep(1.1)  # past the readiness cache
        t = time.monotonic()
        readiness = anchor.ready()
        took = time.monotonic() - t
        assert readiness.status == "unready", readiness
        assert took < 1.0 + 0.5, f"ready() took {took:.2f}s with rpc_timeout_s=1"
        assert "did not answer" in readiness.detail or "unreachable" in readiness.detail
        t = time.monotonic()
        anchor.submit(extend(more, 3))  # accepted locally, at once
        assert time.monotonic() - t < 0.5
        assert anchor.accepted_upto() == 25
        time.sleep(2.0)  # the worker meets timeouts and backs off
        assert anchor.confirmed_upto() == 10
        assert anchor.worker_status()["last_error"]
    finally:
        os.kill(env.node.pid, signal.SIGCONT)
    wait_confirmed(anchor, 25, 20)
    wait_for(lambda: anchor.ready().ok, 5, "ready again")
    batches = env.assert_contiguous(25)  # no duplicate, no missing batch, one transaction each
    assert [(b.first_seq, b.last_seq) for b in batches] == [(1, 5), (6, 10), (11, 15), (16, 20), (21, 25)]


def test_rpc_unreachable_then_restart_on_a_reachable_rpc(env: Env, tmp_path: Path) -> None:
    from tests.support import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    down = env.anchor(rpc_url=dead)
    with pytest.raises(AnchorUnavailable, match="unreachable"):
        down.check_chain()
    checks = down.readiness_checks()
    assert {k: v.status for k, v in checks.items()} == {"anchor/evm": "unready", "evm/chain_id": "unready",
                                                        "evm/fee_payer": "unready"}
    chain = make_chain(7)
    down.submit(chain)
    time.sleep(0.3)
    assert down.confirmed_upto() == 0 and down.accepted_upto() == 7
    down.close()
    up = env.anchor()  # same state file, the right RPC: catches up with what was accepted
    up.start()
    wait_confirmed(up, 7)
    env.assert_contiguous(7)


def test_wrong_chain_id_is_refused(tmp_path: Path) -> None:
    node = Anvil(chain_id=31337).start()
    try:
        e = Env(node, tmp_path, chain_id=31337)
        anchor = e.anchor(chain_id=84532)
        with pytest.raises(AnchorUnavailable, match="chain id 31337, expected 84532"):
            anchor.check_chain()
        with pytest.raises(AnchorUnavailable):
            anchor.start()
        checks = anchor.readiness_checks()
        assert checks["evm/chain_id"].status == "unready"
        assert "31337" in checks["evm/chain_id"].detail and "BROKER_EVM_CHAIN_ID" in checks["evm/chain_id"].detail
        assert anchor.ready().status == "unready"
        anchor.submit(make_chain(3))  # accepted locally, never sent to the wrong chain
        time.sleep(0.3)
        assert anchor.confirmed_upto() == 0
        assert "chain id" in (anchor.worker_status()["last_error"] or "")
        assert e.nonce() == e.nonce0
        e.close()
    finally:
        _kill(node)


def test_drained_fee_payer_is_unready(env: Env) -> None:
    anchor = env.anchor(min_balance_wei=10**15)
    assert anchor.ready().status == "ready"
    env.node.rpc("anvil_setBalance", [env.payer.address, hex(10**15 - 1)])
    readiness = wait_for(lambda: (r := anchor.ready()).status == "unready" and r, 3, "unready")
    assert "EVM fee-payer balance below BROKER_EVM_FEE_PAYER_MIN_BALANCE" in readiness.detail
    assert anchor.readiness_checks()["evm/fee_payer"].status == "unready"
    assert anchor.readiness_checks()["evm/chain_id"].status == "ready"
    assert anchor.balance_wei() == 10**15 - 1
    env.node.rpc("anvil_setBalance", [env.payer.address, hex(10**18)])
    wait_for(lambda: anchor.ready().status == "ready", 3, "ready after funding")


def test_fee_payer_not_submitter_is_unready(env: Env) -> None:
    anchor = EvmAnchor(env.config(), fee_payer=env.node.accounts[2])
    env.anchors.append(anchor)
    with pytest.raises(AnchorUnavailable, match="not the contract's submitter"):
        anchor.check_chain()
    assert anchor.ready().status == "unready"


# --- reorgs ------------------------------------------------------------------------------------


class _ConfirmedWatcher:
    """Samples `confirmed_upto()` in a thread until stopped. `stop()` joins the thread, and the
    thread takes one last sample after the stop was asked, so `seen[-1]` is the value at stop
    time and no sampling outlives the test (the anchor is closed in teardown)."""

    def __init__(self, anchor: EvmAnchor) -> None:
        self.anchor = anchor
        self.seen: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watch-confirmed", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        c = self.anchor.confirmed_upto()
        if not self.seen or self.seen[-1] != c:
            self.seen.append(c)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.002)
        self._sample()

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "the watcher thread did not stop"
        return self.seen


def test_reorg_by_revert_orphans_and_reanchors(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    anchor = env.anchor(confirmations=1)
    first = make_chain(4)
    anchor.submit(first)
    wait_for(lambda: anchor.batches() and anchor.batches()[0]["block_number"], what="batch 1 mined")
    env.node.mine(1)
    wait_confirmed(anchor, 4)
    snap = env.node.snapshot()  # before the second anchor transaction
    second = extend(first, 6)
    anchor.submit(second)
    wait_for(lambda: len(anchor.batches()) == 2 and anchor.batches()[1]["block_number"], what="batch 2 mined")
    env.node.mine(1)
    wait_confirmed(anchor, 10)
    reorged_tx = anchor.batches()[1]["tx_hash"]
    watcher = _ConfirmedWatcher(anchor)
    with caplog.at_level(logging.WARNING, logger="agentkeys.anchors.evm"):
        env.node.revert(snap)  # the chain forgets batch 2 (and the fee payer's nonce goes back)
        wait_for(lambda: anchor.batches()[1]["orphaned_count"] == 1, 5, "batch 2 orphaned")
        wait_for(lambda: anchor.batches()[1]["block_number"] is not None, 5, "batch 2 re-anchored")
        assert anchor.confirmed_upto() == 4  # re-mined, not yet at depth
        assert not anchor.verify(5, second[0].hash)
        env.node.mine(1)
        wait_confirmed(anchor, 10)
    seen = watcher.stop()
    assert 4 in seen and seen[-1] == 10, seen
    assert any("REORG" in r.getMessage() for r in caplog.records)
    b = anchor.batches()[1]
    assert b["status"] == "confirmed" and b["tx_hash"] == reorged_tx  # the same signed transaction, re-broadcast
    batches = env.assert_contiguous(10)
    assert [(x.first_seq, x.last_seq) for x in batches] == [(1, 4), (5, 10)]
    assert all(anchor.verify(r.seq, r.hash) for r in first + second)


def test_reorg_by_anvil_reorg_orphans_and_reanchors(env: Env) -> None:
    anchor = env.anchor(confirmations=2)
    chain = make_chain(8)
    anchor.submit(chain)
    wait_for(lambda: anchor.batches() and anchor.batches()[0]["block_number"], what="mined")
    env.node.mine(2)
    wait_confirmed(anchor, 8)
    old_block = anchor.batches()[0]["block_hash"]
    head = env.node.block_number()
    env.node.rpc("anvil_reorg", [3, []])  # replace the last 3 blocks (the anchor tx's included) with empty ones
    assert env.node.block_number() == head
    wait_for(lambda: anchor.batches()[0]["orphaned_count"] == 1, 5, "orphaned")
    wait_for(lambda: anchor.batches()[0]["block_number"] is not None, 5, "re-anchored")
    assert anchor.confirmed_upto() == 0
    env.node.mine(2)
    wait_confirmed(anchor, 8)
    assert anchor.batches()[0]["block_hash"] != old_block
    env.assert_contiguous(8)


# --- restarts and stuck transactions -----------------------------------------------------------


def test_restart_with_a_transaction_in_flight(env: Env) -> None:
    env.node.rpc("evm_setAutomine", [False])
    a1 = env.anchor(confirmations=0)
    chain = make_chain(6)
    a1.submit(chain)
    wait_for(lambda: a1.transactions() and a1.transactions()[0]["state"] == "sent", what="tx broadcast")
    in_flight = a1.transactions()[0]["tx_hash"]
    a1.close()  # no receipt recorded
    assert env.chain_batches() == []
    a2 = env.anchor(confirmations=0)  # same state file
    a2.start()
    time.sleep(0.3)
    assert a2.confirmed_upto() == 0
    assert [t["tx_hash"] for t in a2.transactions()] == [in_flight]  # found, not re-sent
    env.node.rpc("evm_mine")
    env.node.rpc("evm_setAutomine", [True])
    wait_confirmed(a2, 6)
    assert a2.batches()[0]["tx_hash"] == in_flight
    a2.submit(extend(chain, 3))
    wait_confirmed(a2, 9)
    env.assert_contiguous(9)


def test_restart_after_write_ahead_before_broadcast(env: Env) -> None:
    a1 = env.anchor()
    crashed = threading.Event()

    def crash(w3: Any, tx: Any) -> None:
        crashed.set()
        raise AnchorUnavailable("simulated crash between write-ahead and broadcast")

    a1._broadcast = crash  # type: ignore[method-assign]
    chain = make_chain(5)
    a1.submit(chain)
    wait_for(crashed.is_set, what="the first broadcast attempt")
    a1.stop()
    txs = a1.transactions()
    assert [b["status"] for b in a1.batches()] == ["pending"]  # cut and written ahead, never accepted by a node
    a1.close()
    assert len(txs) == 1 and txs[0]["state"] == "signed"
    assert env.nonce() == env.nonce0 and env.chain_batches() == []  # nothing reached the chain
    a2 = env.anchor()
    a2.start()
    wait_confirmed(a2, 5)
    assert [t["tx_hash"] for t in a2.transactions()] == [txs[0]["tx_hash"]]  # the written-ahead tx, re-broadcast
    env.assert_contiguous(5)


def test_transaction_dropped_from_the_mempool_is_rebroadcast(env: Env) -> None:
    env.node.rpc("evm_setAutomine", [False])
    anchor = env.anchor()
    anchor.submit(make_chain(3))
    wait_for(lambda: anchor.transactions() and anchor.transactions()[0]["state"] == "sent", what="broadcast")
    tx = anchor.transactions()[0]["tx_hash"]
    env.node.rpc("anvil_dropTransaction", [tx])
    wait_for(lambda: env.node.rpc("eth_getTransactionByHash", [tx]) is not None, 5, "re-broadcast")
    env.node.rpc("evm_setAutomine", [True])
    env.node.rpc("evm_mine")
    wait_confirmed(anchor, 3)
    assert [t["tx_hash"] for t in anchor.transactions()] == [tx]
    env.assert_contiguous(3)


def test_stuck_transaction_is_replaced_with_higher_fees_and_mined_once(env: Env) -> None:
    env.node.rpc("evm_setAutomine", [False])
    now = [1000.0]
    anchor = env.anchor(replace_after_s=30, fee_bump_percent=25, clock=lambda: now[0])
    anchor.submit(make_chain(4))
    wait_for(lambda: anchor.transactions() and anchor.transactions()[0]["state"] == "sent", what="broadcast")
    time.sleep(0.2)
    assert len(anchor.transactions()) == 1  # not before replace_after_s
    now[0] += 31
    wait_for(lambda: len(txs := anchor.transactions()) == 2 and txs[1]["state"] == "sent", 5, "the replacement")
    old, new = anchor.transactions()
    assert new["nonce"] == old["nonce"]
    assert new["max_fee"] >= old["max_fee"] * 125 // 100
    assert new["max_priority_fee"] >= old["max_priority_fee"] * 125 // 100
    assert env.node.rpc("eth_getTransactionByHash", [new["tx_hash"]]) is not None
    env.node.rpc("evm_mine")
    env.node.rpc("evm_setAutomine", [True])
    wait_confirmed(anchor, 4)
    states = {t["tx_hash"]: t["state"] for t in anchor.transactions()}
    assert states == {new["tx_hash"]: "mined", old["tx_hash"]: "replaced"}
    assert anchor.batches()[0]["tx_hash"] == new["tx_hash"]
    assert env.node.rpc("eth_getTransactionReceipt", [old["tx_hash"]]) is None
    env.assert_contiguous(4)


# --- adoption and conflicts --------------------------------------------------------------------


def test_lost_state_file_adopts_the_chain_instead_of_resending(env: Env) -> None:
    a1 = env.anchor(batch_max=10)
    chain = make_chain(25)
    a1.submit(chain)
    wait_confirmed(a1, 25)
    sent = [b["tx_hash"] for b in a1.batches()]
    a1.close()
    nonce = env.nonce()
    a2 = env.anchor(batch_max=10, state_path=env.tmp_path / "fresh-state.sqlite")
    a2.start()
    a2.submit(chain)
    wait_confirmed(a2, 25)
    assert env.nonce() == nonce  # adopted, nothing re-sent
    assert [(b["first_seq"], b["last_seq"], b["status"]) for b in a2.batches()] == [
        (1, 10, "confirmed"), (11, 20, "confirmed"), (21, 25, "confirmed")]
    assert [b["tx_hash"] for b in a2.batches()] == sent  # found through the Anchored events
    a2.submit(extend(chain, 2))
    wait_confirmed(a2, 27)
    env.assert_contiguous(27)


def test_chain_mismatch_is_a_hard_conflict(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    a1 = env.anchor()
    a1.submit(make_chain(5))
    wait_confirmed(a1, 5)
    a1.close()
    nonce = env.nonce()
    a2 = env.anchor(state_path=env.tmp_path / "other.sqlite")
    with caplog.at_level(logging.ERROR, logger="agentkeys.anchors.evm"):
        a2.submit(make_chain(7, fork="forked ledger"))
        wait_for(lambda: a2.worker_status()["halted"], 5, "halted")
    assert "does not match" in a2.worker_status()["halted"]
    assert any("EVM ANCHOR HALTED" in r.getMessage() for r in caplog.records)
    assert a2.confirmed_upto() == 0
    readiness = a2.ready()
    assert readiness.status == "unready" and "halted" in readiness.detail
    with pytest.raises(AnchorConflict):
        a2.submit(extend(make_chain(7, fork="forked ledger"), 1))
    assert env.nonce() == nonce
    env.assert_contiguous(5)


def test_one_anchor_per_state_file(env: Env) -> None:
    env.anchor()
    with pytest.raises(AnchorUnavailable, match="in use by another EvmAnchor"):
        EvmAnchor(env.config(), fee_payer=env.payer)


def test_state_file_is_bound_to_its_contract(env: Env) -> None:
    env.anchor().close()
    other = chain_tools.deploy(env.w3, env.owner, env.payer.address, 1)
    with pytest.raises(AnchorUnavailable, match="belongs to contract"):
        EvmAnchor(env.config(contract_address=other.address), fee_payer=env.payer)


# --- keys and configuration --------------------------------------------------------------------


def test_keystore_and_password_file_rules(tmp_path: Path, node: Anvil) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    pw.chmod(0o600)
    ks = tmp_path / "ks.json"
    acct = write_keystore(ks, "s3cret", node.private_keys[1], kdf="pbkdf2", iterations=1024)
    assert oct(ks.stat().st_mode & 0o777) == "0o600"
    assert load_fee_payer(ks, pw).address == acct.address == node.accounts[1].address
    with pytest.raises(KeystoreError, match="already exists"):
        write_keystore(ks, "s3cret")
    pw.chmod(0o640)
    with pytest.raises(KeystoreError, match="accessible by group or other"):
        load_fee_payer(ks, pw)
    pw.chmod(0o600)
    pw.write_text("wrong\n")
    with pytest.raises(KeystoreError, match="wrong password"):
        load_fee_payer(ks, pw)
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(KeystoreError, match="not JSON"):
        load_fee_payer(tmp_path / "junk.json", pw)
    # the anchor loads its fee payer from the keystore when none is given
    pw.write_text("s3cret")
    e = Env(node, tmp_path)
    anchor = EvmAnchor(e.config(fee_payer_keystore=ks, fee_payer_password_file=pw))
    try:
        assert anchor.fee_payer_address == node.accounts[1].address
    finally:
        anchor.close()


def test_config_from_env_and_settings() -> None:
    names = [s[0] for s in EVM_SETTINGS]
    assert names == [
        "BROKER_EVM_RPC_URL", "BROKER_EVM_CHAIN_ID", "BROKER_EVM_CONTRACT_ADDRESS", "BROKER_EVM_FEE_PAYER_KEYSTORE",
        "BROKER_EVM_FEE_PAYER_PASSWORD_FILE", "BROKER_EVM_CONFIRMATIONS", "BROKER_EVM_BATCH_MAX",
        "BROKER_EVM_BATCH_MAX_WAIT_MS", "BROKER_EVM_FEE_PAYER_MIN_BALANCE", "BROKER_EVM_STATE_DB",
        "BROKER_EVM_CONFIRM_DEADLINE_SECONDS"]
    defaults = {s[0]: s[1] for s in EVM_SETTINGS}
    assert defaults["BROKER_EVM_CHAIN_ID"] == "84532" and defaults["BROKER_EVM_CONFIRM_DEADLINE_SECONDS"] == "600"
    assert defaults["BROKER_EVM_FEE_PAYER_MIN_BALANCE"] == str(10**15)
    env = {
        "BROKER_EVM_RPC_URL": "http://127.0.0.1:8545",
        "BROKER_EVM_CONTRACT_ADDRESS": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
        "BROKER_EVM_FEE_PAYER_KEYSTORE": "/k.json",
        "BROKER_EVM_FEE_PAYER_PASSWORD_FILE": "/k.pw",
        "BROKER_EVM_CONFIRMATIONS": "3",
    }
    cfg = EvmAnchorConfig.from_env(env, default_state_path="/data/evm-anchor.sqlite")
    assert (cfg.chain_id, cfg.confirmations, cfg.batch_max, cfg.batch_max_wait_ms, cfg.min_balance_wei) == (
        84532, 3, 1000, 2000, 10**15)
    assert (cfg.rpc_timeout_s, cfg.replace_after_s, cfg.fee_bump_percent) == (5.0, 30.0, 25)
    assert cfg.state_path == Path("/data/evm-anchor.sqlite")
    for var, value in (("BROKER_EVM_CONFIRMATIONS", "-1"), ("BROKER_EVM_BATCH_MAX", "0"),
                       ("BROKER_EVM_CONTRACT_ADDRESS", "0x123"), ("BROKER_EVM_RPC_URL", "ftp://x"),
                       ("BROKER_EVM_FEE_PAYER_MIN_BALANCE", "1e15"), ("BROKER_EVM_CHAIN_ID", "base")):
        with pytest.raises(EvmConfigError) as info:
            EvmAnchorConfig.from_env({**env, var: value}, default_state_path="/d.sqlite")
        assert info.value.var == var and info.value.anchor.startswith("evm-")
    with pytest.raises(EvmConfigError) as info:
        EvmAnchorConfig.from_env({k: v for k, v in env.items() if k != "BROKER_EVM_RPC_URL"}, default_state_path="/d")
    assert info.value.var == "BROKER_EVM_RPC_URL"
    with pytest.raises(ValueError):
        replace(cfg, confirmations=-1)


# --- gas -----------------------------------------------------------------------------------------


def test_gas_per_anchored_event(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    anchor = env.anchor(batch_max=1000, batch_max_wait_ms=0)
    chain: list[Any] = []
    for size in (1, 1, 10, 100, 1000):
        more = extend(chain, size) if chain else make_chain(size)
        anchor.submit(more)
        chain += more
        wait_confirmed(anchor, chain[-1].seq, 20)
    batches = anchor.batches()
    assert [b["last_seq"] - b["first_seq"] + 1 for b in batches] == [1, 1, 10, 100, 1000]
    gas = [int(b["gas_used"]) for b in batches]
    for size, g in zip((1, 10, 100, 1000), gas[1:], strict=False):
        GAS_REPORT[size] = g
    per_event_single = gas[1]  # one anchor() per event (not the contract's first batch)
    with capsys.disabled():
        print("\nEVM anchor gas (anvil, AuditAnchor solc 0.8.37 cancun):")
        print(f"  first batch of a fresh contract: {gas[0]:,} gas")
        for size, g in GAS_REPORT.items():
            print(f"  batch of {size:>4}: {g:>7,} gas/tx  {g / size:>9,.1f} gas/event  "
                  f"({per_event_single / (g / size):,.0f}x cheaper than one anchor() per event)")
    assert max(gas[1:]) - min(gas[1:]) < 2_000  # the cost of a batch does not depend on its size
    env.assert_contiguous(1112)


def test_chain_loss_re_anchors_10000_records_in_at_most_10_transactions(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """A chain lost under a kept state file (a fresh node: the contract is back at the same address,
    only block 0's hash differs): the 100 small batches of the old chain are not re-sent one
    transaction each; the accepted records are re-cut into full batches (issue 14)."""
    anchor = env.anchor(batch_max=1000, batch_max_wait_ms=0)
    anchor.start()
    old_genesis = anchor.genesis_hash
    assert old_genesis is not None
    chain = make_chain(10_000)
    for i in range(0, 10_000, 100):  # light traffic: one small batch per burst
        anchor.submit(chain[i:i + 100])
        wait_confirmed(anchor, i + 100)
    assert len(anchor.batches()) == 100
    anchor.close()

    other = Anvil().start()
    try:
        w3 = other.web3()
        redeployed = chain_tools.deploy(w3, env.owner, env.payer.address, 1)
        assert redeployed.address == env.address  # same deployer, same nonce: addresses cannot tell chains apart
        changed: list[str] = []
        moved = EvmAnchor(env.config(rpc_url=other.rpc_url, batch_max=1000, batch_max_wait_ms=0), fee_payer=env.payer)
        env.anchors.append(moved)
        moved.on_chain_changed = lambda: changed.append(str(moved.genesis_hash))
        with caplog.at_level(logging.WARNING, logger="agentkeys.anchors.evm"):
            moved.start()
            assert moved.genesis_hash != old_genesis
            wait_confirmed(moved, 10_000, timeout_s=120)
        assert changed == [moved.genesis_hash]
        assert any("CHAIN REPLACED" in r.getMessage() for r in caplog.records)
        sent = int(w3.eth.get_transaction_count(env.payer.address, "latest"))
        batches = read_chain_batches(redeployed.contract)
        assert check_contiguity(batches) == [] and batches[-1].last_seq == 10_000
        assert sent == len(batches) <= 10
        assert all(moved.verify(r.seq, r.hash) for r in chain[::997])
        # and the state file now belongs to the new chain: a restart there does not forget again
        moved.close()
        again = EvmAnchor(env.config(rpc_url=other.rpc_url), fee_payer=env.payer)
        env.anchors.append(again)
        again.start()
        assert again.genesis_hash == moved.genesis_hash and again.confirmed_upto() == 10_000
    finally:
        _kill(other)
