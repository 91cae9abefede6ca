"""``build manifest --dropped-samples K``: the first K dropped records per reason, written aside.

Checked against the documents.parquet ledger and against the native shard files read independently;
deterministic across workers and Beam; resumable; outside the manifest's identity.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import zstandard
from click.testing import CliRunner

from elm_data.core.errors import InvalidValue
from elm_data.manifests.audit import audit_manifest, format_table
from elm_data.manifests.build import build_manifest
from elm_data.manifests.cli import audit as audit_command
from elm_data.manifests.cli import build_manifest as build_command
from elm_data.manifests.manifest import (
    DROPPED_SAMPLES_FILE,
    MANIFEST_FILE,
    SHARDS_FILE,
    Manifest,
    data_files,
    write_manifest_dir,
)
from elm_data.manifests.workspace import workspace_path_for
from elm_data.pipeline.dropped import SAMPLE_CHARS, DroppedSamples
from elm_data.sources.registry import get_subset

K = 2
BAD_LINES = {  # c4 shard file -> {line to insert at: bytes}; three malformed lines > K, one missing text < K
    0: {1: b'{"text": "unterminated\n', 4: b'{"meta": {"language": "en"}}\n'},
    1: {0: b"not json at all\n", 3: b'{"text": \n'},
}


@pytest.fixture(scope="module")
def corpus(sample_dir, tmp_path_factory) -> Path:
    """The sample corpus with malformed and text-less lines inserted into two redpajama/c4 shards."""
    root = Path(shutil.copytree(sample_dir, tmp_path_factory.mktemp("dropped") / "corpus"))
    shards = sorted((root / "redpajama" / "c4").glob("*.jsonl"))
    for n, inserts in BAD_LINES.items():
        lines = shards[n].read_bytes().splitlines(keepends=True)
        for at, line in sorted(inserts.items()):
            lines.insert(at, line)
        shards[n].write_bytes(b"".join(lines))
    return root


def _build(corpus: Path, out: Path, tokenizer_path: str, **kwargs):
    return build_manifest(corpus / "mixture.yaml", out, tokenizer=tokenizer_path, **kwargs)


@pytest.fixture(scope="module")
def sampled(corpus, tokenizer_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sampled") / "m"
    _build(corpus, out, tokenizer_path, dropped_samples=K)
    return out


@pytest.fixture(scope="module")
def sampled_all(corpus, tokenizer_path, tmp_path_factory) -> Path:
    """K larger than any reason's count: every dropped record of every format is sampled."""
    out = tmp_path_factory.mktemp("sampled_all") / "m"
    _build(corpus, out, tokenizer_path, dropped_samples=1000)
    return out


def _samples(manifest_dir: Path) -> list[dict]:
    return [
        json.loads(line) for line in (manifest_dir / DROPPED_SAMPLES_FILE).read_text("utf-8").splitlines()
    ]


def _dropped_ledger(manifest_dir: Path) -> dict[tuple[str, str], list[dict]]:
    """(status, reason) -> dropped ledger rows in manifest order (shard, then index)."""
    rows = Manifest(manifest_dir).all_documents().to_pylist()
    by_reason: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: (r["shard"], r["index"])):
        if row["status"] != "kept":
            by_reason[(row["status"], row["reason"])].append(row)
    return by_reason


def _native_line(path: Path, index: int) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    elif path.name.endswith(".zst"):
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    return data.splitlines()[index]


def _native_text(source: str, subset: str, uri: str, index: int) -> str:
    """The document's text read straight from its native file, without the project's readers."""
    field = get_subset(source, subset).text_field
    path = Path(uri)
    if path.suffix == ".parquet":
        return pq.read_table(path, columns=[field]).column(field)[index].as_py()
    return json.loads(_native_line(path, index))[field]


