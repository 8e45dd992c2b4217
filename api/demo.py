"""`agentkeys-broker demo`: the first run, end to end, against `agentkeys-broker dev`.

Creates a master and a daemon wallet (key files under `<state dir>/demo/<time>/`), signs both in,
lets the master grant the daemon `s3` under the master's own namespace
(`<bucket>/<master omni_account>/demo/`), mints as the daemon, lists and writes an S3 object on the
local moto with the minted credentials, exports the ledger and verifies it offline with the
auditor's commands (hash chain, SQLite anchor, the EVM anchor's batches on anvil), and checks the
mint's proof bundle against the chain. One progress line per step, with the ledger record's seq.
Exit 0 when every step passed; 1 when a step failed (the line says which and why); 2 when there is
no broker to talk to.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ledger.errors import CommandError

AGENT_ID = "demo-agent"
STEPS = 9


class _Failed(Exception):
    pass


class _Demo:
    def __init__(self, url: str, issuer: str | None, info: dict[str, Any] | None, state_dir: Path) -> None:
        self.url, self.issuer, self.info = url, issuer, info
        self.state_dir = state_dir
        self.step = 0
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.work = state_dir / "demo" / stamp
        self.ledger_db = info.get("ledger_db") if info else None

    def line(self, text: str) -> None:
        self.step += 1
        print(f"[{self.step:>2}/{STEPS}] {text}", flush=True)

    def skip(self, text: str) -> None:
        self.line(f"skipped: {text}")

    def seq_of(self, event_type: str, **match: Any) -> str:
        """The seq of the newest record of `event_type` whose data has `match`, read from the ledger
        file read-only (the auditor's reader); '?' without a local ledger."""
        if not self.ledger_db:
            return "?"
        from ledger.audit import DatabaseReader

        found = "?"
        with DatabaseReader(self.ledger_db) as reader:
            for record in reader:
                if record.type != event_type:
                    continue
                data = json.loads(bytes(record.data))
                if all(data.get(k) == v for k, v in match.items()):
                    found = str(record.seq)
        return found

    def auditor(self, *args: str) -> subprocess.CompletedProcess:
        """An auditor's command, run as the auditor would (its own process, read-only)."""
        out = subprocess.run([sys.executable, "-m", "workers.cli", *args], capture_output=True, text=True, timeout=300)  # noqa: S603  fixed argv built by this module, no shell
        if out.returncode != 0:
            detail = (out.stdout + out.stderr).strip().splitlines()
            raise _Failed(f"`agentkeys-broker {' '.join(args[:2])}` exited {out.returncode}: "
                          f"{detail[-1] if detail else ''}")
        return out

    def run(self) -> int:
        from .client import BrokerClient, new_key_file

        self.work.mkdir(parents=True, exist_ok=True, mode=0o700)
        client_kw: dict[str, Any] = {"issuer": self.issuer}

        from eth_account import Account

        with BrokerClient(self.url, Account.create(), **client_kw) as anonymous:
            head = anonymous.audit_head()
        where = f"dev state {self.state_dir}" if self.info else "no dev.json: S3 and offline audit steps are skipped"
        self.line(f"broker {self.url} answers; ledger head seq {head['seq']} ({where})")

        master_acct = new_key_file(self.work / "master.key")
        daemon_acct = new_key_file(self.work / "daemon.key")
        master = BrokerClient(self.url, master_acct, **client_kw)
        daemon = BrokerClient(self.url, daemon_acct, **client_kw)
        try:
            ms = master.sign_in()
            omni = ms.omni_account
            self.line(f"master wallet {ms.wallet_address} signed in: omni_account {omni} "
                      f"(SessionIssued seq {ms.seq})")
            ds = daemon.sign_in()
            self.line(f"daemon wallet {ds.wallet_address} signed in (SessionIssued seq {ds.seq})")

            bucket = (self.info or {}).get("aws", {}).get("bucket") or "agentkeys-dev"
            grant_scope = f"{bucket}/{omni}/demo/"
            grant = master.grant(ds.wallet_address, "s3", grant_scope, expires_in=3600, max_uses=10)
            self.line(f"master granted {grant.grant_id}: the daemon may mint s3 under {grant_scope} for 1 h, "
                      f"{grant.max_uses} uses (GrantCreated seq {self.seq_of('GrantCreated', grant_id=grant.grant_id)})")

            scope = f"{grant_scope}{AGENT_ID}/"
            creds = daemon.mint_aws(AGENT_ID, "s3", scope)
            self.line(f"daemon minted {creds.access_key_id} for {AGENT_ID} under {scope}, valid until "
                      f"{creds.expiration_iso} (MintAuthorized seq {creds.seq}, released after "
                      f"{' + '.join(creds.anchored)} confirmed it)")

            self.s3_step(creds, bucket, f"{omni}/demo/{AGENT_ID}/")
            self.audit_steps()
            self.proof_step(daemon, creds.seq)
        except _Failed as exc:
            print(f"[{self.step + 1:>2}/{STEPS}] FAILED: {exc}", flush=True)
            return 1
        finally:
            master.close()
            daemon.close()
        self.next_steps(scope)
        return 0

    def s3_step(self, creds: Any, bucket: str, prefix: str) -> None:
        aws = (self.info or {}).get("aws") or {}
        endpoint = aws.get("sts_endpoint")
        if not endpoint:
            self.skip("S3 write: no local AWS in dev.json")
            return
        import boto3
        from botocore.config import Config

        s3 = boto3.client("s3", endpoint_url=endpoint, region_name=aws.get("region", "us-east-1"),
                          aws_access_key_id=creds.access_key_id, aws_secret_access_key=creds.secret_access_key,
                          aws_session_token=creds.session_token,
                          config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 2}))
        key = f"{prefix}hello.txt"
        body = f"hello from {AGENT_ID} at {datetime.now(UTC).isoformat()}\n".encode()
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        read = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        if read != body or key not in [o["Key"] for o in listed]:
            raise _Failed(f"S3 did not return s3://{bucket}/{key} as written")
        self.line(f"with the minted credentials: wrote s3://{bucket}/{key}, listed {len(listed)} object(s) "
                  f"under {prefix}, read it back (moto at {endpoint})")

    def audit_steps(self) -> None:
        info = self.info or {}
        if not info.get("ledger_db"):
            self.skip("ledger export: no local ledger in dev.json")
            self.skip("offline verification: no local ledger in dev.json")
            return
        export = self.work / "ledger.jsonl"
        self.auditor("audit", "export", "--db", info["ledger_db"], "--out", str(export))
        header = json.loads(export.read_text().split("\n", 1)[0])
        self.line(f"ledger exported to {export}: {header['records']} records, head seq {header['head']['seq']} "
                  "(agentkeys-broker audit export)")
        args = ["audit", "verify", "--export", str(export), "--json"]
        if info.get("anchor_db"):
            args += ["--anchor-db", info["anchor_db"]]
        if info.get("rpc_url") and info.get("contract_address"):
            args += ["--rpc", info["rpc_url"], "--contract", info["contract_address"]]
        out = self.auditor(*args)
        report = json.loads(out.stdout)
        if not report.get("valid"):
            raise _Failed(f"audit verify found {len(report.get('findings') or [])} problem(s): {report.get('findings')}")
        chain = report.get("chain") or {}
        on_chain = (f", the chain's batches on {chain.get('chain_id')} recomputed up to seq "
                    f"{chain.get('anchored_upto')}" if chain else "")
        self.line(f"ledger verified offline: {report.get('records')} records, every hash and link, the SQLite "
                  f"anchor{on_chain}; head seq {(report.get('head') or {}).get('seq')} (agentkeys-broker audit verify)")

    def proof_step(self, daemon: Any, seq: int) -> None:
        info = self.info or {}
        from .client import BrokerError

        deadline = time.monotonic() + 60
        while True:
            try:
                bundle = daemon.proof_bundle(seq)
                if bundle.get("proof") or not info.get("rpc_url"):
                    break
            except BrokerError as exc:
                if exc.status != 404:
                    raise _Failed(f"proof bundle of seq {seq}: {exc}") from None
            if time.monotonic() > deadline:
                raise _Failed(f"the proof bundle of seq {seq} is not available after 60 s (its EVM batch is not "
                              "confirmed; see /readyz)")
            time.sleep(0.5)
        path = self.work / f"mint-{seq}.proof.json"
        path.write_text(json.dumps(bundle, indent=2) + "\n")
        if info.get("rpc_url") and info.get("contract_address"):
            out = self.auditor("audit", "verify-proof", str(path), "--rpc", info["rpc_url"],
                               "--contract", info["contract_address"], "--json")
            result = json.loads(out.stdout)
            batch = result.get("batch") or {}
            self.line(f"proof of the mint (seq {seq}) verified against chain {result['chain']['chain_id']}: leaf "
                      f"{seq - batch.get('first_seq', seq)} of the batch {batch.get('first_seq')}..{batch.get('last_seq')}"
                      f" in block {batch.get('block_number')} of {batch.get('contract')} "
                      f"(agentkeys-broker audit verify-proof {path.name})")
        else:
            self.auditor("audit", "verify-proof", str(path), "--offline", "--json")
            self.line(f"proof bundle of the mint (seq {seq}) checked offline only (no chain in dev.json)")

    def next_steps(self, scope: str) -> None:
        exe = "agentkeys-broker"
        keys = self.work
        state = f" --state-dir {self.state_dir}" if self.info else f" --url {self.url}"
        print("\nnext:\n"
              f"  {exe} grant list{state} --key-file {keys / 'master.key'}\n"
              f"  {exe} creds{state} --key-file {keys / 'daemon.key'} --agent-id {AGENT_ID} --service s3 "
              f"--scope {scope}\n"
              f"  (as an AWS profile: credential_process = {exe} creds ... ; see docs/daemon-guide.md)", flush=True)


def run_demo(*, url: str | None, state_dir: Path) -> int:
    from .client import BrokerError
    from .client_cli import resolve_broker

    state_dir = state_dir.expanduser().resolve()
    resolved, issuer, info = resolve_broker(url, state_dir)
    demo = _Demo(resolved, issuer, info, state_dir)
    try:
        return demo.run()
    except BrokerError as exc:
        print(f"[{demo.step + 1:>2}/{STEPS}] FAILED: {exc}", flush=True)
        if exc.temporary:
            raise CommandError("the broker is not ready; retry shortly (see /readyz)", 75) from None
        return 1

