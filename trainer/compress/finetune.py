"""`elm-data compress`: fine-tune a trained OpenELM under weight clustering (DKM / eDKM), on the manifest's
stream.

The clustering is coremltools' ``DKMPalettizer`` (``coremltools.optimize.torch.palettization``); this module
only arranges it: which layers, the YAML config and the outputs. The run is ``elm-data train``'s
:class:`~.loop.Trainer` with a palettization hook (:class:`CompressTrainer`): the same stream, step, log,
consumed tokens and consumption receipt. A run directory holds::

    log.jsonl                        header (source weights, manifest, config), step records with tokens per
    source, end model/                           dequantized weights in the model package's layout
    (load_model, export hf) model.palettized.safetensors     the compact form (palette + packed indices per
    tensor), see palette.py compression.json                 bits, sizes on disk, bits per weight, distinct
    values per tensor, tokens per source
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from elm_data.core.errors import ElmDataError
from elm_data.core.outputs import write_atomic
from elm_data.core.settings import Settings, SettingsError, convert, load_mapping
from elm_data.model.openelm import OpenELM
from elm_data.model.weights import HF_CONFIG_FILE, WEIGHTS_FILE, import_hf, save_model

from ..core.checkpoint import TRAINER_STATE, load_checkpoint_model, read_trainer_state, resolve_checkpoint
from ..core.config import ConfigError, TrainConfig
from ..core.distributed import DistInfo
from ..core.hardware import pick_device
from ..core.loop import Trainer, TrainingError, refuse_used_run_dir
from .palette import (
    COMPACT_FILE,
    distinct_per_group,
    ensure_process_group,
    install_edkm_cpu_adapter,
    plain_state,
    save_compact,
)

GRANULARITIES = ("per_tensor", "per_grouped_channel")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# eDKM (arXiv 2309.00964) in coremltools: any palett_max_mem < 1 turns on the saved-tensor hook, which
# de-duplicates the attention maps across k-means iterations, uniquifies them (fp16/bf16 weights) and shards
# them over ranks. (On CUDA the hook also offloads to CPU when memory use passes palett_max_mem.)
EDKM_OPTIONS = {"palett_max_mem": 0.5, "palett_unique": True, "palett_shard": True}


@dataclass
class PaletteSpec(Settings):
    """The ``palettization:`` section of a compress config."""

    bits: int = 4  # 3 or 4: 2**bits palette entries per group
    embeddings: bool = False  # palettize the (tied) token embedding too; norms never are
    exclude: list[str] = field(default_factory=list)  # regexes of module names left alone
    granularity: str = "per_tensor"  # or "per_grouped_channel" (group_size output rows share a palette)
    group_size: int | None = None
    weight_threshold: int = 2048  # tensors with fewer elements stay unpalettized
    kmeans_init: str = "kmeans++"  # warm start of the palette: "kmeans++", "opt1d", "cpu.kmeans++", "auto"
    kmeans_n_init: int = 1  # k-means restarts of the warm start
    dkm_iterations: int = 3  # differentiable k-means iterations per forward (coremltools kmeans_max_iter)
    milestone: int = 0  # step at which clustering starts (plain fine-tuning before it)
    edkm: bool = False  # eDKM memory options (EDKM_OPTIONS)
    dtype: str = "float32"  # weight dtype while tuning; eDKM's uniquification needs bfloat16/float16
    rest_dtype: str = "float16"  # unpalettized tensors in the compact file
    options: dict[str, Any] = field(default_factory=dict)  # any other ModuleDKMPalettizerConfig field

    def __post_init__(self) -> None:
        checks = [
            (self.bits in (2, 3, 4, 6, 8), f"bits must be 2, 3, 4, 6 or 8, got {self.bits}"),
            (self.granularity in GRANULARITIES, f"granularity must be one of {GRANULARITIES}"),
            (
                (self.group_size is not None) == (self.granularity == "per_grouped_channel"),
                "group_size goes with granularity per_grouped_channel (and only with it)",
            ),
            (self.dtype in DTYPES and self.rest_dtype in DTYPES, f"dtypes must be among {sorted(DTYPES)}"),
            (
                "enable_per_channel_scale" not in self.options,
                "per-channel scales are not written to the compact form yet; use granularity "
                "per_grouped_channel",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"palettization: {message}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PaletteSpec:
        """The ``palettization:`` section: unknown keys refused naming the nearest valid one, types
        checked."""
        try:
            return cls(**cls.check_mapping(raw, "palettization"))
        except ConfigError:
            raise
        except SettingsError as error:
            raise ConfigError(str(error)) from None

    def module_config(self):
        """coremltools' ``ModuleDKMPalettizerConfig`` for every palettized module."""
        from coremltools.optimize.torch.palettization import ModuleDKMPalettizerConfig

        settings = {
            "n_bits": self.bits,
            "weight_threshold": self.weight_threshold,
            "granularity": self.granularity,
            "group_size": self.group_size,
            "kmeans_init": self.kmeans_init,
            "kmeans_n_init": self.kmeans_n_init,
            "kmeans_max_iter": self.dkm_iterations,
            "milestone": self.milestone,
            **(EDKM_OPTIONS if self.edkm else {}),
            **self.options,
        }
        try:
            return ModuleDKMPalettizerConfig(**settings)
        except (TypeError, ValueError, AssertionError) as error:
            raise ConfigError(f"palettization: {error}") from error


