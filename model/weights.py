"""Saving and loading OpenELM weights: our checkpoint files and the Hugging Face apple/OpenELM-* layout.

Our files: ``model.safetensors`` (our parameter names; the config is also embedded in the safetensors
metadata) plus ``model_config.json`` (``OpenELMConfig.to_dict()``). The trainer writes these in each
checkpoint directory via :func:`save_model`.

Hugging Face layout (apple/OpenELM-270M ... 3B, ``trust_remote_code``): the same names under a
``transformer.`` prefix; with tied embeddings there is no ``lm_head.weight`` (the head reuses
``transformer.token_embeddings.weight``). ``config.json`` holds ``model_type: openelm`` and the per-layer
head counts and FFN multipliers.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from elm_data.core.errors import ElmDataError
from elm_data.core.known_tokenizers import known_name
from elm_data.core.outputs import atomic_path

from .config import NAMED_SHAPES, OpenELMConfig, expand_multipliers
from .hf_tokenizer import tokenizer_json
from .openelm import OpenELM

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
HF_CONFIG_FILE = "config.json"
HF_INDEX_FILE = "model.safetensors.index.json"
HF_PREFIX = "transformer."
CONFIG_METADATA_KEY = "elm_data.model_config"
TRANSFORMERS_VERSION = "4.39.3"  # the version the published OpenELM configs were written with
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The project's own Hugging Face code (model/hf_*.py), copied into every export under the same names.
HF_CODE_FILES = ("hf_configuration.py", "hf_modeling.py")
LOCAL_AUTO_MAP = {
    "AutoConfig": "hf_configuration.OpenELMConfig",
    "AutoModelForCausalLM": "hf_modeling.OpenELMForCausalLM",
}
TOKENIZER_FILE = "tokenizer.model"
# tokenizer_config.json. With tokenizer.json beside it the class is the generic fast one, which runs that file
# as written (SentencePiece's ids exactly); transformers 5's LlamaTokenizer rebuilds its own pre-tokenizer and
# drops the dummy prefix before leading spaces. Without tokenizer.json (no `tokenizers` package)
# LlamaTokenizer converts tokenizer.model itself.
TOKENIZER_CONFIG = {
    "tokenizer_class": "LlamaTokenizer",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": None,
    "add_bos_token": True,
    "add_eos_token": False,
    "legacy": True,
    "clean_up_tokenization_spaces": False,
}
FAST_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
TOKENIZER_LICENCE = """\
tokenizer.model is the Llama 2 SentencePiece tokenizer (sha256 {sha256}).
It is licensed by Meta under the Llama 2 Community License Agreement
(https://ai.meta.com/llama/license/), not under this model's licence, and is gated upstream
(meta-llama/Llama-2-7b-hf). Redistribute it only as that licence allows.
"""


class WeightsError(ElmDataError, ValueError):
    """A checkpoint or Hugging Face directory that cannot be read as OpenELM weights."""


# ---- our own checkpoint files ------------------------------------------------------------------------------
def _write_files(directory: Path, files: dict[str, Callable[[Path], object]]) -> None:
    """Write every file under its temporary name first; only when all are written are they renamed into place.

    A failure while writing leaves ``directory`` as it was (no weights without their config).
    """
    with ExitStack() as staged:
        temps = {name: staged.enter_context(atomic_path(directory / name)) for name in files}
        for name, write in files.items():
            write(temps[name])


def save_model(model: OpenELM, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``model.safetensors`` and ``model_config.json`` into ``directory``; returns the weights path.

    Equal tensors give equal bytes (the file's metadata holds one key, the config), so a file's sha256 names
    its weights."""
    directory = Path(directory)
    config_json = json.dumps(model.config.to_dict(), indent=2)
    tensors = _plain_tensors(unwrap_model(model).state_dict(), dtype)
    # One metadata key: safetensors writes its metadata map in hash order, so with two keys equal tensors were
    # saved as different bytes from save to save (and a checkpoint's sha256 changed with them).
    metadata = {CONFIG_METADATA_KEY: config_json}
    _write_files(
        directory,
        {
            WEIGHTS_FILE: lambda path: save_file(tensors, str(path), metadata=metadata),
            CONFIG_FILE: lambda path: path.write_text(config_json + "\n"),
        },
    )
    return directory / WEIGHTS_FILE


def load_model(
    path: str | Path,
    config: OpenELMConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> OpenELM:
    """Load a model saved by :func:`save_model`: a checkpoint directory or a ``.safetensors`` file.

    The config comes from ``config``, else ``model_config.json`` beside the weights, else the file's metadata.
    """
    weights_path = _find_weights(Path(path))
    if config is None:
        config = _read_config(weights_path)
    return _build(config, _read_tensors([weights_path], device), device, dtype)


# ---- Hugging Face
# -------------------------------------------------------------------------------------------
def hf_config(config: OpenELMConfig, torch_dtype: str = "float32") -> dict[str, Any]:
    """The ``config.json`` a Hugging Face OpenELM repository carries, for ``config``.

    As in the published configs, ``qkv_multipliers`` is the (first, last) pair that the remote code expands
    itself (so a custom per-layer qkv list cannot be loaded by that code), while ``ffn_multipliers``,
    ``num_query_heads`` and ``num_kv_heads`` are per-layer lists. ``auto_map`` names the code files that
    :func:`export_hf` writes beside the weights (:data:`HF_CODE_FILES`), so loading needs no network.
    """
    return {
        "activation_fn_name": "swish",
        "architectures": ["OpenELMForCausalLM"],
        "auto_map": dict(LOCAL_AUTO_MAP),
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "ffn_dim_divisor": config.ffn_dim_divisor,
        "ffn_multipliers": config.layer_ffn_multipliers,
        "ffn_with_glu": True,
        "head_dim": config.head_dim,
        "initializer_range": 0.02,
        "max_context_length": config.max_context_length,
        "model_dim": config.model_dim,
        "model_type": "openelm",
        "normalization_layer_name": "rms_norm",
        "normalize_qk_projections": config.normalize_qk_projections,
        "num_gqa_groups": config.num_gqa_groups,
        "num_kv_heads": config.num_kv_heads,
        "num_query_heads": config.num_query_heads,
        "num_transformer_layers": config.num_transformer_layers,
        "qkv_multipliers": config.qkv_multipliers,
        "rope_freq_constant": _int_if_whole(config.rope_freq_constant),
        "rope_max_length": config.rope_max_length,
        "share_input_output_layers": config.share_input_output_layers,
        "torch_dtype": torch_dtype,
        "transformers_version": TRANSFORMERS_VERSION,
        "use_cache": True,
        "vocab_size": config.vocab_size,
        **({"norm_eps": config.norm_eps} if config.norm_eps != 1e-6 else {}),  # Apple's code fixes 1e-6
        # training only
        **({"padding_index": config.padding_index} if config.padding_index is not None else {}),
    }


def config_from_hf(data: dict[str, Any]) -> OpenELMConfig:
    """An :class:`OpenELMConfig` from a Hugging Face OpenELM ``config.json`` (checked, not trusted)."""
    if data.get("model_type") != "openelm":
        raise WeightsError(f"config.json has model_type {data.get('model_type')!r}, expected 'openelm'")
    unsupported = {
        "activation_fn_name": ("swish", "silu"),
        "normalization_layer_name": ("rms_norm",),
        "ffn_with_glu": (True,),
    }
    for key, allowed in unsupported.items():
        if key in data and data[key] not in allowed:
            raise WeightsError(
                f"config.json {key}={data[key]!r} is not supported (expected one of {allowed})"
            )
    try:
        config = OpenELMConfig(
            num_transformer_layers=data["num_transformer_layers"],
            model_dim=data["model_dim"],
            head_dim=data["head_dim"],
            name=_name_of_shape(data["num_transformer_layers"], data["model_dim"], data["head_dim"]),
            num_gqa_groups=data.get("num_gqa_groups", 4),
            qkv_multipliers=data.get("qkv_multipliers", [0.5, 1.0]),
            ffn_multipliers=_compact(data.get("ffn_multipliers", [0.5, 4.0]), data["num_transformer_layers"]),
            ffn_dim_divisor=data.get("ffn_dim_divisor", 256),
            vocab_size=data.get("vocab_size", 32000),
            max_context_length=data.get("max_context_length", 2048),
            rope_freq_constant=float(data.get("rope_freq_constant", 10000)),
            rope_max_length=data.get("rope_max_length", 4096),
            norm_eps=data.get("norm_eps", 1e-6),
            padding_index=data.get("padding_index"),
            normalize_qk_projections=data.get("normalize_qk_projections", True),
            share_input_output_layers=data.get("share_input_output_layers", True),
            bos_token_id=data.get("bos_token_id", 1),
            eos_token_id=data.get("eos_token_id", 2),
        )
    except KeyError as missing:
        raise WeightsError(f"config.json lacks required key {missing}") from None
    for key in ("num_query_heads", "num_kv_heads"):
        if key in data and list(data[key]) != getattr(config, key):
            raise WeightsError(
                f"config.json {key}={data[key]} disagrees with the scaling rule: {getattr(config, key)}"
            )
    return config


def hf_state_dict(model: OpenELM, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Our state dict renamed to the Hugging Face layout (``transformer.`` prefix, ``lm_head`` only if
    untied)."""
    renamed = {}
    for name, tensor in unwrap_model(model).state_dict().items():
        renamed[name if name.startswith("lm_head.") else HF_PREFIX + name] = tensor
    return _plain_tensors(renamed, dtype)


def export_hf(
    model_or_checkpoint: OpenELM | str | Path,
    out_dir: str | Path,
    dtype: torch.dtype | None = None,
    tokenizer_model: bytes | None = None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write an apple/OpenELM-* style repository that loads offline: weights, ``config.json`` (local
    ``auto_map``), ``generation_config.json`` and the project's Hugging Face code.

    ``model_or_checkpoint`` is a model, or a path :func:`load_model` accepts. ``dtype`` casts floating weights
    (default: keep). ``tokenizer_model`` (the SentencePiece model's bytes) adds ``tokenizer.model``,
    ``tokenizer_config.json``, ``TOKENIZER_LICENCE.txt`` (Meta's licence: the LLaMA-2 model only) and (with
    ``tokenizers`` installed) ``tokenizer.json``;
    ``extra_files`` (name -> text, e.g. the model card ``README.md``) are written too. All files appear
    together or not at all. Returns ``out_dir``.
    """
    model = (
        model_or_checkpoint
        if isinstance(model_or_checkpoint, torch.nn.Module)
        else load_model(model_or_checkpoint)
    )
    model = unwrap_model(model)
    out_dir = Path(out_dir)
    tensors = hf_state_dict(model, dtype)
    stored_dtype = next(iter(tensors.values())).dtype
    config = hf_config(model.config, torch_dtype=str(stored_dtype).removeprefix("torch."))
    generation = {"bos_token_id": model.config.bos_token_id, "eos_token_id": model.config.eos_token_id}
    texts = {
        HF_CONFIG_FILE: _json(config),
        "generation_config.json": _json(generation),
        **{name: (Path(__file__).parent / name).read_text() for name in HF_CODE_FILES},
    }
    if tokenizer_model is not None:
        tokenizer_config = {**TOKENIZER_CONFIG, "model_max_length": model.config.max_context_length}
        fast = tokenizer_json(tokenizer_model)
        if fast is not None:
            texts["tokenizer.json"] = fast
            tokenizer_config["tokenizer_class"] = FAST_TOKENIZER_CLASS
        texts["tokenizer_config.json"] = _json(tokenizer_config)
        sha256 = hashlib.sha256(tokenizer_model).hexdigest()
        # Meta's licence for Meta's model only; another model's is its author's
        if known_name(sha256) == "LLaMA-2":
            texts["TOKENIZER_LICENCE.txt"] = TOKENIZER_LICENCE.format(sha256=sha256)
    texts.update(extra_files or {})
    files: dict[str, Callable[[Path], object]] = {
        WEIGHTS_FILE: lambda path: save_file(tensors, str(path), metadata={"format": "pt"})
    }
    files.update({name: functools.partial(_write_text, text=text) for name, text in texts.items()})
    if tokenizer_model is not None:
        files[TOKENIZER_FILE] = functools.partial(Path.write_bytes, data=tokenizer_model)
    _write_files(out_dir, files)
    return out_dir


def _json(data: Any) -> str:
    return json.dumps(data, indent=2) + "\n"


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def import_hf(
    path_or_dir: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> OpenELM:
    """Load an apple/OpenELM-* download (directory, or a ``.safetensors`` file with ``config.json`` beside
    it).

    Sharded repositories (``model.safetensors.index.json``) are read too. Weights keep their stored dtype
    unless ``dtype`` is given.
    """
    path = Path(path_or_dir)
    directory = path if path.is_dir() else path.parent
    config_path = directory / HF_CONFIG_FILE
    if not config_path.is_file():
        raise WeightsError(f"no {HF_CONFIG_FILE} in {directory}")
    config = config_from_hf(json.loads(config_path.read_text()))
    if path.is_file():
        files = [path]
    elif (directory / HF_INDEX_FILE).is_file():
        index = json.loads((directory / HF_INDEX_FILE).read_text())
        files = [directory / name for name in sorted(set(index["weight_map"].values()))]
    elif (directory / WEIGHTS_FILE).is_file():
        files = [directory / WEIGHTS_FILE]
    else:
        raise WeightsError(f"no {WEIGHTS_FILE} or {HF_INDEX_FILE} in {directory}")
    state = {}
    for name, tensor in _read_tensors(files, device).items():
        if name == "lm_head.weight" and config.share_input_output_layers:
            continue  # a tied head some exporters store anyway: the embedding is the head
        if not name.startswith(HF_PREFIX) and name != "lm_head.weight":
            raise WeightsError(
                f"unexpected tensor {name!r}: Hugging Face OpenELM names start with {HF_PREFIX!r}"
            )
        state[name.removeprefix(HF_PREFIX)] = tensor
    return _build(config, state, device, dtype)


# ---- helpers
# ------------------------------------------------------------------------------------------------
def _build(config: OpenELMConfig, state: dict[str, torch.Tensor], device, dtype) -> OpenELM:
    with torch.device("meta"):
        model = OpenELM(config)
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{name}: {tuple(state[name].shape)} != {shape}"
        for name, shape in expected.items()
        if name in state and tuple(state[name].shape) != shape
    ]
    if missing or unexpected or wrong:
        raise WeightsError(
            "weights do not match the config: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, wrong shapes {wrong[:5]}"
        )
    if dtype is not None:
        state = {n: t.to(dtype) if t.is_floating_point() else t for n, t in state.items()}
    model.load_state_dict(state, assign=True, strict=True)
    return model.to(device)


def _read_tensors(files: list[Path], device) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt", device=str(device)) as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                    tensors[name] = handle.get_tensor(name)
        except Exception as error:  # OSError, ValueError, safetensors' own SafetensorError (a damaged header)
            raise WeightsError(f"cannot read safetensors file {file}: {error}") from error
    return tensors


def _find_weights(path: Path) -> Path:
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise WeightsError(f"no weights at {path} (expected a checkpoint directory holding {WEIGHTS_FILE})")
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path} is not a .safetensors file")
    return path


def _read_config(weights_path: Path) -> OpenELMConfig:
    beside = weights_path.parent / CONFIG_FILE
    if beside.is_file():
        return read_config_file(beside)
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # SafetensorError: a damaged header
        raise WeightsError(f"cannot read safetensors file {weights_path}: {error}") from error
    if CONFIG_METADATA_KEY in metadata:
        return _config_from_text(metadata[CONFIG_METADATA_KEY], f"the config in {weights_path}'s metadata")
    if (weights_path.parent / HF_CONFIG_FILE).is_file():
        raise WeightsError(f"{weights_path.parent} looks like a Hugging Face export: use import_hf")
    raise WeightsError(f"no {CONFIG_FILE} beside {weights_path} and no config in its metadata")


def read_config_file(path: str | Path) -> OpenELMConfig:
    """The :class:`OpenELMConfig` in a ``model_config.json``; unreadable, not JSON or not a config: a
    :class:`WeightsError` naming the file (never blamed on the weights)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise WeightsError(f"cannot read {path}: {error}") from error
    return _config_from_text(text, str(path))


def _config_from_text(text: str, where: str) -> OpenELMConfig:
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError(f"expected a JSON object, got {type(data).__name__}")
        return OpenELMConfig.from_dict(data)
    except (ValueError, TypeError) as error:  # JSONDecodeError is a ValueError; unknown keys, wrong types
        raise WeightsError(f"{where} is not a valid model config: {error}") from error


def _plain_tensors(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        out[name] = tensor if tensor.is_meta else tensor.contiguous().cpu()
    return out


def uncompiled(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` without its ``torch.compile`` wrapper (the module it compiled), else ``model`` itself.

    A DDP wrapper stays (its ``no_sync`` is what a step needs); :func:`unwrap_model` goes through it too.
    """
    return getattr(model, "_orig_mod", model)


def unwrap_model(model: torch.nn.Module) -> OpenELM:
    """The OpenELM inside ``torch.compile`` and DDP (``.module``) wrappers, in any nesting; FSDP2 shards the
    model in place, so a sharded OpenELM is its own answer. A TypeError when no OpenELM is inside."""
    inner = model
    while not isinstance(inner, OpenELM):
        wrapped = uncompiled(inner)
        if wrapped is inner:
            wrapped = getattr(inner, "module", None)
        if not isinstance(wrapped, torch.nn.Module):
            raise TypeError(f"expected an OpenELM model, got {type(model).__name__}")
        inner = wrapped
    return inner


def _compact(multipliers: Any, num_layers: int) -> Any:
    """A per-layer list that is exactly the rounded linspace of its ends, as that (first, last) pair."""
    if isinstance(multipliers, list) and len(multipliers) > 2:
        pair = [multipliers[0], multipliers[-1]]
        if expand_multipliers(pair, num_layers) == [float(m) for m in multipliers]:
            return pair
    return multipliers


def _int_if_whole(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _name_of_shape(layers: int, model_dim: int, head_dim: int) -> str:
    for name, shape in NAMED_SHAPES.items():
        if shape == (layers, model_dim, head_dim):
            return name
    return "custom"
