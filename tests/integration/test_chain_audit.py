"""The auditor against the EVM anchor, on a real anvil node (chain id 84532), end to end.

A real `ledger.app.Ledger` writes records to SQLite; the test anchors batches itself by calling
`AuditAnchor.anchor` (deployed with `chain_tools.deploy`) with RFC 6962 roots of the record hashes,
as the broker's EVM anchor would; the installed console script is run as a subprocess:

- `audit prove` / `audit verify-proof` for the first, middle and last record of several batches,
  tampered bundles (record data, path element, index, root, a whole forged batch, the anchoring
  transaction), a ledger that no longer matches the chain, a seq not anchored yet;
- `audit verify --rpc --contract`: a valid export, history rewritten and re-exported consistently
  (`anchor_mismatch` per batch from the rewrite on), a truncated export (`truncated`), two
  contracts (a migration) and a broken migration;
- `audit verify --checkpoint`: created, advanced, `diverged`, `truncated`, with and without RPC.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from anchors import chain_tools
from anchors.chain_reader import ChainReader
from anchors.proof_builder import verify_bundle_on_chain
from ledger import audit
from ledger.app import Ledger
from ledger.audit import merkle, proofs
from ledger.chain import GENESIS, recompute_hash
from ledger.config import LedgerConfig
from ledger.events import WalletBound
from tests.conftest import cli_path
from tests.support_anvil import Anvil, anvil_module  # noqa: F401  (fixture)
from workers.cli import main as cli_main

pytestmark = pytest.mark.timeout(600)

N = 30
BATCHES = [(1, 1), (2, 8), (9, 16), (17, 29)]  # seq 30 stays unanchored (the broker has not got to it yet)
T0 = datetime(2026, 11, 29, 5, 0, 0, tzinfo=UTC)
STREAMS = [uuid.UUID(int=0xC4A1_0000 + i) for i in range(4)]
_ENC = msgspec.json.Encoder(order="sorted")


# --- the ledger -------------------------------------------------------------------------------------


def grow_ledger(path: Path, start: int, n: int) -> None:
    """Append records `start`..`start+n-1` (0-based i; seq = i + 1) over four streams."""
    ticks = iter(range(start, 1_000_000))
    led = Ledger(LedgerConfig(path), clock=lambda: T0 + timedelta(milliseconds=next(ticks)))
    try:
        for i in range(start, start + n):
            led.append(STREAMS[i % 4], i // 4, [WalletBound(omni_account=f"omni-{i % 4}", address=f"0x{i:040x}", role="master")])
    finally:
        led.close()


def read_export(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    lines = path.read_bytes().splitlines()
    return json.loads(lines[0]), [json.loads(x) for x in lines[1:]]


def write_export(path: Path, records: list[dict[str, Any]], head: dict[str, Any] | None = None) -> Path:
    if head is None:
        head = {"seq": records[-1]["seq"], "hash": records[-1]["hash"]} if records else {"seq": 0, "hash": GENESIS}
    hdr = {"format": "agentkeys-ledger", "v": 1, "records": len(records), "head": head}
    path.write_bytes(b"\n".join([json.dumps(hdr).encode(), *(_ENC.encode(r) for r in records)]) + b"\n")
    return path


def rehash(obj: dict[str, Any]) -> dict[str, Any]:
    env = {k: v for k, v in obj.items() if k != "hash"}
    return {**env, "hash": recompute_hash(env)}


def rewrite_history(records: list[dict[str, Any]], seq: int) -> list[dict[str, Any]]:
    """An operator's consistent forgery: change record `seq`, recompute it and every later record's
    prev and hash. The export verifies on its own."""
    out = copy.deepcopy(records)
    i = seq - 1
    out[i]["data"]["address"] = "0x" + "e" * 40
    for j in range(i, len(out)):
        out[j]["prev"] = out[j - 1]["hash"] if j else GENESIS
        out[j] = rehash(out[j])
    return out


# --- the chain --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def w3(anvil_module: Anvil) -> Any:  # noqa: F811
    return anvil_module.web3()


@pytest.fixture
def isolated(anvil_module: Anvil) -> Iterator[Anvil]:  # noqa: F811
    snap = anvil_module.snapshot()
    yield anvil_module
    anvil_module.revert(snap)


def deploy(w3: Any, node: Anvil, start_seq: int = 1) -> Any:
    owner, submitter = node.accounts[0], node.accounts[1]
    return chain_tools.deploy(w3, owner, submitter.address, start_seq).contract


def anchor_batches(
    w3: Any, node: Anvil, contract: Any, records: list[dict[str, Any]], bounds: list[tuple[int, int]]
) -> list[Any]:
    """Anchor each (first, last) batch of `records` as the broker would; returns the receipts."""
    by_seq = {r["seq"]: r for r in records}
    receipts = []
    for lo, hi in bounds:
        hashes = [by_seq[s]["hash"] for s in range(lo, hi + 1)]
        root = merkle.root(merkle.leaves_from_record_hashes(hashes))
        call = contract.functions.anchor(root, lo, hi, bytes.fromhex(hashes[-1]))
        receipt = chain_tools.send_transaction(w3, node.accounts[1], call)
        assert receipt["status"] == 1
        receipts.append(receipt)
    return receipts


@dataclass
class Env:
    dir: Path
    db: Path
    export: Path
    records: list[dict[str, Any]]
    rpc: str
    contract: str
    receipts: list[Any]

    def path(self, name: str) -> Path:
        return self.dir / name


@pytest.fixture
def env(tmp_path: Path, w3: Any, isolated: Anvil) -> Env:
    db = tmp_path / "ledger.sqlite"
    grow_ledger(db, 0, N)
    export = tmp_path / "export.jsonl"
    audit.export_ledger(db, export)
    _, records = read_export(export)
    assert len(records) == N
    contract = deploy(w3, isolated)
    receipts = anchor_batches(w3, isolated, contract, records, BATCHES)
    return Env(tmp_path, db, export, records, isolated.rpc_url, contract.address, receipts)


# --- the command line -------------------------------------------------------------------------------


def sub(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a real subprocess."""
    return subprocess.run([cli_path(), *map(str, args)], capture_output=True, text=True, timeout=120)


