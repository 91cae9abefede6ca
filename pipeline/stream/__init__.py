"""The training stream: a manifest's kept documents as whole, provenance-tagged, resumable batches.

Entry points::

    stream = TokenStream(manifest_dir, batch_size=8, seq_len=2048)   # what to stream (never changes)
    loader = StreamLoader(stream, num_workers=2)                     # the position, in global batch order
    for batch in loader: ...                                         # input_ids, spans, tokens_by_source, ...
    loader.state_dict(); loader.load_state_dict(state); merge_states(states_of_all_ranks)

Read in this order: ``plan.py`` (partitions and the global batch order), ``mixing.py`` and
``partition.py`` (one partition's documents and batches from a cursor), ``reading.py`` (verified
blocks), ``sequences.py`` (framing and layout), ``dataset.py`` (``TokenStream`` and its readers),
``loader.py`` (``StreamLoader``: order, position, resume), ``state.py`` (the saved state),
``consumed.py`` (what was handed out), ``receipt.py`` (the consumption receipt, from the plan alone).
"""

from elm_data.pipeline.tokenizer import TokenizerMismatch

from .dataset import TokenStream
from .loader import StreamLoader, take_sequences
from .plan import Plan, PlanConfig, PlanError
from .reading import StreamIntegrityError
from .state import merge_states

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
