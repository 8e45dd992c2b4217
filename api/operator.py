"""The operator's surface (design §3 "Quarantine", §8 "Operator wire", "Operators"): who is an
operator, the quarantine use case wired to IAM, the operator page's sessions, and metrics.

An operator is never anonymous. Two credentials exist:

- the token in `BROKER_OPERATOR_TOKEN_FILE` (a bearer), named `token:<first 8 hex of sha256(token)>`;
- a wallet in `BROKER_OPERATOR_WALLETS` signed in with SIWE (`/v1/auth/wallet/start|verify`): its
  session JWT carries `agentkeys.role = "operator"`, and the wallet must still be in the list when
  it acts; it is named by its address.

With neither configured every operator route answers 401. `OperatorSurface.build(services)` is
called by the composition root (api/runtime.py).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ledger.services.quarantine import QuarantineService
from ledger.services.refusals import Refusal

from .auth.session_jwt import OPERATOR_ROLE, SessionTokenError, looks_like_session_jwt, verify_session_token
from .metrics import Metrics

PAGE_SESSION_SECONDS = 8 * 3600
COOKIE = "ak_operator"


@dataclass(frozen=True)
class Operator:
    name: str  # as recorded in events: token:<8 hex> | 0x... (SIWE)
    method: str  # token | siwe


def token_operator_name(token: str) -> str:
    return "token:" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:8]


class OperatorAuth:
    def __init__(self, *, token: str | None, wallets: tuple[str, ...], session_keys: Any, issuer: str) -> None:
        self._token = token
        self.wallets = frozenset(w.lower() for w in wallets)
        self._session_keys = session_keys
        self._issuer = issuer

    @property
    def configured(self) -> bool:
        return self._token is not None or bool(self.wallets)

    def from_credential(self, credential: str) -> Operator:
        """The operator a bearer credential names; a `Refusal` (401/403 by the error table) otherwise."""
        if not self.configured:
            raise Refusal("unauthenticated", "no operator credential is configured "
                                             "(BROKER_OPERATOR_TOKEN_FILE or BROKER_OPERATOR_WALLETS)")
        credential = credential.strip()
        if self._token is not None and hmac.compare_digest(credential.encode(), self._token.encode()):
            return Operator(token_operator_name(self._token), "token")
        if looks_like_session_jwt(credential):
            try:
                claims = verify_session_token(credential, self._session_keys, self._issuer)
            except SessionTokenError as exc:
                raise Refusal(exc.reason, str(exc)) from None
            wallet = claims.agentkeys.wallet_address.lower()
            if claims.agentkeys.role != OPERATOR_ROLE or wallet not in self.wallets:
                raise Refusal("not_operator", "this session is not an operator's")
            return Operator(wallet, "siwe")
        raise Refusal("unauthenticated", "not an operator credential")

    def from_headers(self, headers: Mapping[str, str]) -> Operator:
        value = headers.get("authorization") or ""
        if not value.startswith("Bearer ") or not value[7:].strip():
            raise Refusal("unauthenticated", "an operator credential is required "
                                             "(Authorization: Bearer <operator token or operator session JWT>)")
        return self.from_credential(value[7:])


@dataclass
class PageSession:
    operator: Operator
    csrf: str
    expires: float


@dataclass
class PageSessions:
    """`/operator` sessions: the cookie holds a random id; the operator and the CSRF token stay in
    this process (a restart, or another replica, asks for a new login)."""

    ttl_s: int = PAGE_SESSION_SECONDS
    _sessions: dict[str, PageSession] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @staticmethod
    def _key(sid: str) -> str:
        return hashlib.sha256(sid.encode()).hexdigest()

    def create(self, operator: Operator) -> tuple[str, PageSession]:
        sid = secrets.token_urlsafe(32)
        session = PageSession(operator, secrets.token_urlsafe(32), time.time() + self.ttl_s)
        with self._lock:
            now = time.time()
            for k in [k for k, s in self._sessions.items() if s.expires <= now]:
                del self._sessions[k]
            self._sessions[self._key(sid)] = session
        return sid, session

    def get(self, sid: str | None) -> PageSession | None:
        if not sid or len(sid) > 200:
            return None
        with self._lock:
            session = self._sessions.get(self._key(sid))
            if session is not None and session.expires <= time.time():
                del self._sessions[self._key(sid)]
                return None
        return session

    def drop(self, sid: str | None) -> None:
        if sid:
            with self._lock:
                self._sessions.pop(self._key(sid), None)


@dataclass
class OperatorSurface:
    auth: OperatorAuth
    quarantine: QuarantineService
    metrics: Metrics
    pages: PageSessions
    services: Any  # api.runtime.Services (for read models, anchors, head)

    @classmethod
    def build(cls, services: Any, *, kill_switch: Any = None) -> OperatorSurface:
        config = services.config
        if kill_switch is None and config.sts is not None:
            from .iam import BotoIamKillSwitch

            kill_switch = BotoIamKillSwitch.from_sts_settings(config.sts, config.iam_endpoint_url)
        auth = OperatorAuth(token=config.operator_token, wallets=config.operator_wallets,
                            session_keys=services.session_keys, issuer=config.issuer)
        surface = cls(auth=auth, quarantine=QuarantineService(ledger=services.ledger, kill_switch=kill_switch),
                      metrics=None, pages=PageSessions(), services=services)  # type: ignore[arg-type]
        surface.metrics = Metrics(read=services.ledger.read, head_seq=lambda: services.ledger.head().seq,
                                  sample=surface.sample)
        services.gate.observers.append(surface.metrics.observe_release)
        return surface

    # --- reads ---------------------------------------------------------------------------------

    def anchor_positions(self) -> dict[str, int]:
        return {a.name: self.services.pump.confirmed(a.name) for a in self.services.anchors}

    def sample(self) -> dict[str, Any]:
        from projections.quarantine import open_count

        services = self.services
        head = services.ledger.cached_head().seq
        out: dict[str, Any] = {
            "anchor_lag": {name: max(0, head - pos) for name, pos in self.anchor_positions().items()},
            "projection_lag": {s.name: s.lag for s in services.projections.status()},
        }
        try:
            out["quarantine_open"] = open_count(services.projections.engine)
        except Exception:  # the read model not built yet
            out["quarantine_open"] = None
        for anchor in services.anchors:
            balance = getattr(anchor, "last_known_balance_wei", None)
            if balance is not None:
                out["fee_payer_balance_wei"] = balance
        return out

    def caught_up(self, timeout: float = 2.0) -> None:
        """Let the read models reach the ledger head (an operator reads its own writes)."""
        self.services.projections.wait_until(self.services.ledger.head().seq, timeout, ["quarantine", "mints"])

    # --- the worker's half of `reanchor` -------------------------------------------------------

    def close_reanchored(self) -> list[str]:
        from projections.quarantine import list_cases

        self.caught_up(1.0)
        pending = [c.case_id for c in list_cases(self.services.projections.engine, status="reanchoring")]
        if not pending:
            return []
        self.services.pump.wake()
        return self.quarantine.close_reanchored(pending, self.services.anchors)
