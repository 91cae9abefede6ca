"""The mixture config (``mixture.yaml``): which shards of which source/subset, filtered how.

Example::

    name: openelm-sample
    synthetic: true                 # generated text (elm-data's sample): said in every record, no real
    upstream seed: 0 tokenizer: null                 # or a path/URL; --tokenizer and $ELM_DATA_TOKENIZER also
    work targets: openelm                # target preset (or a YAML file) the audit compares against filters:
    {min_characters: 200, min_tokens: 256, nfc_normalization: false, quality: []} sequences: {mode: packed,
    seq_len: 2048} heldout: {fraction: 0.01}       # optional: hold out ~1% of each subset's passing documents
    (default 0: none) sources:
      - source: redpajama
        subset: arxiv
        weight: 28                  # optional mixing weight; omitted = natural proportion (resolved_weights)
        shards: ["redpajama/arxiv/arxiv_*.jsonl"]   # paths relative to this file, globs or URLs
      - source: dolma
        subset: wiki
        shards_from: hf://datasets/allenai/dolma/urls/v1_6.txt   # a URL-list file, local or remote
        match: "*/wiki/*"           # keep the listed URLs matching this fnmatch pattern
        revision: main              # the hub commit every hf:// path of the entry is read at
        fraction: 0.01              # optional: 1% of the entry's shards, evenly spaced
        allow_local_shards: false   # true: the (remote / zipped) list may name local paths (trusted lists
        only)

The file is read by the one settings loader (``elm_data/core/settings.py``): an unknown key at any level is
refused naming the nearest valid one, before anything is built. Relative shard paths resolve against the YAML
file's folder; globs expand through fsspec
and are sorted, so a mixture always names the same shards in the same order
(``manifests/shard_lists.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elm_data.core.errors import InvalidValue
from elm_data.core.settings import (
    Settings,
    SettingsError,
    check_keys,
    config_dir,
    convert,
    describe,
    load_mapping,
    resolve_path,
)
from elm_data.pipeline.config import FilterConfig, SequenceConfig
from elm_data.sources.registry import subset_key
from elm_data.sources.remote import RetryPolicy, storage_options

from .heldout import HeldoutConfig
from .shard_lists import entry_shards

# The top-level keys of mixture.yaml and what each must hold (``sources`` is read entry by entry).
MIXTURE_KEYS: dict[str, Any] = {
    "name": str | None,
    # the shards hold generated text (the sample): no shard derives from a real upstream file
    "synthetic": bool,
    "seed": int,
    "tokenizer": str | None,
    "targets": str | None,
    "filters": dict | None,
    "sequences": dict | None,
    "heldout": dict | None,  # held-out documents for per-source evaluation (manifests/heldout.py); in the id
    "sources": list,
    # how remote reads are retried (sources/remote.py:RetryPolicy); not in the manifest
    "retries": dict | None,
    "storage_options": dict | None,  # per protocol, e.g. {s3: {endpoint_url: ...}}; not in the manifest
}


@dataclass(frozen=True)
class MixtureEntry(Settings):
    """One ``sources:`` entry. ``weight`` omitted: the subset keeps its natural share of the tokens in a
    weighted stream (:func:`resolved_weights`); ``shards``/``shards_from`` take one string or a list."""

    source: str
    subset: str = "default"
    shards: tuple[str, ...] = ()
    weight: float | None = None
    shards_from: tuple[str, ...] = ()  # URL-list files
    revision: str | None = None  # hub commit for the entry's hf:// paths
    match: str | None = None  # fnmatch filter on the listed URLs
    fraction: float | None = None  # keep this share of the shards, evenly spaced
    allow_local_shards: bool = False  # a shards_from list that is not a local file may name local paths

    def __post_init__(self) -> None:
        if self.weight is not None and not 0 <= self.weight < float("inf"):
            raise InvalidValue(f"weight: expected a number >= 0, got {self.weight!r}")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise InvalidValue(f"fraction: expected a number in (0, 1], got {self.fraction!r}")
        if not (self.shards or self.shards_from):
            raise InvalidValue(
                "shards: lacks ['shards (or shards_from)']: an entry names shards or a URL list"
            )

    @property
    def key(self) -> str:
        return subset_key(self.source, self.subset)

    @classmethod
    def from_dict(cls, i: int, item: Any) -> MixtureEntry:
        """Entry ``i`` of ``sources:``; every message names ``sources[i]`` and the key."""
        where = f"sources[{i}]"
        if not isinstance(item, Mapping):
            raise SettingsError(f"{where}: lacks ['source', 'shards'] (an entry is a mapping, got {item!r})")
        item = {
            k: [v] if k in ("shards", "shards_from") and isinstance(v, str) else v for k, v in item.items()
        }
        if "subset" in item and not item["subset"]:
            item.pop("subset")  # `subset:` left empty: the source's only subset
        kwargs = cls.check_mapping(item, where)
        for key in ("weight", "fraction"):
            kwargs[key] = None if kwargs.get(key) is None else float(kwargs[key])
        try:
            return cls(**kwargs)
        except InvalidValue as error:
            raise SettingsError(f"{where}.{error}") from None


@dataclass(frozen=True)
class MixtureConfig:
    name: str
    entries: tuple[MixtureEntry, ...]
    filters: FilterConfig = field(default_factory=FilterConfig)
    sequences: SequenceConfig = field(default_factory=SequenceConfig)
    seed: int = 0
    tokenizer: str | None = None
    targets: str | None = "openelm"
    base_dir: str = "."
    # how remote reads are retried (``retries:``); never part of the manifest
    retries: RetryPolicy | None = None
    # fsspec options per protocol; never part of it either
    storage_options: dict[str, dict[str, Any]] | None = None
    # generated text (``synthetic: true``, the sample): recorded, and no upstream claimed
    synthetic: bool = False
    heldout: HeldoutConfig = field(default_factory=HeldoutConfig)  # the share of documents held out (0: none)

    @classmethod
    def load(cls, path: str | Path) -> MixtureConfig:
        """``mixture.yaml`` read by the one settings loader; any refusal names the file and the key."""
        raw = load_mapping(path, "mixture")
        try:
            return cls.from_dict(raw, base_dir=config_dir(path))
        except SettingsError as error:
            raise SettingsError(f"mixture {path}: {error}") from None

    @classmethod
    def from_dict(cls, raw: dict[str, Any], base_dir: str = ".") -> MixtureConfig:
        if not isinstance(raw, dict):
            raise SettingsError(f"expected a mapping of settings with a `sources:` list, got {describe(raw)}")
        check_keys(raw, MIXTURE_KEYS)
        values = {key: convert(value, MIXTURE_KEYS[key], key) for key, value in raw.items()}
        if not values.get("sources"):
            raise SettingsError("sources: the mixture config needs a non-empty `sources:` list")
        tokenizer = values.get("tokenizer")
        return cls(
            name=values.get("name") or "mixture",
            entries=tuple(MixtureEntry.from_dict(i, item) for i, item in enumerate(raw["sources"])),
            filters=FilterConfig.from_dict(values.get("filters")),
            sequences=SequenceConfig.from_dict(values.get("sequences")),
            seed=values.get("seed", 0),
            tokenizer=resolve_path(tokenizer, base_dir) if tokenizer else None,
            targets=values.get("targets", "openelm"),
            base_dir=base_dir,
            retries=RetryPolicy.from_dict(values["retries"]) if values.get("retries") is not None else None,
            storage_options=storage_options(values.get("storage_options")),
            synthetic=values.get("synthetic", False),
            heldout=HeldoutConfig.from_dict(values.get("heldout")),
        )

    def resolve_shards(self, entry: MixtureEntry, allow_local: bool = False) -> list[str]:
        """Every shard URI of an entry (globs expanded, URL lists read, revision pinned), sorted and
        de-duplicated; ``allow_local`` (``--allow-local-shards``) or the entry's ``allow_local_shards`` lifts
        the confinement of shard lists that are not local files."""
        return entry_shards(
            entry.shards,
            entry.shards_from,
            self.base_dir,
            entry.key,
            revision=entry.revision,
            match=entry.match,
            fraction=entry.fraction,
            allow_local=allow_local or entry.allow_local_shards,
        )


def resolved_weights(
    entries: Iterable[Mapping[str, Any]], kept_tokens: Mapping[str, int]
) -> dict[str, float] | None:
    """The mixing weight of every ``"source/subset"`` from a manifest's mixture entries (``manifest.json``'s
    ``mixture``) and its kept tokens per subset; None when no entry sets a weight (the natural stream).

    A subset none of whose entries sets a weight keeps its *natural* share of the tokens: with ``F`` the
    natural share (kept tokens / all kept tokens) of all such subsets and ``W`` the sum of the weights set, it
    gets ``W * share / (1 - F)``, so it is ``share`` of the stream and the weights set divide the other ``1 -
    F`` as written. Weights of entries of one subset add up. The stream, the audit and audit-run all read
    this."""
    given: dict[str, float] = {}
    for e in entries:
        if e.get("weight") is not None:
            key = subset_key(e["source"], e["subset"])
            given[key] = given.get(key, 0.0) + float(e["weight"])
    if not given:
        return None
    total = sum(kept_tokens.values())
    natural = {k: t / total for k, t in kept_tokens.items() if k not in given and t > 0} if total else {}
    omitted_share, weight_sum = sum(natural.values()), sum(given.values())
    if not natural:
        return given
    scale = weight_sum / (1 - omitted_share) if weight_sum > 0 and omitted_share < 1 else 1.0
    return given | {k: share * scale for k, share in natural.items()}
