"""Access settings (design §3a, §8 "Access wire"): the service catalogue, the tenancy mode and the
legacy path's service, read from the environment at the entry point and checked at boot.

`BROKER_SERVICES_FILE` (TOML):

    [services.<name>]
    role_arn = "arn:aws:iam::<account>:role/<name>"
    scope = "s3_prefix" | "none" | "oidc"
    buckets = ["bucket-a", "bucket-b"]      # s3_prefix: required
    policy_template = "path/to/policy.json" # optional for s3_prefix (built-in), required for none
    unscoped = false                        # true: no session policy (scope none, a role of its own)

Without it, the built-in catalogue has one service, `s3` (scope `s3_prefix`, role
`BROKER_DATA_ROLE_ARN`, buckets `BROKER_S3_BUCKETS`, required). A relative `policy_template` is
relative to the services file.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.catalogue import SCOPE_KINDS, SERVICE_NAME, TENANCIES, Catalogue, CatalogueError, ServiceDef

from .session_policy import S3_TEMPLATE, PolicyTemplates, TemplateError, check_fixed_policy
from .settings import BootFailure, Setting

ACCESS_SETTINGS: tuple[Setting, ...] = (
    Setting("BROKER_SERVICES_FILE", None, "TOML service catalogue (`[services.<name>]` role_arn, scope, buckets, "
            "policy_template, unscoped). Unset: the built-in catalogue, `s3` only.", "services-file", "access"),
    Setting("BROKER_S3_BUCKETS", None, "Comma list of the buckets of the built-in `s3` service (required without "
            "`BROKER_SERVICES_FILE`; `dev` sets its bucket).", "s3-buckets", "access"),
    Setting("BROKER_TENANCY", "namespaced", "`namespaced`: every master owns `<bucket>/<omni_account>/` in each "
            "bucket of a service; `assigned`: masters own only the roots an operator assigned "
            "(`agentkeys-broker masters assign`).", "tenancy", "access"),
    Setting("BROKER_LEGACY_SERVICE", None, "The catalogue service (scope `none`) the legacy bearer path mints. "
            "Unset: legacy mints are refused (403 `not_enrolled`).", "legacy-service", "access"),
)

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_ROLE_ARN = re.compile(r"^arn:(aws(?:-[a-z]+)*):iam::(\d{12}):role/((?:[\w+=,.@-]+/)*)([\w+=,.@-]{1,64})$")
_KEYS = {"role_arn", "scope", "buckets", "policy_template", "unscoped"}


@dataclass(frozen=True)
class AccessSettings:
    catalogue: Catalogue
    tenancy: str = "namespaced"
    legacy_service: str | None = None


def _set(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return None if value is None or value.strip() == "" else value


def _buckets(raw: str, var: str, anchor: str) -> tuple[str, ...]:
    buckets = tuple(b.strip() for b in raw.split(",") if b.strip())
    if not buckets:
        raise BootFailure(var, raw, "needs at least one bucket name", anchor)
    for b in buckets:
        if not _BUCKET.match(b) or ".." in b:
            raise BootFailure(var, raw, f"{b[:64]!r} is not a valid S3 bucket name", anchor)
    return buckets


def builtin_catalogue(env: Mapping[str, str], role_arn: str, templates: PolicyTemplates) -> Catalogue:
    raw = _set(env, "BROKER_S3_BUCKETS")
    if raw is None:
        raise BootFailure("BROKER_S3_BUCKETS", env.get("BROKER_S3_BUCKETS"), "required with the built-in catalogue "
                          "(the buckets of service s3), or set BROKER_SERVICES_FILE", "s3-buckets")
    template = templates.template("s3")
    if template is None:
        raise BootFailure("BROKER_SESSION_POLICY_TEMPLATES", env.get("BROKER_SESSION_POLICY_TEMPLATES"),
                          "removes the template of service s3: every s3 mint needs a session policy", "sts-session-policy")
    return Catalogue({"s3": ServiceDef(name="s3", role_arn=role_arn, scope="s3_prefix",
                                       buckets=_buckets(raw, "BROKER_S3_BUCKETS", "s3-buckets"),
                                       policy_template=template)})


def load_services_file(path: Path, shown: str) -> Catalogue:
    def fail(reason: str) -> BootFailure:
        return BootFailure("BROKER_SERVICES_FILE", shown, reason, "services-file")

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise fail(f"cannot read it: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise fail(f"is not valid TOML: {str(exc)[:200]}") from None
    extra = set(data) - {"services"}
    if extra:
        raise fail(f"unknown top-level key(s) {', '.join(sorted(extra))} (only [services.<name>] tables)")
    services = data.get("services")
    if not isinstance(services, dict) or not services:
        raise fail("declares no [services.<name>] table")
    defs: dict[str, ServiceDef] = {}
    for name, table in services.items():
        if not SERVICE_NAME.fullmatch(name):
            raise fail(f"service name {name[:40]!r} must match ^{SERVICE_NAME.pattern}$ (exact, lowercase)")
        where = f"[services.{name}]"
        if not isinstance(table, dict):
            raise fail(f"{where} must be a table")
        unknown = set(table) - _KEYS
        if unknown:
            raise fail(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        role = table.get("role_arn")
        if not isinstance(role, str) or not _ROLE_ARN.match(role):
            raise fail(f"{where}: role_arn must be an IAM role ARN (arn:aws:iam::<12 digits>:role/<name>)")
        scope = table.get("scope")
        if scope not in SCOPE_KINDS:
            raise fail(f"{where}: scope must be one of {', '.join(SCOPE_KINDS)}")
        unscoped = table.get("unscoped", False)
        if not isinstance(unscoped, bool):
            raise fail(f"{where}: unscoped must be true or false")
        buckets_raw = table.get("buckets", [])
        if not isinstance(buckets_raw, list) or not all(isinstance(b, str) for b in buckets_raw):
            raise fail(f"{where}: buckets must be a list of bucket names")
        buckets: tuple[str, ...] = ()
        if buckets_raw:
            try:
                buckets = _buckets(",".join(buckets_raw), "BROKER_SERVICES_FILE", "services-file")
            except BootFailure as exc:
                raise fail(f"{where}: {exc.reason}") from None
        if scope != "s3_prefix" and buckets:
            raise fail(f"{where}: buckets apply to scope s3_prefix only")
        template: Mapping[str, Any] | None = S3_TEMPLATE if scope == "s3_prefix" else None
        if "policy_template" in table:
            tpath = table["policy_template"]
            if not isinstance(tpath, str) or not tpath:
                raise fail(f"{where}: policy_template must be a path to a JSON policy document")
            full = (path.parent / tpath).expanduser()
            try:
                template = json.loads(full.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise fail(f"{where}: policy_template {tpath!r}: cannot read a JSON document ({str(exc)[:120]})") from None
            try:
                if scope == "s3_prefix":
                    PolicyTemplates({name: template})
                else:
                    check_fixed_policy(template, where)
            except TemplateError as exc:
                raise fail(f"{where}: policy_template {tpath!r}: {exc}") from None
        defs[name] = ServiceDef(name=name, role_arn=role, scope=scope, buckets=buckets,  # type: ignore[arg-type]  # checked above
                                policy_template=template, unscoped=unscoped)
    try:
        return Catalogue(defs, source=str(path))
    except CatalogueError as exc:
        raise fail(str(exc)) from None


def from_env(env: Mapping[str, str], *, role_arn: str, templates: PolicyTemplates) -> AccessSettings:
    services_file = _set(env, "BROKER_SERVICES_FILE")
    if services_file is not None and _set(env, "BROKER_SESSION_POLICY_TEMPLATES") is not None:
        raise BootFailure("BROKER_SERVICES_FILE", services_file, "and BROKER_SESSION_POLICY_TEMPLATES are both set: "
                          "templates belong in the services file (policy_template)", "services-file-conflict")
    if services_file is not None:
        catalogue = load_services_file(Path(services_file.strip()).expanduser(), services_file)
    else:
        catalogue = builtin_catalogue(env, role_arn, templates)
    tenancy = (_set(env, "BROKER_TENANCY") or "namespaced").strip()
    if tenancy not in TENANCIES:
        raise BootFailure("BROKER_TENANCY", env.get("BROKER_TENANCY"), "must be namespaced or assigned", "tenancy")
    legacy = _set(env, "BROKER_LEGACY_SERVICE")
    if legacy is not None:
        legacy = legacy.strip()
        svc = catalogue.get(legacy)
        if svc is None:
            raise BootFailure("BROKER_LEGACY_SERVICE", legacy, f"is not a service of the catalogue "
                              f"({', '.join(catalogue.names)})", "legacy-service")
        if svc.scope != "none":
            raise BootFailure("BROKER_LEGACY_SERVICE", legacy, "must name a service of scope none (the legacy path "
                              "carries no scope)", "legacy-service")
    return AccessSettings(catalogue=catalogue, tenancy=tenancy, legacy_service=legacy)


__all__ = ["ACCESS_SETTINGS", "AccessSettings", "builtin_catalogue", "from_env", "load_services_file"]
