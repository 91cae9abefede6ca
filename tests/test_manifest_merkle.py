"""RFC 6962 Merkle tree: hand-built trees, the Certificate Transparency reference vectors, proofs."""

from __future__ import annotations

import hashlib

import pytest

from elm_data.manifests.merkle import inclusion_proof, merkle_root, verify_inclusion


def _leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


# The eight leaves of the Certificate Transparency reference tree (RFC 6962 test data).
CT_LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]


def test_empty_and_single_leaf():
    assert merkle_root([]) == hashlib.sha256(b"").hexdigest()
    assert merkle_root([b"shard"]) == _leaf(b"shard").hex()


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7])
def test_hand_built_trees_split_at_largest_power_of_two_below_n(n):
    leaves = [f"record-{i}".encode() for i in range(n)]
    h = [_leaf(x) for x in leaves]
    expected = {
        2: lambda: _node(h[0], h[1]),
        3: lambda: _node(_node(h[0], h[1]), h[2]),
        4: lambda: _node(_node(h[0], h[1]), _node(h[2], h[3])),
        5: lambda: _node(_node(_node(h[0], h[1]), _node(h[2], h[3])), h[4]),
        6: lambda: _node(_node(_node(h[0], h[1]), _node(h[2], h[3])), _node(h[4], h[5])),
        7: lambda: _node(_node(_node(h[0], h[1]), _node(h[2], h[3])), _node(_node(h[4], h[5]), h[6])),
    }[n]()
    assert merkle_root(leaves) == expected.hex()


def test_certificate_transparency_reference_roots():
    # Published tree heads for sizes 3 and 8 of the CT reference tree.
    assert merkle_root(CT_LEAVES[:3]) == "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"
    assert merkle_root(CT_LEAVES) == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


def test_order_and_content_matter():
    leaves = [b"a", b"b", b"c"]
    assert merkle_root(leaves) != merkle_root([b"b", b"a", b"c"])
    assert merkle_root(leaves) != merkle_root([b"a", b"b", b"C"])
    # the leaf/node prefixes keep an inner node from posing as a leaf (second pre-image)
    assert merkle_root([b"a", b"b"]) != merkle_root([_leaf(b"a") + _leaf(b"b")])


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
def test_every_inclusion_proof_verifies_and_tampering_fails(n):
    leaves = [bytes([i, i * 7 % 256]) for i in range(n)]
    root = merkle_root(leaves)
    for i, leaf in enumerate(leaves):
        proof = inclusion_proof(leaves, i)
        assert verify_inclusion(leaf, i, n, proof, root)
        assert not verify_inclusion(leaf + b"!", i, n, proof, root)
        if n > 1:
            assert not verify_inclusion(leaf, (i + 1) % n, n, proof, root)


def test_reference_inclusion_proof_of_leaf_0_in_8():
    proof = inclusion_proof(CT_LEAVES, 0)
    assert proof == [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ]
