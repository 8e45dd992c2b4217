"""RFC 9162 Merkle verification for the offline auditor: leaf hash, tree root, inclusion check.

A small, pure duplicate of the verifying half of `anchors/merkle.py` (which `ledger` may not import,
design section 1), so that `ledger/proofs.py` checks a proof bundle with nothing outside `ledger`
and the standard library. `tests/unit/ledger/test_merkle_verify.py` proves it agrees with
`anchors.merkle` (golden vectors, every leaf of every tree up to 70 leaves, random mutations).

Rules (RFC 6962 section 2.1, unchanged in RFC 9162 section 2.1):
    leaf  = SHA-256(0x00 || data)            data = the 32 bytes of a record hash
    node  = SHA-256(0x01 || left || right)
    MTH   = split at the largest power of two strictly below n; MTH({}) = SHA-256("")
A record at `seq` in the anchored batch `first_seq..last_seq` is leaf `seq - first_seq` of a tree
of `last_seq - first_seq + 1` leaves.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Sequence

__all__ = ["EMPTY_ROOT", "HASH_SIZE", "MAX_PATH", "leaf_hash", "record_leaf", "root_from_inclusion_proof", "root_of_leaf_hashes", "verify_inclusion"]

HASH_SIZE = 32
MAX_PATH = 64  # a tree of at most 2**64 leaves: no valid path is longer
EMPTY_ROOT = hashlib.sha256(b"").digest()
_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data)."""
    return _sha256(b"\x00" + bytes(data)).digest()


def record_leaf(record_hash_hex: str) -> bytes:
    """The leaf hash of a ledger record hash given as 64 hex digits. Raises ValueError otherwise."""
    raw = bytes.fromhex(record_hash_hex)
    if len(raw) != HASH_SIZE:
        raise ValueError(f"record hash must be {HASH_SIZE} bytes, got {len(raw)}")
    return leaf_hash(raw)


def root_of_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH over already computed leaf hashes, in order. O(n) time, O(log n) memory: leaves are
    folded into a stack of perfect subtrees (a binary counter), merged right to left at the end."""
    if not hashes:
        return EMPTY_ROOT
    stack: list[bytes] = []
    for count, h in enumerate(hashes, start=1):
        c = count
        while not c & 1:
            h = _sha256(b"\x01" + stack.pop() + h).digest()
            c >>= 1
        stack.append(h)
    acc = stack.pop()
    while stack:
        acc = _sha256(b"\x01" + stack.pop() + acc).digest()
    return acc


def root_from_inclusion_proof(leaf: bytes, index: int, tree_size: int, path: Sequence[bytes]) -> bytes:
    """The root implied by `leaf` at `index` of a `tree_size`-leaf tree and its audit path (leaf
    first), RFC 9162 section 2.1.3.2 steps 1-5. Raises ValueError when the path cannot be valid for
    (index, tree_size): index out of range, wrong length, a hash that is not 32 bytes."""
    for v in (index, tree_size):
        if type(v) is not int:
            raise ValueError("index and tree size must be integers")
    if isinstance(path, (bytes, bytearray, str)):
        raise ValueError("path must be a sequence of hashes")
    if len(leaf) != HASH_SIZE or any(len(p) != HASH_SIZE for p in path):
        raise ValueError(f"hashes must be {HASH_SIZE} bytes")
    if index < 0 or index >= tree_size:  # step 1
        raise ValueError(f"leaf index {index} not below tree size {tree_size}")
    fn, sn = index, tree_size - 1  # step 2
    r = bytes(leaf)  # step 3
    for p in path:  # step 4
        if sn == 0:  # 4a
            raise ValueError("path is longer than the tree allows")
        p = bytes(p)
        if fn & 1 or fn == sn:  # 4b
            r = _sha256(b"\x01" + p + r).digest()
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:  # 4c
            r = _sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:  # step 5
        raise ValueError("path is shorter than the tree requires")
    return r


def verify_inclusion(leaf: bytes, index: int, tree_size: int, path: Sequence[bytes], root: bytes) -> bool:
    """Does `path` prove `leaf` at `index` of the `tree_size`-leaf tree whose root is `root`?
    False for any invalid input; never raises for bytes-like hashes."""
    try:
        computed = root_from_inclusion_proof(leaf, index, tree_size, path)
    except (ValueError, TypeError):
        return False
    return len(root) == HASH_SIZE and hmac.compare_digest(computed, bytes(root))
