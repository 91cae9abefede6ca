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
from elm_data.trainer.core.config import ConfigError, TrainConfig


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
    from elm_data.trainer.core.distributed import DistInfo
    from elm_data.trainer.core.loop import build_loader

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
    assert _same(
        _train_batches(seed7_manifest, tokenizer, data_seed=3), _stream_batches(seed7_manifest, tokenizer, 3)
    )


def test_pad_id_has_one_owner():
    from elm_data.trainer.core import loss

    assert loss.PAD_ID is PAD_ID and SequenceConfig().pad_id == PAD_ID
    assert "pad_id" not in TrainConfig().to_dict()
    with pytest.raises(ConfigError, match="pad_id"):
        TrainConfig.from_dict({"pad_id": PAD_ID})


def test_a_manifest_or_mixture_with_another_pad_id_is_refused(sample_dir, tmp_path):
    with pytest.raises(InvalidValue, match=r"sequences\.pad_id: expected 32000"):
        SequenceConfig.from_dict({"pad_id": 0})
    with pytest.raises(InvalidValue, match=r"sequences\.pad_id"):
        MixtureConfig.load(
            _mixture(sample_dir, tmp_path / "m.yaml", sequences={"mode": "packed", "pad_id": 1})
        )


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        (
            {"sources": [{"source": "dolma", "subset": "pes2o", "shards": ["x"], "weight": -1}]},
            r"sources\[0\].weight",
        ),
        (
            {"sources": [{"source": "dolma", "subset": "pes2o", "shards": ["x"], "weight": "a"}]},
            r"sources\[0\].weight",
        ),
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
    trained = [row.tolist() for batch in _train_batches(seed7_manifest, tokenizer, seed=5) for row in batch][
        :4
    ]
    assert printed == trained


# ---- one settings idiom for every config (issue 26 item 4, issue 21's YAML bullets) ------------------------
MIXTURE_TYPOS = [  # (where the typo goes, the typo, the valid name a user meant)
    ("entry", "wieght", "weight"),
    ("entry", "revison", "revision"),
    ("entry", "fractoin", "fraction"),
    ("top", "sequence", "sequences"),
    ("top", "seeed", "seed"),
    ("top", "targest", "targets"),
    ("top", "sourcez", "sources"),
    ("filters", "min_token", "min_tokens"),
    ("sequences", "seq_lne", "seq_len"),
]


def _cli(capsys, *args) -> tuple[int, list[str]]:
    import signal

    from elm_data.cli import run

    before = signal.getsignal(signal.SIGTERM)
    try:
        code = run([str(a) for a in args])
    finally:
        signal.signal(signal.SIGTERM, before)
    return code, capsys.readouterr().err.strip().splitlines()


def _typo_mixture(sample_dir: Path, out: Path, level: str, typo: str, meant: str) -> Path:
    """The sample mixture (two small JSONL subsets) with ``meant`` misspelt ``typo`` at ``level``."""
    raw = yaml.safe_load((sample_dir / "mixture.yaml").read_text())
    raw["sources"] = raw["sources"][1:3]
    for entry in raw["sources"]:
        entry["shards"] = [str(sample_dir / s) for s in entry["shards"]]
    section = raw["sources"][1] if level == "entry" else raw if level == "top" else raw[level]
    section[typo] = section.pop(meant, 1)
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


@pytest.mark.parametrize(("level", "typo", "meant"), MIXTURE_TYPOS)
def test_a_mixture_typo_is_one_line_naming_the_key_and_its_nearest_valid_name(
    capsys, sample_dir, tokenizer_path, tmp_path, level, typo, meant
):
    mixture = _typo_mixture(sample_dir, tmp_path / "mixture.yaml", level, typo, meant)
    assert typo in mixture.read_text()
    code, lines = _cli(
        capsys, "build", "manifest", mixture, "--out", tmp_path / "m", "--tokenizer", tokenizer_path
    )
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert f"unknown key '{typo}'; did you mean '{meant}'?" in lines[0] and "mixture.yaml" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixture.yaml"]  # nothing built, no lock left


