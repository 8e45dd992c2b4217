"""The offline auditor: export the chain to JSONL and verify it without trusting the broker.

    agentkeys-broker audit export --db LEDGER --out FILE.jsonl
    agentkeys-broker audit verify (--db LEDGER | --export FILE.jsonl) [--anchor-db ANCHOR] [--json]

Independence: this module imports only the pure chain module (`ledger.chain`, `ledger.canonical`),
the standard library and msgspec. It never imports `ledger.store` or the eventsourcing library: the
SQLite ledger is read with plain `sqlite3`, opened read-only, with the join documented in
docs/ledger-format.md (the SQL text is duplicated here on purpose).

Verification (`verify_records`) follows design section 2, "Verifier findings" (the rules, with a
worked example, are in docs/ledger-format.md). Records are read in file order; each record gets
at most one finding. The state is compact, indexed by seq: one byte of state and the 32 bytes of
the stored hash per seq, so a million records need ~33 MB. A record's link to its predecessor is
checked when the second record of the pair arrives, so an in-order file needs no final pass. The
fast path (the next seq, linking to the current head, hash matches) costs one msgspec decode (with
`data` left raw), one encode and one SHA-256 per record.
"""

from __future__ import annotations

import gc
import hashlib
import os
import re
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Iterator, Literal, NamedTuple

import msgspec

from .canonical import canonical_bytes_unchecked
from .chain import DOMAIN_TAG, ENVELOPE_KEYS, EXPORT_FORMAT, FORMAT_VERSION, GENESIS, ChainRecord

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

PROGRESS_EVERY = 100_000

MAX_LINE = 64 << 20  # an export line longer than this is not a record (a file without newlines)

# The join an auditor uses to read the SQLite ledger (same text as SELECT_RECORDS in
# ledger/store.py, duplicated so that the verifier shares no code path with the writer).
SELECT_RECORDS_SQL = (
    "SELECT r.seq, r.stream, r.version, r.prev, r.hash, e.topic, e.state "
    "FROM ledger_records r JOIN stored_events e "
    "ON e.originator_id = replace(r.stream, '-', '') AND e.originator_version = r.version "
    "ORDER BY r.seq"
)
COUNT_RECORDS_SQL = (
    "SELECT count(*) FROM ledger_records r JOIN stored_events e "
    "ON e.originator_id = replace(r.stream, '-', '') AND e.originator_version = r.version"
)
SELECT_HEAD_SQL = "SELECT seq, hash FROM ledger_head WHERE id = 1"
SELECT_ANCHORED_SQL = "SELECT seq, hash FROM anchored ORDER BY seq"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_SEQ_IN_LINE = re.compile(rb'"seq"\s*:\s*(\d{1,16})')
_ENCODER = msgspec.json.Encoder(order="sorted")  # the canonical encoder (ledger/canonical.py)
_UNKNOWN: Any = object()  # the stored hash of a record is unknown (a damaged record)
_ABSENT: Any = object()

Progress = Callable[[int], None]


class AuditError(Exception):
    """An input the auditor cannot read at all (exit 2): missing or unreadable file, not a ledger,
    a line whose seq cannot be determined."""


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


class _StateBody(msgspec.Struct, forbid_unknown_fields=True):
    """`stored_events.state`: canonical JSON {"at": ..., "data": {...}} (`data` kept raw)."""

    at: str
    data: msgspec.Raw


class Header(msgspec.Struct, kw_only=True):
    format: str
    v: int
    records: int
    head: dict


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
    v = _Verifier()
    v.run(records)
    if anchored is not None:
        v.check_anchors(anchored)
    if claimed_head is not None:
        v.check_claimed_head(claimed_head, head_source)
    return v.report()


