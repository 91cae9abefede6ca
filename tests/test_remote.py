"""Remote corpora over real servers on 127.0.0.1: fsspec's HTTP client against a server that injects faults
(503, 429 with Retry-After, bodies cut mid-way, latency), with retries, read-ahead and the node block cache.

The oracle is always the same files read from the local disk: the same manifest (id and totals) and the
same global batches, bitwise, whatever the faults."""

from __future__ import annotations

import json
import time
import types
from collections import Counter
from pathlib import Path

import aiohttp
import fault_server
import pytest
import yaml
from click.testing import CliRunner
from test_stream_scale import global_batches, stream

from elm_data.cli import cli
from elm_data.manifests.build import build_manifest
from elm_data.manifests.manifest import Manifest
from elm_data.manifests.mixture import MixtureConfig
from elm_data.pipeline.stream import StreamIntegrityError
from elm_data.pipeline.stream.readahead import ReadAhead, configure_readahead, readahead_settings
from elm_data.sources import remote
from elm_data.sources.block_cache import BlockCache, CacheConfig, configure_cache
from elm_data.sources.blocks import Block, fetch_verified

FAULTS = fault_server.Faults(fail_every=7, cut_every=11, latency_s=0.005)
FAST = remote.RetryPolicy(attempts=8, backoff_s=0.001, max_backoff_s=0.01)


@pytest.fixture(autouse=True)
def fast_retries():
    """Retries without long waits, and the process' settings restored after each test."""
    before, ahead = remote.settings(), readahead_settings()
    remote.configure(FAST)
    yield
    remote.configure(**before)
    configure_readahead(ahead["bytes"], ahead["threads"])
    configure_cache(None)


def _mixtures(sample_dir: Path, url: str, out: Path, entries: slice = slice(None)) -> tuple[Path, Path]:
    """(local mixture, the same shards as ``url/<path>`` URLs) of the sample corpus' ``entries``."""
    config = MixtureConfig.load(sample_dir / "mixture.yaml")
    raw = yaml.safe_load((sample_dir / "mixture.yaml").read_text())
    raw["sources"] = raw["sources"][entries]
    local, http = yaml.safe_load(yaml.safe_dump(raw)), raw
    root = sample_dir.resolve()
    for lo, hi, entry in zip(local["sources"], http["sources"], config.entries[entries], strict=True):
        shards = [Path(s).resolve() for s in config.resolve_shards(entry)]
        lo["shards"] = [str(s) for s in shards]
        hi["shards"] = [f"{url}/{s.relative_to(root)}" for s in shards]
    out.mkdir(parents=True, exist_ok=True)
    (out / "local.yaml").write_text(yaml.safe_dump(local, sort_keys=False))
    (out / "http.yaml").write_text(yaml.safe_dump(http, sort_keys=False))
    return out / "local.yaml", out / "http.yaml"


# -- the retry layer on its own ------------------------------------------------------------------------
def test_transient_faults_are_told_from_permanent_ones():
    info = aiohttp.RequestInfo(
        aiohttp.client_reqrep.URL("http://h/x"), "GET", {}, aiohttp.client_reqrep.URL("http://h/x")
    )

    def http(status):
        return aiohttp.ClientResponseError(info, (), status=status)

    def raised_from(cause):
        try:
            raise FileNotFoundError("http://h/x") from cause
        except FileNotFoundError as e:
            return e

    assert remote.transient_reason(http(503)) == "http 503"
    assert remote.transient_reason(http(429)) == "http 429"
    assert remote.transient_reason(http(404)) is None
    assert remote.transient_reason(raised_from(http(503))) == "http 503"  # fsspec's failed HEAD
    assert remote.transient_reason(raised_from(http(404))) is None
    assert remote.transient_reason(aiohttp.ClientPayloadError("cut")) == "truncated body"
    assert remote.transient_reason(ConnectionResetError(104, "reset")) == "connection"
    assert remote.transient_reason(TimeoutError()) == "timeout"
    assert remote.transient_reason(ValueError("bad json")) is None
    assert remote.transient_reason(FileNotFoundError("gone")) is None


