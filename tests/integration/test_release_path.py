"""The one release path (ledger/services/release.py): the two behaviours that had
drifted between its former copies (issue 8).

- a `/v1/auth/exchange` cut off while its session waits for the anchor records `SessionWithheld`
  (the exchange had no cancellation branch);
- a mint refused fast because a required anchor is unready records `MintDenied{anchor_unready}`
  (the fast 503 recorded nothing), and STS is never called.
"""

from __future__ import annotations

import os
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from ledger.ports import Readiness
from tests.integration.test_legacy_bearer import WALLET, _Backend
from tests.integration.test_mint import Broker, assert_no_credentials, build_services, make_pair
from tests.support import LiveServer, broker_env, signed_mint_body
from tests.support_moto import sts_env


@pytest.fixture
def backend():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class _Vouching:
    """The legacy backend's answer for a valid bearer (the HTTP adapter is tested against a real
    backend in test_legacy_bearer.py; here only the release path is under test)."""

    async def validate(self, token: str) -> str:
        return WALLET


def _release_parts(tmp_path: Path):  # noqa: ANN202
    """A real ledger, a real gate over an anchor that is never fed (so it never confirms), and the
    real session signer."""
    from anchors.memory import MemoryAnchor
    from api.auth.session_jwt import SessionSigner
    from api.keys import generate_keyfile, load_keyring
    from api.signing import JwtSessionIssuer
    from ledger.anchoring import ConfirmationWaiter
    from ledger.app import Ledger
    from ledger.config import LedgerConfig
    from ledger.gate import ReleaseGate
    from ledger.services.release import ReleasePath

    generate_keyfile(tmp_path / "session.json", "session")
    issuer = JwtSessionIssuer(SessionSigner(load_keyring(tmp_path / "session.json", "session"), "https://b.invalid"))
    ledger = Ledger(LedgerConfig(tmp_path / "ledger.sqlite"))
    anchor = MemoryAnchor(name="sqlite")
    gate = ReleaseGate([anchor], ["sqlite"], 60_000, waiter=ConfirmationWaiter())
    return ledger, issuer, ReleasePath(ledger=ledger, gate=gate)


def test_cut_off_legacy_exchange_records_session_withheld(tmp_path: Path) -> None:
    """An exchange cancelled while its session waits for the anchor (shutdown past its grace, the
    client gone) ends with `SessionWithheld{request_cancelled}` naming its session."""
    import asyncio

    from ledger.services.legacy import LegacyService

    ledger, issuer, release = _release_parts(tmp_path)
    legacy = LegacyService(backend=_Vouching(), ledger=ledger, issuer=issuer, release=release,
                           mint_service=None)  # type: ignore[arg-type]  # the exchange never mints

    async def cut_off() -> None:
        task = asyncio.create_task(legacy.exchange("good-token"))
        while not any(r.type == "SessionIssued" for r in ledger.read(0, 100)):
            await asyncio.sleep(0.01)  # the session is recorded; the exchange now waits on the gate
        await asyncio.sleep(0.05)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(cut_off())
        # the outcome is queued on the writer (a cancelled task must not block the loop on a commit)
        deadline = time.monotonic() + 10
        while ledger.read(0, 100)[-1].type != "SessionWithheld" and time.monotonic() < deadline:
            time.sleep(0.01)
        records = ledger.read(0, 100)
    finally:
        ledger.close()
    [issued] = [r for r in records if r.type == "SessionIssued"]
    assert issued.data["wallet_address"] == WALLET
    last = records[-1]
    assert last.type == "SessionWithheld", [r.type for r in records]
    assert last.stream == issued.stream
    assert last.data == {"jti": issued.data["jti"], "session_seq": issued.seq, "reason": "request_cancelled",
                         "missing_anchors": []}


def test_legacy_exchange_past_the_deadline_is_503_and_records_session_withheld(tmp_path: Path, dev_aws,
                                                                             backend: str) -> None:
    env = broker_env(tmp_path, **sts_env(dev_aws), BROKER_LEGACY_BEARER="true", BROKER_BACKEND_URL=backend,
                     BROKER_ANCHOR_DEADLINE_MS="300")
    with LiveServer(build_services(env)) as server:
        server.services.pump.stop()
        r = httpx.post(server.url + "/v1/auth/exchange", headers={"Authorization": "Bearer good-token"}, timeout=30)
        assert r.status_code == 503 and r.json()["reason"] == "anchor_deadline", r.text
        assert "eyJ" not in r.text
        types = [rec.type for rec in server.services.ledger.read(0, 100000)]
        assert types[-2:] == ["SessionIssued", "SessionWithheld"]


def test_mint_while_the_required_anchor_is_unready_is_refused_before_sts_and_recorded(tmp_path: Path,
                                                                                    dev_aws) -> None:
    env = broker_env(tmp_path, **sts_env(dev_aws))
    with LiveServer(build_services(env)) as server:
        broker = Broker(server)
        *_, daemon, daemon_jwt, grant = make_pair(broker)
        anchor_db = server.services.config.anchor_db
        for suffix in ("", "-wal", "-shm"):  # the anchor file vanishes; a directory takes its place
            p = Path(str(anchor_db) + suffix)
            if p.exists():
                os.replace(p, Path(str(p) + ".moved"))
        anchor_db.mkdir()
        deadline = time.monotonic() + 15  # the background probe notices (api/probes.py); mints read its result
        while (server.services.latest_readiness("anchor/sqlite") or Readiness("ready")).ok:
            assert time.monotonic() < deadline, "the anchor probe never reported the anchor unready"
            time.sleep(0.05)
        body = signed_mint_body(daemon)
        r = broker.mint(daemon_jwt, body)
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "anchor_unavailable" and r.json()["reason"] == "anchor_unready"
        assert_no_credentials(r)
        assert broker.minter.calls == 0
        [denied] = broker.events("MintDenied")
        assert denied["reason"] == "anchor_unready" and denied["request_id"] == body["request_id"]
        assert denied["wallet"] == daemon.address and "sqlite" in denied["detail"]
        assert not broker.events("MintRequested") and not broker.events("GrantUsed")
        broker.client.close()
