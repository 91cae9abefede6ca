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

Relative shard paths resolve against the YAML file's folder; globs expand through fsspec
and are sorted, so a mixture always names the same shards in the same order.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import yaml

from elm_data.pipeline.config import FilterConfig, SequenceConfig


@dataclass(frozen=True)
class MixtureEntry:
    source: str
    subset: str
    shards: tuple[str, ...]
    weight: float | None = None


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
        if not raw.get("sources"):
            raise ValueError("mixture config has no `sources:` list")
        entries = []
        for i, item in enumerate(raw["sources"]):
            missing = {"source", "shards"} - set(item)
            if missing:
                raise ValueError(f"sources[{i}] lacks {sorted(missing)}")
            shards = item["shards"]
            shards = [shards] if isinstance(shards, str) else list(shards)
            entries.append(
                MixtureEntry(
                    source=str(item["source"]),
                    subset=str(item.get("subset") or "default"),
                    shards=tuple(shards),
                    weight=None if item.get("weight") is None else float(item["weight"]),
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
            seed=int(raw.get("seed", 0)),
            tokenizer=tok,
            targets=raw.get("targets", "openelm"),
            base_dir=base_dir,
        )

    def resolve_shards(self, entry: MixtureEntry) -> list[str]:
        """Expand an entry's shard patterns into a sorted, de-duplicated list of URIs."""
        uris: list[str] = []
        for pattern in entry.shards:
            full = pattern if "://" in pattern or pattern.startswith("/") else f"{self.base_dir}/{pattern}"
            if any(ch in full for ch in "*?["):
                fs, _, paths = fsspec.get_fs_token_paths(full)
                protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
                found = sorted(p if protocol == "file" else f"{protocol}://{p}" for p in paths)
                if not found:
                    raise FileNotFoundError(f"{entry.source}/{entry.subset}: no shard matches {pattern!r}")
                uris.extend(found)
            else:
                uris.append(full)
        return sorted(dict.fromkeys(uris))
