"""RFC 6962 / RFC 9162 Merkle tree hash, inclusion proofs and their verification.

Pure functions over `hashlib` only. The rules (RFC 9162 §2.1, unchanged from RFC 6962 §2.1):

- ``MTH({}) = SHA-256("")``;
- ``MTH({d0}) = SHA-256(0x00 || d0)`` (the *leaf hash*);
- for n > 1, with k the largest power of two strictly smaller than n,
  ``MTH(D[n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))``.

The tree's shape is fixed by n alone; there is no duplicated last node.

In the broker a leaf's data is the 32-byte record hash of one ledger record
(``bytes.fromhex(record.hash)``) and a batch ``firstSeq..lastSeq`` becomes the tree over the record
hashes in seq order, so a record's leaf index is ``seq - firstSeq`` and the tree size is
``lastSeq - firstSeq + 1``. The functions here accept leaf data of any length, as the RFC does (the
golden vectors hash leaves of 0 to 16 bytes).

The on-chain verifier (``AuditAnchor.verifyInclusion``) implements the same §2.1.3.2 algorithm as
`verify_inclusion` below, byte for byte.

The one copy of these rules: the EVM anchor builds its batch roots with it, the broker and
`audit prove` build inclusion proofs with it, and the offline auditor checks proof bundles with it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_PATH",
    "inclusion_proof",
    "inclusion_proof_from_leaf_hashes",
    "leaf_hash",
    "leaves_from_record_hashes",
    "node_hash",
    "record_leaf",
    "root",
    "root_from_inclusion_proof",
    "root_of_leaf_hashes",
    "verify_inclusion",
]

HASH_SIZE = 32
MAX_PATH = 64  # a tree of at most 2**64 leaves: no valid audit path is longer
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()

_BYTES_TYPES = (bytes, bytearray, memoryview)
_sha256 = hashlib.sha256


def _as_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, _BYTES_TYPES):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    return bytes(value)


def leaf_hash(data: bytes | bytearray | memoryview) -> bytes:
    """``SHA-256(0x00 || data)``: the hash of one leaf (a record hash in our use)."""
    return _sha256(LEAF_PREFIX + _as_bytes(data, "leaf data")).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: an interior node."""
    return _sha256(NODE_PREFIX + left + right).digest()


def record_leaf(record_hash_hex: str) -> bytes:
    """The leaf hash of a ledger record hash given as 64 hex digits. Raises ValueError otherwise."""
    raw = bytes.fromhex(record_hash_hex)
    if len(raw) != HASH_SIZE:
        raise ValueError(f"record hash must be {HASH_SIZE} bytes, got {len(raw)}")
    return leaf_hash(raw)


def leaves_from_record_hashes(record_hashes: Iterable[str]) -> list[bytes]:
    """Leaf data for a batch: each 64-hex record hash as its 32 bytes (``bytes.fromhex``)."""
    out: list[bytes] = []
    for h in record_hashes:
        b = bytes.fromhex(h)
        if len(b) != HASH_SIZE:
            raise ValueError(f"record hash must be {HASH_SIZE} bytes, got {len(b)}")
        out.append(b)
    return out


