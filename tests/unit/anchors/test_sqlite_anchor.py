"""SQLiteAnchor specifics beyond the shared contract: the file an auditor reads, durability
settings, several processes on one file, and live readiness."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from anchors.errors import AnchorUnavailable
from anchors.sqlite import SQLiteAnchor, _open
from tests.contract.chains import extend, make_chain

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "witness" / "anchor.sqlite"


@pytest.fixture
def anchor(path: Path):
    a = SQLiteAnchor(path)
    yield a
    a.close()


def test_auditor_reads_the_anchored_table_directly(anchor: SQLiteAnchor, path: Path) -> None:
    chain = make_chain(7)
    anchor.submit(chain)
    with sqlite3.connect(path) as raw:
        cols = [(name, type_, notnull, pk) for _, name, type_, notnull, _, pk in raw.execute("PRAGMA table_info(anchored)")]
        rows = raw.execute("SELECT seq, hash FROM anchored ORDER BY seq").fetchall()
    assert cols == [("seq", "INTEGER", 0, 1), ("hash", "TEXT", 1, 0)]
    assert rows == [(r.seq, r.hash) for r in chain]


def test_wal_and_synchronous_full(anchor: SQLiteAnchor, path: Path) -> None:
    anchor.submit(make_chain(1))
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn = _open(path, create=False, timeout=1)
    try:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        conn.close()


def test_another_instance_sees_writes_at_once(anchor: SQLiteAnchor, path: Path) -> None:
    other = SQLiteAnchor(path)
    try:
        chain = make_chain(3)
        assert other.confirmed_upto() == 0
        anchor.submit(chain)
        assert other.confirmed_upto() == 3
        other.submit(extend(chain, 2))
        assert anchor.confirmed_upto() == 5
        assert anchor.verify(5, other.anchored_range(5, 5)[5])
    finally:
        other.close()


def test_several_processes_write_one_file(path: Path) -> None:
    """Processes racing on one file, each re-submitting from the position it reads: no gap, no
    duplicate, every hash matches."""
    n, procs = 400, 4
    SQLiteAnchor(path).close()
    script = textwrap.dedent(
        f"""
        import random, sys
        sys.path.insert(0, {str(ROOT)!r})
        from anchors.sqlite import SQLiteAnchor
        from tests.contract.chains import make_chain
        chain = make_chain({n})
        a = SQLiteAnchor({str(path)!r})
        rnd = random.Random(int(sys.argv[1]))
        while (c := a.confirmed_upto()) < {n}:
            a.submit(chain[max(0, c - rnd.randint(0, 3)) : c + rnd.randint(1, 12)])
        a.close()
        """
    )
    children = [subprocess.Popen([sys.executable, "-c", script, str(i)], stderr=subprocess.PIPE) for i in range(procs)]
    for child in children:
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err.decode()
    chain = make_chain(n)
    with sqlite3.connect(path) as raw:
        rows = raw.execute("SELECT seq, hash FROM anchored ORDER BY seq").fetchall()
    assert rows == [(r.seq, r.hash) for r in chain]


def test_conflict_leaves_the_file_untouched(anchor: SQLiteAnchor, path: Path) -> None:
    from anchors.errors import AnchorConflict

    chain = make_chain(4)
    anchor.submit(chain)
    with pytest.raises(AnchorConflict):
        anchor.submit(make_chain(6, fork="f")[2:])
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT seq, hash FROM anchored ORDER BY seq").fetchall() == [(r.seq, r.hash) for r in chain]


# --- readiness and driver errors --------------------------------------------------------------


def test_ready_detail_names_the_file(anchor: SQLiteAnchor, path: Path) -> None:
    r = anchor.ready()
    assert (r.status, r.detail) == ("ready", f"sqlite: {path}")
    with sqlite3.connect(path) as raw:  # the probe really wrote
        assert raw.execute("SELECT count(*) FROM _readyz_probe").fetchone()[0] == 1


def test_garbage_file_turns_unready_and_back(anchor: SQLiteAnchor, path: Path) -> None:
    chain = make_chain(5)
    anchor.submit(chain)
    anchor.close()  # checkpoint: the main file holds everything
    good = path.read_bytes()
    path.write_bytes(b"this is not a database " * 200)

    r = anchor.ready()
    assert r.status == "unready" and not r.ok
    assert r.detail.startswith(f"sqlite anchor at {path} is not writable: ")
    with pytest.raises(AnchorUnavailable) as info:
        anchor.confirmed_upto()
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    with pytest.raises(AnchorUnavailable):
        anchor.submit(extend(chain, 1))

    path.write_bytes(good)
    assert anchor.ready().status == "ready"
    assert anchor.confirmed_upto() == 5
    anchor.submit(extend(chain, 1))
    assert anchor.confirmed_upto() == 6


def test_file_replaced_behind_open_connections_is_noticed(anchor: SQLiteAnchor, path: Path) -> None:
    anchor.submit(make_chain(3))
    assert anchor.confirmed_upto() == 3  # connections are open and cached
    garbage = path.with_name("garbage")
    garbage.write_bytes(os.urandom(8192))
    os.replace(garbage, path)  # a new inode under the same name
    assert anchor.ready().status == "unready"
    with pytest.raises(AnchorUnavailable):
        anchor.confirmed_upto()


def test_vanished_directory_turns_unready_and_back(anchor: SQLiteAnchor, path: Path) -> None:
    anchor.submit(make_chain(2))
    moved = path.parent.with_name("moved")
    path.parent.rename(moved)
    try:
        assert anchor.ready().status == "unready"
        with pytest.raises(AnchorUnavailable):
            anchor.confirmed_upto()
        assert not path.exists()  # not silently re-created
    finally:
        moved.rename(path.parent)
    assert anchor.ready().status == "ready"
    assert anchor.confirmed_upto() == 2


def test_deleted_file_is_not_recreated(anchor: SQLiteAnchor, path: Path) -> None:
    anchor.submit(make_chain(2))
    anchor.close()
    for p in path.parent.glob(path.name + "*"):
        p.unlink()
    assert anchor.ready().status == "unready"
    with pytest.raises(AnchorUnavailable, match="vanished"):
        anchor.confirmed_upto()
    assert not path.exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_directory_turns_unready_and_back(anchor: SQLiteAnchor, path: Path) -> None:
    anchor.submit(make_chain(1))
    path.parent.chmod(0o555)
    try:
        r = anchor.ready()
        assert r.status == "unready" and "not writable" in r.detail
    finally:
        path.parent.chmod(0o755)
    assert anchor.ready().status == "ready"


def test_unusable_path_does_not_crash_construction(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    a = SQLiteAnchor(blocker / "anchor.sqlite")  # its "directory" is a file
    r = a.ready()
    assert r.status == "unready" and str(blocker / "anchor.sqlite") in r.detail
    with pytest.raises(AnchorUnavailable):
        a.submit(make_chain(1))


def test_path_that_is_a_directory_is_unready(tmp_path: Path) -> None:
    d = tmp_path / "dir.sqlite"
    d.mkdir()
    a = SQLiteAnchor(d)
    assert a.ready().status == "unready"
    with pytest.raises(AnchorUnavailable):
        a.confirmed_upto()


def test_garbage_written_under_open_connections_is_noticed(anchor: SQLiteAnchor, path: Path) -> None:
    chain = make_chain(3)
    anchor.submit(chain)
    assert anchor.confirmed_upto() == 3  # connections are open and cached, the WAL holds pages
    path.write_bytes(b"\xff" * 8192)  # same inode, overwritten in place
    assert anchor.ready().status == "unready"
    with pytest.raises(AnchorUnavailable):
        anchor.submit(extend(chain, 1))
    with pytest.raises(AnchorUnavailable):
        anchor.verify(1, chain[0].hash)
