"""``audit duplicates``: exact and near-duplicate kept documents, within and across sources/subsets.

Every kept document (read back by ``kept_text``) is normalized as the contamination audit does (datatrove's
``simplify_text``, words split on whitespace). **Exact** duplicates share the xxh128 hash of their normalized
words. **Near** duplicates: each document's set of word ``shingle``-grams (default 5) is sketched by
datasketch's ``MinHash`` (``num_perm`` permutations, default 128) and looked up in a ``MinHashLSH`` index
(default threshold
0.8); a candidate pair is kept when the sketches' estimated Jaccard similarity reaches the threshold.
Documents
with fewer words than a shingle have no sketch (exact matching only). Clusters are the connected components of
exact and near pairs (union-find), numbered by their first member in manifest order, so the result does not
depend on anything but the manifest.

Per source/subset: ``exact_redundant`` / ``near_redundant`` = documents minus the distinct exact (resp. near)
clusters met inside the subset (the copies a dedup within the subset would drop), their rates and tokens;
``overlap[a][b]`` (a ≠ b) = documents of ``a`` whose cluster holds a document of ``b``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from elm_data.core.errors import ElmDataError, InvalidValue
from elm_data.core.outputs import atomic_file

from .contamination import NORMALIZATION, normalized_words
from .kept_text import KeptDocument, map_shards
from .manifest import Manifest
from .plot import check_plot_path

CLUSTERS_SHOWN = 10
MEMBERS_SHOWN = 8


class MissingDependency(ElmDataError, ImportError):
    """An optional package the command needs is not installed; the message is the pip line."""


@dataclass(frozen=True)
class DedupSettings:
    shingle: int = 5
    num_perm: int = 128
    threshold: float = 0.8
    near: bool = True  # False: exact duplicates only (no datasketch needed)

    def __post_init__(self):
        if self.shingle < 1 or self.num_perm < 16:
            raise InvalidValue(
                f"--shingle must be >= 1 and --num-perm >= 16, got {self.shingle}, {self.num_perm}"
            )
        if not 0 < self.threshold <= 1:
            raise InvalidValue(f"--threshold must be in (0, 1], got {self.threshold}")

    def describe(self) -> dict[str, Any]:
        return {
            "shingle_words": self.shingle,
            "num_perm": self.num_perm,
            "threshold": self.threshold,
            "near": self.near,
            "normalization": NORMALIZATION,
            "exact_hash": "xxh128 of normalized words",
        }


def require_datasketch():
    try:
        import datasketch
    except ImportError:
        raise MissingDependency(
            "near duplicates need datasketch: pip install 'elm-data[dedup]' (or --exact-only)"
        ) from None
    return datasketch


def shingles(words: list[str], k: int) -> set[bytes]:
    """The distinct runs of ``k`` consecutive words, as the bytes MinHash hashes."""
    return {" ".join(words[i : i + k]).encode() for i in range(len(words) - k + 1)}


class _UnionFind:
    def __init__(self):
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the root is the first member in manifest order


@dataclass
class DocRow:
    key: str
    doc_id: str
    tokens: int
    exact: int  # first document with the same normalized text


@dataclass
class Duplicates:
    """The audit's result: every document's row, near pairs (i, j, estimated Jaccard) and clusters."""

    manifest_id: str
    manifest_name: str
    settings: DedupSettings
    docs: list[DocRow] = field(default_factory=list)
    near_pairs: list[tuple[int, int, float]] = field(default_factory=list)
    cluster_of: list[int] = field(default_factory=list)  # near cluster (root) of each document

    def exact_groups(self) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = defaultdict(list)
        for n, row in enumerate(self.docs):
            groups[row.exact].append(n)
        return groups

    def duplicate_pairs(self) -> set[tuple[int, int]]:
        """Every pair ``(i < j)`` the audit calls duplicates: identical normalized text, or a near pair
        (either side standing for its exact copies)."""
        groups = self.exact_groups()
        pairs = {
            (a, b) for members in groups.values() for i, a in enumerate(members) for b in members[i + 1 :]
        }
        for a, b, _ in self.near_pairs:
            for x in groups[self.docs[a].exact]:
                for y in groups[self.docs[b].exact]:
                    pairs.add((min(x, y), max(x, y)))
        return pairs

    def to_json(self) -> dict[str, Any]:
        return {
            "manifest_id": self.manifest_id,
            "manifest_name": self.manifest_name,
            "settings": self.settings.describe(),
            **summarize(self),
        }


class Sketcher:
    """Per process: the MinHash template (permutations made once) for ``settings``."""

    def __init__(self, settings: DedupSettings):
        self.settings = settings
        self.template = (
            require_datasketch().MinHash(num_perm=settings.num_perm, seed=1) if settings.near else None
        )

    def hashvalues(self, words: list[str]):
        """The MinHash signature of the words' shingles (None: exact only, or fewer words than a shingle)."""
        if self.template is None or len(words) < self.settings.shingle:
            return None
        t = self.template
        sketch = type(t)(num_perm=t.hashvalues.size, seed=1, permutations=t.permutations, scheme=t.scheme)
        sketch.update_batch(sorted(shingles(words, self.settings.shingle)))
        return sketch.hashvalues


