"""Proof bundle v1 (`ledger.audit.proofs`): build, encode, and the offline checks, including forged
bundles (the immudb CVE class: a verifier must refuse every proof that is not exactly right)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.audit import merkle, proofs
from ledger.chain import ChainRecord, recompute_hash
from tests.contract.chains import make_chain

EVM = {
    "chain_id": 84532,
    "contract": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
    "tx_hash": "0x" + "ab" * 32,
    "block_number": 7,
    "block_hash": "0x" + "cd" * 32,
    "batch_index": 2,
}


def batch_bundle(records: list[ChainRecord], seq: int, *, evm: dict[str, Any] | None = EVM) -> dict[str, Any]:
    """The bundle of `seq` for the batch made of `records` (consecutive seqs)."""
    first, last = records[0].seq, records[-1].seq
    leaves = merkle.leaves_from_record_hashes([r.hash for r in records])
    batch = proofs.AnchoredBatch(merkle.root(leaves), first, last, bytes.fromhex(records[-1].hash))
    return proofs.build_bundle({r.seq: r for r in records}, seq, batch, evm=evm)


def rehash(record: dict[str, Any]) -> dict[str, Any]:
    env = {k: v for k, v in record.items() if k != "hash"}
    return {**env, "hash": recompute_hash(env)}


CHAIN = make_chain(40)
BATCHES = [CHAIN[0:1], CHAIN[1:8], CHAIN[8:16], CHAIN[16:29], CHAIN[29:40]]  # sizes 1, 7, 8, 13, 11


# --- valid bundles ----------------------------------------------------------------------------------


@pytest.mark.parametrize("b", range(len(BATCHES)))
def test_every_record_of_every_batch_verifies(b: int) -> None:
    recs = BATCHES[b]
    for r in recs:
        bundle = batch_bundle(recs, r.seq)
        assert proofs.verify_bundle_offline(bundle) == []
        assert bundle["proof"]["leaf_index"] == r.seq - recs[0].seq
        assert bundle["proof"]["tree_size"] == len(recs)
        assert bundle["record"] == r.export_object()
        # the JSON round trip is lossless
        again = proofs.decode_bundle(proofs.encode_bundle(bundle))
        assert again == bundle
        assert proofs.verify_bundle_offline(again) == []


def test_bundle_shape_and_key_order() -> None:
    bundle = batch_bundle(BATCHES[1], 5)
    text = proofs.encode_bundle(bundle)
    obj = json.loads(text)
    assert list(obj) == ["format", "v", "record", "batch", "proof", "anchors"]
    assert obj["format"] == "agentkeys-proof" and obj["v"] == 1
    assert list(obj["record"]) == sorted(obj["record"])  # as in the export
    assert set(obj["batch"]) == {"root", "first_seq", "last_seq", "chain_head"}
    assert set(obj["proof"]) == {"leaf_index", "tree_size", "path"}
    assert obj["anchors"]["evm"] == EVM
    assert all(len(p) == 64 and p == p.lower() for p in obj["proof"]["path"])
    assert text.endswith(b"\n")


def test_sqlite_only_bundle() -> None:
    r = CHAIN[3]
    bundle = proofs.build_bundle({r.seq: r}, r.seq, sqlite={"seq": r.seq, "hash": r.hash})
    assert "batch" not in bundle and "proof" not in bundle
    assert proofs.verify_bundle_offline(bundle, require_proof=False) == []
    assert any("no batch and proof" in p for p in proofs.verify_bundle_offline(bundle))
    bad = copy.deepcopy(bundle)
    bad["anchors"]["sqlite"]["hash"] = CHAIN[4].hash
    assert any("anchors.sqlite.hash" in p for p in proofs.verify_bundle_offline(bad, require_proof=False))


# --- tampering --------------------------------------------------------------------------------------


def _problems(bundle: dict[str, Any]) -> list[str]:
    problems = proofs.verify_bundle_offline(bundle)
    assert problems, "a tampered bundle verified"
    return problems


def _any(problems: list[str], text: str) -> bool:
    return any(text in p for p in problems)


@pytest.fixture
def good() -> dict[str, Any]:
    return batch_bundle(BATCHES[3], 21)  # a middle record of a 13-leaf batch


def test_record_data_changed(good: dict[str, Any]) -> None:
    good["record"]["data"]["i"] = 999
    assert _any(_problems(good), "record.hash does not match")


def test_record_data_changed_and_rehashed(good: dict[str, Any]) -> None:
    good["record"]["data"]["i"] = 999
    good["record"] = rehash(good["record"])
    assert _any(_problems(good), "inclusion proof does not lead")


def test_path_element_flipped(good: dict[str, Any]) -> None:
    for k in range(len(good["proof"]["path"])):
        bad = copy.deepcopy(good)
        p = bad["proof"]["path"][k]
        bad["proof"]["path"][k] = p[:-1] + ("0" if p[-1] != "0" else "1")
        assert _any(_problems(bad), "inclusion proof does not lead")


def test_path_shortened_or_extended(good: dict[str, Any]) -> None:
    bad = copy.deepcopy(good)
    bad["proof"]["path"].pop()
    _problems(bad)
    bad = copy.deepcopy(good)
    bad["proof"]["path"].append(bad["proof"]["path"][0])
    _problems(bad)
    bad = copy.deepcopy(good)
    bad["proof"]["path"] = ["00" * 32] * 65
    assert _any(_problems(bad), "more than any tree allows")


def test_index_changed(good: dict[str, Any]) -> None:
    for delta in (-1, 1):
        bad = copy.deepcopy(good)
        bad["proof"]["leaf_index"] += delta
        assert _any(_problems(bad), "proof.leaf_index is")


def test_index_changed_consistently_with_the_record_seq(good: dict[str, Any]) -> None:
    """Claiming the record sits at another seq (seq, index both moved) breaks its own hash and,
    once rehashed, the inclusion proof."""
    bad = copy.deepcopy(good)
    bad["record"]["seq"] += 1
    bad["proof"]["leaf_index"] += 1
    assert _any(_problems(bad), "record.hash does not match")
    bad["record"] = rehash(bad["record"])
    assert _any(_problems(bad), "inclusion proof does not lead")


def test_tree_size_changed(good: dict[str, Any]) -> None:
    bad = copy.deepcopy(good)
    bad["proof"]["tree_size"] += 1
    assert _any(_problems(bad), "proof.tree_size is")
    bad = copy.deepcopy(good)
    bad["batch"]["last_seq"] += 1  # a bigger tree: the path no longer fits
    assert _any(_problems(bad), "proof.tree_size is")


def test_batch_root_swapped(good: dict[str, Any]) -> None:
    other = batch_bundle(BATCHES[2], 10)
    good["batch"]["root"] = other["batch"]["root"]
    assert _any(_problems(good), "inclusion proof does not lead")


def test_chain_head_checked_for_the_last_record() -> None:
    bundle = batch_bundle(BATCHES[3], BATCHES[3][-1].seq)
    assert proofs.verify_bundle_offline(bundle) == []
    bundle["batch"]["chain_head"] = CHAIN[0].hash
    assert _any(_problems(bundle), "chain_head")
    # for a record that is not the last, chain_head is only shape-checked offline
    mid = batch_bundle(BATCHES[3], 20)
    mid["batch"]["chain_head"] = CHAIN[0].hash
    assert proofs.verify_bundle_offline(mid) == []


def test_seq_outside_batch(good: dict[str, Any]) -> None:
    good["batch"]["first_seq"] = good["record"]["seq"] + 1
    good["batch"]["last_seq"] = good["record"]["seq"] + 5
    assert _any(_problems(good), "outside the batch")


def test_a_whole_forged_batch_passes_offline_only() -> None:
    """A forger can always build a self-consistent bundle over a fake tree: offline checks cannot
    catch it. (The on-chain check does: tests/integration/test_chain_audit.py.)"""
    forged = make_chain(len(BATCHES[1]), fork="forged", start=BATCHES[1][0].seq, prev=CHAIN[0].hash)
    assert all(f.hash != r.hash for f, r in zip(forged, BATCHES[1], strict=False))
    assert proofs.verify_bundle_offline(batch_bundle(forged, forged[2].seq)) == []


@pytest.mark.parametrize(
    "mutate,expect",
    [
        (lambda b: b.update(format="other"), "format is"),
        (lambda b: b.update(v=2), "v is 2"),
        (lambda b: b.update(v=True), "v is True"),
        (lambda b: b.update(extra=1), "unexpected bundle fields"),
        (lambda b: b["record"].update(extra=1), "record has unexpected fields"),
        (lambda b: b["record"].pop("prev"), "record is missing prev"),
        (lambda b: b["record"].update(hash=b["record"]["hash"].upper()), "record.hash is not 64 lowercase"),
        (lambda b: b["record"].update(seq=True), "record.seq is not a positive integer"),
        (lambda b: b["record"].update(v=2), "record.v is 2"),
        (lambda b: b["batch"].update(root="0x" + b["batch"]["root"][2:]), "batch.root is not"),
        (lambda b: b["batch"].update(first_seq=0), "batch.first_seq"),
        (lambda b: b["batch"].update(last_seq=1), "batch.last_seq"),
        (lambda b: b["batch"].update(more=1), "batch has unexpected"),
        (lambda b: b["proof"].update(leaf_index="3"), "proof.leaf_index is not an integer"),
        (lambda b: b["proof"].update(path="ab"), "proof.path is not a list"),
        (lambda b: b["proof"]["path"].__setitem__(0, 5), "proof.path[0]"),
        (lambda b: b.pop("proof"), "batch without proof"),
        (lambda b: b.pop("batch"), "batch and proof must both"),
        (lambda b: b.update(batch=None, proof=None), "no batch and proof"),
        (lambda b: b["anchors"]["evm"].update(chain_id="84532"), "anchors.evm.chain_id"),
        (lambda b: b["anchors"]["evm"].update(contract="0x12"), "anchors.evm.contract"),
        (lambda b: b["anchors"]["evm"].update(tx_hash="ab" * 32), "anchors.evm.tx_hash"),
        (lambda b: b["anchors"]["evm"].pop("block_hash"), "anchors.evm is missing block_hash"),
        (lambda b: b["anchors"].update(evm=[]), "anchors.evm is not an object"),
    ],
)
def test_malformed_bundles(good: dict[str, Any], mutate: Any, expect: str) -> None:
    mutate(good)
    problems = _problems(good)
    assert _any(problems, expect), problems


def test_not_a_bundle() -> None:
    assert proofs.verify_bundle_offline([]) == ["the bundle is not a JSON object"]
    with pytest.raises(proofs.ProofError):
        proofs.decode_bundle(b"{not json")
    with pytest.raises(proofs.ProofError):
        proofs.decode_bundle(b"[1]")


def test_build_refuses_records_that_do_not_recompute_the_anchored_batch() -> None:
    """The one builder computes the path itself, from records that must recompute what the anchor
    committed to: a rewritten record, a swapped root or head, a missing seq all refuse."""
    recs = BATCHES[2]
    by_seq: dict[int, Any] = {r.seq: r for r in recs}
    leaves = merkle.leaves_from_record_hashes([r.hash for r in recs])
    root, head = merkle.root(leaves), bytes.fromhex(recs[-1].hash)
    first, last = recs[0].seq, recs[-1].seq
    good = proofs.build_bundle(by_seq, first, proofs.AnchoredBatch(root, first, last, head))
    assert proofs.verify_bundle_offline(good) == []
    with pytest.raises(proofs.LedgerMismatch, match="Merkle root"):
        proofs.build_bundle(by_seq, first, proofs.AnchoredBatch(bytes(32), first, last, head))
    with pytest.raises(proofs.LedgerMismatch, match="chain head"):
        proofs.build_bundle(by_seq, first, proofs.AnchoredBatch(root, first, last, bytes(32)))
    with pytest.raises(proofs.LedgerMismatch, match="lacks seq"):
        proofs.build_bundle(
            {s: r for s, r in by_seq.items() if s != first + 1}, first, proofs.AnchoredBatch(root, first, last, head)
        )
    rewritten = {**by_seq, first: {**recs[0].export_object(), "data": {"changed": 1}}}
    with pytest.raises(proofs.LedgerMismatch, match="does not match its own hash"):
        proofs.build_bundle(rewritten, first, proofs.AnchoredBatch(root, first, last, head))
    damaged = {**by_seq, first + 2: None}
    with pytest.raises(proofs.LedgerMismatch, match="damaged"):
        proofs.build_bundle(damaged, first, proofs.AnchoredBatch(root, first, last, head))


def test_ledger_proofs_imports_stay_inside_ledger() -> None:
    import ast
    from pathlib import Path

    for name in ("proofs.py", "merkle.py", "errors.py"):
        tree = ast.parse((Path(proofs.__file__).parent / name).read_text())
        mods = {
            (n.module or "").split(".")[0] if isinstance(n, ast.ImportFrom) and n.level == 0 else "."
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom)
        } | {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        allowed = {
            ".",
            "__future__",
            "collections",
            "copy",
            "dataclasses",
            "hashlib",
            "hmac",
            "re",
            "typing",
            "msgspec",
            "ledger",
        }
        assert mods <= allowed, (name, mods)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_single_hex_digit_change_is_caught(data: st.DataObject) -> None:
    """Change one hex digit of the record hash, the root, or any path element: always invalid."""
    b = data.draw(st.sampled_from(BATCHES[1:]))
    r = data.draw(st.sampled_from(b))
    bundle = batch_bundle(b, r.seq)
    fields = [("record", "hash"), ("batch", "root")] + [("path", i) for i in range(len(bundle["proof"]["path"]))]
    where = data.draw(st.sampled_from(fields))
    pos = data.draw(st.integers(min_value=0, max_value=63))
    if where[0] == "path":
        s = bundle["proof"]["path"][where[1]]
    else:
        s = bundle[where[0]][where[1]]
    new = data.draw(st.sampled_from([c for c in "0123456789abcdef" if c != s[pos]]))
    s2 = s[:pos] + new + s[pos + 1 :]
    if where[0] == "path":
        bundle["proof"]["path"][where[1]] = s2
    else:
        bundle[where[0]][where[1]] = s2
    assert proofs.verify_bundle_offline(bundle)


def test_the_auditor_guides_stdlib_snippet_agrees() -> None:
    """docs/auditor-guide.md section 9 shows a standard-library-only verifier: run it."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "docs" / "auditor-guide.md").read_text()
    m = re.search(r"<!-- snippet: verify-bundle[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert m, "the snippet is missing from docs/auditor-guide.md"
    ns: dict[str, Any] = {}
    exec(compile(m.group(1), "auditor-guide snippet", "exec"), ns)  # noqa: S102  runs the documented snippet from our own guide
    verify = ns["verify_bundle"]
    for b in BATCHES:
        for r in b:
            bundle = json.loads(proofs.encode_bundle(batch_bundle(b, r.seq)))
            assert verify(bundle) is True
            bad = copy.deepcopy(bundle)
            bad["record"]["data"]["i"] += 1
            assert verify(bad) is False
            if bundle["proof"]["path"]:
                bad = copy.deepcopy(bundle)
                bad["proof"]["path"][0] = "00" * 32
                assert verify(bad) is False
            bad = copy.deepcopy(bundle)
            bad["batch"]["chain_head"] = "11" * 32
            assert verify(bad) is (r.seq != b[-1].seq)
