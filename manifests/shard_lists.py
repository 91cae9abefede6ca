"""How a mixture entry names its shards: globs, URL-list files, a pinned hub revision, a share of them.

- ``shards:`` paths, globs or URLs (relative ones against the mixture's folder);
- ``shards_from:`` one or more URL-list files (local or remote: one shard URL a line, ``#`` comments;
  relative lines against the list's folder), as RedPajama-1T and Dolma publish their shards. Confined: a
  list that is not a plain local file (a remote one, or one inside an archive, ``zip://…::…``) may name
  remote URLs and relative paths (under its own folder, on its own storage) only; a local path, ``file://``
  or a chain through a local file is refused unless the entry says ``allow_local_shards: true`` or the
  build is given ``--allow-local-shards`` (:func:`confine`); so are the ``shards:`` of a mixture that is
  not a local file;
- ``match:`` an fnmatch pattern the listed URLs must match (Dolma's single list holds every subset);
- ``revision:`` the hub commit (or tag) every ``hf://`` path of the entry is read at;
- ``fraction:`` keep that share of the entry's sorted shards, evenly spaced (at least one).

Globs expand through fsspec and everything is sorted and de-duplicated, so an entry always names the
same shards in the same order.
"""

from __future__ import annotations

import fnmatch
import io
import math
import posixpath
from collections.abc import Iterable, Sequence

import fsspec

from elm_data.core.errors import ElmDataError, NotFound
from elm_data.core.redact import redact_text, redact_uri
from elm_data.sources import remote

GLOB_CHARS = "*?["


class Unreachable(ElmDataError):
    """A remote location that cannot be listed or read (offline, not logged in, no access)."""


def unreachable(uri: str, error: BaseException) -> Unreachable:
    """One line naming ``uri`` and saying what to check."""
    why = redact_text(str(error).splitlines()[0][:200]) if str(error) else ""
    return Unreachable(
        f"cannot reach {redact_uri(uri)} ({type(error).__name__}{': ' + why if why else ''}); check the "
        "network, "
        "your hub login (`huggingface-cli login`, or HF_TOKEN) and that you accepted the dataset's terms"
    )


def _remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith(("file://", "memory://"))


def pin_revision(uri: str, revision: str | None) -> str:
    """``hf://datasets/org/name/path`` read at ``revision``: ``hf://datasets/org/name@revision/path``."""
    if not revision or not uri.startswith("hf://"):
        return uri
    parts = uri[len("hf://") :].split("/")
    n = 3 if parts[0] in ("datasets", "spaces") else 2  # the repo id's components
    if len(parts) <= n - 1 or "@" in parts[n - 1]:
        return uri
    parts[n - 1] = f"{parts[n - 1]}@{revision}"
    return "hf://" + "/".join(parts)


def absolute(pattern: str, base_dir: str) -> str:
    """``pattern`` as a URL or absolute path, relative ones against ``base_dir``."""
    if "://" in pattern or pattern.startswith("/"):
        return pattern
    return posixpath.join(base_dir, pattern) if "://" in base_dir else f"{base_dir}/{pattern}"


def expand(pattern: str, what: str) -> list[str]:
    """A glob's matches as sorted URIs (local ones as paths); a plain URI as itself (an http(s) URL's ``?``
    starts its query, not a glob)."""
    searched = pattern.partition("?")[0] if pattern.lower().startswith(("http://", "https://")) else pattern
    if not any(ch in searched for ch in GLOB_CHARS):
        return [pattern]
    try:
        options = remote.options_for(pattern)  # e.g. a mixture's S3-compatible endpoint
        fs, _, paths = remote.retrying(
            f"listing {pattern}", lambda: fsspec.get_fs_token_paths(pattern, storage_options=options)
        )
    except Exception as e:
        if _remote(pattern) and not isinstance(e, FileNotFoundError):
            raise unreachable(pattern, e) from e
        raise
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    found = sorted(p if protocol == "file" or "://" in p else f"{protocol}://{p}" for p in paths)
    if not found:
        raise NotFound(f"{what}: no shard matches {pattern!r}")
    return found


# this machine's files (memory: this process')
_LOCAL_PROTOCOLS = frozenset({None, "file", "local", "memory"})


