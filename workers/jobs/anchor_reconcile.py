"""Anchor reconciliation (design §3 "Workers"): records an anchor should hold but does not are
submitted again. The release path stays event-driven (the anchor pump of each serving process,
ledger/anchoring.py); this job catches up what no pump delivered (a `workers` process on its own,
an anchor that was down). Comparing what the anchors hold with the ledger is the `integrity` job
(ledger/integrity.py)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ledger.app import Ledger
from ledger.ports import Anchor

log = logging.getLogger("agentkeys.workers.anchor_reconcile")

JOB_NAME = "anchor-reconcile"


def run(*, ledger: Ledger, anchors: Sequence[Anchor], batch_max: int = 1000, max_batches: int = 50) -> dict[str, int]:
    """Submit what each anchor lacks, batch by batch (at most `max_batches` per anchor per run).
    Returns the number of records submitted per anchor. An anchor's error stops that anchor only."""
    out: dict[str, int] = {}
    for anchor in anchors:
        submitted = 0
        try:
            accepted_upto = getattr(anchor, "accepted_upto", None)
            for _ in range(max_batches):
                after = accepted_upto() if accepted_upto is not None else anchor.confirmed_upto()
                records = ledger.read(after, batch_max)
                if not records:
                    break
                anchor.submit(records)
                submitted += len(records)
                log.info("anchor %s: anchored seqs %d..%d", anchor.name, records[0].seq, records[-1].seq)
        except Exception as exc:
            log.warning("anchor %s: reconciliation failed: %s: %s", anchor.name, type(exc).__name__, exc)
        out[anchor.name] = submitted
    return out
