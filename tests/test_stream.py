"""The training stream end to end on the sample corpus: real shards, real tokenizer, real DataLoader
workers."""

from __future__ import annotations

import dataclasses
import gc
import io
import json
import shutil
import weakref
from collections import defaultdict
from itertools import islice
from pathlib import Path

import pyarrow.compute as pc
import pytest
import torch
from click.testing import CliRunner

from elm_data.manifests.identity import seal
from elm_data.manifests.ledger_blocks import block_index
from elm_data.manifests.manifest import Manifest, write_manifest_dir
from elm_data.pipeline.stream import (
    PlanError,
    StreamIntegrityError,
    StreamLoader,
    TokenizerMismatch,
    TokenStream,
)
from elm_data.pipeline.stream.consumed import expected_natural_pass
from elm_data.pipeline.stream.partition import PartitionWalk
from elm_data.pipeline.stream.reading import DocumentFetcher, _OpenReader
from elm_data.pipeline.tokenizer import BOS_ID, EOS_ID, PAD_ID
from elm_data.sources.blocks import Block
from elm_data.sources.document import Document
from elm_data.sources.readers import read_shard

SEQ_LEN, BATCH = 128, 4


def make_stream(manifest_dir, tokenizer, **kw) -> TokenStream:
    kw = {"batch_size": BATCH, "seq_len": SEQ_LEN, "weights": "natural", "tokenizer": tokenizer} | kw
    return TokenStream(manifest_dir, **kw)


def same_batches(a: list[dict], b: list[dict]) -> bool:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x["batch_index"] == y["batch_index"]
        assert torch.equal(x["input_ids"], y["input_ids"])
        assert x["spans"] == y["spans"] and x["tokens_by_source"] == y["tokens_by_source"]
    return True


def rewrite_manifest(src: Path, dst: Path, *, info=None, records=None, documents=None) -> Path:
    """A self-consistent copy of a manifest with edited info / shard records / per-shard document tables
    (block index, id, Merkle root and totals recomputed, as a builder that counted differently would
    write)."""
    m = Manifest(src)
    new_info = info(dict(m.info)) if info else m.info
    new_records = records(list(m.shards)) if records else m.shards
    tables = [m.documents(r.shard) for r in m.shards]
    if documents:
        tables = documents(tables)
    for rec, table in zip(new_records, tables, strict=True):
        index = m.blocks(rec.shard)
        blocks = [Block(b["start"], b["end"], b["sha256"], b["first_record"], b["records"]) for b in index]
        rec.blocks = block_index(blocks, table)
    return write_manifest_dir(dst, seal(new_info, new_records), new_records, tables)


def first_planned_doc(stream: TokenStream):
    """The first document of the stream's global batch 0 (partition 0's first)."""
    walk = PartitionWalk(stream.plan(), 0)
    return next(walk.docs(walk.start()))[0]


@pytest.fixture(scope="module")
def natural_run(sample_manifest, tokenizer):
    stream = make_stream(sample_manifest, tokenizer)
    loader = StreamLoader(stream)
    return stream, loader, list(loader)


def test_natural_pass_consumes_what_the_manifest_kept(natural_run, sample_manifest):
    stream, loader, batches = natural_run
    expected = {k: v for k, v in expected_natural_pass(Manifest(sample_manifest).shards).items() if v}
    assert loader.consumed.to_dict() == expected  # invariant 2: kept tokens + BOS/EOS per kept document
    stats = loader.stats()
    assert stats["tokens"] == sum(expected.values()) and stats["discarded_tokens"] == 0
    partitions = stream.config.partitions
    # only each partition's final window is padded
    assert 0 <= stats["pad_tokens"] < partitions * (SEQ_LEN + 1)
    assert stats["sequences"] == sum(len(b["input_ids"]) for b in batches)
    assert [b["batch_index"] for b in batches] == list(range(len(batches)))
    assert [b["partition"] for b in batches] == [i % partitions for i in range(len(batches))]
    assert all(b["input_ids"].shape[1] == SEQ_LEN + 1 and b["input_ids"].dtype == torch.long for b in batches)
    for p in range(partitions):  # per partition: full batches, at most one short one, then empty ones
        sizes = [len(b["input_ids"]) for b in batches if b["partition"] == p]
        full = sizes.count(BATCH)
        tail = sizes[full:]
        assert sizes[:full] == [BATCH] * full and all(n < BATCH for n in tail) and set(tail[1:]) <= {0}