def signature_of(sketcher: Sketcher, text: str) -> tuple[int, Any]:
    """``(xxh128 of the normalized words, MinHash signature or None)`` of one text: what both the audit and
    the build's dedup filter (``manifests/dedup_filter.py``) compare."""
    from xxhash import xxh3_128_intdigest

    words = normalized_words(text)
    return xxh3_128_intdigest(" ".join(words)), sketcher.hashvalues(words)


def sketch_shard(sketcher: Sketcher, docs: Iterable[KeptDocument]) -> list[tuple]:
    """``(subset, doc id, tokens, xxh128 of normalized words, signature or None)`` per document of one
    shard."""
    return [(doc.key, doc.doc_id, doc.tokens, *signature_of(sketcher, doc.text)) for doc in docs]


def find_duplicates(parts: Iterable[list[tuple]], settings: DedupSettings) -> tuple[list, list, _UnionFind]:
    """``(rows, near pairs, union-find)`` from the shards' sketches in manifest order: an exact copy joins its
    first, any other signature is looked up in the LSH index before it is inserted."""
    rows, pairs, uf, first_of, sketches = [], [], _UnionFind(), {}, {}
    lsh = scheme = None
    if settings.near:
        datasketch = require_datasketch()
        lsh = datasketch.MinHashLSH(threshold=settings.threshold, num_perm=settings.num_perm)
        scheme = datasketch.MinHash(num_perm=settings.num_perm, seed=1).scheme
    for key, doc_id, tokens, digest, signature in (doc for part in parts for doc in part):
        n = uf.add()
        first = first_of.setdefault(digest, n)
        rows.append(DocRow(key, doc_id, tokens, first))
        if first != n:
            uf.union(first, n)
        elif lsh is not None and signature is not None:
            sketch = datasketch.MinHash(seed=1, hashvalues=signature, scheme=scheme)
            for other in sorted(lsh.query(sketch)):
                estimate = float(np.mean(sketches[other] == signature))
                if estimate >= settings.threshold:
                    pairs.append((other, n, estimate))
                    uf.union(other, n)
            lsh.insert(n, sketch)
            sketches[n] = signature
    return rows, pairs, uf


def audit_duplicates(
    manifest: Manifest,
    settings: DedupSettings | None = None,
    only: Mapping[int, Set[int]] | None = None,
    workers: int = 1,
) -> Duplicates:
    """Exact and near duplicates among the manifest's kept documents (``only``: ``{shard: record indices}``);
    shards are normalized and sketched in ``workers`` processes, clustered here in manifest order (the result
    does not depend on ``workers``)."""
    settings = settings or DedupSettings()
    sketcher = Sketcher(settings)  # refuses a missing datasketch before a byte is read
    parts = map_shards(
        manifest, sketch_shard, only, workers, setup=Sketcher, setup_args=(settings,), state=sketcher
    )
    rows, pairs, uf = find_duplicates(parts, settings)
    roots = [uf.find(n) for n in range(len(rows))]
    return Duplicates(manifest.manifest_id, manifest.info["name"], settings, rows, pairs, roots)


def _redundant(rows: list[DocRow], members: list[int], cluster: list[int]) -> tuple[int, int]:
    """Documents (and their tokens) of ``members`` that are not the first of their cluster among
    ``members``."""
    seen: set[int] = set()
    docs = tokens = 0
    for n in members:
        if cluster[n] in seen:
            docs += 1
            tokens += rows[n].tokens
        seen.add(cluster[n])
    return docs, tokens


