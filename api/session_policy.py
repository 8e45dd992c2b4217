"""Inline session policies for `AssumeRole`: per-service templates, scope paths, a small evaluator.

A minted credential carries the role's own permissions intersected with the inline session policy
sent with `AssumeRole`. The broker narrows every `s3` credential to the `scope_path` the daemon was
granted; services without a template get no inline policy, so the role's own policy applies
unchanged (keep such roles narrow).

**Scope path syntax** (for every service that has a template): `<bucket>[/<prefix>]`.

- `bucket` is the first segment; for `s3` it must be a valid S3 bucket name (3-63 characters of
  `a-z 0-9 . -`, starting and ending with a letter or digit).
- `prefix` is the rest, a key prefix that is always treated as a directory: a missing trailing `/`
  is added, so `my-bucket/agents/a1` and `my-bucket/agents/a1/` both mean `agents/a1/` and never
  cover `agents/a10/`. `my-bucket` (or `my-bucket/`) alone grants the whole bucket.
- Refused (`ScopeError`): an empty scope path, a leading `/`, an empty segment (`//`), `*`, `?`,
  `$` (IAM wildcards and policy variables), `..`, control characters, more than 1024 characters.

**Templates.** A template is an IAM policy document whose strings may contain the placeholders
`${scope_path}` (normalised, always ending in `/`), `${bucket}` and `${prefix}` (`""` or ending in
`/`). Placeholders are substituted in the parsed document, never in JSON text, so a scope path can
not change the document's structure. Names with a colon (`${aws:PrincipalTag/agent_id}`) and the
IAM escapes `${*}`, `${?}`, `${$}` are IAM policy variables and are left for AWS to evaluate; any
other `${name}` is refused when the templates are loaded. `BROKER_SESSION_POLICY_TEMPLATES` names a
JSON file `{"<service>": <template> | null, ...}` that overrides the built-in templates per service
(`null` removes a built-in one).

The rendered policy is minified with sorted keys (the same text every time) and refused when it is
longer than 2048 characters (the STS plain-text limit). moto accepts session policies but does not
enforce them, so `evaluate()` is the small evaluator the tests use to prove what a document allows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ledger.scopes import MAX_SCOPE_PATH_CHARS, Scope, ScopeError, parse_scope  # noqa: F401 (public names of this module)

MAX_POLICY_CHARS = 2048
PLACEHOLDERS = ("scope_path", "bucket", "prefix")
SAMPLE_SCOPE_PATH = "example-bucket/agents/example-agent/"

_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
_IAM_ESCAPES = ("*", "?", "$")
_SERVICE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class TemplateError(ValueError):
    """A session policy template is unusable (a configuration error, found at boot)."""


S3_TEMPLATE: Mapping[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "AgentKeysScopedObjects",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
            "Resource": "arn:aws:s3:::${bucket}/${prefix}*",
        },
        {
            "Sid": "AgentKeysScopedList",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": "arn:aws:s3:::${bucket}",
            "Condition": {"StringLike": {"s3:prefix": ["${prefix}*", "${prefix}"]}},
        },
    ],
}

BUILTIN_TEMPLATES: Mapping[str, Mapping[str, Any]] = MappingProxyType({"s3": S3_TEMPLATE})


# Scope paths: parsed by `ledger/scopes.py` (`parse_scope`, `Scope`, `ScopeError`).


# ---------------------------------------------------------------------------------------------
# Templates


def minify(policy: Mapping[str, Any]) -> str:
    """The exact text sent as `Policy`: sorted keys, no whitespace, ASCII-escaped."""
    return json.dumps(policy, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _check_placeholders(node: Any, where: str) -> None:
    if isinstance(node, str):
        for name in _PLACEHOLDER.findall(node):
            if name not in PLACEHOLDERS and ":" not in name and name not in _IAM_ESCAPES:
                raise TemplateError(f"{where}: unknown placeholder ${{{name}}} (known: "
                                    + ", ".join(f"${{{p}}}" for p in PLACEHOLDERS) + ")")
    elif isinstance(node, Mapping):
        for key, value in node.items():
            if not isinstance(key, str):
                raise TemplateError(f"{where}: object keys must be strings")
            if any(n in PLACEHOLDERS for n in _PLACEHOLDER.findall(key)):
                raise TemplateError(f"{where}: placeholders are allowed in values only, not in key {key!r}")
            _check_placeholders(value, where)
    elif isinstance(node, list):
        for item in node:
            _check_placeholders(item, where)
    elif not (node is None or isinstance(node, (bool, int))):
        raise TemplateError(f"{where}: only objects, arrays, strings, integers and booleans are allowed")


def _substitute(node: Any, values: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), node)
    if isinstance(node, Mapping):
        return {key: _substitute(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [_substitute(item, values) for item in node]
    return node


def check_fixed_policy(template: Any, where: str) -> str:
    """A session policy for a service without a scope (scope `none`): a policy document without the
    scope placeholders (IAM policy variables are fine). Returns its minified text."""
    if not isinstance(template, Mapping) or "Statement" not in template:
        raise TemplateError(f"{where}: must be a policy document object with a Statement")
    if template.get("Version") != "2012-10-17":
        raise TemplateError(f"{where}: Version must be \"2012-10-17\"")
    _check_placeholders(template, where)
    text = minify(template)
    if any("${" + name + "}" in text for name in PLACEHOLDERS):
        raise TemplateError(f"{where}: a service without a scope has no ${{scope_path}}, ${{bucket}} or ${{prefix}}")
    if len(text) > MAX_POLICY_CHARS:
        raise TemplateError(f"{where}: {len(text)} characters; the limit is {MAX_POLICY_CHARS}")
    return text


class PolicyTemplates:
    """An immutable map service -> session policy template. `render(service, scope_path)` gives the
    exact `Policy` text to send, or None when the service has no template."""

    def __init__(self, templates: Mapping[str, Mapping[str, Any] | None], source: str = "built-in") -> None:
        checked: dict[str, str] = {}
        for service, template in templates.items():
            if not isinstance(service, str) or not _SERVICE.match(service):
                raise TemplateError(f"service name {service!r} must match {_SERVICE.pattern}")
            if template is None:
                continue
            where = f"template for {service!r}"
            if not isinstance(template, Mapping) or "Statement" not in template:
                raise TemplateError(f"{where}: must be a policy document object with a Statement")
            if template.get("Version") != "2012-10-17":
                raise TemplateError(f"{where}: Version must be \"2012-10-17\" (policy variables need it)")
            _check_placeholders(template, where)
            checked[service] = minify(template)
            sample = minify(_substitute(template, parse_scope(SAMPLE_SCOPE_PATH, service).values()))
            if len(sample) > MAX_POLICY_CHARS:
                raise TemplateError(f"{where}: renders to {len(sample)} characters for a short scope path; "
                                    f"the limit is {MAX_POLICY_CHARS}")
        self._templates = MappingProxyType(checked)
        self.source = source

    # Built-ins, a file, or both -------------------------------------------------------------

    @classmethod
    def builtin(cls) -> PolicyTemplates:
        return cls(BUILTIN_TEMPLATES)

    @classmethod
    def from_file(cls, path: Path) -> PolicyTemplates:
        """Built-in templates overridden per service by the JSON object in `path`."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise TemplateError(f"cannot read {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise TemplateError(f"{path} is not UTF-8") from None
        try:
            data = json.loads(text, parse_float=_refuse_float)
        except (ValueError, TemplateError) as exc:
            raise TemplateError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise TemplateError(f"{path} must hold a JSON object mapping service names to templates (or null)")
        merged: dict[str, Mapping[str, Any] | None] = dict(BUILTIN_TEMPLATES)
        merged.update(data)
        return cls(merged, source=str(path))

    # Queries ----------------------------------------------------------------------------------

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(sorted(self._templates))

    def template(self, service: str) -> dict[str, Any] | None:
        text = self._templates.get(service)
        return None if text is None else json.loads(text)

    def render_document(self, service: str, scope_path: str) -> dict[str, Any] | None:
        text = self.render(service, scope_path)
        return None if text is None else json.loads(text)

    def render(self, service: str, scope_path: str) -> str | None:
        """The minified policy for `service` narrowed to `scope_path`, or None (no template: the
        role's own policy applies). `ScopeError` for a bad scope path or an oversized result."""
        text = self._templates.get(service)
        if text is None:
            return None
        return self._render_text(text, service, scope_path)

    @staticmethod
    def _render_text(template_text: str, service: str, scope_path: str) -> str:
        scope = parse_scope(scope_path, service)
        policy = minify(_substitute(json.loads(template_text), scope.values()))
        if len(policy) > MAX_POLICY_CHARS:
            raise ScopeError(f"the session policy for this scope_path is {len(policy)} characters; "
                             f"STS accepts at most {MAX_POLICY_CHARS} (use a shorter scope_path)")
        return policy

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PolicyTemplates) and dict(self._templates) == dict(other._templates)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._templates.items())))

    def __repr__(self) -> str:
        return f"PolicyTemplates(services={list(self.services)!r}, source={self.source!r})"


