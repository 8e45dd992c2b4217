"""Issue 11 hygiene over real HTTP (uvicorn on loopback, moto STS through boto3): EIP-55 checksums,
out-of-range audit seqs, slow bodies, no-store, the signed `aud`, secrets in DEBUG logs."""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import httpx
import pytest

from api.config import BrokerConfig
from api.runtime import Services
from ledger.identity import checksum_address
from tests.integration.test_mint import Broker, assert_no_credentials, auth, broker, pair  # noqa: F401
from tests.support import LiveServer, Wallet, broker_env, ns, remember_master, sign_in, signed_mint_body
from tests.support_moto import sts_env

ISSUER = "https://broker.test.invalid"  # broker_env's BROKER_OIDC_ISSUER


def bad_checksum(address: str) -> str:
    """`address` in EIP-55 form with the case of one letter flipped: mixed case, wrong checksum."""
    good = checksum_address(address)
    i = next(i for i, c in enumerate(good) if i >= 2 and c.isalpha())
    flipped = good[:i] + (good[i].lower() if good[i].isupper() else good[i].upper()) + good[i + 1:]
    assert flipped.lower() == address.lower() and flipped != flipped.lower() and flipped != flipped.upper()
    return flipped


@pytest.fixture
def server(tmp_path: Path):
    token_file = tmp_path / "operator.token"
    token_file.write_text("op-" + "x" * 40)
    token_file.chmod(0o600)
    env = broker_env(tmp_path, BROKER_OPERATOR_TOKEN_FILE=str(token_file), BROKER_REQUEST_BODY_TIMEOUT_SECONDS="1")
    with LiveServer(Services.build(BrokerConfig.from_env(env))) as live:
        with httpx.Client(base_url=live.url, timeout=30) as client:
            yield live, client, "op-" + "x" * 40


# --- EIP-55 -------------------------------------------------------------------------------------

def test_sign_in_with_a_mistyped_checksum_address_is_refused(server) -> None:
    live, client, _ = server
    wallet = Wallet()
    before = live.services.ledger.head().seq
    r = client.post("/v1/auth/wallet/start", json={"address": bad_checksum(wallet.address), "chain_id": 84532})
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
    assert "EIP-55 checksum" in r.json()["message"]
    assert live.services.ledger.head().seq == before  # nothing recorded
    # EIP-55 itself: the checksummed form, all-lowercase and all-uppercase hex are accepted
    for form in (checksum_address(wallet.address), wallet.address, "0x" + wallet.address[2:].upper()):
        ok = client.post("/v1/auth/wallet/start", json={"address": form, "chain_id": 84532})
        assert ok.status_code == 200, ok.text
        assert wallet.address in ok.json()["siwe_message"]  # the message names the lowercase address


def test_grant_to_a_daemon_with_a_mistyped_checksum_is_refused(server) -> None:
    live, client, _ = server
    master, daemon = Wallet(), Wallet()
    jwt = sign_in(client, master)["session_jwt"]
    body = {"service": "s3", "scope_path": ns(master), "expires_at": int(time.time()) + 3600,
            "max_uses": 1}
    r = client.post("/v1/grant/create", json={**body, "daemon_address": bad_checksum(daemon.address)},
                    headers=auth(jwt))
    assert r.status_code == 400 and "EIP-55" in r.json()["message"], r.text
    assert live.services.ledger.read(0, 10_000)[-1].type != "GrantCreated"
    r = client.post("/v1/grant/create", json={**body, "daemon_address": checksum_address(daemon.address)},
                    headers=auth(jwt))
    assert r.status_code == 200, r.text


def test_mint_signed_for_a_mistyped_checksum_address_is_refused_before_any_record(broker: Broker, pair) -> None:
    *_, daemon, daemon_jwt, _ = pair
    before = broker.services.ledger.head().seq
    r = broker.mint(daemon_jwt, signed_mint_body(daemon, address=bad_checksum(daemon.address)))
    assert r.status_code == 400 and "auth.address" in r.json()["message"] and "EIP-55" in r.json()["message"]
    assert_no_credentials(r)
    assert broker.services.ledger.head().seq == before and broker.minter.calls == 0
    # the checksummed form of the same wallet, signed, mints
    ok = broker.mint(daemon_jwt, signed_mint_body(daemon, address=checksum_address(daemon.address)))
    assert ok.status_code == 200, ok.text


# --- audit records: out-of-range seqs --------------------------------------------------------------

@pytest.mark.parametrize("seq", ["0", "-1", "-9223372036854775809", str(2**63), str(2**63 + 5), str(2**64),
                                 "99999999999999999999999999", "1e3", "abc"])
