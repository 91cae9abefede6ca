"""The pinned LLaMA SentencePiece tokenizer: one resolver, a cache by sha256, batch encoding.

Every command finds the tokenizer through :func:`resolve_tokenizer`, in one order:

1. the ``--tokenizer`` flag;
2. the config's ``tokenizer:`` (mixture or training config);
3. ``$ELM_DATA_TOKENIZER``;
4. the location a manifest recorded when it was built;
5. the cache, by sha256 (the manifest's, else the pinned Llama-2 model's).

Paths and fsspec URLs (``hf://``, ``s3://``, ``https://``) are accepted. Every model loaded is kept
in the cache as ``<cache>/tokenizers/<sha256>.model`` (the cache is ``$ELM_DATA_CACHE``, else
``$XDG_CACHE_HOME/elm-data``, else ``~/.cache/elm-data``), and a URL is remembered there too, so a
later command finds it offline and with the variable unset. Where a manifest is given, the sha256
loaded must equal the manifest's. The model file is Meta-licensed and never committed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import sentencepiece as spm

from elm_data.core.errors import ElmDataError
from elm_data.core.known_tokenizers import LLAMA2_SHA256, known_name
from elm_data.core.outputs import write_atomic
from elm_data.core.redact import redact_text, redact_uri
from elm_data.sources.remote import open_read

ENV_VAR = "ELM_DATA_TOKENIZER"
CACHE_ENV_VAR = "ELM_DATA_CACHE"
LLAMA2_HUB_URI = "hf://meta-llama/Llama-2-7b-hf/tokenizer.model"
LLAMA2_LICENCE_PAGE = "https://huggingface.co/meta-llama/Llama-2-7b-hf"
BOS_ID, EOS_ID, PAD_ID = 1, 2, 32000  # LLaMA has no pad piece; CoreNet pads with id 32000
PRECEDENCE = (
    "--tokenizer > config `tokenizer:` > $ELM_DATA_TOKENIZER > the manifest's recorded location > cache"
)
_SHORT = f"sha256 {LLAMA2_SHA256[:8]}…{LLAMA2_SHA256[-4:]}"


class TokenizerError(ElmDataError, ValueError):
    """A user-facing tokenizer problem; ``str()`` is one line saying what to do."""


class TokenizerNotFound(TokenizerError, RuntimeError):
    """No tokenizer given, or nothing where one was named."""


class TokenizerMismatch(TokenizerError):
    """The tokenizer loaded is not the one pinned (by a manifest or ``--sha256``)."""


def public_uri(uri: str) -> str:
    """``uri`` without credentials (:func:`elm_data.core.redact.redact_uri`): what is recorded and printed."""
    return redact_uri(uri)


def cache_dir() -> Path:
    """``$ELM_DATA_CACHE``, else ``$XDG_CACHE_HOME/elm-data``, else ``~/.cache/elm-data``."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "elm-data"


def cached_path(sha256: str) -> Path:
    return cache_dir() / "tokenizers" / f"{sha256}.model"


def _index_path() -> Path:
    return cache_dir() / "tokenizers" / "index.json"


def _read_index() -> dict[str, str]:
    try:
        return json.loads(_index_path().read_text())
    except (OSError, ValueError):
        return {}


def cache_model(proto: bytes, uri: str | None = None) -> Path | None:
    """Keep ``proto`` in the cache under its sha256 (and remember ``uri``); None if the cache is not
    writable."""
    sha = hashlib.sha256(proto).hexdigest()
    path = cached_path(sha)
    try:
        if not path.exists():
            write_atomic(path, proto)
        if uri and "://" in uri and not uri.startswith("file://"):
            index = _read_index() | {public_uri(uri): sha}
            write_atomic(_index_path(), json.dumps(index, indent=1, sort_keys=True))
    except OSError:
        return None
    return path


def _absolute(uri: str) -> str:
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))


def _offline_hint(uri: str, error: BaseException) -> str:
    text = redact_text(str(error).splitlines()[0][:160]) if str(error) else ""
    why = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return (
        f"cannot fetch the tokenizer from {public_uri(uri)} ({why}). Online: accept the licence at "
        f"{LLAMA2_LICENCE_PAGE}, run `huggingface-cli login`, then `elm-data tokenizer fetch`; "
        f"offline: pass --tokenizer /path/to/tokenizer.model or export {ENV_VAR}=/path/to/tokenizer.model"
    )


