"""Who is an operator (api/operator.py): the token file, or a SIWE session of a listed wallet whose
JWT carries the operator role. Negative tests are named after the attack."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.auth.session_jwt import SessionSigner, verify_session_token
from api.errors import refusal_kind
from api.keys import generate_keyfile, load_keyring
from api.operator import OperatorAuth, PageSessions, token_operator_name
from ledger.services.refusals import Refusal

ISSUER = "https://broker.test.invalid"
TOKEN = "tok-" + "a" * 40
OPERATOR = "0x" + "aa" * 20
DAEMON = "0x" + "bb" * 20


@pytest.fixture
def keyring(tmp_path: Path):
    generate_keyfile(tmp_path / "session.json", "session")
    return load_keyring(tmp_path / "session.json", "session")


def _jwt(keyring, wallet: str, operators: tuple[str, ...] = (OPERATOR,)) -> str:  # noqa: ANN001
    signer = SessionSigner(keyring, ISSUER, 600, operator_wallets=operators)
    return signer.issue(omni_account="o" * 64, wallet_address=wallet, identity_type="evm", identity_value=wallet).token


def _auth(keyring, token: str | None = TOKEN, wallets: tuple[str, ...] = (OPERATOR,)) -> OperatorAuth:  # noqa: ANN001
    return OperatorAuth(token=token, wallets=wallets, session_keys=keyring, issuer=ISSUER)


def test_token_and_operator_wallet_are_named_as_the_design_says(keyring) -> None:  # noqa: ANN001
    auth = _auth(keyring)
    assert auth.from_headers({"authorization": f"Bearer {TOKEN}"}).name == token_operator_name(TOKEN)
    assert token_operator_name(TOKEN).startswith("token:") and len(token_operator_name(TOKEN)) == 14
    op = auth.from_credential(_jwt(keyring, OPERATOR))
    assert (op.name, op.method) == (OPERATOR, "siwe")


def test_operator_role_claim_only_for_listed_wallets(keyring) -> None:  # noqa: ANN001
    assert verify_session_token(_jwt(keyring, OPERATOR), keyring, ISSUER).agentkeys.role == "operator"
    daemon = verify_session_token(_jwt(keyring, DAEMON), keyring, ISSUER)
    assert daemon.agentkeys.role is None and "role" not in daemon.to_dict()["agentkeys"]  # unchanged shape


def test_anonymous_operator_is_refused_even_with_nothing_configured(keyring) -> None:  # noqa: ANN001
    for auth in (_auth(keyring), _auth(keyring, token=None, wallets=())):
        with pytest.raises(Refusal) as info:
            auth.from_headers({})
        assert refusal_kind(info.value) == "unauthorized"
    with pytest.raises(Refusal):
        _auth(keyring, token=None, wallets=()).from_credential("")


def test_stranger_session_is_not_an_operator(keyring) -> None:  # noqa: ANN001
    with pytest.raises(Refusal) as info:
        _auth(keyring).from_credential(_jwt(keyring, DAEMON))
    assert refusal_kind(info.value) == "forbidden" and info.value.reason == "not_operator"


def test_removed_operator_wallet_session_is_refused(keyring) -> None:  # noqa: ANN001
    jwt = _jwt(keyring, OPERATOR)  # signed while the wallet was listed
    with pytest.raises(Refusal) as info:
        _auth(keyring, wallets=()).from_credential(jwt)
    assert info.value.reason == "not_operator"


@pytest.mark.parametrize("guess", [TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "Bearer " + TOKEN, ""])
def test_guessed_operator_token_is_refused(keyring, guess: str) -> None:  # noqa: ANN001
    with pytest.raises(Refusal) as info:
        _auth(keyring).from_credential(guess)
    assert refusal_kind(info.value) == "unauthorized"


def test_stolen_page_cookie_of_a_dropped_session_is_dead() -> None:
    pages = PageSessions(ttl_s=60)
    from api.operator import Operator

    sid, session = pages.create(Operator("token:12345678", "token"))
    assert pages.get(sid) is session and pages.get(sid + "x") is None and pages.get(None) is None
    pages.drop(sid)
    assert pages.get(sid) is None
    expired = PageSessions(ttl_s=-1)
    old, _ = expired.create(Operator("token:12345678", "token"))
    assert expired.get(old) is None
