"""The composition root of a broker process: builds every component from `BrokerConfig`.

`Services.build(config, *, ledger=None, anchors=None, gate=None, minter=None, clock=None, ...)`
runs the boot checks in order (seed-spec §F.2, Tier 1: keys, ledger, anchors, policy), opens
everything, records the signing keys in use, and wires the use cases (`ledger/services/`) to their
ports' adapters. A part passed in is used instead of the one the config would build (tests inject
a counting or failing minter, a gate with its own deadline, extra anchors, a clock): nothing is
rewired after `build`. `start()`/`stop()` run and stop the background threads. Nothing else
constructs concrete adapters.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from anchors.sqlite import SQLiteAnchor
from ledger.aggregates import SigningKey
from ledger.anchoring import AnchorPump
from ledger.app import Ledger
from ledger.config import LedgerConfig
from ledger.gate import ReleaseGate
from ledger.integrity import IntegrityMonitor
from ledger.ports import (
    Anchor,
    AnchorReadiness,
    Clock,
    CredentialMinter,
    GrantLookup,
    IdentityBackend,
    Readiness,
    StsError,
)
from ledger.services.access import Access, ledger_roots
from ledger.services.grants import GrantService
from ledger.services.legacy import LegacyService
from ledger.services.mint import MintService
from ledger.services.refusals import Refusal
from ledger.services.release import ReleasePath
from ledger.services.signin import WalletSignIn
from ledger.spill import spill_or_log
from projections.db import make_engine
from projections.grants import GrantReadModel
from projections.registry import all_projections
from projections.runner import ProjectionRunner

from .auth.session_jwt import SessionSigner
from .client_ip import client_ip
from .config import BootFailure, BrokerConfig
from .keys import KeyFileError, Keyring, Purpose, load_keyring
from .legacy import LegacyBackend
from .probes import Probe, ProbeRunner, sts_interval
from .ratelimit import RateLimiter
from .readiness import Check, evaluate
from .signing import JwsGrantProofSigner, JwtSessionIssuer
from .sts import BotoStsMinter

log = logging.getLogger("agentkeys.runtime")

# A projection further behind the ledger head than this is reported degraded.
PROJECTION_LAG_DEGRADED = 1000
HOUR = 3600
MINUTE = 60
ANCHOR_READY_TTL_S = 1.0
MINUTE = 60
STS_PROBE_TTL_S = 15.0


def probed_anchor_readiness(probes: ProbeRunner, fallback: AnchorReadiness) -> AnchorReadiness:
    """The `AnchorReadiness` port in a serving process: the last background probe of
    `anchor/<name>` (api/probes.py; never blocks). Only before the first probe has answered (the
    first seconds of a process, or a process whose probes were never started) does it ask
    `fallback`, which the mint use case calls in a worker thread, bounded by the anchor's own timeout."""

    def anchor_ready(name: str) -> Readiness:
        latest = probes.latest(f"anchor/{name}")
        return latest if latest is not None else fallback(name)

    return anchor_ready


def cached_anchor_readiness(anchors: Sequence[Anchor], ttl_s: float = ANCHOR_READY_TTL_S) -> AnchorReadiness:
    """The default `AnchorReadiness` port: `anchor.ready()` (each anchor bounds its own probe)
    cached `ttl_s` per anchor; an error is unready. The mint use case calls it in a worker thread.
    Used before the background probes have answered (`probed_anchor_readiness`)."""
    by_name = {a.name: a for a in anchors}
    cache: dict[str, tuple[float, Readiness]] = {}

    def anchor_ready(name: str) -> Readiness:
        now = time.monotonic()
        hit = cache.get(name)
        if hit is not None and now - hit[0] < ttl_s:
            return hit[1]
        anchor = by_name.get(name)
        if anchor is None:
            result = Readiness("unready", f"anchor {name} is not configured")
        else:
            try:
                result = anchor.ready()
            except Exception as exc:
                result = Readiness("unready", f"{type(exc).__name__}: {exc}"[:200])
        cache[name] = (now, result)
        return result

    return anchor_ready

