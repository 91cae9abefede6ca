"""A trained checkpoint carried out with its data: Hugging Face folders with model cards, and ``eval``.

Imports ``trainer.core`` and ``trainer.proof`` (the model card and eval name what the run consumed).
"""
