"""Who owns which scope of which service (design §3a, §8 "Access wire"): the one place that
decides, used at grant creation and again at every mint (ownership is re-checked at mint, so a root
revoked after the grant refuses the next mint).

- `service(name)`: the catalogue entry; anything else (wrong case, unknown, malformed) is 400
  `unknown_service`, long before STS.
- `scope(service, scope_path)`: the canonical scope (`invalid_scope` when malformed): `s3_prefix`
  services take `<bucket>/<prefix>/` in one of their buckets, `none`/`oidc` services take `""`.
- `check_owned(omni_account, service, scope)`: 403 `not_enrolled` (assigned tenancy without a root
  for the service; scope `none`/`oidc` services without an assignment) or 403 `scope_not_owned`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ..aggregates import MasterRoots
from ..app import Ledger
from ..catalogue import Catalogue, ServiceDef, Tenancy, namespace_roots, root_covers
from ..scopes import ScopeError, parse_scope
from .refusals import Refusal

MAX_SCOPE_LEN = 512

RootsOf = Callable[[str], Mapping[str, frozenset[str]]]


def ledger_roots(ledger: Ledger) -> RootsOf:
    """The assigned roots of a master, read from the ledger (the `MasterRoots` aggregate)."""
    def roots_of(omni_account: str) -> Mapping[str, frozenset[str]]:
        return ledger.load(MasterRoots, MasterRoots.STREAM).of(omni_account)
    return roots_of


class Access:
    def __init__(self, *, catalogue: Catalogue, tenancy: Tenancy, roots_of: RootsOf,
                 legacy_service: str | None = None) -> None:
        self.catalogue = catalogue
        self.tenancy = tenancy
        self.roots_of = roots_of
        self.legacy_service = legacy_service

    def service(self, name: object) -> ServiceDef:
        svc = self.catalogue.get(name) if isinstance(name, str) else None
        if svc is None:
            shown = repr(name[:40]) if isinstance(name, str) else "a non-string"
            raise Refusal("unknown_service", f"service {shown} is not in this broker's catalogue "
                          f"({', '.join(self.catalogue.names)}); names are exact (lowercase)")
        return svc

    def scope(self, svc: ServiceDef, scope_path: object) -> str:
        if not isinstance(scope_path, str):
            raise Refusal("invalid_scope", "scope_path must be a string")
        if not svc.namespaced:
            if scope_path != "":
                raise Refusal("invalid_scope", f"service {svc.name!r} (scope {svc.scope}) takes no scope_path: "
                              "send an empty one")
            return ""
        if len(scope_path) > MAX_SCOPE_LEN:
            raise Refusal("bad_request", f"scope_path longer than {MAX_SCOPE_LEN} characters")
        try:
            scope = parse_scope(scope_path, "s3")
        except ScopeError as exc:
            raise Refusal("invalid_scope", exc.message) from None
        return scope.scope_path  # a bucket outside the service's is covered by no root: scope_not_owned

    def owned_roots(self, omni_account: str, svc: ServiceDef) -> tuple[str, ...]:
        """Refuses `not_enrolled` when the master owns nothing of the service."""
        if svc.namespaced and self.tenancy == "namespaced":
            return namespace_roots(svc, omni_account)
        roots = tuple(sorted(self.roots_of(omni_account).get(svc.name, frozenset())))
        if not roots:
            raise Refusal("not_enrolled", f"this account holds no root of service {svc.name!r}; an operator assigns "
                          "roots (agentkeys-broker masters assign)")
        return roots

    def check_owned(self, omni_account: str, svc: ServiceDef, scope: str) -> None:
        roots = self.owned_roots(omni_account, svc)
        if not svc.namespaced:
            return  # an assignment to the service is ownership of it
        if not any(root and root_covers(root, scope) for root in roots):
            hint = f" (yours: {', '.join(roots)})" if len(roots) <= 4 else ""
            raise Refusal("scope_not_owned", f"scope_path {scope!r} is outside every root this account owns{hint}")


__all__ = ["Access", "RootsOf", "ledger_roots"]
