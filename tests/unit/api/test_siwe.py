"""SIWE (EIP-4361) as the seed issues it (seed-spec §B.5), and the relying-party checks of prior-art §8."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.signatures import SignatureError
from ledger.siwe import (
    SIWE_TTL_SECONDS,
    SiweFields,
    SiweMessageError,
    build_message,
    check_message,
    new_challenge,
    new_nonce,
    new_request_id,
    parse_message,
    render_message,
    siwe_domain_and_uri,
    verify_signed_message,
)

KEY = "0x" + "42" * 32
WALLET = Account.from_key(KEY).address.lower()
ISSUER = "http://localhost:8080"
DOMAIN, URI = "localhost:8080", "http://localhost:8080"
CHAIN = 84532
NONCE = "0123456789abcdef0123456789abcdef"
ISSUED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
EXPIRES = ISSUED + timedelta(seconds=SIWE_TTL_SECONDS)
ALLOWED = (84532, 8453)

GOLDEN = (
    "localhost:8080 wants you to sign in with your Ethereum account:\n"
    "0xabababababababababababababababababababab\n"
    "\n"
    "Authenticate with AgentKeys broker.\n"
    "\n"
    "URI: http://localhost:8080\n"
    "Version: 1\n"
    "Chain ID: 84532\n"
    "Nonce: 0123456789abcdef0123456789abcdef\n"
    "Issued At: 2025-01-02T03:04:05Z\n"
    "Expiration Time: 2025-01-02T03:49:05Z\n"
    "Resources:\n"
    "- urn:agentkeys:client:agentkeys"
)


def _message(**overrides: object) -> str:
    args: dict[str, object] = dict(domain=DOMAIN, address=WALLET, uri=URI, chain_id=CHAIN, nonce=NONCE,
                                   issued_at=ISSUED, expires_at=EXPIRES)
    args.update(overrides)
    return build_message(**args)  # type: ignore[arg-type]


def _sign(text: str, key: str = KEY) -> str:
    return "0x" + bytes(Account.sign_message(encode_defunct(text=text), key).signature).hex()


def _check(fields: SiweFields, **overrides: object) -> str | None:
    args: dict[str, object] = dict(expected_domain=DOMAIN, expected_uri=URI, allowed_chain_ids=ALLOWED,
                                   expected_nonce=NONCE, now=ISSUED + timedelta(seconds=10))
    args.update(overrides)
    return check_message(fields, **args)  # type: ignore[arg-type]


# --- the message --------------------------------------------------------------------------------

def test_message_exact_text_golden() -> None:
    text = build_message(domain=DOMAIN, address="0x" + "AB" * 20, uri=URI, chain_id=CHAIN, nonce=NONCE,
                         issued_at=ISSUED, expires_at=EXPIRES)
    assert text == GOLDEN
    assert not text.endswith("\n") and "\r" not in text


def test_times_are_utc_and_sub_seconds_dropped() -> None:
    plus2 = timezone(timedelta(hours=2))
    text = _message(issued_at=ISSUED.astimezone(plus2).replace(microsecond=999_999),
                    expires_at=EXPIRES.astimezone(plus2))
    assert "Issued At: 2025-01-02T03:04:05Z\n" in text and "Expiration Time: 2025-01-02T03:49:05Z\n" in text


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError):
        _message(issued_at=ISSUED.replace(tzinfo=None))


@pytest.mark.parametrize(("field", "value"), [
    ("address", "0xshort"), ("domain", "evil.com\nURI: x"), ("domain", ""), ("uri", "http://a b"),
    ("nonce", "short"), ("nonce", "0123456789abcdef\nNonce: x"), ("chain_id", 0), ("chain_id", -1),
    ("chain_id", True), ("chain_id", "84532"),
])
def test_build_refuses_values_that_would_break_the_template(field: str, value: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        _message(**{field: value})


@pytest.mark.parametrize(("issuer", "domain"), [
    ("http://localhost:8080", "localhost:8080"),
    ("https://broker.example.com", "broker.example.com"),
    ("https://broker.example.com/", "broker.example.com"),
    ("https://broker.example.com:8443/base/path", "broker.example.com:8443"),
    ("https://broker.example.com?x=1", "broker.example.com"),
    ("http://[::1]:8080", "[::1]:8080"),
])
def test_domain_is_host_port_of_issuer_and_uri_is_verbatim(issuer: str, domain: str) -> None:
    assert siwe_domain_and_uri(issuer) == (domain, issuer)


@pytest.mark.parametrize("issuer", ["", "https://", "https:///path", "http://a b"])
def test_unusable_issuer_is_refused(issuer: str) -> None:
    with pytest.raises(ValueError):
        siwe_domain_and_uri(issuer)


def test_nonce_and_request_id_shapes_and_uniqueness() -> None:
    nonces = {new_nonce() for _ in range(200)}
    assert len(nonces) == 200 and all(re.fullmatch(r"[0-9a-f]{32}", n) for n in nonces)
    rid = new_request_id()
    assert re.fullmatch(r"siwe-[0-9a-f]{32}", rid) and rid != new_request_id()


def test_new_challenge_issues_a_45_minute_message_that_passes_every_check() -> None:
    ch = new_challenge(issuer=ISSUER, address="0x" + "AB" * 20, chain_id=CHAIN, now=ISSUED)
    assert ch.address == "0x" + "ab" * 20 and ch.request_id.startswith("siwe-")
    assert (ch.expires_at - ch.issued_at).total_seconds() == SIWE_TTL_SECONDS == 2700
    assert ch.expires_at_iso == "2025-01-02T03:49:05Z" and ch.expires_at_unix == int(EXPIRES.timestamp())
    fields = parse_message(ch.message)
    assert (fields.domain, fields.uri, fields.nonce, fields.chain_id) == (DOMAIN, URI, ch.nonce, CHAIN)
    assert _check(fields, expected_nonce=ch.nonce, now=ISSUED) is None


# --- parsing ------------------------------------------------------------------------------------

def test_parse_golden() -> None:
    f = parse_message(GOLDEN)
    assert f == SiweFields(domain=DOMAIN, address="0x" + "ab" * 20, statement="Authenticate with AgentKeys broker.",
                           uri=URI, version="1", chain_id=CHAIN, nonce=NONCE, issued_at=ISSUED,
                           expiration_time=EXPIRES, resources=("urn:agentkeys:client:agentkeys",))
    assert render_message(f) == GOLDEN


@pytest.mark.parametrize(("name", "text"), [
    ("trailing newline", GOLDEN + "\n"),
    ("crlf", GOLDEN.replace("\n", "\r\n")),
    ("leading space", " " + GOLDEN),
    ("no resources", GOLDEN.rsplit("\nResources:", 1)[0]),
    ("empty resource list", GOLDEN.rsplit("\n- ", 1)[0]),
    ("not before inserted", GOLDEN.replace("\nResources:", "\nNot Before: 2025-01-02T03:04:05Z\nResources:")),
    ("request id inserted", GOLDEN.replace("\nResources:", "\nRequest ID: x\nResources:")),
    ("short address", GOLDEN.replace("0x" + "ab" * 20, "0xabab")),
    ("address without 0x", GOLDEN.replace("0x" + "ab" * 20, "ab" * 21)),
    ("chain id leading zero", GOLDEN.replace("Chain ID: 84532", "Chain ID: 084532")),
    ("chain id sign", GOLDEN.replace("Chain ID: 84532", "Chain ID: +84532")),
    ("short nonce", GOLDEN.replace(NONCE, "abc")),
    ("nonce with space", GOLDEN.replace(NONCE, NONCE[:8] + " " + NONCE[8:])),
    ("fractional time", GOLDEN.replace("03:04:05Z", "03:04:05.000Z")),
    ("offset time", GOLDEN.replace("03:04:05Z", "03:04:05+00:00")),
    ("impossible date", GOLDEN.replace("2025-01-02T03:04:05Z", "2025-02-30T03:04:05Z")),
    ("missing header", GOLDEN.replace(" wants you to sign in", " wants to sign in")),
    ("empty domain", GOLDEN.replace("localhost:8080 wants", " wants")),
    ("missing blank line", GOLDEN.replace("\n\nURI:", "\nURI:")),
    ("swapped lines", GOLDEN.replace("Version: 1\nChain ID: 84532", "Chain ID: 84532\nVersion: 1")),
    ("uri without scheme", GOLDEN.replace("URI: http://localhost:8080", "URI: localhost")),
    ("empty", ""),
])
def test_parse_refuses_anything_but_our_template(name: str, text: str) -> None:
    with pytest.raises(SiweMessageError):
        parse_message(text)


# A realistic domain generator: DNS labels, optional port.
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_domains = st.builds(lambda labels, port: ".".join(labels) + (f":{port}" if port else ""),
                     st.lists(_label, min_size=1, max_size=4), st.one_of(st.none(), st.integers(1, 65535)))
_times = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9998, 1, 1),
                      timezones=st.just(UTC))


@settings(max_examples=200, deadline=None)
@given(
    domain=_domains,
    address=st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex()),
    chain_id=st.integers(min_value=1, max_value=2**64 - 1),
    nonce=st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=8, max_size=64),
    issued_at=_times,
    ttl=st.integers(min_value=0, max_value=10**7),
)
def test_build_parse_round_trip(domain: str, address: str, chain_id: int, nonce: str, issued_at: datetime,
                                ttl: int) -> None:
    uri = f"https://{domain}/login"
    expires = issued_at + timedelta(seconds=ttl)
    text = build_message(domain=domain, address=address, uri=uri, chain_id=chain_id, nonce=nonce,
                         issued_at=issued_at, expires_at=expires)
    f = parse_message(text)
    assert (f.domain, f.address, f.uri, f.chain_id, f.nonce) == (domain, address, uri, chain_id, nonce)
    assert f.issued_at == issued_at.replace(microsecond=0)
    assert f.expiration_time == expires.replace(microsecond=0)
    assert render_message(f) == text
    assert check_message(f, expected_domain=domain, expected_uri=uri, allowed_chain_ids=[chain_id],
                         expected_nonce=nonce, now=f.issued_at) in (None, "expired")


# --- relying-party checks -----------------------------------------------------------------------

def test_issued_message_passes_all_checks() -> None:
    assert _check(parse_message(_message())) is None
    assert _check(parse_message(_message()), now=int(ISSUED.timestamp()) + 10) is None


def test_domain_mismatch_is_detected() -> None:
    assert _check(parse_message(_message(domain="evil.example.com"))) == "domain_mismatch"


def test_uri_mismatch_is_detected() -> None:
    assert _check(parse_message(_message(uri="https://evil.example.com"))) == "uri_mismatch"


def test_version_other_than_1_is_detected() -> None:
    fields = dataclasses.replace(parse_message(_message()), version="2")
    assert _check(fields) == "version_unsupported"


def test_chain_id_outside_allow_list_is_detected() -> None:
    assert _check(parse_message(_message(chain_id=1))) == "chain_id_not_allowed"
    assert _check(parse_message(_message(chain_id=8453))) is None


def test_nonce_mismatch_is_detected() -> None:
    assert _check(parse_message(_message(nonce="f" * 32))) == "nonce_mismatch"


def test_nonce_is_compared_as_a_field_not_by_substring_search() -> None:
    # better-auth PR #7238: a message that merely *contains* the expected nonce must not pass.
    longer = _message(nonce=NONCE + "00")
    assert NONCE in longer
    assert _check(parse_message(longer)) == "nonce_mismatch"
    statement_smuggle = render_message(dataclasses.replace(parse_message(_message(nonce="f" * 32)),
                                                           statement=f"Nonce: {NONCE}"))
    assert f"Nonce: {NONCE}" in statement_smuggle
    assert _check(parse_message(statement_smuggle)) == "nonce_mismatch"


def test_address_check_is_optional_and_case_insensitive() -> None:
    fields = parse_message(_message())
    assert _check(fields, expected_address=WALLET.upper().replace("0X", "0x")) is None
    assert _check(fields, expected_address="0x" + "cd" * 20) == "address_mismatch"


def test_issued_at_in_the_future_beyond_skew_is_detected() -> None:
    fields = parse_message(_message())
    assert _check(fields, now=ISSUED - timedelta(seconds=60)) is None
    assert _check(fields, now=ISSUED - timedelta(seconds=61)) == "issued_in_future"


def test_expiry_is_detected_at_exactly_2700_seconds() -> None:
    fields = parse_message(_message())
    assert _check(fields, now=EXPIRES - timedelta(seconds=1)) is None
    assert _check(fields, now=EXPIRES) == "expired"


def test_checks_report_the_first_failure_in_order() -> None:
    fields = parse_message(_message(domain="evil.example.com", chain_id=1, nonce="f" * 32))
    assert _check(fields, now=EXPIRES + timedelta(days=1)) == "domain_mismatch"


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError):
        _check(parse_message(_message()), now=ISSUED.replace(tzinfo=None))


# --- signature over the stored message ----------------------------------------------------------

def test_wallet_signature_over_the_issued_message_verifies() -> None:
    issued = _message()
    assert verify_signed_message(issued, _sign(issued), WALLET) == WALLET
    assert verify_signed_message(issued, _sign(issued), Account.from_key(KEY).address) == WALLET


def _assert_altered_does_not_recover(**altered: object) -> None:
    issued = _message()
    forged = _message(**altered)
    assert forged != issued
    with pytest.raises(SignatureError) as info:
        verify_signed_message(issued, _sign(forged), WALLET)
    assert (info.value.reason, info.value.status) == ("address_mismatch", 401)
    assert re.fullmatch(rf"signature recovers to 0x[0-9a-f]{{40}} not {WALLET}", str(info.value))


def test_signature_over_message_with_altered_domain_does_not_recover_the_wallet() -> None:
    _assert_altered_does_not_recover(domain="evil.example.com")


def test_signature_over_message_with_altered_uri_does_not_recover_the_wallet() -> None:
    _assert_altered_does_not_recover(uri="https://evil.example.com")


def test_signature_over_message_with_altered_chain_id_does_not_recover_the_wallet() -> None:
    _assert_altered_does_not_recover(chain_id=1)


def test_signature_over_message_with_altered_nonce_does_not_recover_the_wallet() -> None:
    _assert_altered_does_not_recover(nonce="f" * 32)


def test_signature_over_message_with_altered_expiration_does_not_recover_the_wallet() -> None:
    _assert_altered_does_not_recover(expires_at=EXPIRES + timedelta(days=365))


def test_signature_by_another_wallet_is_address_mismatch() -> None:
    issued = _message()
    with pytest.raises(SignatureError) as info:
        verify_signed_message(issued, _sign(issued, "0x" + "43" * 32), WALLET)
    assert info.value.reason == "address_mismatch"


def test_malformed_signature_on_verify_keeps_its_parse_reason() -> None:
    with pytest.raises(SignatureError) as info:
        verify_signed_message(_message(), "0xnothex", WALLET)
    assert (info.value.reason, info.value.status) == ("signature_not_hex", 400)
