"""The periodic outcome sweep as a scheduler job (design §8 "Outcome sweep"). The logic lives in
the core (ledger/services/outcome_sweep.py); this wires it to the scheduler under every policy,
until the reconciler issue makes it a leased job of its own kind."""

from __future__ import annotations

from collections.abc import Callable

from ledger.app import Ledger
from ledger.services.outcome_sweep import PeriodicSweep, Positions

from ..scheduler import Job

JOB_NAME = "outcome-sweep"


def job(*, ledger: Ledger, required_positions: Positions, deadline_s: float, interval_s: float,
        now: Callable[[], float], role_arn_for: Callable[[str], str] = lambda service: "",
        request_margin_s: float = 0.0) -> Job:
    """A `Job` running one `PeriodicSweep` (its cursor lives as long as the job)."""
    sweep = PeriodicSweep(ledger, required_positions=required_positions, deadline_s=deadline_s, now=now,
                          role_arn_for=role_arn_for, request_margin_s=request_margin_s)
    return Job(JOB_NAME, interval_s, sweep.run)
