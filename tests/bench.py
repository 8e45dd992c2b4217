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
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from ledger.app import Ledger
from ledger.canonical import canonical_bytes_unchecked
from ledger.chain import DOMAIN_TAG, EXPORT_FORMAT, FORMAT_VERSION, GENESIS, make_envelope
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



def measure_healthz(url: str, seconds: int) -> tuple[float, str]:
    """`GET /healthz` requests/s against a running broker: wrk when installed (it measures the
    server, not a Python client), else 16 concurrent httpx clients (and the row says so)."""
    import asyncio
    import re
    import shutil

    import httpx

    wrk = shutil.which("wrk")
    if wrk:
        out = subprocess.run([wrk, "-t2", "-c16", f"-d{seconds}s", url + "/healthz"],
                             capture_output=True, text=True, timeout=seconds + 60)
        m = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
        assert m, out.stdout + out.stderr
        return float(m.group(1)), "wrk -t2 -c16"

    async def health() -> float:
        count = [0]
        stop_at = time.perf_counter() + seconds

        async def w(client: httpx.AsyncClient) -> None:
            while time.perf_counter() < stop_at:
                r = await client.get("/healthz")
                assert r.status_code == 200
                count[0] += 1

        async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=16)) as client:
            t0 = time.perf_counter()
            await asyncio.gather(*[w(client) for _ in range(16)])
            return count[0] / (time.perf_counter() - t0)

    return asyncio.run(health()), "httpx.AsyncClient, 16 concurrent (wrk not installed)"

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
    at = datetime(2026, 11, 29, 5, 0, tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
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


def bench_sign_in(quick: bool) -> list[str]:
    """Sign-ins per second over real HTTP: `agentkeys-broker serve` (uvicorn) as a subprocess, the
    SQLite anchor gating every `SessionIssued`, httpx.AsyncClient at concurrency 1 and 16 with
    pre-created wallets. Each sign-in is start -> client-side EIP-191 signature of the returned
    message -> verify (answered only once the anchor confirmed). Client signing time is measured and
    reported on its own. `/healthz` req/s in the same run (wrk if installed, else httpx) gives the
    ratio. Returns the table rows of the "Sign-in (SIWE)" section."""
    import asyncio
    import signal

    import httpx
    from eth_account import Account
    from eth_account.messages import encode_defunct

    from tests.support import broker_env, free_port

    per_level = {1: 40, 16: 200} if quick else {1: 300, 16: 2000}
    health_seconds = 3 if quick else 10
    wallets = [Account.create() for _ in range(64)]
    rows: list[str] = []

    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, **broker_env(Path(d),
                                          BROKER_RATE_LIMIT_CHALLENGES_PER_HOUR_PER_IP="1000000",
                                          BROKER_RATE_LIMIT_FAILED_VERIFIES_PER_HOUR_PER_IP="1000000")}
        # sign-in needs no STS; a role ARN only lets `serve` boot when the mint settings require one
        env.setdefault("BROKER_DATA_ROLE_ARN", "arn:aws:iam::000000000000:role/agentkeys-data-role")
        env.setdefault("BROKER_S3_BUCKETS", "agentkeys-dev")
        env["BROKER_LOG_LEVEL"] = "WARNING"
        cli = Path(sys.executable).parent / "agentkeys-broker"
        log = open(Path(d) / "serve.log", "wb")
        proc = subprocess.Popen([str(cli), "serve", "--port", str(port), "--skip-startup-check"], env=env,
                                stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("broker did not start: " + (Path(d) / "serve.log").read_text()[-2000:])
                time.sleep(0.05)

            async def run_level(concurrency: int, total: int) -> tuple[float, list[float], float]:
                latencies: list[float] = []
                signing = [0.0]
                next_index = [0]

                async def one(client: httpx.AsyncClient, i: int, record: bool) -> None:
                    acct = wallets[i % len(wallets)]
                    t0 = time.perf_counter()
                    r = await client.post("/v1/auth/wallet/start", json={"address": acct.address.lower(), "chain_id": 84532})
                    assert r.status_code == 200, r.text
                    challenge = r.json()
                    ts = time.perf_counter()
                    sig = "0x" + bytes(acct.sign_message(encode_defunct(text=challenge["siwe_message"])).signature).hex()
                    te = time.perf_counter()
                    r = await client.post(
                        "/v1/auth/wallet/verify", json={"request_id": challenge["request_id"], "signature": sig}
                    )
                    assert r.status_code == 200 and r.json()["anchored"] == ["sqlite"], r.text
                    if record:
                        signing[0] += te - ts
                        latencies.append(time.perf_counter() - t0)

                async def worker(client: httpx.AsyncClient) -> None:
                    while next_index[0] < total:
                        next_index[0] += 1
                        await one(client, next_index[0], True)

                limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
                async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
                    await asyncio.gather(*[one(client, 10_000 + i, False) for i in range(max(4, concurrency))])  # warm-up
                    t0 = time.perf_counter()
                    await asyncio.gather(*[worker(client) for _ in range(concurrency)])
                    dt = time.perf_counter() - t0
                return total / dt, sorted(latencies), signing[0] / total

            results = {c: asyncio.run(run_level(c, n)) for c, n in per_level.items()}

            # client-side signing alone, on the same kind of message
            sample = httpx.post(url + "/v1/auth/wallet/start", json={"address": wallets[0].address.lower(),
                                                                     "chain_id": 84532}).json()["siwe_message"]
            n_sign = 200 if quick else 2000
            t0 = time.perf_counter()
            for i in range(n_sign):
                wallets[i % len(wallets)].sign_message(encode_defunct(text=sample))
            sign_rate = n_sign / (time.perf_counter() - t0)

            health_rate, health_tool = measure_healthz(url, health_seconds)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    for c, (rate, lat, sign_s) in results.items():
        rows.append(f"| sign-ins (start + sign + verify, SQLite anchor confirms before the answer), concurrency {c} "
                    f"| **{rate:,.0f} sign-ins/s** | {per_level[c]:,} sign-ins; latency p50 {pct(lat, 0.5):.1f} ms, "
                    f"p99 {pct(lat, 0.99):.1f} ms; client signing {sign_s * 1000:.2f} ms of each |")
    rows.append(f"| client-side EIP-191 signing alone (eth-account, one core) | {sign_rate:,.0f} signatures/s "
                f"({1000 / sign_rate:.2f} ms each) | {n_sign:,} signatures |")
    rows.append(
        f"| `GET /healthz` on the same broker ({health_tool}, {health_seconds} s) | {health_rate:,.0f} req/s | same run |"
    )
    rows.append(f"| `/healthz` requests per sign-in at concurrency 16 | {health_rate / results[16][0]:.1f}x | same run |")
    for row in rows:
        print(row, file=sys.stderr)
    return rows


def bench_mint(quick: bool) -> list[str]:
    """Mints per second over real HTTP: a moto server (`api.moto_server.MotoServer`, the broker's
    role bootstrapped) and `agentkeys-broker serve` as subprocesses, SQLite anchor gating every
    `MintAuthorized`, `BROKER_GRANTS_REQUIRED=false` (self-mints), rate limits raised. Every client
    has its own wallet and session (signed in before the timed part) and its own pre-signed bodies,
    so requests are independent; httpx.AsyncClient at concurrency 1, 16 and 64, each level bounded
    by a body budget and a time limit. In the same run: raw boto3 `AssumeRole` with the parameters
    the broker sends (same policy, tags, source identity) against the same moto server (1 and 16
    threads), and `/healthz` req/s on the same broker (wrk if installed, else httpx). The broker's
    own overhead per mint is mint p50 minus STS p50, both at concurrency 1. Returns the rows of the
    "Mint (SQLite anchor, moto STS)" section."""
    import asyncio
    import signal
    from concurrent.futures import ThreadPoolExecutor

    import boto3
    import httpx

    from api.moto_server import MotoServer, bootstrap_dev_aws, dev_broker_env
    from api.sts import BotoStsMinter
    from api.sts_config import StsSettings
    from ledger.ports import AssumeRoleRequest
    from tests.support import Wallet, broker_env, free_port, sign_in, signed_mint_body

    budget = {1: 60, 16: 240, 64: 384} if quick else {1: 400, 16: 1600, 64: 2560}  # pre-signed bodies per level
    time_limit = 3.0 if quick else 5.0  # seconds per level (whichever ends first)
    sts_seconds = 2.0 if quick else 5.0
    health_seconds = 3 if quick else 10
    rows: list[str] = []

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")

    with tempfile.TemporaryDirectory() as d:
        moto = MotoServer.start(log_path=Path(d) / "moto.log")
        proc: subprocess.Popen | None = None
        log = open(Path(d) / "serve.log", "wb")
        try:
            aws = bootstrap_dev_aws(moto.endpoint)
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            env = {**os.environ, **broker_env(Path(d), **dev_broker_env(aws),
                                              BROKER_GRANTS_REQUIRED="false",
                                              BROKER_RATE_LIMIT_MINTS_PER_HOUR_PER_OMNI="1000000",
                                              BROKER_RATE_LIMIT_CHALLENGES_PER_HOUR_PER_IP="1000000",
                                              BROKER_AUDIT_ANCHORS="sqlite")}
            env["BROKER_LOG_LEVEL"] = "WARNING"
            cli = Path(sys.executable).parent / "agentkeys-broker"
            proc = subprocess.Popen([str(cli), "serve", "--port", str(port)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=log)
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("broker did not start: " + (Path(d) / "serve.log").read_text()[-2000:])
                time.sleep(0.05)

            # one wallet and session per client, signed in before anything is timed
            wallets = [Wallet() for _ in range(max(budget))]
            with httpx.Client(base_url=url, timeout=60) as c:
                sessions = [sign_in(c, w)["session_jwt"] for w in wallets]
                for w, jwt in zip(wallets[:4], sessions[:4], strict=False):  # warm-up: first mints (STS client, anchor)
                    r = c.post("/v1/mint-aws-creds", json=signed_mint_body(w), headers={"Authorization": f"Bearer {jwt}"})
                    assert r.status_code == 200, r.text

            async def run_level(concurrency: int) -> tuple[float, list[float], int, float]:
                per_client = budget[concurrency] // concurrency
                # pre-signed outside the timed part; issued_at is fresh (well inside the 300 s skew)
                bodies = [[msgspec.json.encode(signed_mint_body(wallets[i])) for _ in range(per_client)]
                          for i in range(concurrency)]
                latencies: list[float] = []
                stop_at = [0.0]

                async def worker(client: httpx.AsyncClient, i: int) -> None:
                    headers = {"Authorization": f"Bearer {sessions[i]}", "content-type": "application/json"}
                    for body in bodies[i]:
                        if time.perf_counter() >= stop_at[0]:
                            return
                        t0 = time.perf_counter()
                        r = await client.post("/v1/mint-aws-creds", content=body, headers=headers)
                        assert r.status_code == 200 and r.json()["anchored"] == ["sqlite"], r.text
                        latencies.append(time.perf_counter() - t0)

                limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
                async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
                    await asyncio.gather(*[client.get("/healthz") for _ in range(concurrency)])  # open connections
                    t0 = time.perf_counter()
                    stop_at[0] = t0 + time_limit
                    await asyncio.gather(*[worker(client, i) for i in range(concurrency)])
                    dt = time.perf_counter() - t0
                return len(latencies) / dt, sorted(latencies), len(latencies), dt

            results = {c: asyncio.run(run_level(c)) for c in budget}

            # raw boto3 AssumeRole, the broker's exact parameters, same moto server
            settings = StsSettings.from_env(env)
            template = BotoStsMinter(settings)
            request = AssumeRoleRequest(wallet=wallets[0].address, omni_account="0" * 64, agent_id="agent-1",
                                        service="s3", scope_path="agentkeys-dev/agents/a1/", duration_seconds=0)

            def sts_thread(ready: threading.Barrier) -> tuple[list[float], float, float]:
                client = boto3.session.Session().client(
                    "sts", endpoint_url=aws["sts_endpoint"], region_name=aws["region"],
                    aws_access_key_id="testing", aws_secret_access_key="testing")
                client.assume_role(**template.request_params(request))  # warm-up (connection, models)
                ready.wait()
                out: list[float] = []
                start = time.perf_counter()
                while time.perf_counter() < start + sts_seconds:
                    params = template.request_params(request)
                    t0 = time.perf_counter()
                    client.assume_role(**params)
                    out.append(time.perf_counter() - t0)
                return out, start, time.perf_counter()

            sts_results: dict[int, tuple[float, list[float]]] = {}
            for threads in (1, 16):
                ready = threading.Barrier(threads)
                with ThreadPoolExecutor(threads) as ex:
                    parts = [f.result() for f in [ex.submit(sts_thread, ready) for _ in range(threads)]]
                lat = sorted(x for part in parts for x in part[0])
                dt = max(p[2] for p in parts) - min(p[1] for p in parts)
                sts_results[threads] = (len(lat) / dt, lat)

            health_rate, health_tool = measure_healthz(url, health_seconds)
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.close()
            moto.stop()

    for c, (rate, lat, n, dt) in results.items():
        rows.append(f"| mints (session + per-call signature + STS + `MintAuthorized` anchored before the answer), "
                    f"concurrency {c} | **{rate:,.0f} mints/s** | {n:,} mints in {dt:.1f} s; latency p50 "
                    f"{pct(lat, 0.5):.1f} ms, p99 {pct(lat, 0.99):.1f} ms |")
    for t, (rate, lat) in sts_results.items():
        rows.append(f"| raw boto3 `AssumeRole` on the same moto server (the broker's parameters), {t} thread"
                    f"{'s' if t > 1 else ''} | {rate:,.0f} calls/s | {len(lat):,} calls; latency p50 {pct(lat, 0.5):.1f} ms, "
                    f"p99 {pct(lat, 0.99):.1f} ms |")
    overhead = pct(results[1][1], 0.5) - pct(sts_results[1][1], 0.5)
    rows.append(f"| broker overhead per mint at concurrency 1 (mint p50 - AssumeRole p50) | **{overhead:.1f} ms** | same run |")
    rows.append(
        f"| `GET /healthz` on the same broker ({health_tool}, {health_seconds} s) | {health_rate:,.0f} req/s | same run |"
    )
    for row in rows:
        print(row, file=sys.stderr)
    return rows


def bench_evm(quick: bool) -> list[str]:
    """EVM anchoring under load on anvil with `--block-time 2` (a block every 2 s, like Base):
    anvil (from node_modules), a moto server (STS) and `agentkeys-broker serve --skip-startup-check`
    as subprocesses, `BROKER_AUDIT_ANCHORS=sqlite,evm`, `BROKER_AUDIT_POLICY=dual_strict` (a mint is
    answered only once SQLite and the chain both confirm its `MintAuthorized`), self-mints, rate limits
    raised. The contract is deployed and the fee-payer keystore written as `start_dev_chain` does
    (copied here: that helper starts an automining anvil). N clients (200; quick: 50), each with its own
    wallet, session and pre-signed bodies, send a bounded number of mints with httpx.AsyncClient. The
    anchor's batches are then read from its state file (`evm_batches`, read-only) and checked against
    the contract. The unbatched reference is the gas of `anchor()` for one record, measured on the same
    anvil on a second deployed contract (several one-record anchors in a row). Returns the rows of the
    "EVM anchoring (anvil, dual_strict)" section."""
    import asyncio
    import signal
    import sqlite3

    import httpx

    from anchors import chain_tools, merkle
    from anchors.dev_chain import Anvil
    from anchors.evm import check_contiguity, read_chain_batches
    from anchors.evm_keys import write_keystore
    from api.moto_server import MotoServer, bootstrap_dev_aws, dev_broker_env
    from tests.support import Wallet, broker_env, free_port, signed_mint_body

    clients = 50 if quick else 200
    total = 100 if quick else 400  # mints in the timed part (bounded)
    load_limit = 12.0 if quick else 25.0  # no new request after this many seconds of load
    confirmations, batch_wait_ms, block_time = 1, 2000, 2  # BROKER_EVM_BATCH_MAX_WAIT_MS default
    n_ref = 4  # one-record anchor() calls on the reference contract
    rows: list[str] = []

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")

    with tempfile.TemporaryDirectory() as d:
        dp = Path(d)
        node: Anvil | None = None
        moto: MotoServer | None = None
        proc: subprocess.Popen | None = None
        log = open(dp / "serve.log", "wb")
        try:
            t_section = time.perf_counter()
            node = Anvil("--block-time", str(block_time)).start()
            moto = MotoServer.start(log_path=dp / "moto.log")
            aws = bootstrap_dev_aws(moto.endpoint)
            w3 = node.web3()

            # as start_dev_chain: fee-payer keystore (anvil account 0) and an AuditAnchor it submits to
            password_file, keystore = dp / "fee-payer.password", dp / "fee-payer.keystore.json"
            fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(os.urandom(16).hex())
            fee_payer_key = node.private_keys[0]
            write_keystore(keystore, password_file.read_text().strip(), fee_payer_key, kdf="pbkdf2", iterations=1000)
            # the reference contract (deployer and submitter: anvil account 1) goes in the same block
            ref_acct = node.accounts[1]
            factory = w3.eth.contract(abi=chain_tools.abi(), bytecode=chain_tools.bytecode())
            ref_deploy_tx = chain_tools.send_transaction(w3, ref_acct, factory.constructor(ref_acct.address, 1), wait=False)
            deployment = chain_tools.deploy(w3, fee_payer_key, node.accounts[0].address)
            ref_receipt = w3.eth.wait_for_transaction_receipt(ref_deploy_tx, timeout=30, poll_latency=0.05)
            assert ref_receipt["status"] == 1, ref_receipt
            ref = chain_tools.contract_at(w3, ref_receipt["contractAddress"])
            # one anchor() per record, as an unbatched anchor would send: seqs 1, 2, ... one tx each
            # (explicit nonces and gas, sent now, mined in the next blocks while the broker starts)
            ref_nonce = w3.eth.get_transaction_count(ref_acct.address, "pending")
            ref_txs = []
            for i in range(n_ref):
                h = hashlib.sha256(b"reference record %d" % (i + 1)).hexdigest()
                root = merkle.root(merkle.leaves_from_record_hashes([h]))
                ref_txs.append(chain_tools.send_transaction(
                    w3, ref_acct, ref.functions.anchor(root, i + 1, i + 1, bytes.fromhex(h)),
                    nonce=ref_nonce + i, gas=300_000, wait=False))

            port = free_port()
            url = f"http://127.0.0.1:{port}"
            evm_state = dp / "evm-anchor.sqlite"
            env = {**os.environ, **broker_env(dp, **dev_broker_env(aws),
                                              BROKER_AUDIT_ANCHORS="sqlite,evm",
                                              BROKER_AUDIT_POLICY="dual_strict",
                                              BROKER_GRANTS_REQUIRED="false",
                                              BROKER_ANCHOR_DEADLINE_MS="30000",
                                              BROKER_RATE_LIMIT_MINTS_PER_HOUR_PER_OMNI="1000000",
                                              BROKER_RATE_LIMIT_CHALLENGES_PER_HOUR_PER_IP="1000000",
                                              BROKER_RATE_LIMIT_FAILED_VERIFIES_PER_HOUR_PER_IP="1000000",
                                              BROKER_EVM_RPC_URL=node.rpc_url,
                                              BROKER_EVM_CHAIN_ID=str(node.chain_id),
                                              BROKER_EVM_CONTRACT_ADDRESS=deployment.address,
                                              BROKER_EVM_FEE_PAYER_KEYSTORE=str(keystore),
                                              BROKER_EVM_FEE_PAYER_PASSWORD_FILE=str(password_file),
                                              BROKER_EVM_CONFIRMATIONS=str(confirmations),
                                              BROKER_EVM_BATCH_MAX_WAIT_MS=str(batch_wait_ms),
                                              BROKER_EVM_STATE_DB=str(evm_state))}
            env["BROKER_LOG_LEVEL"] = "WARNING"
            cli = Path(sys.executable).parent / "agentkeys-broker"
            proc = subprocess.Popen([str(cli), "serve", "--port", str(port), "--skip-startup-check"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=log)
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("broker did not start: " + (dp / "serve.log").read_text()[-2000:])
                time.sleep(0.05)

            wallets = [Wallet() for _ in range(clients)]
            per_client = total // clients

            async def setup() -> list[str]:
                """Sign every wallet in at once (each answer waits for the chain too), then one
                warm-up mint per 16 wallets (STS client, anchors)."""
                limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
                async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
                    async def one(w: Wallet) -> str:
                        r = await c.post("/v1/auth/wallet/start", json={"address": w.address, "chain_id": 84532})
                        assert r.status_code == 200, r.text
                        ch = r.json()
                        r = await c.post("/v1/auth/wallet/verify",
                                         json={"request_id": ch["request_id"], "signature": w.sign(ch["siwe_message"])})
                        assert r.status_code == 200 and sorted(r.json()["anchored"]) == ["evm", "sqlite"], r.text
                        return r.json()["session_jwt"]

                    jwts = list(await asyncio.gather(*[one(w) for w in wallets]))

                    async def warm(i: int) -> None:
                        r = await c.post("/v1/mint-aws-creds", json=signed_mint_body(wallets[i]),
                                         headers={"Authorization": f"Bearer {jwts[i]}"})
                        assert r.status_code == 200, r.text

                    await asyncio.gather(*[warm(i) for i in range(0, clients, 16)])
                return jwts

            t0 = time.perf_counter()
            sessions = asyncio.run(setup())
            setup_s = time.perf_counter() - t0
            # pre-signed outside the timed part; issued_at is fresh (well inside the 300 s skew)
            bodies = [[msgspec.json.encode(signed_mint_body(wallets[i])) for _ in range(per_client)]
                      for i in range(clients)]

            transport_errors: list[str] = []

            async def load() -> tuple[list[float], list[int], float]:
                latencies: list[float] = []
                seqs: list[int] = []
                stop_at = [0.0]

                async def worker(client: httpx.AsyncClient, i: int) -> None:
                    headers = {"Authorization": f"Bearer {sessions[i]}", "content-type": "application/json"}
                    for body in bodies[i]:
                        if time.perf_counter() >= stop_at[0]:
                            return
                        ts = time.perf_counter()
                        try:
                            r = await client.post("/v1/mint-aws-creds", content=body, headers=headers)
                        except httpx.TransportError as exc:  # counted and reported, never hidden
                            transport_errors.append(f"{type(exc).__name__}: {exc}")
                            continue
                        assert r.status_code == 200 and sorted(r.json()["anchored"]) == ["evm", "sqlite"], r.text
                        latencies.append(time.perf_counter() - ts)
                        seqs.append(int(r.json()["seq"]))

                limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
                async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
                    await asyncio.gather(*[client.get("/healthz") for _ in range(clients)])  # open connections
                    ts = time.perf_counter()
                    stop_at[0] = ts + load_limit
                    await asyncio.gather(*[worker(client, i) for i in range(clients)])
                    return sorted(latencies), seqs, time.perf_counter() - ts

            latencies, seqs, load_s = asyncio.run(load())
            if transport_errors:
                print(f"bench_evm: {len(transport_errors)} mint requests failed in transport "
                      f"(first: {transport_errors[0]}); broker log tail:\n"
                      + (dp / "serve.log").read_text()[-3000:], file=sys.stderr)

            # the anchor's batches, from its state file (read-only; the broker still runs)
            con = sqlite3.connect(f"{evm_state.resolve().as_uri()}?mode=ro", uri=True)
            try:
                batches = con.execute("SELECT first_seq, last_seq, status, tx_hash, block_number, gas_used "
                                      "FROM evm_batches ORDER BY first_seq").fetchall()
            finally:
                con.close()
            on_chain = read_chain_batches(deployment.contract)
            assert check_contiguity(on_chain) == [], check_contiguity(on_chain)
            mined = [b for b in batches if b[4] is not None]
            assert [(b[0], b[1]) for b in mined] == [(b.first_seq, b.last_seq) for b in on_chain][:len(mined)]
            gas = {}
            for first, _last, _status, tx_hash, _block, gas_used in mined:
                if gas_used is None:  # not yet recorded: the receipt has it
                    gas_used = int(w3.eth.get_transaction_receipt(tx_hash)["gasUsed"])
                gas[first] = int(gas_used)
            ref_gas = []
            for tx in ref_txs:
                r = w3.eth.wait_for_transaction_receipt(tx, timeout=30, poll_latency=0.05)
                assert r["status"] == 1, r
                ref_gas.append(int(r["gasUsed"]))
            section_s = time.perf_counter() - t_section
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.close()
            if moto is not None:
                moto.stop()
            if node is not None:
                node.stop()

    # every batch mined in the run (sign-ins, warm-up and load) vs the batches holding the load's mints
    all_records = sum(last - first + 1 for first, last, *_ in mined)
    all_gas = sum(gas.values())
    lo, hi = min(seqs), max(seqs)
    load_batches = [b for b in mined if b[1] >= lo and b[0] <= hi]
    load_records = sum(b[1] - b[0] + 1 for b in load_batches)
    load_gas = sum(gas[b[0]] for b in load_batches)
    sizes = [b[1] - b[0] + 1 for b in load_batches]
    blocks = [b[4] for b in load_batches]
    span = max(blocks) - min(blocks) + 1
    per_event = load_gas / load_records
    ref_gas_one = statistics.median(ref_gas)
    ratio = ref_gas_one / per_event
    n = len(latencies)
    settings = (f"`--block-time {block_time}`, `BROKER_EVM_CONFIRMATIONS={confirmations}`, "
                f"`BROKER_EVM_BATCH_MAX_WAIT_MS={batch_wait_ms}`")
    rows.append(f"| mints under `dual_strict` (SQLite + EVM confirm before the answer), {clients} concurrent clients "
                f"| **{n / load_s:,.1f} mints/s** | {n:,} mints in {load_s:.1f} s; {settings} |")
    if transport_errors:
        rows.append(f"| mint requests that failed in transport (connection closed by the server) | {len(transport_errors)} "
                    "| not counted in the figures below; see the run's stderr |")
    rows.append(f"| release latency (request -> answer, incl. STS and 1 confirmation) | **p50 {pct(latencies, 0.5):,.0f} ms, "
                f"p99 {pct(latencies, 0.99):,.0f} ms** | same {n:,} mints |")
    rows.append(f"| records per anchor batch during the load | mean {statistics.mean(sizes):.1f}, max {max(sizes)} "
                f"| {len(load_batches)} batches; a record is one ledger event, {load_records / n:.1f} per mint |")
    rows.append(f"| mints per block during the load | **{n / span:.1f} mints per block** ({load_records / span:.1f} records "
                f"anchored per block) | blocks {min(blocks)}..{max(blocks)}: {span} blocks, {len(blocks)} with a batch "
                f"(at most one batch in flight) |")
    rows.append(
        f"| gas per anchored event, batched (anchor-tx gas / records, batches of the load) | **{per_event:,.0f} gas** "
        f"| {load_gas:,} gas / {load_records:,} records ({load_gas / n:,.0f} gas per mint); whole run "
        f"{all_gas / all_records:,.0f} gas/event "
        f"({all_gas:,} / {all_records:,}, {len(mined)} batches incl. sign-ins) |"
    )
    rows.append(f"| gas of one `anchor()` per event (one-record batch, same anvil, second contract) | {ref_gas_one:,.0f} gas "
                f"| median of {n_ref} one-record anchors in a row ({', '.join(f'{g:,}' for g in ref_gas)}) |")
    verdict = "meets" if ratio >= 100 else "misses"
    rows.append(f"| gas saved by batching (unbatched / batched per event) | **{ratio:,.0f}x** | target >= 100x at 200 "
                f"clients: {verdict} it{' (quick run: ' + str(clients) + ' clients)' if quick else ''}; "
                f"sign-ins and warm-up {setup_s:.1f} s, whole section {section_s:.1f} s |")
    for row in rows:
        print(row, file=sys.stderr)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    args = ap.parse_args()
    quick = args.quick
    rows: list[str] = []
    started = datetime.now(UTC)

    # 1. group commit vs one transaction per append, same run
    threads, per = (16, 50) if quick else (32, 200)
    grouped = statistics.median(bench_appends(threads, per, 256) for _ in range(3))
    single = statistics.median(bench_appends(threads, per, 1) for _ in range(3))
    rows.append(
        f"| ledger append, {threads} concurrent writers, group commit (batch_max=256) | **{grouped:,.0f} events/s** | median "
        f"of 3 |"
    )
    rows.append(
        f"| ledger append, {threads} concurrent writers, one transaction per append (batch_max=1) | **{single:,.0f} "
        f"events/s** | median of 3 |"
    )
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
    rows.append(
        f"| `audit verify --export` on {n:,} events (whole command, incl. start-up and parsing) | **{verify_rate:,.0f} "
        f"events/s** ({dt:.2f} s) | one run |"
    )
    rows.append(f"| plain `hashlib.sha256` over the same records' canonical bytes | {sha_rate:,.0f} records/s | same run |")
    rows.append(f"| verify cost relative to bare hashing | {sha_rate / verify_rate:.1f}x | same run |")
    print(rows[-3], file=sys.stderr)

    # 3. projection rebuild throughput (wallets)
    m = 10_000 if quick else 50_000
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "ledger.sqlite"
        led = Ledger(LedgerConfig(db))
        futures = [
            led.submit(uuid.uuid4(), 0, [WalletBound(omni_account=f"{i % 997:064x}", address=f"0x{i:040x}", role="master")])
            for i in range(m)
        ]
        for f in futures:
            f.result()
        led.close()
        cli = Path(sys.executable).parent / "agentkeys-broker"
        t0 = time.perf_counter()
        out = subprocess.run([str(cli), "projections", "rebuild", "wallets", "--db", str(db)], capture_output=True, text=True)
        dt = time.perf_counter() - t0
        assert out.returncode == 0, out.stderr
    rows.append(
        f"| `projections rebuild wallets` from a {m:,}-event ledger (whole command) | **{m / dt:,.0f} events/s** ({dt:.2f} s) "
        f"| one run |"
    )
    print(rows[-1], file=sys.stderr)

    # 4. sign-in (SIWE) over real HTTP
    signin_rows = bench_sign_in(quick)

    # 5. mint over real HTTP, moto STS
    mint_rows = bench_mint(quick)

    # 6. EVM anchoring under load on anvil (--block-time 2), dual_strict
    evm_rows = bench_evm(quick)

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
        "## Sign-in (SIWE)",
        "",
        "`agentkeys-broker serve` (uvicorn, one process) run as a subprocess on loopback, default ledger and",
        "SQLite-anchor settings; the client (httpx.AsyncClient, 64 pre-created wallets, one event loop) runs on",
        "the same machine and signs each challenge itself, so client CPU competes with the broker for cores.",
        "",
        "| what | result | runs |",
        "|---|---|---|",
        *signin_rows,
        "",
        "## Mint (SQLite anchor, moto STS)",
        "",
        "`agentkeys-broker serve` and a moto server (STS) run as subprocesses on loopback; SQLite anchor,",
        "`BROKER_GRANTS_REQUIRED=false` (self-mints), rate limits raised. Each client has its own wallet, session",
        "and pre-signed bodies (signing is outside the timed part). moto answers `AssumeRole` from a Python",
        "process on the same machine, so STS latency here is not AWS's; the overhead row subtracts it.",
        "",
        "| what | result | runs |",
        "|---|---|---|",
        *mint_rows,
        "",
        "## EVM anchoring (anvil, dual_strict)",
        "",
        "anvil with `--block-time 2` (a block every 2 s, like Base), a moto server (STS) and `agentkeys-broker serve`",
        "run as subprocesses on loopback; `BROKER_AUDIT_ANCHORS=sqlite,evm`, `BROKER_AUDIT_POLICY=dual_strict`: a mint",
        "is answered only once its `MintAuthorized` is confirmed by SQLite and on chain (1 confirmation). The EVM",
        "anchor sends one `anchor()` per batch and at most one batch in flight, so a batch lands in each block.",
        "Every client has its own wallet, session and pre-signed bodies; batches and gas come from the anchor's",
        "state file, checked against the contract. The unbatched reference is one `anchor()` per record on a",
        "second contract on the same node. Target: >= 100x less gas per event than unbatched at 200 clients.",
        "",
        "| what | result | runs |",
        "|---|---|---|",
        *evm_rows,
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
