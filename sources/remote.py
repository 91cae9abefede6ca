"""Every remote read goes through here: bounded retries with backoff, remote-store options, and their counts.

A read of a remote store (``https://``, ``hf://``, ``s3://``, any fsspec protocol that is not the local disk)
is an *attempt*; an attempt that fails with a transient fault (connection reset or refused, a timeout, HTTP
429 or 5xx, a body cut short: ``aiohttp.ClientPayloadError``, a short read) is tried again after an
exponential backoff with full jitter (``tenacity``), at least the ``Retry-After`` the server asked for, at
most ``RetryPolicy.attempts`` attempts in all. Any other error is raised at once. When the attempts run
out, :class:`RemoteReadFailed` says in one line what was read (shard, block, bytes) and the last error.

Invariants: a retried read restarts from a position the caller fixes (a block from its start, a stream
from the byte it had reached), so nothing is skipped or read twice into a result, and every block read
through here is checked against its sha256 by the caller before any record of it is used. ``STATS``
counts, per process, the retries by reason, the reads that gave up and the bytes fetched from remote
stores; a :meth:`RemoteStats.since` delta carries them across processes (build workers, DataLoader workers).

The policy (:func:`configure`) and the storage options of a protocol (``storage_options``: e.g. an S3
``endpoint_url`` for an S3-compatible store) are per process; credentials come from the environment or
the stores' own config (boto, ``HF_TOKEN``) and are never written anywhere. A command's ``--retries N``
(``sources/remote_option.py``, the one owner of the option) holds for the command's run
(:func:`command_line_attempts`): ``N`` attempts, whatever policy a config sets meanwhile (:func:`effective`).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import io
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from elm_data.core.errors import ElmDataError, InvalidValue
from elm_data.core.redact import redact_text
from elm_data.sources.seekable import SeekableReader

if TYPE_CHECKING:  # imported where a remote read is tried: a local stream or build never needs it
    import tenacity

T = TypeVar("T")
HTTP = ("http", "https", ("http", "https"))  # fsspec's HTTP filesystem (its open takes a known size)
READ_CHUNK = 8 << 20
MAX_RETRY_AFTER_S = (
    # a server's Retry-After is honoured up to this  # bytes per ranged request of a streamed remote read
    300.0
)


class RemoteReadFailed(ElmDataError, OSError):
    """A remote read still failed after every attempt the retry policy allows (one line: what, last error)."""


class ShortRead(OSError):
    """Fewer bytes arrived than the store said the range holds (a cut connection); transient."""


@dataclass(frozen=True)
class RetryPolicy:
    """How remote reads are retried: ``attempts`` in all (1 = no retry), waits from ``backoff_s`` doubling up
    to ``max_backoff_s`` with full jitter; a server's ``Retry-After`` is waited (up to
    ``MAX_RETRY_AFTER_S``)."""

    attempts: int = 8
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or isinstance(self.attempts, bool) or self.attempts < 1:
            raise InvalidValue(f"retries.attempts: expected an integer >= 1, got {self.attempts!r}")
        for name in ("backoff_s", "max_backoff_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise InvalidValue(f"retries.{name}: expected a number of seconds >= 0, got {value!r}")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None, where: str = "retries") -> RetryPolicy:
        """The policy of a config's ``retries:`` section (every key optional; an unknown key is an error)."""
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise InvalidValue(
                f"{where}: expected a mapping of {sorted(f.name for f in fields(cls))}, got {raw!r}"
            )
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            known = sorted(f.name for f in fields(cls))
            raise InvalidValue(f"{where}: unknown key(s) {sorted(unknown)}; known: {known}")
        return cls(**dict(raw))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_STATS_LOCK = threading.Lock()


def _fresh_lock_after_fork() -> None:  # a thread of the parent may have held it at the fork
    global _STATS_LOCK
    _STATS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_fresh_lock_after_fork)


