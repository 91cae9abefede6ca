"""Plain configuration records for the per-document pass and sequence forming.

They are part of what defines a mixture: ``to_dict()`` output goes into the manifest and
its id, so every field must be JSON-serialisable and deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from elm_data.core.errors import InvalidValue
from elm_data.core.settings import Settings
from elm_data.pipeline.tokenizer import PAD_ID
from elm_data.sources.document import MAX_RECORD_BYTES

SEQUENCE_MODES = ("packed", "corenet")


def _require(ok: bool, key: str, expected: str, value: Any) -> None:
    """Refuse ``value`` of config ``key`` in one line unless ``ok``."""
    if not ok:
        raise InvalidValue(f"{key}: expected {expected}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class QualityFilterSpec(Settings):
    """One of datatrove's quality filters, by name, with its keyword parameters."""

    name: str  # e.g. "gopher_quality", "gopher_repetition", "c4_quality", "fineweb_quality"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FilterConfig(Settings):
    """OpenELM's rule (as CoreNet applies it) plus optional datatrove quality filters."""

    min_characters: int = 200
    min_tokens: int = 256
    nfc_normalization: bool = False  # CoreNet's enable_nfc_normalization: ftfy.fix_text(NFC)
    quality: tuple[QualityFilterSpec, ...] = ()
    # CoreNet counts the BOS/EOS its tokenizer appends (OpenELM's configs append both) towards
    # min_tokens; True reproduces that (content tokens + 2 >= min_tokens). Segments never hold them.
    min_tokens_counts_bos_eos: bool = False
    # A JSONL record (line) longer than this many bytes is a counted rejection ``record_too_large``, read in
    # bounded memory. In ``to_dict`` only when not the default, so manifests built before it keep their id.
    max_record_bytes: int = MAX_RECORD_BYTES
    # Drop documents that duplicate an earlier kept one (manifest order): "exact" (same normalized text) or
    # "minhash" (also near copies, MinHash-LSH); applied by the build over all shards
    # (manifests/dedup_filter.py),
    # never by the per-document pass. In ``to_dict`` only when set, so manifests built before it keep their
    # id.
    dedup: Literal["exact", "minhash"] | None = None

    def __post_init__(self) -> None:
        for key in ("min_characters", "min_tokens"):
            value = getattr(self, key)
            _require(_is_int(value) and value >= 0, f"filters.{key}", "an integer >= 0", value)
        limit = self.max_record_bytes
        _require(_is_int(limit) and limit > 0, "filters.max_record_bytes", "an integer > 0 (bytes)", limit)
        for key in ("nfc_normalization", "min_tokens_counts_bos_eos"):
            _require(
                isinstance(getattr(self, key), bool), f"filters.{key}", "true or false", getattr(self, key)
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["quality"] = [{"name": q.name, "params": dict(sorted(q.params.items()))} for q in self.quality]
        if self.max_record_bytes == MAX_RECORD_BYTES:
            del d["max_record_bytes"]
        if self.dedup is None:
            del d["dedup"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, where: str = "filters") -> FilterConfig:
        """The ``filters:`` section (None: the defaults); a quality filter is a name or ``{name, params}``."""
        if isinstance(d, Mapping) and isinstance(d.get("quality"), list):
            d = {**d, "quality": [{"name": q} if isinstance(q, str) else q for q in d["quality"]]}
        return cls.from_mapping(d, where)


@dataclass(frozen=True)
class SequenceConfig(Settings):
    """How tokenized documents become fixed-length training sequences."""

    mode: str = "packed"  # "packed" or "corenet"
    seq_len: int = 2048  # sequences are seq_len + 1 tokens (inputs and shifted labels)
    corenet_words_per_piece: int = 2048
    pad_id: int = PAD_ID  # must be PAD_ID: the one pad id the stream, the loss and the model agree on
    document_masks: bool = False

    def __post_init__(self) -> None:
        _require(self.mode in SEQUENCE_MODES, "sequences.mode", f"one of {SEQUENCE_MODES}", self.mode)
        for key in ("seq_len", "corenet_words_per_piece"):
            value = getattr(self, key)
            _require(_is_int(value) and value > 0, f"sequences.{key}", "an integer > 0", value)
        _require(
            self.pad_id == PAD_ID and _is_int(self.pad_id),
            "sequences.pad_id",
            f"{PAD_ID} (PAD_ID)",
            self.pad_id,
        )
        masks = self.document_masks
        _require(isinstance(masks, bool), "sequences.document_masks", "true or false", masks)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, where: str = "sequences") -> SequenceConfig:
        """The ``sequences:`` section (None: the defaults)."""
        return cls.from_mapping(d, where)