def inproc(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The console script's own entry point (`workers.cli.main`), in this process: the same parser
    and handlers without paying web3's ~1 s import per run. Used for the larger matrices; every
    behaviour is also exercised through `sub` at least once."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli_main([str(a) for a in args])
        except SystemExit as exc:  # argparse usage errors
            rc = int(exc.code or 0)
    return subprocess.CompletedProcess(list(map(str, args)), rc, out.getvalue(), err.getvalue())



def verify_json(*args: str | Path, run: Any = None) -> tuple[int, dict[str, Any]]:
    proc = (run or inproc)("audit", "verify", *args, "--json")
    assert proc.returncode in (0, 1), proc.stderr
    assert proc.stderr == ""
    return proc.returncode, json.loads(proc.stdout)


def kinds(report: dict[str, Any]) -> list[tuple[int, str]]:
    return [(f["seq"], f["kind"]) for f in report["findings"]]


def prove(
    e: Env, seq: int, *extra: str | Path, source: tuple[str, Path] | None = None, run: Any = None
) -> subprocess.CompletedProcess[str]:
    src = source or ("--db", e.db)
    return (run or inproc)("audit", "prove", "--seq", str(seq), *src, "--rpc", e.rpc, "--contract", e.contract, *extra)


def verify_proof(e: Env, bundle: Path, *extra: str, run: Any = None) -> tuple[int, dict[str, Any]]:
    contracts = extra or ("--contract", e.contract)
    proc = (run or inproc)("audit", "verify-proof", bundle, "--rpc", e.rpc, *contracts, "--json")
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def bundle_of(e: Env, seq: int) -> dict[str, Any]:
    out = e.path(f"proof-{seq}.json")
    proc = prove(e, seq, "--out", out)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text())


# --- prove / verify-proof ---------------------------------------------------------------------------


