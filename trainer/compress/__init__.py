"""``elm-data compress``: fine-tuning under eDKM weight clustering, as a ``Trainer`` subclass; palettized
weights.

Imports ``trainer.core`` only.
"""