def test_retry_policy_is_validated():
    assert remote.RetryPolicy.from_dict({"attempts": 3}).attempts == 3
    for bad in ({"attempts": 0}, {"attempts": "3"}, {"backoff_s": -1}, {"tries": 3}, [3]):
        with pytest.raises(remote.InvalidValue, match="retries"):
            remote.RetryPolicy.from_dict(bad)


def test_retry_after_is_honoured_and_a_permanent_failure_is_one_line(tmp_path):
    (tmp_path / "shard.jsonl").write_bytes(b'{"text": "x"}\n' * 100)
    block = Block(0, 1400, "00" * 32, 0, 100)
    remote.configure(remote.RetryPolicy(attempts=3, backoff_s=0.001, max_backoff_s=0.01))
    throttled = fault_server.Faults(throttle_every=1, retry_after="0.3")
    with fault_server.serve(tmp_path, throttled) as (url, stats):
        started = time.monotonic()
        with pytest.raises(remote.RemoteReadFailed) as failed:
            fetch_verified(f"{url}/shard.jsonl", block, 4)
        waited = time.monotonic() - started
    assert stats.requests == 3 and stats.faults["429"] == 3
    assert waited >= 0.6  # two waits of the 0.3 s the server asked for, though the backoff is 0.01 s at most
    message = str(failed.value)
    assert "\n" not in message and "shard.jsonl block 4 (bytes 0-1400)" in message
    assert "gave up after 3 attempt(s)" in message and "429" in message


def test_a_block_is_fetched_again_until_whole_and_checked(tmp_path):
    import hashlib

    data = b'{"text": "hello"}\n' * 5000
    (tmp_path / "s.jsonl").write_bytes(data)
    block = Block(100, 60000, hashlib.sha256(data[100:60000]).hexdigest(), 0, None)
    before = remote.STATS.to_dict()
    cut = fault_server.Faults(cut_every=1)
    with (
        fault_server.serve(tmp_path, cut) as (url, _),
        pytest.raises(remote.RemoteReadFailed, match="truncated"),
    ):
        fetch_verified(f"{url}/s.jsonl", block, 0)  # every body cut: never used
    with fault_server.serve(tmp_path, fault_server.Faults(fail_every=2, cut_every=3)) as (url, _):
        for _ in range(4):
            got, fetched = fetch_verified(f"{url}/s.jsonl", block, 0)
            assert got == data[100:60000] and fetched >= len(got)
    assert remote.STATS.since(before)["retries"] >= 4
    wrong = Block(100, 60000, "ab" * 32, 0, None)
    with fault_server.serve(tmp_path) as (url, _), pytest.raises(Exception, match="sha256"):
        fetch_verified(f"{url}/s.jsonl", wrong, 0)


def test_a_server_that_ignores_range_is_read_as_one_stream(tmp_path):
    import hashlib

    data = bytes(range(256)) * (40 << 10)  # 10 MiB: more than one ranged read
    (tmp_path / "big.bin").write_bytes(data)
    with fault_server.serve(tmp_path, fault_server.Faults(ranges=False)) as (url, _):
        with remote.open_read(f"{url}/big.bin") as f:
            assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()
        block = Block(1000, 5000, hashlib.sha256(data[1000:5000]).hexdigest(), 0, None)
        assert fetch_verified(f"{url}/big.bin", block, 0)[0] == data[1000:5000]


# -- a build and a stream over the faulty server --------------------------------------------------------
def _build_both(sample_dir, tokenizer_path, out, url, entries=slice(None), **kw):
    local_yaml, http_yaml = _mixtures(sample_dir, url, out, entries)
    local = build_manifest(local_yaml, out / "local", tokenizer=tokenizer_path, block_bytes=16 << 10, **kw)
    http = build_manifest(http_yaml, out / "http", tokenizer=tokenizer_path, block_bytes=16 << 10, **kw)
    return local, http


