"""elm-data: data pipeline and dataset provenance for pretraining OpenELM-style models.

The installed package maps the repository's top-level folders to sub-packages:
``elm_data.sources`` (sources/), ``elm_data.pipeline`` (pipeline/), ``elm_data.manifests``
(manifests/), ``elm_data.model`` (model/) and ``elm_data.trainer`` (trainer/).
"""

__version__ = "0.1.0"