class _Verifier:
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
                    Finding(max_seq + 1, TRUNCATED, f"the {source} claims head seq {hs}, implausibly far beyond the last record (seq {max_seq})")
                )
                return
            for seq in range(max_seq + 1, hs + 1):
                if seq not in self.truncated:
                    self.truncated.add(seq)
                    self.findings.append(
                        Finding(seq, TRUNCATED, f"claimed by the {source} (head seq {hs}) but beyond the last record (seq {max_seq})")
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


# --- reading an export ----------------------------------------------------------------------


class ExportReader:
    """Reads an export file: the header at open, then records (line by line, streamed)."""

    def __init__(self, path: str | os.PathLike[str], *, progress: Progress | None = None) -> None:
        self.path = Path(path)
        self.progress = progress
        _check_file(self.path, "export")
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()/__exit__
        except OSError as exc:
            raise AuditError(f"cannot open export {self.path}: {exc.strerror or exc}") from exc
        try:
            self.header = self._read_header()
        except BaseException:
            self._file.close()
            raise

    def _read_header(self) -> Header:
        try:
            first = self._file.readline(1 << 16)
        except OSError as exc:
            raise AuditError(f"cannot read export {self.path}: {exc.strerror or exc}") from exc
        if not first.strip():
            raise AuditError(f"{self.path}: line 1: empty, expected the {EXPORT_FORMAT} export header")
        try:
            header = msgspec.json.decode(first, type=Header)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise AuditError(f"{self.path}: line 1: not an {EXPORT_FORMAT} export header") from None
        if header.format != EXPORT_FORMAT:
            raise AuditError(f"{self.path}: line 1: not an {EXPORT_FORMAT} export header")
        if header.v != FORMAT_VERSION:
            raise AuditError(f"{self.path}: line 1: unsupported export format version {header.v}")
        seq, hh = header.head.get("seq"), header.head.get("hash")
        if type(seq) is not int or seq < 0 or type(hh) is not str:
            raise AuditError(f"{self.path}: line 1: export header has no valid head")
        return header

    @property
    def claimed_head(self) -> tuple[int, str]:
        return (self.header.head["seq"], self.header.head["hash"])

    def __iter__(self) -> Iterator[Any]:
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[Any]]:
        """Records in blocks: each ~1 MB block of lines is decoded in one call (as a JSON array of
        `RecordLine`); a block the strict decoder refuses is decoded line by line, so a damaged
        line is named by its line number."""
        decode_block = msgspec.json.Decoder(list[RecordLine]).decode
        decode_line = msgspec.json.Decoder(RecordLine).decode
        errors = (msgspec.ValidationError, msgspec.DecodeError)
        progress = self.progress
        read = self._file.read
        line_no = 1  # the header
        tail = b""
        next_report = PROGRESS_EVERY
        while True:
            try:
                block = read(1 << 20)
            except OSError as exc:
                raise AuditError(f"cannot read export {self.path}: {exc.strerror or exc}") from exc
            if block:
                lines = (tail + block).split(b"\n")
                tail = lines.pop()
                if len(tail) > MAX_LINE:
                    raise AuditError(f"{self.path}: line {line_no + len(lines) + 1}: longer than {MAX_LINE >> 20} MiB, not a ledger record")
            else:
                lines = [tail] if tail else []
                tail = b""
            if lines:
                try:
                    batch = decode_block(b"[" + b",".join(lines) + b"]")
                except errors:
                    batch = None
                if batch is None or len(batch) != len(lines):  # one record per line, no blank line
                    batch = []
                    for i, line in enumerate(lines, start=line_no + 1):
                        try:
                            batch.append(decode_line(line))
                        except errors:
                            item = _decode_loose(line, i)
                            if item is not None:
                                batch.append(item)
                line_no += len(lines)
                yield batch
            if progress is not None and line_no > next_report:
                progress(line_no - 1)
                next_report = (line_no // PROGRESS_EVERY + 1) * PROGRESS_EVERY
            if not block:
                return

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "ExportReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decode_loose(line: bytes, line_no: int) -> Any:
    """A line the strict decoder refused: a dict for the slow path to diagnose, a `Malformed`, or
    None for a blank line."""
    if not line.strip():
        return None
    try:
        obj = msgspec.json.decode(line)
    except msgspec.DecodeError as exc:
        return Malformed(f"line {line_no}", f"line {line_no} is not valid JSON ({exc})", _guess_seq(line))
    if type(obj) is dict:
        seq = obj.get("seq")
        if type(seq) is int and seq >= 1:
            return obj
        return Malformed(f"line {line_no}", f"line {line_no} has no valid seq", None)
    return Malformed(f"line {line_no}", f"line {line_no} is not a JSON object", _guess_seq(line))


def _guess_seq(line: bytes) -> int | None:
    """The seq of a damaged line, if one is still readable (the last `"seq":N`: keys are sorted, so
    the envelope's own seq follows `data`)."""
    found = _SEQ_IN_LINE.findall(line)
    if not found:
        return None
    seq = int(found[-1])
    return seq if seq >= 1 else None


# --- reading the SQLite ledger ----------------------------------------------------------------


def _check_file(p: Path, what: str) -> None:
    if not p.exists():
        raise AuditError(f"cannot open {what} {p}: no such file")
    if not p.is_file():
        raise AuditError(f"cannot open {what} {p}: not a file")


def connect_readonly(path: str | os.PathLike[str], what: str) -> sqlite3.Connection:
    p = Path(path)
    _check_file(p, what)
    try:
        conn = sqlite3.connect(p.resolve().as_uri() + "?mode=ro", uri=True)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise AuditError(f"cannot open {what} {p}: {exc}") from exc
    return conn


class DatabaseReader:
    """Reads the chain from a SQLite ledger (read-only), in seq order, in one read transaction."""

    def __init__(self, path: str | os.PathLike[str], *, progress: Progress | None = None) -> None:
        self.path = Path(path)
        self.progress = progress
        self.conn = connect_readonly(self.path, "ledger")
        try:
            self.conn.execute("BEGIN")  # one snapshot for the head, the count and the records
            row = self.conn.execute(SELECT_HEAD_SQL).fetchone()
            self.stored_head: tuple[int, str] | None = (row[0], row[1]) if row else None
            self.conn.execute("SELECT 1 FROM ledger_records LIMIT 1").fetchall()
            self.conn.execute("SELECT 1 FROM stored_events LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            self.conn.close()
            raise AuditError(f"cannot read ledger {self.path}: not an agentkeys ledger ({exc})") from exc

    @property
    def claimed_head(self) -> tuple[int, str] | None:
        h = self.stored_head
        if h is None or type(h[0]) is not int or type(h[1]) is not str:
            return None
        return h

    def count(self) -> int:
        try:
            return int(self.conn.execute(COUNT_RECORDS_SQL).fetchone()[0])
        except sqlite3.Error as exc:
            raise AuditError(f"cannot read ledger {self.path}: {exc}") from exc

    def __iter__(self) -> Iterator[Any]:
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[Any]]:
        decode = msgspec.json.Decoder(_StateBody).decode
        errors = (msgspec.ValidationError, msgspec.DecodeError, TypeError)
        record_line = RecordLine
        progress = self.progress
        n = 0
        next_report = PROGRESS_EVERY
        try:
            cur = self.conn.execute(SELECT_RECORDS_SQL)
            while True:
                rows = cur.fetchmany(4096)
                if not rows:
                    break
                batch: list[Any] = []
                append = batch.append
                for seq, stream, version, prev, h, topic, state in rows:
                    if (
                        type(version) is int
                        and type(prev) is str
                        and type(h) is str
                        and type(topic) is str
                        and type(stream) is str
                    ):
                        try:
                            body = decode(state)
                        except errors:
                            append(_row_loose(seq, stream, version, prev, h, topic, state))
                            continue
                        append(
                            record_line(
                                at=body.at, data=body.data, hash=h, prev=prev, seq=seq, stream=stream,
                                type=topic, v=1, version=version,
                            )
                        )
                    else:
                        append(_row_loose(seq, stream, version, prev, h, topic, state))
                yield batch
                n += len(rows)
                if progress is not None and n >= next_report:
                    progress(n)
                    next_report += PROGRESS_EVERY
        except sqlite3.Error as exc:
            raise AuditError(f"cannot read ledger {self.path}: {exc}") from exc

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "DatabaseReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _row_loose(seq: Any, stream: Any, version: Any, prev: Any, h: Any, topic: Any, state: Any) -> Any:
    if type(seq) is not int or seq < 1:
        return Malformed(f"ledger_records row seq={seq!r}", "seq is not a positive integer", None)
    try:
        body = msgspec.json.decode(state) if isinstance(state, (bytes, str)) else None
    except msgspec.DecodeError:
        body = None
    if type(body) is not dict:
        return Malformed(f"seq {seq}", "stored event state is not a JSON object", seq)
    obj: dict[str, Any] = {"v": FORMAT_VERSION, "seq": seq, "type": topic, "stream": stream, "version": version}
    for key in ("at", "data"):
        if key in body:
            obj[key] = body[key]
    obj["prev"] = prev
    obj["hash"] = h
    extra = sorted(k for k in body if k not in ("at", "data"))
    for key in extra:  # unexpected keys in the state: reported as unexpected envelope fields
        obj[key] = body[key]
    return obj


def read_anchors(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """The (seq, hash) pairs of a SQLite anchor database (table `anchored`), read-only, in seq
    order. The database is opened (and checked) now, so open errors surface before any work."""
    conn = open_anchors(path)
    return _iter_anchors(conn, Path(path))


def open_anchors(path: str | os.PathLike[str]) -> sqlite3.Connection:
    conn = connect_readonly(path, "anchor database")
    try:
        conn.execute("SELECT seq, hash FROM anchored LIMIT 1").fetchall()
    except sqlite3.Error as exc:
        conn.close()
        raise AuditError(f"cannot read anchor database {path}: {exc}") from exc
    return conn


def _iter_anchors(conn: sqlite3.Connection, path: Path) -> Iterator[tuple[int, str]]:
    try:
        cur = conn.execute(SELECT_ANCHORED_SQL)
        while True:
            rows = cur.fetchmany(8192)
            if not rows:
                return
            yield from rows
    except sqlite3.Error as exc:
        raise AuditError(f"cannot read anchor database {path}: {exc}") from exc
    finally:
        conn.close()


# --- export -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExportResult:
    records: int
    head_seq: int
    head_hash: str


def export_ledger(
    db_path: str | os.PathLike[str], out_path: str | os.PathLike[str], *, progress: Progress | None = None
) -> ExportResult:
    """Write the export of a SQLite ledger: the header, then one record per line (envelope plus
    hash, canonical key order). Streamed; written to a temporary file beside `out_path` and renamed
    into place, so a reader never sees a partial export."""
    out = Path(out_path)
    if out.exists() and Path(db_path).exists() and out.resolve() == Path(db_path).resolve():
        raise AuditError(f"refusing to export {db_path} over itself")
    encode = _ENCODER.encode
    with DatabaseReader(db_path, progress=progress) as reader:
        count = reader.count()
        head = reader.claimed_head
        if head is None:
            raise AuditError(f"cannot read ledger {db_path}: no chain head row")
        header = {"format": EXPORT_FORMAT, "v": FORMAT_VERSION, "records": count, "head": {"seq": head[0], "hash": head[1]}}
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                f.write(msgspec.json.encode(header) + b"\n")  # documented key order
                buf: list[bytes] = []
                written = 0
                for item in reader:
                    if isinstance(item, Malformed):
                        raise AuditError(f"cannot export {item.where}: {item.reason} (run `audit verify --db`)")
                    buf.append(encode(item))
                    written += 1
                    if len(buf) >= 4096:
                        buf.append(b"")
                        f.write(b"\n".join(buf))
                        buf.clear()
                if buf:
                    buf.append(b"")
                    f.write(b"\n".join(buf))
                f.flush()
                os.fsync(f.fileno())
            if written != count:
                raise AuditError(f"ledger {db_path} changed during the export ({count} records counted, {written} read)")
            os.replace(tmp, out)
        except OSError as exc:
            raise AuditError(f"cannot write export {out}: {exc.strerror or exc}") from exc
        finally:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
    _fsync_dir(out.parent)
    return ExportResult(records=count, head_seq=head[0], head_hash=head[1])


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- the two commands, as functions (the CLI wraps them) ----------------------------------------


def verify_export(
    path: str | os.PathLike[str], *, anchor_db: str | os.PathLike[str] | None = None, progress: Progress | None = None
) -> VerifyReport:
    anchors_conn = open_anchors(anchor_db) if anchor_db is not None else None
    try:
        with ExportReader(path, progress=progress) as reader:
            v = _Verifier()
            v.run_batches(reader.batches())
            if anchors_conn is not None:
                v.check_anchors(_iter_anchors(anchors_conn, Path(anchor_db)))  # type: ignore[arg-type]
                anchors_conn = None
            v.check_claimed_head(reader.claimed_head, "export header")
            return v.report()
    finally:
        if anchors_conn is not None:
            anchors_conn.close()


def verify_database(
    path: str | os.PathLike[str], *, anchor_db: str | os.PathLike[str] | None = None, progress: Progress | None = None
) -> VerifyReport:
    anchors_conn = open_anchors(anchor_db) if anchor_db is not None else None
    try:
        with DatabaseReader(path, progress=progress) as reader:
            v = _Verifier()
            v.run_batches(reader.batches())
            if anchors_conn is not None:
                v.check_anchors(_iter_anchors(anchors_conn, Path(anchor_db)))  # type: ignore[arg-type]
                anchors_conn = None
            head = reader.claimed_head
            if head is not None:
                v.check_claimed_head(head, "ledger_head row")
            return v.report()
    finally:
        if anchors_conn is not None:
            anchors_conn.close()


def stderr_progress(label: str) -> Progress:
    def report(n: int) -> None:
        print(f"{label}: {n:,} records", file=sys.stderr, flush=True)

    return report
