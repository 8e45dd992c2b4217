"""Reading what the auditor checks: an export file, a SQLite ledger (read-only, with plain
`sqlite3` and the join documented in docs/ledger-format.md: the SQL text is duplicated here on
purpose, so the auditor shares no code path with the writer), a SQLite anchor database; and writing
an export.

    agentkeys-broker audit export --db LEDGER --out FILE.jsonl

Readers hand records over in batches (lists of a few thousand) to the verifier: `RecordLine`s on
the fast path, dicts or `Malformed` for what the strict decoder refuses.
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from ..chain import EXPORT_FORMAT, FORMAT_VERSION, ChainRecord, make_envelope
from .errors import AuditError
from .verifier import _ENCODER, Malformed, RecordLine

__all__ = [
    "COUNT_RECORDS_SQL",
    "MAX_LINE",
    "PROGRESS_EVERY",
    "SELECT_ANCHORED_SQL",
    "SELECT_HEAD_SQL",
    "SELECT_RECORDS_SQL",
    "DatabaseReader",
    "ExportReader",
    "ExportResult",
    "Header",
    "Progress",
    "connect_readonly",
    "export_ledger",
    "iter_anchors",
    "open_anchors",
    "read_anchors",
    "read_batch_records",
    "stderr_progress",
]

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

_SEQ_IN_LINE = re.compile(rb'"seq"\s*:\s*(\d{1,16})')

Progress = Callable[[int], None]


class _StateBody(msgspec.Struct, forbid_unknown_fields=True):
    """`stored_events.state`: canonical JSON {"at": ..., "data": {...}} (`data` kept raw)."""

    at: str
    data: msgspec.Raw


class Header(msgspec.Struct, kw_only=True):
    format: str
    v: int
    records: int
    head: dict[str, Any]


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
                    raise AuditError(
                        f"{self.path}: line {line_no + len(lines) + 1}: longer than {MAX_LINE >> 20} MiB, not a ledger record"
                    )
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

    def __enter__(self) -> ExportReader:
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

    def __enter__(self) -> DatabaseReader:
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
    return iter_anchors(conn, Path(path))


def open_anchors(path: str | os.PathLike[str]) -> sqlite3.Connection:
    conn = connect_readonly(path, "anchor database")
    try:
        conn.execute("SELECT seq, hash FROM anchored LIMIT 1").fetchall()
    except sqlite3.Error as exc:
        conn.close()
        raise AuditError(f"cannot read anchor database {path}: {exc}") from exc
    return conn


def iter_anchors(conn: sqlite3.Connection, path: Path) -> Iterator[tuple[int, str]]:
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


# --- progress ---------------------------------------------------------------------------------


def stderr_progress(label: str) -> Progress:
    def report(n: int) -> None:
        print(f"{label}: {n:,} records", file=sys.stderr, flush=True)

    return report


# --- the records of one batch (proof bundles) -------------------------------------------------


def _record_from_item(item: Any) -> dict[str, Any] | None:
    if type(item) is RecordLine:
        obj = msgspec.structs.asdict(item)
        try:
            obj["data"] = msgspec.json.decode(obj["data"])
        except msgspec.DecodeError:
            return None
        return obj
    if isinstance(item, ChainRecord):
        return item.export_object()
    if isinstance(item, dict):
        return item
    return None  # Malformed


def read_batch_records(
    first: int,
    last: int,
    *,
    db: str | os.PathLike[str] | None = None,
    export: str | os.PathLike[str] | None = None,
) -> dict[int, dict[str, Any] | None]:
    """The records with seq in first..last (export objects: envelope plus hash), by seq; the first
    record read with a seq wins; None for a record present but unreadable. Raises `AuditError`."""
    out: dict[int, dict[str, Any] | None] = {}

    def take(items: Iterable[Any]) -> None:
        for item in items:
            if isinstance(item, Malformed):
                seq = item.seq
            elif type(item) is RecordLine or isinstance(item, ChainRecord):
                seq = item.seq
            elif isinstance(item, dict):
                seq = item.get("seq")
            else:
                continue
            if type(seq) is int and first <= seq <= last and seq not in out:
                out[seq] = _record_from_item(item)

    if export is not None and db is None:
        with ExportReader(export) as export_reader:
            for batch in export_reader.batches():
                take(batch)
        return out
    if db is None or export is not None:
        raise AuditError("give exactly one of a ledger database or an export file")
    with DatabaseReader(db) as reader:  # one read snapshot
        ranged = SELECT_RECORDS_SQL.replace(" ORDER BY r.seq", " WHERE r.seq BETWEEN ? AND ? ORDER BY r.seq")
        try:
            rows = reader.conn.execute(ranged, (first, last)).fetchall()
        except sqlite3.Error as exc:
            raise AuditError(f"cannot read ledger {db}: {exc}") from None
    for seq, stream, version, prev, h, topic, state in rows:
        if seq in out:
            continue
        try:
            body = msgspec.json.decode(state)
            if type(body) is not dict:
                raise ValueError
            at: Any = body.get("at")
            data: Any = body.get("data")
            env = make_envelope(seq=seq, type=topic, stream=stream, version=version, at=at, data=data, prev=prev)
        except (msgspec.DecodeError, ValueError, TypeError):
            out[seq] = None
            continue
        env["hash"] = h
        out[seq] = env
    return out
