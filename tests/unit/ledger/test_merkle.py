"""RFC 6962 / 9162 Merkle trees: golden vectors, a naive reference tree, fuzzing, forged proofs.

The bar copied from transparency-dev/merkle: fixed vectors (`testonly/constants.go`), a naive
reference implementation written straight from the RFC's recursive definitions, and randomized
cross-checks of roots and every inclusion proof.
"""

from __future__ import annotations

import hashlib
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.audit import merkle

# --- golden vectors (prior-art §3.2) ------------------------------------------------------------

LEAVES_HEX = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
ROOTS_HEX = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
LEAVES = [bytes.fromhex(h) for h in LEAVES_HEX]


@pytest.mark.parametrize("size", range(9))
def test_golden_roots(size: int) -> None:
    assert merkle.root(LEAVES[:size]).hex() == ROOTS_HEX[size]
    assert ref_root(LEAVES[:size]).hex() == ROOTS_HEX[size]


def test_empty_tree_and_single_leaf() -> None:
    assert merkle.root([]) == hashlib.sha256(b"").digest() == merkle.EMPTY_ROOT
    assert merkle.leaf_hash(b"") == bytes.fromhex(ROOTS_HEX[1])
    assert merkle.root([b"x"]) == hashlib.sha256(b"\x00x").digest()
    assert merkle.node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()


@pytest.mark.parametrize("size", range(1, 9))
def test_golden_inclusion_proofs_verify(size: int) -> None:
    root = bytes.fromhex(ROOTS_HEX[size])
    for i in range(size):
        proof = merkle.inclusion_proof(LEAVES[:size], i)
        assert proof == ref_path(i, LEAVES[:size])
        assert merkle.verify_inclusion(merkle.leaf_hash(LEAVES[i]), i, size, proof, root)


def test_record_hash_leaves() -> None:
    hashes = [hashlib.sha256(bytes([i])).hexdigest() for i in range(5)]
    leaves = merkle.leaves_from_record_hashes(hashes)
    assert leaves == [bytes.fromhex(h) for h in hashes]
    assert merkle.root(leaves) == ref_root(leaves)
    with pytest.raises(ValueError):
        merkle.leaves_from_record_hashes(["abcd"])
    with pytest.raises(ValueError):
        merkle.leaves_from_record_hashes(["zz" * 32])


# --- naive reference tree (RFC 9162 §2.1.1 and §2.1.3.1, recursive, on slices) -------------------


def _h(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_root(d: list[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return _h(b"")
    if n == 1:
        return _h(b"\x00" + d[0])
    k = _k(n)
    return _h(b"\x01" + ref_root(d[:k]) + ref_root(d[k:]))


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n <= 1:
        return []
    k = _k(n)
    if m < k:
        return ref_path(m, d[:k]) + [ref_root(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_root(d[:k])]


def ref_sides(m: int, n: int) -> list[str]:
    """For each proof element, leaf-up: is the sibling on the 'L'eft or the 'R'ight?"""
    if n <= 1:
        return []
    k = _k(n)
    if m < k:
        return ref_sides(m, k) + ["R"]
    return ref_sides(m - k, n - k) + ["L"]


def ref_verify(leaf_hash: bytes, m: int, n: int, proof: list[bytes], root: bytes) -> bool:
    """Recompute along the reference shape; an independent check of the §2.1.3.2 loop."""
    if not 0 <= m < n:
        return False
    sides = ref_sides(m, n)
    if len(sides) != len(proof):
        return False
    r = leaf_hash
    for side, p in zip(sides, proof, strict=False):
        r = _h(b"\x01" + p + r) if side == "L" else _h(b"\x01" + r + p)
    return r == root


def _leaves(n: int, salt: bytes = b"") -> list[bytes]:
    return [_h(salt + i.to_bytes(4, "big")) for i in range(n)]


# --- cross-checks against the reference --------------------------------------------------------


@pytest.mark.parametrize("n", range(1, 71))
def test_every_proof_of_sizes_1_to_70_matches_reference(n: int) -> None:
    leaves = _leaves(n)
    root = merkle.root(leaves)
    assert root == ref_root(leaves)
    hashes = [merkle.leaf_hash(x) for x in leaves]
    for i in range(n):
        proof = merkle.inclusion_proof_from_leaf_hashes(hashes, i)
        assert proof == ref_path(i, leaves)
        assert len(proof) == len(ref_sides(i, n))
        assert merkle.verify_inclusion(hashes[i], i, n, proof, root)
        assert merkle.root_from_inclusion_proof(hashes[i], i, n, proof) == root
        assert ref_verify(hashes[i], i, n, proof, root)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=40), min_size=0, max_size=70))
def test_fuzz_roots_and_all_proofs(leaves: list[bytes]) -> None:
    root = merkle.root(leaves)
    assert root == ref_root(leaves)
    for i in range(len(leaves)):
        proof = merkle.inclusion_proof(leaves, i)
        assert proof == ref_path(i, leaves)
        assert merkle.verify_inclusion(merkle.leaf_hash(leaves[i]), i, len(leaves), proof, root)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=3000), st.data())
