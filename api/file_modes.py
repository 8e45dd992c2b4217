"""Private files: the state directory 0700, every file the broker creates 0600 (issue 11).

The ledger, anchors, read models, leases, spill, key files, EVM state and `dev.json` hold who minted
what and the keys that vouch for it: nobody but the broker's own user has any business reading them.

Two mechanisms, both at entry points:
- `set_private_umask()` (the console script's `main`): every file and directory this process and its
  children (anvil, moto under `dev`) create is born 0600 / 0700, SQLite's `-wal`/`-shm` included;
- `secure_state(config)` (`serve`, `dev`, after the stores are open): the data directory is made
  0700 and the broker's existing files 0600, so a state directory from an older version (or created
  under a loose umask) is tightened, with one warning naming what changed.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("agentkeys.files")

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600
_SQLITE_SIDECARS = ("", "-wal", "-shm", "-journal", ".lock")


def set_private_umask() -> int:
    """Files and directories created from now on are private to this user; returns the old umask."""
    return os.umask(PRIVATE_UMASK)


def tighten(path: Path, mode: int) -> bool:
    """chmod `path` to `mode` when group/other have any access; True when it changed. Symlinks and
    files of other users are left alone (never follow a link into someone else's file)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid() or not st.st_mode & 0o077:
        return False
    os.chmod(path, mode)
    return True


def state_files(config: Any) -> Iterable[Path]:
    """Every file of the broker's state that may exist (SQLite files with their sidecars) and every
    entry directly in the data directory."""
    dbs = [config.ledger_db, config.anchor_db, config.projections_db]
    evm = getattr(config, "evm", None)
    if evm is not None and getattr(evm, "state_path", None) is not None:
        dbs.append(evm.state_path)
    for db in dbs:
        for suffix in _SQLITE_SIDECARS:
            yield Path(str(db) + suffix)
    data_dir = Path(config.data_dir)
    # everything else the broker keeps directly in its data directory (keys, leases, spill, dev's
    # files); one level only: a data directory pointed at a shared tree is not walked
    if data_dir.is_dir():
        yield from sorted(data_dir.iterdir())


def secure_state(config: Any) -> list[str]:
    """Make the data directory 0700 and the broker's files 0600; returns what was changed."""
    changed: list[str] = []
    data_dir = Path(config.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    if tighten(data_dir, DIR_MODE):
        changed.append(str(data_dir))
    seen: set[Path] = set()
    for path in state_files(config):
        if path in seen:
            continue
        seen.add(path)
        try:
            if tighten(path, DIR_MODE if path.is_dir() and not path.is_symlink() else FILE_MODE):
                changed.append(str(path))
        except OSError as exc:  # e.g. a read-only mount: the broker still runs, the operator is told
            log.warning("could not make %s private (0600): %s", path, exc.strerror)
    if changed:
        log.warning("tightened group/other access to the broker's state (dir 0700, files 0600): %s",
                    ", ".join(changed))
    return changed
