"""CoreNet mode: every piece the per-piece rules drop is counted by reason in the manifest and the audit.

The expectation is computed independently from the native files: split on single spaces every N words,
SlimPajama-normalised length against min_characters, then sentencepiece token count against min_tokens.
"""

from __future__ import annotations

import glob
from collections import Counter, defaultdict

import pytest
import sentencepiece as spm
import yaml
from test_audit import _native_texts, _normalised_length  # the audit test's independent readers

from elm_data.manifests.audit import audit_manifest
from elm_data.manifests.build import build_manifest
from elm_data.manifests.manifest import Manifest

WORDS = 300


@pytest.fixture(scope="module")
def corenet_build(sample_dir, tokenizer_path, tmp_path_factory):
    mixture = yaml.safe_load((sample_dir / "mixture.yaml").read_text())
    mixture["sequences"] = {"mode": "corenet", "seq_len": 2048, "corenet_words_per_piece": WORDS}
    for entry in mixture["sources"]:
        entry["shards"] = [str(sample_dir / p) for p in entry["shards"]]
    out = tmp_path_factory.mktemp("pieces")
    (out / "mixture.yaml").write_text(yaml.safe_dump(mixture))
    build_manifest(out / "mixture.yaml", out / "manifest", tokenizer=tokenizer_path)
    return mixture, Manifest(out / "manifest")


@pytest.mark.slow  # a CoreNet build (test_document_pass accounts for every piece quickly)
def test_dropped_pieces_are_counted_by_reason(corenet_build, tokenizer_path):
    mixture, manifest = corenet_build
    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    min_chars, min_tokens = mixture["filters"]["min_characters"], mixture["filters"]["min_tokens"]
    expected: dict[str, Counter] = defaultdict(Counter)
    kept_pieces: Counter = Counter()
    for entry in mixture["sources"]:
        key = f"{entry['source']}/{entry['subset']}"
        for pattern in entry["shards"]:
            for path in sorted(glob.glob(pattern)):
                for text in _native_texts(path):
                    if not isinstance(text, str) or not text.strip():
                        continue
                    words = text.split(" ")
                    for start in range(0, len(words), WORDS):
                        piece = " ".join(words[start : start + WORDS])
                        if _normalised_length(piece) < min_chars:
                            expected[key]["min_characters"] += 1
                        elif len(sp.encode(piece)) < min_tokens:
                            expected[key]["min_tokens"] += 1
                        else:
                            kept_pieces[key] += 1

    audit = {row.key: row for row in audit_manifest(manifest).rows if row.shards}
    assert sum(sum(c.values()) for c in expected.values()) > 0, (
        "the sample must split into some dropped pieces"
    )
    for key, row in audit.items():
        assert row.counts.pieces_filtered_by_reason == dict(sorted(expected[key].items())), key
        assert row.counts.segments == kept_pieces[key], key
    totals = manifest.info["totals"]["pieces_filtered_by_reason"]
    assert totals == dict(sorted(sum(expected.values(), Counter()).items()))


def test_packed_manifests_record_no_piece_drops(sample_manifest):
    assert all(record.pieces_filtered_by_reason == {} for record in Manifest(sample_manifest).shards)