def test_fuzz_large_sizes(n: int, data: st.DataObject) -> None:
    leaves = _leaves(n, salt=b"big")
    root = merkle.root(leaves)
    assert root == ref_root(leaves)
    i = data.draw(st.integers(min_value=0, max_value=n - 1))
    proof = merkle.inclusion_proof(leaves, i)
    assert proof == ref_path(i, leaves)
    assert merkle.verify_inclusion(merkle.leaf_hash(leaves[i]), i, n, proof, root)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=-3, max_value=80),
    st.integers(min_value=-3, max_value=80),
    st.lists(st.binary(min_size=32, max_size=32), max_size=9),
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=32, max_size=32),
)
def test_fuzz_arbitrary_proofs_agree_with_reference_verifier(
    m: int, n: int, proof: list[bytes], leaf: bytes, root: bytes
) -> None:
    """Garbage in: the §2.1.3.2 loop and the reference shape agree, and nothing raises."""
    assert merkle.verify_inclusion(leaf, m, n, proof, root) == ref_verify(leaf, m, n, proof, root)
    # and for the root the garbage proof implies, both accept or both reject
    try:
        implied = merkle.root_from_inclusion_proof(leaf, m, n, proof)
    except ValueError:
        assert not ref_verify(leaf, m, n, proof, root)
        assert not (0 <= m < n and len(proof) == len(ref_sides(m, n)))
        return
    assert merkle.verify_inclusion(leaf, m, n, proof, implied)
    assert ref_verify(leaf, m, n, proof, implied)


def test_root_of_100k_leaves_is_fast() -> None:
    leaves = _leaves(100_000)
    t = time.perf_counter()
    r = merkle.root(leaves)
    elapsed = time.perf_counter() - t
    assert elapsed < 5.0, f"root over 100k leaves took {elapsed:.2f}s"
    # spot-check against the reference through an inclusion proof on both sides of the split
    for i in (0, 65_535, 65_536, 99_999):
        proof = merkle.inclusion_proof(leaves, i)
        assert len(proof) == len(ref_sides(i, 100_000))
        assert ref_verify(merkle.leaf_hash(leaves[i]), i, 100_000, proof, r)


# --- forged proofs -------------------------------------------------------------------------------


