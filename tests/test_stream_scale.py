"""The stream at pretraining scale: the same global batches on any ranks × workers dividing P, resume across
layouts, each shard byte read once (counted by a stand-in remote filesystem), blocks verified before use,
and resume that does not walk the past."""

from __future__ import annotations

import dataclasses
import hashlib
from itertools import islice
from pathlib import Path

import counting_fs
import pytest
import yaml

from elm_data.manifests.build import build_manifest
from elm_data.manifests.manifest import Manifest
from elm_data.pipeline.stream import StreamIntegrityError, StreamLoader, TokenStream, merge_states
from elm_data.pipeline.stream.consumed import expected_natural_pass
from elm_data.pipeline.stream.partition import PartitionWalk

P, SEQ_LEN, BATCH = 4, 128, 4
LAYOUTS = [(1, 0), (1, 2), (2, 1), (2, 2), (4, 1)]


def _mixture_at(sample_dir: Path, root: str, out: Path) -> Path:
    mixture = yaml.safe_load((sample_dir / "mixture.yaml").read_text())
    for entry in mixture["sources"]:
        entry["shards"] = [f"{root}/{s}" for s in entry["shards"]]
    out.mkdir(parents=True, exist_ok=True)
    (out / "mixture.yaml").write_text(yaml.safe_dump(mixture, sort_keys=False))
    return out / "mixture.yaml"


@pytest.fixture(scope="module")
def small_blocks(sample_dir, tokenizer_path, tmp_path_factory) -> Path:
    """The sample corpus with 16 KiB JSONL blocks, so that shards split across partitions."""
    out = tmp_path_factory.mktemp("small_blocks")
    mixture = _mixture_at(sample_dir, str(sample_dir), out)
    build_manifest(mixture, out / "manifest", tokenizer=tokenizer_path, block_bytes=16 << 10)
    return out / "manifest"


@pytest.fixture(scope="module")
def llama_small_blocks(sample_dir, llama_tokenizer_path, tmp_path_factory) -> Path:
    """``small_blocks`` counted with LLaMA-2 (the block layout two tests were written for)."""
    out = tmp_path_factory.mktemp("llama_small_blocks")
    build_manifest(
        _mixture_at(sample_dir, str(sample_dir), out),
        out / "m",
        tokenizer=llama_tokenizer_path,
        block_bytes=16 << 10,
    )
    return out / "m"


@pytest.fixture(scope="module")
def remote(sample_dir, tokenizer_path, tmp_path_factory) -> tuple[Path, Path]:
    """(manifest, read log) of the sample corpus served by ``counting://`` (a stand-in for hf:// or s3://)."""
    out = tmp_path_factory.mktemp("remote")
    counting_fs.upload(sample_dir, "counting://corpus")
    mixture = _mixture_at(sample_dir, "counting://corpus", out)
    build_manifest(mixture, out / "manifest", tokenizer=tokenizer_path, block_bytes=16 << 10)
    return out / "manifest", out / "reads.log"


def stream(manifest, tokenizer, rank=0, world=1, **kw) -> TokenStream:
    kw = {"batch_size": BATCH, "seq_len": SEQ_LEN, "weights": "natural", "partitions": P} | kw
    return TokenStream(manifest, tokenizer=tokenizer, rank=rank, world_size=world, **kw)


def fingerprint(batch) -> tuple:
    ids = hashlib.sha256(batch["input_ids"].numpy().tobytes()).hexdigest()
    return batch["batch_index"], ids, str(batch["spans"]), str(sorted(batch["tokens_by_source"].items()))


def global_batches(manifest, tokenizer, ranks, workers, **kw) -> dict[int, tuple]:
    out = {}
    for rank in range(ranks):
        loader = StreamLoader(
            stream(manifest, tokenizer, rank, ranks, **kw),
            num_workers=workers,
            multiprocessing_context="fork" if workers else None,
        )
        for batch in loader:
            assert batch["batch_index"] % ranks == rank
            out[batch["batch_index"]] = fingerprint(batch)
    return out


@pytest.mark.slow
def test_every_layout_dividing_p_gives_the_same_global_batches(small_blocks, tokenizer):
    reference = global_batches(small_blocks, tokenizer, 1, 0)
    assert sorted(reference) == list(range(len(reference))) and len(reference) > 4 * P
    for ranks, workers in LAYOUTS[1:]:
        assert global_batches(small_blocks, tokenizer, ranks, workers) == reference, (ranks, workers)


def test_a_layout_that_does_not_divide_p_is_an_error(small_blocks, tokenizer):
    from elm_data.pipeline.stream import PlanError

    with pytest.raises(PlanError, match="do not divide"):
        StreamLoader(stream(small_blocks, tokenizer, 0, 3))
    with pytest.raises(PlanError, match="do not divide"):
        StreamLoader(stream(small_blocks, tokenizer, 0, 2), num_workers=3)


