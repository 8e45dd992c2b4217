"""Imports point inward (design §1): checked in a fresh interpreter and statically."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

RULES = {
    "ledger": {"api", "workers", "projections", "anchors"},
    "projections": {"api", "workers", "anchors"},
    "anchors": {"api", "workers", "projections"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_imports_point_inward(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _imports(path) & RULES[package]
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)


def test_importing_the_ledger_loads_no_outer_package() -> None:
    code = (
        "import sys, importlib, pkgutil, ledger\n"
        "for m in pkgutil.walk_packages(ledger.__path__, 'ledger.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in "
        "('api','workers','projections','anchors','litestar','web3','sqlalchemy','boto3','botocore','httpx','apscheduler'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"ledger pulled in: {out.stdout.strip()}"


# --- the core speaks no HTTP, no chain client, no SQL toolkit, no AWS SDK (issue 8) -------------

FORBIDDEN_IN_LEDGER = {"litestar", "web3", "sqlalchemy", "boto3", "botocore", "httpx"}


def test_ledger_imports_no_web_chain_sql_or_aws_library() -> None:
    offenders = []
    for path in sorted((ROOT / "ledger").rglob("*.py")):
        bad = {name.lower() for name in _imports(path)} & FORBIDDEN_IN_LEDGER
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)


def _raises_api_error(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), filename=str(path))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            name = exc.attr if isinstance(exc, ast.Attribute) else getattr(exc, "id", None)
            if name == "ApiError":
                lines.append(node.lineno)
    return lines


def test_api_error_is_raised_only_by_routes_and_the_error_table() -> None:
    """Use cases refuse with `Refusal`; only `api/routes/` (what is purely HTTP) and `api/errors.py`
    (the table) may raise `ApiError`."""
    # api/http_hygiene.py is ASGI middleware (the body-read deadline): purely HTTP, like a route
    allowed = {ROOT / "api" / "errors.py", ROOT / "api" / "http_hygiene.py"}
    offenders = []
    for package in ("api", "ledger", "projections", "anchors", "workers"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path in allowed or (ROOT / "api" / "routes") in path.parents:
                continue
            for line in _raises_api_error(path):
                offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert not offenders, "raise ApiError outside api/routes/: " + ", ".join(offenders)


def test_the_use_cases_live_in_the_core_not_in_api() -> None:
    for gone in ("api/mint.py", "api/grants.py", "api/auth/wallet.py"):
        assert not (ROOT / gone).exists(), f"{gone}: use cases belong in ledger/services/"
    for module in ("signin", "legacy", "grants", "mint", "release"):
        assert (ROOT / "ledger" / "services" / f"{module}.py").exists()


def _relative_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}


def test_settings_modules_do_not_import_each_other() -> None:
    """api/config.py imports api/sts_config.py; the shared shapes live in the leaf api/settings.py."""
    assert "config" not in _relative_imports(ROOT / "api" / "sts_config.py")
    assert _relative_imports(ROOT / "api" / "settings.py") == set()


def test_the_console_script_registers_commands_by_explicit_imports() -> None:
    """No command module is named by a string (an import tool could not see it)."""
    text = (ROOT / "workers" / "cli.py").read_text()
    assert "import_module" not in text and "__import__" not in text
    from workers import cli

    names = {c for c in cli.build_parser()._subparsers._group_actions[0].choices}  # type: ignore[union-attr]
    assert {"serve", "dev", "keygen", "audit", "projections", "anchors"} <= names
