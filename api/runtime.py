"""The composition root of a broker process: builds every component from `BrokerConfig`.

`Services.build(config)` runs the boot checks in order (seed-spec §F.2, Tier 1: keys, ledger,
anchors, policy), opens everything, records the signing keys in use, and wires the services the
routes call. `start()`/`stop()` run and stop the background threads. Nothing else constructs
concrete adapters.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from anchors.sqlite import SQLiteAnchor
from ledger.aggregates import SigningKey
from ledger.anchoring import AnchorPump
from ledger.app import Ledger
from ledger.config import LedgerConfig
from ledger.gate import ReleaseGate
from ledger.ports import Anchor, Readiness, StsError
from projections.db import make_engine
from projections.registry import all_projections
from projections.runner import ProjectionRunner

from .auth.session_jwt import SessionSigner
from .auth.wallet import WalletAuth
from .grants import GrantService
from .legacy import LegacyBackend, LegacyService
from .mint import MintService
from .sts import BotoStsMinter
from .client_ip import client_ip
from .config import BootFailure, BrokerConfig
from .errors import ApiError
from .keys import KeyFileError, Keyring, load_keyring
from .ratelimit import RateLimiter
from .readiness import Check

log = logging.getLogger("agentkeys.runtime")

# A projection further behind the ledger head than this is reported degraded.
PROJECTION_LAG_DEGRADED = 1000
HOUR = 3600
MINUTE = 60
STS_PROBE_TTL_S = 15.0


def _load_keys(config: BrokerConfig) -> tuple[Keyring, Keyring]:
    out = []
    for var, path, purpose in (
        ("BROKER_OIDC_KEYPAIR_PATH", config.oidc_keypair_path, "oidc"),
        ("BROKER_SESSION_KEYPAIR_PATH", config.session_keypair_path, "session"),
    ):
        try:
            out.append(load_keyring(path, purpose))
        except KeyFileError as exc:
            raise BootFailure(var, str(path), exc.reason, exc.anchor) from None
    return out[0], out[1]


def _start_evm_anchor(config: BrokerConfig) -> Anchor:
    """Open the EVM anchor and check its chain: a wrong chain id, a missing contract or a fee payer
    that is not the submitter refuses to boot; an unreachable RPC boots unready (it may come back)."""
    from anchors.evm import EvmAnchor
    from ledger.errors import AnchorError

    try:
        anchor = EvmAnchor(config.evm)
    except Exception as exc:
        raise BootFailure("BROKER_EVM_FEE_PAYER_KEYSTORE", str(config.evm.fee_payer_keystore),
                          f"cannot open the EVM anchor: {exc}", "evm-fee-payer") from None
    try:
        anchor.check_chain()
    except AnchorError as exc:
        text = str(exc)
        if "unreachable" in text:
            log.warning("EVM RPC unreachable at boot; /readyz reports anchor/evm unready until it answers: %s", text)
        else:
            anchor.close()
            var, anchor_name = ("BROKER_EVM_CHAIN_ID", "evm-chain-id") if "chain id" in text else (
                ("BROKER_EVM_FEE_PAYER_KEYSTORE", "evm-fee-payer") if "submitter" in text else
                ("BROKER_EVM_CONTRACT_ADDRESS", "evm-contract"))
            raise BootFailure(var, None, text, anchor_name) from None
    return anchor.start(check=False)


@dataclass
class Services:
    config: BrokerConfig
    ledger: Ledger
    anchors: list[Anchor]
    pump: AnchorPump
    projections: ProjectionRunner
    oidc_keys: Keyring
    session_keys: Keyring
    signer: SessionSigner
    gate: ReleaseGate
    wallet_auth: WalletAuth
    challenge_limiter: RateLimiter
    failed_verify_limiter: RateLimiter
    minter: Any
    grants: GrantService
    mint: MintService
    legacy: LegacyService | None = None
    # --- email magic link / Google OAuth2 sign-in (issue 16) ---
    email_link: Any = None  # ledger.services.email_link.EmailLinkService when enabled
    oauth2: Any = None  # ledger.services.oauth2.OAuth2Service when enabled
    signin_polls: Any = None  # ledger.services.signin_requests.SignInPolls
    email_sender: Any = None
    oauth2_provider: Any = None
    _signin_probes: dict[str, tuple[float, Readiness]] = field(default_factory=dict, repr=False)
    scheduler: Any = None
    _started: bool = field(default=False, repr=False)
    _sts_probe: tuple[float, Readiness] | None = field(default=None, repr=False)

    @classmethod
    def build(cls, config: BrokerConfig) -> "Services":
        oidc_keys, session_keys = _load_keys(config)
        config.check_paths()
        ledger = Ledger(
            LedgerConfig(
                config.ledger_db,
                batch_max=config.ledger_batch_max,
                batch_max_wait_ms=float(config.ledger_batch_max_wait_ms),
            )
        )
        try:
            anchors: list[Anchor] = []
            for name in config.anchors:
                if name == "evm":
                    anchors.append(_start_evm_anchor(config))
                elif name == "sqlite":
                    try:
                        anchors.append(SQLiteAnchor(config.anchor_db))
                    except Exception as exc:
                        raise BootFailure("BROKER_SQLITE_ANCHOR_DB", str(config.anchor_db),
                                          f"cannot open the SQLite anchor: {exc}", "sqlite-anchor-db") from None
            pump = AnchorPump(ledger, anchors)
            runner = ProjectionRunner(ledger, make_engine(config.projections_db), all_projections())
            gate = ReleaseGate(anchors, config.required_anchors, config.anchor_deadline_ms, waiter=pump.waiter)
            signer = SessionSigner(session_keys, config.issuer, config.session_jwt_ttl_s)
            wallet_auth = WalletAuth(ledger=ledger, signer=signer, gate=gate, domain=config.siwe_domain,
                                     uri=config.issuer, chain_ids=config.siwe_chain_ids)
            minter = BotoStsMinter(config.sts)
            grants = GrantService(ledger=ledger, projections=runner, keyring=session_keys)
            mint = MintService(
                ledger=ledger, projections=runner, session_keys=session_keys, issuer=config.issuer, minter=minter,
                gate=gate, grants_required=config.grants_required, max_skew_s=config.mint_max_skew_s,
                duration_s=config.sts.duration_seconds,
                mint_limiter=RateLimiter(config.mints_per_hour_per_omni, HOUR),
            )
            services = cls(
                minter=minter, grants=grants, mint=mint,
                config=config, ledger=ledger, anchors=anchors, pump=pump, projections=runner,
                oidc_keys=oidc_keys, session_keys=session_keys, signer=signer, gate=gate, wallet_auth=wallet_auth,
                challenge_limiter=RateLimiter(config.challenges_per_hour_per_ip, HOUR),
                failed_verify_limiter=RateLimiter(config.failed_verifies_per_hour_per_ip, HOUR),
            )
            if config.legacy_bearer and config.backend_url:
                services.legacy = LegacyService(
                    backend=LegacyBackend(config.backend_url, config.backend_timeout_s), ledger=ledger, signer=signer,
                    gate=gate, mint_service=mint)
            services.build_signin()
            services.record_signing_keys()
            services.record_anchor_contracts()
        except BaseException:
            for opened in locals().get("anchors", []):
                close = getattr(opened, "close", None)
                if close is not None:
                    close()
            ledger.close()
            raise
        return services

    # --- email magic link / Google OAuth2 sign-in (issue 16) -----------------------------------

    def build_signin(self) -> None:
        """Wire the email and OAuth2 sign-in use cases with their adapters (when enabled)."""
        from ledger.services.email_link import EmailLinkService
        from ledger.services.oauth2 import OAuth2Service
        from ledger.services.signin_requests import SignInPolls
        from projections.auth_requests import AuthRequestIndex

        from .email_senders import build_sender
        from .oauth2_google import GoogleProvider

        config = self.config

        async def wait_projection(seq: int) -> None:
            await self.projections.wait_until_async(seq, timeout=5.0, name="auth_requests")

        self.signin_polls = SignInPolls(ledger=self.ledger, signer=self.signer, gate=self.gate,
                                        index=AuthRequestIndex(self.projections.engine), clock=time.time)
        if config.email_link is not None:
            settings = config.email_link
            self.email_sender = build_sender(settings, config.sts)
            self.email_link = EmailLinkService(
                ledger=self.ledger, sender=self.email_sender, hmac_key=settings.hmac_key, link_base=config.issuer,
                ip_limiter=RateLimiter(settings.per_ip_minutely, MINUTE),
                email_limiter=RateLimiter(settings.per_email_hourly, HOUR), clock=time.time,
                wait_projection=wait_projection)
        if config.oauth2_google is not None:
            settings = config.oauth2_google
            self.oauth2_provider = GoogleProvider(settings, dev_mode=config.dev_mode)
            self.oauth2 = OAuth2Service(
                ledger=self.ledger, provider=self.oauth2_provider, state_key=settings.state_key,
                ip_limiter=RateLimiter(settings.start_per_ip_minutely, MINUTE), clock=time.time,
                wait_projection=wait_projection)

    def _signin_ready(self, name: str, probe: Any) -> Readiness:
        """The sender's / provider's own check, at most every STS_PROBE_TTL_S; the ledger first."""
        ledger = self.ledger.ready()
        if not ledger.ok:
            return ledger
        now = time.monotonic()
        cached = self._signin_probes.get(name)
        if cached is not None and now - cached[0] < STS_PROBE_TTL_S:
            return cached[1]
        try:
            result = probe()
        except Exception as exc:  # noqa: BLE001 - a probe never breaks /readyz
            result = Readiness("unready", f"{name}: {type(exc).__name__}")
        self._signin_probes[name] = (now, result)
        return result

    def _signin_check(self, method: str) -> Check:
        if method == "email_link" and self.email_sender is not None:
            return Check("auth/email_link", lambda: self._signin_ready("auth/email_link", self.email_sender.ready))
        if method == "oauth2_google" and self.oauth2_provider is not None:
            return Check("auth/oauth2_google",
                         lambda: self._signin_ready("auth/oauth2_google", self.oauth2_provider.ready))
        return Check(f"auth/{method}", self.ledger.ready)

    def _signin_jobs(self) -> list[Any]:
        """The purge of expired sign-in requests from the `auth_requests` read model."""
        if self.email_link is None and self.oauth2 is None:
            return []
        from projections.auth_requests import purge_expired
        from workers.scheduler import Job

        return [Job("auth-requests-purge", 60.0, lambda: purge_expired(self.projections.engine, int(time.time())))]

    def record_signing_keys(self) -> None:
        """Every key in use is a `SigningKeyRotated` record (idempotent), so the broker's
        signatures verify offline from a ledger export."""
        for keyring in (self.oidc_keys, self.session_keys):
            for event in keyring.signing_key_events():
                self.ledger.execute(SigningKey, SigningKey.stream_for(event.purpose, event.kid),
                                    lambda agg, e=event: agg.record(e))

    def record_anchor_contracts(self) -> None:
        """An `AnchorContractChanged` record when the EVM anchor writes to a contract other than
        the last one recorded (the first one included), so auditors know every contract to check."""
        from ledger.aggregates import AnchorContract

        for anchor in self.anchors:
            contract = getattr(anchor, "contract_address", None)
            if contract is None:
                continue
            self.ledger.execute(AnchorContract, AnchorContract.stream_for(anchor.name), lambda agg, a=anchor: agg.use(
                anchor=a.name, chain_id=a.config.chain_id, contract=a.contract_address,
                fee_payer=a.fee_payer_address))

    def start(self) -> None:
        if self._started:
            return
        self.pump.start()
        self.projections.start()
        self.scheduler = self._build_scheduler()
        if self.scheduler is not None:
            self.scheduler.start()
        self._started = True

    def async_anchor_names(self) -> list[str]:
        """Anchors the policy does not wait for (they confirm after the release)."""
        return [a.name for a in self.anchors if a.name not in self.config.required_anchors]

    def _build_scheduler(self):  # noqa: ANN202
        """Background jobs under leases: quarantine detection when some anchor is asynchronous."""
        from workers.jobs import quarantine
        from workers.leases import Leases
        from workers.scheduler import Job, build_scheduler

        async_names = self.async_anchor_names()
        jobs = self._signin_jobs()
        if async_names:
            async_anchors = [(a.name, a.confirmed_upto) for a in self.anchors if a.name in async_names]
            jobs.append(Job("quarantine-detect", 15.0, lambda: quarantine.run(
                ledger=self.ledger, async_anchors=async_anchors, deadline_s=self.config.evm_confirm_deadline_s,
                now=time.time)))
        if not jobs:
            return None
        return build_scheduler(jobs, Leases(self.config.data_dir / "leases.sqlite"))

    def stop(self) -> None:
        try:
            if self.scheduler is not None and self.scheduler.running:
                self.scheduler.shutdown(wait=False)
            self.projections.stop()
            if self.oauth2_provider is not None:
                self.oauth2_provider.close()
        finally:
            try:
                self.pump.stop()
            finally:
                for anchor in self.anchors:
                    close = getattr(anchor, "close", None)
                    if close is not None:
                        try:
                            close()
                        except Exception:  # pragma: no cover - best effort on the way out
                            log.exception("closing anchor %s", anchor.name)
                self.ledger.close()
                self._started = False

    def anchor(self, name: str) -> Anchor | None:
        return next((a for a in self.anchors if a.name == name), None)

    # --- rate limits (per client IP) ---------------------------------------------------------

    def client_ip(self, request: Any) -> str:
        peer = request.client.host if request.client else None
        return client_ip(peer, request.headers, self.config.trusted_proxies)

    def limit_challenge_start(self, request: Any) -> None:
        decision = self.challenge_limiter.check(self.client_ip(request))
        if not decision.allowed:
            raise ApiError("rate_limited", "rate limited: too many sign-in challenges from this address",
                           reason="challenges_per_ip", headers={"Retry-After": str(decision.retry_after_seconds)})

    def check_failed_verify_budget(self, request: Any) -> str:
        key = self.client_ip(request)
        decision = self.failed_verify_limiter.peek(key)
        if not decision.allowed:
            raise ApiError("rate_limited", "rate limited: too many failed sign-in verifications from this address",
                           reason="failed_verifies_per_ip", headers={"Retry-After": str(decision.retry_after_seconds)})
        return key

    def count_failed_verify(self, key: str) -> None:
        self.failed_verify_limiter.check(key)

    # --- readiness ---------------------------------------------------------------------------

    def _sts_ready(self) -> Readiness:
        """GetCallerIdentity, at most every STS_PROBE_TTL_S (protects STS from probe storms)."""
        now = time.monotonic()
        cached = self._sts_probe
        if cached is not None and now - cached[0] < STS_PROBE_TTL_S:
            return cached[1]
        try:
            arn = self.minter.check_identity()
            result = Readiness("ready", f"sts: {arn}")
        except StsError as exc:
            result = Readiness("unready", f"STS GetCallerIdentity failed: {exc.code}: {exc.message}")
        self._sts_probe = (now, result)
        return result

    def readiness_checks(self) -> list[Check]:
        checks = [Check("ledger", self.ledger.ready), Check("sts", self._sts_ready)]
        for anchor in self.anchors:
            checks.append(Check(f"anchor/{anchor.name}", anchor.ready))
            extra = getattr(anchor, "readiness_checks", None)
            if extra is not None:
                for name in ("evm/chain_id", "evm/fee_payer"):
                    checks.append(Check(name, lambda n=name, f=extra: f()[n]))
        checks.append(Check("keys/session", lambda: self._keys_ready(self.session_keys, "session")))
        checks.append(Check("keys/oidc", lambda: self._keys_ready(self.oidc_keys, "oidc")))
        for method in self.config.auth_methods:
            checks.append(self._signin_check(method))
        checks.append(Check("projections", self._projections_ready, required=False))
        return checks

    def _keys_ready(self, keyring: Keyring, purpose: str) -> Readiness:
        """The key file on disk still loads with the same active key (a deleted, re-permissioned
        or swapped file turns this unready; the loaded key keeps signing meanwhile)."""
        path = self.config.session_keypair_path if purpose == "session" else self.config.oidc_keypair_path
        try:
            on_disk = load_keyring(path, purpose)
        except KeyFileError as exc:
            return Readiness("unready", f"{purpose} keypair at {path}: {exc.reason}")
        if on_disk.active.kid != keyring.active.kid:
            return Readiness("degraded", f"{purpose} keypair on disk is {on_disk.active.kid}; the broker signs with "
                                         f"{keyring.active.kid} until restarted")
        return Readiness("ready", f"{purpose} key {keyring.active.kid}")

    def _projections_ready(self) -> Readiness:
        lag = self.projections.lag()
        if lag > PROJECTION_LAG_DEGRADED:
            return Readiness("degraded", f"projections are {lag} events behind the ledger head")
        return Readiness("ready", f"projections lag {lag}")
