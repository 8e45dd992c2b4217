"""EIP-191 (`personal_sign`) signatures: strict parsing and recovery (seed-spec §B.4 step 4, §B.5 step 3).

Shared by SIWE verify and the per-call mint signature. Parsing is ours, not eth-account's, so the
refusals are explicit and typed (each `reason` is an `AuthFailureReason` of the ledger):

    not hex (optional `0x` prefix)         -> signature_not_hex        400 "signature is not hex"
    not 65 bytes r||s||v                   -> signature_length         400 "signature must be 65 bytes, got N"
    v not in {0, 1, 27, 28}                -> signature_v              400 "unsupported v byte: V"
    r or s zero, or >= the curve order n   -> signature_zero           400 "bad sig bytes"
    s > n/2 (malleable twin, EIP-2)        -> signature_high_s         401
    no public key recovers                 -> signature_unrecoverable  401
    recovers to another address            -> address_mismatch         401

The seed rejected high-s only implicitly (k256 refuses it during recovery, giving 401); we refuse it
before recovery with its own reason, keeping the 401. eth-account alone would accept high-s and
EIP-155 `v` values (35+), which is why nothing reaches it unparsed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import get_args

from eth_account import Account
from eth_account.messages import encode_defunct

from ledger.events import AuthFailureReason

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP256K1_HALF_N = SECP256K1_N // 2
SIGNATURE_BYTES = 65

_HEX = re.compile(r"[0-9a-fA-F]*")
_REASONS = frozenset(get_args(AuthFailureReason))
_STATUS = {
    "signature_not_hex": 400,
    "signature_length": 400,
    "signature_v": 400,
    "signature_zero": 400,
    "signature_high_s": 401,
    "signature_unrecoverable": 401,
    "address_mismatch": 401,
}


class SignatureError(Exception):
    """A refused signature. `reason` is an `AuthFailureReason`; `status` is 400 (malformed, as the
    seed) or 401 (well-formed but not acceptable); `kind` is the matching wire error kind."""

    def __init__(self, reason: str, message: str, *, status: int | None = None) -> None:
        if reason not in _REASONS:
            raise ValueError(f"{reason!r} is not an AuthFailureReason")
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status if status is not None else _STATUS.get(reason, 401)

    @property
    def kind(self) -> str:
        return "bad_request" if self.status == 400 else "unauthorized"

    def __repr__(self) -> str:
        return f"SignatureError({self.reason!r}, {self.message!r}, status={self.status})"


@dataclass(frozen=True, slots=True)
class Signature:
    """A parsed 65-byte signature; `v` is normalised to 0/1 and `raw65` keeps the bytes as sent."""

    r: int
    s: int
    v: int
    raw65: bytes

    def to_bytes(self, *, v_offset: int = 27) -> bytes:
        """r||s||v with v = 0/1 + `v_offset` (27 is the `personal_sign` convention)."""
        return self.r.to_bytes(32, "big") + self.s.to_bytes(32, "big") + bytes([self.v + v_offset])

    def to_hex(self) -> str:
        return "0x" + self.to_bytes().hex()


def parse_signature(hex_str: str) -> Signature:
    """Parse `0x`-optional hex of r||s||v; see the module docstring for the refusals, in check order."""
    if not isinstance(hex_str, str):
        raise SignatureError("signature_not_hex", "signature is not hex")
    body = hex_str[2:] if hex_str.startswith("0x") else hex_str
    # bytes.fromhex tolerates whitespace; the regex does not.
    if len(body) % 2 or not _HEX.fullmatch(body):
        raise SignatureError("signature_not_hex", "signature is not hex")
    raw = bytes.fromhex(body)
    if len(raw) != SIGNATURE_BYTES:
        raise SignatureError("signature_length", f"signature must be 65 bytes, got {len(raw)}")
    v_byte = raw[64]
    if v_byte in (0, 1):
        v = v_byte
    elif v_byte in (27, 28):
        v = v_byte - 27
    else:
        raise SignatureError("signature_v", f"unsupported v byte: {v_byte}")
    r = int.from_bytes(raw[0:32], "big")
    s = int.from_bytes(raw[32:64], "big")
    if r == 0 or s == 0 or r >= SECP256K1_N or s >= SECP256K1_N:
        raise SignatureError("signature_zero", "bad sig bytes")
    if s > SECP256K1_HALF_N:
        raise SignatureError(
            "signature_high_s",
            "signature s is in the upper half of the curve order (malleable; only low-s is accepted)",
        )
    return Signature(r=r, s=s, v=v, raw65=raw)


def recover_personal_sign(message: bytes | str, sig: Signature) -> str:
    """The lowercase `0x` address whose key made `sig` over the EIP-191 digest
    keccak256("\\x19Ethereum Signed Message:\\n" + len(bytes) + bytes); a `str` is UTF-8 encoded."""
    if isinstance(message, str):
        signable = encode_defunct(text=message)
    elif isinstance(message, (bytes, bytearray, memoryview)):
        signable = encode_defunct(primitive=bytes(message))
    else:
        raise TypeError("message must be bytes or str")
    try:
        address: str = Account.recover_message(signable, vrs=(sig.v + 27, sig.r, sig.s))
    except Exception as exc:  # eth-keys raises BadSignature / ValueError / coincurve errors
        raise SignatureError(
            "signature_unrecoverable", f"signature does not recover a public key: {type(exc).__name__}"
        ) from None
    return address.lower()


def verify_personal_sign(message: bytes | str, signature_hex: str, expected_address: str, *,
                         label: str = "signature") -> str:
    """Parse, recover and compare (case-insensitive) with `expected_address`; returns the recovered
    lowercase address or raises `SignatureError` (`address_mismatch`: "<label> recovers to X not Y")."""
    sig = parse_signature(signature_hex)
    recovered = recover_personal_sign(message, sig)
    expected = expected_address.lower() if isinstance(expected_address, str) else ""
    if recovered != expected:
        raise SignatureError("address_mismatch", f"{label} recovers to {recovered} not {expected}")
    return recovered
