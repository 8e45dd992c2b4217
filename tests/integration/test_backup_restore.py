"""`agentkeys-broker backup` / `restore` as real subprocesses against a broker that serves and mints
meanwhile (SQLite files, moto STS over boto3, real HTTP)."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from api.config import BrokerConfig
from api.runtime import Services
from tests.conftest import ROOT, cli_path
from tests.integration.test_mint import Broker, auth
from tests.support import LiveServer, Wallet, broker_env, sign_in, signed_mint_body
from tests.support_moto import sts_env

RAISED_LIMITS = {"BROKER_RATE_LIMIT_MINTS_PER_HOUR_PER_OMNI": "100000"}


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([cli_path(), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    return {**env, **extra}


def table_rows(db: Path) -> dict[str, list[tuple]]:
    """Every read-model table's rows, sorted (positions excluded: a rebuild's equal the rows)."""
    conn = sqlite3.connect(db)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {n: sorted(conn.execute(f'SELECT * FROM "{n}"').fetchall(), key=repr)  # noqa: S608  n is a table name read from sqlite_master
                for n in names if n != "projection_positions" and not n.startswith("sqlite_")}
    finally:
        conn.close()


def test_snapshot_taken_while_minting_restores_verifies_rebuilds_equal_and_serves(
        tmp_path: Path, dev_aws, subprocess_env) -> None:
    env = broker_env(tmp_path / "live", **sts_env(dev_aws), **RAISED_LIMITS)
    out = tmp_path / "snap"
    with LiveServer(Services.build(BrokerConfig.from_env(env))) as server:
        b = Broker(server)
        master, daemon = Wallet(), Wallet()
        master_jwt = b.session(master)
        b.grant(master_jwt, daemon, max_uses=10000)
        daemon_jwt = b.session(daemon)
        stop = threading.Event()
        minted: list[int] = []

        def mint_loop() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as c:
                while not stop.is_set():
                    r = c.post("/v1/mint-aws-creds", json=signed_mint_body(daemon), headers=auth(daemon_jwt))
                    assert r.status_code == 200, r.text
                    minted.append(r.json()["seq"])

        t = threading.Thread(target=mint_loop)
        t.start()
        try:
            while len(minted) < 3:
                stop.wait(0.05)
            done = cli("backup", "--out", str(out), "--include-keys", env=dict(subprocess_env, **env))
            before = len(minted)
            while len(minted) < before + 2:  # the broker kept minting during and after the snapshot
                stop.wait(0.05)
        finally:
            stop.set()
            t.join(60)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        live_head = server.services.ledger.head().seq
        b.client.close()

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "agentkeys-backup/1"
    assert {"ledger.sqlite", "anchor.sqlite", "projections.sqlite"} <= set(manifest["files"])
    assert set(manifest["keys"]) == {"keys/oidc-keypair.json", "keys/session-keypair.json"}
    assert 0 < manifest["head"]["seq"] < live_head  # records written after the snapshot are not in it
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for p in out.rglob("*"):
        if p.is_file():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p

    new = tmp_path / "restored"
    done = cli("restore", str(out), "--state-dir", str(new), env=clean_env())
    assert done.returncode == 0, done.stderr
    assert {"ledger.sqlite", "anchor.sqlite", "projections.sqlite", "oidc-keypair.json",
            "session-keypair.json"} <= {p.name for p in new.iterdir()}
    verify = cli("audit", "verify", "--db", str(new / "ledger.sqlite"), "--anchor-db", str(new / "anchor.sqlite"),
                 "--json", env=clean_env())
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    assert report["valid"] and report["head"]["seq"] == manifest["head"]["seq"]

    # the broker serves from the restored directory (its keys included: an old session still works)
    restored_env = dict(env, BROKER_DATA_DIR=str(new), BROKER_OIDC_KEYPAIR_PATH=str(new / "oidc-keypair.json"),
                        BROKER_SESSION_KEYPAIR_PATH=str(new / "session-keypair.json"))
    with LiveServer(Services.build(BrokerConfig.from_env(restored_env))) as server:
        assert server.services.config.ledger_db == new / "ledger.sqlite"
        with httpx.Client(base_url=server.url, timeout=60) as c:
            assert c.get("/readyz").status_code == 200
            r = c.post("/v1/mint-aws-creds", json=signed_mint_body(daemon), headers=auth(daemon_jwt))
            assert r.status_code == 200, r.text
            assert r.json()["seq"] > manifest["head"]["seq"]
            fresh = sign_in(c, Wallet())
            assert fresh["session_jwt"]
        head = server.services.ledger.head().seq
        assert server.services.projections.wait_until(head, timeout=30)
    # projections: the snapshot's, caught up by the broker from their stored position == rebuilt from seq 1
    rebuilt = tmp_path / "rebuilt.sqlite"
    done = cli("projections", "rebuild", "--db", str(new / "ledger.sqlite"), "--projections-db", str(rebuilt),
               env=clean_env())
    assert done.returncode == 0, done.stderr
    restored_rows = table_rows(new / "projections.sqlite")
    assert restored_rows == table_rows(rebuilt)
    assert any(restored_rows.values())


@pytest.fixture
def snapshot(tmp_path: Path, subprocess_env) -> tuple[Path, dict[str, str]]:
    """A small ledger with a SQLite anchor (a broker that signed two wallets in), backed up."""
    env = broker_env(tmp_path / "live")
    with LiveServer(Services.build(BrokerConfig.from_env(env))) as server:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            sign_in(c, Wallet())
            sign_in(c, Wallet())
    out = tmp_path / "snap"
    done = cli("backup", "--out", str(out), env=dict(subprocess_env, **env))
    assert done.returncode == 0, done.stderr
    return out, env


def test_backup_without_include_keys_copies_no_key(snapshot) -> None:
    out, _ = snapshot
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["keys"] == [] and not (out / "keys").exists()
    assert not any("keypair" in name for name in manifest["files"])


def test_backup_refuses_a_non_empty_out_directory(snapshot, subprocess_env) -> None:
    out, env = snapshot
    done = cli("backup", "--out", str(out), env=dict(subprocess_env, **env))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "not an empty directory" in done.stderr


def test_restore_refuses_to_overwrite_an_existing_state_dir(snapshot, tmp_path: Path) -> None:
    out, _ = snapshot
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "ledger.sqlite").write_bytes(b"precious")
    done = cli("restore", str(out), "--state-dir", str(existing), env=clean_env())
    assert done.returncode == 2, done.stderr
    assert "refusing to restore" in done.stderr and "Traceback" not in done.stderr
    assert (existing / "ledger.sqlite").read_bytes() == b"precious"


def test_tampered_snapshot_file_is_refused_and_nothing_is_written(snapshot, tmp_path: Path) -> None:
    out, _ = snapshot
    with open(out / "ledger.sqlite", "r+b") as f:
        f.seek(-100, os.SEEK_END)
        f.write(b"X")
    new = tmp_path / "new"
    done = cli("restore", str(out), "--state-dir", str(new), env=clean_env())
    assert done.returncode == 1, done.stderr
    assert "ledger.sqlite: SHA-256 differs" in done.stderr
    assert not new.exists() and not list(tmp_path.glob("new.restoring-*"))


def test_edited_record_with_a_rewritten_manifest_is_refused_by_the_chain_check(snapshot, tmp_path: Path) -> None:
    """An attacker who edits a record and fixes the manifest's hash still fails the chain check."""
    import hashlib

    out, _ = snapshot
    conn = sqlite3.connect(out / "ledger.sqlite")
    conn.execute("UPDATE ledger_records SET hash = ? WHERE seq = 2", ("ab" * 32,))
    conn.commit()
    conn.close()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["ledger.sqlite"] = hashlib.sha256((out / "ledger.sqlite").read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))
    new = tmp_path / "new"
    done = cli("restore", str(out), "--state-dir", str(new), env=clean_env())
    assert done.returncode == 1, done.stderr
    assert "does not verify" in done.stderr
    assert not new.exists()


def test_manifest_head_that_is_not_the_ledger_head_is_refused(snapshot, tmp_path: Path) -> None:
    out, _ = snapshot
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["head"]["seq"] += 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    done = cli("restore", str(out), "--state-dir", str(tmp_path / "new"), env=clean_env())
    assert done.returncode == 1 and "is not the manifest's" in done.stderr, done.stderr


def test_restore_of_a_directory_that_is_not_a_backup_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    done = cli("restore", str(tmp_path / "nothing"), "--state-dir", str(tmp_path / "new"), env=clean_env())
    assert done.returncode == 2 and "not a backup" in done.stderr
