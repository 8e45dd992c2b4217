"""EIP-55 checksums (ledger/identity.py) against the EIP's own test vectors."""

from __future__ import annotations

import pytest

from ledger.identity import checksum_address, normalize_address

# from EIP-55 (https://eips.ethereum.org/EIPS/eip-55#test-cases)
VECTORS = [
    "0x52908400098527886E0F7030069857D2E4169EE7",
    "0x8617E340B3D01FA5F11F306F4090FD50E238070D",
    "0xde709f2102306220921060314715629080e2fb77",
    "0x27b1fdb04752bbc536007a920d24acb045561c26",
    "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
    "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
    "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
]


@pytest.mark.parametrize("address", VECTORS)
def test_eip55_vectors_are_accepted_and_computed(address: str) -> None:
    assert normalize_address(address) == address.lower()
    if address[2:] not in (address[2:].lower(), address[2:].upper()):
        assert checksum_address(address.lower()) == address


@pytest.mark.parametrize("address", [v for v in VECTORS if v[2:] not in (v[2:].lower(), v[2:].upper())])
def test_a_flipped_letter_in_a_checksummed_address_is_refused(address: str) -> None:
    i = next(i for i, c in enumerate(address) if i >= 2 and c.isalpha())
    typo = address[:i] + address[i].swapcase() + address[i + 1:]
    with pytest.raises(ValueError, match="EIP-55"):
        normalize_address(typo)


def test_all_lower_and_all_upper_skip_the_checksum() -> None:
    a = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    assert normalize_address(a.lower()) == a.lower()
    assert normalize_address("0x" + a[2:].upper()) == a.lower()
    assert normalize_address("0X" + a[2:].upper()) == a.lower()


def test_a_huge_address_is_not_echoed_back_whole() -> None:
    with pytest.raises(ValueError) as exc:
        normalize_address("0x" + "A" * 200_000)
    assert len(str(exc.value)) < 300
