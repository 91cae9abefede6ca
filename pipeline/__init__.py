"""The per-document pass shared by the manifest builder and the training stream: filter, then tokenize.

Entry points: ``DocumentPass(filters, sequences, tokenizer).process(documents)`` gives one :class:`PassResult`
per document (kept with its token ids, or filtered with a reason), counted in :class:`Counts`;
``FilterConfig`` and ``SequenceConfig`` are its settings; ``resolve_tokenizer(flag)`` finds the pinned
``LlamaTokenizer``. The training stream built on the pass is the sub-package :mod:`elm_data.pipeline.stream`
(a layer above ``manifests``, so nothing here imports it). Names load on first use.
"""

from __future__ import annotations

from elm_data.core.lazy import lazy_attributes

_ENTRY_POINTS = {
    "DocumentPass": "document_pass",
    "PassResult": "document_pass",
    "Counts": "counts",
    "FilterConfig": "config",
    "SequenceConfig": "config",
    "LlamaTokenizer": "tokenizer",
    "resolve_tokenizer": "tokenizer",
}

__all__ = list(_ENTRY_POINTS)
__getattr__, __dir__ = lazy_attributes(__name__, _ENTRY_POINTS)
