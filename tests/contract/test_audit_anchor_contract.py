"""AuditAnchor.sol on a real anvil node (chain id 84532) through web3.py v8.

One anvil per module; one deployment per test (cheap), with `evm_snapshot` / `evm_revert` around
each test so state never leaks between them. Roots and proofs come from `ledger.audit.merkle` over real
ledger record hashes (`tests.contract.chains.make_chain`), so the on-chain verifier is checked
against the Python one byte for byte.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from web3.exceptions import ContractCustomError

from anchors import chain_tools
from anchors.chain_tools import OnChainBatch
from ledger.audit import merkle
from tests.support_anvil import Anvil, anvil_module  # noqa: F401  (fixture)

from .chains import make_chain

ZERO = "0x0000000000000000000000000000000000000000"
GAS: dict[str, list[int]] = {}


# --- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def w3(anvil_module: Anvil) -> Any:  # noqa: F811
    return anvil_module.web3()


@pytest.fixture(scope="module")
def accounts(anvil_module: Anvil) -> dict[str, Any]:  # noqa: F811
    a = anvil_module.accounts
    return {"owner": a[0], "submitter": a[1], "other": a[2], "next": a[3]}


@pytest.fixture
def isolated(anvil_module: Anvil) -> Iterator[Anvil]:  # noqa: F811
    snap = anvil_module.snapshot()
    yield anvil_module
    anvil_module.revert(snap)


@pytest.fixture
def anchor(w3: Any, accounts: dict[str, Any], isolated: Anvil) -> Any:
    d = chain_tools.deploy(w3, accounts["owner"], accounts["submitter"].address, 1)
    GAS.setdefault("deploy", []).append(d.gas_used)
    return d.contract


@pytest.fixture(scope="module", autouse=True)
def _print_gas() -> Iterator[None]:
    yield
    if GAS:
        print("\nAuditAnchor gas (anvil, solc 0.8.37 cancun, optimizer 200):")
        for k, v in GAS.items():
            print(f"  {k:<46} n={len(v):<3} min={min(v):>7,} max={max(v):>7,}")


def send(w3: Any, sender: Any, call: Any, *, label: str | None = None) -> Any:
    receipt = chain_tools.send_transaction(w3, sender, call)
    assert receipt["status"] == 1
    if label:
        GAS.setdefault(label, []).append(int(receipt["gasUsed"]))
    return receipt


def reverts_with(call: Any, sender: Any, name: str, args: tuple[Any, ...] | None = None) -> None:
    """The call (simulated from `sender`) reverts with custom error `name` (and `args`)."""
    with pytest.raises(ContractCustomError) as exc:
        call.call({"from": sender.address})
    decoded = chain_tools.decode_custom_error(exc.value.data)
    assert decoded is not None, exc.value.data
    assert decoded[0] == name, decoded
    if args is not None:
        assert decoded[1] == args, decoded


def b32(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


class Batches:
    """Ledger records cut into batches, with their Merkle roots: what the EVM anchor submits."""

    def __init__(self, sizes: Sequence[int], start: int = 1, fork: str = "") -> None:
        self.records = make_chain(sum(sizes), start=start, fork=fork)
        self.batches: list[tuple[int, int, list[bytes], bytes, bytes]] = []
        i = 0
        for size in sizes:
            chunk = self.records[i : i + size]
            leaves = merkle.leaves_from_record_hashes(r.hash for r in chunk)
            self.batches.append((chunk[0].seq, chunk[-1].seq, leaves, merkle.root(leaves), bytes.fromhex(chunk[-1].hash)))
            i += size

    def args(self, k: int) -> tuple[bytes, int, int, bytes]:
        first, last, _, root, head = self.batches[k]
        return root, first, last, head

    def proof(self, seq: int) -> tuple[bytes, list[bytes]]:
        for first, last, leaves, _, _ in self.batches:
            if first <= seq <= last:
                return leaves[seq - first], merkle.inclusion_proof(leaves, seq - first)
        raise KeyError(seq)


def anchor_all(w3: Any, c: Any, submitter: Any, b: Batches, label: str = "anchor() new batch") -> list[Any]:
    return [send(w3, submitter, c.functions.anchor(*b.args(k)), label=label) for k in range(len(b.batches))]


# --- deployment -----------------------------------------------------------------------------------


def test_deploy_initial_state(w3: Any, accounts: dict[str, Any], anchor: Any) -> None:
    assert anchor.functions.owner().call() == accounts["owner"].address
    assert anchor.functions.submitter().call() == accounts["submitter"].address
    assert anchor.functions.startSeq().call() == 1
    assert anchor.functions.lastSeq().call() == 0
    assert anchor.functions.batchCount().call() == 0
    assert chain_tools.code_matches_artifact(w3, anchor.address)
    assert w3.eth.chain_id == 84532


def test_constructor_rejects_start_seq_zero_and_zero_submitter(w3: Any, accounts: dict[str, Any], isolated: Anvil) -> None:
    factory = w3.eth.contract(abi=chain_tools.abi(), bytecode=chain_tools.bytecode())
    owner = accounts["owner"].address
    for args, err in (((accounts["submitter"].address, 0), "InvalidStartSeq"), ((ZERO, 1), "ZeroAddress")):
        with pytest.raises(ContractCustomError) as exc:
            factory.constructor(*args).estimate_gas({"from": owner})
        assert chain_tools.decode_custom_error(exc.value.data)[0] == err


# --- anchoring ------------------------------------------------------------------------------------


def test_anchor_contiguous_batches_and_events(w3: Any, accounts: dict[str, Any], anchor: Any) -> None:
    b = Batches([1, 4, 16, 100, 3])
    receipts = anchor_all(w3, anchor, accounts["submitter"], b)
    assert anchor.functions.batchCount().call() == 5
    assert anchor.functions.lastSeq().call() == 124
    for k, receipt in enumerate(receipts):
        (ev,) = anchor.events.Anchored().process_receipt(receipt)
        root, first, last, head = b.args(k)
        assert dict(ev["args"]) == {"batchIndex": k, "root": root, "firstSeq": first, "lastSeq": last, "chainHead": head}
        got = OnChainBatch.from_tuple(anchor.functions.batchAt(k).call())
        assert got == OnChainBatch(root, first, last, head, receipt["blockNumber"])
    # logs are filterable by the indexed root
    logs = anchor.events.Anchored.get_logs(from_block=0, argument_filters={"root": b.args(3)[0]})
    assert [log["args"]["batchIndex"] for log in logs] == [3]
    # gas does not depend on the batch size (one root per batch)
    gas = [int(r["gasUsed"]) for r in receipts]
    assert max(gas) - min(gas) < 100, gas
    assert max(gas) < 110_000, gas


def test_non_submitter_refused(w3: Any, accounts: dict[str, Any], anchor: Any) -> None:
    b = Batches([3])
    for who in ("owner", "other"):
        reverts_with(anchor.functions.anchor(*b.args(0)), accounts[who], "NotSubmitter")
    # a mined attempt (gas given, so no pre-flight estimate) fails and changes nothing
    receipt = chain_tools.send_transaction(w3, accounts["other"], anchor.functions.anchor(*b.args(0)), gas=200_000)
    assert receipt["status"] == 0
    assert anchor.functions.batchCount().call() == 0
    assert anchor.functions.lastSeq().call() == 0


def test_non_contiguous_refused(w3: Any, accounts: dict[str, Any], anchor: Any) -> None:
    sub = accounts["submitter"]
    root, head = b32("r"), b32("h")
    reverts_with(anchor.functions.anchor(root, 2, 5, head), sub, "NotContiguous", (1, 2))  # gap at start
    reverts_with(anchor.functions.anchor(root, 0, 5, head), sub, "NotContiguous", (1, 0))
    send(w3, sub, anchor.functions.anchor(b32("a"), 1, 10, head))
    reverts_with(anchor.functions.anchor(root, 12, 15, head), sub, "NotContiguous", (11, 12))  # gap
    reverts_with(anchor.functions.anchor(root, 10, 15, head), sub, "NotContiguous", (11, 10))  # overlap
    reverts_with(anchor.functions.anchor(root, 1, 15, head), sub, "NotContiguous", (11, 1))  # re-anchor from 1
    reverts_with(anchor.functions.anchor(root, 11, 10, head), sub, "InvalidRange", (11, 10))  # empty range
    reverts_with(anchor.functions.anchor(b"\x00" * 32, 11, 12, head), sub, "ZeroRoot")
    send(w3, sub, anchor.functions.anchor(root, 11, 11, head))  # a one-record batch
    assert anchor.functions.lastSeq().call() == 11


def test_duplicate_root_refused(w3: Any, accounts: dict[str, Any], anchor: Any) -> None:
    sub = accounts["submitter"]
    root = b32("same")
    send(w3, sub, anchor.functions.anchor(root, 1, 3, b32("h1")))
    reverts_with(anchor.functions.anchor(root, 4, 6, b32("h2")), sub, "RootAlreadyAnchored", (root, 0))
    send(w3, sub, anchor.functions.anchor(b32("other"), 4, 6, b32("h2")))
    reverts_with(anchor.functions.anchor(root, 7, 9, b32("h3")), sub, "RootAlreadyAnchored", (root, 0))
    assert anchor.functions.batchIndexByRoot(root).call() == 1
    assert anchor.functions.batchIndexByRoot(b32("other")).call() == 2
    assert anchor.functions.batchIndexByRoot(b32("never")).call() == 0


# --- roles ----------------------------------------------------------------------------------------


def test_owner_changes_submitter(w3: Any, accounts: dict[str, Any], anchor: Any) -> None:
    owner, old, new = accounts["owner"], accounts["submitter"], accounts["next"]
    send(w3, old, anchor.functions.anchor(b32("a"), 1, 2, b32("h")))
    reverts_with(anchor.functions.setSubmitter(new.address), accounts["other"], "NotOwner")
    reverts_with(anchor.functions.setSubmitter(new.address), old, "NotOwner")
    receipt = send(w3, owner, anchor.functions.setSubmitter(new.address), label="setSubmitter()")
    (ev,) = anchor.events.SubmitterChanged().process_receipt(receipt)
    assert (ev["args"]["previous"], ev["args"]["next"]) == (old.address, new.address)
    assert anchor.functions.submitter().call() == new.address
    reverts_with(anchor.functions.anchor(b32("b"), 3, 4, b32("h")), old, "NotSubmitter")
    send(w3, new, anchor.functions.anchor(b32("b"), 3, 4, b32("h")))
    # address(0) freezes anchoring (used after a migration)
    send(w3, owner, anchor.functions.setSubmitter(ZERO))
    reverts_with(anchor.functions.anchor(b32("c"), 5, 6, b32("h")), new, "NotSubmitter")


def test_transfer_ownership(w3: Any, accounts: dict[str, Any], anchor: Any) -> None:
    owner, nxt = accounts["owner"], accounts["next"]
    reverts_with(anchor.functions.transferOwnership(nxt.address), accounts["other"], "NotOwner")
    reverts_with(anchor.functions.transferOwnership(ZERO), owner, "ZeroAddress")
    receipt = send(w3, owner, anchor.functions.transferOwnership(nxt.address))
    (ev,) = anchor.events.OwnershipTransferred().process_receipt(receipt)
    assert (ev["args"]["previous"], ev["args"]["next"]) == (owner.address, nxt.address)
    assert anchor.functions.owner().call() == nxt.address
    reverts_with(anchor.functions.setSubmitter(owner.address), owner, "NotOwner")
    send(w3, nxt, anchor.functions.setSubmitter(owner.address))
    assert anchor.functions.submitter().call() == owner.address


# --- views ----------------------------------------------------------------------------------------


def test_views_by_index_root_and_seq(w3: Any, accounts: dict[str, Any], anchor: Any) -> None:
    sub = accounts["submitter"]
    reverts_with(anchor.functions.batchForSeq(1), sub, "SeqNotAnchored", (1,))
    reverts_with(anchor.functions.batchAt(0), sub, "BatchNotFound", (0,))
    sizes = [1, 3, 1, 5, 2, 1, 8, 1]
    b = Batches(sizes)
    receipts = anchor_all(w3, anchor, sub, b)
    last = sum(sizes)
    for k in range(len(sizes)):
        root, first, lst, head = b.args(k)
        expected = OnChainBatch(root, first, lst, head, receipts[k]["blockNumber"])
        assert OnChainBatch.from_tuple(anchor.functions.batchByRoot(root).call()) == expected
        assert anchor.functions.batchIndexByRoot(root).call() == k + 1
        # every seq of the batch, boundaries included, finds it (binary search on lastSeq)
        for seq in range(first, lst + 1):
            index, batch = anchor.functions.batchForSeq(seq).call()
            assert index == k and OnChainBatch.from_tuple(batch) == expected, seq
    reverts_with(anchor.functions.batchForSeq(0), sub, "SeqNotAnchored", (0,))
    reverts_with(anchor.functions.batchForSeq(last + 1), sub, "SeqNotAnchored", (last + 1,))
    reverts_with(anchor.functions.batchForSeq(2**64 - 1), sub, "SeqNotAnchored", (2**64 - 1,))
    reverts_with(anchor.functions.batchAt(len(sizes)), sub, "BatchNotFound", (len(sizes),))
    reverts_with(anchor.functions.batchByRoot(b32("unknown")), sub, "RootNotAnchored", (b32("unknown"),))


# --- migration ------------------------------------------------------------------------------------


def test_migration_continues_at_old_last_seq_plus_one(w3: Any, accounts: dict[str, Any], anchor: Any) -> None:
    owner, sub = accounts["owner"], accounts["submitter"]
    old = Batches([4, 6])
    anchor_all(w3, anchor, sub, old)
    old_last = anchor.functions.lastSeq().call()
    assert old_last == 10
    new = chain_tools.deploy(w3, owner, sub.address, old_last + 1).contract
    assert new.functions.startSeq().call() == 11
    assert new.functions.lastSeq().call() == 10
    assert new.functions.batchCount().call() == 0
    reverts_with(new.functions.batchForSeq(10), sub, "SeqNotAnchored", (10,))
    tail = Batches([5, 2], start=11, fork="")
    reverts_with(new.functions.anchor(b32("x"), 1, 10, b32("h")), sub, "NotContiguous", (11, 1))
    reverts_with(new.functions.anchor(b32("x"), 10, 12, b32("h")), sub, "NotContiguous", (11, 10))
    reverts_with(new.functions.anchor(b32("x"), 12, 15, b32("h")), sub, "NotContiguous", (11, 12))
    send(w3, sub, new.functions.anchor(*tail.args(0)), label="anchor() first batch after migration")
    send(w3, sub, new.functions.anchor(*tail.args(1)))
    assert new.functions.lastSeq().call() == 17
    index, batch = new.functions.batchForSeq(11).call()
    assert index == 0 and OnChainBatch.from_tuple(batch).first_seq == 11
    # the old contract is frozen by its owner; its history stays readable
    send(w3, owner, anchor.functions.setSubmitter(ZERO))
    reverts_with(anchor.functions.anchor(b32("y"), 11, 12, b32("h")), sub, "NotSubmitter")
    assert anchor.functions.batchForSeq(10).call()[0] == 1
    # a record proven against each contract where it lives
    rec_hash, proof = old.proof(7)
    assert anchor.functions.verifyRecord(rec_hash, 7, proof).call()
    assert not new.functions.verifyRecord(rec_hash, 7, proof).call()
    rec_hash, proof = tail.proof(16)
    assert new.functions.verifyRecord(rec_hash, 16, proof).call()


# --- verifyInclusion: on chain == Python ------------------------------------------------------------


SIZES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 17]


def _forged(leaves: list[bytes], i: int) -> list[tuple[str, bytes, int, int, list[bytes], bytes]]:
    n = len(leaves)
    lh = merkle.leaf_hash(leaves[i])
    root = merkle.root(leaves)
    proof = merkle.inclusion_proof(leaves, i)
    flip = lambda b: bytes([b[0] ^ 1]) + b[1:]  # noqa: E731
    out = [
        ("index = size", lh, n, n, proof, root),
        ("index beyond size", lh, n + 7, n, proof, root),
        ("huge index", lh, 2**256 - 1, n, proof, root),
        ("size - 1", lh, i, n - 1, proof, root),
        ("size + 1", lh, i, n + 1, proof, root),
        ("size + 1 with its root", lh, i, n + 1, proof, merkle.root(leaves + [b"extra"])),
        ("huge size", lh, i, 2**256 - 1, proof, root),
        ("extended", lh, i, n, proof + [root], root),
        ("flipped leaf", flip(lh), i, n, proof, root),
        ("flipped root", lh, i, n, proof, flip(root)),
    ]
    if n > 1:
        j = (i + 1) % n
        out.append(("wrong index", lh, j, n, proof, root))
        out.append(("proof of another leaf", lh, i, n, merkle.inclusion_proof(leaves, j), root))
    if proof:
        # a path longer than the claimed tree (RFC 9162 step 4a): for the last leaf of a full tree
        # every sibling is on the left, so ignoring 4a would accept "the only leaf of a 1-leaf tree"
        out.append(("claimed as the only leaf", lh, 0, 1, proof, root))
        out.append(("claimed in a smaller tree", lh, i >> 1, max(n >> 1, 1), proof, root))
        out.append(("truncated", lh, i, n, proof[:-1], root))
        out.append(("sibling bit flipped", lh, i, n, [flip(proof[0])] + proof[1:], root))
    if len(proof) >= 2:
        out.append(("swapped siblings", lh, i, n, [proof[1], proof[0]] + proof[2:], root))
    return out


def call_many(w3: Any, calls: Sequence[Any], chunk: int = 250) -> list[Any]:
    """eth_call each contract function call, in JSON-RPC batches (about 3x faster than one by one)."""
    out: list[Any] = []
    for k in range(0, len(calls), chunk):
        with w3.batch_requests() as batch:
            for c in calls[k : k + chunk]:
                batch.add(c)
            out.extend(batch.execute())
    return out


def test_verify_inclusion_agrees_with_python(w3: Any, anchor: Any) -> None:
    fn = anchor.functions.verifyInclusion
    cases: list[tuple[tuple[int, int, str], tuple[Any, ...], bool]] = []
    for n in SIZES:
        leaves = [b32(f"leaf-{n}-{i}") for i in range(n)]
        root = merkle.root(leaves)
        for i in range(n):
            lh = merkle.leaf_hash(leaves[i])
            proof = merkle.inclusion_proof(leaves, i)
            assert merkle.verify_inclusion(lh, i, n, proof, root)
            cases.append(((n, i, "valid"), (lh, i, n, proof, root), True))
            for label, flh, m, size, fproof, froot in _forged(leaves, i):
                py = merkle.verify_inclusion(flh, m, size, fproof, froot)
                if label not in ("size + 1", "size - 1"):
                    # (a wrong size checked against this root is accepted exactly when the path
                    # shape is unchanged: see test_merkle; the chain must agree either way)
                    assert py is False, (n, i, label)
                cases.append(((n, i, label), (flh, m, size, fproof, froot), py))
    results = call_many(w3, [fn(*args) for _, args, _ in cases])
    mismatches = [(where, got, want) for (where, _, want), got in zip(cases, results, strict=False) if got is not want]
    assert not mismatches, mismatches[:10]
    assert len(cases) > 1000


def test_verify_inclusion_never_reverts_on_garbage(anchor: Any) -> None:
    fn = anchor.functions.verifyInclusion
    h = b32("x")
    assert fn(h, 0, 0, [], merkle.EMPTY_ROOT).call() is False  # empty tree
    assert fn(merkle.leaf_hash(b"a"), 0, 1, [], merkle.root([b"a"])).call() is True
    assert fn(merkle.leaf_hash(b"a"), 0, 1, [h], merkle.root([b"a"])).call() is False
    # leaf 1 of a 2-leaf tree is not "leaf 0 of a 1-leaf tree" with the same proof (step 4a)
    two = [b"a", b"b"]
    assert fn(merkle.leaf_hash(b"b"), 1, 2, [merkle.leaf_hash(b"a")], merkle.root(two)).call() is True
    assert fn(merkle.leaf_hash(b"b"), 0, 1, [merkle.leaf_hash(b"a")], merkle.root(two)).call() is False
    assert fn(h, 5, 3, [h, h], h).call() is False
    assert fn(h, 0, 2**256 - 1, [h] * 3, h).call() is False
    assert fn(h, 2**256 - 2, 2**256 - 1, [h] * 300, h).call() is False


def test_verify_record_end_to_end(w3: Any, accounts: dict[str, Any], anchor: Any) -> None:
    b = Batches([7, 1, 12, 10, 2])
    anchor_all(w3, anchor, accounts["submitter"], b)
    fn = anchor.functions.verifyRecord
    for r in b.records:
        rec_hash, proof = b.proof(r.seq)
        assert rec_hash == bytes.fromhex(r.hash)
        assert fn(rec_hash, r.seq, proof).call() is True, r.seq
        assert fn(b32("not-a-record"), r.seq, proof).call() is False
        assert fn(rec_hash, r.seq + 1, proof).call() is False
    rec_hash, proof = b.proof(15)
    GAS.setdefault("verifyRecord() (5 batches, eth_estimateGas)", []).append(fn(rec_hash, 15, proof).estimate_gas())
    # not anchored (yet): false, never a revert
    assert fn(rec_hash, 0, proof).call() is False
    assert fn(rec_hash, 33, proof).call() is False
    # a record of a fork at an anchored seq is refused
    fork = Batches([7, 1, 12, 10, 2], fork="evil")
    rec_hash, proof = fork.proof(15)
    assert fn(rec_hash, 15, proof).call() is False


def test_verify_record_on_an_empty_contract_is_false(anchor: Any) -> None:
    """verifyRecord on an empty contract: false for every seq (no revert), so callers need no try/catch."""
    assert anchor.functions.verifyRecord(b32("r"), 1, []).call() is False
    assert anchor.functions.verifyRecord(b32("r"), 0, []).call() is False


def test_anchor_gas_is_measured(w3: Any, accounts: dict[str, Any], anchor: Any) -> None:
    b = Batches([1, 1000, 50])
    receipts = anchor_all(w3, anchor, accounts["submitter"], b)
    gas = [int(r["gasUsed"]) for r in receipts]
    print(f"\nanchor() gasUsed for batches of 1, 1000, 50 records: {gas}")
    assert all(80_000 < g < 110_000 for g in gas), gas


# --- the Anvil helper itself ------------------------------------------------------------------------


def test_anvil_helper_parses_banner_and_stops_by_pid(anvil_module: Anvil) -> None:  # noqa: F811
    from tests.support_anvil import WELL_KNOWN_KEYS

    assert anvil_module.private_keys == list(WELL_KNOWN_KEYS)
    assert anvil_module.rpc_url.startswith("http://127.0.0.1:")
    node = Anvil("--block-time", "1").start()
    try:
        pid = node.pid
        assert node.port != anvil_module.port
        assert int(node.rpc("eth_chainId"), 16) == 84532
    finally:
        code = node.stop()
    assert code is not None and node.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