@pytest.fixture(scope="module")
def over_http(sample_dir, tokenizer_path, tokenizer, tmp_path_factory):
    """Three subsets (parquet and JSONL) served on 127.0.0.1 for the module, built while the server injects
    FAULTS (``faults`` can be changed while it runs), with the local manifest and its batches as the
    oracle."""
    faults = fault_server.Faults(**vars(FAULTS))
    before = remote.settings()
    remote.configure(FAST)
    try:
        with fault_server.serve(sample_dir, faults) as (url, stats):
            local, http = _build_both(
                sample_dir, tokenizer_path, tmp_path_factory.mktemp("http"), url, slice(0, 3)
            )
            faults.fail_every = faults.cut_every = 0
            reference = global_batches(local.manifest_dir, tokenizer, 1, 0, partitions=2)
            yield types.SimpleNamespace(
                url=url, stats=stats, faults=faults, local=local, http=http, reference=reference
            )
    finally:
        remote.configure(**before)


@pytest.mark.slow  # end to end over a local HTTP server: 1.5-2 s
def test_a_build_and_a_stream_over_a_faulty_server_equal_the_local_ones(over_http, tokenizer, tokenizer_path):
    """Three subsets, parquet and JSONL (the quick sibling of the whole mixture at 1x0 and 2x2, below)."""
    local, http, stats = over_http.local, over_http.http, over_http.stats
    assert (http.manifest_id, http.totals) == (local.manifest_id, local.totals)  # the root covers the URIs
    assert http.remote["retries"] >= 1 and http.remote["failed"] == 0
    assert stats.faults["503"] and stats.faults["cut"]
    over_http.faults.fail_every, over_http.faults.cut_every = FAULTS.fail_every, FAULTS.cut_every
    try:
        before, served = remote.STATS.to_dict(), Counter(stats.faults)
        assert global_batches(http.manifest_dir, tokenizer, 1, 0, partitions=2) == over_http.reference
        assert (
            remote.STATS.since(before)["retries"] >= sum((Counter(stats.faults) - served).values()) // 2 > 0
        )
        result = CliRunner().invoke(
            cli,
            [
                "stream",
                str(http.manifest_dir),
                "--full-pass",
                "--format",
                "jsonl",
                "--retries",
                "9",
                "--tokenizer",
                tokenizer_path,
            ],
        )
    finally:
        over_http.faults.fail_every = over_http.faults.cut_every = 0
    assert result.exit_code == 0, result.output
    out = result.output
    counted = json.loads(out[out.index('{"stats"') :].splitlines()[0])["stats"]["remote"]  # after the bar
    assert counted["bytes_fetched"] > 0 and counted["failed"] == 0 and remote.policy().attempts == 9


@pytest.mark.slow
def test_the_whole_mixture_over_a_faulty_server_at_1x0_and_2x2(
    sample_dir, tokenizer_path, tokenizer, tmp_path
):
    with fault_server.serve(sample_dir, FAULTS) as (url, stats):
        local, http = _build_both(sample_dir, tokenizer_path, tmp_path, url, workers=2)
        # the root covers the URIs
        assert (http.manifest_id, http.totals) == (local.manifest_id, local.totals)
        reference = global_batches(local.manifest_dir, tokenizer, 1, 0)
        assert len(reference) > 8
        assert global_batches(http.manifest_dir, tokenizer, 1, 0) == reference
        assert (
            global_batches(
                http.manifest_dir,
                tokenizer,
                2,
                2,
            )
            == reference
        )
    assert stats.faults["503"] > 10 and stats.faults["cut"] > 5


