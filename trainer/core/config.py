"""The training config: one flat dataclass, loaded from YAML, with OpenELM's recipe as defaults.

Defaults follow the OpenELM pre-training configs in CoreNet (projects/openelm/pretraining_configs):
AdamW (0.9, 0.95, eps 1e-8, weight decay 0.1 on every parameter of two or more dimensions, embeddings
included, none on the 1-D norm weights), linear warm-up from 1e-6, cosine decay to 0.1x the peak,
gradient clipping at 1.0, cross-entropy ignoring the pad id plus z-loss 1e-4, sequence length 2048.

Seeds: ``seed`` seeds the model's initialisation and the trainer's RNGs; ``data_seed`` is the stream's mixing
seed and defaults to the manifest's ``seed`` (so ``train`` and ``stream`` read the same order). The pad id is
not a setting: it is ``pipeline.tokenizer.PAD_ID``, which every manifest's ``sequences.pad_id`` must equal.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elm_data.core.canonical_json import SORTED_SPACED
from elm_data.core.errors import InvalidValue
from elm_data.core.redact import redact_uri
from elm_data.core.settings import Settings, SettingsError, load_mapping, resolve_path
from elm_data.model.config import NAMED_SHAPES, OpenELMConfig
from elm_data.pipeline.stream.network import NetworkSettings

# Peak learning rate per published size (CoreNet `scheduler.cosine.max_lr`).
OPENELM_PEAK_LR: dict[str, float] = {"270M": 5.3e-3, "450M": 3.9e-3, "1.1B": 2.4e-3, "3B": 1.2e-3}
DEFAULT_PEAK_LR = 1e-3  # for sizes without a published recipe ("tiny", "small", custom shapes)

PRECISIONS = ("auto", "bf16", "fp32")
DISTRIBUTED = ("auto", "none", "ddp", "fsdp")


class ConfigError(SettingsError):
    """A training config that cannot be used as written; the message names the key."""


@dataclass
class TrackersConfig(Settings):
    """The ``trackers:`` section: experiment trackers the run also writes to (all off; see
    trainer/core/trackers.py)."""

    tensorboard: bool = False  # event files under RUN_DIR/tensorboard (needs the `track` extra)
    wandb: bool = False  # a W&B run in offline mode under RUN_DIR/wandb (needs the `track` extra)
    wandb_project: str = "elm-data"


@dataclass
class TrainConfig(Settings):
    """Everything one training run needs. Paths are resolved against the YAML file's folder."""

    # data
    manifest: str = ""  # manifest directory (built by `elm-data build manifest`)
    # path/URL; else $ELM_DATA_TOKENIZER, the manifest's, the cache (resolve_tokenizer)
    tokenizer: str | None = None
    seq_len: int = 2048
    mode: str | None = None  # sequence mode ("packed"/"corenet"); None = the manifest's
    weights: str | dict[str, float] | None = None  # mixing weights: None (manifest's), "natural" or a dict
    epochs: int | None = 1  # passes over the data; None = repeat forever
    document_masks: bool = False  # attend only within a document (needs the stream's segment_ids)
    num_workers: int = 0  # DataLoader workers for the stream
    # the stream's mixing seed; None = the manifest's seed (as `elm-data stream`)
    data_seed: int | None = None
    # stream partitions P (None: the stream's default); ranks × num_workers must divide P
    partitions: int | None = None
    # remote reads: {attempts, backoff_s, max_backoff_s}; None: 8 attempts
    retries: dict[str, Any] | None = None
    cache: dict[str, Any] | None = None  # node cache of verified remote blocks: {dir, max_bytes}; None: none
    readahead_bytes: int | None = None  # remote blocks fetched ahead per reader process; None: 64 MiB, 0: off
    storage_options: dict[str, Any] | None = None  # fsspec options per protocol ({s3: {endpoint_url: ...}})

    # model
    model: str | dict[str, Any] = "270M"  # a named size or a dict: {name: tiny, <OpenELMConfig overrides>}

    # batch
    batch_size: int = 16  # sequences per micro-batch per process
    tokens_per_step: int | None = None  # target tokens per optimizer step (sets gradient accumulation)
    max_steps: int = 1000

    # optimizer and schedule
    lr: float | None = None  # peak learning rate; None = OpenELM's for the named size
    min_lr_ratio: float = 0.1
    warmup_steps: int = 5000
    warmup_init_lr: float = 1e-6
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    z_loss: float = 1e-4

    # execution
    seed: int = 0  # model initialisation and trainer RNGs (not the data order: see data_seed)
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1"
    precision: str = "auto"  # "auto" (bf16 on GPU, fp32 on CPU), "bf16", "fp32"
    compile: bool = False
    distributed: str = "auto"  # "auto" (ddp when torchrun starts several processes), "none", "ddp", "fsdp"
    gradient_checkpointing: bool = False

    # output
    out_dir: str | None = None  # run directory; default: runs/<config name> beside the YAML file
    log_every: int = 1
    checkpoint_every: int = 0  # 0 = only at the end
    keep_checkpoints: int | None = None  # keep the newest N step directories; None = all
    trackers: TrackersConfig = field(default_factory=TrackersConfig)  # TensorBoard / W&B offline (opt-in)
    # per-source evaluation on the manifest's held-out documents (heldout_eval.py), when it holds any out
    heldout_every: int = 0  # evaluate every N steps; 0: only at the end of the run
    # at most this many held-out documents per source/subset (first in manifest order); 0: off
    heldout_docs: int = 16
    heldout_tokens: int = 32768  # and at most this many of their tokens per source/subset
    # windows per evaluation forward (None: batch_size; no gradients, so more fit)
    heldout_batch_size: int | None = None

    name: str = "run"
    base_dir: str = field(default=".", repr=False, metadata={"setting": False})  # relative paths resolve here

    def __post_init__(self) -> None:
        if isinstance(self.trackers, dict):  # a config made in code may give the section as a mapping
            try:
                self.trackers = TrackersConfig.from_mapping(self.trackers, "trackers")
            except SettingsError as error:
                raise ConfigError(str(error)) from None
        self.validate()

    # ---- loading ------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any], base_dir: str | Path = ".") -> TrainConfig:
        """A config from its YAML mapping: unknown keys (with the nearest valid one) and wrong types
        refused."""
        if isinstance(raw, dict) and "pad_id" in raw:
            raise ConfigError(
                "pad_id: not a training setting; the pad id is the manifest's (sequences.pad_id)"
            )
        try:
            return cls(**cls.check_mapping(raw), base_dir=str(base_dir))
        except ConfigError:
            raise
        except SettingsError as error:
            raise ConfigError(str(error)) from None

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"training config {path} does not exist")
        raw = load_mapping(path, "training config")
        raw.setdefault("name", path.stem)
        raw.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.from_dict(raw, base_dir=path.resolve().parent)
        except ConfigError as error:
            raise ConfigError(f"training config {path}: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        """The settings as recorded (run log, checkpoints): a tokenizer URL without its credentials."""
        d = dataclasses.asdict(self)
        d.pop("base_dir")
        if d["tokenizer"]:
            d["tokenizer"] = redact_uri(d["tokenizer"])
        if d["storage_options"]:  # only an endpoint is recorded: any other option may be a credential
            d["storage_options"] = {
                p: {
                    k: redact_uri(v) if k == "endpoint_url" and isinstance(v, str) else "<redacted>"
                    for k, v in o.items()
                }
                for p, o in d["storage_options"].items()
            }
        return d

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    # ---- derived values -----------------------------------------------------------------------------------
    def resolve_path(self, value: str) -> Path:
        return Path(resolve_path(value, self.base_dir))

    @property
    def manifest_dir(self) -> Path:
        if not self.manifest:
            raise ConfigError("the training config names no `manifest:` directory")
        return self.resolve_path(self.manifest)

    @property
    def run_dir(self) -> Path:
        return self.resolve_path(self.out_dir) if self.out_dir else self.resolve_path(f"runs/{self.name}")

    @property
    def model_name(self) -> str:
        return self.model if isinstance(self.model, str) else str(self.model.get("name", "custom"))

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else OPENELM_PEAK_LR.get(self.model_name, DEFAULT_PEAK_LR)

    def model_config(self):
        """The :class:`~elm_data.model.config.OpenELMConfig` this config names."""
        if isinstance(self.model, str):
            return OpenELMConfig.named(self.model)
        spec = dict(self.model)
        name = spec.pop("name", None)
        try:
            base = OpenELMConfig.named(name).to_dict() if name in NAMED_SHAPES else {"name": name or "custom"}
            return OpenELMConfig.from_dict({**base, **spec}, where="model")
        except SettingsError as error:
            raise ConfigError(str(error)) from None
        except (TypeError, ValueError) as error:
            raise ConfigError(f"model: {error}") from error

    @property
    def tokenizer_location(self) -> str | None:
        """``tokenizer:`` resolved against the config's folder (a URL as written); None when not set."""
        return resolve_path(self.tokenizer, self.base_dir) if self.tokenizer else None

    def validate(self) -> None:
        """Refuse a value of the wrong type or out of range, naming its key (one line)."""
        try:
            self.check_types()
        except SettingsError as error:
            raise ConfigError(str(error)) from None
        checks = [
            (self.seq_len > 0, f"seq_len must be positive, got {self.seq_len}"),
            (self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}"),
            (self.max_steps > 0, f"max_steps must be positive, got {self.max_steps}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (self.tokens_per_step is None or self.tokens_per_step > 0, "tokens_per_step must be positive"),
            (0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}"),
            (self.lr is None or self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}"),
            (
                self.distributed in DISTRIBUTED,
                f"distributed must be one of {DISTRIBUTED}, got {self.distributed!r}",
            ),
            (self.log_every > 0, "log_every must be positive"),
            (self.checkpoint_every >= 0, "checkpoint_every must be >= 0"),
            (self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}"),
            (
                self.partitions is None or self.partitions >= 1,
                f"partitions must be >= 1, got {self.partitions}",
            ),
            (self.epochs is None or self.epochs > 0, f"epochs must be positive or null, got {self.epochs}"),
            (
                self.mode in (None, "packed", "corenet"),
                f"mode must be packed, corenet or null, got {self.mode!r}",
            ),
            (
                self.keep_checkpoints is None or self.keep_checkpoints > 0,
                "keep_checkpoints must be positive or null",
            ),
            (min(self.heldout_every, self.heldout_docs, self.heldout_tokens) >= 0, "heldout_* must be >= 0"),
            (
                self.heldout_batch_size is None or self.heldout_batch_size > 0,
                "heldout_batch_size must be positive",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        _check_model(self.model)
        _check_weights(self.weights)
        if isinstance(self.model, dict):
            self.model_config()  # a custom shape is checked where it is read, not when training starts
        self.network()  # retries, cache and readahead_bytes are checked here

    def network(self):
        """The stream's :class:`~elm_data.pipeline.stream.network.NetworkSettings` (retries, cache,
        read-ahead)."""
        try:
            return NetworkSettings.from_config(
                self.retries, self.cache, self.readahead_bytes, self.storage_options
            )
        except InvalidValue as error:
            raise ConfigError(str(error)) from None

    def grad_accum_steps(self, world_size: int = 1) -> int:
        """Micro-batches per optimizer step so a step sees ``tokens_per_step`` tokens (at least one)."""
        if self.tokens_per_step is None:
            return 1
        per_micro = self.batch_size * self.seq_len * world_size
        accum = max(1, round(self.tokens_per_step / per_micro))
        return accum

    def fingerprint(self) -> str:
        """Stable JSON of the settings that change what is trained (for resume checks)."""
        keep = self.to_dict()
        for volatile in (
            "max_steps",
            "out_dir",
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
            "num_workers",
            "retries",
            "cache",
            "readahead_bytes",
            "storage_options",
            "trackers",
            "heldout_every",
            "heldout_docs",
            "heldout_tokens",
            "heldout_batch_size",
        ):
            keep.pop(volatile)
        return SORTED_SPACED.dumps(keep, default=str)


def _check_model(model: str | dict[str, Any]) -> None:

    name = model if isinstance(model, str) else model.get("name")
    if isinstance(model, str) and name not in NAMED_SHAPES:
        raise ConfigError(
            f"model: unknown size {name!r}; choose one of {', '.join(NAMED_SHAPES)} or a mapping"
        )


def _check_weights(weights: str | dict[str, float] | None) -> None:
    if isinstance(weights, str) and weights != "natural":
        raise ConfigError(
            f"weights: expected 'natural', a mapping 'source/subset: weight' or null, got {weights!r}"
        )
    for key, value in (weights if isinstance(weights, dict) else {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ConfigError(f"weights: {key}: expected a number >= 0, got {value!r}")
