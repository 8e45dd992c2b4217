"""`agentkeys-broker backup` and `restore` (design §8 "Files and commands").

    agentkeys-broker backup --out DIR [--state-dir DIR] [--include-keys]
    agentkeys-broker restore DIR --state-dir NEW

`backup` takes a consistent snapshot while the broker runs (SQLite's online backup API: one read
transaction per file, writers are never blocked), in this order: the SQLite anchor, the EVM anchor's
state file, the dev chain's `anvil-state.json`, the projections, then the ledger. Everything an
anchor or a read model holds is therefore also in the ledger snapshot (a witness never runs ahead
of the ledger it witnesses; projections catch up from their stored position). `manifest.json`
(written last: a directory without one is not a backup) lists `format`, the ledger's `head{seq,
hash}`, `files{name: sha256}` and `keys` (the key files included, only with `--include-keys`).
The directory is written as `DIR.partial-<pid>` and renamed at the end; files 0600, directory 0700.

Without `--state-dir` the files are found as the server finds them (`BROKER_DATA_DIR`,
`BROKER_LEDGER_DB`, `BROKER_SQLITE_ANCHOR_DB`, `BROKER_PROJECTIONS_DB`, `BROKER_EVM_STATE_DB`, the
key and keystore variables); with it, under that directory with the default names (`dev`'s layout).

`restore` verifies before it writes: every file's SHA-256 against the manifest, the ledger's chain
(`audit verify` with the snapshot's SQLite anchor), its head against the manifest, the EVM state's
records against the ledger. Then it writes `ledger.sqlite`, `anchor.sqlite`, `projections.sqlite`,
`evm-anchor.sqlite` (and `anvil-state.json`, key files) into NEW, which must not exist or be empty:
it never overwrites a state directory. Exit 0 done, 1 the snapshot failed verification, 2 usage or
I/O error; one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ledger.errors import CommandError

FORMAT = "agentkeys-backup/1"
MANIFEST = "manifest.json"
EXIT_VALID, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2

#: snapshot order (anchors and read models before the ledger) and the names used in a backup and
#: in a restored state directory
SQLITE_FILES = ("anchor.sqlite", "evm-anchor.sqlite", "projections.sqlite", "ledger.sqlite")
ANVIL_STATE = "anvil-state.json"
#: key files: (name in the backup under keys/, the variable that points at it, default name in a state dir)
KEY_FILES = (
    ("oidc-keypair.json", "BROKER_OIDC_KEYPAIR_PATH"),
    ("session-keypair.json", "BROKER_SESSION_KEYPAIR_PATH"),
    ("fee-payer.keystore.json", "BROKER_EVM_FEE_PAYER_KEYSTORE"),
    ("fee-payer.password", "BROKER_EVM_FEE_PAYER_PASSWORD_FILE"),
    ("operator-token", "BROKER_OPERATOR_TOKEN_FILE"),
)
_ALLOWED = {*SQLITE_FILES, ANVIL_STATE, *(f"keys/{name}" for name, _ in KEY_FILES)}


def register(subparsers: Any) -> None:
    backup = subparsers.add_parser(
        "backup", help="consistent online snapshot of the ledger, anchors, projections (and keys)",
        description="Snapshot the broker's files while it runs: anchors first, then projections, then the "
                    "ledger; a manifest with SHA-256 of every file and the ledger head.")
    backup.add_argument("--out", required=True, type=Path, metavar="DIR", help="new directory for the snapshot")
    backup.add_argument("--state-dir", type=Path, metavar="DIR",
                        help="a state directory (dev's layout) instead of the BROKER_* paths")
    backup.add_argument("--include-keys", action="store_true",
                        help="also copy the signing keys, the fee-payer keystore and its password file")
    backup.set_defaults(handler=_backup)

    restore = subparsers.add_parser(
        "restore", help="verify a snapshot, then write it into a new state directory",
        description="Verify a snapshot made by `backup` (hashes, chain, head), then write it into a new state "
                    "directory. Never overwrites an existing one.")
    restore.add_argument("dir", type=Path, metavar="DIR", help="the snapshot directory")
    restore.add_argument("--state-dir", required=True, type=Path, metavar="NEW",
                         help="the state directory to create (must not exist, or be empty)")
    restore.set_defaults(handler=_restore)


# --- where the files are -----------------------------------------------------------------------


@dataclass
class StateFiles:
    """Source paths of one broker's files, by backup name (absent optional files are skipped)."""

    files: dict[str, Path] = field(default_factory=dict)
    keys: dict[str, Path] = field(default_factory=dict)


