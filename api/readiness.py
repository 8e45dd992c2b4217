"""Readiness checks for `/readyz`: each configured dependency probed live on every request.

Shape (design §4): `{"status": "ready"|"degraded"|"unready", "degraded": bool, "checks": [non-ready
checks with name, status, reason, docs], "ready": [names of ready checks]}`; HTTP 503 when any
required check is unready. Checks never return a constant; a dependency that goes away turns its
check unready on the next request, and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ledger.ports import Readiness

RUNBOOK_URL = "docs/operator-runbook.md#"


@dataclass(frozen=True)
class Check:
    name: str
    probe: Callable[[], Readiness]
    required: bool = True

    @property
    def docs(self) -> str:
        return RUNBOOK_URL + "readyz-" + self.name.replace("/", "-").replace("_", "-")

    def run(self) -> Readiness:
        try:
            return self.probe()
        except Exception as exc:  # a probe that raises is unready, never a 500
            return Readiness("unready", f"{self.name} probe failed: {type(exc).__name__}: {exc}")


def evaluate(checks: list[Check]) -> tuple[int, dict]:
    failing: list[dict] = []
    ready: list[str] = []
    unready_required = False
    degraded = False
    for check in checks:
        result = check.run()
        if result.status == "ready":
            ready.append(check.name)
            continue
        entry = {"name": check.name, "status": result.status, "reason": result.detail, "docs": check.docs}
        failing.append(entry)
        if result.status == "unready" and check.required:
            unready_required = True
        else:
            degraded = True
    if unready_required:
        status, code = "unready", 503
    elif degraded:
        status, code = "degraded", 200
    else:
        status, code = "ready", 200
    return code, {"status": status, "degraded": status == "degraded", "checks": failing, "ready": ready}