def test_packed_rows_hold_each_kept_document_once_as_bos_ids_eos(natural_run, sample_manifest, tokenizer):
    _, _, batches = natural_run
    manifest = Manifest(sample_manifest)
    framed: dict[tuple[str, int], list[tuple[int, int, list[int]]]] = defaultdict(list)
    for batch in batches:
        for row, spans in zip(batch["input_ids"].tolist(), batch["spans"], strict=True):
            if PAD_ID in row:  # padding only at the end (of the last row)
                assert set(row[row.index(PAD_ID) :]) == {PAD_ID}
            for s in spans:
                framed[(s["shard_sha256"], s["index"])].append(
                    (s["doc_start"], s["doc_end"], row[s["start"] : s["end"]])
                )
    kept = {
        (r.sha256, d["index"]): d
        for r in manifest.shards
        for d in manifest.documents(r.shard).to_pylist()
        if d["status"] == "kept"
    }
    assert set(framed) == set(kept)  # no missing, no extra documents
    by_sha = {r.sha256: r for r in manifest.shards}
    checked = 0
    for key, pieces in framed.items():
        pieces.sort()
        assert pieces[0][0] == 0 and all(a[1] == b[0] for a, b in zip(pieces, pieces[1:], strict=False))
        ids = [t for p in pieces for t in p[2]]
        assert len(ids) == kept[key]["tokens"] + 2 and ids[0] == BOS_ID and ids[-1] == EOS_ID
        if checked < 13 and key[1] % 3 == 0:  # re-read and re-tokenize some documents independently
            rec = by_sha[key[0]]
            doc = next(
                d for d in read_shard(rec.uri, rec.source, rec.subset, skip=key[1]) if isinstance(d, Document)
            )
            assert ids[1:-1] == tokenizer.encode(doc.text)
            checked += 1
    assert checked >= 5


def test_two_ranks_two_workers_reproduce_the_single_process_stream(natural_run, sample_manifest, tokenizer):
    _, _, single = natural_run
    merged = []
    for rank in range(2):
        stream = make_stream(sample_manifest, tokenizer, rank=rank, world_size=2)
        got = list(StreamLoader(stream, num_workers=2, multiprocessing_context="fork"))
        assert [b["batch_index"] for b in got] == list(range(rank, len(single), 2))
        merged += got
    merged.sort(key=lambda b: b["batch_index"])
    assert same_batches(merged, single)  # so no duplicate or missing document either


# three loaders, one with two workers (test_stream_items resumes with another worker count quickly)
@pytest.mark.slow
def test_resume_with_a_different_worker_count_is_bit_exact(sample_manifest, tokenizer):
    # weighted mode (the manifest's OpenELM weights): endless, sources restart
    uninterrupted_loader = StreamLoader(make_stream(sample_manifest, tokenizer, weights=None, epochs=None))
    uninterrupted = list(islice(uninterrupted_loader, 12))
    first = StreamLoader(
        make_stream(sample_manifest, tokenizer, weights=None, epochs=None),
        num_workers=2,
        multiprocessing_context="fork",
    )
    head = list(islice(first, 5))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # as the trainer's checkpoint loads it
    resumed = StreamLoader(make_stream(sample_manifest, tokenizer, weights=None, epochs=None), num_workers=0)
    resumed.load_state_dict(state)
    tail = list(islice(resumed, 7))
    assert same_batches(head + tail, uninterrupted)
    assert resumed.consumed == uninterrupted_loader.consumed and resumed.batches == 12
    # and iterating the same loader again continues where it stopped
    assert next(iter(resumed))["batch_index"] == 12


