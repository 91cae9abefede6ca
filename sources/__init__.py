"""Readers for the public corpora OpenELM was pretrained on, in their native on-disk formats."""

from elm_data.sources.document import Document, Provenance, Rejection

__all__ = ["Document", "Provenance", "Rejection"]
