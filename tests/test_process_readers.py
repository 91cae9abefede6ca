"""Torch-free worker processes for numpy batches (``StreamLoader(tensors=False, num_workers=N)``, what
``elm-data stream --workers N`` runs): the DataLoader's items in its order, its errors, and no torch."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest

from elm_data.pipeline.stream import StreamLoader, TokenStream
from elm_data.pipeline.stream import dataset as stream_dataset
from elm_data.pipeline.stream.process_readers import WorkerFailed
from elm_data.pipeline.stream.reading import StreamIntegrityError


def _stream(manifest, tokenizer) -> TokenStream:
    return TokenStream(manifest, batch_size=2, seq_len=64, weights="natural", tokenizer=tokenizer)


def _seen(loader: StreamLoader) -> list[tuple]:
    return [
        (b["batch_index"], b["partition"], np.asarray(b["input_ids"]).tobytes(), b["tokens_by_source"])
        for b in loader
    ]


@pytest.mark.slow  # end to end, worker processes: ~1.5 s
def test_numpy_workers_hand_out_what_one_process_hands_out(sample_manifest, tokenizer):
    ours = StreamLoader(_stream(sample_manifest, tokenizer), num_workers=2, tensors=False, batches_per_item=3)
    alone = StreamLoader(_stream(sample_manifest, tokenizer), num_workers=0, tensors=False)
    got = _seen(ours)
    assert got == _seen(alone) and len(got) > 10
    assert ours.state_dict() == alone.state_dict() and ours.stats() == alone.stats()


def test_numpy_workers_hand_out_the_first_batches_of_one_process(sample_manifest, tokenizer):
    """The quick sibling of the test above (slow): the first items of two workers, as one process."""
    from itertools import islice

    def first(loader: StreamLoader, n: int = 12) -> list[tuple]:
        batches = iter(loader)
        seen = _seen(islice(batches, n))
        batches.close()
        return seen

    ours = StreamLoader(_stream(sample_manifest, tokenizer), num_workers=2, tensors=False, batches_per_item=3)
    got = first(ours)
    assert got == first(StreamLoader(_stream(sample_manifest, tokenizer), num_workers=0, tensors=False))
    assert len({b[1] for b in got}) > 1  # the partitions of both workers


@pytest.mark.slow  # imports torch (the sibling above compares with one process)
def test_numpy_workers_hand_out_what_the_dataloaders_workers_hand_out(sample_manifest, tokenizer):
    """Same batches, same order, same state after, as torch's DataLoader with the same workers."""
    ours = StreamLoader(_stream(sample_manifest, tokenizer), num_workers=2, tensors=False, batches_per_item=3)
    torchs = StreamLoader(_stream(sample_manifest, tokenizer), num_workers=2, batches_per_item=3)
    assert _seen(ours) == _seen(torchs)
    assert ours.state_dict() == torchs.state_dict()


RUN_WITHOUT_TORCH = """
import sys
from elm_data.pipeline.stream import StreamLoader, TokenStream
ts = TokenStream(sys.argv[1], batch_size=2, seq_len=64, weights="natural", tokenizer=sys.argv[2])
n = sum(1 for _ in StreamLoader(ts, num_workers=2, tensors=False))
print(n, "torch" in sys.modules)
"""


@pytest.mark.slow  # end to end, worker processes: ~1.5 s
def test_numpy_workers_never_import_torch(sample_manifest, tokenizer_path):
    out = subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT_TORCH, str(sample_manifest), tokenizer_path],
        capture_output=True,
        text=True,
        check=True,
    )
    batches, torch_imported = out.stdout.split()
    assert int(batches) > 10 and torch_imported == "False"


def _failing_after_first_batch(how: str):
    real = stream_dataset.TokenStream.batches

    def batches(self, *args, **kwargs):
        for k, batch in enumerate(real(self, *args, **kwargs)):
            if k == 1:
                if how == "raise":
                    raise StreamIntegrityError("shard x: sha256 differs from the manifest")
                os._exit(3)
            yield batch

    return batches


def test_a_workers_error_reaches_the_caller_as_itself(sample_manifest, tokenizer, monkeypatch):
    monkeypatch.setattr(stream_dataset.TokenStream, "batches", _failing_after_first_batch("raise"))
    loader = StreamLoader(_stream(sample_manifest, tokenizer), num_workers=2, tensors=False)
    with pytest.raises(StreamIntegrityError, match="sha256 differs"):
        list(loader)
    assert multiprocessing.active_children() == []


def test_a_worker_that_dies_is_an_error_not_a_hang(sample_manifest, tokenizer, monkeypatch):
    monkeypatch.setattr(stream_dataset.TokenStream, "batches", _failing_after_first_batch("exit"))
    loader = StreamLoader(_stream(sample_manifest, tokenizer), num_workers=2, tensors=False)
    with pytest.raises(WorkerFailed, match=r"exited \(code 3\)"):
        list(loader)
    assert multiprocessing.active_children() == []


def test_stopping_early_stops_every_worker(sample_manifest, tokenizer):
    loader = StreamLoader(_stream(sample_manifest, tokenizer), num_workers=2, tensors=False)
    batches = iter(loader)
    first = next(batches)
    assert first["batch_index"] == 0
    batches.close()
    assert multiprocessing.active_children() == []
    again = next(iter(loader))  # the loader goes on where it stopped, with new workers
    assert again["batch_index"] == 1
