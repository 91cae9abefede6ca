"""A stand-in for remote filesystems in offline tests: a local folder served under a URL protocol.

``serve(root, "hf")`` makes ``hf://datasets/org/name@rev/data/x.parquet`` read
``root/datasets/org/name@rev/data/x.parquet`` (``https://host/p`` reads ``root/host/p``), so a mirror
with the upstream layout answers the very URLs a shipped mixture names.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem


class Faults:
    """Every ``every``-th read (a ranged ``cat_file`` or a file's ``read``) fails as a reset connection."""

    def __init__(self, every: int = 0):
        self.every, self.reads, self.failed = every, itertools.count(1), 0
        self.lock = threading.Lock()

    def tick(self) -> None:
        with self.lock:
            n = next(self.reads)
            fail = bool(self.every) and n % self.every == 0
            self.failed += fail
        if fail:
            raise ConnectionResetError(104, "Connection reset by peer (stand-in hub fault)")


class _FaultyFile(io.RawIOBase):
    def __init__(self, f, faults: Faults):
        super().__init__()
        self.f, self.faults = f, faults
        self.size = getattr(f, "size", None)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def read(self, n: int = -1) -> bytes:
        self.faults.tick()
        return self.f.read(n)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.f.close()
        super().close()


def _standin(root: Path, protocol: str, faults: Faults | None = None) -> type:
    class StandIn(DirFileSystem):
        cachable = False

        def __init__(self, *args, **kwargs):
            super().__init__(path=str(root), fs=LocalFileSystem())

        def cat_file(self, path, start=None, end=None, **kwargs):
            if faults is not None:
                faults.tick()
            return super().cat_file(path, start=start, end=end, **kwargs)

        def open(self, path, *args, **kwargs):
            f = super().open(path, *args, **kwargs)
            return _FaultyFile(f, faults) if faults is not None else f

    StandIn.protocol = (protocol,)
    return StandIn


def _registry() -> dict:
    return sys.modules["fsspec.registry"]._registry  # the mutable mapping behind fsspec.registry


@contextlib.contextmanager
def serve(root: Path, *protocols: str, faults: Faults | None = None) -> Iterator[Path]:
    """Serve ``root/<path>`` as ``<protocol>://<path>`` for each protocol, restoring the registry after;
    ``faults``: reads fail on its schedule, as over a flaky network."""
    registry = _registry()
    saved = {p: registry.get(p) for p in protocols}
    for p in protocols:
        fsspec.register_implementation(p, _standin(root, p, faults), clobber=True)
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


def mirror_upstream(sample_dir: Path, root: Path, revision: str = "main") -> dict[str, list[str]]:
    """A local mirror, under ``root/<protocol>/``, of the upstream layout of the sample corpus' shards.

    Each sample shard is placed where its subset publishes it upstream (the registry's ``upstream_uri``;
    hub paths at ``@revision``), and the URL lists RedPajama-1T and Dolma v1.6 publish are written with
    every mirrored shard plus one line of a subset OpenELM does not use. Returns the upstream URLs per
    ``source/subset``. Serve it with ``serve(root / "hf", "hf")`` and ``serve(root / "https", "https")``.
    """
    import shutil

    from elm_data.manifests.mixture import MixtureConfig
    from elm_data.manifests.shard_lists import pin_revision
    from elm_data.sources.registry import DOLMA_URL_LIST, RP_URL_LIST, get_subset

    mixture = MixtureConfig.load(sample_dir / "mixture.yaml")
    urls: dict[str, list[str]] = {}
    for entry in mixture.entries:
        spec = get_subset(entry.source, entry.subset)
        for shard in mixture.resolve_shards(entry):
            url = pin_revision(spec.upstream_uri(shard), revision)
            if not url.startswith(("hf://", "https://data.together", "https://olmo-data")):
                continue  # the original Pile (offline upstream) is not in OpenELM's mix
            protocol, path = url.split("://", 1)
            (root / protocol / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shard, root / protocol / path)
            urls.setdefault(spec.key, []).append(url)
    lists = {RP_URL_LIST: "redpajama/", DOLMA_URL_LIST: "dolma/"}
    others = {
        RP_URL_LIST: "common_crawl/2023-06/en_head_0000.json.gz.dedup.classifier.jsonl.zst",
        DOLMA_URL_LIST: "cc_en_head/cc_en_head-0000.json.gz",
    }
    for listing, prefix in lists.items():
        lines = [u for key, us in urls.items() if key.startswith(prefix) for u in us]
        lines.append(lines[0].rsplit("/", 2)[0] + "/" + others[listing])
        protocol, path = pin_revision(listing, revision).split("://", 1)
        (root / protocol / path).parent.mkdir(parents=True, exist_ok=True)
        (root / protocol / path).write_text("\n".join(sorted(lines)) + "\n")
    return urls
