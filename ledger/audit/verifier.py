"""The verifier: recompute every record hash and link of the chain (design section 2).

Independence: the audit package imports only the pure chain modules (`ledger.chain`,
`ledger.canonical`), the standard library and msgspec. It never imports `ledger.store` or the
eventsourcing library (tests/unit/ledger/test_audit_verify.py checks it in a fresh interpreter).

Verification (`verify_records`) follows design section 2, "Verifier findings" (the rules, with a
worked example, are in docs/ledger-format.md). Records are read in file order; each record gets
at most one finding. The state is compact, indexed by seq: one byte of state and the 32 bytes of
the stored hash per seq, so a million records need ~33 MB. A record's link to its predecessor is
checked when the second record of the pair arrives, so an in-order file needs no final pass. The
fast path (the next seq, linking to the current head, hash matches) costs one msgspec decode (with
`data` left raw), one encode and one SHA-256 per record. After a run the same table answers "which
hash did the source store at seq N" (`Verifier.table()`, a `SeqHashes`), for the checks against an
anchor's batches and a checkpoint.
"""

from __future__ import annotations

import gc
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NamedTuple

import msgspec

from ..canonical import canonical_bytes_unchecked
from ..chain import DOMAIN_TAG, ENVELOPE_KEYS, FORMAT_VERSION, GENESIS, ChainRecord
from .errors import AuditError

__all__ = [
    "ANCHOR_MISMATCH",
    "DUPLICATED",
    "FORKED",
    "KINDS",
    "MAX_GAP",
    "MISSING",
    "MODIFIED",
    "REORDERED",
    "TRUNCATED",
    "Finding",
    "Malformed",
    "RecordLine",
    "SeqHashes",
    "Verifier",
    "VerifyReport",
    "add_finding",
    "add_finding_range",
    "merge_findings",
    "verify_records",
]

# --- finding kinds (design section 2) ---------------------------------------------------------

MODIFIED = "modified"
MISSING = "missing"
REORDERED = "reordered"
DUPLICATED = "duplicated"
FORKED = "forked"
TRUNCATED = "truncated"
ANCHOR_MISMATCH = "anchor_mismatch"
KINDS = (MODIFIED, MISSING, REORDERED, DUPLICATED, FORKED, TRUNCATED, ANCHOR_MISMATCH)

# A record whose seq exceeds the number of records read so far by more than this is not placed
# (reported `modified`, "implausible seq"): it bounds memory and the number of `missing` findings
# a hostile file can cause. The same bound applies to a head claimed beyond the last record.
MAX_GAP = 1_000_000

_HEX64 = re.compile(r"[0-9a-f]{64}")
_ENCODER = msgspec.json.Encoder(order="sorted")  # the canonical encoder (ledger/canonical.py)
_UNKNOWN: Any = object()  # the stored hash of a record is unknown (a damaged record)
_ABSENT: Any = object()


class RecordLine(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """One record as read: the v1 envelope plus `hash`. Fields are declared in sorted order; with
    `hash` set to "" (its default, omitted on encoding) the sorted encoder writes the envelope.

    `data` stays raw (the JSON bytes as read, neither decoded nor re-encoded): the fast path hashes
    the envelope with those bytes verbatim. That is sound: if the result equals the stored hash,
    the bytes are exactly what the writer hashed (SHA-256 second-preimage resistance), so they are
    the canonical encoding of the record's data. If it differs, the general path decodes `data`,
    canonicalizes it (section 2 of docs/ledger-format.md) and hashes again, so a record whose data
    is merely formatted differently still verifies."""

    at: str
    data: msgspec.Raw
    hash: str = ""
    prev: str
    seq: Annotated[int, msgspec.Meta(ge=1)]
    stream: str
    type: str
    v: Literal[1]
    version: int


@dataclass(frozen=True, slots=True)
class Malformed:
    """A record that could not be decoded. `seq` None: its position is unknown (exit 2)."""

    where: str
    reason: str
    seq: int | None = None


class Finding(NamedTuple):
    seq: int
    kind: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "detail": self.detail}