def test_first_k_per_reason_in_manifest_order_match_the_ledger(sampled):
    samples = _samples(sampled)
    shards = Manifest(sampled).shards
    ledger = _dropped_ledger(sampled)
    assert {reason for status, reason in ledger if status == "rejected"} == {"malformed_json", "missing_text"}
    assert len(ledger[("rejected", "malformed_json")]) == 3 > K  # truncation is exercised...
    assert len(ledger[("rejected", "missing_text")]) == 1 < K  # ...and so is a reason with fewer than K

    got: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for s in samples:
        got[(s["status"], s["reason"])].append(s)
    assert set(got) == set(ledger)
    for key, rows in ledger.items():
        expected = rows[:K]
        assert len(got[key]) == min(K, len(rows))
        assert [(s["shard"], s["index"]) for s in got[key]] == [(r["shard"], r["index"]) for r in expected]
        for s, row in zip(got[key], expected, strict=True):
            assert (s["doc_id"], s["chars"], s["count"]) == (row["doc_id"], row["chars"], row["count"])
            shard = shards[s["shard"]]
            assert (s["source"], s["subset"], s["shard_uri"], s["shard_sha256"]) == (
                shard.source,
                shard.subset,
                shard.uri,
                shard.sha256,
            )
    # filtered reasons first, then rejections; each reason in manifest order
    assert [(s["status"], s["reason"]) for s in samples] == sorted(
        (s["status"], s["reason"]) for s in samples
    )


@pytest.mark.slow  # a build keeping every dropped sample
def test_snippets_are_the_start_of_the_native_documents(sampled_all):
    samples = _samples(sampled_all)
    ledger = _dropped_ledger(sampled_all)
    assert len(samples) == sum(len(rows) for rows in ledger.values())  # K above every count: all of them
    formats = set()
    for s in samples:
        if s["status"] == "filtered":
            text = _native_text(s["source"], s["subset"], s["shard_uri"], s["index"])
            assert s["text"] == text[:SAMPLE_CHARS]
            assert s["chars"] == len(text)
            assert "detail" not in s
            formats.add(Path(s["shard_uri"]).name.rsplit(".", 1)[-1])
        else:
            line = _native_line(Path(s["shard_uri"]), s["index"])
            assert s["detail"] and "text" not in s
            if s["reason"] == "malformed_json":
                with pytest.raises(json.JSONDecodeError):
                    json.loads(line)
            else:
                assert "text" not in json.loads(line)
    assert formats == {"parquet", "jsonl", "gz", "zst"}  # every native format the sample has


@pytest.mark.slow  # a Beam build (seconds; Beam's own tests are slow too)
def test_workers_and_beam_write_identical_bytes(corpus, sampled, tokenizer_path, tmp_path):
    two = tmp_path / "two"
    result = CliRunner().invoke(
        build_command,
        [
            str(corpus / "mixture.yaml"),
            "--out",
            str(two),
            "--tokenizer",
            tokenizer_path,
            "--workers",
            "2",
            "--dropped-samples",
            str(K),
        ],
    )
    assert result.exit_code == 0, result.output
    beam = tmp_path / "beam"
    _build(corpus, beam, tokenizer_path, runner="beam", dropped_samples=K)
    for other in (two, beam):
        for name in (DROPPED_SAMPLES_FILE, *data_files(sampled)):
            assert (other / name).read_bytes() == (sampled / name).read_bytes(), (other.name, name)


@pytest.mark.slow  # a build without samples and one keeping every dropped sample
def test_samples_change_neither_id_nor_parquet(corpus, sampled, sampled_all, tokenizer_path, tmp_path):
    plain = tmp_path / "plain"
    result = _build(corpus, plain, tokenizer_path)
    assert not (plain / DROPPED_SAMPLES_FILE).exists()
    assert result.manifest_id == Manifest(sampled).manifest_id == Manifest(sampled_all).manifest_id
    for name in data_files(plain):
        assert (
            (plain / name).read_bytes() == (sampled / name).read_bytes() == (sampled_all / name).read_bytes()
        )
    assert audit_manifest(plain).dropped_samples is None
    assert DROPPED_SAMPLES_FILE not in format_table(audit_manifest(plain))