def test_prove_and_verify_first_middle_last_of_every_batch(env: Env, w3: Any) -> None:
    reader = ChainReader(w3, [env.contract])
    for b, (lo, hi) in enumerate(BATCHES):
        for seq in sorted({lo, (lo + hi) // 2, hi}):
            out = env.path(f"proof-{seq}.json")
            proc = prove(env, seq, "--out", out)
            assert proc.returncode == 0, proc.stderr
            assert f"proof of seq {seq}" in proc.stderr and str(out) in proc.stderr
            bundle = json.loads(out.read_text())
            assert bundle["record"] == env.records[seq - 1]
            assert bundle["batch"]["first_seq"] == lo and bundle["batch"]["last_seq"] == hi
            assert bundle["batch"]["chain_head"] == env.records[hi - 1]["hash"]
            assert bundle["proof"]["leaf_index"] == seq - lo and bundle["proof"]["tree_size"] == hi - lo + 1
            evm = bundle["anchors"]["evm"]
            receipt = env.receipts[b]
            assert evm["chain_id"] == 84532 and evm["contract"] == env.contract and evm["batch_index"] == b
            assert evm["tx_hash"] == "0x" + bytes(receipt["transactionHash"]).hex()
            assert evm["block_number"] == receipt["blockNumber"]
            assert evm["block_hash"] == "0x" + bytes(receipt["blockHash"]).hex()
            # offline, and on chain, in-process
            assert proofs.verify_bundle_offline(bundle) == []
            assert verify_bundle_on_chain(reader, bundle)[0] == []
            # and through the command line
            rc, rep = verify_proof(env, out)
            assert (rc, rep["valid"], rep["problems"]) == (0, True, []), rep
            assert rep["batch"]["index"] == b and rep["batch"]["root"] == bundle["batch"]["root"]
    # the installed console script, as a subprocess: prove, verify-proof (JSON and text)
    out = env.path("proof-sub-9.json")
    proc = prove(env, 9, "--out", out, run=sub)
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    assert json.loads(out.read_text()) == json.loads(env.path("proof-9.json").read_text())
    rc, rep = verify_proof(env, out, run=sub)
    assert (rc, rep["valid"]) == (0, True), rep
    text = sub("audit", "verify-proof", out, "--rpc", env.rpc, "--contract", env.contract)
    assert text.returncode == 0 and text.stdout.startswith("VALID: record seq 9 "), text.stdout


def test_prove_to_stdout_and_from_an_export_gives_the_same_bundle(env: Env) -> None:
    a = prove(env, 12)
    b = prove(env, 12, source=("--export", env.export))
    assert a.returncode == b.returncode == 0, (a.stderr, b.stderr)
    assert json.loads(a.stdout) == json.loads(b.stdout)
    assert list(json.loads(a.stdout)) == ["format", "v", "record", "batch", "proof", "anchors"]


def _tamper(e: Env, bundle: dict[str, Any], name: str) -> Path:
    p = e.path(f"tampered-{name}.json")
    p.write_text(json.dumps(bundle))
    return p


def test_tampered_bundles_are_invalid(env: Env, w3: Any) -> None:
    good = bundle_of(env, 12)  # a middle record of batch 9..16 (8 leaves, path of 3)
    other = bundle_of(env, 20)  # batch 17..29
    reader = ChainReader(w3, [env.contract])
    cases: dict[str, tuple[dict[str, Any], str]] = {}

    b = copy.deepcopy(good)
    b["record"]["data"]["address"] = "0x" + "f" * 40
    cases["data"] = (b, "record.hash does not match")

    b = copy.deepcopy(good)
    b["record"]["data"]["address"] = "0x" + "f" * 40
    b["record"] = rehash(b["record"])
    cases["data-rehashed"] = (b, "verifyRecord(recordHash, 12, path) returned false")

    b = copy.deepcopy(good)
    p = b["proof"]["path"][1]
    b["proof"]["path"][1] = ("0" if p[0] != "0" else "1") + p[1:]
    cases["path"] = (b, "verifyRecord(recordHash, 12, path) returned false")

    b = copy.deepcopy(good)
    b["proof"]["leaf_index"] += 1
    cases["index"] = (b, "verifyInclusion(leaf, 4, 8, path, anchored root) returned false")

    b = copy.deepcopy(good)
    b["batch"]["root"] = other["batch"]["root"]
    cases["root"] = (b, "differs from the root anchored on chain")

    b = copy.deepcopy(good)
    b["anchors"]["evm"]["tx_hash"] = other["anchors"]["evm"]["tx_hash"]
    cases["tx"] = (b, "is in block")

    b = copy.deepcopy(good)
    b["anchors"]["evm"]["block_hash"] = "0x" + "11" * 32
    cases["block"] = (b, "the anchoring block was reorged")

    # a whole forged batch: offline-valid, refused on chain
    forged_records = rewrite_history(env.records, 10)[8:16]
    hashes = [r["hash"] for r in forged_records]
    leaves = merkle.leaves_from_record_hashes(hashes)
    forged_batch = proofs.AnchoredBatch(merkle.root(leaves), 9, 16, bytes.fromhex(hashes[-1]))
    forged = proofs.build_bundle({r["seq"]: r for r in forged_records}, 12, forged_batch, evm=good["anchors"]["evm"])
    assert proofs.verify_bundle_offline(forged) == []
    cases["forged-batch"] = (forged, "differs from the root anchored on chain")

    for name, (bundle, expect) in cases.items():
        in_process = proofs.verify_bundle_offline(bundle) + verify_bundle_on_chain(reader, bundle)[0]
        assert in_process, name
        rc, rep = verify_proof(env, _tamper(env, bundle, name))
        assert rc == 1 and rep["valid"] is False, (name, rep)
        assert any(expect in p for p in rep["problems"]), (name, rep["problems"])
    text = sub("audit", "verify-proof", env.path("tampered-index.json"), "--rpc", env.rpc, "--contract", env.contract)
    assert text.returncode == 1
    assert text.stdout.splitlines()[-1] == f"INVALID: {len(text.stdout.splitlines()) - 1} problem(s) in the proof of seq 12"
    assert all(line.startswith("problem: ") for line in text.stdout.splitlines()[:-1])


def test_verify_proof_against_another_contract(env: Env, w3: Any, isolated: Anvil) -> None:
    """The auditor names the contract; a bundle about another one (or a seq it does not hold) fails."""
    bundle = env.path("p.json")
    assert prove(env, 5, "--out", bundle).returncode == 0
    decoy = deploy(w3, isolated)
    rc, rep = verify_proof(env, bundle, "--contract", decoy.address)
    assert rc == 1 and any("is not anchored on" in p for p in rep["problems"]), rep
    # a decoy that anchored a forged batch for the same seqs
    forged = rewrite_history(env.records, 1)
    anchor_batches(w3, isolated, decoy, forged, [(1, 1), (2, 8)])
    rc, rep = verify_proof(env, bundle, "--contract", decoy.address)
    assert rc == 1 and any("differs from the root anchored on chain" in p for p in rep["problems"]), rep
    assert any("anchors.evm.contract" in p for p in rep["problems"])


def test_verify_proof_usage_and_offline(env: Env) -> None:
    bundle = env.path("p.json")
    assert prove(env, 3, "--out", bundle).returncode == 0
    off = inproc("audit", "verify-proof", bundle, "--offline")
    assert off.returncode == 0 and off.stdout.startswith("VALID OFFLINE"), off
    assert inproc("audit", "verify-proof", bundle).returncode == 2  # neither --rpc nor --offline
    assert inproc("audit", "verify-proof", bundle, "--rpc", env.rpc).returncode == 2  # no --contract
    missing = sub("audit", "verify-proof", env.path("nope.json"), "--offline")
    assert missing.returncode == 2 and missing.stderr.startswith("agentkeys-broker: error: cannot read bundle"), missing.stderr
    env.path("junk.json").write_text("{not json")
    assert inproc("audit", "verify-proof", env.path("junk.json"), "--offline").returncode == 2
    env.path("wrong.json").write_text('{"format": "x"}')
    assert inproc("audit", "verify-proof", env.path("wrong.json"), "--offline").returncode == 1
    unreachable = sub("audit", "verify-proof", bundle, "--rpc", "http://127.0.0.1:9", "--contract", env.contract)
    assert unreachable.returncode == 2 and "cannot read the chain id" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr


def test_prove_refuses_a_ledger_that_no_longer_matches_the_chain(env: Env) -> None:
    rewritten = write_export(env.path("rewritten.jsonl"), rewrite_history(env.records, 11))
    proc = prove(env, 14, source=("--export", rewritten), run=sub)
    assert proc.returncode == 1, proc
    assert "the ledger no longer matches the chain" in proc.stderr and proc.stdout == ""
    # content changed in the SQLite ledger itself (hashes untouched): the record no longer matches its hash
    with sqlite3.connect(env.db) as conn:
        stream, version = conn.execute("SELECT stream, version FROM ledger_records WHERE seq = 5").fetchone()
        state = json.loads(
            conn.execute(
                "SELECT state FROM stored_events WHERE originator_id = ? AND originator_version = ?",
                (stream.replace("-", ""), version),
            ).fetchone()[0]
        )
        state["data"]["role"] = "daemon"
        conn.execute(
            "UPDATE stored_events SET state = ? WHERE originator_id = ? AND originator_version = ?",
            (_ENC.encode(state), stream.replace("-", ""), version),
        )
    conn.close()
    proc = prove(env, 5)
    assert proc.returncode == 1 and "does not match its own hash" in proc.stderr, proc
    assert prove(env, 6).returncode == 0  # the batch's other records still prove (the root is intact)


def test_prove_errors(env: Env) -> None:
    proc = prove(env, 30, run=sub)  # not anchored yet
    assert proc.returncode == 2 and "seq 30 is not anchored" in proc.stderr and "anchored up to seq 29" in proc.stderr
    assert prove(env, 0).returncode == 2
    proc = prove(env, 3, source=("--db", env.path("missing.sqlite")))
    assert proc.returncode == 2 and "no such file" in proc.stderr
    proc = inproc("audit", "prove", "--seq", "3", "--db", env.db, "--rpc", env.rpc, "--contract", "0x" + "12" * 20)
    assert proc.returncode == 2 and "no contract at" in proc.stderr


# --- audit verify against the chain -----------------------------------------------------------------


def test_whole_export_against_the_chain_is_valid(env: Env) -> None:
    rc, rep = verify_json("--export", env.export, "--rpc", env.rpc, "--contract", env.contract)
    assert (rc, rep["valid"], rep["findings"]) == (0, True, []), rep
    assert rep["chain"]["batches"] == 4 and rep["chain"]["checked_batches"] == 4 and rep["chain"]["anchored_upto"] == 29
    assert rep["chain"]["chain_id"] == 84532
    assert any("seqs 30..30 are not anchored on chain yet" in n for n in rep["notes"])
    rc, rep = verify_json("--db", env.db, "--rpc", env.rpc, "--contract", env.contract)
    assert rc == 0, rep
    text = sub("audit", "verify", "--export", env.export, "--rpc", env.rpc, "--contract", env.contract)
    assert text.returncode == 0
    assert text.stdout.splitlines()[-1].startswith("OK: 30 records, head seq 30")
    assert "chain 84532 at block" in text.stdout


def test_rewritten_history_is_an_anchor_mismatch(env: Env) -> None:
    rewritten = write_export(env.path("rewritten.jsonl"), rewrite_history(env.records, 12))
    # the hash chain alone cannot see it: the forgery is consistent
    rc, rep = verify_json("--export", rewritten)
    assert (rc, rep["findings"]) == (0, []), rep
    # the chain can: every batch from the one holding seq 12 on
    rc, rep = verify_json("--export", rewritten, "--rpc", env.rpc, "--contract", env.contract, run=sub)
    assert rc == 1
    assert kinds(rep) == [(16, "anchor_mismatch"), (29, "anchor_mismatch")], rep
    assert "batch #2 (seqs 9..16)" in rep["findings"][0]["detail"]
    assert "the first rewritten record is in seqs 9..16" in rep["findings"][0]["detail"]
    assert "follows from an earlier batch's mismatch" in rep["findings"][1]["detail"]
    # a rewrite inside the last batch only
    rewritten = write_export(env.path("rewritten2.jsonl"), rewrite_history(env.records, 20))
    rc, rep = verify_json("--export", rewritten, "--rpc", env.rpc, "--contract", env.contract)
    assert kinds(rep) == [(29, "anchor_mismatch")], rep
    # a rewrite of the unanchored tail is beyond what the chain can say
    rewritten = write_export(env.path("rewritten3.jsonl"), rewrite_history(env.records, 30))
    rc, rep = verify_json("--export", rewritten, "--rpc", env.rpc, "--contract", env.contract)
    assert rc == 0, rep


def test_truncated_export_against_the_chain(env: Env) -> None:
    short = write_export(env.path("short.jsonl"), env.records[:24])
    rc, rep = verify_json("--export", short)
    assert rc == 0, rep  # consistent on its own
    rc, rep = verify_json("--export", short, "--rpc", env.rpc, "--contract", env.contract, run=sub)
    assert rc == 1
    assert kinds(rep) == [(s, "truncated") for s in range(25, 30)], rep


def test_chain_findings_merge_with_the_verifiers(env: Env) -> None:
    """One finding per record: the verifier's own finding wins over the chain's."""
    recs = copy.deepcopy(env.records)
    recs[4]["data"]["role"] = "daemon"  # content changed, hash kept: `modified`; the anchored root still matches
    del recs[10]  # seq 11 deleted: `missing` from both
    recs = recs[:27]  # and seqs 29, 30 cut (header claims 30): `truncated` from both
    path = write_export(env.path("mixed.jsonl"), recs, head={"seq": 30, "hash": env.records[-1]["hash"]})
    rc, rep = verify_json("--export", path, "--rpc", env.rpc, "--contract", env.contract)
    assert rc == 1
    assert kinds(rep) == [(5, "modified"), (11, "missing"), (29, "truncated"), (30, "truncated")], rep


def test_migration_across_two_contracts(env: Env, w3: Any, isolated: Anvil) -> None:
    a = deploy(w3, isolated)
    anchor_batches(w3, isolated, a, env.records, [(1, 8), (9, 16)])
    chain_tools.send_transaction(w3, isolated.accounts[0], a.functions.setSubmitter("0x" + "00" * 20))  # frozen
    b = deploy(w3, isolated, start_seq=17)
    anchor_batches(w3, isolated, b, env.records, [(17, 20), (21, 30)])
    both = ("--contract", a.address, "--contract", b.address)

    rc, rep = verify_json("--export", env.export, "--rpc", env.rpc, *both)
    assert (rc, rep["findings"]) == (0, []), rep
    assert [c["address"] for c in rep["chain"]["contracts"]] == [a.address, b.address]
    assert rep["chain"]["anchored_upto"] == 30 and rep["chain"]["batches"] == 4

    # a proof from the second contract, verified with both named
    out = env.path("mig.json")
    proc = inproc("audit", "prove", "--seq", "25", "--db", env.db, "--rpc", env.rpc, *both, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["anchors"]["evm"]["contract"] == b.address
    rc, rep2 = verify_proof(env, out, *both)
    assert rc == 0, rep2

    # rewrites are caught on either side of the migration
    rewritten = write_export(env.path("rw.jsonl"), rewrite_history(env.records, 3))
    rc, rep = verify_json("--export", rewritten, "--rpc", env.rpc, *both)
    assert kinds(rep) == [(8, "anchor_mismatch"), (16, "anchor_mismatch"), (20, "anchor_mismatch"), (30, "anchor_mismatch")]
    # truncation below what the second contract anchored
    short = write_export(env.path("short.jsonl"), env.records[:18])
    rc, rep = verify_json("--export", short, "--rpc", env.rpc, *both)
    assert kinds(rep) == [(s, "truncated") for s in range(19, 31)]

    # the wrong order is not a continuation
    rc, rep = verify_json("--export", env.export, "--rpc", env.rpc, "--contract", b.address, "--contract", a.address)
    assert rc == 1 and (1, "anchor_mismatch") in kinds(rep), rep
    assert "migration not contiguous" in rep["findings"][0]["detail"]
    # a successor that leaves a gap
    gap = deploy(w3, isolated, start_seq=22)
    anchor_batches(w3, isolated, gap, env.records, [(22, 30)])
    rc, rep = verify_json("--export", env.export, "--rpc", env.rpc, "--contract", a.address, "--contract", gap.address)
    assert rc == 1 and kinds(rep) == [(22, "anchor_mismatch")], rep
    assert "seqs 17..21 are anchored by neither" in rep["findings"][0]["detail"]


def test_verify_chain_usage_errors(env: Env) -> None:
    proc = sub("audit", "verify", "--export", env.export, "--rpc", env.rpc)
    assert proc.returncode == 2 and "--rpc and --contract go together" in proc.stderr
    proc = inproc("audit", "verify", "--export", env.export, "--contract", env.contract)
    assert proc.returncode == 2
    proc = inproc("audit", "verify", "--export", env.export, "--rpc", env.rpc, "--contract", "nonsense")
    assert proc.returncode == 2 and "not a contract address" in proc.stderr
    proc = sub("audit", "verify", "--export", env.export, "--rpc", "http://127.0.0.1:9", "--contract", env.contract)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    # without the new options the original verifier runs, unchanged
    proc = sub("audit", "verify", "--export", env.export)
    assert proc.returncode == 0 and proc.stdout.startswith("OK: 30 records"), proc


# --- the checkpoint ---------------------------------------------------------------------------------


def test_checkpoint_created_advanced_diverged_truncated(env: Env) -> None:
    cp = env.path("auditor.checkpoint.json")
    # first run: created at the verified head
    rc, rep = verify_json("--export", env.export, "--checkpoint", cp, run=sub)
    assert rc == 0, rep
    saved = json.loads(cp.read_text())
    assert (saved["seq"], saved["hash"]) == (30, env.records[-1]["hash"])
    assert isinstance(saved["verified_at"], int) and saved["source"] == f"export {env.export.resolve()}"
    assert rep["checkpoint"]["before"] is None and rep["checkpoint"]["after"]["seq"] == 30

    # the ledger grows; a later valid run advances it
    grow_ledger(env.db, N, 6)
    export2 = env.path("export2.jsonl")
    audit.export_ledger(env.db, export2)
    _, records2 = read_export(export2)
    assert records2[:N] == env.records
    rc, rep = verify_json("--export", export2, "--checkpoint", cp)
    assert rc == 0, rep
    saved = json.loads(cp.read_text())
    assert (saved["seq"], saved["hash"]) == (36, records2[-1]["hash"])
    assert rep["checkpoint"]["before"]["seq"] == 30

    # history rewritten before the checkpoint and re-exported consistently: diverged
    before = cp.read_bytes()
    rewritten = write_export(env.path("rewritten.jsonl"), rewrite_history(records2, 7))
    rc, rep = verify_json("--export", rewritten, "--checkpoint", cp)
    assert rc == 1 and kinds(rep) == [(36, "diverged")], rep
    assert "history up to seq 36 was rewritten" in rep["findings"][0]["detail"]
    assert cp.read_bytes() == before  # an invalid run never moves the checkpoint

    # the ledger is behind the checkpoint: truncated, one per seq
    short = write_export(env.path("short.jsonl"), records2[:33])
    rc, rep = verify_json("--export", short, "--checkpoint", cp)
    assert rc == 1 and kinds(rep) == [(34, "truncated"), (35, "truncated"), (36, "truncated")], rep
    assert cp.read_bytes() == before

    # the same export again: still valid, the checkpoint confirmed
    text = inproc("audit", "verify", "--export", export2, "--checkpoint", cp)
    assert text.returncode == 0 and "checkpoint confirmed: seq 36" in text.stdout, text.stdout
    # and the database itself, with the checkpoint
    rc, rep = verify_json("--db", env.db, "--checkpoint", cp)
    assert rc == 0, rep
    assert json.loads(cp.read_text())["source"] == f"ledger {env.db.resolve()}"


def test_checkpoint_with_the_chain(env: Env) -> None:
    cp = env.path("cp.json")
    rc, rep = verify_json("--export", env.export, "--rpc", env.rpc, "--contract", env.contract, "--checkpoint", cp)
    assert rc == 0 and json.loads(cp.read_text())["seq"] == 30, rep
    # a rewrite: the chain and the checkpoint both object, one finding per record
    rewritten = write_export(env.path("rw.jsonl"), rewrite_history(env.records, 25))
    rc, rep = verify_json("--export", rewritten, "--rpc", env.rpc, "--contract", env.contract, "--checkpoint", cp)
    assert kinds(rep) == [(29, "anchor_mismatch"), (30, "diverged")], rep
    # a short export: the chain's truncation and the checkpoint's overlap, one finding per seq
    short = write_export(env.path("short.jsonl"), env.records[:27])
    rc, rep = verify_json("--export", short, "--rpc", env.rpc, "--contract", env.contract, "--checkpoint", cp)
    assert kinds(rep) == [(28, "truncated"), (29, "truncated"), (30, "truncated")], rep
    assert json.loads(cp.read_text())["seq"] == 30


def test_checkpoint_file_errors(env: Env) -> None:
    cp = env.path("bad.json")
    cp.write_text("{not json")
    proc = sub("audit", "verify", "--export", env.export, "--checkpoint", cp)
    assert proc.returncode == 2 and "not a checkpoint file" in proc.stderr, proc
    cp.write_text(json.dumps({"seq": 3, "hash": "XYZ"}))
    proc = inproc("audit", "verify", "--export", env.export, "--checkpoint", cp)
    assert proc.returncode == 2
    proc = inproc("audit", "verify", "--export", env.export, "--checkpoint", env.path("no-such-dir") / "cp.json")
    assert proc.returncode == 2 and "cannot write checkpoint" in proc.stderr and proc.stdout == "", proc


# --- reading the chain ------------------------------------------------------------------------------


def test_reader_chunks_and_falls_back_without_batch_requests(env: Env, w3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many batches are read in JSON-RPC batch requests of `RPC_BATCH` calls; an endpoint that
    refuses batch requests is read one call at a time, with the same result."""
    from anchors import chain_reader

    monkeypatch.setattr(chain_reader, "RPC_BATCH", 3)
    batched = list(ChainReader(w3, [env.contract]).batches(env.contract))
    reader = ChainReader(env.rpc, [env.contract])

    def refuse(*a: Any, **k: Any) -> Any:
        raise RuntimeError("batch requests are not supported")

    monkeypatch.setattr(reader.w3.provider, "make_batch_request", refuse)
    single = list(reader.batches(env.contract))
    assert batched == single
    assert [(b.index, b.first_seq, b.last_seq) for b in single] == [(i, lo, hi) for i, (lo, hi) in enumerate(BATCHES)]
    for b, (lo, hi) in zip(single, BATCHES, strict=False):
        hashes = [r["hash"] for r in env.records[lo - 1 : hi]]
        assert b.root == merkle.root(merkle.leaves_from_record_hashes(hashes))
        assert b.chain_head.hex() == hashes[-1]
        assert b.block_number == env.receipts[b.index]["blockNumber"]


def test_reading_at_a_pinned_block(env: Env) -> None:
    """`--block N` reads the contract as it was at block N: later batches are not yet there."""
    block_of_batch_2 = env.receipts[2]["blockNumber"]
    short = write_export(env.path("short.jsonl"), env.records[:20])
    rc, rep = verify_json("--export", short, "--rpc", env.rpc, "--contract", env.contract, "--block", str(block_of_batch_2))
    assert rc == 0 and rep["chain"]["anchored_upto"] == 16 and rep["chain"]["block"] == block_of_batch_2, rep
    rc, rep = verify_json("--export", short, "--rpc", env.rpc, "--contract", env.contract, "--block", "latest")
    assert rc == 1 and kinds(rep) == [(s, "truncated") for s in range(21, 30)]
    proc = prove(env, 20, "--block", str(block_of_batch_2))
    assert proc.returncode == 2 and "not anchored" in proc.stderr
    assert prove(env, 20, "--block", "bogus").returncode == 2


def test_a_look_alike_contract_is_refused(env: Env, w3: Any, isolated: Anvil) -> None:
    """Code that is not the AuditAnchor artifact could answer anything: refused before reading."""
    init = "0x600060005360016000f3"  # deploys the one-byte runtime code 0x00
    receipt = chain_tools.send_transaction(w3, isolated.accounts[0], tx={"data": init, "gas": 100_000})
    address = receipt["contractAddress"]
    assert bytes(w3.eth.get_code(address)) == b"\x00"
    proc = inproc("audit", "verify", "--export", env.export, "--rpc", env.rpc, "--contract", address)
    assert proc.returncode == 2 and "is not the AuditAnchor contract" in proc.stderr, proc.stderr


def test_damaged_lines_leave_their_batch_unchecked(env: Env) -> None:
    """A record the verifier cannot read makes its batch's root uncomputable: the verifier's
    `modified` is the finding; the other batches are still checked against the chain."""
    lines = env.export.read_bytes().split(b"\n")
    lines[7] = b"#" + lines[7]  # seq 7 (line 1 is the header) is no longer JSON
    damaged = env.path("damaged.jsonl")
    damaged.write_bytes(b"\n".join(lines))
    rc, rep = verify_json("--export", damaged, "--rpc", env.rpc, "--contract", env.contract)
    assert rc == 1 and kinds(rep) == [(7, "modified")], rep
    assert rep["chain"]["checked_batches"] == 3 and rep["chain"]["batches"] == 4