# -- read-ahead and the block cache ------------------------------------------------------------------------
def test_a_warm_cache_fetches_nothing_and_a_damaged_entry_is_fetched_again(over_http, tokenizer, tmp_path):
    http, stats, reference = over_http.http, over_http.stats, over_http.reference
    configure_cache(CacheConfig(str(tmp_path / "cache"), 1 << 30))
    assert global_batches(http.manifest_dir, tokenizer, 1, 0, partitions=2) == reference
    entries = sorted((tmp_path / "cache").glob("??/*"))
    assert entries
    sent = stats.bytes_sent
    assert global_batches(http.manifest_dir, tokenizer, 1, 0, partitions=2) == reference
    assert stats.bytes_sent == sent  # the second pass fetched nothing
    entries[0].write_bytes(b"damaged")
    assert global_batches(http.manifest_dir, tokenizer, 1, 0, partitions=2) == reference
    assert stats.bytes_sent > sent  # the damaged block (only) was fetched again
    assert stats.bytes_sent - sent < 2 * max(e.stat().st_size for e in entries)


def test_the_cache_evicts_the_least_recently_used(tmp_path):
    import hashlib

    cache = BlockCache(tmp_path, max_bytes=3000)
    blobs = [bytes([i]) * 1000 for i in range(5)]
    shas = [hashlib.sha256(b).hexdigest() for b in blobs]
    for sha, blob in zip(shas[:3], blobs[:3], strict=True):
        cache.put(sha, blob)
        time.sleep(0.01)
    assert cache.get(shas[0]) == blobs[0]  # now the most recently used
    cache.put(shas[3], blobs[3])
    cache.evict()
    assert cache.get(shas[1]) is None and cache.get(shas[0]) == blobs[0] and cache.get(shas[3]) == blobs[3]
    with pytest.raises(remote.InvalidValue, match="cache"):
        CacheConfig.from_dict({"dir": "x", "size": 3})


@pytest.mark.slow  # end to end over a local HTTP server: 1.5-2 s
def test_read_ahead_fetches_each_block_once_and_changes_nothing(over_http, tokenizer, monkeypatch):
    http, stats, reference = over_http.http, over_http.stats, over_http.reference
    configure_readahead(0)
    sent = stats.bytes_sent
    assert global_batches(http.manifest_dir, tokenizer, 1, 0, partitions=2) == reference
    without = stats.bytes_sent - sent
    configure_readahead(1 << 20, 2)
    sent, served = stats.bytes_sent, []
    real = ReadAhead.__call__

    def counted(self, uri, block, i):
        got = real(self, uri, block, i)
        served.append(got is not None)
        return got

    monkeypatch.setattr(ReadAhead, "__call__", counted)
    assert global_batches(http.manifest_dir, tokenizer, 1, 0, partitions=2) == reference
    assert stats.bytes_sent - sent == without  # read ahead, yet every byte crossed once
    assert sum(served) > len(served) / 2  # most remote blocks arrived fetched ahead


def test_blocks_over_the_spill_size_are_read_ahead_and_cached_as_files(
    over_http, tokenizer, tmp_path, monkeypatch
):
    """Blocks too large to hold (here every block over 4 KiB) are fetched into temp files, read ahead and
    cached like the others: same batches over the faulty server, most served fetched ahead, none held in
    memory, and a second pass with the cache warm fetches nothing."""
    from elm_data.sources import blocks

    http, stats, reference = over_http.http, over_http.stats, over_http.reference
    monkeypatch.setattr(blocks, "SPILL_BYTES", 4 << 10)
    held, served = [], []
    note, ahead = blocks.HeldBlocks.note, ReadAhead.__call__

    def noted(self, view, i, data):
        held.append(len(data) if isinstance(data, bytes) else 0)
        return note(self, view, i, data)

    def counted(self, uri, block, i):
        got = ahead(self, uri, block, i)
        served.append((got is not None, block.end - block.start))
        return got

    monkeypatch.setattr(blocks.HeldBlocks, "note", noted)
    monkeypatch.setattr(ReadAhead, "__call__", counted)
    configure_readahead(1 << 20, 2)
    configure_cache(CacheConfig(str(tmp_path / "cache"), 1 << 30))
    over_http.faults.fail_every, over_http.faults.cut_every = FAULTS.fail_every, FAULTS.cut_every
    try:
        assert global_batches(http.manifest_dir, tokenizer, 1, 0, partitions=2) == reference
    finally:
        over_http.faults.fail_every = over_http.faults.cut_every = 0
    large = [fetched for fetched, size in served if size > 4 << 10]
    assert large and sum(large) > len(large) / 2  # most large blocks arrived fetched ahead
    assert held and max(held) <= 4 << 10  # no block over the spill size was held in memory
    assert max(e.stat().st_size for e in (tmp_path / "cache").glob("??/*")) > 4 << 10
    sent = stats.bytes_sent
    assert global_batches(http.manifest_dir, tokenizer, 1, 0, partitions=2) == reference
    assert stats.bytes_sent == sent  # the second pass fetched nothing, large blocks included