def test_audit_record_seq_probing_out_of_range_is_404_not_500(server, seq: str) -> None:
    live, client, token = server
    sign_in(client, Wallet())
    r = client.get(f"/v1/audit/records/{seq}", headers=auth(token))
    assert r.status_code == 404 and r.json()["error"] == "not_found", r.text


def test_audit_record_seq_2_pow_63_and_past_the_head_are_404(server) -> None:
    live, client, token = server
    jwt = sign_in(client, Wallet())["session_jwt"]
    head = live.services.ledger.head().seq
    assert client.get(f"/v1/audit/records/{head}", headers=auth(token)).status_code == 200
    for seq in (2**63, head + 1, 0):
        for credential in (token, jwt):
            r = client.get(f"/v1/audit/records/{seq}", headers=auth(credential))
            assert r.status_code == 404 and r.json()["error"] == "not_found", (seq, r.text)


# --- slow bodies ----------------------------------------------------------------------------------

def _raw_request(port: int, head: bytes, first_part: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.sendall(head + first_part)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_slow_body_client_that_stalls_is_cut_off_with_408(server) -> None:
    live, _, _ = server
    body = json.dumps({"address": Wallet().address, "chain_id": 84532}).encode()
    head = (b"POST /v1/auth/wallet/start HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    before = live.services.ledger.head().seq
    with _raw_request(live.port, head, body[:10]) as sock:  # part of the body, then nothing
        raw = _read_all(sock)  # returns only when the server closes the connection (socket timeout 15 s)
    status_line, _, rest = raw.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 408"), raw[:300]
    headers, _, payload = rest.partition(b"\r\n\r\n")
    assert json.loads(payload)["error"] == "request_timeout"
    assert b"connection: close" in headers.lower() and b"cache-control: no-store" in headers.lower()
    assert live.services.ledger.head().seq == before  # the handler never ran to its append


def test_slow_body_client_that_trickles_is_cut_off_with_408(server) -> None:
    live, _, _ = server
    body = json.dumps({"address": Wallet().address, "chain_id": 84532}).encode()
    head = (b"POST /v1/auth/wallet/start HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    with _raw_request(live.port, head, body[:1]) as sock:
        sock.settimeout(0.25)
        raw = b""
        for byte in body[1:]:  # one byte every 0.25 s: each read is quick, the whole body is not
            try:
                sock.sendall(bytes([byte]))
                raw += sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if raw:
                break
        sock.settimeout(15)
        try:
            raw += _read_all(sock)
        except OSError:
            pass
    assert raw.startswith(b"HTTP/1.1 408"), raw[:300]


def test_a_body_sent_in_time_is_served(server) -> None:
    live, _, _ = server
    body = json.dumps({"address": Wallet().address, "chain_id": 84532}).encode()
    head = (b"POST /v1/auth/wallet/start HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    with _raw_request(live.port, head, body[:10]) as sock:
        sock.sendall(body[10:])
        raw = _read_all(sock)
    assert raw.startswith(b"HTTP/1.1 200"), raw[:300]


# --- Cache-Control: no-store ------------------------------------------------------------------------

def test_sessions_credentials_and_errors_are_never_cacheable(broker: Broker, pair) -> None:
    master, master_jwt, daemon, daemon_jwt, _ = pair
    client = broker.client
    start = client.post("/v1/auth/wallet/start", json={"address": daemon.address, "chain_id": 84532})
    verify = client.post("/v1/auth/wallet/verify", json={"request_id": start.json()["request_id"],
                                                         "signature": daemon.sign(start.json()["siwe_message"])})
    assert verify.status_code == 200 and "session_jwt" in verify.json()
    minted = broker.mint(daemon_jwt, signed_mint_body(daemon))
    assert minted.status_code == 200 and minted.json()["secret_access_key"]
    responses = {
        "start": start, "verify": verify, "mint": minted,
        "grant_list": client.get("/v1/grant/list", headers=auth(master_jwt)),
        "refused_mint": broker.mint(daemon_jwt, signed_mint_body(Wallet())),
        "unauthenticated": client.post("/v1/mint-aws-creds", json={}),
        "unknown_v1_path": client.get("/v1/no-such-thing"),
        "audit_head": client.get("/v1/audit/head"),
    }
    for name, r in responses.items():
        assert r.headers.get("cache-control") == "no-store", (name, r.status_code, dict(r.headers))
    assert "no-store" not in client.get("/healthz").headers.get("cache-control", "")  # status: not a /v1/ response


# --- the signed `aud` of a mint body ------------------------------------------------------------

def test_mint_signed_for_another_broker_is_refused_audience_mismatch(broker: Broker, pair) -> None:
    *_, daemon, daemon_jwt, _ = pair
    for aud in ("https://other-broker.example", ISSUER + "/", "", ISSUER.upper()):
        r = broker.mint(daemon_jwt, signed_mint_body(daemon, extra={"aud": aud}))
        assert r.status_code == 400 and r.json()["reason"] == "audience_mismatch", (aud, r.text)
        assert_no_credentials(r)
    assert broker.minter.calls == 0
    denied = broker.events("MintDenied")
    assert [d["reason"] for d in denied] == ["audience_mismatch"] * 4


def test_mint_whose_aud_was_rewritten_after_signing_is_refused(broker: Broker, pair) -> None:
    *_, daemon, daemon_jwt, _ = pair
    body = signed_mint_body(daemon, extra={"aud": "https://other-broker.example"})
    body["aud"] = ISSUER  # the signature covers aud: rewriting it breaks the signature
    r = broker.mint(daemon_jwt, body)
    assert r.status_code == 401 and r.json()["reason"] == "address_mismatch", r.text
    assert broker.minter.calls == 0


def test_mint_with_this_brokers_aud_or_none_is_released(broker: Broker, pair) -> None:
    *_, daemon, daemon_jwt, _ = pair
    assert broker.mint(daemon_jwt, signed_mint_body(daemon, extra={"aud": ISSUER})).status_code == 200
    assert broker.mint(daemon_jwt, signed_mint_body(daemon)).status_code == 200
    r = broker.mint(daemon_jwt, signed_mint_body(daemon, extra={"aud": 42}))
    assert r.status_code == 400  # not a string: a malformed body


# --- no secret in any log line, at any level -----------------------------------------------------

class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_debug_logs_of_a_full_sign_in_and_mint_carry_no_secret(tmp_path: Path, dev_aws) -> None:
    capture = _Capture()
    names = ("", "botocore", "boto3", "urllib3", "uvicorn", "uvicorn.error", "uvicorn.access", "agentkeys",
             "httpx", "httpcore")
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.DEBUG)
    logging.getLogger().addHandler(capture)
    for n in ("uvicorn", "uvicorn.access"):  # uvicorn's loggers do not propagate
        logging.getLogger(n).addHandler(capture)
    try:
        env = broker_env(tmp_path, **sts_env(dev_aws))
        with LiveServer(Services.build(BrokerConfig.from_env(env))) as live:
            for n in names:  # uvicorn's logging config ran at start-up (it replaces root's handlers): again
                logging.getLogger(n).setLevel(logging.DEBUG)
            for n in ("", "uvicorn", "uvicorn.access"):
                if capture not in logging.getLogger(n).handlers:
                    logging.getLogger(n).addHandler(capture)
            with httpx.Client(base_url=live.url, timeout=60) as client:
                master, daemon = Wallet(), Wallet()
                master_jwt = sign_in(client, master)["session_jwt"]
                grant = client.post("/v1/grant/create", headers=auth(master_jwt), json={
                    "daemon_address": daemon.address, "service": "s3", "scope_path": ns(master),
                    "expires_at": int(time.time()) + 3600, "max_uses": 5})
                assert grant.status_code == 200, grant.text
                remember_master(daemon.address, master)
                daemon_jwt = sign_in(client, daemon)["session_jwt"]
                minted = client.post("/v1/mint-aws-creds", headers=auth(daemon_jwt), json=signed_mint_body(daemon))
                assert minted.status_code == 200, minted.text
                creds = minted.json()
                # a refused request logs too: its bearer must not appear either
                client.post("/v1/mint-aws-creds", headers=auth(daemon_jwt + "x"), json=signed_mint_body(daemon))
    finally:
        logging.getLogger().removeHandler(capture)
        for n in ("uvicorn", "uvicorn.access"):
            logging.getLogger(n).removeHandler(capture)
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)
    text = "\n".join(capture.lines)
    assert any(line.startswith("DEBUG botocore") for line in capture.lines), "botocore did not log at DEBUG"
    # not vacuous: botocore logged STS's response body (scrubbed), which holds the minted secret
    bodies = [line for line in capture.lines if "Response body" in line and "AssumeRoleResponse" in line]
    assert bodies and all("<SecretAccessKey>[redacted]</SecretAccessKey>" in line for line in bodies)
    for name, secret in (("secret_access_key", creds["secret_access_key"]), ("session_token", creds["session_token"]),
                         ("master session JWT", master_jwt), ("daemon session JWT", daemon_jwt)):
        leaking = [line[:200] for line in capture.lines if secret in line]
        assert not leaking, f"the {name} is in {len(leaking)} log line(s): {leaking[:3]}"
        # nor any recognisable part of a JWT (its signature) or of the token
        assert secret[-24:] not in text, name
