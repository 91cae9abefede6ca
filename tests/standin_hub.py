"""A stand-in for remote filesystems in offline tests: a local folder served under a URL protocol.

``serve(root, "hf")`` makes ``hf://datasets/org/name@rev/data/x.parquet`` read
``root/datasets/org/name@rev/data/x.parquet`` (``https://host/p`` reads ``root/host/p``), so a mirror
with the upstream layout answers the very URLs a shipped mixture names.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem


def _standin(root: Path, protocol: str) -> type:
    class StandIn(DirFileSystem):
        cachable = False

        def __init__(self, *args, **kwargs):
            super().__init__(path=str(root), fs=LocalFileSystem())

    StandIn.protocol = (protocol,)
    return StandIn


def _registry() -> dict:
    return sys.modules["fsspec.registry"]._registry  # the mutable mapping behind fsspec.registry


@contextlib.contextmanager
def serve(root: Path, *protocols: str) -> Iterator[Path]:
    """Serve ``root/<path>`` as ``<protocol>://<path>`` for each protocol, restoring the registry after."""
    registry = _registry()
    saved = {p: registry.get(p) for p in protocols}
    for p in protocols:
        fsspec.register_implementation(p, _standin(root, p), clobber=True)
    try:
        yield root
    finally:
        for p, impl in saved.items():
            if impl is None:
                registry.pop(p, None)
            else:
                registry[p] = impl


@contextlib.contextmanager
def offline(*protocols: str) -> Iterator[None]:
    """Every open under ``protocols`` fails as with no network."""

    class Offline(LocalFileSystem):
        def open(self, *args, **kwargs):
            raise ConnectionError("Failed to resolve 'huggingface.co' (no network)")

        _open = open

    registry = _registry()
    saved = {p: registry.get(p) for p in protocols}
    for p in protocols:
        fsspec.register_implementation(p, type("Offline", (Offline,), {"protocol": (p,)}), clobber=True)
    try:
        yield
    finally:
        for p, impl in saved.items():
            if impl is None:
                registry.pop(p, None)
            else:
                registry[p] = impl
