"""`EvmStore.batch_containing`: the batch of one seq by an indexed lookup, out-of-range seqs None."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from anchors.evm_store import EvmStore


def test_batch_containing_finds_the_batch_and_refuses_out_of_range(tmp_path: Path) -> None:
    store = EvmStore(tmp_path / "evm.sqlite")
    store.insert_batch(1, 3, "r1", "h3")
    store.insert_batch(4, 10, "r2", "h10")
    assert store.batch_containing(1).first_seq == 1  # type: ignore[union-attr]
    assert store.batch_containing(3).last_seq == 3  # type: ignore[union-attr]
    assert store.batch_containing(7).first_seq == 4  # type: ignore[union-attr]
    for seq in (0, -1, 11, 2**63, 2**64):
        assert store.batch_containing(seq) is None


def test_batch_containing_uses_the_first_seq_index_not_a_scan(tmp_path: Path) -> None:
    EvmStore(tmp_path / "evm.sqlite")
    conn = sqlite3.connect(tmp_path / "evm.sqlite")
    plan = " ".join(str(row[-1]) for row in conn.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM evm_batches WHERE first_seq <= ? ORDER BY first_seq DESC LIMIT 1", (5,)))
    assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, plan
    assert "SCAN evm_batches" not in plan.replace("USING INDEX", "")
