"""Anvil fixtures for tests (the node runner itself is anchors/dev_chain.py).

Import the ones you use into the test module, e.g.
``from tests.support_anvil import anvil_module  # noqa: F401``:

- `anvil`: a fresh node per test;
- `anvil_module`: one node per test module (isolate tests with `snapshot` / `revert`);
- `anvil_session`: one node for the whole run.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from anchors.dev_chain import CHAIN_ID, DEFAULT_ANVIL_BIN, WELL_KNOWN_KEYS, Anvil, AnvilError, anvil_bin  # noqa: F401


@pytest.fixture
def anvil() -> Iterator[Anvil]:
    with Anvil() as node:
        yield node


@pytest.fixture(scope="module")
def anvil_module() -> Iterator[Anvil]:
    with Anvil() as node:
        yield node


@pytest.fixture(scope="session")
def anvil_session() -> Iterator[Anvil]:
    with Anvil() as node:
        yield node