def add_finding(findings: dict[int, Finding], seq: int, kind: str, detail: str) -> None:
    """At most one finding per seq: the first one added stays."""
    if seq not in findings:
        findings[seq] = Finding(seq, kind, detail)


def add_finding_range(findings: dict[int, Finding], lo: int, hi: int, kind: str, detail: str) -> None:
    """One finding per seq of lo..hi, or a single one at `lo` if the run is implausibly long."""
    if hi < lo:
        return
    if hi - lo + 1 > MAX_GAP:
        add_finding(findings, lo, kind, f"{detail} (seqs {lo}..{hi}, {hi - lo + 1} records, reported once)")
        return
    for s in range(lo, hi + 1):
        add_finding(findings, s, kind, detail)


def merge_findings(*groups: Iterable[Finding]) -> list[Finding]:
    """At most one finding per seq: the first group's finding wins, then the next group's..."""
    out: dict[int, Finding] = {}
    for group in groups:
        for f in group:
            if f.seq not in out:
                out[f.seq] = f
    return sorted(out.values(), key=lambda f: (f.seq, f.kind))


@dataclass(slots=True)
class VerifyReport:
    records: int
    head_seq: int
    head_hash: str | None
    findings: list[Finding] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "records": self.records,
            "head": {"seq": self.head_seq, "hash": self.head_hash},
            "findings": [f.to_json() for f in self.findings],
        }

    def summary_lines(self) -> list[str]:
        lines = [f"seq {f.seq}: {f.kind}: {f.detail}" for f in self.findings]
        if self.valid:
            lines.append(f"OK: {self.records} records, head seq {self.head_seq} hash {self.head_hash}")
        else:
            lines.append(f"FAILED: {len(self.findings)} findings in {self.records} records")
        return lines


# --- verification -------------------------------------------------------------------------------


def verify_records(
    records: Iterable[Any],
    *,
    anchored: Iterable[tuple[int, str]] | None = None,
    claimed_head: tuple[int, str] | None = None,
    head_source: str = "export header",
) -> VerifyReport:
    """Verify records given in file order.

    Each item is a `RecordLine`, a dict (the envelope plus "hash", as in an export line), a
    `ChainRecord`, or a `Malformed`. Items are not kept (a `RecordLine`'s hash is blanked while it is encoded, then restored).
    `anchored`: (seq, hash) pairs an anchor confirmed. `claimed_head`: the (seq, hash) the source
    claims as its head (the export header, or the ledger_head row of a database).
    Raises `AuditError` for a record whose seq cannot be determined."""
    v = Verifier()
    v.run(records)
    if anchored is not None:
        v.check_anchors(anchored)
    if claimed_head is not None:
        v.check_claimed_head(claimed_head, head_source)
    return v.report()


class SeqHashes(NamedTuple):
    """The verifier's table after a run, read-only: the stored hash of every seq read (the first
    record read with a seq wins). `state[seq]`: 0 absent, 1 present and clean, 2 present with a
    finding (its stored hash known), 3 present but damaged (its stored hash unknown); `hashes`
    holds the hash of seq s at [32s, 32s+32)."""

    state: bytearray
    hashes: bytearray
    cap: int
    max_seq: int

    def present(self, seq: int) -> bool:
        return 0 < seq < self.cap and self.state[seq] != 0

    def hash_bytes(self, seq: int) -> bytes | None:
        """The stored hash of `seq` (32 bytes), None if absent or unknown."""
        if 0 < seq < self.cap and self.state[seq] in (1, 2):
            o = seq << 5
            return bytes(self.hashes[o : o + 32])
        return None

    def hash_hex(self, seq: int) -> str | None:
        b = self.hash_bytes(seq)
        return b.hex() if b is not None else None

    def all_known(self, lo: int, hi: int) -> bool:
        """Is the stored hash of every seq in lo..hi-1 known?"""
        if hi <= lo:
            return True
        if lo < 1 or hi > self.cap:
            return False
        state = self.state
        return state.count(1, lo, hi) + state.count(2, lo, hi) == hi - lo


