"""Readiness checks for `/readyz`: each configured dependency, probed in the background
(api/probes.py); `/readyz` answers from the latest results and never calls a dependency itself.

Shape (design §4, §8): `{"status": "ready"|"degraded"|"unready", "degraded": bool, "checks":
[non-ready checks with name, status, reason, docs], "ready": [names of ready checks], "age_ms":
{check: milliseconds since its result was measured}}`; HTTP 503 when any required check is unready.
A check the audit policy does not require (the asynchronous anchor's under `*_primary`,
`projections`) makes the answer `degraded`, 200. Checks never return a constant; a dependency that
goes away turns its check unready on its next probe, and back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ledger.ports import Readiness

from .probes import CheckState

RUNBOOK_URL = "docs/operator-runbook.md#"


@dataclass(frozen=True)
class Check:
    name: str
    probe: Callable[[], Readiness]
    required: bool = True

    @property
    def docs(self) -> str:
        return docs_url(self.name)

    def run(self) -> Readiness:
        try:
            return self.probe()
        except Exception as exc:  # a probe that raises is unready, never a 500
            return Readiness("unready", f"{self.name} probe failed: {type(exc).__name__}: {exc}")


def docs_url(name: str) -> str:
    return RUNBOOK_URL + "readyz-" + name.replace("/", "-").replace("_", "-")


def evaluate(states: Sequence[CheckState], required: Callable[[str], bool]) -> tuple[int, dict]:
    """The `/readyz` status code and body from the latest probe results."""
    failing: list[dict] = []
    ready: list[str] = []
    unready_required = False
    degraded = False
    for state in states:
        result = state.readiness
        if result.status == "ready":
            ready.append(state.name)
            continue
        entry = {"name": state.name, "status": result.status, "reason": result.detail, "docs": docs_url(state.name)}
        failing.append(entry)
        if result.status == "unready" and required(state.name):
            unready_required = True
        else:
            degraded = True
    if unready_required:
        status, code = "unready", 503
    elif degraded:
        status, code = "degraded", 200
    else:
        status, code = "ready", 200
    return code, {"status": status, "degraded": status == "degraded", "checks": failing, "ready": ready,
                  "age_ms": {state.name: state.age_ms for state in states}}
