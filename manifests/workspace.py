"""The resumable build workspace: per-shard results written atomically next to the output.

``OUT.partial/`` (never a manifest: it has no ``manifest.json``, and says so in ``WORKSPACE.json``)
holds, per shard position ``N``:

- ``shard-0000N.parquet`` — the shard's documents ledger (``DOCUMENT_SCHEMA``);
- ``shard-0000N.json``    — its ``ShardRecord`` plus the keys it is valid for (shard sha256, URI,
  pass-config hash) and the sha256 of the parquet file. Written last: it is the commit marker;
- ``shard-0000N.error.json`` — why the shard could not be counted (missing, changed, unreadable).

A killed build leaves only whole files behind (temp name + rename), so a re-run reuses every
committed shard whose keys still match and recomputes the rest. Paths may be fsspec URLs
(e.g. ``gs://bucket/run.partial``) so remote Beam workers can share a workspace.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from .manifest import DOCUMENT_SCHEMA, ShardRecord

WORKSPACE_MARKER = "WORKSPACE.json"


class ShardChanged(RuntimeError):
    """A shard's bytes differ from those an interrupted build already counted."""


@dataclass(frozen=True)
class CommittedShard:
    record: ShardRecord
    config_hash: str
    documents_sha256: str


def workspace_path_for(out_dir: str) -> str:
    return str(out_dir).rstrip("/") + ".partial"


class BuildWorkspace:
    def __init__(self, path: str, config_hash: str):
        self.path = str(path).rstrip("/")
        self.config_hash = config_hash
        self.fs, self._root = fsspec.core.url_to_fs(self.path)

    # -- layout --------------------------------------------------------------------------------
    def _file(self, shard: int, suffix: str) -> str:
        return f"{self._root}/shard-{shard:05d}{suffix}"

    def documents_file(self, shard: int) -> str:
        return self._file(shard, ".parquet")

    def create(self) -> None:
        self.fs.makedirs(self._root, exist_ok=True)
        marker = {
            "what": "elm-data manifest build workspace: per-shard partial results, NOT a manifest",
            "pass_config_hash": self.config_hash,
        }
        self._write_atomic(f"{self._root}/{WORKSPACE_MARKER}", json.dumps(marker, indent=2).encode())

    def remove(self) -> None:
        if self.fs.exists(self._root):
            self.fs.rm(self._root, recursive=True)

    # -- atomic writes -------------------------------------------------------------------------
    def _write_atomic(self, path: str, data: bytes) -> None:
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        self.fs.mv(tmp, path)

    def _write_json(self, path: str, value: dict[str, Any]) -> None:
        self._write_atomic(path, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode())

    def _read_json(self, path: str) -> dict[str, Any] | None:
        try:
            with self.fs.open(path, "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None

    # -- per-shard results ---------------------------------------------------------------------
    def committed(self, shard: int) -> CommittedShard | None:
        """The shard's committed result, whatever keys it was made with (None if there is none)."""
        meta = self._read_json(self._file(shard, ".json"))
        if meta is None:
            return None
        return CommittedShard(ShardRecord(**meta["record"]), meta["config_hash"], meta["documents_sha256"])

    def reusable(self, shard: int, uri: str, sha256: str) -> CommittedShard | None:
        """The committed result if it was made from these bytes with this pass; raises if the bytes changed."""
        done = self.committed(shard)
        if done is None or done.config_hash != self.config_hash or done.record.uri != uri:
            return None
        if done.record.sha256 != sha256:
            raise ShardChanged(
                f"{uri}: sha256 is now {sha256}, but the interrupted build counted it as {done.record.sha256}. "
                f"The shard changed; restore it, or discard the workspace {self.path} (--restart) to count it anew."
            )
        try:
            with self.fs.open(self.documents_file(shard), "rb") as f:
                intact = hashlib.sha256(f.read()).hexdigest() == done.documents_sha256
        except FileNotFoundError:
            intact = False
        return done if intact else None

    def store(self, record: ShardRecord, documents: pa.Table) -> None:
        """Commit one shard: documents parquet first, then the JSON marker; clears an old error."""
        buf = io.BytesIO()
        pq.write_table(documents.cast(DOCUMENT_SCHEMA), buf, compression="zstd")
        data = buf.getvalue()
        self._write_atomic(self.documents_file(record.shard), data)
        self._write_json(
            self._file(record.shard, ".json"),
            {
                "record": asdict(record),
                "config_hash": self.config_hash,
                "documents_sha256": hashlib.sha256(data).hexdigest(),
            },
        )
        self.clear_error(record.shard)

    def read_documents(self, shard: int) -> pa.Table:
        with self.fs.open(self.documents_file(shard), "rb") as f:
            return pq.read_table(io.BytesIO(f.read()), schema=DOCUMENT_SCHEMA)

    def store_error(self, shard: int, uri: str, message: str) -> None:
        self._write_json(self._file(shard, ".error.json"), {"uri": uri, "error": message})

    def error(self, shard: int) -> dict[str, str] | None:
        return self._read_json(self._file(shard, ".error.json"))

    def clear_error(self, shard: int) -> None:
        path = self._file(shard, ".error.json")
        if self.fs.exists(path):
            self.fs.rm(path)