class Verifier:
    """One verification: `run` / `run_batches` over the records, then optionally `check_anchors`
    and `check_claimed_head`, then `report()`; `table()` is the seq -> stored hash table."""

    def __init__(self) -> None:
        self.cap = 1 << 12
        # per seq: 0 absent, 1 present and clean, 2 present with a finding (stored hash known),
        # 3 present, damaged (stored hash unknown)
        self.state = bytearray(self.cap)
        self.hashes = bytearray(self.cap << 5)  # stored hash of seq s at [32s, 32s+32)
        self.count = 0
        self.max_seq = 0
        self.top_h: Any = GENESIS  # stored hash (hex) of the record at max_seq
        self.findings: list[Finding] = []
        self.pending_prev: dict[int, str] = {}  # prev of records read before their predecessor
        self.bad_content: dict[int, str | None] = {}  # recomputed hash where it differs from the stored one
        self.reordered_at: dict[int, int] = {}  # seq -> index of its `reordered` finding
        self.truncated: set[int] = set()

    # --- the loop -----------------------------------------------------------------------------

    def run(self, records: Iterable[Any]) -> None:
        self.run_batches((records,))

    def run_batches(self, batches: Iterable[Iterable[Any]]) -> None:
        # The loop creates no reference cycles; without the cyclic GC scanning each batch of
        # freshly decoded records over and over, it runs ~10% faster.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._run_batches(batches)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _run_batches(self, batches: Iterable[Iterable[Any]]) -> None:
        """The loop. Readers hand over batches (lists of a few thousand records) to keep the
        per-record overhead in C: decoding a whole block, then one tight inner loop."""
        sha256 = hashlib.sha256
        buf = bytearray(DOMAIN_TAG)  # DOMAIN_TAG, then the canonical envelope written after it
        tag_len = len(DOMAIN_TAG)
        encode_into = _ENCODER.encode_into
        record_line = RecordLine
        state = self.state
        hashes = self.hashes
        cap = self.cap
        max_seq = self.max_seq
        top_h = self.top_h
        count = self.count
        for records in batches:
            for item in records:
                count += 1
                if type(item) is record_line:
                    seq = item.seq
                    if seq == max_seq + 1 and seq < cap and item.prev == top_h:
                        # the next record, linking to the current head: only its hash to check
                        h = item.hash
                        item.hash = ""  # omitted: the encoder writes exactly the envelope
                        encode_into(item, buf, tag_len)
                        item.hash = h
                        digest = sha256(buf).digest()
                        if digest.hex() == h:
                            state[seq] = 1
                            o = seq << 5
                            hashes[o : o + 32] = digest
                            max_seq = seq
                            top_h = h
                            continue
                # everything else: the general (slow) path
                self.count, self.max_seq, self.top_h = count, max_seq, top_h
                self._place_item(item)
                state, hashes, cap = self.state, self.hashes, self.cap
                max_seq, top_h = self.max_seq, self.top_h
        self.count, self.max_seq, self.top_h = count, max_seq, top_h

    # --- the general path ---------------------------------------------------------------------

    def _place_item(self, item: Any) -> None:
        if isinstance(item, Malformed):
            if item.seq is None:
                raise AuditError(f"{item.where}: {item.reason}")
            self._place_damaged(item.seq, f"malformed: {item.reason}")
            return
        if isinstance(item, RecordLine):
            obj = msgspec.structs.asdict(item)
        elif isinstance(item, ChainRecord):
            obj = item.export_object()
        elif isinstance(item, dict):
            obj = item
        else:
            raise AuditError(f"record {self.count}: not a ledger record ({type(item).__name__})")
        seq = obj.get("seq")
        if type(seq) is not int or seq < 1:
            raise AuditError(f"record {self.count}: seq is not a positive integer")
        if isinstance(item, RecordLine):
            try:
                obj["data"] = msgspec.json.decode(obj["data"])
            except msgspec.DecodeError:
                self._place_damaged(seq, "malformed: data is not valid JSON")
                return
        h = obj.get("hash", _ABSENT)
        envelope = {k: val for k, val in obj.items() if k != "hash"}
        try:
            content: str | None = hashlib.sha256(DOMAIN_TAG + canonical_bytes_unchecked(envelope)).hexdigest()
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
            content = None
        problems = _shape_problems(envelope, h)
        hash_known = type(h) is str and _HEX64.fullmatch(h) is not None
        prev = obj.get("prev")
        self._place(seq, h if hash_known else None, prev, content, problems)

    def _grow(self, seq: int) -> None:
        cap = self.cap
        while cap <= seq + 1:
            cap *= 2
        self.state.extend(bytes(cap - self.cap))
        self.hashes.extend(bytes((cap - self.cap) << 5))
        self.cap = cap

    def _implausible(self, seq: int) -> bool:
        if seq > self.count + MAX_GAP:
            self.findings.append(
                Finding(seq, MODIFIED, f"implausible seq: more than {MAX_GAP} beyond the {self.count} records read so far")
            )
            return True
        if seq + 1 >= self.cap:
            self._grow(seq)
        return False

    def _stored_hash(self, seq: int) -> str | None:
        if self.state[seq] in (1, 2):
            o = seq << 5
            return self.hashes[o : o + 32].hex()
        return None

    def _place_damaged(self, seq: int, detail: str) -> None:
        if self._implausible(seq):
            return
        self.findings.append(Finding(seq, MODIFIED, detail))
        if self.state[seq]:
            return  # a second, damaged copy: reported, the first copy stays the record
        self.state[seq] = 3
        self.pending_prev.pop(seq + 1, None)  # the successor's link cannot be checked
        if seq > self.max_seq:
            self.max_seq, self.top_h = seq, _UNKNOWN

    def _place(self, seq: int, h: str | None, prev: Any, content: str | None, problems: list[str]) -> None:
        if self._implausible(seq):
            return
        findings = self.findings
        state = self.state
        if state[seq]:  # a second record with this seq
            first_h = self._stored_hash(seq)
            first_content = self.bad_content[seq] if seq in self.bad_content else first_h
            if h is not None and h == first_h and content is not None and content == first_content:
                findings.append(Finding(seq, DUPLICATED, "same hash and content as an earlier record with this seq"))
            else:
                findings.append(Finding(seq, FORKED, "different content from an earlier record with this seq"))
            return

        finding: Finding | None = None
        if problems:
            finding = Finding(seq, MODIFIED, "malformed: " + "; ".join(problems))
        elif content != h:
            finding = Finding(seq, MODIFIED, "hash does not match content")
        if h is not None and content != h:
            self.bad_content[seq] = content

        # the link to the predecessor (checked now if it is present, else when it arrives)
        if finding is None:
            p = seq - 1
            if p == 0:
                if prev != GENESIS:
                    finding = Finding(seq, MODIFIED, "prev of seq 1 is not the genesis value (64 zeros)")
            else:
                sp = state[p]
                if sp == 1 or sp == 2:
                    o = p << 5
                    if self.hashes[o : o + 32].hex() != prev:
                        finding = Finding(seq, MODIFIED, f"prev does not match the hash of seq {p}")
                elif sp == 0:
                    self.pending_prev[seq] = prev
        if finding is None and seq < self.max_seq:
            finding = Finding(seq, REORDERED, f"read after seq {self.max_seq}")
            self.reordered_at[seq] = len(findings)
        if finding is not None:
            findings.append(finding)

        if h is None:
            state[seq] = 3
        else:
            state[seq] = 1 if finding is None else 2
            o = seq << 5
            self.hashes[o : o + 32] = bytes.fromhex(h)

        # the link from the successor, if it was read first
        s = seq + 1
        pending = self.pending_prev.pop(s, _ABSENT)
        if pending is not _ABSENT and h is not None and pending != h:
            self._flag_link(s, f"prev does not match the hash of seq {seq}")

        if seq > self.max_seq:
            self.max_seq = seq
            self.top_h = h if h is not None else _UNKNOWN

    def _flag_link(self, seq: int, detail: str) -> None:
        """A record already read turns out to break its link: `modified` replaces `reordered`."""
        finding = Finding(seq, MODIFIED, detail)
        idx = self.reordered_at.pop(seq, None)
        if idx is not None:
            self.findings[idx] = finding
        elif self.state[seq] == 1:
            self.findings.append(finding)
        self.state[seq] = 2

    # --- after the records --------------------------------------------------------------------

    def check_anchors(self, anchored: Iterable[tuple[int, str]]) -> None:
        state, hashes, max_seq = self.state, self.hashes, self.max_seq
        for seq, ah in anchored:
            if type(seq) is not int or seq < 1:
                continue
            if seq > max_seq:
                if seq not in self.truncated:
                    self.truncated.add(seq)
                    self.findings.append(
                        Finding(seq, TRUNCATED, f"confirmed by the anchor but beyond the last record (seq {max_seq})")
                    )
                continue
            if state[seq] != 1:
                continue  # missing, or already reported
            o = seq << 5
            stored = hashes[o : o + 32].hex()
            if stored != ah:
                state[seq] = 2
                self.findings.append(Finding(seq, ANCHOR_MISMATCH, f"anchored hash {ah} differs from the record's hash {stored}"))

    def check_claimed_head(self, claimed: tuple[int, str], source: str) -> None:
        hs, hh = claimed
        max_seq = self.max_seq
        if hs > max_seq:
            if hs > max_seq + MAX_GAP:
                self.truncated.add(max_seq + 1)
                self.findings.append(
                    Finding(
                        max_seq + 1,
                        TRUNCATED,
                        f"the {source} claims head seq {hs}, implausibly far beyond the last record (seq {max_seq})",
                    )
                )
                return
            for seq in range(max_seq + 1, hs + 1):
                if seq not in self.truncated:
                    self.truncated.add(seq)
                    self.findings.append(
                        Finding(
                            seq, TRUNCATED, f"claimed by the {source} (head seq {hs}) but beyond the last record (seq {max_seq})"
                        )
                    )
            return
        if hs >= 1 and self.state[hs] == 1 and self._stored_hash(hs) != hh:
            self.state[hs] = 2
            self.findings.append(Finding(hs, MODIFIED, f"hash differs from the head hash in the {source}"))
        for seq in range(max(hs, 0) + 1, max_seq + 1):
            if self.state[seq] == 1:
                self.state[seq] = 2
                self.findings.append(Finding(seq, MODIFIED, f"beyond the head seq {hs} claimed by the {source}"))

    def report(self) -> VerifyReport:
        findings = self.findings
        state, max_seq = self.state, self.max_seq
        s = state.find(0, 1, max_seq + 1)
        while s != -1:
            findings.append(Finding(s, MISSING, "absent from the file"))
            s = state.find(0, s + 1, max_seq + 1)
        findings.sort(key=lambda f: (f.seq, f.kind))
        head_hash = GENESIS if max_seq == 0 else self._stored_hash(max_seq)
        return VerifyReport(records=self.count, head_seq=max_seq, head_hash=head_hash, findings=findings)

    def table(self) -> SeqHashes:
        return SeqHashes(self.state, self.hashes, self.cap, self.max_seq)


