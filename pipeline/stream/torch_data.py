"""The stream's torch side, imported only where tensors or DataLoader workers are asked for.

The rest of the stream imports no torch (numpy arrays throughout), so a process that reads a stream without
workers and without tensors (``elm-data stream``) never pays torch's import (~1.1 CPU-s, ~190 MiB of RSS).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset


def collate_as_is(batch: Any) -> Any:
    """The DataLoader's ``collate_fn`` for :class:`StreamReaders`: batches arrive whole and stay as they are
    (the default would walk every span dict and convert arrays; ``StreamLoader`` makes the tensors)."""
    return batch


class ReadersDataset(IterableDataset):
    """``readers`` (a ``StreamReaders``) as the ``IterableDataset`` a ``DataLoader`` hands to its workers;
    each worker iterates its own copy (``StreamReaders`` picks the worker's partitions from
    ``get_worker_info()``)."""

    def __init__(self, readers: Iterable[Any]):
        super().__init__()
        self.readers = readers

    def __iter__(self) -> Iterator[Any]:
        return iter(self.readers)


def data_loader(
    readers: Iterable[Any],
    num_workers: int,
    prefetch_factor: int,
    worker_init_fn: Callable,
    context: str | None,
) -> DataLoader:
    """A ``DataLoader`` whose ``num_workers`` workers iterate ``readers``; items pass as they are."""
    # Each DataLoader iterator draws its workers' base seed from ``generator`` (else from torch's global RNG,
    # one draw per iteration: a resumed run would stand one draw past the RNG state its checkpoint restored).
    generator = torch.Generator().manual_seed(0)  # the stream is deterministic; the workers' own RNGs unused
    return DataLoader(
        ReadersDataset(readers),
        batch_size=None,
        collate_fn=collate_as_is,
        num_workers=num_workers,
        generator=generator,
        prefetch_factor=prefetch_factor,
        worker_init_fn=worker_init_fn,
        multiprocessing_context=context,
    )


def from_numpy(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``array``'s memory."""
    return torch.from_numpy(array)


def cuda_available() -> bool:
    return torch.cuda.is_available()
