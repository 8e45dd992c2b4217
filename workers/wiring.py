"""The one place that wires the scheduled jobs (design §3 "Workers") to a process's parts.

Jobs are plain functions with explicit dependencies (workers/jobs/, ledger/services/,
ledger/integrity.py); this module picks them, names them and gives each its period
(`BROKER_JOB_<NAME>_SECONDS`). Each runs under a lease row (workers/leases.py), so two processes on
the same files never run the same job at once. The same jobs run inside `serve` (unless
`--no-workers`) and in `agentkeys-broker workers`. Readiness probes are not jobs: every serving
process runs its own (api/probes.py); the EVM anchor's confirmation and reorg tracking runs in the
process holding its state lock (anchors/evm_tracking.py), whatever the jobs.
"""

from __future__ import annotations

import time
from typing import Any

from .jobs import anchor_reconcile, outcome_sweep, quarantine
from .leases import Leases
from .scheduler import Job, Workers, build_scheduler

REANCHOR_CLOSE_S = 5.0


def build_jobs(services: Any) -> list[Job]:
    """Every leased job of a broker process built by `api.runtime.Services.build`."""
    config = services.config
    sts_timeout = float(getattr(config.sts, "timeout_seconds", 5) or 5)
    jobs = [outcome_sweep.job(ledger=services.ledger, required_positions=services.required_positions,
                              deadline_s=config.anchor_deadline_ms / 1000.0, interval_s=config.job_outcome_sweep_s,
                              now=time.time, role_arn_for=services.role_arn_for, request_margin_s=2 * sts_timeout)]
    jobs.append(Job("spill-recover", config.job_outcome_sweep_s, services.recover_spill))
    jobs.append(Job(anchor_reconcile.JOB_NAME, config.job_anchor_reconcile_s, lambda: anchor_reconcile.run(
        ledger=services.ledger, anchors=services.anchors, batch_max=config.ledger_batch_max)))
    async_names = services.async_anchor_names()
    if async_names:
        async_anchors = [(a.name, a.confirmed_upto) for a in services.anchors if a.name in async_names]
        jobs.append(Job("quarantine-detect", config.job_quarantine_s, lambda: quarantine.run(
            ledger=services.ledger, async_anchors=async_anchors, deadline_s=config.evm_confirm_deadline_s,
            now=time.time)))
    if services.operator is not None:
        jobs.append(Job("quarantine-reanchor", REANCHOR_CLOSE_S, services.operator.close_reanchored))
    if services.integrity is not None:
        jobs.append(Job("integrity", config.job_integrity_s, services.integrity.incremental_check))
        jobs.append(Job("chain-verify", config.job_chain_verify_s, services.integrity.full_check))
    jobs.append(Job("projections", config.job_projections_s, services.projections.catch_up))
    jobs.extend(services._signin_jobs())  # purge of expired email/OAuth2 sign-in requests (issue 16)
    return jobs


def build_workers(services: Any) -> Workers:
    return build_scheduler(build_jobs(services), Leases(services.config.data_dir / "leases.sqlite"))
