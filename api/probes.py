"""Background readiness probes (design §8 "Never blocking"; issue 12 item 4).

Every dependency check runs on its own daemon thread, one attempt per period, never on a request
path: `/readyz` and the mint path read the latest results (`ProbeRunner.latest`, `snapshot`), which
costs a dictionary lookup whatever hangs.

- Periods: `BROKER_READINESS_PROBE_INTERVAL_SECONDS` (default 2 s) for every check; the STS check
  every `min(10, 5 x interval)` seconds (10 s by default), so STS is not hammered by probes.
- Each probe has its own timeout. A probe in flight for longer than its timeout makes its checks
  `unready` at once ("has not answered for N s"), without waiting for it to return; when it does
  return, its result replaces that verdict.
- One attempt each: a probe never retries inside a period (the STS probe uses the single-attempt
  client, api/sts.py).
- `age_ms` of a check: milliseconds since its reported result was measured (for a probe that is
  hanging past its timeout: since it started).

A probe function returns a `Readiness` for each check name it covers (the EVM anchor answers
`anchor/evm`, `evm/chain_id` and `evm/fee_payer` from one RPC round); one that raises turns all of
them unready with the exception named.

The non-blocking accessor for use cases is `ProbeRunner.latest(check) -> Readiness | None`
(the `ledger.ports.ReadinessView` port): None while the check has no result yet (and its first
probe is not overdue), so callers decide on their own whether "unknown" refuses.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ledger.ports import Readiness

log = logging.getLogger("agentkeys.probes")

DEFAULT_INTERVAL_S = 2.0
STS_MAX_INTERVAL_S = 10.0


@dataclass(frozen=True)
class Probe:
    """One background probe: `run()` answers every name in `names`."""

    names: tuple[str, ...]
    run: Callable[[], dict[str, Readiness]]
    interval_s: float
    timeout_s: float

    @classmethod
    def single(cls, name: str, fn: Callable[[], Readiness], *, interval_s: float, timeout_s: float) -> Probe:
        return cls((name,), lambda: {name: fn()}, interval_s, timeout_s)


@dataclass(frozen=True)
class CheckState:
    """What `/readyz` reports for one check: the verdict and how old it is."""

    name: str
    readiness: Readiness
    age_ms: int


def sts_interval(interval_s: float) -> float:
    return min(STS_MAX_INTERVAL_S, 5 * interval_s)


@dataclass
class _Slot:
    probe: Probe
    results: dict[str, Readiness] = field(default_factory=dict)
    finished_at: float | None = None   # monotonic time of the last completed run
    started_at: float | None = None    # monotonic start of the run in flight, None when idle
    thread: threading.Thread | None = None


class ProbeRunner:
    """Runs `Probe`s on background threads and keeps their latest results (thread-safe)."""

    def __init__(self, probes: Sequence[Probe] = (), *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._slots: list[_Slot] = []
        self._by_name: dict[str, _Slot] = {}
        self._started = False
        self.configure(probes)

    def configure(self, probes: Sequence[Probe]) -> None:
        """Set the probes (before `start`)."""
        if self._started:
            raise RuntimeError("probes are already running")
        slots = [_Slot(p) for p in probes]
        by_name: dict[str, _Slot] = {}
        for slot in slots:
            for name in slot.probe.names:
                if name in by_name:
                    raise ValueError(f"check {name!r} is probed twice")
                by_name[name] = slot
        with self._lock:
            self._slots, self._by_name = slots, by_name

    @property
    def names(self) -> list[str]:
        return [n for slot in self._slots for n in slot.probe.names]

    # --- running ------------------------------------------------------------------------------

    def start(self) -> ProbeRunner:
        if self._started:
            return self
        self._started = True
        self._stop = stop = threading.Event()  # one per start: threads of an earlier start stay stopped
        for slot in self._slots:
            slot.thread = threading.Thread(target=self._loop, args=(slot, stop), daemon=True,
                                           name=f"probe-{'+'.join(slot.probe.names)}")
            slot.thread.start()
        return self

    def stop(self) -> None:
        """Stop scheduling probes. A probe hanging in a dependency is not waited for (daemon threads)."""
        self._stop.set()
        self._started = False

    def wait_first(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` until every probe has completed once (at start-up, before serving).
        False if some have not: they report unready until they answer or time out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if all(slot.finished_at is not None for slot in self._slots):
                    return True
            time.sleep(0.01)
        return False

    def run_once(self) -> None:
        """Run every probe once on the calling thread (tools and tests without background threads)."""
        for slot in self._slots:
            self._run(slot)

    def _loop(self, slot: _Slot, stop: threading.Event) -> None:
        while not stop.is_set():
            self._run(slot)
            stop.wait(slot.probe.interval_s)

    def _run(self, slot: _Slot) -> None:
        with self._lock:
            slot.started_at = self._clock()
        try:
            results = slot.probe.run()
            missing = [n for n in slot.probe.names if n not in results]
            for name in missing:
                results[name] = Readiness("unready", f"{name}: the probe gave no answer for this check")
        except Exception as exc:  # a probe that raises is unready, never a crash of the thread
            results = {n: Readiness("unready", f"{n} probe failed: {type(exc).__name__}: {exc}")
                       for n in slot.probe.names}
        with self._lock:
            slot.results = {n: results[n] for n in slot.probe.names}
            slot.finished_at = self._clock()
            slot.started_at = None

    # --- reading (never blocks on a dependency) --------------------------------------------------

    def state(self, name: str) -> CheckState | None:
        """The verdict for `name` now, or None when `name` is not probed."""
        slot = self._by_name.get(name)
        if slot is None:
            return None
        now = self._clock()
        with self._lock:
            started, finished, result = slot.started_at, slot.finished_at, slot.results.get(name)
        timeout = slot.probe.timeout_s
        if started is not None and now - started > timeout:
            return CheckState(name, Readiness(
                "unready", f"{name}: the probe has not answered for {now - started:.1f} s (timeout {timeout:g} s)"),
                int((now - started) * 1000))
        if result is None or finished is None:
            since = started if started is not None else now
            return CheckState(name, Readiness("unready", f"{name}: first probe still running"),
                              int((now - since) * 1000))
        return CheckState(name, result, int((now - finished) * 1000))

    def latest(self, check: str) -> Readiness | None:
        """The `ReadinessView` port: the latest verdict for `check`, None while it is unknown (not
        probed, or its first probe still running within its timeout). Never blocks."""
        slot = self._by_name.get(check)
        state = self.state(check)
        if slot is None or state is None:
            return None
        with self._lock:
            finished, started = slot.finished_at, slot.started_at
        overdue = started is not None and self._clock() - started > slot.probe.timeout_s
        if finished is None and not overdue:
            return None
        return state.readiness

    def snapshot(self) -> list[CheckState]:
        """Every probed check, in configuration order."""
        out = []
        for name in self.names:
            state = self.state(name)
            if state is not None:
                out.append(state)
        return out
