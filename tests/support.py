"""Test support: a broker served over real HTTP (uvicorn on a free loopback port), key files,
wallets that sign like a daemon would."""

from __future__ import annotations

import socket
import threading
import time
from datetime import UTC
from pathlib import Path

import uvicorn
from eth_account import Account
from eth_account.messages import encode_defunct


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def broker_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """A complete, valid environment for `BrokerConfig.from_env` with fresh key files."""
    from api.keys import generate_keyfile

    keys = tmp_path / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    oidc, session = keys / "oidc.json", keys / "session.json"
    if not oidc.exists():
        generate_keyfile(oidc, "oidc")
    if not session.exists():
        generate_keyfile(session, "session")
    env = {
        "HOME": str(tmp_path),
        "BROKER_DATA_DIR": str(tmp_path / "data"),
        "BROKER_OIDC_ISSUER": "https://broker.test.invalid",
        "BROKER_OIDC_KEYPAIR_PATH": str(oidc),
        "BROKER_SESSION_KEYPAIR_PATH": str(session),
        "BROKER_DATA_ROLE_ARN": "arn:aws:iam::123456789012:role/agentkeys-data-role",
        "BROKER_S3_BUCKETS": "agentkeys-dev",
        "BROKER_STS_ENDPOINT_URL": "http://127.0.0.1:9",  # nothing listens: tests that mint use moto
    }
    env.update(overrides)
    return env


class LiveServer:
    """`create_app(Services.build(config))` under uvicorn in a thread, on a free port."""

    def __init__(self, services) -> None:  # noqa: ANN001
        from api.app import create_app

        self.services = services
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(services), host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="on", proxy_headers=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("server thread died during start-up")
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


class Wallet:
    """An EOA that signs EIP-191 messages, as a daemon with eth-account would."""

    def __init__(self, key: bytes | None = None) -> None:
        self.account = Account.from_key(key) if key else Account.create()

    @property
    def address(self) -> str:
        return self.account.address.lower()

    def sign(self, text: str) -> str:
        return "0x" + self.account.sign_message(encode_defunct(text=text)).signature.hex().removeprefix("0x")


def sign_in(client, wallet: Wallet, chain_id: int = 84532) -> dict:  # noqa: ANN001
    start = client.post("/v1/auth/wallet/start", json={"address": wallet.address, "chain_id": chain_id})
    assert start.status_code == 200, start.text
    body = start.json()
    verify = client.post("/v1/auth/wallet/verify",
                         json={"request_id": body["request_id"], "signature": wallet.sign(body["siwe_message"])})
    assert verify.status_code == 200, verify.text
    return verify.json()


DEV_BUCKET = "agentkeys-dev"
# daemon address -> the OmniAccount of the master whose grant it mints under (filled by `remember_master`,
# called by the tests' grant helpers), so a default mint scope lies in that master's namespace
MASTERS: dict[str, str] = {}


def omni_of(who: Wallet | str) -> str:
    """The OmniAccount of a wallet, of a session JWT (its `sub`), or an OmniAccount itself."""
    if isinstance(who, Wallet):
        from ledger.identity import evm_omni_account

        return evm_omni_account(who.address)
    if who.count(".") == 2:  # a session JWT: sub = agentkeys:user:<omni>
        import base64
        import json

        payload = who.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims["sub"]).rsplit(":", 1)[-1]
    return who


def ns(master: Wallet | str, rest: str = "agents/a1/", bucket: str = DEV_BUCKET) -> str:
    """A scope in `master`'s namespace (design §3a: `<bucket>/<omni_account>/...`)."""
    return f"{bucket}/{omni_of(master)}/{rest}"


def remember_master(daemon_address: str, master: Wallet | str) -> None:
    MASTERS[daemon_address.lower()] = omni_of(master)


def signed_mint_body(wallet: Wallet, *, request_id: str | None = None, service: str = "s3",
                     scope_path: str | None = None, agent_id: str = "agent-1",
                     issued_at: str | None = None, extra: dict | None = None, address: str | None = None) -> dict:
    """A v2 mint body signed the way a daemon signs it (seed-spec §B.4). Default scope: `agents/a1/`
    in the namespace of the daemon's master (`remember_master`), else of the wallet itself."""
    if scope_path is None:
        scope_path = ns(MASTERS.get(wallet.address.lower()) or wallet)
    import json
    import uuid as _uuid
    from datetime import datetime

    body = {
        "request_id": request_id or f"req-{_uuid.uuid4().hex}",
        "issued_at": issued_at or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "intent": {"agent_id": agent_id, "service": service, "scope_path": scope_path},
        "auth": {"address": address or wallet.address, "signature": ""},
        **(extra or {}),
    }
    unsigned = json.loads(json.dumps(body))
    unsigned["auth"].pop("signature")
    canonical = json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    body["auth"]["signature"] = wallet.sign(canonical)
    return body
