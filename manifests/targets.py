"""Target token counts the audit compares a manifest against.

``openelm`` is the OpenELM pre-training mix (arXiv 2404.14619, Table 2) as the sources registry
records it; any other value is a YAML file mapping ``"source/subset"`` to target tokens, either at
the top level or under ``targets:`` (an optional ``name:`` labels it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec
import yaml

from elm_data.core.errors import InvalidValue, NotFound
from elm_data.sources.registry import OPENELM_TARGETS

PRESETS = ("openelm",)


def load_targets(spec: str | dict[str, Any], base_dir: str | Path = ".") -> dict[str, Any]:
    """``{"name": str, "tokens": {"source/subset": int}}`` from a preset name, a YAML file or a dict."""
    if isinstance(spec, dict):
        return _normalise(spec.get("name", "custom"), spec.get("tokens", spec))
    if spec in PRESETS:
        return _normalise("openelm", OPENELM_TARGETS)
    path = spec if "://" in spec or Path(spec).is_absolute() else str(Path(base_dir) / spec)
    try:
        with fsspec.open(path, "rt") as f:
            raw = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise NotFound(f"targets {spec!r}: neither a preset {PRESETS} nor a readable YAML file") from None
    if not isinstance(raw, dict):
        raise InvalidValue(f"{path}: targets must be a mapping of 'source/subset' to tokens")
    return _normalise(raw.get("name", Path(path).stem), raw.get("targets", raw))


def _normalise(name: str, tokens: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in tokens.items():
        if key == "name":
            continue
        if "/" not in str(key):
            raise InvalidValue(f"target key {key!r} must be 'source/subset'")
        out[str(key)] = int(value)
    if not out:
        raise InvalidValue(f"targets {name!r} name no source/subset")
    return {"name": str(name), "tokens": dict(sorted(out.items()))}
