"""Google as an OpenID Connect provider (`ledger.ports.IdentityProvider`), found through its
discovery document so that tests can point it at a local provider.

- Discovery (`BROKER_OAUTH2_GOOGLE_DISCOVERY_URL`): `issuer`, `authorization_endpoint`,
  `token_endpoint`, `jwks_uri`; cached for the JWKS TTL, the last good document kept when a
  refresh fails. Endpoints must be https (http only on loopback or in dev mode).
- `JwksCache`: keys cached for `BROKER_OAUTH2_JWKS_TTL_SECONDS`; an unknown `kid` refreshes at
  once, with a single refresh in flight (concurrent callers wait for it instead of each fetching)
  and at most one forced refresh per `min_refresh_interval_s`; a failed refresh keeps the last good
  keys. Only `kty == "RSA"` signing keys are accepted (fail closed).
- id_token: RS256 only, signature by the JWKS key named by `kid`; `iss` = the discovery issuer
  (for Google also `accounts.google.com`), `aud` = the client id, `exp`/`iat` with 60 s leeway,
  `nonce` = the flow's nonce; identity = `sub`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import jwt

from ledger.ports import IdentityProviderError, ProviderIdentity, Readiness

from .signin_config import OAuth2GoogleSettings

log = logging.getLogger("agentkeys.oauth2")

LEEWAY_S = 60
GOOGLE_ISSUER_ALIASES = {"https://accounts.google.com": ("https://accounts.google.com", "accounts.google.com")}


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(url: Any, what: str, dev_mode: bool) -> str:
    if not isinstance(url, str):
        raise IdentityProviderError("provider_unreachable", f"discovery document lacks {what}", upstream=True)
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and (_is_loopback(parts.hostname) or dev_mode):
        return url
    raise IdentityProviderError("provider_unreachable", f"discovery document's {what} must be https", upstream=True)


class JwksCache:
    def __init__(self, fetch: Callable[[], dict[str, Any]], ttl_s: float, *,
                 clock: Callable[[], float] = time.monotonic, min_refresh_interval_s: float = 10.0) -> None:
        self._fetch = fetch
        self.ttl_s = ttl_s
        self.min_refresh_interval_s = min_refresh_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, dict[str, Any]] | None = None
        self._fetched_at = 0.0
        self._forced_at: float | None = None
        self._generation = 0
        self.fetches = 0  # how many times the JWKS endpoint was fetched (observable in tests)

    def _refresh(self, seen_generation: int, *, forced: bool) -> None:
        with self._lock:
            if self._generation != seen_generation:
                return  # another caller refreshed while we waited: use its result
            now = self._clock()
            if forced:
                # Unknown kids (rotation, or forged tokens) refresh at most once per interval.
                if self._forced_at is not None and now - self._forced_at < self.min_refresh_interval_s:
                    return
                self._forced_at = now
            self.fetches += 1
            try:
                document = self._fetch()
                keys = _rsa_keys(document)
            except Exception as exc:  # noqa: BLE001 - keep the last good keys whatever went wrong
                log.warning("JWKS refresh failed (keeping %s): %s",
                            "the last good keys" if self._keys is not None else "no keys", exc)
                if self._keys is None:
                    raise IdentityProviderError("provider_unreachable", "provider keys unavailable",
                                                upstream=True) from None
                return
            self._keys, self._fetched_at = keys, now
            self._generation += 1

    def key(self, kid: str) -> dict[str, Any] | None:
        generation = self._generation
        if self._keys is None or self._clock() - self._fetched_at > self.ttl_s:
            self._refresh(generation, forced=False)
            generation = self._generation
        keys = self._keys or {}
        if kid in keys:
            return keys[kid]
        self._refresh(generation, forced=True)
        return (self._keys or {}).get(kid)

    def ready(self) -> bool:
        generation = self._generation
        if self._keys is None or self._clock() - self._fetched_at > self.ttl_s:
            try:
                self._refresh(generation, forced=False)
            except IdentityProviderError:
                return False
        return bool(self._keys)


def _rsa_keys(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    keys = {}
    for k in document.get("keys", []) if isinstance(document, dict) else []:
        if not isinstance(k, dict) or k.get("kty") != "RSA" or not isinstance(k.get("kid"), str):
            continue
        if k.get("use", "sig") != "sig" or k.get("alg", "RS256") != "RS256":
            continue
        keys[k["kid"]] = k
    if not keys:
        raise ValueError("the JWKS has no RSA signing key")
    return keys


class GoogleProvider:
    name = "google"

    def __init__(self, settings: OAuth2GoogleSettings, *, dev_mode: bool = False,
                 clock: Callable[[], float] = time.time, min_refresh_interval_s: float = 10.0) -> None:
        self.settings = settings
        self.dev_mode = dev_mode
        self.clock = clock
        self._http = httpx.Client(timeout=settings.http_timeout_s, follow_redirects=False)
        self._lock = threading.Lock()
        self._discovery: dict[str, Any] | None = None
        self._discovery_at = 0.0
        self.jwks = JwksCache(self._fetch_jwks, settings.jwks_ttl_s, min_refresh_interval_s=min_refresh_interval_s)

    # --- discovery -----------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            if self._discovery is not None and now - self._discovery_at <= self.settings.jwks_ttl_s:
                return self._discovery
            try:
                r = self._http.get(self.settings.discovery_url)
                r.raise_for_status()
                doc = r.json()
                parsed = {
                    "issuer": doc["issuer"],
                    "authorization_endpoint": _check_url(doc.get("authorization_endpoint"), "authorization_endpoint",
                                                         self.dev_mode),
                    "token_endpoint": _check_url(doc.get("token_endpoint"), "token_endpoint", self.dev_mode),
                    "jwks_uri": _check_url(doc.get("jwks_uri"), "jwks_uri", self.dev_mode),
                }
                if not isinstance(parsed["issuer"], str) or not parsed["issuer"]:
                    raise ValueError("no issuer")
            except (httpx.HTTPError, ValueError, KeyError, TypeError, IdentityProviderError) as exc:
                if self._discovery is not None:
                    log.warning("OIDC discovery refresh failed, keeping the last good document: %s", exc)
                    return self._discovery
                raise IdentityProviderError("provider_unreachable",
                                            f"OIDC discovery document unavailable: {type(exc).__name__}",
                                            upstream=True) from None
            self._discovery, self._discovery_at = parsed, now
            return parsed

    def _fetch_jwks(self) -> dict[str, Any]:
        r = self._http.get(self.discovery()["jwks_uri"])
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    # --- the port --------------------------------------------------------------------------------

    def authorization_url(self, *, state: str, code_challenge: str, nonce: str) -> str:
        endpoint = self.discovery()["authorization_endpoint"]
        query = urlencode([
            ("client_id", self.settings.client_id), ("redirect_uri", self.settings.redirect_uri),
            ("response_type", "code"), ("scope", "openid email"), ("state", state),
            ("code_challenge", code_challenge), ("code_challenge_method", "S256"), ("nonce", nonce),
            ("prompt", "select_account"), ("access_type", "online"),
        ])
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    def redeem(self, *, code: str, code_verifier: str, nonce: str) -> ProviderIdentity:
        endpoint = self.discovery()["token_endpoint"]
        try:
            r = self._http.post(endpoint, data={
                "code": code, "client_id": self.settings.client_id, "client_secret": self.settings.client_secret,
                "redirect_uri": self.settings.redirect_uri, "grant_type": "authorization_code",
                "code_verifier": code_verifier})
        except httpx.HTTPError as exc:
            raise IdentityProviderError("token_exchange_failed", f"upstream: token endpoint unreachable: "
                                        f"{type(exc).__name__}", upstream=True) from None
        if r.status_code != 200:
            error = ""
            try:
                error = str(r.json().get("error", ""))[:100]
            except ValueError:
                pass
            raise IdentityProviderError("token_exchange_failed", f"upstream: token endpoint answered "
                                        f"{r.status_code} {error}".rstrip(), upstream=True)
        try:
            id_token = r.json()["id_token"]
            if not isinstance(id_token, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise IdentityProviderError("token_exchange_failed", "upstream: token response without id_token",
                                        upstream=True) from None
        return self.verify_id_token(id_token, nonce)

    def verify_id_token(self, id_token: str, nonce: str) -> ProviderIdentity:
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError:
            raise IdentityProviderError("id_token_invalid", "id_token malformed") from None
        if header.get("alg") != "RS256" or not isinstance(header.get("kid"), str):
            raise IdentityProviderError("id_token_invalid", "id_token must be RS256 with a kid")
        jwk = self.jwks.key(header["kid"])
        if jwk is None:
            raise IdentityProviderError("id_token_invalid", "id_token signed by an unknown key")
        try:
            key = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(jwk))
            claims = jwt.decode(id_token, key=key, algorithms=["RS256"], audience=self.settings.client_id,  # type: ignore[arg-type]  # an RSA public key from the JWK
                                leeway=LEEWAY_S, options={"require": ["iss", "aud", "exp", "iat", "sub"],
                                                          "verify_iss": False})
        except jwt.ExpiredSignatureError:
            raise IdentityProviderError("id_token_expired", "id_token expired") from None
        except jwt.InvalidAudienceError:
            raise IdentityProviderError("id_token_audience", "id_token wrong audience") from None
        except jwt.PyJWTError as exc:
            raise IdentityProviderError("id_token_invalid", f"id_token invalid: {type(exc).__name__}") from None
        issuer = self.discovery()["issuer"]
        if claims.get("iss") not in GOOGLE_ISSUER_ALIASES.get(issuer, (issuer,)):
            raise IdentityProviderError("id_token_issuer", "id_token wrong issuer")
        iat = claims.get("iat")
        if not isinstance(iat, int) or iat > self.clock() + LEEWAY_S:
            raise IdentityProviderError("id_token_invalid", "id_token issued in the future")
        if not isinstance(claims.get("nonce"), str) or claims["nonce"] != nonce:
            raise IdentityProviderError("nonce_mismatch", "id_token nonce does not match the flow")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 255:
            raise IdentityProviderError("id_token_invalid", "id_token has no usable sub")
        email = claims.get("email") if isinstance(claims.get("email"), str) else None
        return ProviderIdentity(subject=sub, email=email)

    def ready(self) -> Readiness:
        try:
            self.discovery()
        except IdentityProviderError as exc:
            return Readiness("unready", f"OAuth2 provider: {exc.message}")
        if not self.jwks.ready():
            return Readiness("unready", "OAuth2 provider keys (JWKS) unavailable")
        return Readiness("ready", f"OAuth2 provider {self.discovery()['issuer']}: discovery and keys loaded")

    def close(self) -> None:
        self._http.close()
