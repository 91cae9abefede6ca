"""``elm-data tokenizer fetch|show``: put the pinned LLaMA tokenizer in the cache, say what resolves."""

from __future__ import annotations

import click

from elm_data.core.commands import command
from elm_data.pipeline.tokenizer import LLAMA2_HUB_URI, LLAMA2_SHA256, PRECEDENCE
from elm_data.sources.remote_option import retries_option


@command("fetch")
@retries_option
@click.argument("uri", default=LLAMA2_HUB_URI)
@click.option("--sha256", default=LLAMA2_SHA256, show_default=True, help="The sha256 the file must have.")
@click.option(
    "--any-sha", is_flag=True, help="Accept whatever the file's sha256 is (another SentencePiece model)."
)
def fetch(uri: str, sha256: str, any_sha: bool) -> None:
    """Download URI (default: the Llama-2 model, with your hub login) into the cache, pinned by sha256.

    Accept Meta's licence at https://huggingface.co/meta-llama/Llama-2-7b-hf and run `huggingface-cli login`
    first. Later commands find the cached model by its sha256 with no --tokenizer and no $ELM_DATA_TOKENIZER.
    """
    from elm_data.pipeline.tokenizer import cached_path, fetch_tokenizer

    pinned = None if any_sha else sha256
    if pinned and uri == LLAMA2_HUB_URI and cached_path(pinned).exists():
        tok = fetch_tokenizer(uri, pinned)  # the cached copy, re-hashed; nothing downloaded
        click.echo(
            f"already cached: sha256 {tok.sha256} (vocabulary {tok.vocab_size:,}) at "
            f"{cached_path(tok.sha256)}"
        )
        return
    tok = fetch_tokenizer(uri, pinned)
    click.echo(
        f"cached {tok.uri} (sha256 {tok.sha256}, vocabulary {tok.vocab_size:,}) at {cached_path(tok.sha256)}"
    )


@command("show")
@retries_option
@click.option("--tokenizer", default=None, help="As the other commands take it.")
def show(tokenizer: str | None) -> None:
    """Say which tokenizer the commands resolve here, and where the cache is."""
    from elm_data.pipeline.tokenizer import cache_dir, resolve_tokenizer

    click.echo(f"order: {PRECEDENCE}\ncache: {cache_dir() / 'tokenizers'}")
    tok = resolve_tokenizer(tokenizer)
    click.echo(f"resolves to {tok.uri} (sha256 {tok.sha256})")
