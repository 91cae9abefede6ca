"""Multi-worker items (several consecutive batches per DataLoader item) keep the stream exact and in order."""

from __future__ import annotations

from itertools import islice

import pytest
import torch

from elm_data.pipeline.stream import StreamLoader, TokenStream

SEQ_LEN, BATCH = 128, 4
PARTITIONS = 4  # 1, 2 or 4 readers (ranks × workers) divide it


def make_stream(manifest_dir, tokenizer, **kw) -> TokenStream:
    kw = {
        "batch_size": BATCH,
        "seq_len": SEQ_LEN,
        "weights": "natural",
        "epochs": None,
        "tokenizer": tokenizer,
        "partitions": PARTITIONS,
    } | kw
    return TokenStream(manifest_dir, **kw)


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert [x["batch_index"] for x in a] == [y["batch_index"] for y in b]
    for x, y in zip(a, b, strict=True):
        assert isinstance(x["input_ids"], torch.Tensor) and x["input_ids"].dtype == torch.int64
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["segment_ids"], y["segment_ids"])
        assert x["spans"] == y["spans"] and x["tokens_by_source"] == y["tokens_by_source"]


@pytest.fixture(scope="module")
def reference(sample_manifest, tokenizer) -> list[dict]:
    loader = StreamLoader(make_stream(sample_manifest, tokenizer, document_masks=True))
    return list(islice(loader, 15))


def test_items_of_several_batches_from_two_workers_give_the_single_process_stream(
    sample_manifest, tokenizer, reference
):
    for per_item in (1, 3):
        loader = StreamLoader(
            make_stream(sample_manifest, tokenizer, document_masks=True),
            num_workers=2,
            multiprocessing_context="fork",
            batches_per_item=per_item,
        )
        assert_same(list(islice(loader, 15)), reference)
        assert loader.batches == 15 and loader.global_batches == 15
    # global order: batch t*P + p of partition p
    assert [b["batch_index"] for b in reference] == list(range(15))
    assert [b["partition"] for b in reference] == [i % PARTITIONS for i in range(15)]


def test_resume_in_the_middle_of_an_item_with_another_worker_count(sample_manifest, tokenizer, reference):
    first = StreamLoader(
        make_stream(sample_manifest, tokenizer, document_masks=True),
        num_workers=2,
        multiprocessing_context="fork",
        batches_per_item=3,
    )
    head = list(islice(first, 4))  # stops inside the second item
    resumed = StreamLoader(  # one worker now reads all four partitions
        make_stream(sample_manifest, tokenizer, document_masks=True),
        num_workers=1,
        multiprocessing_context="fork",
        batches_per_item=2,
    )
    resumed.load_state_dict(first.state_dict())
    assert_same(head + list(islice(resumed, 11)), reference)


def test_item_size_defaults_and_the_stream_is_never_changed(sample_manifest, tokenizer):
    stream = make_stream(sample_manifest, tokenizer)
    assert StreamLoader(stream, num_workers=0).batches_per_item == 1
    assert (
        StreamLoader(stream, num_workers=1).batches_per_item
        == StreamLoader(stream, num_workers=2).batches_per_item
    )
    two = StreamLoader(stream, num_workers=2)
    assert two.batches_per_item * BATCH * (SEQ_LEN + 1) >= StreamLoader.ITEM_TOKENS
    assert (two.batches_per_item - 1) * BATCH * (SEQ_LEN + 1) < StreamLoader.ITEM_TOKENS
    readers = stream.readers(8, {}, batches_per_item=two.batches_per_item, numpy=True)
    assert readers.batches_per_item == two.batches_per_item and readers.numpy and readers.global_batch == 8
    state = vars(stream).copy()
    # in process: the workers' readers are the same object
    next(iter(StreamLoader(stream, batches_per_item=2)))
    assert vars(stream) == state  # the loader's readers stand where it does; the stream holds no position
    assert isinstance(next(iter(stream))["input_ids"], torch.Tensor)
    with pytest.raises(ValueError, match="multiple of world_size"):
        make_stream(sample_manifest, tokenizer, rank=1, world_size=2).readers(3)
    with pytest.raises(ValueError, match="do not divide"):
        StreamLoader(stream, num_workers=3)
    with pytest.raises(ValueError, match="batches_per_item"):
        StreamLoader(stream, num_workers=2, batches_per_item=0)
