"""OpenELM in plain PyTorch, with layer-wise scaling and apple/OpenELM weight compatibility."""

from .config import OpenELMConfig, make_divisible
from .openelm import KVCache, OpenELM

__all__ = ["KVCache", "OpenELM", "OpenELMConfig", "make_divisible"]
