"""``elm-data bench train``: the training-efficiency matrix (tokens/s, MFU, memory, loss per dollar) and its
plots.

Imports ``trainer.core`` only.
"""