@pytest.mark.slow
def test_a_block_over_16_mib_streams_in_bounded_memory_read_ahead_and_cached(
    tokenizer_path, tokenizer, tmp_path, monkeypatch
):
    """A real one-block JSONL shard of ~20 MiB (a few documents, then records without text) over the faulty
    server: the same batches as from the disk, the block fetched ahead into a temp file (never held in
    memory), and a second pass with the cache warm fetches nothing."""
    import json as json_
    import random

    from elm_data.sources import blocks
    from elm_data.sources.sample_text import web_page

    rng = random.Random(0)
    docs = [json_.dumps({"text": web_page(rng, 300), "meta": {"n": n}}) for n in range(40)]
    pad = json_.dumps({"text": "", "meta": {"pad": "x" * 1000}})
    lines = docs + [pad] * ((blocks.SPILL_BYTES + (4 << 20)) // len(pad))
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "big.jsonl").write_text("\n".join(lines) + "\n")
    mixture = {"sources": [{"source": "redpajama", "subset": "arxiv", "shards": []}]}
    held, served = [], []
    note, ahead = blocks.HeldBlocks.note, ReadAhead.__call__

    def noted(self, view, i, data):
        held.append(len(data) if isinstance(data, bytes) else 0)
        return note(self, view, i, data)

    monkeypatch.setattr(blocks.HeldBlocks, "note", noted)
    monkeypatch.setattr(
        ReadAhead, "__call__", lambda self, u, b, i: served.append(ahead(self, u, b, i)) or served[-1]
    )
    configure_readahead(64 << 20, 2)
    configure_cache(CacheConfig(str(tmp_path / "cache"), 1 << 30))
    with fault_server.serve(tmp_path / "served", FAULTS) as (url, stats):
        built = {}
        for name, shard in (("local", str(tmp_path / "served" / "big.jsonl")), ("http", f"{url}/big.jsonl")):
            mixture["sources"][0]["shards"] = [shard]
            (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(mixture))
            built[name] = build_manifest(
                tmp_path / f"{name}.yaml", tmp_path / name, tokenizer=tokenizer_path, block_bytes=64 << 20
            ).manifest_dir
        (block,) = Manifest(built["http"]).blocks(0)
        assert block["end"] - block["start"] > blocks.SPILL_BYTES
        reference = global_batches(built["local"], tokenizer, 1, 0, partitions=1)
        assert reference and global_batches(built["http"], tokenizer, 1, 0, partitions=1) == reference
        # fetched ahead, in a file
        assert served and served[0] is not None and not isinstance(served[0][0], bytes)
        assert max(held) <= blocks.SPILL_BYTES
        sent = stats.bytes_sent
        assert global_batches(built["http"], tokenizer, 1, 0, partitions=1) == reference
        assert stats.bytes_sent == sent