def root_of_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH of a tree whose leaf hashes are already computed. O(n) time, O(log n) memory.

    Leaves are folded left to right into a stack of perfect subtrees (one per set bit of the count so
    far, like a binary counter); at the end the stack is merged right to left. For n leaves this yields
    exactly RFC 6962's split-at-largest-power-of-two tree: the perfect subtrees are those of the binary
    expansion of n, largest first, and ``MTH`` nests them to the right.
    """
    n = len(hashes)
    if n == 0:
        return EMPTY_ROOT
    stack: list[bytes] = []
    for count, h in enumerate(hashes, start=1):
        # Merge once per trailing zero bit of the new count (equal-size perfect subtrees).
        c = count
        while not c & 1:
            h = _sha256(NODE_PREFIX + stack.pop() + h).digest()
            c >>= 1
        stack.append(h)
    acc = stack.pop()
    while stack:
        acc = _sha256(NODE_PREFIX + stack.pop() + acc).digest()
    return acc


def root(leaves_data: Sequence[bytes]) -> bytes:
    """The Merkle tree hash ``MTH(D[n])`` of the leaf data, in order (RFC 9162 §2.1.1)."""
    return root_of_leaf_hashes([leaf_hash(d) for d in leaves_data])


def _largest_power_of_two_below(n: int) -> int:
    """Largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_proof(leaves_data: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path ``PATH(index, D[n])`` of RFC 9162 §2.1.3.1, ordered from the leaf up.

    Raises IndexError if ``index`` is not in ``0..n-1``. O(n) hashing per proof.
    """
    hashes = [leaf_hash(d) for d in leaves_data]
    return inclusion_proof_from_leaf_hashes(hashes, index)


def inclusion_proof_from_leaf_hashes(hashes: Sequence[bytes], index: int) -> list[bytes]:
    """`inclusion_proof` over precomputed leaf hashes (lets a caller prove many leaves of one tree)."""
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError("index must be an int")
    n = len(hashes)
    if not 0 <= index < n:
        raise IndexError(f"leaf index {index} out of range for tree size {n}")
    path: list[bytes] = []
    lo, hi, m = 0, n, index  # the subtree D[lo:hi] and m's index within it
    while hi - lo > 1:
        k = _largest_power_of_two_below(hi - lo)
        if m < k:
            path.append(root_of_leaf_hashes(hashes[lo + k : hi]))
            hi = lo + k
        else:
            path.append(root_of_leaf_hashes(hashes[lo : lo + k]))
            lo, m = lo + k, m - k
    path.reverse()  # PATH is built root-down above; the RFC lists it leaf-up
    return path


def root_from_inclusion_proof(leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes]) -> bytes:
    """The root implied by a leaf hash and its audit path (RFC 9162 §2.1.3.2 steps 1–5, without the
    final comparison). Raises ValueError when the proof cannot be a valid path for (index, tree_size):
    index out of range, a proof of the wrong length, or a hash that is not 32 bytes. Raises TypeError
    when a hash is not bytes-like.
    """
    lh = _as_bytes(leaf_hash, "leaf hash")
    if isinstance(proof, _BYTES_TYPES) or isinstance(proof, str):
        raise TypeError("proof must be a sequence of hashes, not a single bytes/str value")
    path = [_as_bytes(p, "proof element") for p in proof]
    for v in (index, tree_size):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError("index and tree size must be ints")
    if len(lh) != HASH_SIZE or any(len(p) != HASH_SIZE for p in path):
        raise ValueError(f"hashes must be {HASH_SIZE} bytes")
    if index < 0 or tree_size < 0 or index >= tree_size:  # step 1
        raise ValueError(f"leaf index {index} not below tree size {tree_size}")
    fn, sn = index, tree_size - 1  # step 2
    r = lh  # step 3
    for p in path:  # step 4
        if sn == 0:  # 4a
            raise ValueError("proof is longer than the path")
        if fn & 1 or fn == sn:  # 4b
            r = _sha256(NODE_PREFIX + p + r).digest()
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _sha256(NODE_PREFIX + r + p).digest()
        fn >>= 1  # 4c
        sn >>= 1
    if sn != 0:  # step 5
        raise ValueError("proof is shorter than the path")
    return r


def verify_inclusion(leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: does ``proof`` show ``leaf_hash`` at ``index`` in the tree of ``tree_size``
    leaves with Merkle tree hash ``root``? Returns False for any invalid input (index >= size,
    negative values, wrong proof length, hashes not 32 bytes); raises only TypeError, when a hash or
    proof element is not bytes-like.
    """
    expected = _as_bytes(root, "root")
    try:
        computed = root_from_inclusion_proof(leaf_hash, index, tree_size, proof)
    except ValueError:
        return False
    return len(expected) == HASH_SIZE and hmac.compare_digest(computed, expected)
