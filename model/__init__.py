"""OpenELM in plain PyTorch, with layer-wise scaling and apple/OpenELM weight compatibility.

Entry points: ``OpenELM(OpenELMConfig.named("270M"))``, ``generate(model, ids)``,
``save_model``/``load_model`` (this project's checkpoints) and ``export_hf``/``import_hf`` (Hugging Face
folders in apple/OpenELM's layout). It knows nothing of data; importing it imports torch (nothing below the
trainer imports it).
"""

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