@dataclass
class RemoteStats:
    """Counts of this process' remote reads: ``retries`` by reason, reads that ``failed`` after every attempt,
    ``bytes_fetched`` from remote stores (retried attempts included)."""

    retries: Counter = field(default_factory=Counter)
    failed: int = 0
    bytes_fetched: int = 0
    bytes_from_cache: int = 0  # verified blocks served by the node's block cache instead of the store

    def count(self, retry: str | None = None, failed: int = 0, fetched: int = 0, from_cache: int = 0) -> None:
        """Add to the counts (from any thread: read-ahead and next-shard fetches run in threads)."""
        with _STATS_LOCK:
            if retry is not None:
                self.retries[retry] += 1
            self.failed += failed
            self.bytes_fetched += fetched
            self.bytes_from_cache += from_cache

    def to_dict(self) -> dict[str, Any]:
        return {
            "retries": sum(self.retries.values()),
            "retries_by_reason": dict(sorted(self.retries.items())),
            "failed": self.failed,
            "bytes_fetched": self.bytes_fetched,
            "bytes_from_cache": self.bytes_from_cache,
        }

    def since(self, before: dict[str, Any]) -> dict[str, Any]:
        """What was counted since the snapshot ``before`` (a :meth:`to_dict`)."""
        now = self.to_dict()
        reasons = Counter(now["retries_by_reason"])
        reasons.subtract(before.get("retries_by_reason", {}))
        delta = {k: now[k] - before.get(k, 0) for k in COUNTS}
        return delta | {"retries_by_reason": {k: v for k, v in sorted(reasons.items()) if v}}


COUNTS = ("retries", "failed", "bytes_fetched", "bytes_from_cache")


def add_counts(total: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """``total`` with the counts of ``delta`` (two :meth:`RemoteStats.to_dict` shaped dicts) added in."""
    reasons = Counter(total.get("retries_by_reason", {}))
    reasons.update(delta.get("retries_by_reason", {}))
    summed = {k: total.get(k, 0) + delta.get(k, 0) for k in COUNTS}
    return summed | {"retries_by_reason": dict(sorted(reasons.items()))}


def any_counted(counts: Mapping[str, Any]) -> bool:
    return any(counts.get(k) for k in COUNTS)


STATS = RemoteStats()
# attempts: --retries
_settings: dict[str, Any] = {"policy": RetryPolicy(), "storage_options": {}, "attempts": None}


def configure(
    policy: RetryPolicy | None = None, storage_options: Mapping[str, Mapping[str, Any]] | None = None
) -> None:
    """Set this process' retry policy and/or per-protocol storage options (``{"s3": {"endpoint_url":
    ...}}``)."""
    if policy is not None:
        _settings["policy"] = policy
    if storage_options is not None:
        _settings["storage_options"] = {str(k): dict(v) for k, v in storage_options.items()}


def storage_options(raw: Any, where: str = "storage_options") -> dict[str, dict[str, Any]] | None:
    """A config's ``storage_options:`` (``{protocol: {option: value}}``, e.g. ``{s3: {endpoint_url:
    ...}}``)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not all(isinstance(v, Mapping) for v in raw.values()):
        raise InvalidValue(
            f"{where}: expected a mapping of protocol -> options, e.g. {{s3: {{endpoint_url: URL}}}}"
        )
    return {str(k): dict(v) for k, v in raw.items()}


def effective(policy: RetryPolicy) -> RetryPolicy:
    """``policy`` with the running command's ``--retries`` attempts, when it was given (the flag beats a
    config)."""
    attempts = _settings["attempts"]
    return policy if attempts is None else replace(policy, attempts=attempts)


def policy() -> RetryPolicy:
    return effective(_settings["policy"])


@contextlib.contextmanager
def command_line_attempts(attempts: int | None) -> Iterator[None]:
    """While open, every remote read of this process (and of the workers it hands :func:`settings` to) makes
    ``attempts`` attempts (None: the configured policy's); the setting before is restored on exit."""
    before = _settings["attempts"]
    if attempts is not None:
        RetryPolicy(attempts=attempts)  # validated as a config's would be
        _settings["attempts"] = attempts
    try:
        yield
    finally:
        _settings["attempts"] = before


def settings() -> dict[str, Any]:
    """This process' settings, to hand to worker processes (:func:`configure` ``(**settings())``)."""
    return {"policy": policy(), "storage_options": dict(_settings["storage_options"])}


# -- which faults are transient ----------------------------------------------------------------------
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_ERROR_CODES = {
    "SlowDown": "throttled",
    "Throttling": "throttled",
    "RequestTimeout": "timeout",
    "InternalError": "http 500",
    "ServiceUnavailable": "http 503",
}


_NO_NETWORK = (
    "Failed to resolve",
    "Name or service not known",
    "nodename nor servname",
    "getaddrinfo failed",
    "Temporary failure in name resolution",
    "No address associated",
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)  # aiohttp.ClientResponseError
    if status is None:
        # requests / huggingface_hub HTTPError; botocore ClientError: dict
        response = getattr(exc, "response", None)
        status = (
            response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(response, dict)
            else (getattr(response, "status_code", None))
        )
    return status if isinstance(status, int) else None


def _reason_of(exc: BaseException) -> str | None:
    name = type(exc).__name__
    if isinstance(exc, ShortRead) or name in (
        "ClientPayloadError",
        "IncompleteRead",
        "IncompleteReadError",
        "ChunkedEncodingError",
        "ContentLengthError",
        "ResponseStreamingError",
    ):
        return "truncated body"
    status = _status_of(exc)
    if status is not None:
        return f"http {status}" if status in _TRANSIENT_STATUS else None
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and response.get("Error", {}).get("Code") in _ERROR_CODES:
        return _ERROR_CODES[response["Error"]["Code"]]
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) or "Timeout" in name:
        return "timeout"
    if any(hint in str(exc) for hint in _NO_NETWORK):
        return None  # no such host (offline, a typo): trying again will not help
    if isinstance(exc, (ConnectionError, EOFError)) or name in (
        "ServerDisconnectedError",
        "ClientConnectorError",
        "ClientOSError",
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ProtocolError",
        "ConnectError",
    ):
        return "connection"
    return None


