"""Background readiness probes (api/probes.py): verdicts come from memory, a hanging probe turns
unready once past its timeout, a raising one is unready, never a crash. A fake clock drives time."""

from __future__ import annotations

import threading

from api.probes import Probe, ProbeRunner, sts_interval
from api.readiness import evaluate
from ledger.ports import Readiness


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_hanging_probe_is_unready_past_its_timeout_and_recovers_when_it_answers() -> None:
    clock = Clock()
    release = threading.Event()
    entered = threading.Event()

    def hang() -> Readiness:
        entered.set()
        release.wait(30)
        return Readiness("ready", "answered")

    runner = ProbeRunner([Probe.single("sts", hang, interval_s=10, timeout_s=5)], clock=clock)
    worker = threading.Thread(target=runner.run_once)
    worker.start()
    assert entered.wait(10)
    # in flight within its timeout: unknown to use cases, unready on /readyz
    assert runner.latest("sts") is None
    state = runner.state("sts")
    assert state is not None and state.readiness.status == "unready" and "first probe" in state.readiness.detail
    clock.t += 6  # past the timeout: unready at once, without waiting for the probe
    latest = runner.latest("sts")
    assert latest is not None and latest.status == "unready" and "has not answered for 6.0 s" in latest.detail
    state = runner.state("sts")
    assert state is not None and state.age_ms == 6000
    release.set()
    worker.join(10)
    assert runner.latest("sts") == Readiness("ready", "answered")
    clock.t += 1.5
    state = runner.state("sts")
    assert state is not None and state.age_ms == 1500


def test_raising_probe_is_unready_with_the_error_named() -> None:
    def boom() -> Readiness:
        raise OSError("disk gone")

    runner = ProbeRunner([Probe.single("ledger", boom, interval_s=1, timeout_s=1)])
    runner.run_once()
    latest = runner.latest("ledger")
    assert latest is not None and latest.status == "unready" and "OSError: disk gone" in latest.detail


def test_one_probe_answers_several_checks_and_a_missing_answer_is_unready() -> None:
    probe = Probe(("anchor/evm", "evm/chain_id", "evm/fee_payer"),
                  lambda: {"anchor/evm": Readiness("ready"), "evm/chain_id": Readiness("ready")}, 1, 1)
    runner = ProbeRunner([probe])
    runner.run_once()
    assert runner.latest("anchor/evm") == Readiness("ready")
    fee = runner.latest("evm/fee_payer")
    assert fee is not None and fee.status == "unready"
    assert runner.latest("not-probed") is None


def test_readyz_policy_unrequired_unready_check_is_degraded_200() -> None:
    runner = ProbeRunner([
        Probe.single("anchor/sqlite", lambda: Readiness("ready"), interval_s=1, timeout_s=1),
        Probe.single("anchor/evm", lambda: Readiness("unready", "rpc down"), interval_s=1, timeout_s=1),
    ])
    runner.run_once()
    code, body = evaluate(runner.snapshot(), lambda name: name != "anchor/evm")  # sqlite_primary
    assert (code, body["status"], body["degraded"]) == (200, "degraded", True)
    assert [c["name"] for c in body["checks"]] == ["anchor/evm"] and body["ready"] == ["anchor/sqlite"]
    assert set(body["age_ms"]) == {"anchor/sqlite", "anchor/evm"}
    code, body = evaluate(runner.snapshot(), lambda name: True)  # dual_strict
    assert (code, body["status"]) == (503, "unready")


def test_sts_is_probed_at_most_every_ten_seconds() -> None:
    assert sts_interval(2) == 10 and sts_interval(0.1) == 0.5 and sts_interval(60) == 10


def test_a_check_cannot_be_probed_twice() -> None:
    import pytest

    with pytest.raises(ValueError):
        ProbeRunner([Probe.single("sts", lambda: Readiness("ready"), interval_s=1, timeout_s=1),
                     Probe.single("sts", lambda: Readiness("ready"), interval_s=1, timeout_s=1)])


def test_background_threads_probe_periodically_and_stop() -> None:
    calls: list[int] = []
    seen_three = threading.Event()

    def probe() -> Readiness:
        calls.append(1)
        if len(calls) >= 3:
            seen_three.set()
        return Readiness("ready")

    runner = ProbeRunner([Probe.single("ledger", probe, interval_s=0.01, timeout_s=1)]).start()
    assert runner.wait_first(10)
    assert seen_three.wait(10)  # one attempt per period, again and again
    runner.stop()
    assert runner.latest("ledger") == Readiness("ready")
