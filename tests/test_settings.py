"""One owner per setting: the data seed, the pad id, and invalid values refused where they enter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from elm_data.core.errors import ElmDataError, InvalidValue
from elm_data.manifests.mixture import MixtureConfig
from elm_data.pipeline.config import FilterConfig, SequenceConfig
from elm_data.pipeline.tokenizer import PAD_ID
from elm_data.trainer.config import ConfigError, TrainConfig


def _mixture(sample_dir: Path, out: Path, **changes) -> Path:
    raw = yaml.safe_load((sample_dir / "mixture.yaml").read_text())
    for entry in raw["sources"]:
        entry["shards"] = [str(sample_dir / s) for s in entry["shards"]]
    raw.update(changes)
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


@pytest.fixture(scope="module")
def seed7_manifest(sample_dir, tokenizer_path, tmp_path_factory) -> Path:
    """The sample mixture (weighted, so the seed decides the order) built with seed 7."""
    from elm_data.manifests.build import build_manifest

    root = tmp_path_factory.mktemp("seed7")
    build_manifest(_mixture(sample_dir, root / "mixture.yaml", seed=7), root / "m", tokenizer=tokenizer_path)
    return root / "m"


def _first_batches(loader, n: int = 8) -> list[torch.Tensor]:
    batches = []
    for batch in loader:
        batches.append(batch["input_ids"])
        if len(batches) == n:
            return batches
    return batches


def _train_batches(manifest: Path, tokenizer, **config) -> list[torch.Tensor]:
    from elm_data.trainer.distributed import DistInfo
    from elm_data.trainer.loop import build_loader

    cfg = TrainConfig(manifest=str(manifest), seq_len=64, batch_size=2, model="tiny", **config)
    return _first_batches(build_loader(cfg, manifest, tokenizer, DistInfo()))


def _stream_batches(manifest: Path, tokenizer, seed: int | None) -> list[torch.Tensor]:
    from elm_data.pipeline.stream import StreamLoader, TokenStream

    stream = TokenStream(manifest, batch_size=2, seq_len=64, seed=seed, tokenizer=tokenizer, epochs=1)
    return _first_batches(StreamLoader(stream))


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.slow  # two trainer loaders and two streams (test_data_seed_is_the_streams_seed is the quick one)
def test_train_streams_the_manifests_order_whatever_the_model_seed(seed7_manifest, tokenizer):
    stream = _stream_batches(seed7_manifest, tokenizer, seed=None)  # `elm-data stream`: the manifest's seed 7
    assert _same(_train_batches(seed7_manifest, tokenizer, seed=0), stream)
    assert _same(_train_batches(seed7_manifest, tokenizer, seed=123), stream)
    assert not _same(_stream_batches(seed7_manifest, tokenizer, seed=0), stream)  # the seed matters here


@pytest.mark.slow  # builds the seed-7 manifest and reads it twice
def test_data_seed_is_the_streams_seed(seed7_manifest, tokenizer):
    assert _same(_train_batches(seed7_manifest, tokenizer, data_seed=3), _stream_batches(seed7_manifest, tokenizer, 3))


def test_pad_id_has_one_owner():
    from elm_data.trainer import loss

    assert loss.PAD_ID is PAD_ID and SequenceConfig().pad_id == PAD_ID
    assert "pad_id" not in TrainConfig().to_dict()
    with pytest.raises(ConfigError, match="pad_id"):
        TrainConfig.from_dict({"pad_id": PAD_ID})


def test_a_manifest_or_mixture_with_another_pad_id_is_refused(sample_dir, tmp_path):
    with pytest.raises(InvalidValue, match=r"sequences\.pad_id: expected 32000"):
        SequenceConfig.from_dict({"pad_id": 0})
    with pytest.raises(InvalidValue, match=r"sequences\.pad_id"):
        MixtureConfig.load(_mixture(sample_dir, tmp_path / "m.yaml", sequences={"mode": "packed", "pad_id": 1}))


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"sources": [{"source": "dolma", "subset": "pes2o", "shards": ["x"], "weight": -1}]}, r"sources\[0\].weight"),
        ({"sources": [{"source": "dolma", "subset": "pes2o", "shards": ["x"], "weight": "a"}]}, r"sources\[0\].weight"),
        ({"sequences": {"seq_len": 0}}, r"sequences\.seq_len"),
        ({"sequences": {"seq_len": -5}}, r"sequences\.seq_len"),
        ({"sequences": {"sequence_length": 5}}, r"sequences: unknown"),
        ({"filters": {"min_tokens": -1}}, r"filters\.min_tokens"),
        ({"seed": "seven"}, r"seed"),
        ({"sources": ["redpajama/arxiv"]}, r"sources\[0\]: lacks"),
    ],
)
def test_mixture_values_are_refused_naming_the_key(sample_dir, tmp_path, changes, key):
    with pytest.raises(InvalidValue, match=key):
        MixtureConfig.load(_mixture(sample_dir, tmp_path / "m.yaml", **changes))


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"lr": "fast"}, r"^lr: expected a number or null, got 'fast'"),
        ({"model": "tiny2"}, r"^model: unknown size 'tiny2'"),
        ({"seq_len": 0}, r"^seq_len must be positive"),
        ({"seq_len": "long"}, r"^seq_len: expected an integer"),
        ({"batch_size": True}, r"^batch_size: expected an integer"),
        ({"weights": {"refinedweb/default": -1}}, r"^weights: refinedweb/default"),
        ({"weights": "even"}, r"^weights: expected 'natural'"),
        ({"data_seed": 1.5}, r"^data_seed: expected an integer or null"),
        ({"mode": "zigzag"}, r"^mode must be"),
    ],
)
def test_training_config_values_are_refused_naming_the_key(raw, key):
    with pytest.raises(ConfigError, match=key):
        TrainConfig.from_dict(raw)


def test_config_errors_are_user_errors():
    assert issubclass(ConfigError, ElmDataError) and issubclass(InvalidValue, ValueError)
    assert FilterConfig.from_dict({"min_tokens": 0}).min_tokens == 0


@pytest.mark.slow  # the CLI and the trainer's loader (test_data_seed_is_the_streams_seed is the quick one)
def test_the_stream_command_prints_what_train_reads(seed7_manifest, tokenizer, tokenizer_path, capsys):
    import json
    import signal

    from elm_data.cli import run

    before = signal.getsignal(signal.SIGTERM)
    try:
        args = ["stream", str(seed7_manifest), "--seq-len", "64", "--batch-size", "2", "--take", "4"]
        assert run([*args, "--format", "jsonl", "--tokenizer", tokenizer_path]) == 0
    finally:
        signal.signal(signal.SIGTERM, before)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    printed = [line["input_ids"] for line in lines if "input_ids" in line]
    trained = [row.tolist() for batch in _train_batches(seed7_manifest, tokenizer, seed=5) for row in batch][:4]
    assert printed == trained