def transient_reason(exc: BaseException) -> str | None:
    """Why ``exc`` is worth another attempt (``"http 503"``, ``"truncated body"``, ``"connection"``, ...), or
    None.

    Looks through the chain of causes: fsspec's HTTP client turns a failed HEAD into ``FileNotFoundError``
    raised from the HTTP error, which is transient for a 503 and permanent for a 404.
    """
    if isinstance(exc, ElmDataError):
        return None
    for link in _chain(exc):
        if isinstance(link, ElmDataError):
            return None
        reason = _reason_of(link)
        if reason is not None:
            return reason
        if _status_of(link) is not None:
            return None  # an HTTP error that is not transient (404, 403, ...)
    return None


def retry_after_s(exc: BaseException) -> float | None:
    """The wait a server asked for in a ``Retry-After`` header (seconds or an HTTP date), if any."""
    for link in _chain(exc):
        headers = getattr(link, "headers", None) or getattr(getattr(link, "response", None), "headers", None)
        value = headers.get("Retry-After") if headers is not None and hasattr(headers, "get") else None
        if value is None:
            continue
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value) if value else None
            return max(0.0, when.timestamp() - time.time()) if when is not None else None
    return None


# -- retrying ------------------------------------------------------------------------------------------
def _wait(state: tenacity.RetryCallState) -> float:
    import tenacity

    p = policy()
    backoff = tenacity.wait_random_exponential(multiplier=p.backoff_s, max=p.max_backoff_s)(state)
    exc = state.outcome.exception() if state.outcome is not None else None
    asked = retry_after_s(exc) if exc is not None else None
    return max(backoff, min(asked, MAX_RETRY_AFTER_S)) if asked is not None else backoff


def retrying(what: str, attempt: Callable[[], T], on_retry: Callable[[], None] | None = None) -> T:
    """``attempt()``, tried again on transient faults (:func:`transient_reason`) as the policy allows.

    ``on_retry`` runs before each new attempt (e.g. drop a connection). When the attempts run out,
    :class:`RemoteReadFailed` names ``what`` (redacted) and the last error in one line.
    """

    import tenacity

    def count(state: tenacity.RetryCallState) -> None:
        STATS.count(retry=transient_reason(state.outcome.exception()) or "other")
        if on_retry is not None:
            on_retry()

    retryer = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy().attempts),
        wait=_wait,
        retry=tenacity.retry_if_exception(lambda e: transient_reason(e) is not None),
        before_sleep=count,
        reraise=True,
    )
    try:
        return retryer(attempt)
    except Exception as err:
        if transient_reason(err) is None:
            raise
        STATS.count(failed=1)
        last = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        raise RemoteReadFailed(
            redact_text(
                f"{what}: gave up after {policy().attempts} attempt(s) ({transient_reason(err)}); last error "
                f"{last}"
            )
        ) from None


# -- remote files --------------------------------------------------------------------------------------
def options_for(uri: str) -> dict[str, Any]:
    """This process' storage options for ``uri``'s protocol (``{}`` when none are set)."""
    protocol = uri.split("://", 1)[0] if "://" in uri else "file"
    return dict(_settings["storage_options"].get(protocol, {}))


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(fs, path)`` of ``uri`` with this process' storage options for its protocol."""
    return fsspec.core.url_to_fs(uri, **options_for(uri))


