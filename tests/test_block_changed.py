"""Invariant 4 through the parquet reader (issue 21): a changed row group stops the stream saying so.

The block error subclasses ValueError, which the parquet reader turns into an ``unreadable_shard`` rejection;
the stream must report the changed block (its byte range and both sha256), not a reader rejection.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml


def test_a_changed_parquet_row_group_is_reported_as_a_changed_block(tmp_path, tokenizer_path, tokenizer):
    from elm_data.manifests.build import build_manifest
    from elm_data.manifests.manifest import Manifest
    from elm_data.pipeline.stream import StreamLoader, TokenStream
    from elm_data.pipeline.stream.reading import StreamIntegrityError

    rng = random.Random(1)
    texts = [" ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(300)) for _ in range(30)]
    shard = tmp_path / "s.parquet"
    pq.write_table(pa.table({"text": texts}), shard, row_group_size=10)
    mixture = {"sources": [{"source": "pile", "subset": "default", "shards": [str(shard)]}]}
    (tmp_path / "mixture.yaml").write_text(yaml.safe_dump(mixture))
    build_manifest(tmp_path / "mixture.yaml", tmp_path / "m", tokenizer=tokenizer_path, workers=1)
    record = Manifest(tmp_path / "m").shards[0]
    first = Manifest(tmp_path / "m").blocks(0)[1]  # the first row group (block 0 is the leading magic)
    assert first["records"] == 10 and record.docs_kept == 30
    data = bytearray(shard.read_bytes())
    data[(first["start"] + first["end"]) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    # the oracle: the bytes now there
    changed = hashlib.sha256(data[first["start"] : first["end"]]).hexdigest()
    stream = TokenStream(tmp_path / "m", batch_size=2, seq_len=128, weights="natural", tokenizer=tokenizer)
    with pytest.raises(StreamIntegrityError) as stopped:
        next(iter(StreamLoader(stream)))
    message = str(stopped.value)
    assert f"bytes {first['start']}-{first['end']} (block 1) have sha256 {changed}" in message
    assert f"the manifest says {first['sha256']}" in message and "rejection" not in message
    assert Path(record.uri) == shard
