"""The service catalogue and tenancy (design §3a "Service catalogue", §8 "Access wire"): which
services exist, which role each mint assumes, how a service's scope is narrowed, and which roots a
master owns. Pure data and rules, no I/O (the edge loads `BROKER_SERVICES_FILE`).

Scope kinds:
- `s3_prefix`: scopes are `<bucket>/<prefix>/` in one of the service's `buckets`; every mint carries
  a session policy narrowed to the scope (the built-in S3 template, or the service's own).
- `none`: no scope (`scope_path` empty); a session policy from the service's template, or none at
  all only when the service is declared `unscoped = true` on a role no other service uses.
- `oidc`: the service issues OIDC tokens for `AssumeRoleWithWebIdentity` on its role; no scope.

Ownership (who may grant, and mint under, which scope):
- `namespaced` tenancy: a master owns `<bucket>/<omni_account>/` in every bucket of an `s3_prefix`
  service; `assigned`: a master owns only the roots an operator assigned it.
- services of scope `none`/`oidc` have no namespace: only masters assigned to them (root `""`) own them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")  # exact, no case folding (design §3a)
ScopeKind = Literal["s3_prefix", "none", "oidc"]
SCOPE_KINDS: tuple[str, ...] = ("s3_prefix", "none", "oidc")
Tenancy = Literal["namespaced", "assigned"]
TENANCIES: tuple[str, ...] = ("namespaced", "assigned")


class CatalogueError(ValueError):
    """The catalogue is unusable (a configuration error, found at boot)."""


@dataclass(frozen=True)
class ServiceDef:
    name: str
    role_arn: str
    scope: ScopeKind
    buckets: tuple[str, ...] = ()
    policy_template: Mapping[str, Any] | None = field(default=None, compare=False)
    unscoped: bool = False

    @property
    def namespaced(self) -> bool:
        """Whether scopes of this service live under roots `<bucket>/<prefix>/`."""
        return self.scope == "s3_prefix"


class Catalogue:
    """An immutable, checked map service name -> `ServiceDef`."""

    def __init__(self, services: Mapping[str, ServiceDef], source: str = "built-in") -> None:
        for name, svc in services.items():
            if not isinstance(name, str) or not SERVICE_NAME.fullmatch(name):
                raise CatalogueError(f"service name {name!r} must match ^{SERVICE_NAME.pattern}$")
            if svc.scope not in SCOPE_KINDS:
                raise CatalogueError(f"service {name!r}: scope must be one of {', '.join(SCOPE_KINDS)}")
            if svc.scope == "s3_prefix" and not svc.buckets:
                raise CatalogueError(f"service {name!r}: scope s3_prefix needs at least one bucket")
            if svc.unscoped:
                if svc.scope != "none":
                    raise CatalogueError(f"service {name!r}: unscoped = true requires scope = \"none\"")
                shared = [other.name for other in services.values()
                          if other.name != name and other.role_arn == svc.role_arn]
                if shared:
                    raise CatalogueError(f"service {name!r}: unscoped = true requires a role no other service uses "
                                         f"(also used by {', '.join(sorted(shared))})")
                if svc.policy_template is not None:
                    raise CatalogueError(f"service {name!r}: unscoped = true and a policy_template exclude each other")
            elif svc.scope == "none" and svc.policy_template is None:
                raise CatalogueError(f"service {name!r}: scope none needs a policy_template (or unscoped = true "
                                     "with a role of its own)")
        self._services = MappingProxyType(dict(services))
        self.source = source

    def get(self, name: str) -> ServiceDef | None:
        if not isinstance(name, str) or not SERVICE_NAME.fullmatch(name):
            return None
        return self._services.get(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._services))

    def __iter__(self) -> Iterator[ServiceDef]:
        return iter(self._services.values())

    @classmethod
    def builtin(cls, role_arn: str, buckets: tuple[str, ...]) -> Catalogue:
        return cls({"s3": ServiceDef(name="s3", role_arn=role_arn, scope="s3_prefix", buckets=buckets)})


def namespace_roots(service: ServiceDef, omni_account: str) -> tuple[str, ...]:
    """The roots a master owns in `namespaced` tenancy: `<bucket>/<omni_account>/` per bucket."""
    if not service.namespaced:
        return ()
    return tuple(f"{bucket}/{omni_account}/" for bucket in service.buckets)


def root_covers(root: str, scope_path: str) -> bool:
    """Both normalized (`<bucket>/<prefix>/` or `""`); by path segment."""
    return scope_path.startswith(root) if root else True


__all__ = ["Catalogue", "CatalogueError", "SCOPE_KINDS", "SERVICE_NAME", "ServiceDef", "ScopeKind", "TENANCIES",
           "Tenancy", "namespace_roots", "root_covers"]
