"""The hot path's shortcuts (issue 25) against the plain computation they stand for, on real shards.

Each shortcut must give exactly what the slow path gives; these tests hold them to it with independent
oracles.
"""

from __future__ import annotations

import json
import random
import string
import sys
from pathlib import Path

import numpy as np
import pytest

from elm_data.pipeline import filters
from elm_data.pipeline.filters import _ascii_kept, normalize_for_length, passes_min_characters


def _sample_texts(sample_dir: Path) -> list[str]:
    """Every text of the sample's JSONL shards, read with the standard library alone (not the readers)."""
    texts = []
    for path in sorted(sample_dir.rglob("*.jsonl")):
        texts += [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(texts) > 100
    return texts


def test_ascii_kept_counts_exactly_what_normalisation_keeps_of_each_ascii_character():
    for c in map(chr, range(128)):  # the whole surface the count looks at
        assert _ascii_kept(c) == len(normalize_for_length(c)), repr(c)
        assert _ascii_kept("x" + c + "x") == len(normalize_for_length("x" + c + "x")) - (c.isspace()), repr(c)


def test_ascii_kept_is_a_lower_bound_of_the_normalised_length_on_mixed_unicode():
    rng = random.Random(25)
    alphabet = string.printable + "ÀÉİßẞΣσςДжß日本語…—–“”‘’«»¡¿\u00a0\u2028\u3000\U0001f600ǅǈ\x85\x1c"
    special = [chr(rng.randrange(0x80, sys.maxunicode)) for _ in range(400)]  # surrogates included
    for _ in range(3000):
        text = "".join(
            rng.choice(alphabet if rng.random() < 0.8 else special) for _ in range(rng.randrange(0, 300))
        )
        assert _ascii_kept(text) <= len(normalize_for_length(text)), repr(text)
        for minimum in (1, 10, 60, 200):
            assert passes_min_characters(text, minimum) == (len(normalize_for_length(text)) >= minimum)


def test_the_character_rule_on_real_texts_equals_measuring_the_normalised_copy(sample_dir):
    for text in _sample_texts(sample_dir):
        length = len(normalize_for_length(text))
        for minimum in (0, 1, 200, 2000, 20000):
            assert passes_min_characters(text, minimum) == (length >= minimum)


def test_a_long_ascii_text_is_decided_without_normalising_it(sample_dir, monkeypatch):
    texts = [t for t in _sample_texts(sample_dir) if len(t) > 2000][:50]
    assert texts and all(len(normalize_for_length(t)) >= 200 for t in texts)

    def refuse(text: str) -> str:
        raise AssertionError("normalised a text that the ASCII count already decides")

    monkeypatch.setattr(filters, "normalize_for_length", refuse)
    assert sum(passes_min_characters(t, 200) for t in texts if _ascii_kept(t[:416]) >= 200) > 25


@pytest.mark.parametrize("minimum", [200, 430])
def test_texts_the_ascii_count_cannot_decide_take_the_exact_path(minimum):
    junk = "... !!! \t" * 300 + "a" * (minimum - 1)  # long, but one kept character short
    assert _ascii_kept(junk) == minimum - 1 and not passes_min_characters(junk, minimum)
    accented = "é... !!! " * minimum + "a" * (minimum - 1)  # the non-ASCII letters make it long enough
    assert _ascii_kept(accented) == minimum - 1 and passes_min_characters(accented, minimum)


def _stream_cli(*args: str) -> str:
    from click.testing import CliRunner

    from elm_data.pipeline.stream.cli import stream

    result = CliRunner().invoke(stream, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_stream_cli_with_workers_prints_the_same_sequences(sample_manifest, tokenizer_path):
    base = [str(sample_manifest), "--format", "jsonl", "--seq-len", "64", "--tokenizer", tokenizer_path]
    printed = {w: _stream_cli(*base, "--take", "12", "--batch-size", "4", "--workers", w) for w in ("0", "2")}
    assert printed["2"] == printed["0"] and len(printed["0"].splitlines()) == 13


@pytest.mark.slow  # four natural passes (the sibling above prints the first batches)
def test_stream_cli_full_pass_with_workers_streams_the_same_pass(sample_manifest, tokenizer_path):
    base = [
        str(sample_manifest),
        "--format",
        "jsonl",
        "--seq-len",
        "64",
        "--tokenizer",
        tokenizer_path,
        "--full-pass",
    ]
    stats = {}
    for workers in ("0", "2"):
        output = _stream_cli(*base, "--workers", workers)
        # after the progress bar (stderr, mixed in)
        stats[workers] = json.loads(output[output.index('{"stats"') :])
    assert stats["2"] == stats["0"] and stats["0"]["stats"]["consumed_matches_manifest"] is True


def test_encode_threads_change_no_byte_of_the_stream(sample_manifest, tokenizer, monkeypatch):
    """A step's documents encoded in one SentencePiece call split over 3 threads: the same batches as 1."""
    one = _batches(_stream(sample_manifest, tokenizer, encode_threads=1))
    three_stream = _stream(sample_manifest, tokenizer, encode_threads=3)
    calls: list[int | None] = []
    real = three_stream.tokenizer.encode_batch

    def spy(texts, num_threads=None, **kw):
        calls.append(num_threads)
        return real(texts, num_threads, **kw)

    # the session's tokenizer: the spy goes when the test ends
    monkeypatch.setattr(three_stream.tokenizer, "encode_batch", spy)
    three = _batches(three_stream)
    _same(one, three)
    assert calls and set(calls) == {3}


def test_default_encode_threads_share_the_cores_this_process_may_use(monkeypatch):
    from elm_data.pipeline.stream import dataset
    from elm_data.pipeline.stream.dataset import default_encode_threads

    monkeypatch.setattr(dataset.os, "sched_getaffinity", lambda pid: {0, 1, 2, 5}, raising=False)
    assert [default_encode_threads(w) for w in (0, 1, 2, 3, 4, 8)] == [4, 4, 2, 1, 1, 1]


@pytest.mark.slow  # end to end through the CLI: ~1.5 s
def test_stream_cli_threads_reach_the_tokenizer_and_nonsense_is_refused(sample_manifest, tokenizer_path):
    from click.testing import CliRunner

    from elm_data.pipeline.stream import dataset
    from elm_data.pipeline.stream.cli import stream

    seen: list[int] = []
    real = dataset.TokenStream.__init__

    def spy(self, *args, **kw):
        seen.append(kw["encode_threads"])
        real(self, *args, **kw)

    base = [str(sample_manifest), "--take", "1", "--seq-len", "64", "--tokenizer", tokenizer_path]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dataset.TokenStream, "__init__", spy)
        mp.setattr(dataset, "default_encode_threads", lambda workers=0: 7 + workers)
        for extra in (["--threads", "3"], [], ["--threads", "0"], ["--threads", "0", "--workers", "2"]):
            assert CliRunner().invoke(stream, base + extra).exit_code == 0
    assert seen == [3, 1, 7, 9]
    refused = CliRunner().invoke(stream, [*base, "--threads", "-1"])
    assert refused.exit_code == 2 and "Traceback" not in refused.output


def test_stream_cli_refuses_workers_that_do_not_divide_the_partitions(sample_manifest, tokenizer_path):
    from click.testing import CliRunner

    from elm_data.pipeline.stream.cli import stream

    args = [
        str(sample_manifest),
        "--full-pass",
        "--workers",
        "3",
        "--partitions",
        "4",
        "--tokenizer",
        tokenizer_path,
    ]
    refused = CliRunner().invoke(stream, args)
    assert refused.exit_code == 2 and "divide" in refused.output and "Traceback" not in refused.output


# -- the stream's lookahead: documents of the next batches fetched, passed and framed together
# ----------------------


def _stream(manifest_dir, tokenizer, **kw):
    from elm_data.pipeline.stream import TokenStream

    kw = {"batch_size": 1, "seq_len": 128, "weights": "natural", "tokenizer": tokenizer} | kw
    return TokenStream(manifest_dir, **kw)


def _batches(stream, limit: int | None = None, **loader_kw) -> list[dict]:
    from itertools import islice

    from elm_data.pipeline.stream import StreamLoader

    return list(islice(StreamLoader(stream, **loader_kw), limit))


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) and a
    for x, y in zip(a, b, strict=True):
        assert x["batch_index"] == y["batch_index"] and x["tokens_by_source"] == y["tokens_by_source"]
        assert (x["input_ids"].numpy() == y["input_ids"].numpy()).all() and x["input_ids"].shape == y[
            "input_ids"
        ].shape
        assert x["spans"] == y["spans"] and x["pad_tokens"] == y["pad_tokens"]


