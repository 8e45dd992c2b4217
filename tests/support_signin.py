"""Test support for the email and OAuth2 sign-ins: a local SMTP sink (aiosmtpd) and a local OpenID
Connect provider (its own RSA keys, discovery, authorize, token and JWKS endpoints) on loopback
ports, so the broker's real code paths run end to end."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import json
import os
import re
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support import free_port

LINK = re.compile(r"(https?://\S+/auth/email/landing#t=([A-Za-z0-9_-]+))")


def key_file(path: Path, size: int = 32) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    path.chmod(0o600)
    return str(path)


# --- SMTP ----------------------------------------------------------------------------------------

class SmtpSink:
    """aiosmtpd on a free loopback port; `messages` are the parsed emails received."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[email.message.EmailMessage] = []
        self.port = free_port()
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                sink.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def __enter__(self) -> SmtpSink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    def link_for(self, to: str, timeout: float = 10.0) -> tuple[str, str]:
        """(link, token) of the newest message to `to`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in reversed(self.messages):
                if msg["To"] == to:
                    text = msg.get_body(preferencelist=("plain",)).get_content()
                    m = LINK.search(text)
                    assert m, text
                    return m.group(1), m.group(2)
            time.sleep(0.02)
        raise AssertionError(f"no email to {to}")


# --- a local OpenID Connect provider -------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class LocalOidcProvider:
    """Authorization-code flow with PKCE S256. `/authorize` redirects at once to the redirect URI
    with a code (as if the user had picked an account); `/token` checks the client, the redirect
    URI, the code (single use) and the PKCE verifier, and returns an RS256 id_token for `subject`.
    Knobs: `claims_override` (e.g. an expired `exp`, a wrong `aud`), `token_status`, `rotate()`."""

    def __init__(self, client_id: str, client_secret: str, subject: str = "google-sub-12345") -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.subject = subject
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.keys: list[tuple[str, Any]] = []
        self.rotate()
        self.codes: dict[str, dict[str, Any]] = {}
        self.claims_override: dict[str, Any] = {}
        self.token_status = 200
        self.jwks_fetches = 0
        self.token_calls = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def rotate(self) -> str:
        kid = "k" + secrets.token_hex(4)
        self.keys.insert(0, (kid, rsa.generate_private_key(public_exponent=65537, key_size=2048)))
        return kid

    def jwks(self) -> dict[str, Any]:
        out = []
        for kid, key in self.keys:
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            jwk.update(kid=kid, use="sig", alg="RS256")
            out.append(jwk)
        return {"keys": out}

    def id_token(self, nonce: str, **override: Any) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": self.client_id, "sub": self.subject, "iat": now, "exp": now + 3600,
                  "nonce": nonce, "email": "someone@example.com", **self.claims_override, **override}
        kid, key = self.keys[0]
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})

    def authorize(self, authorization_url: str) -> str:
        """What a browser does: follow the authorization URL; returns the callback URL with code."""
        import httpx

        r = httpx.get(authorization_url, follow_redirects=False, timeout=10)
        assert r.status_code == 302, r.text
        return r.headers["location"]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                url = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/.well-known/openid-configuration":
                    self._json(200, {"issuer": provider.issuer,
                                     "authorization_endpoint": f"{provider.issuer}/authorize",
                                     "token_endpoint": f"{provider.issuer}/token",
                                     "jwks_uri": f"{provider.issuer}/jwks"})
                elif url.path == "/jwks":
                    with provider.lock:
                        provider.jwks_fetches += 1
                    self._json(200, provider.jwks())
                elif url.path == "/authorize":
                    if q.get("client_id") != provider.client_id or q.get("code_challenge_method") != "S256" \
                            or q.get("response_type") != "code":
                        self._json(400, {"error": "invalid_request"})
                        return
                    code = secrets.token_urlsafe(16)
                    provider.codes[code] = {"challenge": q["code_challenge"], "nonce": q["nonce"],
                                            "redirect_uri": q["redirect_uri"]}
                    self.send_response(302)
                    self.send_header("Location", q["redirect_uri"] + "?" + urlencode({"code": code, "state": q["state"]}))
                    self.end_headers()
                else:
                    self._json(404, {"error": "not_found"})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                with provider.lock:
                    provider.token_calls += 1
                    entry = provider.codes.pop(form.get("code", ""), None)
                if self.path != "/token":
                    self._json(404, {"error": "not_found"})
                    return
                if provider.token_status != 200:
                    self._json(provider.token_status, {"error": "server_error"})
                    return
                if form.get("client_id") != provider.client_id or form.get("client_secret") != provider.client_secret:
                    self._json(401, {"error": "invalid_client"})
                    return
                if entry is None or form.get("redirect_uri") != entry["redirect_uri"] \
                        or form.get("grant_type") != "authorization_code":
                    self._json(400, {"error": "invalid_grant"})
                    return
                verifier = form.get("code_verifier", "")
                if _b64(hashlib.sha256(verifier.encode()).digest()) != entry["challenge"]:
                    self._json(400, {"error": "invalid_grant", "error_description": "PKCE verification failed"})
                    return
                self._json(200, {"access_token": "at-" + secrets.token_hex(8), "token_type": "Bearer",
                                 "expires_in": 3600, "id_token": provider.id_token(entry["nonce"])})

        return Handler

    def __enter__(self) -> LocalOidcProvider:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
