"""The committed AuditAnchor artifact is exactly what the pinned solc-js compiles today."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from anchors import chain_tools
from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "compile_contract.js"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NODE, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_committed_artifact_matches_a_fresh_compile() -> None:
    check = _run("--check")
    assert check.returncode == 0, check.stderr
    assert "matches a fresh compile" in check.stdout
    assert "Warning" not in check.stderr and "Error" not in check.stderr, check.stderr


def test_check_fails_on_a_stale_artifact(tmp_path: Path) -> None:
    stale = tmp_path / "AuditAnchor.json"
    art = json.loads(chain_tools.ARTIFACT_PATH.read_text())
    art["bytecode"] = art["bytecode"][:-2] + ("00" if not art["bytecode"].endswith("00") else "01")
    stale.write_text(json.dumps(art, indent=2, sort_keys=True) + "\n")
    res = _run("--check", "--out", str(stale))
    assert res.returncode == 1
    assert "differs from a fresh compile" in res.stderr
    assert _run("--check", "--out", str(tmp_path / "missing.json")).returncode == 1


def test_artifact_pins_compiler_and_settings() -> None:
    art = chain_tools.load_artifact()
    assert art["compiler"]["name"] == "solc"
    assert art["compiler"]["version"].startswith("0.8.37+")
    assert art["settings"]["evmVersion"] == "cancun"
    assert art["settings"]["optimizer"] == {"enabled": True, "runs": 200}
    assert art["contractName"] == "AuditAnchor"
    assert art["sourceName"] == "anchors/contracts/AuditAnchor.sol"
    assert art["bytecode"].startswith("0x60") and art["deployedBytecode"].startswith("0x60")
    # stable formatting: sorted keys, 2-space indent, trailing newline
    text = chain_tools.ARTIFACT_PATH.read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


def test_abi_surface() -> None:
    items = {(i["type"], i.get("name")): i for i in chain_tools.abi()}
    functions = {name for (kind, name) in items if kind == "function"}
    assert {
        "anchor", "setSubmitter", "transferOwnership", "owner", "submitter", "startSeq", "lastSeq",
        "batchCount", "batchAt", "batchByRoot", "batchIndexByRoot", "batchForSeq", "verifyInclusion",
        "verifyRecord",
    } <= functions
    assert items[("function", "verifyInclusion")]["stateMutability"] == "pure"
    assert items[("function", "verifyRecord")]["stateMutability"] == "view"
    anchored = items[("event", "Anchored")]
    assert [(i["name"], i["type"], i["indexed"]) for i in anchored["inputs"]] == [
        ("batchIndex", "uint256", True),
        ("root", "bytes32", True),
        ("firstSeq", "uint64", False),
        ("lastSeq", "uint64", False),
        ("chainHead", "bytes32", False),
    ]
    batch = items[("function", "batchAt")]["outputs"][0]
    assert [(c["name"], c["type"]) for c in batch["components"]] == [
        ("root", "bytes32"), ("firstSeq", "uint64"), ("lastSeq", "uint64"), ("chainHead", "bytes32"), ("blockNumber", "uint64"),
    ]
    names = {name for name, _ in chain_tools.error_selectors().values()}
    assert {"NotSubmitter", "NotContiguous", "SeqNotAnchored", "RootAlreadyAnchored", "NotOwner"} <= names
    # no function in the ABI can change or delete a batch once anchored
    writers = {i["name"] for i in chain_tools.abi() if i["type"] == "function" and i["stateMutability"] not in ("view", "pure")}
    assert writers == {"anchor", "setSubmitter", "transferOwnership"}


def test_decode_custom_error() -> None:
    from eth_abi import encode
    from eth_utils import keccak

    data = keccak(text="NotContiguous(uint64,uint64)")[:4] + encode(["uint64", "uint64"], [7, 9])
    assert chain_tools.decode_custom_error(data) == ("NotContiguous", (7, 9))
    assert chain_tools.decode_custom_error("0x" + data.hex()) == ("NotContiguous", (7, 9))
    assert chain_tools.decode_custom_error(keccak(text="NotSubmitter()")[:4]) == ("NotSubmitter", ())
    assert chain_tools.decode_custom_error(b"\x00\x00\x00\x00") is None
    assert chain_tools.decode_custom_error("0xzz") is None
    assert chain_tools.decode_custom_error(None) is None
