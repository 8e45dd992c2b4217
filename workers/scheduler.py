"""The worker scheduler (APScheduler 3): the only module that knows APScheduler. Each job runs
under a lease (workers/leases.py), so several broker processes never run the same job at once."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from apscheduler.schedulers.background import BackgroundScheduler

from ledger.logcontext import request_id_var as job_id_var

from .leases import Leases

log = logging.getLogger("agentkeys.workers")


@dataclass(frozen=True)
class Job:
    name: str
    interval_s: float
    run: Callable[[], object]


def leased(job: Job, leases: Leases) -> Callable[[], None]:
    ttl = max(job.interval_s * 3, 30.0)

    def run() -> None:
        if not leases.acquire(job.name, ttl):
            return
        started = time.monotonic()
        token = job_id_var.set(f"job:{job.name}")
        try:
            result = job.run()
            log.debug("job %s done in %.3fs: %s", job.name, time.monotonic() - started, result)
        except Exception:
            log.exception("job %s failed", job.name)
        finally:
            job_id_var.reset(token)

    return run


def build_scheduler(jobs: list[Job], leases: Leases) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(daemon=True, job_defaults={"coalesce": True, "max_instances": 1})
    for job in jobs:
        scheduler.add_job(leased(job, leases), "interval", seconds=job.interval_s, id=job.name, name=job.name)
    return scheduler
