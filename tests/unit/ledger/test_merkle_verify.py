"""`ledger.merkle_verify` (the auditor's pure copy) agrees with `anchors.merkle` byte for byte:
golden RFC 6962 vectors, every leaf of every tree up to 70 leaves, mutated proofs, and generated
inputs (including nonsense ones, where both must say "no")."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anchors import merkle
from ledger import merkle_verify as mv

# transparency-dev/merkle testonly/constants.go (prior-art section 3.2)
LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")]
ROOTS = [
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


def _record_hashes(n: int) -> list[bytes]:
    return [hashlib.sha256(f"record {i}".encode()).digest() for i in range(n)]


@pytest.mark.parametrize("n", range(len(ROOTS)))
def test_golden_roots(n: int) -> None:
    leaves = [mv.leaf_hash(d) for d in LEAVES[:n]]
    assert mv.root_of_leaf_hashes(leaves).hex() == ROOTS[n]
    assert mv.root_of_leaf_hashes(leaves) == merkle.root(LEAVES[:n])


def test_golden_inclusion_proofs_verify() -> None:
    for n in range(1, len(LEAVES) + 1):
        root = bytes.fromhex(ROOTS[n])
        for i in range(n):
            path = merkle.inclusion_proof(LEAVES[:n], i)
            assert mv.verify_inclusion(mv.leaf_hash(LEAVES[i]), i, n, path, root)


def test_every_leaf_of_every_tree_up_to_70() -> None:
    for n in range(1, 71):
        data = _record_hashes(n)
        leaves = [mv.leaf_hash(d) for d in data]
        assert leaves == [merkle.leaf_hash(d) for d in data]
        root = mv.root_of_leaf_hashes(leaves)
        assert root == merkle.root_of_leaf_hashes(leaves) == merkle.root(data)
        for i in range(n):
            path = merkle.inclusion_proof_from_leaf_hashes(leaves, i)
            assert mv.root_from_inclusion_proof(leaves[i], i, n, path) == merkle.root_from_inclusion_proof(leaves[i], i, n, path)
            assert mv.verify_inclusion(leaves[i], i, n, path, root)
            # wrong index / size / leaf: both verifiers refuse
            for j in {i - 1, i + 1} - {i}:
                assert mv.verify_inclusion(leaves[i], j, n, path, root) == merkle.verify_inclusion(leaves[i], j, n, path, root)
            for m in (n - 1, n + 1, 2 * n):
                assert mv.verify_inclusion(leaves[i], i, m, path, root) == merkle.verify_inclusion(leaves[i], i, m, path, root)
            if n > 1:
                other = leaves[(i + 1) % n]
                assert not mv.verify_inclusion(other, i, n, path, root)


def test_record_leaf_is_the_contract_leaf() -> None:
    h = hashlib.sha256(b"x").hexdigest()
    assert mv.record_leaf(h) == merkle.leaf_hash(bytes.fromhex(h)) == hashlib.sha256(b"\x00" + bytes.fromhex(h)).digest()
    with pytest.raises(ValueError):
        mv.record_leaf("ab" * 31)
    with pytest.raises(ValueError):
        mv.record_leaf("zz" * 32)


def test_mutated_paths_are_refused() -> None:
    n = 13
    leaves = [mv.leaf_hash(d) for d in _record_hashes(n)]
    root = mv.root_of_leaf_hashes(leaves)
    for i in range(n):
        path = merkle.inclusion_proof_from_leaf_hashes(leaves, i)
        for k in range(len(path)):
            for bit in (0, 7, 255):
                bad = list(path)
                b = bytearray(bad[k])
                b[bit // 8] ^= 1 << (bit % 8)
                bad[k] = bytes(b)
                assert not mv.verify_inclusion(leaves[i], i, n, bad, root)
        assert not mv.verify_inclusion(leaves[i], i, n, path[:-1], root)
        assert not mv.verify_inclusion(leaves[i], i, n, [*path, path[0]], root)
        assert not mv.verify_inclusion(leaves[i], i, n, path, root[:31] + bytes([root[31] ^ 1]))


@pytest.mark.parametrize(
    "index,size,path_len",
    [(0, 0, 0), (-1, 3, 2), (3, 3, 2), (0, 1, 1), (0, 2, 0), (5, 4, 2), (0, 1, 0)],
)
def test_edge_inputs(index: int, size: int, path_len: int) -> None:
    leaf = mv.leaf_hash(b"a")
    path = [bytes(32)] * path_len
    root = leaf if (index, size, path_len) == (0, 1, 0) else bytes(32)
    assert mv.verify_inclusion(leaf, index, size, path, root) == merkle.verify_inclusion(leaf, index, size, path, root)


def test_wrong_hash_lengths_are_refused_not_raised() -> None:
    leaf = mv.leaf_hash(b"a")
    assert not mv.verify_inclusion(leaf[:31], 0, 1, [], leaf)
    assert not mv.verify_inclusion(leaf, 0, 2, [b"\x00" * 31], leaf)
    assert not mv.verify_inclusion(leaf, 0, 1, [], leaf[:31])
    assert not mv.verify_inclusion(leaf, True, 2, [leaf], leaf)  # bool is not an index


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=200),
    data=st.data(),
)
def test_agrees_with_anchors_merkle_on_generated_trees(n: int, data: st.DataObject) -> None:
    leaves = [mv.leaf_hash(d) for d in _record_hashes(n)]
    i = data.draw(st.integers(min_value=0, max_value=n - 1))
    path = merkle.inclusion_proof_from_leaf_hashes(leaves, i)
    root = merkle.root_of_leaf_hashes(leaves)
    index = data.draw(st.one_of(st.just(i), st.integers(min_value=-2, max_value=n + 2)))
    size = data.draw(st.one_of(st.just(n), st.integers(min_value=0, max_value=n + 3)))
    cut = data.draw(st.integers(min_value=0, max_value=len(path) + 1))
    p = path[:cut] if cut <= len(path) else [*path, leaves[0]]
    assert mv.verify_inclusion(leaves[i], index, size, p, root) == merkle.verify_inclusion(leaves[i], index, size, p, root)


@settings(max_examples=200, deadline=None)
@given(
    index=st.integers(min_value=0, max_value=2**20),
    size=st.integers(min_value=0, max_value=2**20),
    path=st.lists(st.binary(min_size=32, max_size=32), max_size=24),
    leaf=st.binary(min_size=32, max_size=32),
)
def test_root_from_proof_agrees_on_arbitrary_input(index: int, size: int, path: list[bytes], leaf: bytes) -> None:
    try:
        expected: bytes | None = merkle.root_from_inclusion_proof(leaf, index, size, path)
    except ValueError:
        expected = None
    try:
        got: bytes | None = mv.root_from_inclusion_proof(leaf, index, size, path)
    except ValueError:
        got = None
    assert got == expected
