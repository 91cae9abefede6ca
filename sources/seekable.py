"""The one base of the project's read-only raw files: a position, and seek/tell over it.

Subclasses (``remote.py:RetryingReader``, ``blocks.py:VerifiedView``) implement ``readinto`` (reading from
``self._pos`` and advancing it) and ``_end`` (the file's size, asked only for a seek from the end).
Invariant: the position is never negative; seeking past the end is allowed and reads nothing there.
"""

from __future__ import annotations

import io


class SeekableReader(io.RawIOBase):
    """A readable, seekable raw file that keeps its own position (``self._pos``)."""

    def __init__(self) -> None:
        super().__init__()
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            base = 0
        elif whence == io.SEEK_CUR:
            base = self._pos
        elif whence == io.SEEK_END:
            base = self._end()  # only here: a remote file's size may cost a request
        else:
            raise ValueError(f"invalid whence ({whence}; should be 0, 1 or 2)")
        self._pos = max(0, base + offset)
        return self._pos

    def _end(self) -> int:
        raise NotImplementedError
