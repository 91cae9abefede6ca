"""Building a manifest from the sample corpus: layout, accounting, determinism, resume, bad input."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import threading
import zlib
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from elm_data.core.errors import InvalidValue, NotFound
from elm_data.manifests.build import DAMAGE_REASONS, BuildFailed, build_manifest, load_manifest
from elm_data.manifests.cli import build_manifest as build_command
from elm_data.manifests.identity import manifest_id_of_info, merkle_root_of
from elm_data.manifests.manifest import MANIFEST_FILE, Manifest, data_files, ledger_path
from elm_data.manifests.workspace import workspace_path_for


def _same_bytes(a: Path, b: Path) -> bool:
    return data_files(a) == data_files(b) and all(
        (a / f).read_bytes() == (b / f).read_bytes() for f in data_files(a)
    )


def _edit_mixture(mixture: Path, **changes) -> None:
    raw = yaml.safe_load(mixture.read_text())
    raw.update(changes)
    mixture.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.fixture
def corpus_copy(sample_dir, tmp_path) -> Path:
    """A private copy of the sample corpus that a test may damage."""
    return Path(shutil.copytree(sample_dir, tmp_path / "corpus"))


def test_manifest_accounts_for_every_record(sample_manifest, sample_dir, tokenizer):
    m = Manifest(sample_manifest)
    info, shards = m.info, m.shards
    entries = yaml.safe_load((sample_dir / "mixture.yaml").read_text())["sources"]
    subsets = {f"{e['source']}/{e['subset']}" for e in entries}
    assert {s.key for s in shards} == subsets
    assert [s.shard for s in shards] == list(range(len(shards)))
    assert info["tokenizer"]["sha256"] == tokenizer.sha256
    assert info["count_method"] == "exact:sentencepiece"
    for s in shards:
        assert s.docs_read == s.docs_kept + s.docs_filtered + s.docs_rejected > 0
        assert s.docs_filtered == sum(s.filtered_by_reason.values())
        assert s.docs_rejected == sum(s.rejected_by_reason.values())
        docs = m.documents(s.shard).to_pylist()
        assert sum(d["count"] for d in docs) == s.docs_read
        assert sum(d["tokens"] for d in docs) == s.tokens
        assert sum(d["chars"] for d in docs if d["status"] == "kept") == s.chars
        assert [d["index"] for d in docs] == sorted(d["index"] for d in docs)
        assert all(d["tokens"] == 0 for d in docs if d["status"] != "kept")
        assert all(d["tokens"] >= 256 for d in docs if d["status"] == "kept")
    totals = info["totals"]
    assert totals["tokens"] == sum(s.tokens for s in shards) > 0
    assert totals["docs_read"] == totals["docs_kept"] + totals["docs_filtered"] + totals["docs_rejected"]
    assert info["merkle_root"] == merkle_root_of(shards)
    assert info["manifest_id"] == manifest_id_of_info(info, shards)
    counts = Manifest(sample_manifest).block_counts
    for shard in shards:  # one ledger per shard, one row group per block
        assert pq.ParquetFile(ledger_path(sample_manifest, shard.shard)).num_row_groups == counts.count(
            shard.shard
        )
    assert not Path(workspace_path_for(str(sample_manifest))).exists()


@pytest.mark.slow
def test_two_workers_give_identical_bytes_and_id(sample_dir, tokenizer_path, sample_manifest, tmp_path):
    out = tmp_path / "w2"
    result = build_manifest(sample_dir / "mixture.yaml", out, tokenizer=tokenizer_path, workers=2)
    assert result.manifest_id == Manifest(sample_manifest).manifest_id
    assert _same_bytes(out, sample_manifest)


@pytest.mark.slow  # two more builds (test_two_workers_give_identical_bytes_and_id is the quick id check)
def test_id_follows_content_and_config_not_location(corpus_copy, tokenizer_path, sample_manifest, tmp_path):
    moved = build_manifest(corpus_copy / "mixture.yaml", tmp_path / "moved", tokenizer=tokenizer_path)
    original = Manifest(sample_manifest)
    assert moved.manifest_id == original.manifest_id  # a mirror elsewhere keeps the id...
    assert moved.merkle_root != original.info["merkle_root"]  # ...while the Merkle root commits to the URIs

    _edit_mixture(corpus_copy / "mixture.yaml", filters={"min_characters": 200, "min_tokens": 1024})
    stricter = build_manifest(corpus_copy / "mixture.yaml", tmp_path / "stricter", tokenizer=tokenizer_path)
    assert stricter.manifest_id != original.manifest_id
    # many sample docs have < 1024 tokens
    assert stricter.totals["docs_kept"] < original.info["totals"]["docs_kept"]


@pytest.mark.slow
def test_resume_after_interruption_reuses_committed_shards(
    sample_dir, tokenizer_path, sample_manifest, tmp_path
):
    out = tmp_path / "resumed"
    workspace = Path(workspace_path_for(str(out)))

    class Killed(Exception):
        pass

    def die_after_five(outcome):
        if outcome.shard == 4:
            raise Killed

    with pytest.raises(Killed):
        build_manifest(
            sample_dir / "mixture.yaml", out, tokenizer=tokenizer_path, on_shard_done=die_after_five
        )
    # nothing looks like a manifest; the workspace holds exactly the five committed shards
    assert not out.exists()
    assert not (workspace / MANIFEST_FILE).exists()
    with pytest.raises(NotFound, match="interrupted build"):
        load_manifest(out)
    committed = sorted(workspace.glob("shard-*.json"))
    assert [p.name for p in committed] == [f"shard-{i:05d}.json" for i in range(5)]
    stamps = {p: p.stat().st_mtime_ns for p in workspace.glob("shard-*.*")}

    seen = []

    def check_untouched(outcome):
        seen.append((outcome.shard, outcome.reused))
        for path, stamp in stamps.items():
            assert path.stat().st_mtime_ns == stamp, f"{path.name} was rewritten"

    result = build_manifest(
        sample_dir / "mixture.yaml", out, tokenizer=tokenizer_path, workers=2, on_shard_done=check_untouched
    )
    assert [reused for _, reused in seen] == [True] * 5 + [False] * (len(seen) - 5)
    assert result.shards_reused == 5
    assert result.manifest_id == Manifest(sample_manifest).manifest_id
    assert _same_bytes(out, sample_manifest)
    assert not workspace.exists()


# a second build and two whole streams (test_sources_readers reads a remote shard once quickly)
@pytest.mark.slow
def test_remote_shards_are_fetched_once_and_stream_like_local_ones(
    sample_dir, tokenizer_path, tokenizer, sample_manifest, tmp_path, monkeypatch
):
    """memory:// stands in for hf:// / s3://: one transfer per shard serves its hash and its read."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    from elm_data.pipeline.stream import StreamLoader, TokenStream

    mixture = yaml.safe_load((sample_dir / "mixture.yaml").read_text())
    root = "memory://elm-data-tests/remote"
    for path in sample_dir.rglob("*"):
        if path.is_file() and path.name != "mixture.yaml":
            with fsspec.open(f"{root}/{path.relative_to(sample_dir).as_posix()}", "wb") as f:
                f.write(path.read_bytes())
    for entry in mixture["sources"]:
        entry["shards"] = [f"{root}/{s}" for s in entry["shards"]]
    (tmp_path / "mixture.yaml").write_text(yaml.safe_dump(mixture, sort_keys=False))

    opens: Counter = Counter()
    real_open = MemoryFileSystem._open
    monkeypatch.setattr(
        MemoryFileSystem,
        "_open",
        lambda self, path, *a, **kw: opens.update([path]) or real_open(self, path, *a, **kw),
    )
    remote = build_manifest(
        tmp_path / "mixture.yaml", tmp_path / "remote", tokenizer=tokenizer_path, workers=1
    )
    records = Manifest(tmp_path / "remote").shards
    assert remote.manifest_id == Manifest(sample_manifest).manifest_id  # same bytes, same id
    assert all(r.uri.startswith("memory://") for r in records)
    assert sorted(opens) == sorted(fsspec.core.url_to_fs(r.uri)[1] for r in records)
    assert set(opens.values()) == {1}  # fetched once per shard: not once to hash and again to read

    kw = {"batch_size": 4, "seq_len": 128, "weights": "natural", "tokenizer": tokenizer}
    streamed = list(StreamLoader(TokenStream(tmp_path / "remote", **kw)))
    local = list(StreamLoader(TokenStream(sample_manifest, **kw)))
    assert [b["input_ids"].tolist() for b in streamed] == [b["input_ids"].tolist() for b in local]
    assert [b["spans"] for b in streamed] == [b["spans"] for b in local]