def state_files(env: Mapping[str, str], state_dir: Path | None) -> StateFiles:
    out = StateFiles()
    if state_dir is not None:
        base = state_dir.expanduser()
        for name in SQLITE_FILES:
            out.files[name] = base / name
        out.files[ANVIL_STATE] = base / ANVIL_STATE
        for name, _ in KEY_FILES:
            out.keys[name] = base / name
        return out
    raw_dir = env.get("BROKER_DATA_DIR") or ""
    if raw_dir:
        data_dir = Path(raw_dir).expanduser()
    else:
        data_dir = Path(env.get("HOME") or ".") / ".agentkeys" / "broker" / "data"

    def path(var: str, default_name: str) -> Path:
        raw = env.get(var) or ""
        return Path(raw).expanduser() if raw else data_dir / default_name

    out.files["anchor.sqlite"] = path("BROKER_SQLITE_ANCHOR_DB", "anchor.sqlite")
    out.files["evm-anchor.sqlite"] = path("BROKER_EVM_STATE_DB", "evm-anchor.sqlite")
    out.files["ledger.sqlite"] = path("BROKER_LEDGER_DB", "ledger.sqlite")
    projections = env.get("BROKER_PROJECTIONS_DB") or ""
    out.files["projections.sqlite"] = (Path(projections).expanduser() if projections
                                       else out.files["ledger.sqlite"].resolve().parent / "projections.sqlite")
    out.files[ANVIL_STATE] = data_dir / ANVIL_STATE
    for name, var in KEY_FILES:
        raw = env.get(var) or ""
        if raw:
            out.keys[name] = Path(raw).expanduser()
        elif name.endswith("-keypair.json"):
            out.keys[name] = data_dir / name
    return out


# --- helpers ---------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _create_private(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)


def _copy_private(src: Path, dst: Path) -> None:
    dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())


