"""The training stream: a manifest's kept documents as whole, provenance-tagged, resumable batches.

Read in this order: ``plan.py`` (partitions and the global batch order), ``mixing.py`` and
``partition.py`` (one partition's documents and batches from a cursor), ``reading.py`` (verified
blocks), ``sequences.py`` (framing and layout), ``dataset.py`` (``TokenStream``), ``loader.py``
(``StreamLoader``: order, state, resume), ``ledger.py`` (what was handed out).
"""

from elm_data.pipeline.tokenizer import TokenizerMismatch

from .dataset import TokenStream
from .loader import StreamLoader, merge_states, take_sequences
from .plan import Plan, PlanConfig, PlanError
from .reading import StreamIntegrityError

__all__ = [
    "Plan",
    "PlanConfig",
    "PlanError",
    "StreamIntegrityError",
    "StreamLoader",
    "TokenStream",
    "TokenizerMismatch",
    "merge_states",
    "take_sequences",
]
