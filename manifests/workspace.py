"""The resumable build workspace: per-shard results written atomically next to the output.

``OUT.partial/`` (never a manifest: it has no ``manifest.json``, and says so in ``WORKSPACE.json``)
holds, per shard position ``N``:

- ``shard-0000N.parquet`` — the shard's documents ledger (``DOCUMENT_SCHEMA``);
- ``shard-0000N.dropped.jsonl`` — with ``--dropped-samples K``: the shard's first K dropped records
  per reason, one ``[bucket, key, record]`` JSON array a line;
- ``shard-0000N.dedup.parquet`` — with ``filters.dedup``: its kept documents' signatures
  (``dedup_filter.SIGNATURE_SCHEMA``), read back when the builder decides which copies to remove;
- ``shard-0000N.json``    — its ``ShardRecord`` plus the keys it is valid for (shard sha256, URI,
  pass-config hash), the sha256 of the parquet (and samples) file and the samples' K. Written last:
  it is the commit marker;
- ``shard-0000N.error.json`` — why the shard could not be counted (missing, changed, unreadable).

A killed build leaves only whole files behind (temp name + rename), so a re-run reuses every
committed shard whose keys still match and recomputes the rest. Paths may be fsspec URLs
(e.g. ``gs://bucket/run.partial``) so remote Beam workers can share a workspace.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from elm_data.core.errors import ElmDataError
from elm_data.core.outputs import write_atomic
from elm_data.core.redact import redact_text, redact_uri
from elm_data.pipeline.dropped import DroppedSamples

from .manifest import DOCUMENT_SCHEMA, conformed
from .shard_records import ShardRecord

WORKSPACE_MARKER = "WORKSPACE.json"


class ShardChanged(ElmDataError, RuntimeError):
    """A shard's bytes differ from those an interrupted build already counted."""