def test_frame_documents_equals_framing_each_document_on_its_own():
    from elm_data.pipeline.stream.sequences import frame_documents, frame_segments

    def by_hand(segments: list[list[int]]) -> tuple[list[int], list[int]]:  # BOS + ids + EOS, per segment
        ids, starts = [], [0]
        for seg in segments:
            ids += [1, *seg, 2]
            starts.append(len(ids))
        return ids, starts

    rng = random.Random(3)
    documents = [
        [[rng.randrange(32000) for _ in range(rng.randrange(0, 50))] for _ in range(rng.randrange(1, 4))]
        for _ in range(200)
    ] + [[[]], [[], [7]], []]  # a document without segments: a filtered one (the stream frames every result)
    rng.shuffle(documents)
    framed = frame_documents(documents)
    as_arrays = [[np.array(seg, dtype=np.int32) for seg in segments] for segments in documents]
    # lists and arrays mixed (the struct path): a stand-in tokenizer's lists beside SentencePiece's arrays
    mixed = [[seg if k % 2 else np.array(seg, dtype=np.int32) for k, seg in enumerate(s)] for s in documents]
    assert len(framed) == len(documents) and frame_documents([]) == [] and len(frame_documents([[]])) == 1
    for fd, fa, fm, segments in zip(
        framed, frame_documents(as_arrays), frame_documents(mixed), documents, strict=True
    ):
        ids, starts = by_hand(segments)
        alone = frame_segments(segments)
        for got in (fd, fa, fm, alone):
            assert got.ids.tolist() == ids and got.starts.tolist() == starts
            assert got.ids.dtype == np.int64


