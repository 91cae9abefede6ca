"""The stream's network settings in one place: retries of remote reads, the node block cache and read-ahead.

A :class:`NetworkSettings` is made from a config's ``retries:``, ``cache:`` and ``readahead_bytes`` (the
training config) or the ``stream`` command's flags, applied to the process that makes the stream and again
in each DataLoader worker (``TokenStream`` carries it), so a spawned worker reads as its parent does. None
of it changes what is read: only how often a fault is retried, where verified blocks are kept, and how
far ahead they are fetched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from elm_data.core.errors import InvalidValue
from elm_data.sources import remote
from elm_data.sources.block_cache import CacheConfig, cache_config, configure_cache

from .readahead import configure_readahead, readahead_settings


@dataclass(frozen=True)
class NetworkSettings:
    retries: remote.RetryPolicy = field(default_factory=remote.RetryPolicy)
    cache: CacheConfig = field(default_factory=CacheConfig)
    readahead_bytes: int = field(default_factory=lambda: readahead_settings()["bytes"])
    storage_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # fsspec options per protocol

    def __post_init__(self) -> None:
        if (
            isinstance(self.readahead_bytes, bool)
            or not isinstance(self.readahead_bytes, int)
            or self.readahead_bytes < 0
        ):
            raise InvalidValue(
                f"readahead_bytes: expected an integer >= 0 (0: off), got {self.readahead_bytes!r}"
            )

    @classmethod
    def from_config(
        cls,
        retries: dict[str, Any] | None = None,
        cache: dict[str, Any] | None = None,
        readahead_bytes: int | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> NetworkSettings:
        """From a config's sections (each None: this process' current setting); a command's ``--retries``
        beats the config's attempts (``remote.effective``), here and in the workers the settings travel to."""
        now = cls.current()
        return cls(
            retries=remote.effective(remote.RetryPolicy.from_dict(retries))
            if retries is not None
            else now.retries,
            cache=CacheConfig.from_dict(cache) if cache is not None else now.cache,
            readahead_bytes=now.readahead_bytes if readahead_bytes is None else readahead_bytes,
            storage_options=remote.storage_options(storage_options) or now.storage_options,
        )

    @classmethod
    def current(cls) -> NetworkSettings:
        return cls(
            remote.policy(),
            cache_config(),
            readahead_settings()["bytes"],
            remote.settings()["storage_options"],
        )

    def apply(self) -> None:
        """Make these the settings of this process' remote reads."""
        remote.configure(self.retries, self.storage_options)
        configure_cache(self.cache)
        configure_readahead(self.readahead_bytes)
