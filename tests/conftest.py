"""Shared fixtures: temp ledgers on real SQLite files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def cli_path() -> str:
    """The installed console script (tests run it as a real subprocess)."""
    exe = VENV_BIN / "agentkeys-broker"
    return str(exe) if exe.exists() else "agentkeys-broker"


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite"


@pytest.fixture
def ledger(ledger_path: Path):
    from ledger.app import Ledger
    from ledger.config import LedgerConfig

    led = Ledger(LedgerConfig(ledger_path))
    yield led
    led.close()


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# Shared service fixtures (one moto server per test session; anvil fixtures live in
# tests/support_anvil.py and are imported by the modules that need a chain).
from tests.support_moto import dev_aws, moto_endpoint, moto_server  # noqa: E402,F401
