"""The `elm-data` command line: a thin layer over the sub-packages' own click commands.

Each area keeps its commands in its own ``cli.py``; this module only arranges them:

    elm-data sample OUT_DIR                   sources/cli.py
    elm-data build manifest MIXTURE.yaml      manifests/cli.py
    elm-data verify | audit DIR               manifests/cli.py
    elm-data audit contamination DIR          trainer/contamination_cli.py (manifests/contamination.py)
    elm-data audit duplicates DIR             manifests/cli.py (manifests/duplicates.py)
    elm-data export croissant DIR             manifests/cli.py
    elm-data stream MANIFEST_DIR              pipeline/stream/cli.py
    elm-data export hf CHECKPOINT|RUN OUT     trainer/export_cli.py
    elm-data export mlx CHECKPOINT OUT        trainer/export_cli.py
    elm-data eval CHECKPOINT|EXPORT           trainer/export_cli.py
    elm-data train CONFIG.yaml                trainer/cli.py
    elm-data audit-run RUN_DIR                trainer/cli.py
    elm-data bench train MATRIX.yaml          trainer/cli.py (trainer/bench/efficiency.py)
    elm-data demo [OUT_DIR]                   elm_data/demo.py
    elm-data tokenizer fetch|show             pipeline/tokenizer_cli.py
    elm-data init openelm DIR                 manifests/openelm_cli.py
    elm-data estimate MIXTURE.yaml            manifests/openelm_cli.py

Errors: the commands catch nothing (they are made with :func:`elm_data.core.commands.command`, which turns an
escaping :class:`~elm_data.core.errors.ElmDataError` or ``OSError`` into a one-line click error), and
:func:`run` is the one handler that prints: a user error (those, a click usage error) prints ``error:
<message>`` (URIs redacted) and exits 2; Ctrl-C or SIGTERM prints ``interrupted`` and exits 130/143; anything
else is a bug: its traceback and a hint to report it, exit 1. A check that runs and finds a difference
(``verify``,
``audit-run --verify``) exits 1 after printing it. ``elm-data --debug`` (or ``ELM_DATA_DEBUG=1``) also shows
the
traceback of user errors.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import click

from elm_data.core import __version__
from elm_data.core.commands import EXIT_CODES_HELP, user_error_message
from elm_data.core.errors import EXIT_USER_ERROR
from elm_data.core.procs import Terminated, blas_without_thread_pool, stop_on_sigterm
from elm_data.core.redact import redact_text

# group -> {command name: (module, attribute, one-line help)}. Modules are imported only when their
# command runs, so `elm-data --help` and the data commands never pay for importing torch.
COMMANDS: dict[str, dict[str, tuple[str, str, str]]] = {
    "": {
        "sample": (
            "elm_data.sources.cli",
            "sample",
            "Write small shards of every corpus in its native format.",
        ),
        "verify": (
            "elm_data.manifests.cli",
            "verify",
            "Re-hash every shard of a manifest; exit 1 on a mismatch.",
        ),
        "stream": (
            "elm_data.pipeline.stream.cli",
            "stream",
            "Training sequences with the provenance of every span.",
        ),
        "train": ("elm_data.trainer.cli", "train", "Pretrain an OpenELM on a manifest's token stream."),
        "audit-run": (
            "elm_data.trainer.cli",
            "audit_run",
            "Tokens a run consumed per source vs its manifest.",
        ),
        "trace": (
            "elm_data.trainer.cli",
            "trace",
            "Steps and rows at which a run consumed a document or text.",
        ),
        "report": (
            "elm_data.trainer.report_cli",
            "report",
            "One HTML page (and PNGs) of a run: loss, data, receipt.",
        ),
        "compress": ("elm_data.trainer.compress_cli", "compress", "Fine-tune under eDKM weight clustering."),
        "demo": ("elm_data.demo", "demo", "Run the whole product on the bundled sample corpus."),
        "init": (
            "elm_data.manifests.openelm_cli",
            "init",
            "Write OpenELM's mixture naming the real upstream shards.",
        ),
        "estimate": (
            "elm_data.manifests.openelm_cli",
            "estimate",
            "Estimate a mixture's tokens and build cost.",
        ),
        "eval": (
            "elm_data.trainer.export_cli",
            "eval_command",
            "Benchmarks (lm-eval) and held-out perplexity.",
        ),
    },
    "build": {
        "manifest": (
            "elm_data.manifests.cli",
            "build_manifest",
            "Count, hash and record every shard of a mixture.",
        ),
    },
    "tokenizer": {
        "fetch": ("elm_data.pipeline.tokenizer_cli", "fetch", "Cache the LLaMA tokenizer by sha256."),
        "show": (
            "elm_data.pipeline.tokenizer_cli",
            "show",
            "Say which tokenizer the commands resolve, and the cache.",
        ),
    },
    "audit": {  # `elm-data audit MANIFEST` is `elm-data audit mixture MANIFEST` (DefaultLazyGroup)
        "mixture": (
            "elm_data.manifests.cli",
            "audit",
            "Tokens per source/subset of a manifest against a target mix.",
        ),
        "contamination": (
            "elm_data.trainer.contamination_cli",
            "contamination",
            "Evaluation items' n-grams in the kept documents (or those a run consumed).",
        ),
        "duplicates": (
            "elm_data.manifests.cli",
            "duplicates",
            "Exact and MinHash near-duplicates within/across sources.",
        ),
    },
    "bench": {
        "train": (
            "elm_data.trainer.cli",
            "bench_train",
            "Sweep a training-efficiency matrix (tokens/s, MFU).",
        )
    },
    "export": {
        "croissant": (
            "elm_data.manifests.cli",
            "export_croissant",
            "Write a manifest as Croissant 1.1 JSON-LD.",
        ),
        "hf": (
            "elm_data.trainer.export_cli",
            "export_hf",
            "A checkpoint as an offline-loadable HF folder + card.",
        ),
        "mlx": (
            "elm_data.trainer.export_cli",
            "export_mlx",
            "A checkpoint as an MLX folder (mlx-lm; quantized).",
        ),
    },
}


# the modules whose commands do no linear algebra: numpy's OpenBLAS starts there without its idle threads
# (``procs.blas_without_thread_pool``; a command module imports numpy, so this is decided before it)
NO_LINEAR_ALGEBRA = frozenset({"elm_data.pipeline.stream.cli", "elm_data.manifests.cli"})


class LazyGroup(click.Group):
    """A group whose commands live in other modules, imported when a command is looked up to run."""

    def __init__(self, *args, lazy: dict[str, tuple[str, str, str]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy and name not in self.commands:
            module, attr, _ = self.lazy[name]
            if module in NO_LINEAR_ALGEBRA:
                blas_without_thread_pool()
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [
            (
                name,
                self.lazy[name][2] if name in self.lazy else self.commands[name].get_short_help_str(limit=80),
            )
            for name in self.list_commands(ctx)
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


class DefaultLazyGroup(LazyGroup):
    """A :class:`LazyGroup` whose ``default`` command runs when the first argument names none of its
    commands."""

    def __init__(self, *args, default: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.default = default

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        names = {*self.commands, *self.lazy}
        if args and args[0] not in names and args[0] not in ctx.help_option_names:
            args = [self.default, *args]
        return super().parse_args(ctx, args)


SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


_debug = {"on": bool(os.environ.get("ELM_DATA_DEBUG"))}


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    _debug["on"] = _debug["on"] or value


@click.group(cls=LazyGroup, lazy=COMMANDS[""], context_settings=SETTINGS, epilog=EXIT_CODES_HELP)
@click.version_option(__version__, prog_name="elm-data")
@click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_set_debug,
    help="Show the traceback of errors (also ELM_DATA_DEBUG=1).",
)
def cli() -> None:
    """elm-data: which bytes of which public corpus became which training tokens, and proof of it.

    Typical flow: `sample` (or your own shards) -> `build manifest` -> `verify` / `audit`
    -> `stream` -> `train` -> `export hf`. `demo` runs all of it on bundled sample data.
    """


@cli.group(cls=LazyGroup, lazy=COMMANDS["build"])
def build() -> None:
    """Build artefacts from a mixture config."""


@cli.group(cls=LazyGroup, lazy=COMMANDS["export"])
def export() -> None:
    """Export a manifest (Croissant) or a checkpoint (Hugging Face)."""


@cli.group(cls=DefaultLazyGroup, lazy=COMMANDS["audit"], default="mixture")
def audit() -> None:
    """Audit a manifest: its token mix (the default), contamination, duplicates.

    `audit MANIFEST` is `audit mixture MANIFEST` (tokens per source/subset against the target mix); `audit
    contamination` finds evaluation items in the kept documents, `audit duplicates` exact and near copies."""


@cli.group(cls=LazyGroup, lazy=COMMANDS["bench"])
def bench() -> None:
    """Measure: training efficiency across a matrix of settings."""


@cli.group(cls=LazyGroup, lazy=COMMANDS["tokenizer"])
def tokenizer() -> None:
    """Fetch and pin the LLaMA tokenizer (cached by sha256)."""


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _fail(message: str, code: int = EXIT_USER_ERROR) -> int:
    if _debug["on"]:
        traceback.print_exc()
    click.echo(f"error: {redact_text(message)}", err=True)
    return code


def _absolute_tokenizer_variable() -> None:
    """A relative ``$ELM_DATA_TOKENIZER`` means a path from where the command was started: made absolute once,
    here, so it still names that file after a chdir and in the processes a command starts (Beam, torchrun)."""
    given = os.environ.get("ELM_DATA_TOKENIZER")
    if given and "://" not in given:
        os.environ["ELM_DATA_TOKENIZER"] = os.path.abspath(os.path.expanduser(given))


def run(args: list[str] | None = None) -> int:
    """Run the command line; return its exit code (the one error handler: see the module docstring)."""
    _debug["on"] = bool(os.environ.get("ELM_DATA_DEBUG"))  # --debug sets it for this run only
    _absolute_tokenizer_variable()
    stop_on_sigterm()
    try:
        code = cli.main(args=args, prog_name="elm-data", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except click.Abort as abort:  # Ctrl-C / SIGTERM (click turns KeyboardInterrupt into Abort)
        term = isinstance(abort.__cause__, Terminated) or isinstance(abort, Terminated)
        click.echo(
            f"interrupted ({'SIGTERM' if term else 'SIGINT'}): stopped; completed work is kept", err=True
        )
        return 143 if term else 130
    except Terminated:
        click.echo("interrupted (SIGTERM): stopped; completed work is kept", err=True)
        return 143
    except KeyboardInterrupt:
        click.echo("interrupted (SIGINT): stopped; completed work is kept", err=True)
        return 130
    except _NO_ARGS_IS_HELP as error:  # `elm-data` or a group without a command: its help, as click shows it
        click.echo(error.format_message(), err=True)
        return EXIT_USER_ERROR
    except click.UsageError as error:  # a bad flag or argument: one line, and where the usage is
        hint = f" (see {error.ctx.command_path} --help)" if error.ctx is not None else ""
        return _fail(error.format_message() + hint)
    except click.ClickException as error:  # the commands' own one-line errors
        return _fail(error.format_message())
    # a user error outside a command (e.g. a group), or a bug: show it, ask for a report
    except Exception as error:
        message = user_error_message(error)
        if message is not None:
            return _fail(message)
        traceback.print_exc()
        first = (redact_text(str(error)).splitlines() or [""])[0]
        click.echo(
            f"error: internal error ({type(error).__name__}: {first}) — this is a bug in elm-data "
            f"{__version__}; "
            "please report it with the traceback above",
            err=True,
        )
        return 1


def main() -> None:
    sys.exit(run())
