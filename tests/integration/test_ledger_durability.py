"""Concurrency and crash safety of the ledger on real SQLite files."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from ledger.app import Ledger
from ledger.chain import GENESIS, recompute_hash
from ledger.config import LedgerConfig
from ledger.events import WalletBound
from tests.conftest import ROOT


def verify_whole_chain(db: Path) -> dict[int, str]:
    """Open the ledger again and check every hash and link; return seq -> hash."""
    with Ledger(LedgerConfig(db)) as led:
        records = list(led.recorder.iter_records())
        head = led.head()
    prev = GENESIS
    by_seq = {}
    for expected, r in enumerate(records, start=1):
        assert r.seq == expected, f"gap or duplicate at {expected}"
        assert r.prev == prev, f"broken link at {r.seq}"
        assert recompute_hash(r.envelope()) == r.hash, f"bad hash at {r.seq}"
        prev = r.hash
        by_seq[r.seq] = r.hash
    assert (head.seq, head.hash) == ((records[-1].seq, records[-1].hash) if records else (0, GENESIS))
    return by_seq


@pytest.mark.slow
def test_50_concurrent_writers_2000_events_no_gaps_and_all_survive_restart(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite"
    led = Ledger(LedgerConfig(db))
    acked: list[tuple[int, str]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(50)

    def writer(w: int) -> None:
        barrier.wait()
        for n in range(40):
            rec = led.append(uuid.uuid4(), 0, [WalletBound(omni_account=f"{w:064x}", address=f"0x{n:040x}", role="master")])[0]
            with lock:
                acked.append((rec.seq, rec.hash))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    led.close()

    assert len(acked) == 2000
    seqs = sorted(s for s, _ in acked)
    assert seqs == list(range(1, 2001)), "no gaps, no duplicate seq"
    stored = verify_whole_chain(db)  # after a restart (fresh open)
    assert len(stored) == 2000
    for seq, h in acked:
        assert stored[seq] == h


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(4))
def test_sigkill_mid_stream_leaves_a_verifiable_ledger_with_every_ack(tmp_path: Path, round_: int) -> None:
    db = tmp_path / "ledger.sqlite"
    acked: dict[int, str] = {}
    rng = random.Random(round_)
    for _attempt in range(2):  # kill the writer twice on the same file: recovery then more appends
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.crash_writer", str(db), "8"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            target = rng.randint(50, 400)
            deadline = time.monotonic() + 60
            seen = 0
            assert proc.stdout is not None
            while seen < target and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                _, seq, h = line.split()
                acked[int(seq)] = h
                seen += 1
            assert seen == target, proc.stderr.read() if proc.poll() is not None else "writer too slow"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        # lines already written to the pipe before the kill are acknowledgements too
        assert proc.stdout is not None
        for line in proc.stdout.read().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "ack":
                acked[int(parts[1])] = parts[2]
        stored = verify_whole_chain(db)
        missing = [s for s in acked if stored.get(s) != acked[s]]
        assert not missing, f"acknowledged appends lost after SIGKILL: {missing[:10]}"