def test_audit_mentions_the_file(sampled):
    result = CliRunner().invoke(audit_command, [str(sampled)])
    assert result.exit_code == 0, result.output
    mention = [line for line in result.output.splitlines() if DROPPED_SAMPLES_FILE in line]
    assert len(mention) == 1 and f"{len(_samples(sampled))} " in mention[0]


@pytest.mark.slow  # an interrupted build and its resume
def test_resume_gives_the_same_file(corpus, sampled, tokenizer_path, tmp_path):
    out = tmp_path / "resumed"
    workspace = Path(workspace_path_for(str(out)))

    class Killed(Exception):
        pass

    def killed_build(dropped: int, at: int) -> list[bool]:
        seen: list[bool] = []

        def record_then_die(outcome):
            seen.append(outcome.reused)
            if outcome.shard == at:
                raise Killed

        with pytest.raises(Killed):
            _build(corpus, out, tokenizer_path, dropped_samples=dropped, on_shard_done=record_then_die)
        assert not out.exists()
        return seen

    # 1. killed without samples: its committed shards hold none, so a sampled build counts them again
    killed_build(0, 3)
    assert not list(workspace.glob("*.dropped.jsonl"))
    # 2. killed with fewer samples per reason than a later build asks for: counted again as well
    assert killed_build(1, 6) == [False] * 7
    # 3. killed with more samples per reason than the final build asks for: those shards stay reusable
    assert killed_build(K + 1, 9) == [False] * 10
    for part in workspace.glob("shard-*.dropped.jsonl"):  # bounded: at most K+1 per reason in a shard
        buckets = [json.loads(line)[0] for line in part.read_text("utf-8").splitlines()]
        assert max(buckets.count(b) for b in buckets) <= K + 1
    # 4. resumed with K: same bytes as the uninterrupted build
    result = _build(corpus, out, tokenizer_path, dropped_samples=K, workers=2)
    assert result.shards_reused == 10
    assert (out / DROPPED_SAMPLES_FILE).read_bytes() == (sampled / DROPPED_SAMPLES_FILE).read_bytes()
    assert result.manifest_id == Manifest(sampled).manifest_id
    assert not workspace.exists()


def test_extra_files_are_written_atomically_and_names_are_checked(sampled, tmp_path):
    m = Manifest(sampled)
    tables = [m.documents(s.shard) for s in m.shards]
    out = write_manifest_dir(tmp_path / "copy", m.info, m.shards, tables, extra_files={"notes.txt": b"hello"})
    assert (out / "notes.txt").read_bytes() == b"hello"
    assert (out / SHARDS_FILE).read_bytes() == (sampled / SHARDS_FILE).read_bytes()
    for bad in (MANIFEST_FILE, "../escape.txt", "sub/dir.txt", ".hidden"):
        with pytest.raises(ValueError, match="plain file name"):
            write_manifest_dir(tmp_path / "bad", m.info, m.shards, tables, extra_files={bad: b"x"})
    assert not (tmp_path / "bad").exists()
    assert not (tmp_path / "escape.txt").exists()


def test_a_negative_sample_size_is_a_user_error():
    with pytest.raises(InvalidValue, match="per_reason"):
        DroppedSamples(-1)


def test_the_build_is_the_one_producer_of_dropped_samples():
    """The pass's second, unused path (``DocumentPass(dropped_sink=)`` feeding ``DroppedSamples.add``, merged
    with ``merge``/``merge_all``) is gone; the whole surface: only manifests/ offers samples to a
    collector."""
    import ast
    import inspect

    from test_code_shape import ROOT, production_files

    from elm_data.pipeline import dropped
    from elm_data.pipeline.document_pass import DocumentPass

    assert "dropped_sink" not in inspect.signature(DocumentPass).parameters
    assert not {"add", "merge"} & set(vars(DroppedSamples)) and not hasattr(dropped, "merge_all")
    offering = set()
    for path in production_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "offer"
            ):
                offering.add(path.relative_to(ROOT).parts[0])
    assert offering <= {"manifests"}, offering
