"""`elm-data audit`: figures equal an independent count over the sample corpus; json; plot; targets."""

from __future__ import annotations

import glob
import gzip
import io
import json
import re
import string
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sentencepiece as spm
import yaml
import zstandard
from click.testing import CliRunner

from elm_data.manifests.audit import audit_manifest
from elm_data.manifests.cli import audit
from elm_data.sources.registry import OPENELM_TARGETS


def _native_texts(path: str) -> list[str | None]:
    """Every record's text read straight from the file (None where there is none)."""
    if path.endswith(".parquet"):
        table = pq.read_table(path)
        column = "content" if "content" in table.column_names else "text"
        return table.column(column).to_pylist()
    raw = Path(path).read_bytes()
    if path.endswith(".gz"):
        raw = gzip.decompress(raw)
    elif path.endswith(".zst"):
        raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
    return [json.loads(line).get("text") for line in raw.decode("utf-8").splitlines()]


def _normalised_length(text: str) -> int:
    # SlimPajama's normalisation (as CoreNet uses it for the character rule), written out here independently
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return len(re.sub(r"\s+", " ", text.strip()))


@pytest.fixture(scope="module")
def expected(sample_dir, tokenizer_path) -> dict[str, dict[str, int]]:
    """Per source/subset counts computed from the native files with sentencepiece directly."""
    mixture = yaml.safe_load((sample_dir / "mixture.yaml").read_text())
    min_chars, min_tokens = mixture["filters"]["min_characters"], mixture["filters"]["min_tokens"]
    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    counts: dict[str, dict[str, int]] = {}
    for entry in mixture["sources"]:
        c = counts.setdefault(f"{entry['source']}/{entry['subset']}", defaultdict(int))
        long_enough: list[str] = []
        for pattern in entry["shards"]:
            for path in sorted(glob.glob(str(sample_dir / pattern))):
                c["shards"] += 1
                for text in _native_texts(path):
                    c["docs_read"] += 1
                    if not isinstance(text, str) or not text:
                        c["docs_rejected"] += 1
                    elif _normalised_length(text) < min_chars:
                        c["min_characters"] += 1
                    else:
                        long_enough.append(text)
        # batch: both cores
        for text, ids in zip(long_enough, sp.encode(long_enough, num_threads=2), strict=True):
            if len(ids) < min_tokens:
                c["min_tokens"] += 1
            else:
                c["docs_kept"] += 1
                c["tokens"] += len(ids)
                c["chars"] += len(text)
    return counts


def test_audit_equals_an_independent_count(sample_manifest, expected):
    result = audit_manifest(sample_manifest)
    rows = {r.key: r for r in result.rows if r.shards}
    assert set(rows) == set(expected)
    for key, want in expected.items():
        row = rows[key]
        got = {
            "shards": row.shards,
            "docs_read": row.counts.docs_read,
            "docs_kept": row.counts.docs_kept,
            "docs_rejected": row.counts.docs_rejected,
            "tokens": row.counts.tokens,
            "chars": row.counts.chars,
            "min_characters": row.counts.filtered_by_reason.get("min_characters", 0),
            "min_tokens": row.counts.filtered_by_reason.get("min_tokens", 0),
        }
        assert got == {k: want.get(k, 0) for k in got}, key
    total = sum(w["tokens"] for w in expected.values())
    for key, want in expected.items():
        assert rows[key].share == pytest.approx(want["tokens"] / total)


def test_audit_json_is_one_object_keyed_by_subset(sample_manifest, sample_dir, expected):
    result = CliRunner().invoke(audit, [str(sample_manifest), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(expected) <= set(data)
    weights = {
        f"{e['source']}/{e['subset']}": e["weight"]
        for e in yaml.safe_load((sample_dir / "mixture.yaml").read_text())["sources"]
    }
    for key, weight in weights.items():
        assert data[key]["weight_share"] == pytest.approx(weight / sum(weights.values()))
    target_total = sum(OPENELM_TARGETS.values())
    for key, want in expected.items():
        row = data[key]
        for name in ("tokens", "docs_kept", "docs_read"):
            assert row[name] == want[name], (key, name)
        assert row["target_tokens"] == OPENELM_TARGETS[key]
        assert row["target_share"] == pytest.approx(OPENELM_TARGETS[key] / target_total)
        assert row["share_deviation"] == pytest.approx(row["share"] - row["target_share"])
        assert row["ratio"] == pytest.approx(row["share"] / row["target_share"])
    assert sum(row["share"] for row in data.values()) == pytest.approx(1.0)


@pytest.mark.slow  # draws the plot (matplotlib)
def test_audit_table_and_plot(sample_manifest, tmp_path):
    png = tmp_path / "mix.png"
    result = CliRunner().invoke(audit, [str(sample_manifest), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert "redpajama/arxiv" in result.stdout and "TOTAL" in result.stdout and "dev pp" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000


def test_targets_file_changes_the_comparison(sample_manifest, tmp_path):
    targets = tmp_path / "half.yaml"
    targets.write_text(yaml.safe_dump({"name": "half", "targets": {"redpajama/arxiv": 1, "dolma/wiki": 1}}))
    result = audit_manifest(sample_manifest, targets=str(targets))
    rows = {r.key: r for r in result.rows}
    assert result.targets_name == "half"
    assert rows["redpajama/arxiv"].target_share == pytest.approx(0.5)
    assert rows["refinedweb/default"].target_tokens is None and rows["refinedweb/default"].ratio is None

    bad = CliRunner().invoke(audit, [str(sample_manifest), "--targets", str(tmp_path / "nope.yaml")])
    assert bad.exit_code != 0 and "nope.yaml" in bad.output and "Traceback" not in bad.output
