"""Small real-format corpora (RedPajama JSONL shards) with planted passages, and the brute-force oracles.

The oracles define normalization by the library function the audits document (datatrove's ``simplify_text``,
words split on whitespace) and then work on plain Python sets of word tuples, with no hashing."""

from __future__ import annotations

import random
from pathlib import Path

import yaml
from datatrove.utils.text import TextNormConfig, simplify_text

from elm_data.sources.sample import redpajama_line

VOCAB = [
    f"{a}{b}"
    for a in ("ka", "lo", "mi", "nu", "pe", "ro", "su", "ti", "va", "ze")
    for b in ("ban", "cor", "del", "fim", "gar", "hol", "jun", "kep", "lam", "mor", "nep", "pil")
]
OTHER_VOCAB = [w.upper()[::-1] + "x" for w in VOCAB]  # words no document holds


def words_of(text: str) -> list[str]:
    return simplify_text(text, TextNormConfig()).split()


def random_words(rng: random.Random, n: int, vocab=VOCAB) -> list[str]:
    return [rng.choice(vocab) for _ in range(n)]


def write_corpus(root: Path, subsets: dict[str, list[list[str]]], tokenizer: str) -> Path:
    """One JSONL shard per list of documents (``{subset: [shard texts, ...]}``), a mixture, and its
    manifest."""
    from elm_data.manifests.build import build_manifest

    write_mixture(root, subsets)
    build_manifest(root / "mixture.yaml", root / "manifest", tokenizer=tokenizer, workers=1)
    return root / "manifest"


def write_mixture(root: Path, subsets: dict[str, list[list[str]]], name: str = "mixture", **filters) -> Path:
    """The shards of :func:`write_corpus` (written once) and ``root/NAME.yaml`` over them with ``filters``
    added."""
    sources = []
    for subset, shards in subsets.items():
        for s, texts in enumerate(shards):
            path = root / "redpajama" / subset / f"{subset}-{s:05d}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(
                b"".join(redpajama_line({"text": t, "meta": {"n": i}}) for i, t in enumerate(texts))
            )
        sources.append({"source": "redpajama", "subset": subset, "shards": [f"redpajama/{subset}/*.jsonl"]})
    mixture = {"name": "planted", "seed": 0, "filters": {"min_characters": 1, "min_tokens": 1, **filters}}
    (root / f"{name}.yaml").write_text(yaml.safe_dump(mixture | {"sources": sources}, sort_keys=False))
    return root / f"{name}.yaml"


# Share of words replaced in each planted copy (0.0: an exact copy, punctuation and case aside).
EDIT_RATES = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.15, 0.3)


def edited(rng: random.Random, words: list[str], rate: float) -> list[str]:
    out = list(words)
    for i in rng.sample(range(len(out)), int(rate * len(out))):
        out[i] = rng.choice(("zzq", "qqz", "xyzzy", "plugh")) + str(rng.randrange(1000))
    return out


def planted_duplicates(seed: int = 7) -> dict[str, list[list[str]]]:
    """c4 (two shards) and wikipedia (one) texts: 12 originals, and copies of the first 9 at each of
    ``EDIT_RATES`` in every shard, within and across subsets (one exact copy upper-cased with a "!")."""
    rng = random.Random(seed)
    originals = [random_words(rng, rng.randint(200, 320)) for _ in range(12)]
    shards: dict[str, list[list[str]]] = {"c4": [[], []], "wikipedia": [[]]}
    places = [("c4", 0), ("c4", 1), ("wikipedia", 0)]
    for k, words in enumerate(originals):
        subset, s = places[k % 3]
        shards[subset][s].append(" ".join(words))
    for k, rate in enumerate(EDIT_RATES):
        # copy original k into every place: within and across subsets
        for j, (subset, s) in enumerate(places):
            text = " ".join(edited(rng, originals[k], rate))
            shards[subset][s].append(text.upper() + "!" if rate == 0.0 and j == 1 else text)
    return shards


def ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def brute_contamination(items: dict[str, str], docs: dict[str, tuple[str, str]], n: int, min_overlap=None):
    """``{subset: {item id: {doc ids}}}``: for each item contaminated in a subset, the subset's documents
    holding one of its n-grams. ``docs``: doc id -> (subset, text)."""
    out: dict[str, dict[str, set[str]]] = {}
    for item_id, text in items.items():
        grams = ngrams(words_of(text), n)
        if not grams:
            continue
        for subset in {s for s, _ in docs.values()}:
            holding = {d: ngrams(words_of(t), n) & grams for d, (s, t) in docs.items() if s == subset}
            found = set().union(*holding.values())
            hit = len(found) / len(grams) >= min_overlap if min_overlap else bool(found)
            if hit:
                out.setdefault(subset, {})[item_id] = {d for d, g in holding.items() if g}
    return out


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0