def _read_model(uri: str) -> bytes:
    """The bytes at ``uri``; a remote URL falls back to the cache's copy of it when it cannot be reached."""
    remote = "://" in uri and not uri.startswith(("file://", "memory://"))
    try:
        with open_read(uri) as f:  # a remote model's reads are retried on transient faults
            return f.read()
    except FileNotFoundError as e:
        if not remote:
            raise TokenizerNotFound(f"tokenizer model not found at {public_uri(uri)!r}") from e
        error: BaseException = e
    except Exception as e:  # offline, gated, not logged in, no such protocol: one line, not a traceback
        error = e
    sha = _read_index().get(public_uri(uri))
    if sha and cached_path(sha).exists():
        return cached_path(sha).read_bytes()
    raise TokenizerNotFound(_offline_hint(uri, error)) from error


def _processor(proto: bytes, uri: str) -> spm.SentencePieceProcessor:
    try:
        return spm.SentencePieceProcessor(model_proto=proto)
    except RuntimeError as e:
        raise TokenizerError(
            f"{public_uri(uri)} is not a SentencePiece model ({len(proto):,} bytes that do not parse as "
            "one); "
            f"point --tokenizer at the Llama-2 tokenizer.model ({_SHORT})"
        ) from e


def _returns_arrays(sp: spm.SentencePieceProcessor) -> bool:
    """Whether this SentencePiece encodes a batch to numpy arrays (``return_type="numpy"``; older releases
    refuse the keyword)."""
    try:
        return hasattr(sp.encode([""], return_type="numpy", num_threads=1)[0], "dtype")
    except (TypeError, ValueError):
        return False


class LlamaTokenizer:
    """SentencePiece LLaMA tokenizer with its provenance (uri, sha256).

    ``uri`` is stored as it resolves: an absolute path or a URL without credentials.
    Encoding never adds BOS/EOS; sequence forming adds them.
    """

    def __init__(
        self, uri: str, expected_sha256: str | None = None, num_threads: int = 1, proto: bytes | None = None
    ):
        uri = _absolute(str(uri))
        proto = _read_model(uri) if proto is None else proto
        self.uri = public_uri(uri)
        self.sha256 = hashlib.sha256(proto).hexdigest()
        if expected_sha256 and self.sha256 != expected_sha256:
            raise TokenizerMismatch(
                f"tokenizer at {self.uri} has sha256 {self.sha256}, but {expected_sha256} was pinned"
            )
        self.sp = _processor(proto, uri)
        self._proto = proto
        self.num_threads = num_threads
        self.vocab_size = self.sp.vocab_size()
        self.bos_id, self.eos_id, self.pad_id = BOS_ID, EOS_ID, PAD_ID
        cache_model(proto, uri)

    @classmethod
    def resolve(cls, flag: str | None = None, config_value: str | None = None, **kwargs) -> LlamaTokenizer:
        return cls(resolve_tokenizer_uri(flag, config_value), **kwargs)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    @cached_property
    def returns_arrays(self) -> bool:
        """Whether this processor encodes a batch to numpy arrays (asked once, at the first batch)."""
        return _returns_arrays(self.sp)

    def encode_batch(
        self, texts: Sequence[str], num_threads: int | None = None, arrays: bool = False
    ) -> list[list[int]]:
        """Each text's ids. ``arrays``: as numpy int32 arrays where this SentencePiece returns them
        (``return_type="numpy"``: no Python int made per token, ~3 % less CPU for a caller that only counts
        them), else as the lists it gives without."""
        threads = num_threads or self.num_threads
        if arrays and self.returns_arrays:
            return self.sp.encode(list(texts), return_type="numpy", num_threads=threads)
        return self.sp.encode(list(texts), num_threads=threads)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([i for i in ids if i < self.vocab_size])

    @property
    def name(self) -> str | None:
        """The model's known name ("LLaMA-2") when its sha256 is that model's, else None."""
        return known_name(self.sha256)

    def describe(self) -> dict[str, Any]:
        """The record pinned in manifests and training logs: what was really used (a name only when known)."""
        return {
            "uri": self.uri,
            "sha256": self.sha256,
            "kind": "sentencepiece",
            "name": self.name,
            "vocab_size": self.vocab_size,
        }

    @property
    def model_bytes(self) -> bytes:
        """The SentencePiece model file's own bytes (their sha256 is :attr:`sha256`): what an export ships."""
        return self._proto

    # Picklable for multiprocessing and DataLoader workers: ship the proto, rebuild the processor.
    def __getstate__(self):
        return {"uri": self.uri, "proto": self._proto, "num_threads": self.num_threads}

    def __setstate__(self, state):
        self.uri = state["uri"]
        self._proto = state["proto"]
        self.sha256 = hashlib.sha256(self._proto).hexdigest()
        self.num_threads = state["num_threads"]
        self.sp = spm.SentencePieceProcessor(model_proto=self._proto)
        self.vocab_size = self.sp.vocab_size()
        self.bos_id, self.eos_id, self.pad_id = BOS_ID, EOS_ID, PAD_ID


