"""The `elm-data` command line: a thin layer over the sub-packages' own click commands.

Each area keeps its commands in its own ``cli.py``; this module only arranges them:

    elm-data sample OUT_DIR                   sources/cli.py
    elm-data build manifest MIXTURE.yaml      manifests/cli.py
    elm-data verify | audit DIR               manifests/cli.py
    elm-data export croissant DIR             manifests/cli.py
    elm-data stream MANIFEST_DIR              pipeline/cli.py
    elm-data export hf CHECKPOINT OUT_DIR     model/cli.py
    elm-data train CONFIG.yaml                trainer/cli.py
    elm-data audit-run RUN_DIR                trainer/cli.py
    elm-data demo [OUT_DIR]                   elm_data/demo.py
"""

from __future__ import annotations

import importlib

import click

from elm_data import __version__

# (group, module, attribute): the command object each area exports.
COMMANDS: list[tuple[str, str, str]] = [
    ("", "elm_data.sources.cli", "sample"),
    ("build", "elm_data.manifests.cli", "build_manifest"),
    ("", "elm_data.manifests.cli", "verify"),
    ("", "elm_data.manifests.cli", "audit"),
    ("export", "elm_data.manifests.cli", "export_croissant"),
    ("", "elm_data.pipeline.cli", "stream"),
    ("export", "elm_data.model.cli", "export_hf"),
    ("", "elm_data.trainer.cli", "train"),
    ("", "elm_data.trainer.cli", "audit_run"),
    ("", "elm_data.demo", "demo"),
]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="elm-data")
def cli() -> None:
    """elm-data: which bytes of which public corpus became which training tokens, and proof of it.

    Typical flow: `sample` (or your own shards) -> `build manifest` -> `verify` / `audit`
    -> `stream` -> `train` -> `export hf`. `demo` runs all of it on bundled sample data.
    """


@cli.group()
def build() -> None:
    """Build artefacts from a mixture config."""


@cli.group()
def export() -> None:
    """Export a manifest (Croissant) or a checkpoint (Hugging Face)."""


GROUPS = {"": cli, "build": build, "export": export}


def _register() -> None:
    for group, module_name, attr in COMMANDS:
        module = importlib.import_module(module_name)
        GROUPS[group].add_command(getattr(module, attr))


_register()


def main() -> None:
    cli(prog_name="elm-data")
