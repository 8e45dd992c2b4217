"""Quarantine resolution (design §3 "Quarantine", §8 "Operator wire"), HTTP-free.

An operator resolves an open case `q-<seq of MintAuthorized>` with one action:

- `accept`  — the mint stands without the missing anchor: `QuarantineResolved{resolved}`;
- `revoke`  — the role kill switch first (`RoleKillSwitch.revoke_sessions_before(role, now)`),
  then `RoleSessionsRevoked` + `QuarantineResolved{resolved}` in one append;
- `reanchor` — `QuarantineResolved{reanchoring}`; the worker (`close_reanchored`) writes
  `QuarantineResolved{resolved, operator: worker}` once every missing anchor confirms the record.

A closed (or re-anchoring) case refuses another operator action with `case_closed`. Every action
names its operator (design §8 "Operators").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ..aggregates import CaseRefused, QuarantineCase
from ..app import Ledger
from ..errors import ConcurrencyConflict
from ..events import QuarantineResolved, RoleSessionsRevoked
from ..ports import Anchor, RoleKillSwitch, StsError
from .refusals import Refusal

ACTIONS = ("reanchor", "accept", "revoke")
CASE_ID = re.compile(r"^q-([1-9][0-9]{0,15})$")
OPERATOR = re.compile(r"^[A-Za-z0-9._:@+-]{1,128}$")
MAX_REASON = 500
WORKER = "worker"


class QuarantineRefusal(Refusal):
    """`bad_request` (a malformed action, reason or operator), `case_not_found`, `case_closed`,
    `kill_switch_failed` (IAM refused or was unreachable: nothing was recorded)."""


@dataclass(frozen=True)
class Resolution:
    case_id: str
    status: str  # "reanchoring" | "resolved"
    seq: int
    revoked_not_before: str | None = None


def case_seq(case_id: str) -> int:
    m = CASE_ID.match(case_id or "")
    if m is None:
        raise QuarantineRefusal("case_not_found", f"no quarantine case {case_id[:80]!r} (case ids look like q-123)")
    return int(m.group(1))


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class QuarantineService:
    def __init__(
        self,
        *,
        ledger: Ledger,
        kill_switch: RoleKillSwitch | None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.ledger = ledger
        self.kill_switch = kill_switch
        self.clock = clock

    def _load(self, case_id: str) -> QuarantineCase:
        seq = case_seq(case_id)
        case = self.ledger.load(QuarantineCase, QuarantineCase.stream_for(seq))
        if case.opened is None or case.opened.case_id != case_id:
            raise QuarantineRefusal("case_not_found", f"no quarantine case {case_id}")
        return case

    def _role_arn(self, authorized_seq: int) -> str:
        records = self.ledger.read(authorized_seq - 1, 1)
        if not records or records[0].seq != authorized_seq or records[0].type != "MintAuthorized":
            raise QuarantineRefusal("case_not_found", f"record {authorized_seq} is not a MintAuthorized")
        return str(records[0].data["role_arn"])

    def resolve(self, case_id: str, *, action: str, reason: str, operator: str) -> Resolution:
        if action not in ACTIONS:
            raise QuarantineRefusal("bad_request", f"action must be one of {', '.join(ACTIONS)}")
        reason = (reason or "").strip()
        if not reason or len(reason) > MAX_REASON:
            raise QuarantineRefusal("bad_request", f"reason is required (1..{MAX_REASON} characters)")
        if not OPERATOR.match(operator or "") or operator == WORKER:
            raise QuarantineRefusal("bad_request", "operator name is malformed")
        case = self._load(case_id)
        if case.status != "open":
            raise QuarantineRefusal("case_closed", f"quarantine case {case_id} is {case.status}")
        status = "reanchoring" if action == "reanchor" else "resolved"
        event = QuarantineResolved(case_id=case_id, action=action, reason=reason, operator=operator,  # type: ignore[arg-type]
                                   status=status)  # type: ignore[arg-type]
        revoked: RoleSessionsRevoked | None = None
        if action == "revoke":
            revoked = self._kill_switch(case_id, case.opened.authorized_seq, operator)  # type: ignore[union-attr]
        try:
            _, records = self.ledger.execute(QuarantineCase, case.stream,
                                             lambda agg: agg.resolve(event, revoked=revoked))
        except CaseRefused as exc:
            if revoked is not None:  # the role policy changed: the ledger must say so even now
                self._record_revocation_alone(case.stream, revoked)
            raise QuarantineRefusal(exc.reason, str(exc)) from None
        return Resolution(case_id, status, records[-1].seq, revoked.not_before if revoked else None)

    def _kill_switch(self, case_id: str, authorized_seq: int, operator: str) -> RoleSessionsRevoked:
        if self.kill_switch is None:
            raise QuarantineRefusal("kill_switch_failed", "no IAM client is configured for the role kill switch")
        role_arn = self._role_arn(authorized_seq)
        not_before = _rfc3339(self.clock())
        try:
            self.kill_switch.revoke_sessions_before(role_arn, not_before)
        except StsError as exc:
            raise QuarantineRefusal("kill_switch_failed",
                                    f"IAM refused the kill switch on {role_arn}: {exc.code}: {exc.message}") from None
        return RoleSessionsRevoked(role_arn=role_arn, not_before=not_before, case_id=case_id, operator=operator)

    def _record_revocation_alone(self, stream: object, revoked: RoleSessionsRevoked) -> None:
        for _ in range(5):
            case = self.ledger.load(QuarantineCase, stream)  # type: ignore[arg-type]
            try:
                self.ledger.append(case.stream, case.version, [revoked])
                return
            except ConcurrencyConflict:
                continue

    def close_reanchored(self, case_ids: Sequence[str], anchors: Sequence[Anchor]) -> list[str]:
        """The worker's half of `reanchor`: every case in `case_ids` that is re-anchoring and whose
        missing anchors now confirm its record (and hold its hash) is closed with operator
        `worker`. Returns the closed case ids."""
        by_name = {a.name: a for a in anchors}
        closed: list[str] = []
        for case_id in case_ids:
            try:
                case = self._load(case_id)
            except QuarantineRefusal:
                continue
            if case.status != "reanchoring" or case.opened is None:
                continue
            seq = case.opened.authorized_seq
            records = self.ledger.read(seq - 1, 1)
            if not records or records[0].seq != seq:
                continue
            record_hash = records[0].hash
            confirmed = True
            for name in case.opened.missing_anchors:
                anchor = by_name.get(name)
                if anchor is None or anchor.confirmed_upto() < seq or not anchor.verify(seq, record_hash):
                    confirmed = False
                    break
            if not confirmed:
                continue
            last = case.resolutions[-1]
            event = QuarantineResolved(case_id=case_id, action="reanchor", operator=WORKER, status="resolved",
                                       reason=f"re-anchored: {', '.join(case.opened.missing_anchors)} confirmed "
                                              f"seq {seq} (requested by {last.operator})")
            try:
                _, written = self.ledger.execute(QuarantineCase, case.stream, lambda agg: agg.resolve(event))  # noqa: B023  lambda runs synchronously inside this iteration
            except CaseRefused:
                continue
            if written:
                closed.append(case_id)
        return closed