def is_remote(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether reads go over a network: anything but the local disk."""
    return not isinstance(fs, LocalFileSystem)


def read_range(uri: str, start: int, end: int, what: str | None = None) -> bytes:
    """Bytes ``[start, end)`` of ``uri`` in whole (one ranged request), retried as a unit; a range the file no
    longer holds fails at once (:class:`ShardShorter`), a body that arrived short is fetched again."""
    fs, path = filesystem(uri)
    what = what or f"{uri} bytes {start}-{end}"

    def attempt() -> bytes:
        data = fs.cat_file(path, start=start, end=end)
        STATS.count(fetched=len(data))
        if len(data) > end - start and len(data) >= end:  # a server that ignores Range sent the whole file
            data = data[start:end]
        if len(data) != end - start:
            size = int(fs.size(path))
            if size < end:
                raise ShardShorter(f"{what}: the file holds {size} bytes, fewer than {end}")
            raise ShortRead(f"{what}: {len(data)} of {end - start} bytes arrived")
        return data

    return retrying(what, attempt)


class ShardShorter(ElmDataError, OSError):
    """The remote file is shorter than the range asked for (it changed): not retried."""


class RetryingReader(SeekableReader):
    """A remote file read forward (and seekable), each read retried from the position it had reached."""

    def __init__(self, uri: str, what: str | None = None):
        super().__init__()
        self.uri, self.what = uri, what or uri
        self._fs, self._path = filesystem(uri)
        self._file: BinaryIO | None = None
        self._streaming = False  # read as one stream (a server that ignores Range), not in ranged requests
        self.size: int | None = None

    def _end(self) -> int:
        return self._size()

    def _size(self) -> int:
        if self.size is None:
            self.size = int(retrying(self.what, lambda: self._fs.size(self._path)))
        return self.size

    def _drop(self) -> None:
        if self._file is not None:
            # a broken connection may fail to close; it is dropped either way
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None

    def _attempt(self, n: int) -> bytes:
        if self._file is None:
            self._open()
        if not self._streaming:
            self._file.seek(self._pos)
        try:
            data = self._file.read(n)
        except ValueError as err:
            if "range requests" not in str(err):
                raise
            self._streaming = True  # an HTTP server without Range: one streamed GET, skipping what was read
            self._drop()
            self._open()
            data = self._file.read(n)
        if not data and self.size is not None and self._pos < self.size:
            self._drop()
            raise ShortRead(f"{self.what}: nothing arrived at byte {self._pos} of {self.size}")
        return data

    def _open(self) -> None:
        if self._streaming:
            self._file = self._fs.open(self._path, "rb", block_size=0)
            left = self._pos
            while left:
                skipped = self._file.read(min(READ_CHUNK, left))
                if not skipped:
                    raise ShortRead(
                        f"{self.what}: the stream ended at byte {self._pos - left} of {self._pos}"
                    )
                left -= len(skipped)
            return
        sized = {"size": self.size} if self.size is not None and self._fs.protocol in HTTP else {}
        self._file = self._fs.open(self._path, "rb", cache_type="none", **sized)  # no HEAD per attempt
        self.size = getattr(self._file, "size", None) or self.size

    def readinto(self, buffer) -> int:
        n = min(len(buffer), READ_CHUNK)
        data = retrying(f"{self.what} (at byte {self._pos})", lambda: self._attempt(n), on_retry=self._drop)
        buffer[: len(data)] = data
        self._pos += len(data)
        STATS.count(fetched=len(data))
        return len(data)

    def close(self) -> None:
        self._drop()
        super().close()


def open_read(
    uri: str, what: str | None = None, buffered: bool = True, buffer_size: int = READ_CHUNK
) -> BinaryIO:
    """``uri`` opened for reading: the local file itself, or a :class:`RetryingReader` of a remote one (behind
    an 8 MiB buffer with ``buffered``; without, each read fetches exactly the bytes asked for)."""
    fs, path = filesystem(uri)
    if not is_remote(fs):
        return fs.open(path, "rb")
    reader = RetryingReader(uri, what)
    reader._size()  # a missing file fails here (FileNotFoundError), as a local open would
    return io.BufferedReader(reader, buffer_size=buffer_size) if buffered else reader


def download_temp(uri: str) -> str:
    """A scratch copy of remote ``uri`` in a new temporary file (the caller removes it); a failure leaves
    none."""
    fd, local = tempfile.mkstemp(prefix="elm-data-shard-", suffix=os.path.basename(uri.split("?")[0])[-64:])
    os.close(fd)
    try:
        download(uri, local)
    except BaseException:
        os.unlink(local)
        raise
    return local


def download(uri: str, local: str) -> int:
    """Copy remote ``uri`` to the local file ``local`` in ranged reads, each retried; returns the bytes
    copied."""
    copied = 0
    with open_read(uri) as src, open(local, "wb") as out:
        while chunk := src.read(READ_CHUNK):
            out.write(chunk)
            copied += len(chunk)
    return copied
