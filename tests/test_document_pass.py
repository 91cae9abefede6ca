"""DocumentPass as a whole: accounting, determinism, batching, pickling, description, dropped samples."""

from __future__ import annotations

import json
import pickle
import random
from collections import Counter

import pytest
from test_filters import PROSE  # tests/ is on sys.path (pytest rootdir-relative import)

from elm_data.pipeline.config import FilterConfig, QualityFilterSpec, SequenceConfig
from elm_data.pipeline.counts import Counts
from elm_data.pipeline.document_pass import DocumentPass, PassResult
from elm_data.pipeline.filters import split_corenet_pieces
from elm_data.sources.document import Document, Provenance

QUALITY = (
    QualityFilterSpec("gopher_quality"),
    QualityFilterSpec("gopher_repetition", {"dup_line_frac": 0.5}),
)


def make_docs(n: int = 60, seed: int = 0) -> list[Document]:
    """A mix of long prose, short snippets, repetitive junk and long multi-piece documents, two subsets."""
    rng = random.Random(seed)
    lines = PROSE.strip().split("\n")
    vocabulary = PROSE.split()
    docs = []
    for i in range(n):
        kind = i % 5
        if kind == 0:
            text = "short note " * rng.randint(1, 5)
        elif kind == 1:
            junk = "Buy now!!!\n" if i % 10 == 1 else "Buy the shoes and save today\n"
            text = junk * rng.randint(30, 60)
        elif kind == 4:  # long, many CoreNet pieces, not repetitive
            text = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(300, 1200)))
        else:
            text = "\n".join(rng.sample(lines, k=rng.randint(3, len(lines))))
        subset = "a" if i % 2 else "b"
        prov = Provenance("src", subset, f"mem://{subset}.jsonl", "f" * 64, i, f"id{i}", None, "cc-by")
        docs.append(Document(text=text, provenance=prov))
    return docs


def subset_of(result: PassResult) -> str:
    return f"{result.document.provenance.source}/{result.document.provenance.subset}"


def counts_by_subset(results: list[PassResult]) -> dict[str, Counts]:
    """The results' counts per source/subset, CoreNet pieces included."""
    out: dict[str, Counts] = {}
    for r in results:
        out.setdefault(subset_of(r), Counts()).add_result(r, count_pieces=True)
    return out


@pytest.fixture(scope="module")
def docs():
    return make_docs()


def new_pass(tokenizer, mode="packed", quality=QUALITY, **kwargs) -> DocumentPass:
    return DocumentPass(
        FilterConfig(min_tokens=100, quality=quality),
        SequenceConfig(mode=mode, corenet_words_per_piece=256),
        tokenizer,
        **kwargs,
    )


@pytest.mark.llama  # the sample's lengths straddle LLaMA-2's min_tokens boundary
@pytest.mark.parametrize("mode", ["packed", "corenet"])
def test_every_document_is_accounted_for(llama_tokenizer, docs, mode):
    the_pass = new_pass(llama_tokenizer, mode)
    results = the_pass.process(docs)
    assert [r.document for r in results] == docs
    by_subset = counts_by_subset(results)
    assert set(by_subset) == {"src/a", "src/b"}
    for key, counts in by_subset.items():
        mine = [r for r in results if subset_of(r) == key]
        assert counts.docs_read == len(mine) == counts.docs_kept + counts.docs_filtered
        assert counts.tokens == sum(r.tokens for r in mine)
        assert counts.chars == sum(r.chars for r in mine if r.kept)
        pieces = counts.segments + sum(counts.pieces_filtered_by_reason.values())
        assert pieces == sum(len(r.piece_reasons) for r in mine)
    total = Counts.sum(by_subset.values())
    reasons = set(total.filtered_by_reason)
    assert "min_characters" in reasons and "min_tokens" in reasons
    assert any(r.startswith("gopher_repetition:") for r in reasons)
    assert any(r.startswith("gopher_quality:") for r in reasons)
    assert total.docs_kept > 0
    for r in results:
        assert isinstance(r, PassResult)
        assert (r.status == "kept") == (r.reason is None) == bool(r.segments)
        assert r.tokens == (sum(map(len, r.segments)) if r.status == "kept" else 0)
    if mode == "corenet":
        assert any(len(r.piece_reasons) > 1 for r in results)


# three passes with the quality filters per mode (test_pickle_round_trip... is the quick one)
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["packed", "corenet"])
def test_batch_equals_one_at_a_time_and_is_deterministic(tokenizer, docs, mode):
    batched = new_pass(tokenizer, mode, num_threads=2)
    one_by_one = new_pass(tokenizer, mode)
    in_batch = batched.process(docs)
    singles = [one_by_one.process([d])[0] for d in docs]
    again = new_pass(tokenizer, mode).process(docs)
    key = [(r.status, r.reason, r.segments, r.piece_reasons) for r in in_batch]
    assert key == [(r.status, r.reason, r.segments, r.piece_reasons) for r in singles]
    assert key == [(r.status, r.reason, r.segments, r.piece_reasons) for r in again]
    assert counts_by_subset(in_batch) == counts_by_subset(singles)


def test_pickle_round_trip_gives_same_results(tokenizer, docs):
    the_pass = new_pass(tokenizer, "corenet")
    first = the_pass.process(docs[:20])
    clone = pickle.loads(pickle.dumps(the_pass))
    assert clone.describe() == the_pass.describe()
    assert [(r.status, r.reason, r.segments) for r in clone.process(docs[:20])] == [
        (r.status, r.reason, r.segments) for r in first
    ]