class LocalShardRefused(ElmDataError):
    """A shard list that is not a local file names a local path (``/etc/…``, ``file://…``)."""


def is_local(uri: str) -> bool:
    """Whether ``uri`` reads this machine's files: a path, ``file://``/``local://``/``memory://``, or a chain
    (``zip://x::/path/a.zip``, ``simplecache::file://…``) through any of them."""
    return any(fsspec.core.split_protocol(part)[0] in _LOCAL_PROTOCOLS for part in uri.split("::"))


def local_list(uri: str) -> bool:
    """Whether a shard list at ``uri`` is a plain local file (the user's own), not remote nor inside an
    archive."""
    return "::" not in uri and is_local(uri)


def confine(listing: str, line: str, allow_local: bool = False) -> None:
    """Refuse a ``line`` of the list at ``listing`` that would read this machine's files when the list is not
    a local file (see the module docstring); a relative line stays under the list's own folder, on its
    storage."""
    relative = "://" not in line and "::" not in line and not line.startswith("/")
    if allow_local or relative or local_list(listing) or not is_local(line):
        return
    raise LocalShardRefused(
        f"{redact_uri(listing)} names the local path {redact_uri(line)!r}: a shard list (or mixture) that is "
        "not a "
        "local file may name only remote URLs or paths under its own folder; if you trust it, set "
        "`allow_local_shards: true` on the entry or pass --allow-local-shards"
    )


def listed_uri(listing: str, line: str) -> str:
    """``line`` of the list at ``listing`` as a URL: a relative one against the list's folder, inside a
    chained list's archive too (``zip://dir/urls.txt::a.zip`` + ``x.jsonl`` →
    ``zip://dir/x.jsonl::a.zip``)."""
    if "://" in line or "::" in line or line.startswith("/"):
        return line
    head, sep, chain = listing.partition("::")
    protocol, path = fsspec.core.split_protocol(head)
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(path), line))
    return (f"{protocol}://{joined}" if protocol else joined) + sep + chain


def read_url_list(uri: str, allow_local: bool = False) -> list[str]:
    """The shard URLs a URL-list file names (blank lines and ``#`` comments skipped), confined
    (:func:`confine`)."""
    try:
        # reads retried on transient faults
        with io.TextIOWrapper(remote.open_read(uri), encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except FileNotFoundError as e:
        raise NotFound(f"shard list not found: {redact_uri(uri)}") from e
    except Exception as e:
        if _remote(uri):
            raise unreachable(uri, e) from e
        raise
    listed = [line for line in lines if line and not line.startswith("#")]
    for line in listed:
        confine(uri, line, allow_local)
    return [listed_uri(uri, line) for line in listed]


def every_nth(uris: Sequence[str], fraction: float) -> list[str]:
    """``fraction`` of ``uris`` (at least one), evenly spaced, in order."""
    k = max(1, math.ceil(len(uris) * fraction))
    return [uris[(i * len(uris)) // k] for i in range(k)] if uris else []


def entry_shards(
    shards: Iterable[str],
    shards_from: Iterable[str],
    base_dir: str,
    what: str,
    revision: str | None = None,
    match: str | None = None,
    fraction: float | None = None,
    allow_local: bool = False,
) -> list[str]:
    """Every shard URI an entry names, sorted and de-duplicated (see the module docstring); ``allow_local``
    lets a list that is not a local file name local paths."""
    uris: list[str] = []
    for pattern in shards:
        confine(posixpath.join(base_dir, "mixture"), pattern, allow_local)  # a remote mixture is confined too
        uris.extend(expand(pin_revision(absolute(pattern, base_dir), revision), what))
    for listing in shards_from:
        listed = read_url_list(pin_revision(absolute(listing, base_dir), revision), allow_local)
        if match:
            listed = [u for u in listed if fnmatch.fnmatchcase(u, match)]
        if not listed:
            raise NotFound(f"{what}: {listing} lists no shard" + (f" matching {match!r}" if match else ""))
        uris.extend(pin_revision(u, revision) for u in listed)
    uris = sorted(dict.fromkeys(uris))
    return every_nth(uris, fraction) if fraction is not None else uris
