"""The training core: config, the loop (``Trainer``), checkpoints, optimizer, loss, devices, run log.

The lowest trainer sub-package: it imports no other (proof, export, compress and bench build on it).
"""