@pytest.mark.slow  # reads the whole stream, watching every reader it opens
def test_a_left_shard_is_released_without_the_cycle_collector(sample_manifest, tokenizer, monkeypatch):
    """Leaving a shard frees its view and reader (file, decompressor, buffers) at once, not at the next gc
    run."""
    # the verified view of each shard opened, and each block reader
    readers: list[tuple[int, weakref.ref]] = []
    open_view, read = DocumentFetcher._open_view, _OpenReader.read

    def recording_view(self, doc):
        opened = open_view(self, doc)
        readers.append((doc.shard, weakref.ref(opened.view)))
        return opened

    def recording_read(self, block, items):
        read(self, block, items)
        readers.append((self.shard, weakref.ref(items)))

    monkeypatch.setattr(DocumentFetcher, "_open_view", recording_view)
    monkeypatch.setattr(_OpenReader, "read", recording_read)
    stream = make_stream(sample_manifest, tokenizer, partitions=2)
    sources = len({r.key for r in stream.manifest.shards}) * 2  # one open reader per source per partition
    gc.collect()
    gc.disable()
    try:
        most_alive = 0
        for _ in StreamLoader(stream):
            most_alive = max(most_alive, sum(ref() is not None for _, ref in readers))
        alive_after = [shard for shard, ref in readers if ref() is not None]
    finally:
        gc.enable()
    assert len(readers) > sources  # the pass moved on from shards mid-stream
    # at most one open shard (a view and a block reader) per source at any time
    assert most_alive <= 2 * sources
    assert alive_after == []  # and none once the pass is over


def test_state_from_another_plan_is_refused(sample_manifest, tokenizer):
    state = StreamLoader(make_stream(sample_manifest, tokenizer)).state_dict()
    other = StreamLoader(make_stream(sample_manifest, tokenizer, seed=99))
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(state)


