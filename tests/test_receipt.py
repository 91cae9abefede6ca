"""The consumption receipt: batch digests from the plan alone equal the stream's, and the run's hash chain
recomputed by `audit-run --verify` from the manifest and plan (no corpus, no model) detects edits."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pytest
import yaml

from elm_data.pipeline.stream import StreamLoader, TokenStream
from elm_data.pipeline.stream.receipt import (
    batch_spans,
    global_batches,
    plan_batch_digest,
    stream_batch_digest,
)


@pytest.fixture(scope="module")
def corenet_manifest(sample_dir, tokenizer_path, tmp_path_factory) -> Path:
    from elm_data.manifests.build import build_manifest

    mixture = yaml.safe_load((sample_dir / "mixture.yaml").read_text())
    for entry in mixture["sources"]:
        entry["shards"] = [str(sample_dir / s) for s in entry["shards"]]
    mixture["sequences"] = {"mode": "corenet", "seq_len": 2048, "corenet_words_per_piece": 300}
    out = tmp_path_factory.mktemp("corenet_receipt")
    (out / "mixture.yaml").write_text(yaml.safe_dump(mixture))
    build_manifest(out / "mixture.yaml", out / "manifest", tokenizer=tokenizer_path, workers=1)
    return out / "manifest"


def _compare(stream: TokenStream, limit: int | None = None) -> int:
    plan = stream.plan()
    planned = global_batches(plan)
    n = 0
    for batch in islice(StreamLoader(stream), limit):
        bp = next(planned)
        assert bp.batch == batch["batch_index"]
        if stream.config.mode == "packed":
            assert batch_spans(bp, plan) == batch["spans"]  # the very spans, not only the digest
        assert plan_batch_digest(bp, plan) == stream_batch_digest(batch, stream.config.mode), bp.batch
        n += 1
    if limit is None:
        assert next(planned, None) is None  # the plan ends where the stream ends
    return n


def test_plan_digests_equal_the_stream_natural_packed(sample_manifest, tokenizer):
    stream = TokenStream(sample_manifest, batch_size=3, seq_len=64, weights="natural", tokenizer=tokenizer)
    assert _compare(stream) > 20


def test_plan_digests_equal_the_stream_weighted_packed(sample_manifest, tokenizer):
    stream = TokenStream(sample_manifest, batch_size=2, seq_len=48, tokenizer=tokenizer, partitions=2)
    assert stream.config.weights  # the sample mixture carries weights
    assert _compare(stream, limit=40) == 40


def test_plan_digests_equal_the_stream_corenet(corenet_manifest, tokenizer):
    natural = TokenStream(corenet_manifest, batch_size=3, seq_len=200, weights="natural", tokenizer=tokenizer)
    assert natural.config.mode == "corenet"
    assert _compare(natural) > 5
    weighted = TokenStream(corenet_manifest, batch_size=2, seq_len=200, tokenizer=tokenizer, partitions=1)
    assert _compare(weighted, limit=20) == 20


def test_digest_changes_with_any_span_field(sample_manifest, tokenizer):
    stream = TokenStream(sample_manifest, batch_size=2, seq_len=32, weights="natural", tokenizer=tokenizer)
    batch = next(iter(StreamLoader(stream)))
    base = stream_batch_digest(batch, "packed")
    for field in ("source", "subset", "shard_sha256", "doc_id", "index", "doc_start", "doc_end", "start", "end"):
        edited = json.loads(json.dumps(batch["spans"]))
        value = edited[0][0][field]
        edited[0][0][field] = value + 1 if isinstance(value, int) else value + "x"
        assert stream_batch_digest(batch | {"spans": edited}, "packed") != base, field
    assert stream_batch_digest(batch | {"batch_index": batch["batch_index"] + 1}, "packed") != base
