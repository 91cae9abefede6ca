"""``elm-data init openelm DIR``: the mixture OpenELM pretrained on, naming the real upstream shards.

Every fact comes from the sources registry (upstream location, hub glob or published URL list, target
tokens); this module only arranges them into a ``mixture.yaml``. Presets: ``openelm`` (all 13
source/subsets: RefinedWeb, RedPajama-1T without common_crawl, the deduplicated Pile, Dolma v1.6) and
``openelm-1pct`` (1% of each subset's shards, evenly spaced, at least one).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from elm_data.core.errors import ElmDataError, InvalidValue, OutputExists
from elm_data.core.outputs import write_atomic
from elm_data.sources.registry import SubsetSpec, all_subsets

PRESETS = {"openelm": None, "openelm-1pct": 0.01}  # name -> fraction of each subset's shards
HEADER = """\
# {name}: OpenELM's pretraining mix (arXiv 2404.14619, Table 2) at its upstream locations.
# weight = OpenELM's target tokens for the subset, in billions. Written by `elm-data init {name}`.
# Before counting: accept Meta's Llama-2 licence and run `huggingface-cli login`, then
# `elm-data tokenizer fetch`; hf:// paths are read with your hub login, at `revision:`
# (`elm-data init {name} DIR --pin` pins the hub's current commits; the manifest records each shard's commit
# and sha256 either way).
# RedPajama-1T and Dolma v1.6 publish URL lists (`shards_from:`); `match:` picks the subset's files.
# Plan first: `elm-data estimate {file}` (documents, tokens, core-hours, disk and network, from a sample).
"""


def _hub_repo(uri: str) -> str | None:
    """``org/name`` of an ``hf://datasets/org/name/...`` URI."""
    parts = uri.removeprefix("hf://").split("/")
    return "/".join(parts[1:3]).split("@")[0] if uri.startswith("hf://datasets/") and len(parts) > 3 else None


def _entry(spec: SubsetSpec, fraction: float | None, revision: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "source": spec.source,
        "subset": spec.subset,
        "weight": spec.openelm_weight,
        **spec.upstream_shards(),
    }
    located = entry.get("shards_from") or entry["shards"][0]
    if _hub_repo(located):
        entry["revision"] = revision
    if fraction is not None:
        entry["fraction"] = fraction
    return entry


def openelm_mixture(preset: str = "openelm", revision: str = "main") -> dict[str, Any]:
    """The mixture (as a dict) of ``preset``; ``revision`` is the hub commit for every hf:// location."""
    if preset not in PRESETS:
        raise InvalidValue(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    return {
        "name": preset,
        "seed": 0,
        "tokenizer": None,
        "targets": "openelm",
        "filters": {"min_characters": 200, "min_tokens": 256},
        "sequences": {"mode": "packed", "seq_len": 2048},
        "sources": [_entry(spec, PRESETS[preset], revision) for spec in all_subsets()],
    }


def hub_commit(repo: str) -> str:
    """The current commit of a hub dataset repo (network; your hub login).

    Offline, not logged in, or the hub refusing: an :class:`ElmDataError` in one line naming the repo and what
    to do about that cause (:func:`hub_failure_hint`).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HfHubHTTPError

    # OSError covers requests' errors, the hub's own and a missing login; the transport's HTTPError (the
    # base HfHubHTTPError extends) covers httpx's connection errors, which are not OSErrors
    hub_errors = (OSError, *HfHubHTTPError.__bases__)
    try:
        return HfApi().dataset_info(repo).sha
    except hub_errors as e:
        reason = (str(e).strip().splitlines() or [""])[0]
        raise ElmDataError(
            f"cannot ask the hub for the commit of {repo} ({type(e).__name__}: {reason}); "
            f"{hub_failure_hint(e)}"
        ) from e


def hub_failure_hint(error: BaseException) -> str:
    """What to do about a failed hub call, by its cause: the network (no connection, a timeout, offline mode),
    the login (401/403, a gated or unseen repo), or anything else (both)."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if _is_network_error(error) or _is_network_error(error.__cause__):
        return "the hub is unreachable (network): connect, or run without --pin"
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, GatedRepoError | RepositoryNotFoundError) or status in (401, 403):
        return "the hub refused this login: run `huggingface-cli login` with a token that may read it"
    if isinstance(error, HfHubHTTPError) and status is not None and status >= 500:
        return "the hub failed; try again later, or run without --pin"
    return "run without --pin, or check the network and `huggingface-cli login`"


# the transports' connection and timeout errors, by class: huggingface_hub 2.x uses httpx2, 1.x httpx, older
# ones requests (each transport is looked up by name, so none of them is imported or required here)
_NETWORK_CLASSES = {
    ("httpx2", "TransportError"),
    ("httpx", "TransportError"),
    ("requests", "ConnectionError"),
    ("requests", "Timeout"),
}


def _is_network_error(error: BaseException | None) -> bool:
    from huggingface_hub.errors import OfflineModeIsEnabled

    if isinstance(error, ConnectionError | TimeoutError | OfflineModeIsEnabled):
        return True
    return any((c.__module__.split(".")[0], c.__name__) in _NETWORK_CLASSES for c in type(error).__mro__)


def pin_revisions(mixture: dict[str, Any], commit_of: Callable[[str], str] = hub_commit) -> dict[str, Any]:
    """``mixture`` with every entry's ``revision:`` replaced by its hub repo's current commit."""
    commits: dict[str, str] = {}
    for entry in mixture["sources"]:
        repo = _hub_repo(entry.get("shards_from") or entry["shards"][0])
        if repo and "revision" in entry:
            if repo not in commits:
                commits[repo] = commit_of(repo)
            entry["revision"] = commits[repo]
    return mixture


def write_openelm_mixture(
    out_dir: str | Path, preset: str = "openelm", pin: bool = False, overwrite: bool = False
) -> Path:
    """Write ``out_dir/<preset>.yaml``; return its path. ``pin`` asks the hub for each repo's commit.

    An existing file is replaced only with ``overwrite`` (else :class:`OutputExists`, before any hub call).
    """
    mixture = openelm_mixture(preset)
    out = Path(out_dir) / f"{preset}.yaml"
    if out.exists() and not overwrite:
        raise OutputExists(f"{out} exists; pass --force (overwrite=True) to replace it")
    if pin:
        mixture = pin_revisions(mixture)
    header = HEADER.format(name=preset, file=out.name)
    write_atomic(out, header + yaml.safe_dump(mixture, sort_keys=False, width=120))
    return out