def snapshot_sqlite(src: Path, dst: Path) -> None:
    """A consistent copy of a live SQLite file (the online backup API, all pages in one step under
    one read transaction), left in rollback-journal mode so the snapshot is one self-contained file."""
    _create_private(dst)
    source = sqlite3.connect(f"{src.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        target = sqlite3.connect(dst)
        try:
            source.backup(target)
            target.execute("PRAGMA journal_mode=DELETE")
            target.commit()
        finally:
            target.close()
    finally:
        source.close()


def _snapshot_json(src: Path, dst: Path, attempts: int = 20) -> None:
    """anvil rewrites its state file every second: copy until a copy parses as JSON."""
    for _ in range(attempts):
        data = src.read_bytes()
        try:
            json.loads(data)
        except ValueError:
            time.sleep(0.1)
            continue
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return
    raise CommandError(f"cannot copy {src}: it never read as complete JSON (is something rewriting it?)")


def _ledger_head(path: Path) -> tuple[int, str]:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT seq, hash FROM ledger_head WHERE id = 1").fetchone()
    except sqlite3.Error as exc:
        raise CommandError(f"{path} is not an agentkeys ledger: {exc}") from None
    finally:
        conn.close()
    if row is None:
        raise CommandError(f"{path} is not an agentkeys ledger: no head row")
    return int(row[0]), str(row[1])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- backup ----------------------------------------------------------------------------------------


def backup(out: Path, files: StateFiles, *, include_keys: bool) -> dict[str, Any]:
    """Write the snapshot into the new directory `out`; returns the manifest."""
    out = out.expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CommandError(f"refusing to write the backup into {out}: it exists and is not an empty directory")
    ledger = files.files["ledger.sqlite"]
    if not ledger.is_file():
        raise CommandError(f"no ledger at {ledger} (set BROKER_DATA_DIR / BROKER_LEDGER_DB, or pass --state-dir)")
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    try:
        partial.mkdir(mode=0o700, parents=False)
    except FileNotFoundError:
        raise CommandError(f"cannot create {out}: its parent directory does not exist") from None
    except OSError as exc:
        raise CommandError(f"cannot create {partial}: {exc.strerror}") from None
    try:
        written: dict[str, str] = {}
        order = ["anchor.sqlite", "evm-anchor.sqlite", ANVIL_STATE, "projections.sqlite", "ledger.sqlite"]
        for name in order:
            src = files.files.get(name)
            if src is None or not src.is_file():
                continue
            dst = partial / name
            if name == ANVIL_STATE:
                _snapshot_json(src, dst)
            else:
                snapshot_sqlite(src, dst)
            written[name] = _sha256(dst)
        keys: list[str] = []
        if include_keys:
            for name, src in files.keys.items():
                if src.is_file():
                    _copy_private(src, partial / "keys" / name)
                    written[f"keys/{name}"] = _sha256(partial / "keys" / name)
                    keys.append(f"keys/{name}")
        seq, head_hash = _ledger_head(partial / "ledger.sqlite")
        manifest = {
            "format": FORMAT,
            "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "head": {"seq": seq, "hash": head_hash},
            "files": dict(sorted(written.items())),
            "keys": keys,
        }
        tmp = partial / (MANIFEST + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(manifest, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, partial / MANIFEST)
        _fsync_dir(partial)
        if out.exists():
            out.rmdir()
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return manifest


def _backup(args: argparse.Namespace) -> int:
    files = state_files(os.environ, args.state_dir)
    try:
        manifest = backup(args.out, files, include_keys=args.include_keys)
    except (OSError, sqlite3.Error) as exc:
        raise CommandError(f"backup failed: {exc}") from None
    head = manifest["head"]
    print(f"backup written to {args.out}: ledger head seq {head['seq']} hash {head['hash']}, "
          f"{len(manifest['files'])} files" + (f" ({len(manifest['keys'])} key files)" if manifest["keys"] else
                                               " (no keys: --include-keys to add them)"))
    return EXIT_VALID


# --- restore ---------------------------------------------------------------------------------------


class SnapshotInvalid(CommandError):
    """The snapshot failed verification (exit 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=EXIT_FINDINGS)


def read_manifest(snapshot: Path) -> dict[str, Any]:
    path = snapshot / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CommandError(f"{snapshot} is not a backup: no {MANIFEST}") from None
    except (OSError, ValueError) as exc:
        raise SnapshotInvalid(f"cannot read {path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SnapshotInvalid(f"{path}: not a {FORMAT} manifest")
    head, files = manifest.get("head"), manifest.get("files")
    if (not isinstance(head, dict) or type(head.get("seq")) is not int or not isinstance(head.get("hash"), str)
            or not isinstance(files, dict) or "ledger.sqlite" not in files):
        raise SnapshotInvalid(f"{path}: malformed manifest (head, files, ledger.sqlite)")
    for name, digest in files.items():
        if name not in _ALLOWED or not isinstance(digest, str):
            raise SnapshotInvalid(f"{path}: unexpected file entry {name!r}")
    return manifest


def verify_snapshot(directory: Path, manifest: dict[str, Any]) -> None:
    """Raise `SnapshotInvalid` unless every file matches its hash, the ledger's chain verifies with
    the snapshot's anchors and its head is the manifest's."""
    from ledger import audit

    for name, digest in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            raise SnapshotInvalid(f"{name}: listed in the manifest but missing")
        if _sha256(path) != digest:
            raise SnapshotInvalid(f"{name}: SHA-256 differs from the manifest (damaged or edited)")
    ledger = directory / "ledger.sqlite"
    anchor = directory / "anchor.sqlite"
    try:
        report = audit.verify_database(ledger, anchor_db=anchor if anchor.is_file() else None)
    except audit.AuditError as exc:
        raise SnapshotInvalid(f"ledger.sqlite: {exc}") from None
    if not report.valid:
        first = report.findings[0] if report.findings else None
        detail = f"seq {first.seq} {first.kind}: {first.detail}" if first else "invalid"
        raise SnapshotInvalid(f"ledger.sqlite does not verify ({len(report.findings)} finding(s); first: {detail})")
    head = _ledger_head(ledger)
    claimed = (manifest["head"]["seq"], manifest["head"]["hash"])
    if head != claimed:
        raise SnapshotInvalid(f"ledger.sqlite head {head} is not the manifest's {claimed}")
    evm = directory / "evm-anchor.sqlite"
    if evm.is_file():
        conn = sqlite3.connect(f"{ledger.resolve().as_uri()}?mode=ro", uri=True)
        try:
            conn.execute("ATTACH DATABASE ? AS e", (f"{evm.resolve().as_uri()}?mode=ro",))
            row = conn.execute(
                "SELECT MIN(x.seq) FROM e.evm_records x LEFT JOIN ledger_records r ON r.seq = x.seq "
                "WHERE r.hash IS NULL OR r.hash != x.hash").fetchone()
        except sqlite3.Error as exc:
            raise SnapshotInvalid(f"evm-anchor.sqlite: cannot read it: {exc}") from None
        finally:
            conn.close()
        if row[0] is not None:
            raise SnapshotInvalid(f"evm-anchor.sqlite: seq {row[0]} differs from the ledger (or is beyond its head)")


def restore(snapshot: Path, target: Path) -> dict[str, Any]:
    snapshot, target = snapshot.expanduser(), target.expanduser()
    if not snapshot.is_dir():
        raise CommandError(f"no backup directory at {snapshot}")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise CommandError(f"refusing to restore into {target}: it exists and is not empty "
                           f"(restore never overwrites a state directory; choose a new --state-dir)")
    manifest = read_manifest(snapshot)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"cannot create {target.parent}: {exc.strerror}") from None
    staging = target.with_name(f"{target.name}.restoring-{os.getpid()}")
    staging.mkdir(mode=0o700)
    try:
        inbox = staging / ".snapshot"
        inbox.mkdir(mode=0o700)
        for name in manifest["files"]:  # verify the copies: what is verified is what gets used
            src = snapshot / name
            if not src.is_file():
                raise SnapshotInvalid(f"{name}: listed in the manifest but missing")
            _copy_private(src, inbox / name)
        verify_snapshot(inbox, manifest)
        for name in manifest["files"]:
            final = staging / Path(name).name  # keys/<name> lands beside the databases (dev's layout)
            os.replace(inbox / name, final)
        shutil.rmtree(inbox)
        _fsync_dir(staging)
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _restore(args: argparse.Namespace) -> int:
    try:
        manifest = restore(args.dir, args.state_dir)
    except (OSError, sqlite3.Error) as exc:
        raise CommandError(f"restore failed: {exc}") from None
    head = manifest["head"]
    print(f"restored {args.dir} into {args.state_dir}: ledger head seq {head['seq']} hash {head['hash']}; "
          f"start the broker with BROKER_DATA_DIR={args.state_dir} (or dev --state-dir {args.state_dir})",
          file=sys.stdout)
    return EXIT_VALID


__all__ = ["FORMAT", "StateFiles", "backup", "read_manifest", "register", "restore", "snapshot_sqlite",
           "state_files", "verify_snapshot"]
