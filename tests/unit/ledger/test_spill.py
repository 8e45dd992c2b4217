"""The spill (ledger/spill.py): a credential STS issued that the ledger could not take is kept
durably (key id and session name, never the secret) and enters the ledger on recovery."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from ledger.aggregates import MintRequest
from ledger.app import Ledger
from ledger.events import MintRequested
from ledger.ports import sts_session_name
from ledger.spill import CredentialSpill, SpillEntry, SpillUnavailable, low_on_space, recover, spill_or_log

WALLET = "0x" + "cd" * 20


def entry(request_id: str = "r1", seq: int = 7) -> SpillEntry:
    return SpillEntry(request_id=request_id, wallet=WALLET, requested_seq=seq,
                      sts_session_name=sts_session_name(WALLET, seq), role_arn="arn:aws:iam::123456789012:role/r",
                      access_key_id="ASIA" + request_id.upper().ljust(16, "0"), expiration=2_000_000_000,
                      detail="ledger write failed: database or disk is full")


def test_spill_is_preallocated_and_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spill.journal"
    spill = CredentialSpill(path, 8192)
    assert path.stat().st_size == 8192 and os.stat(path).st_blocks * 512 >= 8192  # blocks really allocated
    spill.write(entry("r1"))
    spill.write(entry("r2"))
    spill.close()
    again = CredentialSpill(path, 8192)
    assert [e.request_id for e in again.pending()] == ["r1", "r2"]
    assert path.stat().st_size == 8192


def test_spill_never_holds_a_secret(tmp_path: Path) -> None:
    assert "secret" not in " ".join(SpillEntry.__dataclass_fields__)
    spill = CredentialSpill(tmp_path / "s", 4096)
    spill.write(entry())
    text = (tmp_path / "s").read_bytes().rstrip(b"\0").decode()
    assert "ASIAR1" in text and "SecretAccessKey" not in text and "session_token" not in text


def test_torn_last_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "s"
    spill = CredentialSpill(path, 4096)
    spill.write(entry("r1"))
    end = path.read_bytes().find(b"\0")
    spill.close()
    with open(path, "r+b") as f:  # a crash mid-write leaves half a line
        f.seek(end)
        f.write(b'{"spill":1,"entry":{"request_id":"r2"')
    again = CredentialSpill(path, 4096)
    assert [e.request_id for e in again.pending()] == ["r1"]


def test_full_spill_falls_back_to_one_critical_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spill = CredentialSpill(tmp_path / "s", 4096)
    written = 0
    with pytest.raises(SpillUnavailable):
        while True:
            spill.write(entry(f"r{written}"))
            written += 1
    assert written > 5
    with caplog.at_level(logging.CRITICAL, logger="agentkeys.spill"):
        assert spill_or_log(spill, entry("lost")) is False
    [line] = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert "ASIALOST" in line.getMessage() and "NOWHERE" in line.getMessage()
    assert sts_session_name(WALLET, 7) in line.getMessage()


def test_recover_records_mint_unreleased_with_the_key_id_and_acknowledges(tmp_path: Path, ledger: Ledger) -> None:
    requested = MintRequested(request_id="r1", request_digest="d" * 64, omni_account="o" * 64, identity_type="evm",
                              identity_value=WALLET, wallet=WALLET, agent_id="a", service="s3", scope_path="b/",
                              grant_id="", session_jti="j")
    [record] = ledger.append(MintRequest.stream_for(WALLET, "r1"), 0, [requested])
    spill = CredentialSpill(tmp_path / "s", 4096)
    lost = entry("r1", record.seq)
    assert spill_or_log(spill, lost) is True
    assert recover(ledger, spill) == [lost.access_key_id]
    [unreleased] = [r.data for r in ledger.read(0, 100) if r.type == "MintUnreleased"]
    assert unreleased["reason"] == "ledger_write_failed" and unreleased["access_key_id"] == lost.access_key_id
    assert unreleased["sts_session_name"] == f"agentkeys-{'cd' * 20}-{record.seq}"
    assert spill.pending() == [] and spill.free == spill.size  # acknowledged, then compacted
    assert recover(ledger, spill) == []  # nothing twice


def test_low_on_space(tmp_path: Path) -> None:
    assert low_on_space(tmp_path / "ledger.sqlite", 1 << 62)
    assert not low_on_space(tmp_path / "ledger.sqlite", 1)
