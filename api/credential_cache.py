"""The credential cache behind `agentkeys-broker creds` and `exec` (design §8 "Files and commands").

`${XDG_CACHE_HOME:-~/.cache}/agentkeys/` (mode 0700) holds, per (broker, wallet, agent, service,
scope), `creds-<key>.json` (mode 0600: the minted credentials and their audit seq) next to
`creds-<key>.lock`, and per (broker, wallet) `session-<key>.json` (the session JWT, 0600), so that
the AWS CLI calling `credential_process` for every command costs one mint per credential lifetime
and one sign-in per session lifetime.

Concurrency: a fresh entry is read without a lock (files are replaced atomically). A stale or
missing one is refreshed under an exclusive `flock` on the entry's lock file, and re-read after the
lock is taken, so five AWS CLI calls starting together cost one mint: the first mints, the other
four find its result.

"Fresh" means more than `MIN_REMAINING_S` (11 minutes) before expiry: AWS SDKs refresh credentials
15 minutes ahead and refuse ones within 10 minutes of expiry after a refresh, so handing them less
would make them call again at once or fail.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from .client import AwsCredentials, write_private_json

MIN_REMAINING_S = 11 * 60


def cache_dir(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(base).expanduser() / "agentkeys"


def _key(*parts: str) -> str:
    return hashlib.sha256(json.dumps(list(parts)).encode()).hexdigest()[:32]


class CredentialCache:
    def __init__(self, directory: Path, *, clock: Callable[[], float] = time.time,
                 min_remaining_s: int = MIN_REMAINING_S) -> None:
        self.directory = directory
        self.clock = clock
        self.min_remaining_s = min_remaining_s

    def _ensure_dir(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        mode = self.directory.stat().st_mode & 0o777
        if mode & 0o077:
            os.chmod(self.directory, 0o700)

    def session_file(self, url: str, wallet: str) -> Path:
        return self.directory / f"session-{_key(url, wallet.lower())}.json"

    def entry(self, url: str, wallet: str, agent_id: str, service: str, scope: str) -> Path:
        return self.directory / f"creds-{_key(url, wallet.lower(), agent_id, service, scope)}.json"

    def read(self, path: Path) -> AwsCredentials | None:
        """The entry when it is still fresh, else None (missing, unreadable, or too close to expiry)."""
        try:
            doc = json.loads(path.read_text())
            creds = AwsCredentials.from_wire(doc)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if creds.expires - self.clock() <= self.min_remaining_s:
            return None
        return creds

    def get(self, path: Path, mint: Callable[[], AwsCredentials]) -> tuple[AwsCredentials, bool]:
        """(credentials, minted): the cached ones while fresh, else `mint()` under the entry's lock."""
        cached = self.read(path)
        if cached is not None:
            return cached, False
        self._ensure_dir()
        lock_path = path.with_suffix(".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            cached = self.read(path)  # another process may have minted while we waited
            if cached is not None:
                return cached, False
            creds = mint()
            write_private_json(path, creds.to_json())
            return creds, True
        finally:
            os.close(fd)  # closing releases the flock

    def forget(self, path: Path) -> None:
        path.unlink(missing_ok=True)
