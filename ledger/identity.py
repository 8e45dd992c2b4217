"""Identities and OmniAccounts (seed-spec §D.6), pure functions.

    omni_account = lowercase_hex( SHA256( b"agentkeys" || utf8(identity_type) || utf8(identity_value) ) )

Plain concatenation, no separators (the seed's format; renaming a type breaks stored accounts).
`identity_value`: EVM = lowercase `0x` address; email = trimmed lowercase; Google = `sub`.
"""

from __future__ import annotations

import hashlib
import re

CLIENT_ID = "agentkeys"
IDENTITY_TYPES = ("evm", "email", "oauth2_google", "oauth2_github", "oauth2_apple")

_ADDRESS = re.compile(r"^0x[0-9a-f]{40}$")


def omni_account(identity_type: str, identity_value: str, client_id: str = CLIENT_ID) -> str:
    if identity_type not in IDENTITY_TYPES:
        raise ValueError(f"unknown identity type {identity_type!r}")
    return hashlib.sha256(
        client_id.encode("utf-8") + identity_type.encode("utf-8") + identity_value.encode("utf-8")
    ).hexdigest()


def normalize_address(address: str) -> str:
    """`0x` + 40 hex, returned lowercase; anything else raises ValueError (checksum case accepted)."""
    if not isinstance(address, str):
        raise ValueError("address must be a string")
    lowered = address.strip().lower()
    if len(lowered) != 42 or not _ADDRESS.match(lowered):
        raise ValueError(f"malformed address: {address!r} (want 0x followed by 40 hex digits)")
    return lowered


def evm_omni_account(address: str) -> str:
    return omni_account("evm", normalize_address(address))
