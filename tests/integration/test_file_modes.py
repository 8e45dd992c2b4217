"""State directory 0700 and every file the broker creates 0600, as real processes (issue 11)."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import httpx

from tests.conftest import ROOT, cli_path
from tests.support import Wallet, broker_env, free_port, sign_in


def loose_modes(root: Path) -> list[str]:
    """Every directory under `root` that is not 0700 and every file that is not 0600."""
    found = []
    for dirpath, dirs, files in os.walk(root):
        for name in dirs:
            mode = stat.S_IMODE(os.lstat(Path(dirpath, name)).st_mode)
            if mode != 0o700:
                found.append(f"{Path(dirpath, name)} {oct(mode)}")
        for name in files:
            p = Path(dirpath, name)
            mode = stat.S_IMODE(os.lstat(p).st_mode)
            if not stat.S_ISLNK(os.lstat(p).st_mode) and mode != 0o600:
                found.append(f"{p} {oct(mode)}")
    mode = stat.S_IMODE(root.stat().st_mode)
    if mode != 0o700:
        found.append(f"{root} {oct(mode)}")
    return found


def test_other_local_users_cannot_read_the_ledger_after_serve(tmp_path: Path, subprocess_env) -> None:
    """A `serve` run under a permissive umask, over a data directory an older version left
    world-readable: afterwards the directory is 0700 and every file in it 0600 (ledger, anchor,
    projections, their -wal/-shm, leftovers)."""
    env = {**subprocess_env, **broker_env(tmp_path)}
    data = Path(env["BROKER_DATA_DIR"])
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    old = data / "left-by-an-older-version.txt"
    old.write_text("x")
    old.chmod(0o644)
    port = free_port()
    proc = subprocess.Popen([cli_path(), "serve", "--port", str(port), "--skip-startup-check"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.umask(0o022))  # the shell's usual umask
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            sign_in(client, Wallet())  # the ledger, the anchor and the read model are written
        assert loose_modes(data) == []
        assert {"ledger.sqlite", "anchor.sqlite", "projections.sqlite"} <= {p.name for p in data.iterdir()}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    err = proc.stderr.read() if proc.stderr else ""
    assert "tightened" in err and "left-by-an-older-version.txt" in err and "Traceback" not in err
    assert loose_modes(data) == []