@dataclass
class CompressConfig:
    """A compress YAML: training keys (data, optimizer, steps; see TrainConfig) plus ``palettization:``."""

    train: TrainConfig
    palette: PaletteSpec

    @classmethod
    def from_yaml(
        cls, path: str | Path, palette: dict[str, Any] | None = None, **train: Any
    ) -> CompressConfig:
        """Load ``path``; ``palette`` and ``train`` override its settings (None values are ignored)."""
        path = Path(path)
        raw = load_mapping(path, "compress config")
        try:
            return cls._from_mapping(raw, path, palette or {}, train)
        except SettingsError as error:
            raise ConfigError(f"compress config {path}: {error}") from None

    @classmethod
    def _from_mapping(cls, raw: dict[str, Any], path: Path, palette: dict[str, Any], train: dict[str, Any]):
        palettization = convert(raw.pop("palettization", None), dict | None, "palettization")
        section = {**(palettization or {}), **{k: v for k, v in palette.items() if v is not None}}
        raw.setdefault("name", path.stem)
        raw.update({k: v for k, v in train.items() if v is not None})
        if "model" in raw:
            raise ConfigError("a compress config names no model: the source checkpoint decides it")
        config = cls(
            TrainConfig.from_dict(raw, base_dir=path.resolve().parent), PaletteSpec.from_dict(section)
        )
        if config.train.lr is None:
            raise ConfigError(
                "a compress config needs an explicit lr (fine-tuning, not the pretraining peak)"
            )
        return config


@dataclass
class CompressResult:
    """What :func:`compress` did: steps and label positions trained, tokens per source, losses, the report."""

    run_dir: Path
    steps: int
    tokens: int
    consumed: dict[str, int]
    losses: list[float]
    report: dict[str, Any]


# ---- the model under clustering ----------------------------------------------------------------------------
class PalettizedLM(nn.Module):
    """A prepared OpenELM whose tied output head uses the same palettized embedding as the input lookup
    (one clustering of the embedding per forward, shared by both uses)."""

    def __init__(self, model: OpenELM) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.model.token_embeddings
        fake = getattr(emb, "weight_fake_quant", None)
        if fake is None or self.model.lm_head is not None:
            return self.model(input_ids, segment_ids=segment_ids)
        weight = fake(emb.weight)
        emb.forward = lambda ids: F.embedding(ids, weight)
        try:
            hidden = self.model.hidden_states(input_ids, segment_ids)
        finally:
            del emb.forward
        return F.linear(hidden, weight)


