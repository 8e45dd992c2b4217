"""OmniAccount derivation (seed-spec §D.6) and address normalisation, against independent vectors."""

from __future__ import annotations

import hashlib

import pytest

from ledger.identity import CLIENT_ID, IDENTITY_TYPES, evm_omni_account, normalize_address, omni_account

ADDR_AB = "0x" + "ab" * 20

# Pinned once from sha256(b"agentkeys" || type || value); a change here breaks every stored account.
VECTORS = [
    ("evm", ADDR_AB, "b00491dad14d0916f68a969b1093ef87edbea404700af53b6d295245a21a6bb6"),
    ("email", "alice@example.com", "caf843f7f6b17c15fb43e8f6b2ae2e850045497ba7fb6a58b9d930ba6c158824"),
    ("oauth2_google", "109876543210987654321", "71bac69bdb8fd4e0bae25f6aedce665ae5146f63e5f0a7d3e9f1f5ec6ba0c8e7"),
]


def _independent(identity_type: str, value: str, client_id: bytes = b"agentkeys") -> str:
    return hashlib.sha256(client_id + identity_type.encode("utf-8") + value.encode("utf-8")).hexdigest()


@pytest.mark.parametrize(("identity_type", "value", "expected"), VECTORS)
def test_omni_account_matches_pinned_vectors(identity_type: str, value: str, expected: str) -> None:
    assert omni_account(identity_type, value) == expected
    assert _independent(identity_type, value) == expected


def test_evm_vector_is_plain_concatenation_without_separators() -> None:
    expected = hashlib.sha256(b"agentkeys" + b"evm" + b"0x" + b"ab" * 20).hexdigest()
    assert omni_account("evm", ADDR_AB) == expected
    assert evm_omni_account(ADDR_AB) == expected


def test_omni_account_is_64_lowercase_hex_without_prefix() -> None:
    value = omni_account("evm", ADDR_AB)
    assert len(value) == 64 and value == value.lower() and not value.startswith("0x")
    int(value, 16)


def test_client_id_namespaces_accounts() -> None:
    assert CLIENT_ID == "agentkeys"
    assert omni_account("evm", ADDR_AB, client_id="wildmeta") == _independent("evm", ADDR_AB, b"wildmeta")
    assert omni_account("evm", ADDR_AB, client_id="wildmeta") != omni_account("evm", ADDR_AB)


def test_identity_types_are_the_seeds() -> None:
    assert IDENTITY_TYPES == ("evm", "email", "oauth2_google", "oauth2_github", "oauth2_apple")


def test_unknown_identity_type_is_refused() -> None:
    with pytest.raises(ValueError):
        omni_account("Evm", ADDR_AB)


def test_evm_omni_account_of_a_checksummed_address_equals_the_lowercase_one() -> None:
    checksummed = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"  # EIP-55 example
    assert evm_omni_account(checksummed) == _independent("evm", checksummed.lower())


def test_normalize_address_accepts_checksummed_and_returns_lowercase() -> None:
    checksummed = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    assert normalize_address(checksummed) == "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"
    assert normalize_address(ADDR_AB.upper().replace("0X", "0x")) == ADDR_AB


@pytest.mark.parametrize("bad", [
    "0xshort",
    "0x" + "ab" * 19,                 # 19 bytes
    "0x" + "ab" * 21,                 # 21 bytes
    "0x" + "zz" * 20,                 # not hex
    "0x" + "ab" * 19 + "g1",          # one non-hex digit
    "ab" * 21,                        # 42 chars, no 0x
    "ab" * 20,                        # missing 0x
    "0x",
    "",
    "0x" + "ab" * 19 + "a ",          # inner whitespace
    "0x" + "\u0661" * 40,             # non-ASCII digits
])
def test_normalize_address_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        normalize_address(bad)


@pytest.mark.parametrize("bad", [None, 123, b"0x" + b"ab" * 20])
def test_normalize_address_rejects_non_strings(bad: object) -> None:
    with pytest.raises(ValueError):
        normalize_address(bad)  # type: ignore[arg-type]