def test_a_duplicate_key_is_refused_naming_its_line(tmp_path):
    from elm_data.core.settings import SettingsError, load_yaml

    path = tmp_path / "m.yaml"
    path.write_text("seed: 1\nsources: []\nseed: 2\n")
    with pytest.raises(SettingsError, match=r"m\.yaml: line 3: key 'seed' appears twice"):
        MixtureConfig.load(path)
    path.write_text("a: {x: 1, y: 2, x: 3}\n")
    with pytest.raises(SettingsError, match="key 'x' appears twice"):
        load_yaml(path)
    path.write_text("base: &b {x: 1}\nother: {<<: *b, x: 2}\n")  # a merge key overridden is not a duplicate
    assert load_yaml(path) == {"base": {"x": 1}, "other": {"x": 2}}


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The 'billion laughs' document: ``width ** levels`` strings once expanded, a few hundred bytes as
    written."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _every_yaml_reader(tmp_path: Path) -> dict:
    """Every place the product reads a YAML file a user names: a call that reads ``path``."""
    from elm_data.manifests.targets import load_targets
    from elm_data.pipeline.stream.cli import _load_weights
    from elm_data.trainer.bench.matrix import Matrix
    from elm_data.trainer.compress.finetune import CompressConfig

    return {
        "mixture": MixtureConfig.load,
        "train config": TrainConfig.from_yaml,
        "compress config": CompressConfig.from_yaml,
        "bench matrix": Matrix.from_yaml,
        "--targets / targets:": lambda path: load_targets(str(path)),
        "--weights": lambda path: _load_weights(str(path)),
    }


def test_an_alias_bomb_is_refused_fast_in_every_yaml_the_product_reads(tmp_path):
    import time
    import tracemalloc

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb())
    assert len(bomb.read_bytes()) < 1000
    sizes = [10]  # oracle: level 0 expands to 1 list + 9 strings, level i to 1 list + 9 copies of level i-1
    for _ in range(8):
        sizes.append(1 + 9 * sizes[-1])
    # expanded tree - distinct nodes (mapping, keys, lists, lols)
    growth = (1 + 9 + sum(sizes)) - (1 + 9 + 9 + 9)
    for what, read in _every_yaml_reader(tmp_path).items():
        tracemalloc.start()
        started = time.perf_counter()
        with pytest.raises(
            InvalidValue, match=rf"bomb\.yaml: aliases expand the document by {growth:,} nodes"
        ):
            read(bomb)
        seconds, (_, peak) = time.perf_counter() - started, tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert seconds < 0.5 and peak < 5 * 2**20, (what, seconds, peak)


def test_a_few_anchors_for_shared_values_still_work(tmp_path):
    from elm_data.core.settings import load_yaml

    path = tmp_path / "a.yaml"
    path.write_text("shards: &s [a.jsonl, b.jsonl]\nagain: *s\n")
    assert load_yaml(path) == {"shards": ["a.jsonl", "b.jsonl"], "again": ["a.jsonl", "b.jsonl"]}
    path.write_text("a: &x [1, *x]\n")
    with pytest.raises(InvalidValue, match="an alias refers to a node that contains it"):
        load_yaml(path)
    path.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")  # libyaml's own composer crashes the process here
    with pytest.raises(InvalidValue, match="nested too deeply"):
        load_yaml(path)


BROKEN_FILES = {  # name -> (bytes, what the one line says)
    "malformed": (b"seed: [1, 2\nname: x\n", "not valid YAML: line 2"),
    "python tag": (b"seed: !!python/object/apply:os.system ['true']\n", "python/object/apply:os.system"),
    "filters: 5": (b"filters: 5\n", "filters"),
    "not UTF-8": (b"name: caf\xe9\n", "not UTF-8 text (byte 0xe9 at offset 9)"),
}


def _broken(tmp_path: Path, kind: str, name: str) -> tuple[Path, str]:
    data, needle = BROKEN_FILES[kind]
    path = tmp_path / name
    path.write_bytes(data)
    return path, needle


@pytest.mark.parametrize("kind", BROKEN_FILES)
def test_a_broken_mixture_or_training_config_is_one_line_exit_2(capsys, tmp_path, tokenizer_path, kind):
    mixture, needle = _broken(tmp_path, kind, "mixture.yaml")
    code, lines = _cli(
        capsys, "build", "manifest", mixture, "--out", tmp_path / "m", "--tokenizer", tokenizer_path
    )
    assert code == 2 and len(lines) == 1 and "mixture.yaml" in lines[0] and needle in lines[0], lines
    assert not (tmp_path / "m").exists()
    config, needle = _broken(tmp_path, kind, "train.yaml")
    code, lines = _cli(capsys, "train", config, "--out", tmp_path / "run")
    assert code == 2 and len(lines) == 1 and "train.yaml" in lines[0] and needle in lines[0], lines