def _flip(b: bytes, bit: int = 0) -> bytes:
    x = bytearray(b)
    x[bit // 8] ^= 1 << (bit % 8)
    return bytes(x)


def forgeries(leaves: list[bytes], i: int) -> list[tuple[str, bytes, int, int, list[bytes], bytes, bool]]:
    """(label, leaf_hash, index, size, proof, root, must_reject) variants of the valid proof of leaf i.

    `must_reject` is False only for the wrong-size probes checked against the *original* root, where
    RFC 9162 verification accepts exactly when the size change leaves the hashing path unchanged (the
    size is bound to the root by whoever publishes it: our contract stores both). Those are checked
    separately against the reference shape.
    """
    n = len(leaves)
    hashes = [merkle.leaf_hash(x) for x in leaves]
    root = merkle.root(leaves)
    proof = merkle.inclusion_proof(leaves, i)
    lh = hashes[i]
    out: list[tuple[str, bytes, int, int, list[bytes], bytes, bool]] = []
    for j in {i - 1, i + 1, i ^ 1, 0, n - 1} - {i}:
        if 0 <= j < n:
            out.append((f"wrong index {j}", lh, j, n, proof, root, True))
            out.append((f"proof of leaf {j}", lh, i, n, merkle.inclusion_proof(leaves, j), root, True))
            out.append((f"leaf {j} with this proof", hashes[j], i, n, proof, root, True))
    for size in (n - 1, n + 1):
        # against the true root of the other size: always rejected
        other_root = merkle.root((leaves + [_h(b"extra")])[:size])
        out.append((f"size {size}, its own root", lh, i, size, proof, other_root, True))
        out.append((f"size {size}, this root", lh, i, size, proof, root, False))
    out.append(("index = size", lh, n, n, proof, root, True))
    out.append(("index beyond size", lh, n + 5, n, proof, root, True))
    out.append(("negative index", lh, -1, n, proof, root, True))
    if proof:
        out.append(("truncated proof", lh, i, n, proof[:-1], root, True))
        out.append(("first element dropped", lh, i, n, proof[1:], root, True))
        for bit in (0, 7, 255):
            out.append((f"sibling 0 bit {bit} flipped", lh, i, n, [_flip(proof[0], bit)] + proof[1:], root, True))
        out.append(("last sibling flipped", lh, i, n, proof[:-1] + [_flip(proof[-1], 128)], root, True))
    if proof:
        # a path longer than the claimed tree (RFC 9162 step 4a)
        out.append(("claimed as the only leaf", lh, 0, 1, proof, root, True))
        out.append(("claimed in a half-size tree", lh, i >> 1, max(n >> 1, 1), proof, root, True))
    out.append(("extended proof", lh, i, n, proof + [_h(b"x")], root, True))
    out.append(("extended with root", lh, i, n, proof + [root], root, True))
    if len(proof) >= 2:
        out.append(("swapped siblings", lh, i, n, [proof[1], proof[0]] + proof[2:], root, True))
    out.append(("flipped leaf hash", _flip(lh, 3), i, n, proof, root, True))
    out.append(("flipped root", lh, i, n, proof, _flip(root, 200), True))
    out.append(("leaf data instead of leaf hash", leaves[i], i, n, proof, root, True))
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 16, 17, 31, 33])
def test_forged_proofs_rejected(n: int) -> None:
    leaves = _leaves(n, salt=b"forge")
    for i in range(n):
        for label, lh, m, size, proof, root, must_reject in forgeries(leaves, i):
            got = merkle.verify_inclusion(lh, m, size, proof, root)
            assert got == ref_verify(lh, m, size, proof, root), (n, i, label)
            if must_reject:
                assert got is False, (n, i, label)
            else:
                # accepted iff the other size hashes along exactly the same path
                same_shape = 0 <= m < size and ref_sides(m, size) == ref_sides(i, n)
                assert got is same_shape, (n, i, label)


def test_wrong_size_acceptance_is_only_a_same_shape_coincidence() -> None:
    """Documented property: leaf 0 of a 3-leaf tree has the same path shape in a 4-leaf tree, so a
    verifier told the wrong size (with the 3-leaf root) still accepts. Sizes must come with roots."""
    leaves = _leaves(3)
    proof = merkle.inclusion_proof(leaves, 0)
    assert merkle.verify_inclusion(merkle.leaf_hash(leaves[0]), 0, 4, proof, merkle.root(leaves))
    assert not merkle.verify_inclusion(merkle.leaf_hash(leaves[0]), 0, 4, proof, merkle.root(leaves + [b"4"]))


