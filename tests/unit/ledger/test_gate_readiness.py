"""The release gate's pre-STS readiness check reads the background probes' latest results (the
`ReadinessView` port) and never calls an anchor on the request path (issue 12, fault E)."""

from __future__ import annotations

from ledger.gate import ReleaseGate
from ledger.ports import Readiness


class HangingAnchor:
    """An anchor whose `ready()` would block the event loop: it must never be called."""

    name = "evm"

    def ready(self) -> Readiness:
        raise AssertionError("ready() called on the request path")

    def submit(self, records) -> None:  # noqa: ANN001
        pass

    def confirmed_upto(self) -> int:
        return 0

    def verify(self, seq: int, hash: str) -> bool:
        return False


class View:
    def __init__(self, results: dict[str, Readiness]) -> None:
        self.results = results

    def latest(self, check: str) -> Readiness | None:
        return self.results.get(check)


def test_gate_reads_the_latest_probe_result_instead_of_calling_the_anchor() -> None:
    view = View({"anchor/evm": Readiness("unready", "rpc timed out")})
    gate = ReleaseGate([HangingAnchor()], ["evm"], 1000, readiness=view)
    assert gate.unready_required() == ["evm"]
    view.results["anchor/evm"] = Readiness("ready")
    assert gate.unready_required() == []


def test_unknown_readiness_does_not_refuse_the_gate_still_fails_closed() -> None:
    # no probe result yet (first probe in flight): not refused here; the gate's deadline still
    # withholds anything its anchors do not confirm
    gate = ReleaseGate([HangingAnchor()], ["evm"], 1000, readiness=View({}))
    assert gate.unready_required() == []
