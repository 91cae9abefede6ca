"""``audit contamination``: n-gram overlap between evaluation items and a manifest's kept documents.

Normalization and matching, the published recipes' (GPT-3 appendix C, Dolma's decontamination, datatrove's
``NGramsDecontIndexer``): a text is normalized by datatrove's ``simplify_text`` (lowercase, punctuation
removed, diacritics stripped, digits mapped to 0, whitespace collapsed) and split into words on whitespace;
its n-grams are its runs of ``n`` consecutive words (default **13**, GPT-3's and Dolma's size). An item with
fewer than ``n`` words has no n-gram and is counted as ``items_too_short`` (never contaminated). An item is
contaminated in a source/subset when its n-grams found in that subset's kept documents reach the rule: by
default **any one** (GPT-3's rule), or with ``min_overlap = f`` a fraction ``f`` of the item's distinct
n-grams (PaLM used 70 % of 8-grams). A document is contaminated by a task when it holds an n-gram of one of
the task's contaminated items; its tokens are its ledger tokens (LLaMA-2, no BOS/EOS).

Exactness: n-grams are looked up by a 64-bit hash (per-word xxh64 combined as a polynomial over uint64), and
every hash hit is confirmed by comparing the words, so a reported match is an exact n-gram match and none is
missed. The result names the manifest id it was computed from (and the run, in ``--run`` mode).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from elm_data.core.errors import InvalidValue

from .eval_tasks import EvalTask
from .kept_text import KeptDocument, map_shards
from .manifest import Manifest

DEFAULT_NGRAM = 13
EXAMPLES = 5  # example item ids and document ids reported per task x subset
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the polynomial n-gram hash (mod 2**64)
NORMALIZATION = (
    "datatrove simplify_text (lowercase, no punctuation, no diacritics, digits->0, whitespace collapsed), "
    "words split on whitespace"
)


def normalized_words(text: str) -> list[str]:
    """``text`` as normalized words (see the module docstring)."""
    from datatrove.utils.text import TextNormConfig, simplify_text

    return simplify_text(text, TextNormConfig()).split()


def ngram_hashes(words: list[str], n: int) -> np.ndarray:
    """The uint64 hash of each n-gram ``words[i:i+n]``, i = 0 … len - n (empty when shorter than ``n``)."""
    from xxhash import xxh64_intdigest

    if len(words) < n:
        return np.zeros(0, dtype=np.uint64)
    per_word = np.fromiter((xxh64_intdigest(w) for w in words), dtype=np.uint64, count=len(words))
    count = len(words) - n + 1
    acc = per_word[:count].copy()
    for k in range(1, n):
        acc *= _BASE  # uint64 arrays wrap: arithmetic mod 2**64
        acc += per_word[k : k + count]
    return acc


@dataclass(frozen=True)
class MatchRule:
    """``n``: words per n-gram; ``min_overlap``: fraction of an item's distinct n-grams to find (None: any
    one)."""

    n: int = DEFAULT_NGRAM
    min_overlap: float | None = None

    def __post_init__(self):
        if self.n < 1:
            raise InvalidValue(f"--ngram must be at least 1, got {self.n}")
        if self.min_overlap is not None and not 0 < self.min_overlap <= 1:
            raise InvalidValue(f"--min-overlap must be in (0, 1], got {self.min_overlap}")

    def contaminated(self, found: int, total: int) -> bool:
        if self.min_overlap is None:
            return found > 0
        return total > 0 and found / total >= self.min_overlap

    def describe(self) -> dict[str, Any]:
        rule = "any" if self.min_overlap is None else f"fraction>={self.min_overlap}"
        return {"ngram": self.n, "match": rule, "normalization": NORMALIZATION}


class NgramIndex:
    """Every distinct n-gram of every item: hash → ``[(item number, n-gram number within the item)]``.

    ``items[k]`` is ``(task index, EvalItem)``; ``item_ngrams[k]`` its distinct n-grams (tuples, in first-seen
    order). ``lookup`` confirms each hash hit against the words, so hits are exact.
    """

    def __init__(self, tasks: list[EvalTask], n: int):
        self.n = n
        self.items: list[tuple[int, Any]] = []
        self.item_ngrams: list[list[tuple[str, ...]]] = []
        self.too_short = [0] * len(tasks)
        table: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for t, task in enumerate(tasks):
            for item in task.items:
                words = normalized_words(item.text)
                if len(words) < n:
                    self.too_short[t] += 1
                    continue
                k = len(self.items)
                distinct = list(dict.fromkeys(tuple(words[i : i + n]) for i in range(len(words) - n + 1)))
                hashes = ngram_hashes([w for g in distinct for w in g], n)[::n] if distinct else []
                self.items.append((t, item))
                self.item_ngrams.append(distinct)
                for j, h in enumerate(hashes):
                    table[int(h)].append((k, j))
        self.table = dict(table)
        self.keys = np.array(sorted(self.table), dtype=np.uint64)

    def lookup(self, words: list[str]) -> list[tuple[int, int, int]]:
        """``(item number, item n-gram number, position in words)`` of every n-gram of ``words`` an item
        holds."""
        if not len(self.keys):
            return []
        hashes = ngram_hashes(words, self.n)
        at = np.searchsorted(self.keys, hashes)
        hit = self.keys[np.minimum(at, len(self.keys) - 1)] == hashes
        out = []
        for pos in np.flatnonzero(hit).tolist():
            gram = tuple(words[pos : pos + self.n])
            for k, j in self.table[int(hashes[pos])]:
                if self.item_ngrams[k][j] == gram:
                    out.append((k, j, pos))
        return out


@dataclass
class _Cell:
    """What one task met in one source/subset: per item, its matched n-grams; per document, the items it
    holds."""

    # picklable: defaultdict(set)
    found: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    docs: dict[tuple[int, int], tuple[str, int, set[int]]] = field(default_factory=dict)


@dataclass
class Contamination:
    """The audit's result; :meth:`to_json` is its report, bound to ``manifest_id`` (and ``run``)."""

    manifest_id: str
    manifest_name: str
    rule: MatchRule
    tasks: list[EvalTask]
    scanned: dict[str, list[int]]  # source/subset -> [documents, tokens] scanned
    by_task: list[dict[str, Any]]  # per task: items, too short, contaminated items, per subset cells
    run: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "manifest_id": self.manifest_id,
            "manifest_name": self.manifest_name,
            "run": self.run,
            "settings": self.rule.describe(),
            "scanned": {k: {"documents": d, "tokens": t} for k, (d, t) in sorted(self.scanned.items())},
            "tasks": {t["task"]: {k: v for k, v in t.items() if k != "task"} for t in self.by_task},
        }