@pytest.mark.slow  # two whole streams of the sample per mode: ~1.5 s
@pytest.mark.parametrize("mode", ["natural", "weighted"])
def test_lookahead_yields_the_batches_of_the_per_batch_path(sample_manifest, tokenizer, monkeypatch, mode):
    """The default lookahead (the next 64 k planned tokens fetched and passed in one call) against one step
    per batch (each batch's new documents fetched and passed on their own, the old path): bit for bit."""
    from elm_data.pipeline.stream import ahead

    kw = {"weights": "natural"} if mode == "natural" else {"weights": None, "epochs": None}
    limit = None if mode == "natural" else 600  # weighted: endless, sources restart (documents drawn again)
    stepped = _batches(_stream(sample_manifest, tokenizer, **kw), limit)
    monkeypatch.setattr(ahead, "LOOKAHEAD_TOKENS", 0)
    alone = _batches(_stream(sample_manifest, tokenizer, **kw), limit)
    _same(stepped, alone)


def test_small_lookahead_steps_yield_the_batches_of_the_per_batch_path(
    sample_manifest, tokenizer, monkeypatch
):
    """The quick sibling of the test above (slow): steps of ~2 batches over the first 24 batches, so several
    steps are fetched, passed on the pass thread and settled one behind the other."""
    from elm_data.pipeline.stream import ahead

    stream = _stream(sample_manifest, tokenizer)
    monkeypatch.setattr(ahead, "LOOKAHEAD_TOKENS", 256)
    stepped = _batches(stream, 24)
    monkeypatch.setattr(ahead, "LOOKAHEAD_TOKENS", 0)
    _same(stepped, _batches(stream, 24))