def _shape_problems(envelope: dict[str, Any], h: Any) -> list[str]:
    problems = []
    missing = [k for k in ENVELOPE_KEYS if k not in envelope]
    if missing:
        problems.append("missing " + ", ".join(missing))
    extra = sorted(k for k in envelope if k not in ENVELOPE_KEYS)
    if extra:
        problems.append("unexpected " + ", ".join(extra))
    if "v" in envelope and (type(envelope["v"]) is not int or envelope["v"] != FORMAT_VERSION):
        problems.append(f"v is {envelope['v']!r}, expected {FORMAT_VERSION}")
    # `data` is hashed whatever its JSON type (its meaning is not the verifier's business)
    for key, typ in (("type", str), ("stream", str), ("version", int), ("at", str)):
        if key in envelope and type(envelope[key]) is not typ:
            problems.append(f"{key} is not {'an integer' if typ is int else 'a string'}")
    if h is _ABSENT:
        problems.append("missing hash")
    elif type(h) is not str or _HEX64.fullmatch(h) is None:
        problems.append("hash is not 64 lowercase hex digits")
    prev = envelope.get("prev", _ABSENT)
    if prev is not _ABSENT and (type(prev) is not str or _HEX64.fullmatch(prev) is None):
        problems.append("prev is not 64 lowercase hex digits")
    return problems


