"""Operators assign and revoke the roots masters own (design §3a, §8 "Access wire";
`agentkeys-broker masters assign|revoke|list`). Under `BROKER_TENANCY=assigned` a master owns only
its assigned roots; services of scope `none`/`oidc` (no namespace) need an assignment with root
`""` under either tenancy. Recorded as `MasterRootAssigned` / `MasterRootRevoked` on one stream,
so the next mint sees a revocation (ownership is re-checked at every mint)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..aggregates import MasterRootRefused, MasterRoots
from ..app import Ledger
from ..catalogue import Catalogue
from ..errors import ConcurrencyConflict
from ..scopes import ScopeError, parse_scope
from .refusals import Refusal

OMNI_ACCOUNT = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Assignment:
    omni_account: str
    service: str
    root: str

    def wire(self) -> dict[str, str]:
        return {"omni_account": self.omni_account, "service": self.service, "root": self.root}


class MastersService:
    def __init__(self, *, ledger: Ledger, catalogue: Catalogue) -> None:
        self.ledger = ledger
        self.catalogue = catalogue

    def _checked(self, omni_account: str, service: str, root: str) -> tuple[str, str, str]:
        omni = omni_account.strip().lower().removeprefix("0x")
        if not OMNI_ACCOUNT.fullmatch(omni):
            raise Refusal("bad_request", "--omni-account must be the 64 hex digits of an OmniAccount")
        svc = self.catalogue.get(service)
        if svc is None:
            raise Refusal("unknown_service", f"service {service[:40]!r} is not in the catalogue "
                          f"({', '.join(self.catalogue.names)})")
        if not svc.namespaced:
            if root != "":
                raise Refusal("bad_request", f"service {svc.name!r} (scope {svc.scope}) has no namespace: use --root \"\"")
            return omni, svc.name, ""
        if root == "":
            raise Refusal("bad_request", f"service {svc.name!r} needs a root BUCKET/PREFIX/ (a whole bucket: BUCKET/)")
        try:
            scope = parse_scope(root, "s3")
        except ScopeError as exc:
            raise Refusal("bad_request", f"--root: {exc.message}") from None
        if scope.bucket not in svc.buckets:
            raise Refusal("bad_request", f"--root bucket {scope.bucket!r} is not a bucket of service {svc.name!r} "
                          f"({', '.join(svc.buckets)})")
        return omni, svc.name, scope.scope_path

    def _change(self, action: str, omni_account: str, service: str, root: str, operator: str) -> Assignment:
        omni, name, normalized = self._checked(omni_account, service, root)
        for _ in range(10):
            agg = self.ledger.load(MasterRoots, MasterRoots.STREAM)
            try:
                events = (agg.assign if action == "assign" else agg.revoke)(
                    omni_account=omni, service=name, root=normalized, operator=operator)
            except MasterRootRefused as exc:
                raise Refusal(exc.reason, str(exc)) from None
            try:
                self.ledger.append(MasterRoots.STREAM, agg.version, events)
                return Assignment(omni, name, normalized)
            except ConcurrencyConflict:
                continue
        raise Refusal("contended", "root assignment contended; retry")

    def assign(self, omni_account: str, service: str, root: str, *, operator: str) -> Assignment:
        return self._change("assign", omni_account, service, root, operator)

    def revoke(self, omni_account: str, service: str, root: str, *, operator: str) -> Assignment:
        return self._change("revoke", omni_account, service, root, operator)

    def list(self) -> list[Assignment]:
        agg = self.ledger.load(MasterRoots, MasterRoots.STREAM)
        return sorted((Assignment(omni, svc, root) for omni, services in agg.roots.items()
                       for svc, roots in services.items() for root in roots),
                      key=lambda a: (a.omni_account, a.service, a.root))


__all__ = ["Assignment", "MastersService"]
