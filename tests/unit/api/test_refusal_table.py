"""The one table from refusal reasons to HTTP (api/errors.py `REFUSALS`): every reason a use case
or an adapter can raise has a row, and the rows agree with the kinds."""

from __future__ import annotations

import ast
from pathlib import Path

from api.errors import KIND_STATUS, REFUSALS
from ledger.services.mint import _DENIAL_REASONS, denial_reason
from ledger.services.refusals import Refusal
from tests.conftest import ROOT


def _literal_reasons() -> dict[str, str]:
    """`Refusal("reason", ...)` / `MintRefused("reason", ...)` with a literal reason, anywhere."""
    found: dict[str, str] = {}
    for package in ("ledger", "api", "projections", "anchors", "workers"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in ("Refusal", "MintRefused") and isinstance(node.args[0], ast.Constant):
                    found[node.args[0].value] = f"{Path(path).relative_to(ROOT)}:{node.lineno}"
    return found


def test_every_literal_refusal_reason_has_a_row() -> None:
    found = _literal_reasons()
    assert len(found) > 20  # the scan sees the use cases
    missing = {reason: where for reason, where in found.items() if reason not in REFUSALS}
    assert not missing, missing


def test_every_signature_and_session_reason_has_a_row() -> None:
    from typing import get_args

    from api.auth.session_jwt import SessionTokenReason
    from ledger.events import AuthFailureReason

    for reason in (*get_args(SessionTokenReason), *get_args(AuthFailureReason)):
        assert reason in REFUSALS, reason


def test_rows_name_known_kinds_and_every_mint_denial_reason_maps_onto_itself() -> None:
    assert all(kind in KIND_STATUS for kind, _ in REFUSALS.values())
    for reason in _DENIAL_REASONS:
        assert denial_reason(Refusal(reason, "x")) == reason
    assert denial_reason(Refusal("signature_high_s", "x")) == "signature_invalid"
    assert denial_reason(Refusal("invalid_scope", "x")) == "bad_request"
    assert REFUSALS["anchor_unready"] == ("anchor_unavailable", True)