def resolve_tokenizer_uri(flag: str | None = None, config_value: str | None = None) -> str:
    """The first location given: ``--tokenizer`` flag, then config, then ``$ELM_DATA_TOKENIZER``."""
    for candidate in (flag, config_value, os.environ.get(ENV_VAR)):
        if candidate:
            return str(candidate)
    raise TokenizerNotFound(
        "No LLaMA tokenizer given. Pass --tokenizer PATH, set `tokenizer:` in the config, "
        f"or export {ENV_VAR}=/path/to/tokenizer.model (the Llama-2 SentencePiece model, {_SHORT}; "
        "gated upstream, so it is never bundled: `elm-data tokenizer fetch` caches it once)."
    )


def _pinned(manifest_info: dict[str, Any] | None) -> tuple[str | None, str | None]:
    recorded = (manifest_info or {}).get("tokenizer") or {}
    return recorded.get("uri"), recorded.get("sha256")


def resolve_tokenizer(
    flag: str | LlamaTokenizer | None = None,
    config: str | None = None,
    manifest_info: dict[str, Any] | None = None,
    *,
    expected_sha256: str | None = None,
    num_threads: int = 1,
) -> LlamaTokenizer:
    """The tokenizer every command uses: flag > config > ``$ELM_DATA_TOKENIZER`` > manifest's location >
    cache.

    ``manifest_info`` is a manifest's ``manifest.json`` (``{"tokenizer": {"uri", "sha256"}}``): its sha256 is
    the one the tokenizer loaded must have (:class:`TokenizerMismatch` otherwise), and when its recorded
    location is gone the cache's copy with that sha256 is used. With nothing given, the cache's copy of the
    pinned Llama-2 model is used. ``flag`` may be a loaded :class:`LlamaTokenizer` (only its sha256 is
    checked). Raises :class:`TokenizerError` (one line) on any failure.
    """
    recorded_uri, recorded_sha = _pinned(manifest_info)
    want = expected_sha256 or recorded_sha
    by = "the manifest" if recorded_sha and not expected_sha256 else "--sha256"
    if isinstance(flag, LlamaTokenizer):  # already loaded (e.g. the trainer's): only its sha256 is checked
        _check(flag, want, by)
        return flag
    explicit = flag or config or os.environ.get(ENV_VAR)
    if explicit:
        tok = LlamaTokenizer(str(explicit), num_threads=num_threads)
        _check(tok, want, by)
        return tok
    if recorded_uri:
        try:
            return LlamaTokenizer(recorded_uri, expected_sha256=want, num_threads=num_threads)
        except TokenizerNotFound:
            pass  # moved or offline: the cache may hold it by sha256
    sha = want or LLAMA2_SHA256
    if cached_path(sha).exists():
        return LlamaTokenizer(str(cached_path(sha)), expected_sha256=sha, num_threads=num_threads)
    if recorded_uri:
        raise TokenizerNotFound(
            f"the manifest's tokenizer {public_uri(recorded_uri)} is gone and no model with sha256 "
            f"{sha[:12]}… is "
            f"in {cached_path(sha).parent}; pass --tokenizer PATH or export {ENV_VAR}=PATH"
        )
    # raises the one-line help
    return LlamaTokenizer(resolve_tokenizer_uri(None, None), num_threads=num_threads)


def _check(tok: LlamaTokenizer, want: str | None, by: str) -> None:
    if want and tok.sha256 != want:
        raise TokenizerMismatch(
            f"tokenizer {tok.uri} has sha256 {tok.sha256}, but {by} pins {want}; pass the tokenizer it was "
            f"counted with (--tokenizer or ${ENV_VAR}) or rebuild the manifest"
        )


def fetch_tokenizer(uri: str = LLAMA2_HUB_URI, sha256: str | None = LLAMA2_SHA256) -> LlamaTokenizer:
    """Download ``uri`` (default: the Llama-2 model on the hub) into the cache; a wrong sha256 is refused.

    The default hub model, or a ``uri`` fetched before, whose pinned ``sha256`` is already in the cache (from
    any location: the cache is keyed by content) is that model, re-hashed as it loads: nothing is downloaded,
    so it works offline and without a hub login. Another ``uri`` is read, so that a wrong one still fails.
    """
    known = uri == LLAMA2_HUB_URI or _read_index().get(public_uri(_absolute(uri))) == sha256
    if sha256 and known and cached_path(sha256).exists():
        return LlamaTokenizer(str(cached_path(sha256)), expected_sha256=sha256)
    proto = _read_model(_absolute(uri))
    got = hashlib.sha256(proto).hexdigest()
    if sha256 and got != sha256:
        raise TokenizerMismatch(
            f"{public_uri(uri)} has sha256 {got}, not the pinned {sha256}; refused (not cached)"
        )
    return LlamaTokenizer(uri, expected_sha256=sha256, proto=proto)
