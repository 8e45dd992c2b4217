"""`agentkeys-broker audit export|verify` run as a real subprocess against real SQLite files.

Each attack test tampers with a ledger written by `ledger.app.Ledger` (the SQLite file itself, or
its export, or the SQLite anchor), runs the installed console script with `--json`, and asserts
the exact findings (seq, kind) and the exit code (design section 2, "Verifier findings")."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ledger.app import Ledger
from ledger.chain import DOMAIN_TAG, GENESIS
from ledger.config import LedgerConfig
from ledger.events import WalletBound
from tests.conftest import cli_path

N = 12
T0 = datetime(2026, 11, 29, 5, 0, 0, tzinfo=UTC)
_ENC = msgspec.json.Encoder(order="sorted")


# --- helpers -------------------------------------------------------------------------------------


def build_ledger(path: Path, n: int = N) -> list[dict[str, Any]]:
    """A ledger of `n` WalletBound records over four streams (versions 1, 2, 3...). Returns the
    records as export objects (envelope plus hash)."""
    ticks = iter(range(10_000))
    led = Ledger(LedgerConfig(path), clock=lambda: T0 + timedelta(milliseconds=next(ticks)))
    try:
        streams = [uuid.UUID(int=0x5EED0000 + i) for i in range(4)]
        for i in range(n):
            s = streams[i % 4]
            led.append(s, i // 4, [WalletBound(omni_account=f"omni-{i % 4}", address=f"0x{i:040x}", role="master")])
        return [r.export_object() for r in led.read(0, 10_000)]
    finally:
        led.close()


def make_anchor(path: Path, pairs: list[tuple[int, str]]) -> Path:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS anchored (seq INTEGER PRIMARY KEY, hash TEXT NOT NULL)")
        conn.executemany("INSERT OR REPLACE INTO anchored (seq, hash) VALUES (?, ?)", pairs)
    conn.close()
    return path


def rehash(obj: dict[str, Any]) -> dict[str, Any]:
    """The record with its hash recomputed from its (possibly changed) envelope."""
    env = {k: v for k, v in obj.items() if k != "hash"}
    return {**env, "hash": hashlib.sha256(DOMAIN_TAG + _ENC.encode(env)).hexdigest()}


def rechain(records: list[dict[str, Any]], start: int) -> list[dict[str, Any]]:
    """Recompute prev and hash of every record from index `start` on (a consistent forgery)."""
    out = [dict(r) for r in records]
    for i in range(start, len(out)):
        out[i]["prev"] = out[i - 1]["hash"] if i else GENESIS
        out[i] = rehash(out[i])
    return out


def header(records: list[dict[str, Any]], *, head: dict[str, Any] | None = None) -> dict[str, Any]:
    if head is None:
        head = {"seq": records[-1]["seq"], "hash": records[-1]["hash"]} if records else {"seq": 0, "hash": GENESIS}
    return {"format": "agentkeys-ledger", "v": 1, "records": len(records), "head": head}


def write_export(path: Path, hdr: dict[str, Any], records: list[Any]) -> Path:
    lines = [json.dumps(hdr).encode()]
    lines += [r if isinstance(r, bytes) else _ENC.encode(r) for r in records]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([cli_path(), *args], capture_output=True, text=True, timeout=120)


def verify_json(*args: str) -> tuple[int, dict[str, Any]]:
    proc = run("audit", "verify", *args, "--json")
    assert proc.returncode in (0, 1), proc.stderr
    assert proc.stderr == ""
    return proc.returncode, json.loads(proc.stdout)


def kinds(report: dict[str, Any]) -> list[tuple[int, str]]:
    return [(f["seq"], f["kind"]) for f in report["findings"]]


def db_update_state(db: Path, seq: int, new_state: bytes) -> None:
    with sqlite3.connect(db) as conn:
        stream, version = conn.execute("SELECT stream, version FROM ledger_records WHERE seq = ?", (seq,)).fetchone()
        conn.execute(
            "UPDATE stored_events SET state = ? WHERE originator_id = ? AND originator_version = ?",
            (new_state, stream.replace("-", ""), version),
        )
    conn.close()


def db_state(db: Path, seq: int) -> bytes:
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT e.state FROM ledger_records r JOIN stored_events e "
            "ON e.originator_id = replace(r.stream, '-', '') AND e.originator_version = r.version WHERE r.seq = ?",
            (seq,),
        ).fetchone()
    conn.close()
    return bytes(row[0])


@pytest.fixture
def chain(tmp_path: Path) -> dict[str, Any]:
    """A 12-record ledger, its export (written by `audit export`) and a SQLite anchor of all of it."""
    db = tmp_path / "ledger.sqlite"
    records = build_ledger(db)
    export = tmp_path / "ledger.jsonl"
    proc = run("audit", "export", "--db", str(db), "--out", str(export))
    assert proc.returncode == 0, proc.stderr
    anchor = make_anchor(tmp_path / "anchor.sqlite", [(r["seq"], r["hash"]) for r in records])
    return {"db": db, "export": export, "anchor": anchor, "records": records, "dir": tmp_path}


def source_args(chain: dict[str, Any], source: str) -> list[str]:
    return ["--db", str(chain["db"])] if source == "db" else ["--export", str(chain["export"])]


# --- valid ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["db", "export"])
def test_valid_ledger_exits_0(chain: dict[str, Any], source: str) -> None:
    code, report = verify_json(*source_args(chain, source), "--anchor-db", str(chain["anchor"]))
    last = chain["records"][-1]
    assert code == 0
    assert report == {"valid": True, "records": N, "head": {"seq": N, "hash": last["hash"]}, "findings": []}

    proc = run("audit", "verify", *source_args(chain, source))
    assert proc.returncode == 0
    assert proc.stdout == f"OK: {N} records, head seq {N} hash {last['hash']}\n"
    assert proc.stderr == ""


def test_export_file_format(chain: dict[str, Any]) -> None:
    lines = chain["export"].read_bytes().split(b"\n")
    assert lines[-1] == b""
    lines = lines[:-1]
    last = chain["records"][-1]
    assert lines[0] == (
        b'{"format":"agentkeys-ledger","v":1,"records":12,"head":{"seq":12,"hash":"' + last["hash"].encode() + b'"}}'
    )
    assert lines[1:] == [_ENC.encode(r) for r in chain["records"]]
    assert [p.name for p in chain["dir"].iterdir() if ".tmp" in p.name] == []


def test_export_reports_what_it_wrote(chain: dict[str, Any]) -> None:
    out = chain["dir"] / "again.jsonl"
    proc = run("audit", "export", "--db", str(chain["db"]), "--out", str(out))
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"exported {N} records to {out}, head seq {N} hash {chain['records'][-1]['hash']}"
    assert out.read_bytes() == chain["export"].read_bytes()


def test_json_output_has_the_exact_shape(chain: dict[str, Any]) -> None:
    records = chain["records"]
    write_export(chain["export"], header(records), records[:3] + records[4:])
    proc = run("audit", "verify", "--export", str(chain["export"]), "--json")
    assert proc.returncode == 1
    assert proc.stdout.count("\n") == 1 and proc.stdout.endswith("\n")
    report = json.loads(proc.stdout)
    assert list(report) == ["valid", "records", "head", "findings"]
    assert report == {
        "valid": False,
        "records": N - 1,
        "head": {"seq": N, "hash": records[-1]["hash"]},
        "findings": [{"seq": 4, "kind": "missing", "detail": "absent from the file"}],
    }


def test_human_summary_lists_each_finding(chain: dict[str, Any]) -> None:
    records = chain["records"]
    write_export(chain["export"], header(records), records[:3] + records[4:])
    proc = run("audit", "verify", "--export", str(chain["export"]))
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == ["seq 4: missing: absent from the file", f"FAILED: 1 findings in {N - 1} records"]


# --- attacks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["db", "export"])
def test_bit_flip_in_one_record_data(chain: dict[str, Any], source: str) -> None:
    if source == "db":
        state = bytearray(db_state(chain["db"], 4))
        i = state.index(b'"address":"0x') + len(b'"address":"0x')
        state[i] ^= 0x01
        db_update_state(chain["db"], 4, bytes(state))
    else:
        lines = chain["export"].read_bytes().split(b"\n")
        line = bytearray(lines[4])  # seq 4 (line 1 is the header)
        i = line.index(b'"address":"0x') + len(b'"address":"0x')
        line[i] ^= 0x01
        lines[4] = bytes(line)
        chain["export"].write_bytes(b"\n".join(lines))
    code, report = verify_json(*source_args(chain, source))
    assert code == 1
    assert report["findings"] == [{"seq": 4, "kind": "modified", "detail": "hash does not match content"}]


@pytest.mark.parametrize("source", ["db", "export"])
def test_delete_one_record(chain: dict[str, Any], source: str) -> None:
    if source == "db":
        with sqlite3.connect(chain["db"]) as conn:
            conn.execute("DELETE FROM ledger_records WHERE seq = 6")
        conn.close()
    else:
        records = chain["records"]
        write_export(chain["export"], header(records), records[:5] + records[6:])
    code, report = verify_json(*source_args(chain, source), "--anchor-db", str(chain["anchor"]))
    assert code == 1
    assert kinds(report) == [(6, "missing")]


@pytest.mark.parametrize("source", ["db", "export"])
def test_delete_five_consecutive_records(chain: dict[str, Any], source: str) -> None:
    if source == "db":
        with sqlite3.connect(chain["db"]) as conn:  # the event rows this time: the join loses them
            for seq in range(3, 8):
                stream, version = conn.execute("SELECT stream, version FROM ledger_records WHERE seq = ?", (seq,)).fetchone()
                conn.execute(
                    "DELETE FROM stored_events WHERE originator_id = ? AND originator_version = ?",
                    (stream.replace("-", ""), version),
                )
        conn.close()
    else:
        records = chain["records"]
        write_export(chain["export"], header(records), records[:2] + records[7:])
    code, report = verify_json(*source_args(chain, source))
    assert code == 1
    assert kinds(report) == [(3, "missing"), (4, "missing"), (5, "missing"), (6, "missing"), (7, "missing")]


def test_swap_two_records(chain: dict[str, Any]) -> None:
    records = list(chain["records"])
    records[4], records[5] = records[5], records[4]  # seq 6 is read before seq 5
    write_export(chain["export"], header(chain["records"]), records)
    code, report = verify_json("--export", str(chain["export"]), "--anchor-db", str(chain["anchor"]))
    assert code == 1
    assert kinds(report) == [(5, "reordered")]


def test_duplicate_a_record(chain: dict[str, Any]) -> None:
    records = chain["records"]
    write_export(chain["export"], header(records), records[:8] + [records[7]] + records[8:])
    code, report = verify_json("--export", str(chain["export"]), "--anchor-db", str(chain["anchor"]))
    assert code == 1
    assert kinds(report) == [(8, "duplicated")]


def test_fork_same_seq_different_content(chain: dict[str, Any]) -> None:
    records = chain["records"]
    fork = rehash({**records[7], "data": {**records[7]["data"], "address": "0x" + "ee" * 20}})
    assert fork["prev"] == records[6]["hash"] and fork["hash"] != records[7]["hash"]  # a self-consistent fork
    write_export(chain["export"], header(records), records[:8] + [fork] + records[8:])
    code, report = verify_json("--export", str(chain["export"]))
    assert code == 1
    assert kinds(report) == [(8, "forked")]


@pytest.mark.parametrize("source", ["db", "export"])
def test_truncate_tail_detected_via_anchor(chain: dict[str, Any], source: str) -> None:
    records = chain["records"]
    kept = records[:9]
    if source == "db":  # rows gone and the head row moved back: only the anchor knows
        with sqlite3.connect(chain["db"]) as conn:
            conn.execute("DELETE FROM ledger_records WHERE seq > 9")
            conn.execute("UPDATE ledger_head SET seq = 9, hash = ? WHERE id = 1", (kept[-1]["hash"],))
        conn.close()
    else:  # the tail cut and the header rewritten to match
        write_export(chain["export"], header(kept), kept)
        code, report = verify_json("--export", str(chain["export"]))
        assert (code, report["valid"]) == (0, True)  # consistent on its own ...
    code, report = verify_json(*source_args(chain, source), "--anchor-db", str(chain["anchor"]))
    assert code == 1  # ... but the anchor confirmed seqs 10..12
    assert kinds(report) == [(10, "truncated"), (11, "truncated"), (12, "truncated")]


def test_truncate_tail_detected_via_export_header(chain: dict[str, Any]) -> None:
    records = chain["records"]
    write_export(chain["export"], header(records), records[:9])  # the header still claims head 12
    code, report = verify_json("--export", str(chain["export"]))
    assert code == 1
    assert kinds(report) == [(10, "truncated"), (11, "truncated"), (12, "truncated")]


@pytest.mark.parametrize("source", ["db", "export"])
def test_replace_record_and_recompute_every_later_hash_detected_via_anchor(chain: dict[str, Any], source: str) -> None:
    records = chain["records"]
    k = 5
    forged = list(records)
    forged[k - 1] = {**forged[k - 1], "data": {**forged[k - 1]["data"], "address": "0x" + "66" * 20}}
    forged = rechain(forged, k - 1)
    if source == "db":
        body = {"at": forged[k - 1]["at"], "data": forged[k - 1]["data"]}
        db_update_state(chain["db"], k, _ENC.encode(body))
        with sqlite3.connect(chain["db"]) as conn:
            conn.executemany(
                "UPDATE ledger_records SET prev = ?, hash = ? WHERE seq = ?",
                [(r["prev"], r["hash"], r["seq"]) for r in forged[k - 1 :]],
            )
            conn.execute("UPDATE ledger_head SET hash = ? WHERE id = 1", (forged[-1]["hash"],))
        conn.close()
    else:
        write_export(chain["export"], header(forged), forged)
    code, report = verify_json(*source_args(chain, source))
    assert (code, report["valid"]) == (0, True)  # the forgery is consistent on its own ...
    # ... but the anchor confirmed seqs 1..10 only (11 and 12 were appended later)
    make_anchor(chain["dir"] / "anchor10.sqlite", [(r["seq"], r["hash"]) for r in records[:10]])
    code, report = verify_json(*source_args(chain, source), "--anchor-db", str(chain["dir"] / "anchor10.sqlite"))
    assert code == 1
    assert kinds(report) == [(seq, "anchor_mismatch") for seq in range(k, 11)]


def test_modify_the_anchor_instead_of_the_ledger(chain: dict[str, Any]) -> None:
    with sqlite3.connect(chain["anchor"]) as conn:
        conn.execute("UPDATE anchored SET hash = ? WHERE seq = 7", ("ab" * 32,))
    conn.close()
    for source in ("db", "export"):
        code, report = verify_json(*source_args(chain, source), "--anchor-db", str(chain["anchor"]))
        assert code == 1
        assert report["findings"] == [
            {
                "seq": 7,
                "kind": "anchor_mismatch",
                "detail": f"anchored hash {'ab' * 32} differs from the record's hash {chain['records'][6]['hash']}",
            }
        ]


# --- usage and I/O errors: exit 2, one line, no traceback ----------------------------------------


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("agentkeys-broker: error: ")
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize("flag", ["--db", "--export"])
def test_missing_file_exits_2(tmp_path: Path, flag: str) -> None:
    proc = run("audit", "verify", flag, str(tmp_path / "nope"), "--json")
    assert_one_line_error(proc, "nope", "no such file")


@pytest.mark.parametrize("flag", ["--db", "--export"])
def test_garbage_file_exits_2(tmp_path: Path, flag: str) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 40)
    proc = run("audit", "verify", flag, str(garbage))
    assert_one_line_error(proc, "garbage.bin")


def test_sqlite_file_that_is_not_a_ledger_exits_2(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    proc = run("audit", "verify", "--db", str(other))
    assert_one_line_error(proc, "not an agentkeys ledger")


def test_missing_anchor_db_exits_2(chain: dict[str, Any]) -> None:
    proc = run("audit", "verify", "--db", str(chain["db"]), "--anchor-db", str(chain["dir"] / "none.sqlite"))
    assert_one_line_error(proc, "anchor database", "no such file")


def test_anchor_db_without_the_anchored_table_exits_2(chain: dict[str, Any]) -> None:
    proc = run("audit", "verify", "--export", str(chain["export"]), "--anchor-db", str(chain["db"]))
    assert_one_line_error(proc, "anchored")


def test_export_line_with_no_readable_seq_exits_2_naming_the_line(chain: dict[str, Any]) -> None:
    records = chain["records"]
    write_export(chain["export"], header(records), records[:3] + [b"this is not json"] + records[3:])
    proc = run("audit", "verify", "--export", str(chain["export"]))
    assert_one_line_error(proc, "line 5")


def test_export_missing_ledger_exits_2(tmp_path: Path) -> None:
    proc = run("audit", "export", "--db", str(tmp_path / "nope.sqlite"), "--out", str(tmp_path / "out.jsonl"))
    assert_one_line_error(proc, "no such file")
    assert not (tmp_path / "out.jsonl").exists()


def test_export_to_unwritable_place_exits_2(chain: dict[str, Any]) -> None:
    proc = run("audit", "export", "--db", str(chain["db"]), "--out", str(chain["dir"] / "no" / "dir" / "out.jsonl"))
    assert_one_line_error(proc, "cannot write export")


def test_usage_errors_exit_2(chain: dict[str, Any]) -> None:
    proc = run("audit", "verify")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = run("audit", "verify", "--db", str(chain["db"]), "--export", str(chain["export"]))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_progress_goes_to_stderr_only(chain: dict[str, Any]) -> None:
    proc = run("audit", "verify", "--export", str(chain["export"]), "--json", "--progress")
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["valid"] is True