@pytest.mark.slow
def test_resume_switching_from_2x2_to_1x4_is_bit_exact(llama_small_blocks, llama_tokenizer):
    kw = {"weights": None, "epochs": None}  # the manifest's weights: endless, sources restart
    steps, cut = 14, 6
    reference = list(islice(StreamLoader(stream(llama_small_blocks, llama_tokenizer, **kw)), steps))
    states, head = [], []
    for rank in range(2):  # two ranks in lockstep, two workers each, for `cut` steps
        loader = StreamLoader(
            stream(llama_small_blocks, llama_tokenizer, rank, 2, **kw),
            num_workers=2,
            multiprocessing_context="fork",
        )
        head += list(islice(loader, cut // 2))
        states.append(loader.state_dict())
    state = merge_states(states)
    resumed = stream(llama_small_blocks, llama_tokenizer, **kw)
    resumed = StreamLoader(resumed, num_workers=4, multiprocessing_context="fork")
    resumed.load_state_dict(state)
    tail = list(islice(resumed, steps - cut))
    got = sorted(head, key=lambda b: b["batch_index"]) + tail
    assert [fingerprint(b) for b in got] == [fingerprint(b) for b in reference]


# the fast tier's check of invariant 7: each shard byte read once in total, however many readers
@pytest.mark.slow
def test_each_shard_byte_is_read_once_from_remote_storage_at_2x2(remote, tokenizer):
    manifest_dir, log = remote
    corpus = sum(r.size_bytes for r in Manifest(manifest_dir).shards)
    counting_fs.CountingFileSystem.log_path = str(log)
    try:
        log.unlink(missing_ok=True)
        got = global_batches(manifest_dir, tokenizer, 2, 2)
    finally:
        counting_fs.CountingFileSystem.log_path = "/dev/null"
    read = sum(counting_fs.bytes_read(log).values())
    assert got  # the stream ran, through forked workers that logged their reads
    assert read <= 1.05 * corpus, f"{read} bytes read for a {corpus}-byte corpus ({read / corpus:.3f}x)"
    assert read >= 0.5 * corpus  # and the count is real: most of the corpus holds kept documents


@pytest.mark.slow  # builds the corpus again behind counting:// (test_stream checks the natural pass quickly)
def test_natural_pass_over_remote_blocks_equals_the_manifest(remote, tokenizer):
    manifest_dir, _ = remote
    loader = StreamLoader(stream(manifest_dir, tokenizer))
    for _ in loader:
        pass
    expected = {k: v for k, v in expected_natural_pass(Manifest(manifest_dir).shards).items() if v}
    assert loader.consumed.to_dict() == expected


@pytest.mark.llama  # the block layout of LLaMA-2's counts
def test_a_flipped_byte_stops_the_stream_before_any_document_of_its_block(
    llama_small_blocks, llama_tokenizer, tmp_path
):
    import shutil

    from test_stream import rewrite_manifest

    manifest = Manifest(llama_small_blocks)
    rec = next(r for r in manifest.shards if r.format == "jsonl" and manifest.block_counts.count(r.shard) > 2)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    moved = corpus / Path(rec.uri).name
    shutil.copy(rec.uri, moved)
    copy = rewrite_manifest(
        llama_small_blocks,
        tmp_path / "m",
        records=lambda recs: [
            dataclasses.replace(r, uri=str(moved) if r.shard == rec.shard else r.uri) for r in recs
        ],
    )
    block = manifest.blocks(rec.shard)[1]
    data = bytearray(moved.read_bytes())
    data[block["start"] + 3] ^= 0x20  # one bit of a byte inside block 1
    moved.write_bytes(bytes(data))
    fed: list[int] = []
    with pytest.raises(StreamIntegrityError, match=r"\(block 1\) have sha256 .*refusing"):
        for batch in StreamLoader(stream(copy, llama_tokenizer)):
            fed += [s["index"] for spans in batch["spans"] for s in spans if s["shard_sha256"] == rec.sha256]
    first, end = block["first_record"], block["first_record"] + block["records"]
    assert not [i for i in fed if first <= i < end]  # nothing of the damaged block was fed
    assert [i for i in fed if i < first]  # while the blocks before it were


@pytest.mark.llama  # the partitions fit LLaMA-2's counts
@pytest.mark.slow
def test_resume_reads_only_the_ledger_at_the_cursor(llama_small_blocks, llama_tokenizer, monkeypatch):
    """A late cursor resumes after reading the ledgers of the units it draws next, not of the past
    (counted)."""
    plan = stream(llama_small_blocks, llama_tokenizer, weights=None, epochs=None).plan()
    walk = PartitionWalk(plan, 0)
    late = next(islice(walk.batches(walk.start()), 3000, None))[1]  # the cursor of batch 3001: epochs deep
    rows_read: list[int] = []
    original = Manifest.block_documents

    def counting(self, shard, block, parquet=None):
        table = original(self, shard, block, parquet)
        rows_read.append(table.num_rows)
        return table

    monkeypatch.setattr(Manifest, "block_documents", counting)
    resumed = next(walk.batches(late))[0]
    resume_rows = sum(rows_read)
    rows_read.clear()
    walked = next(islice(walk.batches(walk.start()), 3001, None))[0]
    assert resumed == walked and resumed.batch == 3001 * P  # the same batch, documents and positions
    most = max(b["records"] for r in plan.manifest.shards for b in plan.manifest.blocks(r.shard))
    assert resume_rows <= 2 * most * len(plan.sources)
    assert sum(rows_read) > 20 * resume_rows  # walking there read the past; resuming did not
