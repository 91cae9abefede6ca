"""``elm-data stream``: print a manifest's training sequences with their provenance, then the stream's stats.

It lives with the stream (it reads manifests, so it sits above ``manifests/``, not in the per-document pass).
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import click

from elm_data.core.commands import command
from elm_data.core.settings import SettingsError, convert, load_mapping
from elm_data.sources.registry import subset_key
from elm_data.sources.remote_option import retries_option

SNIPPET_CHARS = 70


def _load_weights(value: str | None) -> str | dict[str, float] | None:
    """``--weights``: 'natural', or a YAML file of ``source/subset: weight`` (numbers >= 0), read by the one
    settings loader (one-line errors naming the file and key)."""
    if value is None or value == "natural":
        return value
    path = Path(value)
    if not path.exists():
        raise click.BadParameter(f"{value}: not 'natural' and no such file", param_hint="--weights")
    raw = load_mapping(path, "--weights file")
    weights = convert(raw, dict[str, float], f"--weights file {path}")
    for key, weight in weights.items():
        if not 0 <= weight < float("inf"):
            raise SettingsError(f"--weights file {path}: {key}: expected a number >= 0, got {weight!r}")
    return {key: float(weight) for key, weight in weights.items()}


def _snippet(tokenizer, ids) -> str:
    text = tokenizer.decode([int(i) for i in ids])
    text = text.replace("\n", "⏎")
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "…"


def _print_text(k: int, ids, spans: list[dict[str, Any]], tokenizer, pad_id: int) -> None:
    pads = int((ids == pad_id).sum())
    click.echo(f"── sequence {k}: {len(ids)} tokens, {pads} padding, {len(spans)} span(s)")
    for s in spans:
        key = subset_key(s["source"], s["subset"])
        click.echo(
            f"  [{s['start']:>5}:{s['end']:<5}) {key} doc {s['doc_id']} (record {s['index']}, "
            f"shard {s['shard_sha256'][:12]}) framed tokens [{s['doc_start']}:{s['doc_end']})"
        )
        click.echo(f"      «{_snippet(tokenizer, ids[s['start'] : s['end']])}»")


def _print_stats(stats: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"stats": stats}))
        return
    click.echo(
        f"\n{stats['mode']} mode, seq_len {stats['seq_len']}: {stats['sequences']:,} sequences, "
        f"{stats['tokens']:,} tokens in {stats['token_slots']:,} slots"
    )
    click.echo(f"  padding:   {stats['pad_tokens']:,} slots ({stats['padding_fraction']:.2%})")
    click.echo(
        f"  discarded: {stats['discarded_tokens']:,} tokens ({stats['discarded_fraction']:.2%}) by truncation"
    )
    if "remote" in stats:
        r = stats["remote"]
        click.echo(
            f"  remote:    {r['bytes_fetched']:,} bytes fetched, {r['bytes_from_cache']:,} from the cache, "
            f"{r['retries']} retried ({json.dumps(r['retries_by_reason'])})"
        )
    for key, n in stats["tokens_by_source"].items():
        click.echo(f"  {key:<28} {n:>14,} tokens")


@command("stream")
@retries_option
@click.argument("manifest_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--mode",
    type=click.Choice(["packed", "corenet"]),
    default=None,
    help="Sequence mode (default: the manifest's). corenet needs a manifest built in corenet mode.",
)
@click.option(
    "--seq-len",
    type=click.IntRange(min=1),
    default=None,
    help="Sequence length (rows are seq_len+1). Default: manifest's.",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=1, show_default=True, help="Sequences per batch."
)
@click.option("--take", type=click.IntRange(min=0), default=4, show_default=True, help="Sequences to print.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "jsonl"]),
    default="text",
    show_default=True,
    help="text: spans and decoded snippets; jsonl: one object per sequence with token ids and spans.",
)
@click.option(
    "--weights",
    default=None,
    help="'natural' (each kept document once) or a YAML/JSON file 'source/subset: weight'. "
    "Default: the manifest's mixture weights, else natural.",
)
@click.option("--seed", type=int, default=None, help="Mixing seed (default: the manifest's).")
@click.option(
    "--partitions",
    type=click.IntRange(min=1),
    default=None,
    help="Stream partitions P (default: the largest power of two <= 64 with >= 4 blocks each); "
    "ranks x workers must divide it.",
)
@click.option(
    "--tokenizer", default=None, help="LLaMA tokenizer.model (else $ELM_DATA_TOKENIZER, else the manifest's)."
)
@click.option(
    "--full-pass",
    is_flag=True,
    help="Stream one whole natural pass (no printing); report stats and the tokens consumed against the "
    "manifest.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="DataLoader worker processes reading the stream (0: this process); ranks x workers must divide "
    "--partitions.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="SentencePiece threads per reading process (0: the cores this process may use, shared among the "
    "--workers): one process on N cores. No byte of the stream depends on it.",
)
@click.option(
    "--cache-dir",
    default=None,
    help="A node-local cache of verified remote blocks (by sha256): a second pass fetches nothing. Default: "
    "none.",
)
@click.option(
    "--cache-max-bytes", type=click.IntRange(min=1), default=None, help="The cache's size limit (64 GiB)."
)
@click.option(
    "--readahead-bytes",
    type=click.IntRange(min=0),
    default=None,
    help="Remote blocks fetched ahead of the reader, in bytes (64 MiB; 0: off).",
)
def stream(
    manifest_dir: Path,
    mode,
    seq_len,
    batch_size,
    take,
    fmt,
    weights,
    seed,
    partitions,
    tokenizer,
    full_pass,
    workers,
    threads,
    cache_dir,
    cache_max_bytes,
    readahead_bytes,
) -> None:
    """Print the training sequences of MANIFEST_DIR with their provenance, then padding/discard stats.

    Every span names the source/subset, document id, record index and shard sha256 of the tokens it
    holds. The stream checks each block's sha256 and each document's token count against the manifest.
    """
    from elm_data.core.lazy import pyarrow_without_implicit_pandas

    from . import StreamLoader, TokenStream, take_sequences
    from .dataset import default_encode_threads

    pyarrow_without_implicit_pandas()  # this process uses no pandas, nor (tensors=False below) torch
    network = _network_settings(cache_dir, cache_max_bytes, readahead_bytes)
    ts = TokenStream(
        manifest_dir,
        batch_size=batch_size,
        seq_len=seq_len,
        mode=mode,
        weights="natural" if full_pass else _load_weights(weights),
        seed=seed,
        tokenizer=tokenizer,
        epochs=1,
        provenance=not full_pass,
        partitions=partitions,
        network=network,
        encode_threads=threads or default_encode_threads(workers),
    )
    # numpy arrays: without workers this process never imports torch; the same batches whatever the workers
    loader = StreamLoader(ts, num_workers=workers, tensors=False)
    gc.freeze()  # what start-up made (modules, manifest, plan) lives to the end: no collection walks it again
    if full_pass:
        _full_pass(ts, loader, fmt == "jsonl")
        return
    for k, (ids, spans) in enumerate(take_sequences(loader, take)):
        if fmt == "jsonl":
            click.echo(json.dumps({"sequence": k, "input_ids": ids.tolist(), "spans": spans}))
        else:
            _print_text(k, ids, spans, ts.tokenizer, ts.sequences.pad_id)
    _print_stats(loader.stats(), fmt == "jsonl")


def _network_settings(cache_dir, cache_max_bytes, readahead_bytes):
    """The network layer's settings from the stream's options (retries: ``--retries``)."""
    from .network import NetworkSettings

    cache = (
        {"dir": cache_dir} | ({"max_bytes": cache_max_bytes} if cache_max_bytes else {})
        if cache_dir
        else None
    )
    return NetworkSettings.from_config(None, cache, readahead_bytes)


def _full_pass(ts, loader, as_json: bool) -> None:
    from tqdm import tqdm

    from .consumed import expected_natural_pass

    total = sum(expected_natural_pass(ts.manifest.shards).values()) if ts.config.mode == "packed" else None
    with tqdm(
        total=total,
        unit="tok",
        unit_scale=True,
        desc="streaming one natural pass",
        dynamic_ncols=True,
        mininterval=0.5,
    ) as bar:
        for _ in loader:  # the bar counts the tokens consumed so far (packed: of the pass's known total)
            bar.update(sum(loader.consumed.to_dict().values()) - bar.n)
    stats = loader.stats()
    if ts.config.mode == "packed":
        expected = expected_natural_pass(ts.manifest.shards)
        stats["consumed_matches_manifest"] = loader.consumed.to_dict() == {
            k: v for k, v in expected.items() if v
        }
    _print_stats(stats, as_json)
    if not as_json and "consumed_matches_manifest" in stats:
        verdict = "equal" if stats["consumed_matches_manifest"] else "DIFFER FROM"
        click.echo(f"  tokens consumed per source {verdict} the manifest's kept tokens + BOS/EOS")