# --- readiness probes (issue 12): timeouts of the background probes (api/probes.py) ---
LOCAL_PROBE_TIMEOUT_S = 2.0
FIRST_PROBES_WAIT_S = 3.0


def _load_keys(config: BrokerConfig) -> tuple[Keyring, Keyring]:
    out = []
    slots: tuple[tuple[str, Path, Purpose], ...] = (
        ("BROKER_OIDC_KEYPAIR_PATH", config.oidc_keypair_path, "oidc"),
        ("BROKER_SESSION_KEYPAIR_PATH", config.session_keypair_path, "session"),
    )
    for var, path, purpose in slots:
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


def _low_space(config: BrokerConfig, free_bytes: Callable[[], int] | None) -> Callable[[], bool]:
    """The `LedgerSpace` port: True below `BROKER_MIN_FREE_BYTES` free on the ledger's disk."""
    from ledger.spill import free_bytes as statvfs_free_bytes

    reading = free_bytes or functools.partial(statvfs_free_bytes, config.ledger_db)
    return lambda: reading() < config.min_free_bytes


def _open_spill(config: BrokerConfig) -> Any:
    """The spill, preallocated now so that it can be written on a full disk (ledger/spill.py)."""
    from ledger.spill import CredentialSpill

    path = config.spill_path or config.data_dir / "spill.journal"
    try:
        return CredentialSpill(path, config.spill_bytes)
    except OSError as exc:
        raise BootFailure("BROKER_SPILL_PATH", str(path), f"cannot preallocate the spill: {exc.strerror or exc}",
                          "spill") from None


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
    release: ReleasePath
    wallet_auth: WalletSignIn
    challenge_limiter: RateLimiter
    failed_verify_limiter: RateLimiter
    minter: CredentialMinter
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
    operator: Any = None  # api.operator.OperatorSurface
    probes: ProbeRunner = field(default_factory=ProbeRunner)
    spill: Any = None  # ledger.spill.CredentialSpill, preallocated at boot
    free_bytes_reading: Callable[[], int] | None = None  # injected by tests; else a statvfs of the ledger's disk
    integrity: IntegrityMonitor | None = None  # the integrity alarm (ledger/integrity.py)
    workers: bool = True  # leased jobs in this process (`serve --no-workers` turns them off)
    _started: bool = field(default=False, repr=False)

    @classmethod
    def build(
        cls,
        config: BrokerConfig,
        *,
        ledger: Ledger | None = None,
        anchors: Sequence[Anchor] | None = None,
        gate: ReleaseGate | Callable[[Sequence[Anchor]], ReleaseGate] | None = None,
        minter: CredentialMinter | None = None,
        clock: Clock | None = None,
        anchor_ready: AnchorReadiness | None = None,
        legacy_backend: IdentityBackend | None = None,
        free_bytes: Callable[[], int] | None = None,
    ) -> Services:
        """`anchors` replaces the configured anchors (the caller opened them; they are closed on
        `stop()`); `gate` is a gate or a factory given the anchors (the pump's waiter is the
        process-wide `ledger.anchoring.default_waiter()`); `free_bytes` replaces the reading of
        free bytes on the ledger's disk (tests inject a full disk)."""
        oidc_keys, session_keys = _load_keys(config)
        config.check_paths()
        now: Clock = clock or time.time
        if ledger is None:
            ledger = Ledger(
                LedgerConfig(
                    config.ledger_db,
                    batch_max=config.ledger_batch_max,
                    batch_max_wait_ms=float(config.ledger_batch_max_wait_ms),
                )
            )
        opened: list[Anchor] = []
        spill: Any = None
        try:
            spill = _open_spill(config)
            if anchors is None:
                for name in config.anchors:
                    if name == "evm":
                        opened.append(_start_evm_anchor(config))
                    elif name == "sqlite":
                        try:
                            opened.append(SQLiteAnchor(config.anchor_db))
                        except Exception as exc:
                            raise BootFailure("BROKER_SQLITE_ANCHOR_DB", str(config.anchor_db),
                                              f"cannot open the SQLite anchor: {exc}", "sqlite-anchor-db") from None
            else:
                opened = list(anchors)
            pump = AnchorPump(ledger, opened)
            runner = ProjectionRunner(ledger, make_engine(config.projections_db), all_projections())
            probes = ProbeRunner()  # configured below, once the checks exist; the gate reads it (never blocks)
            if gate is None:
                gate = ReleaseGate(opened, config.required_anchors, config.anchor_deadline_ms, waiter=pump.waiter,
                                   readiness=probes)
            elif not isinstance(gate, ReleaseGate):
                gate = gate(opened)
            integrity = IntegrityMonitor(ledger, opened)
            release = ReleasePath(ledger=ledger, gate=gate, integrity=integrity)
            signer = SessionSigner(session_keys, config.issuer, config.session_jwt_ttl_s,
                                   operator_wallets=config.operator_wallets)
            issuer = JwtSessionIssuer(signer)
            wallet_auth = WalletSignIn(ledger=ledger, issuer=issuer, release=release, domain=config.siwe_domain,
                                       uri=config.issuer, chain_ids=config.siwe_chain_ids, clock=now)
            minter = minter if minter is not None else BotoStsMinter(config.sts)
            from .metrics import UnrecordedCounts

            unrecorded = UnrecordedCounts()  # attached to the operator surface's metrics below
            # GrantRow carries grant_id and scope_path, the fields the use cases read off a GrantCandidate
            grant_reads = cast(GrantLookup, GrantReadModel(runner))
            access = Access(catalogue=config.access.catalogue, tenancy=config.access.tenancy,
                            roots_of=ledger_roots(ledger), legacy_service=config.access.legacy_service)
            grants = GrantService(ledger=ledger, grants=grant_reads, proof_signer=JwsGrantProofSigner(session_keys),
                                  access=access, clock=now)
            mint = MintService(
                ledger=ledger, grants=grant_reads, minter=minter, release=release,
                anchor_ready=anchor_ready or probed_anchor_readiness(probes, cached_anchor_readiness(opened)),
                grants_required=config.grants_required, max_skew_s=config.mint_max_skew_s,
                duration_s=config.sts.duration_seconds,
                mint_limiter=RateLimiter(config.mints_per_hour_per_omni, HOUR),
                bad_signature_ip_limiter=RateLimiter(config.bad_signatures_per_hour_per_ip, HOUR),
                bad_signature_wallet_limiter=RateLimiter(config.bad_signatures_per_hour_per_wallet, HOUR),
                unrecorded=unrecorded, access=access, audience=config.issuer, clock=now,
                low_space=_low_space(config, free_bytes), spill=functools.partial(spill_or_log, spill),
            )
            services = cls(
                minter=minter, grants=grants, mint=mint, release=release,
                config=config, ledger=ledger, anchors=opened, pump=pump, projections=runner,
                oidc_keys=oidc_keys, session_keys=session_keys, signer=signer, gate=gate, wallet_auth=wallet_auth,
                challenge_limiter=RateLimiter(config.challenges_per_hour_per_ip, HOUR),
                failed_verify_limiter=RateLimiter(config.failed_verifies_per_hour_per_ip, HOUR),
                probes=probes, spill=spill, free_bytes_reading=free_bytes, integrity=integrity,
            )
            if config.legacy_bearer and config.backend_url:
                services.legacy = LegacyService(
                    backend=legacy_backend or LegacyBackend(config.backend_url, config.backend_timeout_s),
                    ledger=ledger, issuer=issuer, release=release, mint_service=mint,
                    limiter=RateLimiter(config.legacy_per_minute_per_ip, MINUTE),
                    failure_log=RateLimiter(1, MINUTE),  # the first backend failure per IP and minute is recorded
                    unrecorded=unrecorded, service_name=config.access.legacy_service)
            services.build_signin()
            probes.configure(services.readiness_probes())  # after every part whose check it probes
            from .operator import OperatorSurface

            services.operator = OperatorSurface.build(services)
            unrecorded.attach(services.operator.metrics)
            services.record_signing_keys()
            services.record_anchor_contracts()
        except BaseException:
            if spill is not None:
                spill.close()
            for anchor in opened:
                close = getattr(anchor, "close", None)
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
                def record(agg: Any, e: Any = event) -> Any:
                    return agg.record(e)

                self.ledger.execute(SigningKey, SigningKey.stream_for(event.purpose, event.kid), record)

    def record_anchor_contracts(self) -> None:
        """An `AnchorContractChanged` record when the EVM anchor writes to a contract other than
        the last one recorded (the first one included), so auditors know every contract to check."""
        from ledger.aggregates import AnchorContract

        for anchor in self.anchors:
            contract = getattr(anchor, "contract_address", None)
            if contract is None:
                continue
            def use(agg: Any, a: Any = anchor) -> Any:
                return agg.use(
                    anchor=a.name, chain_id=a.config.chain_id, contract=a.contract_address,
                    fee_payer=a.fee_payer_address, genesis_hash=getattr(a, "genesis_hash", None),
                    start_seq=getattr(a, "start_seq", None))

            self.ledger.execute(AnchorContract, AnchorContract.stream_for(anchor.name), use)
            if hasattr(anchor, "on_chain_changed"):  # a chain swapped under a running broker is recorded too
                anchor.on_chain_changed = self.record_anchor_contracts

    def start(self) -> None:
        if self._started:
            return
        self.check_integrity_at_startup()
        self.sweep_outcomes_at_startup()  # before any anchor pump starts (design §8 "Outcome sweep")
        self.probes.start()
        self.pump.start()
        self.projections.catch_up("sessions")  # revocations are enforced from the first request on
        self.projections.start()
        self.scheduler = self._build_scheduler() if self.workers else None
        self._start_background_integrity()
        if self.scheduler is not None:
            self.scheduler.start()
        self.probes.wait_first(FIRST_PROBES_WAIT_S)  # not yet serving: a hanging probe reports unready after this
        self._started = True

    def check_integrity_at_startup(self) -> None:
        """Design §8 "Start-up integrity", synchronous part: the last 1,000 records re-verified and
        checked against every anchor (a ledger behind its anchors is named with its lost range).
        A finding is one `TamperDetected`; the broker serves, but releases nothing until acknowledged."""
        if self.integrity is None:
            return
        try:
            findings = self.integrity.startup_check()
        except Exception:
            log.exception("start-up integrity check failed to run; the background check retries")
            return
        for finding in findings:
            log.critical("start-up integrity check: %s seq %s: %s", finding.source, finding.seq, finding.detail)

    def _start_background_integrity(self) -> None:
        """The background part: `PRAGMA quick_check` and a full chain verification, once now (then
        on the `chain-verify` job's schedule)."""
        import threading

        monitor = self.integrity
        if monitor is None:
            return

        def run() -> None:
            try:
                monitor.full_check()
            except Exception:
                log.exception("background integrity check failed to run")

        threading.Thread(target=run, name="integrity-startup", daemon=True).start()

    def sweep_outcomes_at_startup(self) -> None:
        """Record what the spill holds (ledger/spill.py), then give an outcome to every
        authorization and `MintRequested` a previous process left without one
        (ledger/services/outcome_sweep.py)."""
        from ledger.services.outcome_sweep import startup_sweep

        self.recover_spill()
        try:
            result = startup_sweep(self.ledger, required_positions=self.required_positions,
                                   deadline_s=self.config.anchor_deadline_ms / 1000.0, role_arn_for=self.role_arn_for)
        except Exception:  # e.g. the ledger refuses writes: serve anyway, the periodic sweep retries
            log.exception("start-up outcome sweep failed; the periodic sweep will settle the open records")
            return
        if result.written:
            log.warning("start-up outcome sweep: %s", result.summary())

    def recover_spill(self) -> list[str]:
        """Spilled credentials become `MintUnreleased{ledger_write_failed}` once the ledger takes
        writes (at start-up and on the outcome-sweep period). A ledger still failing: retried later."""
        from ledger.spill import recover

        if self.spill is None:
            return []
        try:
            recorded = recover(self.ledger, self.spill)
        except Exception as exc:  # the ledger still refuses: the entries stay in the spill
            log.error("spill recovery failed (retried on the next sweep): %s", exc)
            return []
        if recorded:
            log.warning("recorded %d spilled credential(s) as MintUnreleased: %s", len(recorded), recorded)
        return recorded

    def ledger_low_on_space(self) -> bool:
        """True below `BROKER_MIN_FREE_BYTES` free on the ledger's disk: the mint use case refuses
        before STS (503 `unavailable`, `ledger_low_space`). A local statvfs: fine on the loop."""
        return _low_space(self.config, self.free_bytes_reading)()

    def required_positions(self) -> dict[str, int]:
        """`confirmed_upto()` of every anchor the policy requires (local reads only)."""
        return {a.name: a.confirmed_upto() for a in self.anchors if a.name in self.config.required_anchors}

    def role_arn_for(self, service: str) -> str:
        """The role a mint of `service` assumes (for `MintUnreleased.role_arn`), "" when unknown."""
        return str(getattr(self.config.sts, "role_arn", "") or "")  # one role today (api/sts_config.py)

    def async_anchor_names(self) -> list[str]:
        """Anchors the policy does not wait for (they confirm after the release)."""
        return [a.name for a in self.anchors if a.name not in self.config.required_anchors]

    def _build_scheduler(self):  # noqa: ANN202
        """The leased background jobs (workers/wiring.py), under every policy."""
        from workers.wiring import build_workers

        return build_workers(self)

    def start_workers_only(self) -> None:
        """`agentkeys-broker workers`: the start-up integrity check and the leased jobs, no HTTP, no
        anchor pump (the `anchor-reconcile` job anchors), no readiness probes."""
        if self._started:
            return
        self.check_integrity_at_startup()
        self.scheduler = self._build_scheduler()
        self._start_background_integrity()
        self.scheduler.start()
        self._started = True

    def stop(self) -> None:
        self.probes.stop()
        if self.integrity is not None:
            self.integrity.close()  # a check in progress ends early
        try:
            if self.scheduler is not None and self.scheduler.running:
                self.scheduler.shutdown(wait=True)  # running jobs finish before the ledger closes
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
                if self.spill is not None:
                    self.spill.close()
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
            raise Refusal("challenges_per_ip", "too many sign-in challenges from this address",
                          retry_after=decision.retry_after_seconds)

    def reserve_failed_verify(self, request: Any) -> tuple[str, Any]:
        """Charge one failed verification to the client IP before verifying, in one atomic step
        (parallel failures can never all pass the limit); `refund_failed_verify` gives the slot
        back when the verification did not fail."""
        key = self.client_ip(request)
        decision = self.failed_verify_limiter.check(key)
        if not decision.allowed:
            raise Refusal("failed_verifies_per_ip", "too many failed sign-in verifications from this address",
                          retry_after=decision.retry_after_seconds)
        return key, decision

    def refund_failed_verify(self, reservation: tuple[str, Any]) -> None:
        self.failed_verify_limiter.refund(*reservation)

    # --- readiness (background probes: api/probes.py; issue 12) -------------------------------

    def _sts_ready(self) -> Readiness:
        """GetCallerIdentity, one attempt (the probe runs every <= 10 s in the background)."""
        probe = getattr(self.minter, "probe_identity", None) or self.minter.check_identity
        try:
            arn = probe()
            return Readiness("ready", f"sts: {arn}")
        except StsError as exc:
            return Readiness("unready", f"STS GetCallerIdentity failed: {exc.code}: {exc.message}")

    def readiness_checks(self) -> list[Check]:
        """Every `/readyz` check with whether the policy requires it (the probe functions run in the
        background only: never call them on a request path)."""
        required_anchors = set(self.config.required_anchors)
        checks = [Check("ledger", self.ledger.ready), Check("sts", self._sts_ready)]
        if self.integrity is not None:
            checks.append(Check("ledger/integrity", self.integrity.readiness))
        for anchor in self.anchors:
            required = anchor.name in required_anchors  # under *_primary the asynchronous anchor is not
            checks.append(Check(f"anchor/{anchor.name}", anchor.ready, required=required))
            extra = getattr(anchor, "readiness_checks", None)
            if extra is not None:
                for name in ("evm/chain_id", "evm/fee_payer"):
                    def one_check(n: str = name, f: Any = extra) -> Any:
                        return f()[n]

                    checks.append(Check(name, one_check, required=required))
        checks.append(Check("keys/session", lambda: self._keys_ready(self.session_keys, "session")))
        checks.append(Check("keys/oidc", lambda: self._keys_ready(self.oidc_keys, "oidc")))
        for method in self.config.auth_methods:
            checks.append(self._signin_check(method))
        checks.append(Check("projections", self._projections_ready, required=False))
        return checks

    def readiness_probes(self) -> list[Probe]:
        """The background probes behind `readiness_checks()`: the EVM anchor's three checks share one
        RPC round; STS runs every min(10, 5 x interval) seconds; each has its own timeout."""
        interval = self.config.readiness_probe_interval_s
        probes: list[Probe] = []
        for anchor in self.anchors:
            extra = getattr(anchor, "readiness_checks", None)
            if extra is not None:
                evm_timeout = float(getattr(getattr(anchor, "config", None), "rpc_timeout_s", 5.0)) * 2 + 1
                def evm_round(f: Any = extra, n: str = anchor.name) -> Any:
                    return {(f"anchor/{n}" if k == "anchor/evm" else k): v for k, v in f().items()}

                probes.append(Probe((f"anchor/{anchor.name}", "evm/chain_id", "evm/fee_payer"),
                                    evm_round, interval, evm_timeout))
        grouped = {name for p in probes for name in p.names}
        sts_timeout = float(getattr(self.config.sts, "timeout_seconds", 5) or 5) + 1
        for check in self.readiness_checks():
            if check.name in grouped:
                continue
            if check.name == "sts":
                probes.append(Probe.single("sts", check.run, interval_s=sts_interval(interval), timeout_s=sts_timeout))
            else:
                probes.append(Probe.single(check.name, check.run, interval_s=interval, timeout_s=LOCAL_PROBE_TIMEOUT_S))
        return probes

    def readiness_report(self) -> tuple[int, dict]:
        """`/readyz` from the latest probe results: reads memory only, never a dependency."""
        required = {c.name: c.required for c in self.readiness_checks()}
        return evaluate(self.probes.snapshot(), lambda n: required.get(n, True))

    def latest_readiness(self, check: str) -> Readiness | None:
        """Non-blocking "latest readiness of check X" for use cases (e.g. `anchor/evm` before a
        mint): the last background probe result, None while unknown. Same as `probes.latest`."""
        return self.probes.latest(check)

    def _keys_ready(self, keyring: Keyring, purpose: Purpose) -> Readiness:
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
        status = self.projections.status()
        lag = max((s.lag for s in status), default=0)
        each = ", ".join(f"{s.name} {s.lag}" for s in status)
        if lag > PROJECTION_LAG_DEGRADED:
            return Readiness("degraded", f"projections are up to {lag} events behind the ledger head ({each})")
        return Readiness("ready", f"projections lag {lag} ({each})")
