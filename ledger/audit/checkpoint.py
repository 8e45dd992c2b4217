"""The auditor's trusted checkpoint: the client state of immudb (prior-art section 5.1).

A JSON file `{"seq": N, "hash": H, "verified_at": <unix seconds>, "source": "..."}` the auditor
keeps between runs (`audit verify --checkpoint FILE`). If the source's record at the checkpoint
seq has another hash, history before the checkpoint was rewritten: `diverged`. If the source ends
before the checkpoint seq, the ledger is behind a state already verified: `truncated` (one per
seq). A valid run advances the checkpoint to the verified head (written atomically). Needs no RPC.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from .errors import CheckpointError
from .verifier import TRUNCATED, Finding, SeqHashes, add_finding, add_finding_range

__all__ = [
    "DIVERGED",
    "Checkpoint",
    "advance_checkpoint",
    "check_checkpoint",
    "read_checkpoint",
    "write_checkpoint",
]

DIVERGED = "diverged"

_HEX64 = re.compile(r"[0-9a-f]{64}")


class _CheckpointFile(msgspec.Struct, forbid_unknown_fields=False):
    seq: int
    hash: str
    verified_at: int | str | None = None
    source: str | None = None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    hash: str
    verified_at: int | str | None = None
    source: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, "verified_at": self.verified_at, "source": self.source}

    def describe(self) -> str:
        when = self.verified_at
        if isinstance(when, int):
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
        parts = [f"seq {self.seq}"]
        if when is not None:
            parts.append(f"verified at {when}")
        if self.source:
            parts.append(f"from {self.source}")
        return "checkpoint (" + ", ".join(parts) + ")"


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint | None:
    """The checkpoint in `path`, None if the file does not exist. Raises `CheckpointError`."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {p}: {exc.strerror or exc}") from None
    try:
        cp = msgspec.json.decode(raw, type=_CheckpointFile)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CheckpointError(f"checkpoint {p} is not a checkpoint file ({exc})") from None
    if cp.seq < 0 or _HEX64.fullmatch(cp.hash) is None:
        raise CheckpointError(f"checkpoint {p}: seq must be >= 0 and hash 64 lowercase hex digits")
    return Checkpoint(cp.seq, cp.hash, cp.verified_at, cp.source)


def write_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> None:
    """Write atomically: a temporary file beside `path`, fsync, rename, fsync the directory."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    data = msgspec.json.format(msgspec.json.encode(checkpoint.to_json()), indent=2) + b"\n"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {p}: {exc.strerror or exc}") from None
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            pass
    try:
        fd = os.open(p.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_checkpoint(cp: Checkpoint, seqs: SeqHashes) -> list[Finding]:
    """`diverged` / `truncated` findings of the export against a trusted checkpoint."""
    if cp.seq == 0:
        return []
    findings: dict[int, Finding] = {}
    if cp.seq > seqs.max_seq:
        add_finding_range(
            findings,
            seqs.max_seq + 1,
            cp.seq,
            TRUNCATED,
            f"the export ends at seq {seqs.max_seq}, before the {cp.describe()}: the ledger is behind a state already verified",
        )
    else:
        h = seqs.hash_hex(cp.seq)
        if h is not None and h != cp.hash:
            add_finding(
                findings,
                cp.seq,
                DIVERGED,
                f"hash {h} differs from {cp.hash} in the {cp.describe()}: history up to seq {cp.seq} was rewritten",
            )
    return sorted(findings.values(), key=lambda f: (f.seq, f.kind))


def advance_checkpoint(path: str | os.PathLike[str], head_seq: int, head_hash: str, source: str) -> Checkpoint:
    cp = Checkpoint(head_seq, head_hash, int(time.time()), source)
    write_checkpoint(path, cp)
    return cp