def scan_shard(index: NgramIndex, docs: Iterable[KeptDocument]):
    """Look every document's n-grams up in ``index``: ``({(task, subset): _Cell}, {subset: [docs,
    tokens]})``."""
    cells: dict[tuple[int, str], _Cell] = defaultdict(_Cell)
    scanned: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for doc in docs:
        scanned[doc.key][0] += 1
        scanned[doc.key][1] += doc.tokens
        for k, j, _pos in index.lookup(normalized_words(doc.text)):
            cell = cells[(index.items[k][0], doc.key)]
            cell.found[k].add(j)
            entry = cell.docs.setdefault((doc.shard.shard, doc.index), (doc.doc_id, doc.tokens, set()))
            entry[2].add(k)
    return dict(cells), dict(scanned)


def merge_scans(parts) -> tuple[dict, dict[str, list[int]]]:
    """The per-shard scans merged (matched n-grams united, documents collected, counts summed)."""
    cells: dict[tuple[int, str], _Cell] = {}
    scanned: dict[str, list[int]] = {}
    for part_cells, part_scanned in parts:
        for key, cell in part_cells.items():
            into = cells.setdefault(key, _Cell())
            for k, found in cell.found.items():
                into.found[k] |= found
            into.docs.update(cell.docs)
        for key, (docs, tokens) in part_scanned.items():
            total = scanned.setdefault(key, [0, 0])
            total[0] += docs
            total[1] += tokens
    return cells, scanned


