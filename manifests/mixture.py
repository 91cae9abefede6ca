"""The mixture config (``mixture.yaml``): which shards of which source/subset, filtered how.

Example::

    name: openelm-sample
    seed: 0
    tokenizer: null                 # or a path/URL; --tokenizer and $ELM_DATA_TOKENIZER also work
    targets: openelm                # target preset (or a YAML file) the audit compares against
    filters: {min_characters: 200, min_tokens: 256, nfc_normalization: false, quality: []}
    sequences: {mode: packed, seq_len: 2048}
    sources:
      - source: redpajama
        subset: arxiv
        weight: 28                  # optional mixing weight; omitted = natural proportion
        shards: ["redpajama/arxiv/arxiv_*.jsonl"]   # paths relative to this file, globs or URLs
      - source: dolma
        subset: wiki
        shards_from: hf://datasets/allenai/dolma/urls/v1_6.txt   # a URL-list file, local or remote
        match: "*/wiki/*"           # keep the listed URLs matching this fnmatch pattern
        revision: main              # the hub commit every hf:// path of the entry is read at
        fraction: 0.01              # optional: 1% of the entry's shards, evenly spaced
        allow_local_shards: false   # true: the (remote / zipped) list may name local paths (trusted lists only)

Relative shard paths resolve against the YAML file's folder; globs expand through fsspec
and are sorted, so a mixture always names the same shards in the same order
(``manifests/shard_lists.py``).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import yaml

from elm_data.core.errors import InvalidValue
from elm_data.pipeline.config import FilterConfig, SequenceConfig
from elm_data.sources.registry import subset_key

from .shard_lists import entry_shards


@dataclass(frozen=True)
class MixtureEntry:
    source: str
    subset: str
    shards: tuple[str, ...]
    weight: float | None = None
    shards_from: tuple[str, ...] = ()  # URL-list files
    revision: str | None = None  # hub commit for the entry's hf:// paths
    match: str | None = None  # fnmatch filter on the listed URLs
    fraction: float | None = None  # keep this share of the shards, evenly spaced
    allow_local_shards: bool = False  # a shards_from list that is not a local file may name local paths

    @property
    def key(self) -> str:
        return subset_key(self.source, self.subset)


def _weight(i: int, value: Any) -> float | None:
    """A mixing weight: omitted (natural proportion) or a finite number >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise InvalidValue(f"sources[{i}].weight: expected a number >= 0, got {value!r}")
    return float(value)


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (str(value),) if isinstance(value, str) else tuple(str(v) for v in value)


def _fraction(i: int, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise InvalidValue(f"sources[{i}].fraction: expected a number in (0, 1], got {value!r}")
    return float(value)


def _flag(i: int, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidValue(f"sources[{i}].{key}: expected true or false, got {value!r}")
    return value


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValue(f"seed: expected an integer, got {value!r}")
    return value


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

    @classmethod
    def load(cls, path: str | Path) -> MixtureConfig:
        path = str(path)
        with fsspec.open(path, "rt") as f:
            raw = yaml.safe_load(f) or {}
        base = posixpath.dirname(path) if "://" in path else str(Path(path).resolve().parent)
        return cls.from_dict(raw, base_dir=base)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], base_dir: str = ".") -> MixtureConfig:
        if not isinstance(raw, dict) or not isinstance(raw.get("sources"), list) or not raw["sources"]:
            raise InvalidValue("sources: the mixture config needs a non-empty `sources:` list")
        entries = []
        for i, item in enumerate(raw["sources"]):
            missing = {"source"} - set(item) if isinstance(item, dict) else {"source", "shards"}
            if not missing and not (item.get("shards") or item.get("shards_from")):
                missing = {"shards (or shards_from)"}
            if missing:
                raise InvalidValue(f"sources[{i}]: lacks {sorted(missing)}")
            entries.append(
                MixtureEntry(
                    source=str(item["source"]),
                    subset=str(item.get("subset") or "default"),
                    shards=_strings(item.get("shards")),
                    weight=_weight(i, item.get("weight")),
                    shards_from=_strings(item.get("shards_from")),
                    revision=None if item.get("revision") is None else str(item["revision"]),
                    match=None if item.get("match") is None else str(item["match"]),
                    fraction=_fraction(i, item.get("fraction")),
                    allow_local_shards=_flag(i, "allow_local_shards", item.get("allow_local_shards", False)),
                )
            )
        tok = raw.get("tokenizer")
        if tok and "://" not in str(tok) and not Path(tok).is_absolute():
            tok = str(Path(base_dir) / tok)
        return cls(
            name=str(raw.get("name") or "mixture"),
            entries=tuple(entries),
            filters=FilterConfig.from_dict(raw.get("filters")),
            sequences=SequenceConfig.from_dict(raw.get("sequences")),
            seed=_seed(raw.get("seed", 0)),
            tokenizer=tok,
            targets=raw.get("targets", "openelm"),
            base_dir=base_dir,
        )

    def resolve_shards(self, entry: MixtureEntry, allow_local: bool = False) -> list[str]:
        """Every shard URI of an entry (globs expanded, URL lists read, revision pinned), sorted and de-duplicated;
        ``allow_local`` (``--allow-local-shards``) or the entry's ``allow_local_shards`` lifts the confinement of
        shard lists that are not local files."""
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
