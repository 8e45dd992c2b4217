"""The composition root of a broker process: builds every component from `BrokerConfig`.

`Services.build(config)` opens the ledger, the configured anchors, the anchor pump and the
projection runner; `start()`/`stop()` run and stop their background threads. Nothing else
constructs concrete adapters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from anchors.sqlite import SQLiteAnchor
from ledger.anchoring import AnchorPump
from ledger.app import Ledger
from ledger.config import LedgerConfig
from ledger.ports import Anchor, Readiness
from projections.db import make_engine
from projections.runner import ProjectionRunner
from projections.registry import all_projections

from .config import BrokerConfig
from .readiness import Check

log = logging.getLogger("agentkeys.runtime")

# A projection further behind the ledger head than this is reported degraded.
PROJECTION_LAG_DEGRADED = 1000


@dataclass
class Services:
    config: BrokerConfig
    ledger: Ledger
    anchors: list[Anchor]
    pump: AnchorPump
    projections: ProjectionRunner
    _started: bool = field(default=False, repr=False)

    @classmethod
    def build(cls, config: BrokerConfig) -> "Services":
        config.check_paths()
        ledger = Ledger(
            LedgerConfig(
                config.ledger_db,
                batch_max=config.ledger_batch_max,
                batch_max_wait_ms=float(config.ledger_batch_max_wait_ms),
            )
        )
        anchors: list[Anchor] = []
        for name in config.anchors:
            if name == "sqlite":
                anchors.append(SQLiteAnchor(config.anchor_db))
        pump = AnchorPump(ledger, anchors)
        runner = ProjectionRunner(ledger, make_engine(config.projections_db), all_projections())
        return cls(config=config, ledger=ledger, anchors=anchors, pump=pump, projections=runner)

    def start(self) -> None:
        if self._started:
            return
        self.pump.start()
        self.projections.start()
        self._started = True

    def stop(self) -> None:
        try:
            self.projections.stop()
        finally:
            try:
                self.pump.stop()
            finally:
                self.ledger.close()
                self._started = False

    def anchor(self, name: str) -> Anchor | None:
        return next((a for a in self.anchors if a.name == name), None)

    def readiness_checks(self) -> list[Check]:
        checks = [Check("ledger", self.ledger.ready)]
        for anchor in self.anchors:
            checks.append(Check(f"anchor/{anchor.name}", anchor.ready))
        checks.append(Check("projections", self._projections_ready, required=False))
        return checks

    def _projections_ready(self) -> Readiness:
        lag = self.projections.lag()
        if lag > PROJECTION_LAG_DEGRADED:
            return Readiness("degraded", f"projections are {lag} events behind the ledger head")
        return Readiness("ready", f"projections lag {lag}")