def test_every_kept_document_is_framed_as_bos_sentencepiece_ids_eos(sample_manifest, tokenizer):
    """Independent oracle over the whole natural pass: each kept document's tokens in the rows (joined over
    its spans) are BOS + SentencePiece's own ids for its text + EOS."""
    import sentencepiece as spm

    from elm_data.manifests.manifest import Manifest
    from elm_data.pipeline.tokenizer import BOS_ID, EOS_ID
    from elm_data.sources.document import Document
    from elm_data.sources.readers import read_shard

    pieces: dict[tuple[str, int], list[tuple[int, list[int]]]] = {}
    for batch in _batches(_stream(sample_manifest, tokenizer, batch_size=3)):
        for row, spans in zip(batch["input_ids"].tolist(), batch["spans"], strict=True):
            for s in spans:
                pieces.setdefault((s["shard_sha256"], s["index"]), []).append(
                    (s["doc_start"], row[s["start"] : s["end"]])
                )
    sp = spm.SentencePieceProcessor(model_proto=tokenizer.model_bytes)
    manifest = Manifest(sample_manifest)
    checked = 0
    for rec in manifest.shards:
        kept = {d["index"] for d in manifest.documents(rec.shard).to_pylist() if d["status"] == "kept"}
        for doc in read_shard(rec.uri, rec.source, rec.subset):
            if isinstance(doc, Document) and doc.provenance.index in kept:
                got = [t for _, ids in sorted(pieces.pop((rec.sha256, doc.provenance.index))) for t in ids]
                assert got == [BOS_ID, *sp.encode(doc.text), EOS_ID]
                checked += 1
    assert not pieces and checked == sum(r.docs_kept for r in manifest.shards) > 100


@pytest.mark.llama  # where a document first appears, as LLaMA-2 counts the sample
@pytest.mark.slow
def test_a_drifted_document_stops_the_stream_at_its_batch_not_before(
    llama_sample_manifest, llama_tokenizer, tmp_path
):
    """With lookahead the drifted document is passed several batches early; its error still comes with the
    batch that needs it, after every batch before it (as one step per batch does)."""
    import pyarrow.compute as pc
    from test_stream import rewrite_manifest

    from elm_data.pipeline.stream import StreamIntegrityError, StreamLoader
    from elm_data.pipeline.stream.partition import PartitionWalk

    stream = _stream(llama_sample_manifest, llama_tokenizer, partitions=1)
    walk = PartitionWalk(stream.plan(), 0)
    late = [d for batch, _ in islice_batches(walk, 40) for d in batch.docs][-1]  # a document of batch ~39

    def bump(tables):
        t = tables[late.shard]
        tokens = pc.if_else(pc.equal(t["index"], late.index), pc.add(t["tokens"], 1), t["tokens"])
        tables[late.shard] = t.set_column(t.schema.get_field_index("tokens"), "tokens", tokens)
        return tables

    drifted = rewrite_manifest(llama_sample_manifest, tmp_path / "drift", documents=bump)
    drifted = _stream(drifted, llama_tokenizer, partitions=1)
    walk = PartitionWalk(drifted.plan(), 0)
    first_need = next(
        b.batch
        for b, _ in walk.batches(walk.start())
        if any(d.index == late.index and d.shard == late.shard for d in b.docs)
    )
    fed = []
    with pytest.raises(StreamIntegrityError, match=f"{late.doc_id}.*drift"):
        for batch in StreamLoader(drifted):
            fed.append(batch)
    assert len(fed) == first_need >= 30
    _same(fed, _batches(stream, first_need))


def islice_batches(walk, n: int):
    from itertools import islice

    return islice(walk.batches(walk.start()), n)


def test_the_surrogate_prefilter_agrees_with_the_regex_on_every_escape_head_and_real_lines(sample_dir):
    from elm_data.sources.readers_jsonl import _SURROGATE_ESCAPE, _surrogate_escape

    hexes = b"0123456789abcdefABCDEF"
    heads = [b"\\u" + bytes([a, b]) for a in hexes + b"uU\\x" for b in hexes + b"x"]
    lines = [b'{"text": "a' + head + b'00z"}' for head in heads] + [b"\\ud", b"\\uD8", b"", b"\\\\ud800"]
    lines += [line for path in sorted(sample_dir.rglob("*.jsonl")) for line in path.read_bytes().splitlines()]
    # the surface holds both outcomes
    assert sum(bool(_SURROGATE_ESCAPE.search(line)) for line in lines) >= 16
    for line in lines:
        assert _surrogate_escape(line) == bool(_SURROGATE_ESCAPE.search(line)), line[:80]


