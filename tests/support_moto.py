"""pytest fixtures for a real moto server over loopback.

Import the fixtures you use into a test module (`from tests.support_moto import moto_server,
moto_endpoint  # noqa: F401`):

- `moto_server` (session): one `MotoServer` for the whole run, stopped by PID at the end;
- `moto_endpoint` (function): the server's endpoint, reset to empty before and after the test
  (`/moto-api/reset`, IAM enforcement off);
- `dev_aws` (function): a clean server with the broker's role and bucket (`bootstrap_dev_aws`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from api.moto_server import MotoServer, bootstrap_dev_aws, dev_broker_env


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer.start(log_path=tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def moto_endpoint(moto_server: MotoServer) -> Iterator[str]:
    moto_server.reset()
    yield moto_server.endpoint
    moto_server.reset()


@pytest.fixture
def dev_aws(moto_endpoint: str) -> dict[str, Any]:
    return bootstrap_dev_aws(moto_endpoint)


def sts_env(info: dict[str, Any], **overrides: str) -> dict[str, str]:
    """A complete STS environment for `StsSettings.from_env` pointing at the moto server."""
    env = dev_broker_env(info)
    env.update(overrides)
    return env