@pytest.mark.parametrize("kind", BROKEN_FILES)
def test_a_broken_weights_or_targets_file_is_one_line_exit_2(capsys, tmp_path, kind):
    from synthetic_manifest import synthetic_manifest

    manifest = synthetic_manifest(tmp_path / "manifest", {"a/x": [20], "b/y": [20]}).path
    weights, needle = _broken(tmp_path, kind, "weights.yaml")
    code, lines = _cli(capsys, "stream", manifest, "--weights", weights, "--take", "1")
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in lines[0], (
        lines
    )
    assert ("weights.yaml" in lines[0] and needle in lines[0]) or kind == "filters: 5", lines
    targets, needle = _broken(tmp_path, kind, "targets.yaml")
    code, lines = _cli(capsys, "audit", manifest, "--targets", targets)
    assert code == 2 and len(lines) == 1 and "targets.yaml" in lines[0] and needle in lines[0], lines


def test_every_yaml_load_in_production_goes_through_the_one_loader():
    from test_code_shape import ROOT, production_files

    assert yaml_loads(ROOT, production_files) == ["elm_data/core/settings.py"]


def yaml_loads(root: Path, files) -> list[str]:
    """Production modules that parse YAML (``yaml.*load*``/``compose``/``parse``, any loader class), by
    ``ast``."""
    import ast

    readers = ("load", "compose", "parse", "scan", "Loader", "CParser", "Composer")
    found = set()
    for path in files(root):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "yaml"
            ):
                names = [node.attr]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("yaml"):
                names = [a.name for a in node.names] + [node.module or ""]
            if any(r in name for name in names for r in readers):
                found.add(str(path.relative_to(root)))
    return sorted(found)


