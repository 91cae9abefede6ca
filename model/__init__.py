"""OpenELM in plain PyTorch, with layer-wise scaling and apple/OpenELM weight compatibility."""

from .config import OpenELMConfig, make_divisible
from .generate import generate
from .openelm import KVCache, OpenELM
from .weights import export_hf, import_hf, load_model, save_model

__all__ = [
    "KVCache",
    "OpenELM",
    "OpenELMConfig",
    "export_hf",
    "generate",
    "import_hf",
    "load_model",
    "make_divisible",
    "save_model",
]
