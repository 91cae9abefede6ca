"""Corpora in the real formats whose document lengths are heavy-tailed (log-normal), for the estimate's tests.

The sample generator (``sources/sample.py``) writes every format as upstream publishes it; here its document
lengths are swapped for a log-normal (median ~200 words, sigma 1.3: a few documents 20-50x the median), with a
fixed seed, and only four subsets are written: parquet (refinedweb), plain JSONL (redpajama/c4), parquet mixed
with JSONL.zst (pile/default) and JSON.gz (dolma/reddit).
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa

from elm_data.sources import sample
from elm_data.sources import sample_text as st
from elm_data.sources.readers_parquet import EXPECTED_COLUMNS

HEAVY_SUBSETS = {"refinedweb/default", "redpajama/c4", "pile/default", "dolma/reddit"}


def heavy_lengths(rng: random.Random, n: int, shard: int, boundary=(140, 220)) -> list[int | None]:
    """Log-normal word counts (5% sub-200-character snippets), capped at 20,000 words."""
    return [
        None if rng.random() < 0.05 else min(20000, max(20, int(rng.lognormvariate(5.3, 1.3))))
        for _ in range(n)
    ]


def write_heavy_corpus(root: Path, monkeypatch, scale: float = 2.0, shard_factor: int = 5) -> Path:
    """The four subsets with heavy-tailed lengths under ``root``; returns ``mixture.yaml``."""
    monkeypatch.setattr(sample, "document_lengths", heavy_lengths)
    monkeypatch.setattr(sample, "_PLAN", tuple(p for p in sample._PLAN if f"{p[0]}/{p[1]}" in HEAVY_SUBSETS))
    return sample.generate_sample_corpus(root, seed=0, scale=scale, shard_factor=shard_factor).mixture


def write_dominated_subset(root: Path) -> Path:
    """pile/default as one parquet shard of six very long documents (~95% of the bytes) beside eleven small
    JSONL.zst shards of two documents each; returns ``mixture.yaml``."""
    rng = random.Random(7)
    big = pa.table({"text": [st.mixed(rng, 6000) for _ in range(6)]}, schema=EXPECTED_COLUMNS["pile/default"])
    (root / "pile" / "big").mkdir(parents=True, exist_ok=True)
    sample.write_parquet(root / "pile" / "big" / "train-00000.parquet", big)
    for shard in range(11):
        lines = [
            sample.redpajama_line({"text": st.mixed(rng, rng.randint(250, 400)), "meta": {}})
            for _ in range(2)
        ]
        (root / "pile" / "small").mkdir(parents=True, exist_ok=True)
        (root / "pile" / "small" / f"{shard:02d}.jsonl.zst").write_bytes(sample.zstd_bytes(b"".join(lines)))
    (root / "mixture.yaml").write_text(
        "name: dominated\nseed: 0\ntokenizer: null\nfilters: {min_characters: 200, min_tokens: 256}\n"
        "sequences: {mode: packed, seq_len: 2048}\nsources:\n  - source: pile\n    subset: default\n"
        "    shards: [pile/big/*.parquet, pile/small/*.jsonl.zst]\n"
    )
    return root / "mixture.yaml"