def test_remote_reads_still_ride_on_the_next_batch_after_the_cheap_check(sample_manifest, tokenizer):
    from elm_data.sources import remote

    batches = _stream(sample_manifest, tokenizer).batches([0], numpy=True)
    assert "remote_reads" not in next(batches)  # a local corpus: nothing counted
    remote.STATS.count(retry="http 503", fetched=10)
    counted = next(batches)["remote_reads"]
    assert counted["retries"] == 1 and counted["bytes_fetched"] == 10
    assert counted["retries_by_reason"] == {"http 503": 1}
    assert "remote_reads" not in next(batches)
    batches.close()


@pytest.mark.slow
def test_the_pass_runs_on_the_pass_thread_and_its_failure_stops_the_stream_at_its_batch(
    sample_manifest, tokenizer, monkeypatch
):
    """Step k+1's tokenizer call runs on the pass thread while step k's batches are laid out; a document whose
    pass fails there still fails only the batch that needs it, after every batch before it."""
    import threading

    from elm_data.pipeline.document_pass import DocumentPass
    from elm_data.pipeline.stream import StreamLoader
    from elm_data.pipeline.stream.partition import PartitionWalk

    stream = _stream(sample_manifest, tokenizer, partitions=1)
    reference = _batches(stream)
    walk = PartitionWalk(stream.plan(), 0)
    late = [d for batch, _ in islice_batches(walk, 300) for d in batch.docs][-1]
    first_need = next(
        b["batch_index"] for b in reference if any(s["doc_id"] == late.doc_id for r in b["spans"] for s in r)
    )
    threads, holding_late = set(), []  # where encode ran; the text lists that hold the late document's text
    prepare, encode = DocumentPass.prepare, DocumentPass.encode

    def prepare_marking(self, docs):
        pending = prepare(self, docs)
        if any(d.provenance.doc_id == late.doc_id for d in docs):
            holding_late.append(pending.texts)
        return pending

    def encode_failing(self, texts):
        threads.add(threading.current_thread().name)
        if any(texts is held for held in holding_late):
            raise RuntimeError(f"pass failed on {late.doc_id}")
        return encode(self, texts)

    monkeypatch.setattr(DocumentPass, "prepare", prepare_marking)
    monkeypatch.setattr(DocumentPass, "encode", encode_failing)
    fed = []
    with pytest.raises(RuntimeError, match=f"pass failed on {late.doc_id}"):
        for batch in StreamLoader(_stream(sample_manifest, tokenizer, partitions=1)):
            fed.append(batch)
    assert len(fed) == first_need >= 200
    _same(fed, reference[:first_need])
    assert any(name.startswith("elm-data-pass") for name in threads)


def test_a_blocks_kept_rows_are_those_pyarrow_filters_in_record_order(sample_manifest):
    """``partition._kept_rows`` (plain Python, no pyarrow.compute at start-up) against pyarrow's own filter,
    on every block of the sample and on statuses the sample lacks (held out, rejected, null)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from elm_data.manifests.manifest import DOCUMENT_SCHEMA, Manifest
    from elm_data.pipeline.stream.partition import LEDGER_COLUMNS, _kept_rows

    def by_pyarrow(table) -> list[tuple]:
        cols = table.filter(pc.equal(table["status"], "kept")).select(LEDGER_COLUMNS).to_pydict()
        return list(zip(*(cols[c] for c in LEDGER_COLUMNS), strict=True))

    manifest = Manifest(sample_manifest)
    blocks = [
        manifest.block_documents(r.shard, b)
        for r in manifest.shards
        for b in range(manifest.block_counts.count(r.shard))
    ]
    statuses = ["kept", "heldout", None, "kept", "rejected", "filtered", "kept"]
    odd = pa.Table.from_pylist(
        [
            {"shard": 0, "index": i, "doc_id": f"d{i}", "status": s, "tokens": i, "segments": 1}
            for i, s in enumerate(statuses)
        ],
        schema=DOCUMENT_SCHEMA,
    )
    kept = 0
    for table in [*blocks, odd, odd.slice(0, 0)]:
        assert _kept_rows(table) == by_pyarrow(table)
        kept += len(_kept_rows(table))
    assert [row[0] for row in _kept_rows(odd)] == [0, 3, 6]
    assert kept == sum(r.docs_kept for r in manifest.shards) + 3