def require_coremltools() -> None:
    """Refuse (one line, the pip hint) where the ``compress`` extra (coremltools' DKM palettizer) is
    absent."""
    try:
        import coremltools.optimize.torch.palettization  # noqa: F401
    except ImportError as error:
        hint = "pip install 'elm-data[compress]'"
        raise ElmDataError(f"elm-data compress needs coremltools: {hint} ({error})") from error


def palettizer_config(model: nn.Module, spec: PaletteSpec):
    """``DKMPalettizerConfig``: linears (and the embedding if asked), minus ``exclude``; nothing else."""
    from coremltools.optimize.torch.palettization import DKMPalettizerConfig

    module = spec.module_config()
    excluded = {
        name for name, _ in model.named_modules() if name and any(re.search(p, name) for p in spec.exclude)
    }
    return DKMPalettizerConfig(
        module_type_configs={nn.Linear: module, nn.Embedding: module if spec.embeddings else None},
        module_name_configs=dict.fromkeys(sorted(excluded)),
    )


def prepare(model: nn.Module, spec: PaletteSpec, store_dir: Path | None = None):
    """``(palettizer, prepared model, names of palettized parameters)``; ``model`` is changed in place."""
    from coremltools.optimize.torch.palettization import DKMPalettizer

    if spec.edkm:
        install_edkm_cpu_adapter()
        ensure_process_group((store_dir or Path(".")) / ".edkm-gloo-store")
    palettizer = DKMPalettizer(model, palettizer_config(model, spec))
    prepared = palettizer.prepare(inplace=True)
    names = [f"{name}.weight" for name, m in prepared.named_modules() if hasattr(m, "weight_fake_quant")]
    return palettizer, prepared, names


# ---- source weights ----------------------------------------------------------------------------------------
def load_source(path: str | Path) -> tuple[OpenELM, dict[str, Any]]:
    """An OpenELM from a checkpoint, a run directory (its newest checkpoint) or an HF export directory."""
    path = Path(path)
    if (path / HF_CONFIG_FILE).is_file():
        model, kind, weights = import_hf(path), "hf-export", path / WEIGHTS_FILE
        info: dict[str, Any] = {}
    else:
        checkpoint = resolve_checkpoint(path) if not (path / WEIGHTS_FILE).is_file() else path
        model, kind, weights = load_checkpoint_model(checkpoint), "checkpoint", checkpoint / WEIGHTS_FILE
        trainer = read_trainer_state(checkpoint) if (checkpoint / TRAINER_STATE).is_file() else {}
        info = {"trained_on_manifest": trainer.get("manifest_id"), "trained_tokens": trainer.get("tokens")}
        path = checkpoint
    digest = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None
    return model.float(), {"path": str(path.resolve()), "kind": kind, "weights_sha256": digest, **info}