def test_tampered_shard_stops_the_stream(sample_manifest, sample_dir, tokenizer, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(sample_dir, corpus)
    copy = rewrite_manifest(
        sample_manifest,
        tmp_path / "manifest",
        records=lambda recs: [
            dataclasses.replace(r, uri=r.uri.replace(str(sample_dir), str(corpus))) for r in recs
        ],
    )
    stream = make_stream(copy, tokenizer)
    first = first_planned_doc(stream)
    assert next(iter(StreamLoader(stream)))["batch_index"] == 0  # the faithful copy streams
    record = stream.manifest.shards[first.shard]
    block = next(
        b
        for b in stream.manifest.blocks(first.shard)
        if b["first_record"] <= first.index < b["first_record"] + b["records"]
    )
    target = Path(record.uri)
    data = bytearray(target.read_bytes())
    data[(block["start"] + block["end"]) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(StreamIntegrityError, match=rf"shard {first.shard} .*{target.name}.*refusing"):
        next(iter(StreamLoader(make_stream(copy, tokenizer))))


def test_token_count_drift_stops_the_stream(sample_manifest, tokenizer, tmp_path):
    stream = make_stream(sample_manifest, tokenizer)
    first = first_planned_doc(stream)

    def bump(tables):
        t = tables[first.shard]
        tokens = pc.if_else(pc.equal(t["index"], first.index), pc.add(t["tokens"], 1), t["tokens"])
        tables[first.shard] = t.set_column(t.schema.get_field_index("tokens"), "tokens", tokens)
        return tables

    drifted = rewrite_manifest(sample_manifest, tmp_path / "drift", documents=bump)
    with pytest.raises(StreamIntegrityError, match=f"{first.doc_id}.*drift"):
        next(iter(StreamLoader(make_stream(drifted, tokenizer))))


def test_wrong_tokenizer_is_refused(sample_manifest, tokenizer, tmp_path):
    other = rewrite_manifest(
        sample_manifest,
        tmp_path / "m",
        info=lambda i: i | {"tokenizer": {"uri": i["tokenizer"]["uri"], "sha256": "0" * 64}},
    )
    with pytest.raises(TokenizerMismatch, match="0000000000"):
        make_stream(other, tokenizer)
    with pytest.raises(TokenizerMismatch):
        make_stream(other, None)  # resolved from $ELM_DATA_TOKENIZER / the manifest's uri


def test_corenet_mode_needs_a_corenet_manifest(sample_manifest, tokenizer):
    with pytest.raises(PlanError, match=r"sequences: \{mode: corenet\}"):
        make_stream(sample_manifest, tokenizer, mode="corenet")


# the CoreNet manifest and two whole streams over it (test_sequences forms CoreNet rows quickly)
@pytest.mark.slow
def test_corenet_rows_are_bos_piece_eos_truncated_and_padded(corenet_manifest, tokenizer):
    manifest = Manifest(corenet_manifest)
    # pieces: ~250-600 tokens
    stream = make_stream(corenet_manifest, tokenizer, seq_len=400, document_masks=True)
    assert stream.config.mode == "corenet"
    loader = StreamLoader(stream)
    rows = torch.cat([b["input_ids"] for b in loader])
    stats = loader.stats()
    assert len(rows) == sum(r.segments for r in manifest.shards)  # one row per kept piece
    assert (rows[:, 0] == BOS_ID).all()
    for row in rows.tolist():
        if PAD_ID in row:
            n = row.index(PAD_ID)
            assert row[n - 1] == EOS_ID and set(row[n:]) == {PAD_ID}
    truncated = int((~(rows == PAD_ID).any(dim=1)).sum())
    assert truncated > 0 and stats["discarded_tokens"] > 0 and stats["pad_tokens"] > 0
    framed = sum(r.tokens + 2 * r.segments for r in manifest.shards)
    assert sum(loader.consumed.values()) + stats["discarded_tokens"] == framed
    assert stats["pad_tokens"] == rows.numel() - sum(loader.consumed.values())
    segment_ids = torch.cat(
        [
            b["segment_ids"]
            for b in StreamLoader(make_stream(corenet_manifest, tokenizer, seq_len=400, document_masks=True))
        ]
    )
    assert torch.equal(segment_ids == -1, rows == PAD_ID) and set(segment_ids.unique().tolist()) == {-1, 0}


@pytest.mark.slow  # another whole stream over the CoreNet manifest (test_corenet_rows_... is the quick one)
def test_packed_mode_over_a_corenet_manifest_frames_every_piece(corenet_manifest, tokenizer):
    loader = StreamLoader(make_stream(corenet_manifest, tokenizer, mode="packed", document_masks=True))
    batches = list(loader)
    expected = {k: v for k, v in expected_natural_pass(Manifest(corenet_manifest).shards).items() if v}
    assert loader.consumed.to_dict() == expected
    seg = batches[0]["segment_ids"]
    ids = batches[0]["input_ids"]
    assert seg.shape == ids.shape and (seg[:, 0] == 0).all()
    assert ((seg[:, 1:] - seg[:, :-1] == 1) == (ids[:, 1:] == BOS_ID)).all()


def test_cli_prints_sequences_with_provenance(sample_manifest, tokenizer_path, tmp_path):
    from elm_data.pipeline.stream.cli import stream

    runner = CliRunner()
    result = runner.invoke(
        stream,
        [
            str(sample_manifest),
            "--take",
            "2",
            "--seq-len",
            "64",
            "--weights",
            "natural",
            "--tokenizer",
            tokenizer_path,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "sequence 1" in result.output and "padding" in result.output and "«" in result.output
    result = runner.invoke(
        stream, [str(sample_manifest), "--take", "3", "--format", "jsonl", "--seq-len", "64"]
    )
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [len(line["input_ids"]) for line in lines[:3]] == [65] * 3 and "stats" in lines[3]
    assert lines[0]["spans"][0]["doc_start"] == 0 and lines[0]["input_ids"][0] == BOS_ID
    weights = tmp_path / "weights.yaml"
    weights.write_text("redpajama/arxiv: 1\n")
    args = [
        str(sample_manifest),
        "--take",
        "4",
        "--format",
        "jsonl",
        "--weights",
        str(weights),
        "--partitions",
        "2",
    ]
    result = runner.invoke(stream, args)
    assert {s["subset"] for line in result.output.splitlines()[:4] for s in json.loads(line)["spans"]} == {
        "arxiv"
    }
    result = runner.invoke(stream, [str(sample_manifest), "--mode", "corenet"])
    assert result.exit_code == 2 and "rebuild" in result.output and "Traceback" not in result.output


def test_a_reader_memory_cap_changes_no_byte_of_the_stream(natural_run, tokenizer, sample_manifest):
    """With no block bytes allowed in memory (every verified block waits in a temp file) the stream is the
    same."""
    from elm_data.sources import blocks as blocks_module

    stream, _, reference = natural_run
    saved, most = blocks_module.HELD.limit, 0
    try:
        capped = []
        for batch in StreamLoader(make_stream(sample_manifest, tokenizer, reader_memory=0)):
            capped.append(batch)
            most = max(most, blocks_module.HELD.held)
    finally:
        blocks_module.set_reader_memory(saved)
    assert most == 0 and same_batches(capped, reference)
    with pytest.raises(PlanError, match="reader memory"):
        make_stream(sample_manifest, tokenizer, reader_memory=-1)
