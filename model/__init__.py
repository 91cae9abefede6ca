"""OpenELM in plain PyTorch, with layer-wise scaling and apple/OpenELM weight compatibility."""