@dataclass(frozen=True)
class CommittedShard:
    record: ShardRecord
    config_hash: str
    documents_sha256: str
    dropped_per_reason: int = 0  # K of the committed dropped samples (0: none were kept)
    dropped_sha256: str | None = None
    signatures_sha256: str | None = None  # filters.dedup: sha256 of the shard's signatures file


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

    def dropped_file(self, shard: int) -> str:
        return self._file(shard, ".dropped.jsonl")

    def signatures_file(self, shard: int) -> str:
        return self._file(shard, ".dedup.parquet")

    def create(self) -> None:
        """Make the workspace (or reuse it), dropping temp files a killed writer left half-written."""
        self.fs.makedirs(self._root, exist_ok=True)
        for stale in self.fs.glob(f"{self._root}/*.tmp-*"):
            self.fs.rm(stale)
        marker = {
            "what": "elm-data manifest build workspace: per-shard partial results, NOT a manifest",
            "pass_config_hash": self.config_hash,
        }
        write_atomic(f"{self._root}/{WORKSPACE_MARKER}", json.dumps(marker, indent=2).encode(), fs=self.fs)

    def remove(self) -> None:
        if self.fs.exists(self._root):
            self.fs.rm(self._root, recursive=True)

    # -- whole files: each written under a temp name beside it, then renamed (write_atomic) --------------
    def _write_json(self, path: str, value: dict[str, Any]) -> None:
        write_atomic(path, json.dumps(value, indent=1, sort_keys=True) + "\n", fs=self.fs)

    def _read_json(self, path: str) -> dict[str, Any] | None:
        try:
            with self.fs.open(path, "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None

    def finished_shards(self) -> int:
        """How many shards hold a committed result or an error (one listing; a progress figure, not a
        check)."""
        names = (name.rsplit("/", 1)[-1] for name in self.fs.ls(self._root, detail=False))
        return sum(bool(re.fullmatch(r"shard-\d+(\.error)?\.json", name)) for name in names)

    # -- per-shard results ---------------------------------------------------------------------
    def committed(self, shard: int) -> CommittedShard | None:
        """The shard's committed result, whatever keys it was made with (None if there is none)."""
        meta = self._read_json(self._file(shard, ".json"))
        if meta is None:
            return None
        return CommittedShard(
            ShardRecord(**meta["record"]),
            meta["config_hash"],
            meta["documents_sha256"],
            meta.get("dropped_per_reason", 0),
            meta.get("dropped_sha256"),
            meta.get("signatures_sha256"),
        )

    def _intact(self, path: str, sha256: str | None) -> bool:
        try:
            with self.fs.open(path, "rb") as f:
                return hashlib.sha256(f.read()).hexdigest() == sha256
        except FileNotFoundError:
            return False

    def reusable(
        self, shard: int, uri: str, sha256: str, dropped_per_reason: int = 0, signatures: bool = False
    ) -> CommittedShard | None:
        """The committed result if it was made from these bytes with this pass; raises if the bytes changed.

        With ``dropped_per_reason`` K > 0 it must also hold at least K dropped samples per reason; with
        ``signatures`` (``filters.dedup``) its intact signatures file.
        """
        done = self.committed(shard)
        if done is None or done.config_hash != self.config_hash or done.record.uri != redact_uri(uri):
            return None
        if done.record.sha256 != sha256:
            raise ShardChanged(
                f"{uri}: sha256 is now {sha256}, but the interrupted build counted it as "
                f"{done.record.sha256}. "
                f"The shard changed; restore it, or discard the workspace {self.path} (--restart) to count "
                "it anew."
            )
        if dropped_per_reason > 0 and (
            done.dropped_per_reason < dropped_per_reason
            or not self._intact(self.dropped_file(shard), done.dropped_sha256)
        ):
            return None
        if signatures and not self._intact(self.signatures_file(shard), done.signatures_sha256):
            return None
        return done if self._intact(self.documents_file(shard), done.documents_sha256) else None

    def store(
        self,
        record: ShardRecord,
        documents: pa.Table,
        dropped: DroppedSamples | None = None,
        signatures: pa.Table | None = None,
    ) -> None:
        """Commit one shard: documents parquet, dropped samples and signatures first, then the JSON marker;
        clears an old error."""
        data = _parquet_bytes(conformed(documents, DOCUMENT_SCHEMA))
        write_atomic(self.documents_file(record.shard), data, fs=self.fs)
        marker = {
            "record": asdict(record),
            "config_hash": self.config_hash,
            "documents_sha256": hashlib.sha256(data).hexdigest(),
        }
        if signatures is not None:
            data = _parquet_bytes(signatures)
            write_atomic(self.signatures_file(record.shard), data, fs=self.fs)
            marker["signatures_sha256"] = hashlib.sha256(data).hexdigest()
        if dropped is not None and dropped.per_reason > 0:
            samples = "".join(
                json.dumps([bucket, list(key), sample], ensure_ascii=False) + "\n"
                for bucket, key, sample in dropped.items()
            ).encode("utf-8")
            write_atomic(self.dropped_file(record.shard), samples, fs=self.fs)
            marker |= {
                "dropped_per_reason": dropped.per_reason,
                "dropped_sha256": hashlib.sha256(samples).hexdigest(),
            }
        self._write_json(self._file(record.shard, ".json"), marker)
        self.clear_error(record.shard)

    def read_documents(self, shard: int) -> pa.Table:
        with self.fs.open(self.documents_file(shard), "rb") as f:
            # not pq.read_table: its dataset layer costs ~10 ms of imports, and the bytes are ours (sha256)
            return conformed(
                pq.ParquetFile(io.BytesIO(f.read())).read(DOCUMENT_SCHEMA.names), DOCUMENT_SCHEMA
            )

    def read_signatures(self, shard: int) -> pa.Table:
        """The shard's committed dedup signatures (``filters.dedup``), checked against its marker's sha256."""
        done = self.committed(shard)
        with self.fs.open(self.signatures_file(shard), "rb") as f:
            data = f.read()
        if done is None or hashlib.sha256(data).hexdigest() != done.signatures_sha256:
            raise ShardChanged(f"{self.signatures_file(shard)}: not the signatures shard {shard} committed")
        return pq.read_table(io.BytesIO(data))

    def offer_dropped(self, shard: int, into: DroppedSamples) -> None:
        """Offer the shard's committed dropped samples to ``into`` (its keys keep manifest order)."""
        with self.fs.open(self.dropped_file(shard), "rb") as f:
            for line in f.read().decode("utf-8").splitlines():
                bucket, key, record = json.loads(line)
                into.offer(bucket, tuple(key), record)

    def store_error(self, shard: int, uri: str, message: str) -> None:
        self._write_json(
            self._file(shard, ".error.json"), {"uri": redact_uri(uri), "error": redact_text(message)}
        )

    def error(self, shard: int) -> dict[str, str] | None:
        return self._read_json(self._file(shard, ".error.json"))

    def clear_error(self, shard: int) -> None:
        path = self._file(shard, ".error.json")
        if self.fs.exists(path):
            self.fs.rm(path)


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()
