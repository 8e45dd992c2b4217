"""`make bench`: measured figures for docs/benchmarks.md (never timed unit tests).

Each section runs in this one process, so ratios compare numbers measured in the same run.
Usage: python -m tests.bench [--out docs/benchmarks.md] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import msgspec

from ledger.app import Ledger
from ledger.chain import DOMAIN_TAG, GENESIS, EXPORT_FORMAT, FORMAT_VERSION, make_envelope
from ledger.canonical import canonical_bytes_unchecked
from ledger.config import LedgerConfig
from ledger.events import WalletBound


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, Python {platform.python_version()}"


def bench_appends(threads: int, per_thread: int, batch_max: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        led = Ledger(LedgerConfig(Path(d) / "ledger.sqlite", batch_max=batch_max))
        barrier = threading.Barrier(threads + 1)

        def worker(w: int) -> None:
            barrier.wait()
            for n in range(per_thread):
                led.append(uuid.uuid4(), 0, [WalletBound(omni_account=f"{w:064x}", address=f"0x{n:040x}", role="master")])

        ts = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
        for t in ts:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in ts:
            t.join()
        dt = time.perf_counter() - t0
        led.close()
    return threads * per_thread / dt


def write_synthetic_export(path: Path, n: int) -> list[bytes]:
    """A valid n-record export (hashes computed with the chain rules), written directly."""
    enc = msgspec.json.Encoder(order="sorted")
    prev = GENESIS
    at = datetime(2026, 11, 29, 5, 0, tzinfo=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    canon: list[bytes] = []
    lines: list[bytes] = []
    for seq in range(1, n + 1):
        env = make_envelope(seq=seq, type="WalletBound", stream=str(uuid.UUID(int=seq)), version=1, at=at,
                            data={"omni_account": f"{seq:064x}", "address": f"0x{seq:040x}", "role": "master",
                                  "parent_address": None}, prev=prev)
        c = canonical_bytes_unchecked(env)
        h = hashlib.sha256(DOMAIN_TAG + c).hexdigest()
        env["hash"] = h
        lines.append(enc.encode(env))
        canon.append(c)
        prev = h
    header = enc.encode({"format": EXPORT_FORMAT, "v": FORMAT_VERSION, "records": n, "head": {"seq": n, "hash": prev}})
    with open(path, "wb") as f:
        f.write(header + b"\n")
        for line in lines:
            f.write(line + b"\n")
    return canon


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    args = ap.parse_args()
    quick = args.quick
    rows: list[str] = []
    started = datetime.now(timezone.utc)

    # 1. group commit vs one transaction per append, same run
    threads, per = (16, 50) if quick else (32, 200)
    grouped = statistics.median(bench_appends(threads, per, 256) for _ in range(3))
    single = statistics.median(bench_appends(threads, per, 1) for _ in range(3))
    rows.append(f"| ledger append, {threads} concurrent writers, group commit (batch_max=256) | **{grouped:,.0f} events/s** | median of 3 |")
    rows.append(f"| ledger append, {threads} concurrent writers, one transaction per append (batch_max=1) | **{single:,.0f} events/s** | median of 3 |")
    rows.append(f"| group commit speed-up | **{grouped / single:.1f}x** | same run |")
    print(rows[-1], file=sys.stderr)

    # 2. audit verify on a large export vs plain sha256 over the same canonical bytes
    n = 100_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory() as d:
        export = Path(d) / "export.jsonl"
        canon = write_synthetic_export(export, n)
        t0 = time.perf_counter()
        for c in canon:
            hashlib.sha256(DOMAIN_TAG + c).digest()
        sha_rate = n / (time.perf_counter() - t0)
        del canon
        cli = Path(sys.executable).parent / "agentkeys-broker"
        t0 = time.perf_counter()
        out = subprocess.run([str(cli), "audit", "verify", "--export", str(export), "--json"], capture_output=True, text=True)
        dt = time.perf_counter() - t0
        assert out.returncode == 0, out.stderr
        verify_rate = n / dt
    rows.append(f"| `audit verify --export` on {n:,} events (whole command, incl. start-up and parsing) | **{verify_rate:,.0f} events/s** ({dt:.2f} s) | one run |")
    rows.append(f"| plain `hashlib.sha256` over the same records' canonical bytes | {sha_rate:,.0f} records/s | same run |")
    rows.append(f"| verify cost relative to bare hashing | {sha_rate / verify_rate:.1f}x | same run |")
    print(rows[-3], file=sys.stderr)

    # 3. projection rebuild throughput (wallets)
    m = 10_000 if quick else 50_000
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "ledger.sqlite"
        led = Ledger(LedgerConfig(db))
        futures = [led.submit(uuid.uuid4(), 0, [WalletBound(omni_account=f"{i % 997:064x}", address=f"0x{i:040x}", role="master")])
                   for i in range(m)]
        for f in futures:
            f.result()
        led.close()
        cli = Path(sys.executable).parent / "agentkeys-broker"
        t0 = time.perf_counter()
        out = subprocess.run([str(cli), "projections", "rebuild", "wallets", "--db", str(db)], capture_output=True, text=True)
        dt = time.perf_counter() - t0
        assert out.returncode == 0, out.stderr
    rows.append(f"| `projections rebuild wallets` from a {m:,}-event ledger (whole command) | **{m / dt:,.0f} events/s** ({dt:.2f} s) | one run |")
    print(rows[-1], file=sys.stderr)

    report = "\n".join([
        "# Benchmarks",
        "",
        f"Measured by `make bench` (`python -m tests.bench --out docs/benchmarks.md`) on {started:%Y-%m-%d}.",
        f"Machine: {machine()}. Files on the local disk (SQLite WAL, `synchronous=FULL`).",
        "Figures in one table come from one run of the command, so ratios compare like with like.",
        "",
        "## Ledger (foundation)",
        "",
        "| what | result | runs |",
        "|---|---|---|",
        *rows,
        "",
        "Targets: group commit must beat one transaction per append by a wide margin (every batch shares",
        "one fsync); verifying a million-event export in at most 5 s (>= 200,000 events/s).",
        "",
    ])
    if args.out:
        args.out.write_text(report)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
