#!/usr/bin/env python3
"""Mint short-lived AWS credentials from the AgentKeys broker, as a daemon (docs/daemon-guide.md).

Signs in with the daemon's wallet (examples/daemon_sign_in.py), then sends a signed v2 mint request:
the body `{request_id, issued_at, intent{agent_id, service, scope_path}, auth{address, signature}}`,
where `signature` is the EIP-191 signature of the canonical JSON of the body *without*
`auth.signature` (keys sorted at every level, no whitespace, non-ASCII as UTF-8). Prints the
credentials in the AWS `credential_process` format, so an AWS profile can use this script:

    [profile agent]
    credential_process = python examples/daemon_mint.py --broker-url https://broker.example.com \
        --key-file ~/.agentkeys/daemon.key --service s3 --scope-path my-bucket/<master omni_account>/agents/a1/

The scope lies in the namespace of the daemon's master (`<bucket>/<master's omni_account>/...`,
docs/daemon-guide.md), inside the master's grant.

Exit codes: 0 minted; 1 refused (4xx other than 429); 75 temporary (429, 502, 503, network) after
retries; 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from eth_account.messages import encode_defunct

sys.path.insert(0, str(Path(__file__).resolve().parent))
import daemon_sign_in as signin  # noqa: E402  (the sign-in half of this walkthrough)

EXIT_REFUSED, EXIT_TEMPFAIL = 1, 75


def canonical(body: dict[str, Any]) -> bytes:
    """The signing input: the body without `auth.signature`, keys sorted recursively, compact."""
    unsigned = json.loads(json.dumps(body))
    unsigned.get("auth", {}).pop("signature", None)
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def signed_request(account: Any, *, agent_id: str, service: str, scope_path: str) -> dict[str, Any]:
    body = {
        "request_id": f"req-{uuid.uuid4().hex}",  # single use per wallet: a replay is 409
        "issued_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),  # within 5 min of the broker
        "intent": {"agent_id": agent_id, "service": service, "scope_path": scope_path},
        "auth": {"address": account.address.lower(), "signature": ""},
    }
    signed = account.sign_message(encode_defunct(primitive=canonical(body)))
    body["auth"]["signature"] = "0x" + bytes(signed.signature).hex()
    return body


def mint(client: httpx.Client, session_jwt: str, account: Any, *, agent_id: str, service: str, scope_path: str,
         retries: int) -> dict[str, Any]:
    delay = 1.0
    for attempt in range(retries + 1):
        # a fresh request id each attempt: the broker spends an id as soon as it admits it
        body = signed_request(account, agent_id=agent_id, service=service, scope_path=scope_path)
        try:
            r = client.post("/v1/mint-aws-creds", json=body, headers={"Authorization": f"Bearer {session_jwt}"})
        except httpx.TransportError as exc:
            status, message, wait = 0, f"cannot reach the broker: {exc}", delay
        else:
            if r.status_code == 200:
                return r.json()
            try:
                err = r.json()
            except ValueError:
                err = {"error": "unknown", "message": r.text[:200]}
            status, message = r.status_code, f"{r.status_code} {err.get('error')}: {err.get('message')}"
            if status not in (429, 502, 503):
                raise SystemExit(_fail(message, EXIT_REFUSED))
            wait = float(r.headers.get("Retry-After", delay))
        if attempt == retries:
            raise SystemExit(_fail(message, EXIT_TEMPFAIL))
        print(f"mint attempt {attempt + 1} failed ({message}); retrying in {wait:.0f} s", file=sys.stderr)
        time.sleep(min(wait, 60.0))
        delay = min(delay * 2, 30.0)
    raise AssertionError("unreachable")


def _fail(message: str, code: int) -> int:
    print(f"daemon_mint: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Mint AWS credentials from the AgentKeys broker (credential_process).")
    ap.add_argument("--broker-url", required=True)
    ap.add_argument("--key-file", type=Path, required=True, help="the daemon's hex private key (mode 0600)")
    ap.add_argument("--service", default="s3")
    ap.add_argument("--scope-path", default="", help="<bucket>/<master omni_account>/<prefix> inside the grant's scope")
    ap.add_argument("--agent-id", default="agent-1")
    ap.add_argument("--chain-id", type=int, default=84532)
    ap.add_argument("--expect-domain", help="the domain the SIWE message must name (default: the broker URL's)")
    ap.add_argument("--retries", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args(argv)
    try:
        account = signin.load_key(args.key_file)
    except signin.SignInError as exc:
        return _fail(str(exc), 2)
    domain = args.expect_domain or args.broker_url.split("://", 1)[-1].split("/", 1)[0]
    with httpx.Client(base_url=args.broker_url, timeout=args.timeout) as client:
        try:
            session = signin.sign_in(client, account, chain_id=args.chain_id, domain=domain, retries=args.retries,
                                     max_wait=60.0)
        except signin.SignInError as exc:
            return _fail(str(exc), exc.code)
        creds = mint(client, session.session_jwt, account, agent_id=args.agent_id, service=args.service,
                     scope_path=args.scope_path, retries=args.retries)
    print(json.dumps({
        "Version": 1,
        "AccessKeyId": creds["access_key_id"],
        "SecretAccessKey": creds["secret_access_key"],
        "SessionToken": creds["session_token"],
        "Expiration": datetime.fromtimestamp(creds["expiration"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }))
    print(f"minted: audit seq {creds['seq']} record {creds['record_hash']} anchored by {', '.join(creds['anchored'])}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
