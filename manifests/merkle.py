"""RFC 6962 (Certificate Transparency) Merkle tree over shard records.

``leaf = SHA-256(0x00 || data)``, ``node = SHA-256(0x01 || left || right)``; a list of ``n > 1``
leaves splits at ``k``, the largest power of two strictly smaller than ``n`` (RFC 6962 §2.1).
The empty tree hashes to ``SHA-256("")``. Inclusion proofs (§2.1.1) let anyone check that one
shard record belongs to a manifest knowing only the root.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

LEAF_PREFIX, NODE_PREFIX = b"\x00", b"\x01"


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (n >= 2)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _root_of_hashes(hashes: Sequence[bytes]) -> bytes:
    if len(hashes) == 1:
        return hashes[0]
    k = _split(len(hashes))
    return node_hash(_root_of_hashes(hashes[:k]), _root_of_hashes(hashes[k:]))


def merkle_root(leaves: Sequence[bytes]) -> str:
    """Hex Merkle tree hash of ``leaves`` (the raw leaf data, not yet hashed)."""
    if not leaves:
        return hashlib.sha256(b"").hexdigest()
    return _root_of_hashes([leaf_hash(x) for x in leaves]).hex()


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[str]:
    """Audit path (hex sibling hashes, bottom-up) proving leaf ``index`` is in the tree."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} outside a tree of {len(leaves)}")

    def path(hashes: Sequence[bytes], m: int) -> list[bytes]:
        if len(hashes) == 1:
            return []
        k = _split(len(hashes))
        if m < k:
            return path(hashes[:k], m) + [_root_of_hashes(hashes[k:])]
        return path(hashes[k:], m - k) + [_root_of_hashes(hashes[:k])]

    return [h.hex() for h in path([leaf_hash(x) for x in leaves], index)]


def verify_inclusion(leaf: bytes, index: int, tree_size: int, proof: Sequence[str], root: str) -> bool:
    """Check an audit path from :func:`inclusion_proof` against a known root (RFC 9162 §2.1.3.2)."""
    if not 0 <= index < tree_size:
        return False
    fn, sn = index, tree_size - 1
    r = leaf_hash(leaf)
    for sibling_hex in proof:
        sibling = bytes.fromhex(sibling_hex)
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(sibling, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r.hex() == root