def summarize(result: Duplicates) -> dict[str, Any]:
    """Per subset rates, the overlap matrix, totals and the largest clusters (see the module docstring)."""
    rows, roots = result.docs, result.cluster_of
    by_key: dict[str, list[int]] = defaultdict(list)
    for n, row in enumerate(rows):
        by_key[row.key].append(n)
    keys_of: dict[int, set[str]] = defaultdict(set)
    for n, row in enumerate(rows):
        keys_of[roots[n]].add(row.key)
    subsets, overlap = {}, {}
    for key, members in sorted(by_key.items()):
        exact, exact_tokens = _redundant(rows, members, [r.exact for r in rows])
        near, near_tokens = _redundant(rows, members, roots)
        docs = len(members)
        subsets[key] = {
            "documents": docs,
            "tokens": sum(rows[n].tokens for n in members),
            "exact_redundant": exact,
            "exact_rate": exact / docs,
            "exact_redundant_tokens": exact_tokens,
            "near_redundant": near,
            "near_rate": near / docs,
            "near_redundant_tokens": near_tokens,
        }
        counts = Counter(other for n in members for other in keys_of[roots[n]] if other != key)
        overlap[key] = {other: counts.get(other, 0) for other in sorted(by_key) if other != key}
    everyone = list(range(len(rows)))
    totals = {
        "documents": len(rows),
        "exact_redundant": _redundant(rows, everyone, [r.exact for r in rows])[0],
        "near_redundant": _redundant(rows, everyone, roots)[0],
        "near_pairs": len(result.near_pairs),
    }
    return {"totals": totals, "subsets": subsets, "overlap": overlap, "largest_clusters": _largest(result)}


def _largest(result: Duplicates) -> list[dict[str, Any]]:
    sizes = Counter(result.cluster_of)
    out = []
    for root, size in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:CLUSTERS_SHOWN]:
        if size < 2:
            break
        members = [n for n, r in enumerate(result.cluster_of) if r == root]
        out.append(
            {
                "size": size,
                "exact": len({result.docs[n].exact for n in members}) == 1,
                "subsets": dict(Counter(result.docs[n].key for n in members)),
                "members": [f"{result.docs[n].key}:{result.docs[n].doc_id}" for n in members[:MEMBERS_SHOWN]],
            }
        )
    return out


def format_table(report: dict[str, Any]) -> str:
    """Per subset rates, then the cross-subset overlap (non-zero cells) and the largest clusters."""
    s, t = report["settings"], report["totals"]
    lines = [
        f"Duplicates audit of manifest {report['manifest_id']} ({report['manifest_name']})",
        f"exact: {s['exact_hash']}; near: MinHash-LSH, {s['shingle_words']}-word shingles, {s['num_perm']} "
        f"permutations, Jaccard >= {s['threshold']}"
        if s["near"]
        else "exact only",
        f"{'source/subset':<28} {'docs':>8} {'exact dup':>10} {'exact %':>8} {'near dup':>9} {'near %':>7} "
        f"{'near dup tokens':>16}",
    ]
    for key, r in report["subsets"].items():
        lines.append(
            f"{key:<28} {r['documents']:>8,} {r['exact_redundant']:>10,} {100 * r['exact_rate']:>8.2f} "
            f"{r['near_redundant']:>9,} {100 * r['near_rate']:>7.2f} {r['near_redundant_tokens']:>16,}"
        )
    lines.append(
        f"{'TOTAL':<28} {t['documents']:>8,} {t['exact_redundant']:>10,} {'':>8} {t['near_redundant']:>9,}"
    )
    cells = [(a, b, n) for a, row in report["overlap"].items() for b, n in row.items() if n]
    lines.append(
        "cross-subset overlap (documents of A with a duplicate in B): "
        + ("; ".join(f"{a} -> {b}: {n}" for a, b, n in cells) if cells else "none")
    )
    for c in report["largest_clusters"]:
        lines.append(
            f"cluster of {c['size']} ({'exact' if c['exact'] else 'near'}): {', '.join(c['members'][:3])}"
        )
    return "\n".join(lines)


def plot_duplicates(report: dict[str, Any], out_path) -> Any:
    """A heatmap: row A, column B = % of A's documents with a duplicate in B (diagonal: near-duplicate
    rate)."""
    out_path = check_plot_path(out_path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(report["subsets"])
    grid = np.array(
        [
            [
                100
                * (
                    report["subsets"][a]["near_rate"]
                    if a == b
                    else report["overlap"][a][b] / report["subsets"][a]["documents"]
                )
                for b in keys
            ]
            for a in keys
        ]
    )
    fig, ax = plt.subplots(figsize=(2 + 0.6 * len(keys), 1.5 + 0.5 * len(keys)), dpi=120)
    image = ax.imshow(grid, cmap="viridis", vmin=0)
    ax.set_xticks(range(len(keys)), keys, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(keys)), keys, fontsize=8)
    for (i, j), v in np.ndenumerate(grid):
        ax.text(
            j,
            i,
            f"{v:.0f}",
            ha="center",
            va="center",
            fontsize=6,
            color="white" if v < grid.max() / 2 else "k",
        )
    fig.colorbar(image, ax=ax, label="% of row's documents")
    ax.set_title(
        f"Duplicates in manifest {report['manifest_id'][:12]}: row A has a duplicate in column B", fontsize=9
    )
    fig.tight_layout()
    with atomic_file(out_path) as handle:
        fig.savefig(handle, format=out_path.suffix[1:].lower())
    plt.close(fig)
    return out_path