@pytest.mark.slow  # the quality filters over every document again (test_counts merges counts quickly)
def test_counts_of_two_passes_merge_like_one_pass(tokenizer, docs):
    whole = counts_by_subset(new_pass(tokenizer).process(docs))
    left = counts_by_subset(new_pass(tokenizer).process(docs[:25]))
    right = counts_by_subset(new_pass(tokenizer).process(docs[25:]))
    assert {key: left[key] + right[key] for key in whole} == whole


def test_empty_batch(tokenizer):
    assert new_pass(tokenizer).process([]) == []


def test_describe_records_everything_that_changes_output(tokenizer):
    described = new_pass(tokenizer, "corenet").describe()
    json.dumps(described)  # must be JSON-serialisable for the manifest
    assert described["tokenizer"]["sha256"] == tokenizer.sha256
    assert described["sequence_mode"] == "corenet" and described["corenet_words_per_piece"] == 256
    assert described["filters"]["min_tokens"] == 100
    gopher = described["filters"]["quality"][0]
    assert gopher["name"] == "gopher_quality" and gopher["params"]["min_doc_words"] == 50
    assert described["filters"]["quality"][1]["params"]["dup_line_frac"] == 0.5
    assert new_pass(tokenizer, "packed").describe()["corenet_words_per_piece"] is None
    assert new_pass(tokenizer, quality=()).describe() != new_pass(tokenizer).describe()


@pytest.fixture(scope="module")
def sample_documents(sample_dir):
    """Every readable document of the bundled sample corpus, through the project's own readers."""
    from elm_data.manifests.mixture import MixtureConfig
    from elm_data.sources.readers import read_shard

    mixture = MixtureConfig.load(sample_dir / "mixture.yaml")
    docs = []
    for entry in mixture.entries:
        for uri in mixture.resolve_shards(entry):
            docs.extend(d for d in read_shard(uri, entry.source, entry.subset) if isinstance(d, Document))
    assert len({f"{d.provenance.source}/{d.provenance.subset}" for d in docs}) >= 5
    return docs


# the whole sample corpus through the pass (test_every_document_is_accounted_for is the quick one)
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["packed", "corenet"])
def test_sample_corpus_accounting_and_token_counts(tokenizer, sample_documents, mode):
    the_pass = DocumentPass(
        FilterConfig(quality=(QualityFilterSpec("gopher_repetition"),)),
        SequenceConfig(mode=mode, corenet_words_per_piece=512),
        tokenizer,
        num_threads=2,
    )
    results = []
    for start in range(0, len(sample_documents), 64):  # batches, as the builder and the stream call it
        results.extend(the_pass.process(sample_documents[start : start + 64]))
    assert [r.document for r in results] == sample_documents
    given = Counter(f"{d.provenance.source}/{d.provenance.subset}" for d in sample_documents)
    by_subset = counts_by_subset(results)
    # every document counted once
    assert {key: counts.docs_read for key, counts in by_subset.items()} == dict(given)
    for key, counts in by_subset.items():
        assert counts.docs_read == counts.docs_kept + counts.docs_filtered, key
        assert counts.docs_kept == sum(1 for r in results if r.status == "kept" and subset_of(r) == key), key
    kept = [r for r in results if r.status == "kept"]
    assert kept and len(kept) < len(results)
    for r in kept[:40]:
        if mode == "packed":
            assert r.segments == [tokenizer.encode(r.document.text)]
        else:
            pieces = split_corenet_pieces(r.document.text, 512)
            kept_pieces = [p for p, reason in zip(pieces, r.piece_reasons, strict=True) if reason is None]
            assert r.segments == tokenizer.encode_batch(kept_pieces)
    assert sum(r.tokens for r in results) == Counts.sum(by_subset.values()).tokens


def test_non_string_text_is_a_clear_error(tokenizer):
    prov = Provenance("src", "a", "mem://a.jsonl", "f" * 64, 3, "id3", None, "cc-by")
    with pytest.raises(TypeError, match=r"id3 .*mem://a.jsonl#3.*bytes text"):
        new_pass(tokenizer).process([Document(text=b"raw bytes", provenance=prov)])


def test_describe_names_the_datatrove_version_only_with_quality_filters(tokenizer):
    import importlib.metadata

    assert new_pass(tokenizer).describe()["datatrove_version"] == importlib.metadata.version("datatrove")
    assert "datatrove_version" not in new_pass(tokenizer, quality=()).describe()


def _statuses_in_worker(the_pass: DocumentPass, docs: list[Document]) -> list[tuple]:
    return [(r.status, r.reason, r.tokens) for r in the_pass.process(docs)]


# a forkserver worker imports the pipeline anew (test_pickle_round_trip... is the quick one)
@pytest.mark.slow
def test_pass_runs_in_a_worker_process(tokenizer, docs):
    import multiprocessing

    the_pass = new_pass(tokenizer)
    here = [(r.status, r.reason, r.tokens) for r in new_pass(tokenizer).process(docs[:15])]
    with multiprocessing.get_context("forkserver").Pool(1) as pool:  # arguments still travel pickled
        there = pool.apply_async(_statuses_in_worker, (the_pass, docs[:15])).get(timeout=120)
    assert there == here
