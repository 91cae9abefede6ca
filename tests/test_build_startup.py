"""The build's own cost beyond SentencePiece (issue 25): what `build manifest` imports, how its workers start,
how shards are handed out, and the collector while a shard is counted. None of it changes a manifest byte
(``test_manifest_build.py``: 1 vs 2 workers; ``test_beam.py``: Beam vs local).
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import pytest

from elm_data.manifests import build as build_module
from elm_data.manifests import shard_work
from elm_data.manifests.build import _groups, build_manifest, local_size, plan_shards
from elm_data.manifests.manifest import Manifest
from elm_data.manifests.mixture import MixtureConfig
from elm_data.manifests.shard_work import PassSpec, count_shard
from elm_data.pipeline.tokenizer import LlamaTokenizer
from elm_data.sources.blocks import index_blocks
from elm_data.sources.readers import shard_format_of

# Modules a plain build (no dedup, no NFC fixing) has no use for: pandas (which pyarrow imports on its own at
# its first list conversion, ~0.2 CPU-s), ftfy (filters.nfc_normalization only), the dedup step and the audits
# it brings (filters.dedup only), pyarrow's compute functions (a cast loads them) and dataset layer
# (pq.read_table), torch.
UNUSED = (
    "pandas",
    "ftfy",
    "elm_data.manifests.dedup_filter",
    "elm_data.manifests.duplicates",
    "pyarrow.compute",
    "pyarrow.dataset",
    "torch",
)

# every way a local build runs: in this process, in worker processes, sampling what it drops
BUILD_ARGS = {
    "one process": ["--workers", "1"],
    "two workers": ["--workers", "2"],
    "dropped samples": ["--workers", "1", "--dropped-samples", "2"],
}


@pytest.mark.parametrize(
    "way",
    [
        "one process",
        pytest.param("two workers", marks=pytest.mark.slow),
        pytest.param("dropped samples", marks=pytest.mark.slow),
    ],
)
def test_the_build_command_imports_nothing_it_does_not_use(sample_dir, tokenizer_path, tmp_path, way):
    args = ["build", "manifest", str(sample_dir / "mixture.yaml"), "--out", str(tmp_path / "m")]
    args += ["--tokenizer", tokenizer_path, *BUILD_ARGS[way]]
    script = (
        "import sys, json\nfrom click.testing import CliRunner\nfrom elm_data.cli import cli\n"
        f"r = CliRunner().invoke(cli, {args!r})\nassert r.exit_code == 0, r.output\n"
        f"print(json.dumps(sorted(m for m in {UNUSED!r} if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == [], f"build manifest ({way}) imported them"
    assert (tmp_path / "m" / "manifest.json").exists()


def _tasks(sample_dir):
    return plan_shards(MixtureConfig.load(sample_dir / "mixture.yaml"))


def test_local_shards_are_handed_out_one_at_a_time_largest_first(sample_dir):
    tasks = _tasks(sample_dir)
    sizes = [local_size(t.uri) for t in tasks]
    assert all(isinstance(size, int) and size > 0 for size in sizes) and len(set(sizes)) > 1
    groups = _groups(tasks, 2, sizes)
    assert all(len(group) == 1 for group in groups)
    handed = [group[0].shard for group in groups]
    assert sorted(handed) == [t.shard for t in tasks]  # each shard once
    assert [sizes[s] for s in handed] == sorted(sizes, reverse=True)
    ties = [s for s in handed if sizes.count(sizes[s]) > 1]  # equal sizes keep manifest order
    assert all(sizes[a] != sizes[b] or a < b for a, b in zip(ties, ties[1:], strict=False))


@pytest.mark.parametrize("unknown", ["every size", "one size"])
def test_remote_shards_go_in_consecutive_groups_that_fetch_ahead(sample_dir, unknown):
    tasks = _tasks(sample_dir)[:12]
    sizes = [None] * len(tasks) if unknown == "every size" else [100] * (len(tasks) - 1) + [None]
    groups = _groups(tasks, 2, sizes)
    assert [t.shard for group in groups for t in group] == [t.shard for t in tasks]
    assert [len(group) for group in groups] == [3, 3, 3, 3]  # up to 4 a group, ~2 groups a worker
    assert _groups(tasks, 2) == groups  # sizes not given: the same


def test_a_remote_or_missing_shard_has_no_local_size(tmp_path):
    assert local_size("s3://bucket/shard.jsonl") is None
    assert local_size(str(tmp_path / "gone.jsonl")) is None
    (tmp_path / "here.jsonl").write_bytes(b'{"text": "x"}\n')
    assert local_size(str(tmp_path / "here.jsonl")) == 14


@pytest.mark.slow  # a two-worker build
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers fork only on Linux")
def test_workers_fork_with_the_loaded_pass_instead_of_unpickling_it(
    sample_dir, tokenizer_path, sample_manifest, tmp_path, monkeypatch
):
    def not_shipped(self):
        raise AssertionError("the tokenizer was pickled for a worker")

    monkeypatch.setattr(LlamaTokenizer, "__getstate__", not_shipped)
    result = build_manifest(sample_dir / "mixture.yaml", tmp_path / "w2", tokenizer=tokenizer_path, workers=2)
    assert result.manifest_id == Manifest(sample_manifest).manifest_id
    assert build_module._start_method() == "fork"


@pytest.mark.parametrize("enabled_before", [True, False])
def test_a_shard_is_counted_with_the_cyclic_collector_paused(
    sample_dir, tokenizer, monkeypatch, enabled_before
):
    mixture = MixtureConfig.load(sample_dir / "mixture.yaml")
    task = plan_shards(mixture)[0]
    fmt = shard_format_of(task.uri, task.source, task.subset)
    sha256, size, blocks = index_blocks(task.uri, fmt, task.block_bytes)
    document_pass = PassSpec(mixture.filters, mixture.sequences, tokenizer).build()
    seen = []
    tally = shard_work.tally_shard

    def spy(*args, **kwargs):
        seen.append(gc.isenabled())
        return tally(*args, **kwargs)

    monkeypatch.setattr(shard_work, "tally_shard", spy)
    was = gc.isenabled()
    (gc.enable if enabled_before else gc.disable)()
    try:
        record, table, _ = count_shard(task, document_pass, sha256, size, blocks=blocks, fmt=fmt)
        after = gc.isenabled()
    finally:
        (gc.enable if was else gc.disable)()
    assert seen == [False] and after == enabled_before  # paused while counting, then as it was
    assert record.docs_read == table.num_rows > 0


def _sample_documents(sample_dir, limit: int = 400) -> list:
    from elm_data.sources.document import Document
    from elm_data.sources.readers import read_shard

    docs = []
    for task in _tasks(sample_dir):
        docs += [d for d in read_shard(task.uri, task.source, task.subset) if isinstance(d, Document)]
    return docs[:limit]


def test_the_tokenizer_gives_the_same_ids_as_arrays_and_keeps_knowing_it_when_pickled(tokenizer):
    import pickle

    texts = ["", "Hello world", "ünïcödé ✓ " * 40, "x" * 5000]
    lists = tokenizer.encode_batch(texts)
    assert tokenizer.returns_arrays  # this machine's SentencePiece has return_type="numpy"
    arrays = tokenizer.encode_batch(texts, arrays=True)
    assert [a.dtype.name for a in arrays] == ["int32"] * len(texts)
    assert [a.tolist() for a in arrays] == lists
    assert pickle.loads(pickle.dumps(tokenizer)).returns_arrays


def test_a_sentencepiece_without_array_output_gives_lists(tokenizer, monkeypatch):
    import copy

    old = copy.copy(tokenizer)
    real = old.sp

    class Older:  # refuses the keyword, as SentencePiece releases before return_type= do
        def encode(self, texts, num_threads=1, **kwargs):
            if kwargs:
                raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
            return real.encode(texts, num_threads=num_threads)

    from elm_data.pipeline.tokenizer import _returns_arrays

    assert _returns_arrays(Older()) is False
    old.sp, old.returns_arrays = Older(), False
    assert old.encode_batch(["Hello world"], arrays=True) == tokenizer.encode_batch(["Hello world"])


@pytest.mark.parametrize("mode", ["packed", "corenet"])
def test_the_pass_with_ids_as_arrays_decides_and_counts_as_with_lists(sample_dir, tokenizer, mode):
    from elm_data.pipeline.config import FilterConfig, SequenceConfig
    from elm_data.pipeline.document_pass import DocumentPass

    filters = FilterConfig.from_dict({"min_characters": 200, "min_tokens": 64})
    sequences = SequenceConfig.from_dict({"mode": mode, "seq_len": 256, "corenet_words_per_piece": 120})
    docs = _sample_documents(sample_dir)
    as_lists = DocumentPass(filters, sequences, tokenizer).process(docs)
    as_arrays = DocumentPass(filters, sequences, tokenizer, ids_as_arrays=True).process(docs)
    outcomes = {(r.status, r.reason) for r in as_lists}
    assert {("kept", None)} < outcomes  # both buckets on this surface
    for a, b in zip(as_lists, as_arrays, strict=True):
        decided = (a.status, a.reason, a.piece_reasons, a.tokens, len(a.segments))
        assert decided == (b.status, b.reason, b.piece_reasons, b.tokens, len(b.segments))
        assert [list(s) for s in a.segments] == [s.tolist() for s in b.segments]
    assert PassSpec(filters, sequences, tokenizer).build().ids_as_arrays  # the build's pass


def _cores(workers: int, items: int, usable: int = 2):
    import multiprocessing as mp

    from elm_data.manifests.build import SharedCores

    ctx = mp.get_context("spawn")  # Values only; no process starts
    return SharedCores(workers, ctx.Value("i", items), ctx.Value("i", 0), usable)


def test_a_worker_gets_the_cores_of_the_finished_ones_once_nothing_waits():
    cores = _cores(workers=2, items=3)
    with cores.counting():  # worker A takes item 1; 2 wait
        with cores.counting():  # worker B takes item 2; 1 waits
            assert cores.threads() == 1
        with cores.counting():  # B takes the last one while A still counts: none waits, both busy
            assert (cores.queued.value, cores.busy.value, cores.threads()) == (0, 2, 1)
        assert cores.threads() == 2  # B done, nothing left: A's batches on both cores
    assert (cores.queued.value, cores.busy.value) == (0, 0)
    four = _cores(workers=4, items=0, usable=4)
    with four.counting(), four.counting(), four.counting():
        assert four.threads() == 1  # 4 cores over 3 counting workers
    with four.counting():
        assert four.threads() == 4
    assert _cores(workers=8, items=0, usable=2).threads() == 2  # never more threads than usable cores


def test_the_core_sharing_pass_sets_each_batchs_threads(sample_dir, tokenizer):
    from elm_data.manifests.build import CoreSharingPass

    mixture = MixtureConfig.load(sample_dir / "mixture.yaml")
    document_pass = PassSpec(mixture.filters, mixture.sequences, tokenizer).build(CoreSharingPass)
    cores = _cores(workers=2, items=1)
    document_pass.cores = cores
    seen = []
    real = tokenizer.encode_batch

    def spy(texts, num_threads=None, arrays=False):
        seen.append(num_threads)
        return real(texts, num_threads, arrays)

    tokenizer_encode = document_pass.tokenizer
    docs = _sample_documents(sample_dir, 40)
    try:
        tokenizer_encode.encode_batch = spy
        document_pass.process(docs)  # an item still waits
        with cores.counting():  # this worker took the last one; the other has finished
            document_pass.process(docs)
        cores.queued.value = 1  # an item waits again; the pass split as the stream runs it
        document_pass.encode(document_pass.prepare(docs).texts)
    finally:
        del tokenizer_encode.encode_batch
    assert seen == [1, 2, 1]
