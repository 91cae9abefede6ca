"""Adapters for datatrove's quality filters, called document by document (no datatrove executor).

Each adapter resolves its full parameter set (datatrove's defaults included) so that the manifest
records, and its id depends on, every threshold. The datatrove filter object is built lazily and
left out of pickles, so adapters travel to worker processes (multiprocessing, Apache Beam) cheaply.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from elm_data.core.canonical_json import json_safe
from elm_data.core.errors import InvalidValue

from .config import QualityFilterSpec

# name in the mixture YAML -> (datatrove module, class)
QUALITY_FILTERS: dict[str, tuple[str, str]] = {
    "gopher_quality": ("datatrove.pipeline.filters.gopher_quality_filter", "GopherQualityFilter"),
    "gopher_repetition": ("datatrove.pipeline.filters.gopher_repetition_filter", "GopherRepetitionFilter"),
    "c4_quality": ("datatrove.pipeline.filters.c4_filters", "C4QualityFilter"),
    "c4_paragraph": ("datatrove.pipeline.filters.c4_filters", "C4ParagraphFilter"),
    "fineweb_quality": ("datatrove.pipeline.filters.fineweb_quality_filter", "FineWebQualityFilter"),
}
_NOT_PARAMETERS = {"self", "exclusion_writer"}


def _filter_class(name: str) -> type:
    if name not in QUALITY_FILTERS:
        raise InvalidValue(f"unknown quality filter {name!r}; known: {sorted(QUALITY_FILTERS)}")
    module, cls = QUALITY_FILTERS[name]
    return getattr(importlib.import_module(module), cls)


def resolve_quality_params(spec: QualityFilterSpec) -> dict[str, Any]:
    """Every constructor parameter of the datatrove filter: its defaults overridden by ``spec.params``."""
    signature = inspect.signature(_filter_class(spec.name).__init__)
    accepted = {
        p.name: p.default
        for p in signature.parameters.values()
        if p.name not in _NOT_PARAMETERS and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    unknown = set(spec.params) - set(accepted)
    if unknown:
        raise InvalidValue(
            f"quality filter {spec.name!r} has no parameter(s) {sorted(unknown)}; known: {sorted(accepted)}"
        )
    resolved = {k: (None if v is inspect.Parameter.empty else v) for k, v in accepted.items()}
    resolved.update(spec.params)
    return json_safe(resolved, sort_keys=True)


class QualityFilter:
    """One datatrove quality filter: ``check(text, doc_id)`` returns None (keep) or a drop reason.

    Reasons read ``"<name>:<datatrove reason>"``, e.g. ``"gopher_quality:gopher_enough_stop_words"``;
    a bare ``False`` from datatrove becomes ``"<name>:dropped"``.
    """

    def __init__(self, spec: QualityFilterSpec):
        self.name = spec.name
        self.params = resolve_quality_params(spec)
        self._user_params = dict(spec.params)
        self._filter = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params}

    def _build(self):
        self._filter = _filter_class(self.name)(**self._user_params)
        return self._filter

    def check(self, text: str, doc_id: str = "") -> str | None:
        from datatrove.data import Document as DatatroveDocument

        datatrove_filter = self._filter or self._build()
        try:
            outcome = datatrove_filter.filter(DatatroveDocument(text=text, id=doc_id))
        except Exception as e:  # a filter crash names the document instead of losing it
            raise RuntimeError(f"quality filter {self.name!r} failed on document {doc_id!r}: {e}") from e
        keep, reason = outcome if isinstance(outcome, tuple) else (outcome, None)
        return None if keep else f"{self.name}:{reason or 'dropped'}"

    def __getstate__(self):
        return {"name": self.name, "params": self.params, "_user_params": self._user_params, "_filter": None}

    def __setstate__(self, state):
        self.__dict__.update(state)


def build_quality_filters(specs: tuple[QualityFilterSpec, ...]) -> list[QualityFilter]:
    """Adapters in configured order (the first filter that drops a text names the reason)."""
    return [QualityFilter(spec) for spec in specs]