@pytest.mark.slow  # an interrupted build, a changed shard and a second build
def test_shard_changed_since_interrupted_build_is_reported(corpus_copy, tokenizer_path, tmp_path):
    out = tmp_path / "m"

    def die_after_two(outcome):
        if outcome.shard == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_manifest(
            corpus_copy / "mixture.yaml", out, tokenizer=tokenizer_path, on_shard_done=die_after_two
        )
    first = json.loads((Path(workspace_path_for(str(out))) / "shard-00000.json").read_text())["record"]["uri"]
    with open(first, "ab") as f:
        f.write(b"\0")
    with pytest.raises(BuildFailed) as failed:
        build_manifest(corpus_copy / "mixture.yaml", out, tokenizer=tokenizer_path)
    assert [uri for uri, _ in failed.value.failures] == [first]
    assert "changed" in failed.value.failures[0][1]
    assert not out.exists()


# a build of the whole copy that fails at its end (test_unreadable_shards_... is the quick one)
@pytest.mark.slow
def test_missing_shard_fails_naming_it_and_keeps_the_rest(corpus_copy, tokenizer_path, tmp_path):
    raw = yaml.safe_load((corpus_copy / "mixture.yaml").read_text())
    raw["sources"][1]["shards"] = list(raw["sources"][1]["shards"]) + ["redpajama/arxiv/vanished.jsonl"]
    (corpus_copy / "mixture.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "m"
    result = CliRunner().invoke(
        build_command, [str(corpus_copy / "mixture.yaml"), "--out", str(out), "--tokenizer", tokenizer_path]
    )
    assert result.exit_code != 0
    assert "vanished.jsonl" in result.output and "not found" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()
    # every other shard was counted and committed for the next run
    workspace = Path(workspace_path_for(str(out)))
    n_shards = sum(1 for _ in workspace.glob("shard-*.parquet"))
    assert n_shards == len(list(workspace.glob("shard-*.json"))) - 1  # minus the one .error.json


def _complete_lines_before_break(data: bytes) -> int:
    """Independent count: lines that a streaming gzip decoder gets out of a truncated file."""
    out = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
    return out.count(b"\n")


def test_truncated_gzip_fails_the_build_unless_accepted_then_counts_the_break(
    sample_dir, tokenizer_path, tmp_path
):
    shard = sorted((sample_dir / "dolma" / "v1_6" / "pes2o").glob("*.json.gz"))[0]
    data = shard.read_bytes()
    assert len(gzip.decompress(data).splitlines()) > 3
    cut = data[: len(data) * 2 // 3]
    bad = tmp_path / "corpus" / "pes2o-truncated.json.gz"
    bad.parent.mkdir()
    bad.write_bytes(cut)
    mixture = tmp_path / "corpus" / "mixture.yaml"
    mixture.write_text(
        yaml.safe_dump({"sources": [{"source": "dolma", "subset": "pes2o", "shards": [bad.name]}]})
    )

    with pytest.raises(
        BuildFailed, match=r"pes2o-truncated\.json\.gz: damaged shard \(truncated_stream: 1\)"
    ):
        build_manifest(mixture, tmp_path / "m", tokenizer=tokenizer_path)
    assert not (tmp_path / "m").exists()  # nothing that looks like a manifest

    result = build_manifest(mixture, tmp_path / "m", tokenizer=tokenizer_path, accept_damaged=True)
    assert result.shards_reused == 1  # the damaged shard's count was committed; accepting it needs no recount
    (record,) = Manifest(tmp_path / "m").shards
    assert record.rejected_by_reason == {"truncated_stream": 1}
    assert record.docs_kept + record.docs_filtered == _complete_lines_before_break(cut)
    assert record.docs_read == record.docs_kept + record.docs_filtered + 1
    assert result.totals["rejected_by_reason"] == {"truncated_stream": 1}
    rejected = [d for d in Manifest(tmp_path / "m").documents(0).to_pylist() if d["status"] == "rejected"]
    assert [(d["reason"], d["count"]) for d in rejected] == [("truncated_stream", 1)]


def test_no_tokenizer_is_a_clear_error(sample_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("ELM_DATA_TOKENIZER", raising=False)
    # nothing cached by earlier tests either
    monkeypatch.setenv("ELM_DATA_CACHE", str(tmp_path / "empty-cache"))
    result = CliRunner().invoke(
        build_command, [str(sample_dir / "mixture.yaml"), "--out", str(tmp_path / "m")]
    )
    assert result.exit_code != 0
    assert "No LLaMA tokenizer given" in result.output and "--tokenizer" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "m").exists()


def test_refuses_to_replace_a_directory_that_is_not_a_manifest(sample_dir, tokenizer_path, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        build_manifest(sample_dir / "mixture.yaml", precious, tokenizer=tokenizer_path)
    assert (precious / "notes.txt").read_text() == "keep me"


_KILLABLE_BUILD = """
import sys, time
from elm_data.manifests.build import build_manifest

def stall(outcome):
    if outcome.shard == 2:
        print("stalled", flush=True)
        time.sleep(600)

build_manifest(sys.argv[1], sys.argv[2], tokenizer=sys.argv[3], on_shard_done=stall)
"""


@pytest.mark.slow  # a build in a child process, killed, then a resumed build
def test_sigkilled_build_resumes_to_the_clean_result(sample_dir, tokenizer_path, sample_manifest, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLABLE_BUILD, str(sample_dir / "mixture.yaml"), str(out), tokenizer_path],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    watchdog = threading.Timer(180, proc.kill)  # a child that never stalls must not hang the suite
    watchdog.start()
    try:
        assert proc.stdout.readline().strip() == "stalled"
    finally:
        watchdog.cancel()
        proc.kill()  # SIGKILL: no cleanup code runs
        proc.wait(timeout=60)
    workspace = Path(workspace_path_for(str(out)))
    assert sorted(p.name for p in workspace.glob("shard-*.json")) == [f"shard-{i:05d}.json" for i in range(3)]
    assert not out.exists()

    result = build_manifest(sample_dir / "mixture.yaml", out, tokenizer=tokenizer_path)
    assert result.shards_reused == 3
    assert _same_bytes(out, sample_manifest)


def test_unreadable_shards_exit_non_zero_naming_each_path(tokenizer_path, tmp_path):
    from corrupt_files import write_corrupt_examples

    examples = write_corrupt_examples(tmp_path / "bad")
    damaged = [e for e in examples.values() if any(r in DAMAGE_REASONS for _, r, _ in e.rejections)]
    assert damaged, "the corrupt examples must include damaged shards"
    sources = [{"source": e.source, "subset": e.subset, "shards": [str(e.path)]} for e in damaged]
    mixture = tmp_path / "mixture.yaml"
    mixture.write_text(yaml.safe_dump({"sources": sources}))
    args = [str(mixture), "--out", str(tmp_path / "m"), "--tokenizer", tokenizer_path]
    result = CliRunner().invoke(build_command, args)
    assert result.exit_code != 0
    for e in damaged:
        assert str(e.path) in result.output
    assert not (tmp_path / "m").exists()
    accepted = CliRunner().invoke(build_command, [*args, "--accept-damaged"])
    assert accepted.exit_code == 0, accepted.output
    rejected = Counter()
    for record in Manifest(tmp_path / "m").shards:
        rejected.update(record.rejected_by_reason)
    assert set(rejected) & set(DAMAGE_REASONS)


@pytest.mark.parametrize(
    ("setting", "needle"), [({"runner": "nope"}, "runner"), ({"dropped_samples": -1}, "dropped_samples")]
)
def test_bad_build_arguments_and_a_missing_manifest_are_user_errors(setting, needle, tmp_path):
    with pytest.raises(InvalidValue, match=needle):
        build_manifest(tmp_path / "mixture.yaml", tmp_path / "out", **setting)
    with pytest.raises(NotFound, match="no such manifest directory"):
        load_manifest(tmp_path / "nowhere")
