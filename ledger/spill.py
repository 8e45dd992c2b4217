"""The spill: a durable journal for credentials STS issued that the ledger could not record (design
§3a "Accounting", §8 "STS"; issue 12 item 3).

When the `MintAuthorized` append fails after AssumeRole returned (disk full, ledger unavailable),
the mint use case writes the credential's *key id* (never the secret) and STS session name here,
then answers the client that a credential was issued but not released. `recover()` turns every
entry into `MintUnreleased{ledger_write_failed}` once the ledger takes writes again (at start-up,
before the outcome sweep, and periodically), then acknowledges it in the spill.

The file is preallocated at boot (`BROKER_SPILL_BYTES`, default 1 MiB, with `posix_fallocate` so
that writing into it needs no new disk blocks on a full disk) and written in place with `pwrite` +
`fsync`. Format: one JSON line per entry, `{"spill": 1, "entry": {...}, "sha256": <hex of the
canonical entry>}` or `{"ack": <sha256 of an entry>}`; the unused tail is NUL bytes, so the write
position is the first NUL. A torn last line (its checksum does not match) is ignored. When every
entry is acknowledged, `compact()` zeroes the file and starts over.

If even the spill cannot take an entry (`SpillUnavailable`: full, unwritable), `spill_or_log`
writes one CRITICAL log line with the key id and session name, the last place left.

How the mint use case calls it (after `AssumeRole` returned `creds`):

    try:
        record = await ledger.append_async(stream, 1, [authorized])
    except LedgerUnavailable as exc:
        entry = SpillEntry.from_request(request_id=..., wallet=..., requested_seq=...,
                                        sts_session_name=creds.session_name, role_arn=creds.role_arn,
                                        access_key_id=creds.access_key_id, expiration=creds.expiration,
                                        detail=f"ledger write failed: {exc}")
        await asyncio.to_thread(spill_or_log, spill, entry)   # fsync: never on the event loop
        raise Refusal("ledger_unavailable", "a credential was issued but could not be recorded; it was "
                      "not released and will be recorded as MintUnreleased once the ledger recovers")

and, before calling STS, `free_bytes(ledger_dir) < BROKER_MIN_FREE_BYTES` refuses the mint with
`Refusal("ledger_low_space", ...)` (503 `unavailable`), via `low_on_space()`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .aggregates import MintRequest
from .errors import ConcurrencyConflict, LedgerError
from .events import MintUnreleased

log = logging.getLogger("agentkeys.spill")

DEFAULT_SPILL_BYTES = 1024 * 1024
DEFAULT_MIN_FREE_BYTES = 64 * 1024 * 1024
_CHUNK = 64 * 1024


class SpillUnavailable(LedgerError):
    """The spill cannot take this entry (full, unwritable)."""


@dataclass(frozen=True)
class SpillEntry:
    """A credential STS issued that the ledger did not record. Never the secret."""

    request_id: str
    wallet: str
    requested_seq: int
    sts_session_name: str
    role_arn: str
    access_key_id: str
    expiration: int | None
    detail: str

    @classmethod
    def from_request(cls, **fields: Any) -> SpillEntry:
        return cls(**{k: fields[k] for k in cls.__dataclass_fields__})

    def canonical(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()


class CredentialSpill:
    """A preallocated journal file written in place with fsync (thread-safe)."""

    def __init__(self, path: Path | str, size_bytes: int = DEFAULT_SPILL_BYTES) -> None:
        if size_bytes < 4096:
            raise ValueError("the spill needs at least 4096 bytes")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        current = os.fstat(self._fd).st_size
        self.size = max(size_bytes, current)
        if current < self.size:
            self._preallocate(current)
        self._offset = self._find_end()

    def _preallocate(self, start: int) -> None:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(self._fd, start, self.size - start)
        zero = b"\0" * _CHUNK
        pos = start
        while pos < self.size:  # explicit zeros: blocks allocated and the tail reads as "unused"
            n = min(_CHUNK, self.size - pos)
            os.pwrite(self._fd, zero[:n], pos)
            pos += n
        os.fsync(self._fd)

    def _read_all(self) -> bytes:
        return os.pread(self._fd, self.size, 0)

    def _find_end(self) -> int:
        data = self._read_all()
        end = data.find(b"\0")
        return len(data) if end < 0 else end

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    @property
    def free(self) -> int:
        return self.size - self._offset

    # --- writing -----------------------------------------------------------------------------------

    def _write_line(self, obj: dict[str, Any]) -> None:
        line = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"
        with self._lock:
            if self._fd < 0:
                raise SpillUnavailable("the spill is closed")
            if self._offset + len(line) > self.size:
                raise SpillUnavailable(f"the spill at {self.path} is full ({self.size} bytes)")
            try:
                written = os.pwrite(self._fd, line, self._offset)
                os.fsync(self._fd)
            except OSError as exc:
                raise SpillUnavailable(f"cannot write the spill at {self.path}: {exc}") from exc
            if written != len(line):
                raise SpillUnavailable(f"short write to the spill at {self.path}")
            self._offset += len(line)

    def write(self, entry: SpillEntry) -> None:
        """Durably record `entry` (returns after fsync) or raise `SpillUnavailable`."""
        self._write_line({"spill": 1, "entry": asdict(entry), "sha256": entry.digest})

    def ack(self, entry: SpillEntry) -> None:
        """`entry` is in the ledger now."""
        self._write_line({"ack": entry.digest})

    # --- reading -----------------------------------------------------------------------------------

    def entries(self) -> tuple[list[SpillEntry], set[str]]:
        """(every intact entry in order, digests acknowledged). Torn or foreign lines are skipped."""
        with self._lock:
            data = self._read_all()[: self._offset]
        entries: list[SpillEntry] = []
        acked: set[str] = set()
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
                if "ack" in obj:
                    acked.add(str(obj["ack"]))
                    continue
                entry = SpillEntry(**obj["entry"])
            except (ValueError, TypeError, KeyError):
                log.warning("spill %s: skipping an unreadable line (torn write?)", self.path)
                continue
            if entry.digest != obj.get("sha256"):
                log.warning("spill %s: skipping an entry whose checksum does not match", self.path)
                continue
            entries.append(entry)
        return entries, acked

    def pending(self) -> list[SpillEntry]:
        entries, acked = self.entries()
        return [e for e in entries if e.digest not in acked]

    def compact(self) -> bool:
        """Zero the file and start over when every entry is acknowledged; True if it did."""
        if self.pending():
            return False
        with self._lock:
            if self._offset == 0:
                return False
            os.pwrite(self._fd, b"\0" * self._offset, 0)
            os.fsync(self._fd)
            self._offset = 0
        return True


def spill_or_log(spill: CredentialSpill | None, entry: SpillEntry) -> bool:
    """Write `entry` to the spill; if even that fails, one CRITICAL log line with the key id and the
    session name (never the secret). True when the spill holds it. Blocks on fsync: call it from a
    worker thread, never on the event loop."""
    if spill is not None:
        try:
            spill.write(entry)
            log.critical("credential issued but not recorded in the ledger: access key id %s, STS session %s, "
                         "request %s of %s; kept in the spill %s, recorded as MintUnreleased once the ledger "
                         "recovers", entry.access_key_id, entry.sts_session_name, entry.request_id, entry.wallet,
                         spill.path)
            return True
        except SpillUnavailable as exc:
            reason = str(exc)
    else:
        reason = "no spill configured"
    log.critical("credential issued but recorded NOWHERE (%s): access key id %s, STS session %s, role %s, "
                 "request %s of %s, expires %s", reason, entry.access_key_id, entry.sts_session_name, entry.role_arn,
                 entry.request_id, entry.wallet, entry.expiration)
    return False


def recover(ledger: Any, spill: CredentialSpill) -> list[str]:
    """Record every pending spill entry as `MintUnreleased{ledger_write_failed}` on its request's
    stream (unless that request already has its `MintAuthorized` or `MintUnreleased`), acknowledge
    it, and compact the spill when it is empty. Returns the key ids recorded. A ledger still
    failing raises (the entries stay pending for the next try)."""
    recorded: list[str] = []
    for entry in spill.pending():
        stream = MintRequest.stream_for(entry.wallet, entry.request_id)
        for _ in range(3):
            agg = ledger.load(MintRequest, stream)
            if agg.authorized is not None or agg.unreleased is not None:
                break
            event = MintUnreleased(
                request_id=entry.request_id, wallet=entry.wallet, requested_seq=entry.requested_seq,
                sts_session_name=entry.sts_session_name, role_arn=entry.role_arn,
                access_key_id=entry.access_key_id, expiration=entry.expiration, reason="ledger_write_failed",
                detail=entry.detail[:500])
            try:
                ledger.append(stream, agg.version, [event])
                recorded.append(entry.access_key_id)
                break
            except ConcurrencyConflict:
                continue
        spill.ack(entry)
    spill.compact()
    return recorded


def free_bytes(path: Path | str) -> int:
    """Free bytes on the file system holding `path` (its directory when it does not exist yet)."""
    p = Path(path)
    target = p if p.exists() else p.parent
    return shutil.disk_usage(target).free


def low_on_space(path: Path | str, min_free_bytes: int = DEFAULT_MIN_FREE_BYTES) -> bool:
    """True when the ledger's file system has less than `min_free_bytes` free: mints are refused
    before STS (503 `unavailable`, reason `ledger_low_space`)."""
    return free_bytes(path) < min_free_bytes


__all__ = ["CredentialSpill", "SpillEntry", "SpillUnavailable", "free_bytes", "low_on_space", "recover",
           "spill_or_log"]
