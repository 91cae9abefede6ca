"""elm-data: data pipeline and dataset provenance for pretraining OpenELM-style models.

The installed package maps the repository's top-level folders to sub-packages:
``elm_data.sources`` (sources/), ``elm_data.pipeline`` (pipeline/), ``elm_data.manifests``
(manifests/), ``elm_data.model`` (model/) and ``elm_data.trainer`` (trainer/); ``elm_data.core`` is the
base they all share, and ``elm_data.cli`` / ``elm_data.demo`` the command line on top of them.
"""

from elm_data.core import __version__

__all__ = ["__version__"]