@pytest.mark.slow
def test_read_ahead_of_an_endless_stream_over_a_corpus_smaller_than_its_budget_stops(over_http, tokenizer):
    """Training streams epoch after epoch (``epochs=None``): once every block of a small corpus is fetched
    ahead, scheduling must stop at the first block still held, not walk the endless order (it hung a training
    run)."""
    import itertools
    import threading

    from elm_data.pipeline.stream import StreamLoader

    before = readahead_settings()
    configure_readahead(64 << 20, 2)  # far more than the whole corpus
    want, got = 3 * len(over_http.reference), []  # two epochs more than a natural pass

    def take() -> None:
        loader = StreamLoader(stream(over_http.http.manifest_dir, tokenizer, epochs=None, partitions=2))
        got.extend(batch["batch_index"] for batch in itertools.islice(loader, want))

    try:
        reader = threading.Thread(target=take, daemon=True)
        reader.start()
        reader.join(timeout=120)
        assert not reader.is_alive(), "read-ahead never returned"
        assert sorted(got) == list(range(want))
    finally:
        configure_readahead(before["bytes"], before["threads"])


def test_a_changed_remote_shard_stops_the_stream(sample_dir, tokenizer_path, tokenizer, tmp_path):
    import shutil

    root = tmp_path / "served"
    shutil.copytree(sample_dir, root)
    with fault_server.serve(root, FAULTS) as (url, _):
        _, http = _build_both(root, tokenizer_path, tmp_path, url, slice(1, 2))  # JSONL
        manifest = Manifest(http.manifest_dir)
        record = manifest.shards[0]
        block = next(b for b in manifest.blocks(0) if b["kept_docs"])
        shard = root / record.uri.split("/", 3)[3]
        data = bytearray(shard.read_bytes())
        data[(block["start"] + block["end"]) // 2] ^= 1  # a byte of a block the stream reads
        shard.write_bytes(bytes(data))
        with pytest.raises(StreamIntegrityError, match="sha256"):
            global_batches(http.manifest_dir, tokenizer, 1, 0, partitions=2)


# -- s3:// on an S3-compatible server (moto's server mode) through s3fs -------------------------------------
@pytest.fixture(scope="module")
def s3_endpoint():
    """An S3-compatible server on 127.0.0.1 for this module (stopped after it)."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _upload_to_s3(sample_dir: Path, endpoint: str, bucket: str) -> str:
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing", skip_instance_cache=True)
    fs.mkdir(bucket)
    for path in sample_dir.resolve().rglob("*"):
        if path.is_file():
            fs.pipe_file(f"{bucket}/{path.relative_to(sample_dir.resolve()).as_posix()}", path.read_bytes())
    return f"s3://{bucket}"


@pytest.fixture
def s3_env(monkeypatch, s3_endpoint):
    """Credentials for the stand-in server from the environment (never written), the endpoint as storage
    options."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # the keys as storage options too: build workers come from a forkserver started before this test's
    # environment
    remote.configure(
        storage_options={"s3": {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}}
    )
    return s3_endpoint


@pytest.mark.slow
def test_a_build_and_a_stream_over_s3_equal_the_local_ones(
    sample_dir, tokenizer_path, tokenizer, tmp_path, s3_env, over_http
):
    root = _upload_to_s3(sample_dir, s3_env, "quick")
    _, s3_yaml = _mixtures(sample_dir, root, tmp_path, slice(0, 3))
    s3 = build_manifest(s3_yaml, tmp_path / "s3", tokenizer=tokenizer_path, block_bytes=16 << 10)
    local = over_http.local
    assert (s3.manifest_id, s3.totals) == (local.manifest_id, local.totals)
    assert s3.remote["bytes_fetched"] > 0
    assert "testing" not in (s3.manifest_dir / "manifest.json").read_text()
    assert global_batches(s3.manifest_dir, tokenizer, 1, 0, partitions=2) == over_http.reference


@pytest.mark.slow
def test_the_whole_mixture_over_s3_at_1x0_and_2x2(sample_dir, tokenizer_path, tokenizer, tmp_path, s3_env):
    root = _upload_to_s3(sample_dir, s3_env, "whole")
    local, s3 = _build_both(sample_dir, tokenizer_path, tmp_path, root, workers=2)
    assert (s3.manifest_id, s3.totals) == (local.manifest_id, local.totals)
    reference = global_batches(local.manifest_dir, tokenizer, 1, 0)
    assert global_batches(s3.manifest_dir, tokenizer, 1, 0) == reference
    assert global_batches(s3.manifest_dir, tokenizer, 2, 2) == reference


@pytest.mark.slow
def test_the_readmes_s3_recipe_keys_and_endpoint_from_the_environment_only(
    sample_dir, tokenizer_path, tokenizer, tmp_path, monkeypatch, s3_endpoint, over_http
):
    """README, "Over the network": `AWS_ENDPOINT_URL` and the keys in the environment, no storage options
    anywhere: build, estimate and stream reach the S3-compatible store."""
    from elm_data.manifests.estimate import estimate_mixture

    root = _upload_to_s3(sample_dir, s3_endpoint, "from-env")
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", s3_endpoint),
    ):
        monkeypatch.setenv(name, value)
    remote.configure(storage_options={})
    _, s3_yaml = _mixtures(sample_dir, root, tmp_path, slice(0, 3))
    s3 = build_manifest(s3_yaml, tmp_path / "s3", tokenizer=tokenizer_path, block_bytes=16 << 10)
    assert (s3.manifest_id, s3.totals) == (over_http.local.manifest_id, over_http.local.totals)
    assert all(
        s.records_sampled > 0 for s in estimate_mixture(s3_yaml, sample_docs=4, tokenizer=tokenizer).subsets
    )
    assert global_batches(s3.manifest_dir, tokenizer, 1, 0, partitions=2) == over_http.reference