def test_the_yaml_load_check_finds_a_stray_load(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.py").write_text("import yaml\nx = yaml.safe_load('a: 1')\n")
    (tmp_path / "a" / "two.py").write_text("from yaml import CSafeLoader\n")
    (tmp_path / "a" / "ok.py").write_text("import yaml\ntext = yaml.safe_dump({'a': 1})\n")
    files = lambda root: sorted(root.rglob("*.py"))  # noqa: E731
    assert yaml_loads(tmp_path, files) == ["a/one.py", "a/two.py"]


@pytest.mark.parametrize(
    ("section", "raw", "needle"),
    [
        ("train", {"seq_lenn": 64}, "unknown key 'seq_lenn'; did you mean 'seq_len'?"),
        (
            "train",
            {"model": {"name": "tiny", "hed_dim": 16}},
            "model: unknown key 'hed_dim'; did you mean 'head_dim'",
        ),
        ("train", {"model": {"name": "tiny", "model_dim": "wide"}}, "model.model_dim: expected an integer"),
        ("palette", {"bitz": 4}, "palettization: unknown key 'bitz'; did you mean 'bits'?"),
        ("model", {"num_transformer_layers": 2, "model_dim": 64, "head_dim": 16, "vocab": 5}, "'vocab_size'"),
        (
            "plan",
            {"mode": "packed", "seq_len": 8, "batch_size": 1, "seed": 0, "epoch": 1},
            "did you mean 'epochs'",
        ),
        (
            "plan",
            {"mode": "packed", "seq_len": "8", "batch_size": 1, "seed": 0},
            "seq_len: expected an integer",
        ),
        (
            "filters",
            {"quality": [{"name": "gopher_quality", "parms": {}}]},
            "filters.quality[0]: unknown key 'parms'",
        ),
        ("filters", 5, "filters: expected a mapping of settings, got 5"),
        ("sequences", {"mode": "packed", "document_mask": True}, "did you mean 'document_masks'"),
    ],
)
def test_every_config_section_refuses_unknown_keys_and_wrong_types(section, raw, needle):
    from elm_data.model.config import OpenELMConfig
    from elm_data.pipeline.stream.plan import PlanConfig
    from elm_data.trainer.compress.finetune import PaletteSpec

    read = {
        "train": TrainConfig.from_dict,
        "palette": PaletteSpec.from_dict,
        "model": OpenELMConfig.from_dict,
        "plan": PlanConfig.from_mapping,
        "filters": FilterConfig.from_dict,
        "sequences": SequenceConfig.from_dict,
    }[section]
    with pytest.raises(InvalidValue) as error:
        read(raw)
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_matrix_keys_and_its_train_keys_name_the_nearest(tmp_path):
    from elm_data.trainer.bench.matrix import Matrix

    path = tmp_path / "matrix.yaml"
    path.write_text("axes: {model: [tiny], batch_size: [1], seq_len: [8]}\ntoken_budgett: 5\n")
    with pytest.raises(
        InvalidValue, match=r"matrix\.yaml: unknown key 'token_budgett'; did you mean 'token_budget'"
    ):
        Matrix.from_yaml(path)
    path.write_text("axes: {model: [tiny], batch_size: [1], seq_len: [8]}\ntrain: {warmup_step: 1}\n")
    with pytest.raises(InvalidValue, match="train: unknown key 'warmup_step'; did you mean 'warmup_steps'"):
        Matrix.from_yaml(path)


def test_relative_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    from elm_data.core.settings import resolve_path

    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs" / "train.yaml"
    path.write_text("manifest: ../m\ntokenizer: tok/tokenizer.model\nmodel: tiny\n")
    monkeypatch.chdir(tmp_path)
    config = TrainConfig.from_yaml(path)
    assert config.manifest_dir == (tmp_path / "m").resolve()
    assert config.tokenizer_location == str((tmp_path / "configs" / "tok" / "tokenizer.model").resolve())
    assert resolve_path("hf://datasets/x/y.txt", tmp_path) == "hf://datasets/x/y.txt"
    assert resolve_path("y.txt", "s3://bucket/dir") == "s3://bucket/dir/y.txt"


# builds a three-subset manifest, streams ~500 sequences (test_mixing has the quick plan-level one)
@pytest.mark.slow
def test_an_omitted_weight_is_the_subsets_natural_share_of_the_stream(
    sample_dir, tokenizer, tokenizer_path, tmp_path
):
    from collections import Counter

    from elm_data.manifests.build import build_manifest
    from elm_data.manifests.manifest import Manifest
    from elm_data.pipeline.stream import TokenStream

    raw = yaml.safe_load((sample_dir / "mixture.yaml").read_text())
    entries = {f"{e['source']}/{e['subset']}": e for e in raw["sources"]}
    raw["sources"] = [entries["redpajama/arxiv"], entries["redpajama/c4"], entries["redpajama/book"]]
    raw["sources"][0]["weight"], raw["sources"][1]["weight"] = 1, 3
    del raw["sources"][2]["weight"]  # natural proportion, says mixture.yaml's documentation
    for entry in raw["sources"]:
        entry["shards"] = [str(sample_dir / s) for s in entry["shards"]]
    (tmp_path / "mixture.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    build_manifest(tmp_path / "mixture.yaml", tmp_path / "m", tokenizer=tokenizer_path)
    manifest = Manifest(tmp_path / "m")
    key_of = {r.shard: r.key for r in manifest.shards}
    # oracle: the documents ledger, kept tokens plus BOS/EOS per segment (what is fed)
    kept: Counter = Counter()
    for d in manifest.all_documents().to_pylist():
        kept[key_of[d["shard"]]] += d["tokens"] + 2 * d["segments"] if d["status"] == "kept" else 0
    natural = kept["redpajama/book"] / sum(kept.values())
    expected = {
        "redpajama/arxiv": (1 - natural) / 4,
        "redpajama/c4": 3 * (1 - natural) / 4,
        "redpajama/book": natural,
    }
    stream = TokenStream(tmp_path / "m", batch_size=8, seq_len=256, tokenizer=tokenizer, provenance=False)
    fed: Counter = Counter()
    for n, batch in enumerate(stream):
        fed.update(batch["tokens_by_source"])
        if n == 60:
            break
    assert 0.05 < natural < 0.6 and fed["redpajama/book"] > 0, (natural, fed)
    for key, share in expected.items():
        assert fed[key] / sum(fed.values()) == pytest.approx(share, abs=0.05), (key, fed, expected)


def test_an_unknown_source_or_subset_names_the_nearest_known_one():
    from elm_data.sources.registry import UnknownSubset, get_subset

    with pytest.raises(
        UnknownSubset, match=r"unknown source/subset redpajam/arxiv; did you mean 'redpajama/arxiv'\?"
    ):
        get_subset("redpajam", "arxiv")
    with pytest.raises(
        UnknownSubset, match=r"unknown source/subset nothing/like; known: refinedweb/default, "
    ):
        get_subset("nothing", "like")