def _cell_report(cell: _Cell, index: NgramIndex, rule: MatchRule) -> tuple[set[int], dict[str, Any]]:
    """The contaminated items of one task x subset and its report entry."""
    items = {k for k, js in cell.found.items() if rule.contaminated(len(js), len(index.item_ngrams[k]))}
    docs = sorted(
        (place, doc_id, tokens) for place, (doc_id, tokens, held) in cell.docs.items() if held & items
    )
    return items, {
        "contaminated_items": len(items),
        "documents": len(docs),
        "tokens": sum(t for _, _, t in docs),
        "example_items": sorted(index.items[k][1].item_id for k in items)[:EXAMPLES],
        "example_documents": [doc_id for _, doc_id, _ in docs[:EXAMPLES]],
    }


def summarize(tasks, index: NgramIndex, cells, rule: MatchRule) -> list[dict[str, Any]]:
    """Per task: its items, too-short items, contaminated items (in any subset) and the per-subset reports."""
    out = []
    for t, task in enumerate(tasks):
        union: set[int] = set()
        by_subset = {}
        for (ct, key), cell in sorted(cells.items(), key=lambda kv: kv[0]):
            if ct != t:
                continue
            items, report = _cell_report(cell, index, rule)
            if items:
                by_subset[key] = report
                union |= items
        out.append(
            {
                "task": task.name,
                "origin": task.origin,
                "items": len(task.items),
                "items_too_short": index.too_short[t],
                "contaminated_items": len(union),
                "contaminated_item_ids": sorted(index.items[k][1].item_id for k in union)[: 4 * EXAMPLES],
                "by_subset": by_subset,
            }
        )
    return out


def audit_contamination(
    manifest: Manifest,
    tasks: list[EvalTask],
    rule: MatchRule | None = None,
    only: Mapping[int, Set[int]] | None = None,
    run: str | None = None,
    workers: int = 1,
) -> Contamination:
    """Scan the manifest's kept documents (``only``: ``{shard: record indices}``) for the tasks' items, shard
    by shard in ``workers`` processes; the result does not depend on ``workers``."""
    rule = rule or MatchRule()
    index = NgramIndex(tasks, rule.n)
    parts = map_shards(
        manifest, scan_shard, only, workers, setup=NgramIndex, setup_args=(tasks, rule.n), state=index
    )
    cells, scanned = merge_scans(parts)
    by_task = summarize(tasks, index, cells, rule)
    return Contamination(manifest.manifest_id, manifest.info["name"], rule, tasks, scanned, by_task, run)


def format_table(result: Contamination) -> str:
    """One line per task x contaminated subset, plus each task's total."""
    where = f" (documents consumed by run {result.run})" if result.run else ""
    s = result.rule.describe()
    lines = [
        f"Contamination audit of manifest {result.manifest_id} ({result.manifest_name}){where}",
        f"{s['ngram']}-grams, match {s['match']}; normalization: {s['normalization']}",
        f"{'task':<24} {'source/subset':<28} {'items':>14} {'documents':>10} {'tokens':>12}  examples",
    ]
    for t in result.by_task:
        total = f"{t['contaminated_items']}/{t['items']}"
        short = (
            f" ({t['items_too_short']} items shorter than {s['ngram']} words not checked)"
            if t["items_too_short"]
            else ""
        )
        lines.append(f"{t['task']:<24} {'ALL':<28} {total:>14}{short}")
        for key, c in t["by_subset"].items():
            examples = ", ".join(c["example_items"][:2]) + " in " + ", ".join(c["example_documents"][:2])
            lines.append(
                f"{'':<24} {key:<28} {c['contaminated_items']:>14,} {c['documents']:>10,} "
                f"{c['tokens']:>12,}  {examples}"
            )
    docs = sum(d for d, _ in result.scanned.values())
    tokens = sum(t for _, t in result.scanned.values())
    lines.append(f"scanned {docs:,} kept documents, {tokens:,} tokens")
    return "\n".join(lines)