@pytest.mark.slow
def test_a_mixtures_storage_options_reach_its_globs_and_the_estimate(
    sample_dir, tokenizer_path, tokenizer, tmp_path, monkeypatch, s3_endpoint
):
    """A mixture's `storage_options` (an S3-compatible endpoint) is how every read of it reaches the store:
    the listing of a glob, the estimate's samples and the build (the process itself set no options, no
    endpoint)."""
    from elm_data.manifests.estimate import estimate_mixture

    root = _upload_to_s3(sample_dir, s3_endpoint, "globbed")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    remote.configure(storage_options={})
    raw = yaml.safe_load((sample_dir / "mixture.yaml").read_text())
    raw["sources"] = raw["sources"][1:3]  # two JSONL subsets, named by globs
    local = dict(
        raw, sources=[dict(e, shards=[str(sample_dir / g) for g in e["shards"]]) for e in raw["sources"]]
    )
    (tmp_path / "local.yaml").write_text(yaml.safe_dump(local))
    for entry in raw["sources"]:
        entry["shards"] = [f"{root}/{glob}" for glob in entry["shards"]]
    raw |= {
        "storage_options": {"s3": {"endpoint_url": s3_endpoint}},
        "retries": {"attempts": 3, "backoff_s": 0.01},
    }
    (tmp_path / "s3.yaml").write_text(yaml.safe_dump(raw))
    estimate = estimate_mixture(tmp_path / "s3.yaml", sample_docs=4, tokenizer=tokenizer)
    assert [s.key for s in estimate.subsets] == ["redpajama/arxiv", "redpajama/book"]
    assert all(s.records_sampled > 0 and s.shards == 2 for s in estimate.subsets)
    built = build_manifest(tmp_path / "s3.yaml", tmp_path / "s3", tokenizer=tokenizer_path)
    reference = build_manifest(tmp_path / "local.yaml", tmp_path / "local", tokenizer=tokenizer_path)
    assert (built.manifest_id, built.totals) == (
        reference.manifest_id,
        reference.totals,
    ) and built.shards == 4


