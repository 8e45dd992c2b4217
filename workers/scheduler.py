"""The worker scheduler (APScheduler 3): the only module that knows APScheduler. Each job runs
under a lease (workers/leases.py), so several broker processes never run the same job at once."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from ledger.logcontext import request_id_var as job_id_var

from .leases import Leases

log = logging.getLogger("agentkeys.workers")


@dataclass(frozen=True)
class Job:
    name: str
    interval_s: float
    run: Callable[[], object]


def leased(job: Job, leases: Leases, runs: dict[str, int] | None = None) -> Callable[[], None]:
    ttl = max(job.interval_s * 3, 30.0)

    def run() -> None:
        if not leases.acquire(job.name, ttl):
            return
        if runs is not None:
            runs[job.name] = runs.get(job.name, 0) + 1
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


class Workers:
    """The scheduler of one process with its jobs; `runs` counts the runs this process made of each
    job (after taking its lease), for tests and logs."""

    def __init__(self, jobs: list[Job], leases: Leases) -> None:
        self.jobs = list(jobs)
        self.leases = leases
        self.runs: dict[str, int] = {}
        self.scheduler = BackgroundScheduler(daemon=True, job_defaults={"coalesce": True, "max_instances": 1})
        for job in self.jobs:
            self.scheduler.add_job(leased(job, leases, self.runs), "interval", seconds=job.interval_s, id=job.name,
                                   name=job.name)

    @property
    def running(self) -> bool:
        return bool(self.scheduler.running)

    def get_jobs(self) -> list[Any]:
        """The APScheduler jobs (each `id` is the job's name)."""
        return list(self.scheduler.get_jobs())

    def start(self) -> None:
        self.scheduler.start()
        log.info("workers started: %s", ", ".join(f"{j.name} every {j.interval_s:g}s" for j in self.jobs))

    def shutdown(self, wait: bool = False) -> None:
        self.scheduler.shutdown(wait=wait)
        for job in self.jobs:  # let another process take over at once
            try:
                self.leases.release(job.name)
            except Exception:  # pragma: no cover - best effort on the way out
                log.debug("could not release lease %s", job.name)


def build_scheduler(jobs: list[Job], leases: Leases) -> Workers:
    return Workers(jobs, leases)
