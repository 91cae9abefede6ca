"""Target token counts the audit compares a manifest against.

``openelm`` is the OpenELM pre-training mix (arXiv 2404.14619, Table 2) as the sources registry
records it; any other value is a YAML file mapping ``"source/subset"`` to target tokens, either at
the top level or under ``targets:`` (an optional ``name:`` labels it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from elm_data.core.errors import InvalidValue, NotFound
from elm_data.core.settings import SettingsError, check_keys, describe, load_mapping, resolve_path
from elm_data.sources.registry import OPENELM_TARGETS

PRESETS = ("openelm",)


def load_targets(spec: str | dict[str, Any], base_dir: str | Path = ".") -> dict[str, Any]:
    """``{"name": str, "tokens": {"source/subset": int}}`` from a preset name, a YAML file or a dict.

    A file is read by the one settings loader (:func:`~elm_data.core.settings.load_mapping`); with a
    ``targets:`` section, its only other key is ``name:``; every count is an integer >= 0."""
    if isinstance(spec, dict):
        return _normalise(spec.get("name", "custom"), spec.get("tokens", spec))
    if spec in PRESETS:
        return _normalise("openelm", OPENELM_TARGETS)
    path = resolve_path(spec, base_dir)
    try:
        raw = load_mapping(path, "targets")
    except NotFound:
        raise NotFound(f"targets {spec!r}: neither a preset {PRESETS} nor a readable YAML file") from None
    try:
        if "targets" in raw:
            check_keys(raw, ("name", "targets"))
        return _normalise(raw.get("name", Path(path).stem), raw.get("targets", raw))
    except InvalidValue as error:
        raise SettingsError(f"targets {path}: {error}") from None


def _normalise(name: Any, tokens: Any) -> dict[str, Any]:
    if not isinstance(tokens, dict):
        raise SettingsError(
            f"targets: expected a mapping of 'source/subset' to tokens, got {describe(tokens)}"
        )
    out = {}
    for key, value in tokens.items():
        if key == "name":
            continue
        if "/" not in str(key):
            raise SettingsError(f"target key {key!r} must be 'source/subset'")
        # 2.8e+10 is a count
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not whole or value < 0:
            raise SettingsError(f"{key}: expected a token count (an integer >= 0), got {describe(value)}")
        out[str(key)] = int(value)
    if not out:
        raise SettingsError(f"targets {name!r} name no source/subset")
    return {"name": str(name), "tokens": dict(sorted(out.items()))}