def test_storage_options_come_from_the_configs_and_no_credential_is_recorded(tmp_path):
    from elm_data.trainer.core.config import TrainConfig

    options = {
        "s3": {"endpoint_url": "http://user:pw@127.0.0.1:9/", "key": "AKIA-SECRET", "secret": "s3cr3t"}
    }
    config = TrainConfig(manifest="m", storage_options=options, retries={"attempts": 2}, readahead_bytes=0)
    network = config.network()
    assert (
        network.storage_options == options and network.retries.attempts == 2 and network.readahead_bytes == 0
    )
    recorded = str(config.to_dict())
    assert "SECRET" not in recorded and "s3cr3t" not in recorded and "pw@" not in recorded
    assert "127.0.0.1:9" in recorded
    with pytest.raises(remote.InvalidValue, match="storage_options"):
        TrainConfig(manifest="m", storage_options={"s3": "endpoint"}).network()
    (tmp_path / "mixture.yaml").write_text(
        yaml.safe_dump(
            {
                "sources": [{"source": "redpajama", "subset": "arxiv", "shards": ["s3://b/x.jsonl"]}],
                "retries": {"attempts": 3},
                "storage_options": {"s3": {"endpoint_url": "http://127.0.0.1:9"}},
            }
        )
    )
    mixture = MixtureConfig.load(tmp_path / "mixture.yaml")
    assert mixture.retries.attempts == 3 and mixture.storage_options == {
        "s3": {"endpoint_url": "http://127.0.0.1:9"}
    }


def test_a_hub_mirror_is_the_endpoint_hf_reads_ask(tmp_path):
    """README: a mirror of the hub from `HF_ENDPOINT` (read when huggingface_hub is imported: a fresh process)
    or from `storage_options: {hf: {endpoint: URL}}` (the configs'); either is where hf:// reads go."""
    import subprocess
    import sys

    probe = "from elm_data.sources import remote; print(remote.filesystem('hf://datasets/a/b/x.parquet')[0].endpoint)"
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("HF_")}
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env=env | {"HF_ENDPOINT": "http://127.0.0.1:9/mirror"},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.stdout.strip() == "http://127.0.0.1:9/mirror", done.stderr
    remote.configure(storage_options={"hf": {"endpoint": "http://127.0.0.1:8/other"}})
    try:
        assert remote.filesystem("hf://datasets/a/b/x.parquet")[0].endpoint == "http://127.0.0.1:8/other"
    finally:
        remote.configure(storage_options={})


# -- the stand-in hub (hf://) with faults
# ----------------------------------------------------------------------
def test_the_stand_in_hub_with_faults_gives_the_fault_free_manifest_and_batches(
    sample_dir, tokenizer_path, tokenizer, tmp_path, monkeypatch
):
    from standin_hub import Faults, mirror_upstream, serve

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    upstream = mirror_upstream(sample_dir, tmp_path / "mirror")
    hub = sorted(k for k, urls in upstream.items() if urls[0].startswith("hf://"))[:2]
    mixture = {
        "sources": [
            {"source": k.split("/")[0], "subset": k.split("/")[1], "shards": upstream[k]} for k in hub
        ]
    }
    (tmp_path / "hub.yaml").write_text(yaml.safe_dump(mixture))
    built, batches = {}, {}
    for every in (0, 3):
        faults = Faults(every)
        with serve(tmp_path / "mirror" / "hf", "hf", faults=faults):
            out = tmp_path / f"m{every}"
            built[every] = build_manifest(
                tmp_path / "hub.yaml", out, tokenizer=tokenizer_path, block_bytes=16 << 10
            )
            batches[every] = global_batches(out, tokenizer, 1, 0, partitions=2)
        assert bool(faults.failed) == bool(every)
    assert (built[3].manifest_id, built[3].totals) == (built[0].manifest_id, built[0].totals)
    assert built[3].remote["retries_by_reason"].get("connection", 0) >= 1
    assert batches[3] == batches[0] and batches[0]
