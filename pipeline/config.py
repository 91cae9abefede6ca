"""Plain configuration records for the per-document pass and sequence forming.

They are part of what defines a mixture: ``to_dict()`` output goes into the manifest and
its id, so every field must be JSON-serialisable and deterministic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SEQUENCE_MODES = ("packed", "corenet")


@dataclass(frozen=True)
class QualityFilterSpec:
    """One of datatrove's quality filters, by name, with its keyword parameters."""

    name: str  # e.g. "gopher_quality", "gopher_repetition", "c4_quality", "fineweb_quality"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FilterConfig:
    """OpenELM's rule (as CoreNet applies it) plus optional datatrove quality filters."""

    min_characters: int = 200
    min_tokens: int = 256
    nfc_normalization: bool = False  # CoreNet's enable_nfc_normalization: ftfy.fix_text(NFC)
    quality: tuple[QualityFilterSpec, ...] = ()
    # CoreNet counts the BOS/EOS its tokenizer appends (OpenELM's configs append both) towards
    # min_tokens; True reproduces that (content tokens + 2 >= min_tokens). Segments never hold them.
    min_tokens_counts_bos_eos: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["quality"] = [{"name": q.name, "params": dict(sorted(q.params.items()))} for q in self.quality]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> FilterConfig:
        d = dict(d or {})
        quality = tuple(
            QualityFilterSpec(name=q["name"], params=dict(q.get("params") or {}))
            if isinstance(q, dict)
            else QualityFilterSpec(name=str(q))
            for q in d.pop("quality", None) or ()
        )
        unknown = set(d) - {"min_characters", "min_tokens", "nfc_normalization", "min_tokens_counts_bos_eos"}
        if unknown:
            raise ValueError(f"unknown filter setting(s): {sorted(unknown)}")
        return cls(quality=quality, **d)


@dataclass(frozen=True)
class SequenceConfig:
    """How tokenized documents become fixed-length training sequences."""

    mode: str = "packed"  # "packed" or "corenet"
    seq_len: int = 2048  # sequences are seq_len + 1 tokens (inputs and shifted labels)
    corenet_words_per_piece: int = 2048
    pad_id: int = 32000
    document_masks: bool = False

    def __post_init__(self) -> None:
        if self.mode not in SEQUENCE_MODES:
            raise ValueError(f"sequence mode must be one of {SEQUENCE_MODES}, got {self.mode!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SequenceConfig:
        return cls(**dict(d or {}))
