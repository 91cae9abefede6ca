"""What a loader handed out: tokens consumed per source (saved in the stream state) and padding/discard stats.

"Ledger" is the manifest's documents ledger only; the counts here are the consumer's side of the stream.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class ConsumedTokens(Counter):
    """Cumulative non-pad tokens handed out per ``"source/subset"`` (BOS/EOS included); a plain dict to save.

    A run's state carries it, so after a resume it still counts from the run's first batch.
    """

    def add(self, by_source: Mapping[str, int]) -> None:
        for key, n in by_source.items():
            self[key] += int(n)

    def to_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in sorted(self.items())}


@dataclass
class StreamStats:
    """Counts over the batches one loader handed out (not saved: they restart with each loader).

    ``tokens``: non-pad tokens fed (BOS/EOS included); ``pad_tokens``: padding slots;
    ``discarded_tokens``: tokens cut off by CoreNet's truncation to ``seq_len + 1`` (0 in packed mode);
    ``token_slots`` = ``sequences × window`` = ``tokens + pad_tokens``.
    """

    mode: str
    window: int
    batches: int = 0
    sequences: int = 0
    token_slots: int = 0
    tokens: int = 0
    pad_tokens: int = 0
    discarded_tokens: int = 0
    tokens_by_source: Counter = field(default_factory=Counter)

    def add(self, batch: Mapping[str, Any]) -> None:
        """Count one stream batch (``input_ids``, ``pad_tokens``, ``discarded_tokens``,
        ``tokens_by_source``)."""
        sequences = len(batch["input_ids"])
        self.batches += 1
        self.sequences += sequences
        self.token_slots += sequences * self.window
        self.pad_tokens += batch["pad_tokens"]
        self.discarded_tokens += batch["discarded_tokens"]
        for key, n in batch["tokens_by_source"].items():
            self.tokens += n
            self.tokens_by_source[key] += n

    def to_dict(self) -> dict[str, Any]:
        offered = self.tokens + self.discarded_tokens
        return {
            "mode": self.mode,
            "batches": self.batches,
            "sequences": self.sequences,
            "token_slots": self.token_slots,
            "tokens": self.tokens,
            "pad_tokens": self.pad_tokens,
            "padding_fraction": self.pad_tokens / self.token_slots if self.token_slots else 0.0,
            "discarded_tokens": self.discarded_tokens,
            "discarded_fraction": self.discarded_tokens / offered if offered else 0.0,
            "tokens_by_source": dict(sorted(self.tokens_by_source.items())),
        }


def expected_natural_pass(manifest_shards, mode: str = "packed") -> dict[str, int]:
    """What one natural packed pass must feed per source: kept tokens + BOS/EOS per kept segment (invariant
    2)."""
    if mode != "packed":
        raise ValueError("only packed mode feeds every kept token; corenet truncates pieces to seq_len + 1")
    out: Counter = Counter()
    for rec in manifest_shards:
        out[rec.key] += rec.tokens + 2 * rec.segments
    return dict(sorted(out.items()))
