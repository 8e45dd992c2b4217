"""`/metrics` (Prometheus text format; design §8 "Operator wire").

Counters are derived from ledger records, never from the code paths that write them: a tail
reads the records committed since the last scrape (or since this process started) and counts
them, so every writer of the ledger is counted the same way and the mint code stays unaware of
metrics. Gauges are read at scrape time from cheap, local state (anchor positions, projection
positions, the last fee-payer probe). The release histogram is fed by the release gate.

| metric | labels | source |
|---|---|---|
| `agentkeys_mints_total` | `outcome` | `MintRequested` requested, `MintAuthorized` released, `MintWithheld`, `MintUnreleased`, `ReleaseUnconfirmed`(mint), `MintQuarantined`, `QuarantineResolved`(resolved), `MintDenied` (its `rate_limited` refusals count as `rate_limited`), plus the rate-limited refusals not recorded one by one (`UnrecordedCounts`) |
| `agentkeys_auth_attempts_total` | `method`, `outcome` | `AuthSucceeded` (succeeded), `AuthFailed` (failed), plus legacy bearer failures not recorded one by one (`UnrecordedCounts`) |
| `agentkeys_release_seconds` | | the release gate's wait, per release decision |
| `agentkeys_anchor_lag_records` | `anchor` | ledger head − the anchor's confirmed seq |
| `agentkeys_quarantine_open` | | open and re-anchoring cases (`quarantine` read model) |
| `agentkeys_projection_lag_records` | `projection` | ledger head − the projection's position |
| `agentkeys_fee_payer_balance_wei` | | the last readiness probe's balance (absent before one finished) |
| `agentkeys_sts_errors_total` | `code` | `MintDenied{reason: sts_error}` by AWS error code |
"""  # noqa: E501  a markdown table row cannot wrap

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from ledger.chain import ChainRecord
from ledger.gate import GateResult

log = logging.getLogger("agentkeys.metrics")

MINT_OUTCOMES = ("requested", "released", "withheld", "unreleased", "unconfirmed", "quarantined", "resolved",
                 "denied", "rate_limited")
_MINT_TYPES = {"MintRequested": "requested", "MintAuthorized": "released", "MintWithheld": "withheld",
               "MintUnreleased": "unreleased", "MintQuarantined": "quarantined", "MintDenied": "denied"}
CONTENT_TYPE = CONTENT_TYPE_LATEST


class _Gauges:
    """A custom collector: gauges computed at scrape time."""

    def __init__(self, sample: Callable[[], dict[str, Any]]) -> None:
        self._sample = sample

    def collect(self) -> Iterable[GaugeMetricFamily]:
        s = self._sample()
        anchor = GaugeMetricFamily("agentkeys_anchor_lag_records", "Ledger records not yet confirmed by the anchor",
                                   labels=["anchor"])
        for name, lag in sorted(s.get("anchor_lag", {}).items()):
            anchor.add_metric([name], lag)
        yield anchor
        proj = GaugeMetricFamily("agentkeys_projection_lag_records", "Ledger records the read model has not applied",
                                 labels=["projection"])
        for name, lag in sorted(s.get("projection_lag", {}).items()):
            proj.add_metric([name], lag)
        yield proj
        if s.get("quarantine_open") is not None:
            yield GaugeMetricFamily("agentkeys_quarantine_open", "Quarantine cases not yet resolved",
                                    value=s["quarantine_open"])
        if s.get("fee_payer_balance_wei") is not None:
            yield GaugeMetricFamily("agentkeys_fee_payer_balance_wei", "EVM fee payer balance at the last probe",
                                    value=s["fee_payer_balance_wei"])


class UnrecordedCounts:
    """The `UnrecordedOutcomes` port (ledger/ports.py): outcomes the use cases deliberately do not
    record one by one (design §8: refusals beyond a rate limit after the first of a window) are
    counted here, in the same counters as the ledger-derived ones. Built before the `Metrics` it
    feeds (the use cases are built first); counts made before `attach` are added on attach."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: Metrics | None = None
        self._pending: list[tuple[str, tuple[str, ...]]] = []

    def attach(self, metrics: Metrics) -> None:
        with self._lock:
            self._metrics = metrics
            pending, self._pending = self._pending, []
        for what, labels in pending:
            self._inc(metrics, what, labels)

    @staticmethod
    def _inc(metrics: Metrics, what: str, labels: tuple[str, ...]) -> None:
        (metrics.mints if what == "mint" else metrics.auth).labels(*labels).inc()

    def _count(self, what: str, labels: tuple[str, ...]) -> None:
        with self._lock:
            metrics = self._metrics
            if metrics is None:
                if len(self._pending) < 10_000:  # bounded until attached
                    self._pending.append((what, labels))
                return
        self._inc(metrics, what, labels)

    def mint(self, outcome: str) -> None:
        self._count("mint", (outcome,))

    def auth(self, method: str, outcome: str) -> None:
        self._count("auth", (method, outcome))


class Metrics:
    """One registry per broker process (never the global one: tests build several apps)."""

    def __init__(self, *, read: Callable[[int, int], list[ChainRecord]], head_seq: Callable[[], int],
                 sample: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.mints = Counter("agentkeys_mints_total", "Mint outcomes recorded in the ledger", ["outcome"],
                             registry=self.registry)
        for outcome in MINT_OUTCOMES:
            self.mints.labels(outcome)
        self.auth = Counter("agentkeys_auth_attempts_total", "Sign-in attempts recorded in the ledger",
                            ["method", "outcome"], registry=self.registry)
        self.release = Histogram("agentkeys_release_seconds", "Time the release gate waited for the anchors",
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                                 registry=self.registry)
        self.sts_errors = Counter("agentkeys_sts_errors_total", "STS refusals recorded in the ledger", ["code"],
                                  registry=self.registry)
        self.registry.register(_Gauges(sample))  # type: ignore[arg-type]  # a duck-typed collector
        self._read = read
        self._lock = threading.Lock()
        self._after = head_seq()  # count what is written from now on

    # --- feeding ------------------------------------------------------------------------------

    def observe_release(self, result: GateResult, seconds: float) -> None:
        self.release.observe(seconds)

    def catch_up(self, page: int = 5000) -> None:
        """Count the records committed since the last call (bounded per call)."""
        with self._lock:
            for _ in range(20):
                records = self._read(self._after, page)
                if not records:
                    return
                for record in records:
                    self._count(record)
                    self._after = record.seq
                if len(records) < page:
                    return

    def _count(self, record: ChainRecord) -> None:
        t, d = record.type, record.data
        outcome = _MINT_TYPES.get(t)
        if t == "ReleaseUnconfirmed" and d.get("kind", "mint") == "mint":
            outcome = "unconfirmed"
        elif t == "QuarantineResolved":
            outcome = "resolved" if d.get("status") == "resolved" else None
        elif t == "MintDenied" and d.get("reason") == "rate_limited":
            outcome = "rate_limited"
        if outcome is not None:
            self.mints.labels(outcome).inc()
        if t == "MintDenied" and d.get("reason") == "sts_error":
            code = str(d.get("detail") or "").split(":", 1)[0].strip() or "unknown"
            self.sts_errors.labels(code[:64]).inc()
        elif t == "AuthSucceeded":
            self.auth.labels(str(d.get("method")), "succeeded").inc()
        elif t == "AuthFailed":
            self.auth.labels(str(d.get("method")), "failed").inc()

    def render(self) -> bytes:
        try:
            self.catch_up()
        except Exception as exc:  # a scrape still answers with what it has
            log.warning("metrics: reading the ledger failed: %s", exc)
        return generate_latest(self.registry)