def _refuse_float(text: str) -> Any:
    raise TemplateError(f"floating-point numbers are not allowed ({text})")


# ---------------------------------------------------------------------------------------------
# A small policy evaluator (for tests and operator checks; AWS remains the real enforcer)


_SUPPORTED_STATEMENT_KEYS = {"Sid", "Effect", "Action", "Resource", "Condition"}
_SUPPORTED_OPERATORS = {"StringLike", "StringEquals"}


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _wildcard(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """IAM wildcard match: `*` any run of characters (also none and `/`), `?` exactly one."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, flags=re.S | (re.I if ignore_case else 0)) is not None


def _condition_holds(condition: Mapping[str, Any], context: Mapping[str, Any]) -> bool:
    lowered = {str(k).lower(): v for k, v in context.items()}
    for operator, clauses in condition.items():
        if operator not in _SUPPORTED_OPERATORS:
            raise ValueError(f"evaluate: condition operator {operator!r} is not supported")
        for key, expected in clauses.items():
            actual = lowered.get(key.lower())
            if actual is None:
                return False  # a missing key never matches a positive string operator
            patterns = [str(p) for p in _as_list(expected)]
            values = [str(v) for v in _as_list(actual)]
            if operator == "StringEquals":
                ok = all(any(v == p for p in patterns) for v in values)
            else:
                ok = all(any(_wildcard(p, v) for p in patterns) for v in values)
            if not ok:
                return False
    return True


def _statement_matches(statement: Mapping[str, Any], action: str, resource: str, context: Mapping[str, Any]) -> bool:
    unknown = set(statement) - _SUPPORTED_STATEMENT_KEYS
    if unknown:
        raise ValueError(f"evaluate: statement elements {sorted(unknown)} are not supported")
    for pattern in _as_list(statement.get("Resource", [])):
        if "${" in str(pattern):
            raise ValueError("evaluate: policy variables in Resource are not supported")
    if not any(_wildcard(str(p), action, ignore_case=True) for p in _as_list(statement.get("Action", []))):
        return False
    if not any(_wildcard(str(p), resource) for p in _as_list(statement.get("Resource", []))):
        return False
    return _condition_holds(statement.get("Condition", {}), context)


def evaluate(policy: Mapping[str, Any], action: str, resource: str, context: Mapping[str, Any] | None = None) -> bool:
    """True iff some `Allow` statement matches `action` on `resource` with `context` (condition
    keys such as `s3:prefix`) and no `Deny` statement does. Default deny. Supports `Action` and
    `Resource` with `*`/`?` wildcards and `StringLike`/`StringEquals` conditions; anything else
    (NotAction, NotResource, other operators, policy variables) raises ValueError rather than
    guessing."""
    context = context or {}
    allowed = False
    for statement in _as_list(policy.get("Statement", [])):
        effect = statement.get("Effect")
        if effect not in ("Allow", "Deny"):
            raise ValueError(f"evaluate: Effect must be Allow or Deny, not {effect!r}")
        if _statement_matches(statement, action, resource, context):
            if effect == "Deny":
                return False
            allowed = True
    return allowed


__all__: Sequence[str] = (
    "BUILTIN_TEMPLATES", "MAX_POLICY_CHARS", "PLACEHOLDERS", "PolicyTemplates", "Scope", "ScopeError",
    "TemplateError", "evaluate", "minify", "parse_scope",
)
