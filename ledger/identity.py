"""Identities and OmniAccounts (seed-spec §D.6), pure functions.

    omni_account = lowercase_hex( SHA256( b"agentkeys" || utf8(identity_type) || utf8(identity_value) ) )

Plain concatenation, no separators (the seed's format; renaming a type breaks stored accounts).
`identity_value`: EVM = lowercase `0x` address; email = trimmed lowercase; Google = `sub`.

Addresses are accepted all-lowercase, all-uppercase, or mixed-case with a valid EIP-55 checksum: a
mixed-case address whose case does not match its checksum is a typo (or a tampered paste), refused.
"""

from __future__ import annotations

import hashlib
import re

from eth_hash.auto import keccak

CLIENT_ID = "agentkeys"
IDENTITY_TYPES = ("evm", "email", "oauth2_google", "oauth2_github", "oauth2_apple")

_ADDRESS = re.compile(r"^0x[0-9a-f]{40}$")
_HEX40 = re.compile(r"^[0-9a-fA-F]{40}$")


def omni_account(identity_type: str, identity_value: str, client_id: str = CLIENT_ID) -> str:
    if identity_type not in IDENTITY_TYPES:
        raise ValueError(f"unknown identity type {identity_type!r}")
    return hashlib.sha256(
        client_id.encode("utf-8") + identity_type.encode("utf-8") + identity_value.encode("utf-8")
    ).hexdigest()


def checksum_address(address: str) -> str:
    """The EIP-55 mixed-case form of a `0x` + 40 hex address (any case in)."""
    hex40 = address[2:].lower()
    nibbles = keccak(hex40.encode("ascii")).hex()
    return "0x" + "".join(c.upper() if c.isalpha() and int(n, 16) >= 8 else c for c, n in zip(hex40, nibbles, strict=False))


def normalize_address(address: str) -> str:
    """`0x` + 40 hex, returned lowercase; anything else raises ValueError. All-lowercase and
    all-uppercase hex are accepted as they are (EIP-55: no checksum); mixed case must be the EIP-55
    checksum of the address."""
    if not isinstance(address, str):
        raise ValueError("address must be a string")
    stripped = address.strip()
    lowered = stripped.lower()
    if len(lowered) != 42 or not _ADDRESS.match(lowered):
        raise ValueError(f"malformed address: {_shown(address)} (want 0x followed by 40 hex digits)")
    hex40 = stripped[2:]
    if hex40 != hex40.lower() and hex40 != hex40.upper() and "0x" + hex40 != checksum_address(stripped):
        raise ValueError(f"malformed address: {_shown(address)} has a bad EIP-55 checksum (mixed case must "
                         "match the checksum; send it all-lowercase to skip the check)")
    return lowered


def _shown(value: str) -> str:
    """The offending value for a message, bounded (a 200 KB 'address' is not echoed back whole)."""
    return repr(value if len(value) <= 64 else value[:64] + "...")


def evm_omni_account(address: str) -> str:
    return omni_account("evm", normalize_address(address))