# ---- the run -----------------------------------------------------------------------------------------------
class CompressTrainer(Trainer):
    """The :class:`~.loop.Trainer` fine-tuning source weights under DKM clustering; always one process.

    It differs from training only through the Trainer's hooks: the model is the source's weights prepared for
    palettization (:meth:`build_model`), a step calls :class:`PalettizedLM` without autocast, the palettizer
    steps after each optimizer step, the header names the source and the palettization, and there are no
    checkpoints: the run's output is what :meth:`write_outputs` writes from the finalized palettes. The
    stream, the step, the log with its tokens per source and receipt are the Trainer's, so ``audit-run`` reads
    a compress run too.
    """

    task = "compress"

    def __init__(
        self, source: str | Path, config: CompressConfig, run_dir: Path, *, progress: bool = True
    ) -> None:
        # built on the meta device: draws no randomness
        self.source_model, self.source_info = load_source(source)
        train = config.train.replace(model=self.source_model.config.to_dict(), out_dir=str(run_dir))
        super().__init__(train, pick_device(train.device), DistInfo(), run_dir=run_dir, progress=progress)
        self.spec = config.palette

    def build_model(self) -> nn.Module:
        """The source weights in the palettization dtype, prepared in place (``palettizer``,
        ``palettized``)."""
        model = self.source_model.to(device=self.device, dtype=DTYPES[self.spec.dtype])
        self.palettizer, prepared, self.palettized = prepare(model, self.spec, self.run_dir)
        return prepared

    def training_module(self) -> nn.Module:
        return PalettizedLM(self.model).train()

    def autocast_dtype(self) -> torch.dtype | None:
        return None  # the weights' own dtype (PaletteSpec.dtype) is the compute dtype

    def after_step(self) -> None:
        self.palettizer.step()

    def make_checkpointer(self) -> None:
        return None

    def header_fields(self) -> dict[str, Any]:
        extra = {"palettization": dataclasses.asdict(self.spec), "source": self.source_info}
        return {"task": self.task, **super().header_fields(), **extra, "palettized": self.palettized}

    def write_outputs(self) -> dict[str, Any]:
        """Finalize the palettes into the weights; write ``model/``, the compact file and
        ``compression.json``."""
        report = finalize(self.palettizer, self.model, self.palettized, self.spec, self.run_dir)
        report.update(
            steps=self.state.step,
            tokens=self.state.tokens,
            tokens_by_source=self.consumed(),
            source=self.source_info,
        )
        write_atomic(self.run_dir / "compression.json", json.dumps(report, indent=2, sort_keys=True) + "\n")
        return report


def compress(
    source: str | Path, config: CompressConfig, out_dir: str | Path | None = None, progress: bool = True
) -> CompressResult:
    """Fine-tune ``source`` under DKM clustering per ``config``, finalize, and write the run directory."""
    run_dir = Path(out_dir).resolve() if out_dir else config.train.run_dir
    refuse_used_run_dir(run_dir, DistInfo(), "choose another --out")
    require_coremltools()  # before the run directory exists: a missing extra leaves nothing behind
    run_dir.mkdir(parents=True, exist_ok=True)  # eDKM's one-process group keeps its store file here
    trainer = CompressTrainer(source, config, run_dir, progress=progress)
    trainer.setup()
    result = trainer.run()
    report = trainer.write_outputs()
    result = trainer.finish(result, tokens_by_source=report["tokens_by_source"], compression=report)
    return CompressResult(run_dir, result.final_step, result.tokens, result.consumed, result.losses, report)


def finalize(palettizer, prepared: nn.Module, names: list[str], spec: PaletteSpec, run_dir: Path) -> dict:
    """Fold palettes and indices into the weights; write the dequantized export and the compact form."""
    finalized = palettizer.finalize(prepared, inplace=True)
    model = dequantized_model(finalized)
    distinct = {n: distinct_per_group(model.get_parameter(n).detach(), spec.group_size) for n in names}
    too_many = {n: d for n, d in distinct.items() if d > 1 << spec.bits}
    if too_many:
        raise TrainingError(f"finalized tensors hold more than 2**{spec.bits} values per group: {too_many}")
    save_model(model, run_dir / "model")
    layout = {n: {"bits": spec.bits, "group_size": spec.group_size} for n in names}
    compact = save_compact(model, run_dir / COMPACT_FILE, layout, DTYPES[spec.rest_dtype])
    export_bytes = (run_dir / "model" / WEIGHTS_FILE).stat().st_size
    return {
        "bits": spec.bits,
        "group_size": spec.group_size,
        "palettized_tensors": len(names),
        "max_distinct_values_per_group": max(distinct.values(), default=0),
        "distinct_values": distinct,
        "export": {"path": str(run_dir / "model"), "bytes": export_bytes},
        "compact": compact,
    }


def dequantized_model(finalized: nn.Module) -> OpenELM:
    """A plain float32 OpenELM holding a finalized model's (palettized) weights."""
    model = OpenELM(finalized.config)
    model.load_state_dict({k: v.float() for k, v in plain_state(finalized).items()}, strict=True)
    return model.eval()