def test_empty_tree_has_no_inclusion_proofs() -> None:
    assert not merkle.verify_inclusion(merkle.leaf_hash(b""), 0, 0, [], merkle.EMPTY_ROOT)
    assert not merkle.verify_inclusion(merkle.EMPTY_ROOT, 0, 0, [], merkle.EMPTY_ROOT)
    with pytest.raises(IndexError):
        merkle.inclusion_proof([], 0)


def test_bad_inputs() -> None:
    leaves = _leaves(5)
    root = merkle.root(leaves)
    lh = merkle.leaf_hash(leaves[2])
    proof = merkle.inclusion_proof(leaves, 2)
    assert merkle.verify_inclusion(bytearray(lh), 2, 5, [memoryview(p) for p in proof], root)
    # out-of-range and wrongly typed numbers: False, no exception
    assert not merkle.verify_inclusion(lh, 2, -5, proof, root)
    assert not merkle.verify_inclusion(lh, 2.0, 5, proof, root)  # type: ignore[arg-type]
    assert not merkle.verify_inclusion(lh, True, 5, proof, root)  # type: ignore[arg-type]
    assert not merkle.verify_inclusion(lh, 2, 2**64 + 5, proof, root)
    # hashes of the wrong length: False
    assert not merkle.verify_inclusion(lh[:31], 2, 5, proof, root)
    assert not merkle.verify_inclusion(lh, 2, 5, proof, root + b"\x00")
    assert not merkle.verify_inclusion(lh, 2, 5, [proof[0] + b"\x00"] + proof[1:], root)
    assert not merkle.verify_inclusion(lh, 2, 5, [b""] + proof[1:], root)
    # non-bytes: TypeError
    for bad in (
        lambda: merkle.verify_inclusion(lh.hex(), 2, 5, proof, root),  # type: ignore[arg-type]
        lambda: merkle.verify_inclusion(lh, 2, 5, [p.hex() for p in proof], root),  # type: ignore[misc]
        lambda: merkle.verify_inclusion(lh, 2, 5, proof, root.hex()),  # type: ignore[arg-type]
        lambda: merkle.verify_inclusion(lh, 2, 5, b"".join(proof), root),  # type: ignore[arg-type]
        lambda: merkle.leaf_hash("abc"),  # type: ignore[arg-type]
    ):
        with pytest.raises(TypeError):
            bad()
    with pytest.raises(IndexError):
        merkle.inclusion_proof(leaves, 5)
    with pytest.raises(IndexError):
        merkle.inclusion_proof(leaves, -1)


# --- the auditor's entry points (formerly a separate copy in ledger/merkle_verify.py) ------------


def test_record_leaf_is_the_contract_leaf() -> None:
    h = hashlib.sha256(b"x").hexdigest()
    assert merkle.record_leaf(h) == merkle.leaf_hash(bytes.fromhex(h)) == hashlib.sha256(b"\x00" + bytes.fromhex(h)).digest()
    with pytest.raises(ValueError):
        merkle.record_leaf("ab" * 31)
    with pytest.raises(ValueError):
        merkle.record_leaf("zz" * 32)


def test_wrong_hash_lengths_are_refused_not_raised() -> None:
    leaf = merkle.leaf_hash(b"a")
    assert not merkle.verify_inclusion(leaf[:31], 0, 1, [], leaf)
    assert not merkle.verify_inclusion(leaf, 0, 2, [b"\x00" * 31], leaf)
    assert not merkle.verify_inclusion(leaf, 0, 1, [], leaf[:31])
    assert not merkle.verify_inclusion(leaf, True, 2, [leaf], leaf)  # bool is not an index


def test_no_valid_path_is_longer_than_max_path() -> None:
    leaf = merkle.leaf_hash(b"a")
    assert not merkle.verify_inclusion(leaf, 0, 1 << 64, [leaf] * (merkle.MAX_PATH + 1), leaf)
