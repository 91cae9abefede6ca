"""`elm-data init openelm`: 13 entries at their upstream locations, resolved and built against a stand-in
hub."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner
from standin_hub import mirror_upstream, serve

from elm_data.cli import cli
from elm_data.core.errors import InvalidValue, OutputExists
from elm_data.manifests.mixture import MixtureConfig
from elm_data.manifests.openelm_mix import openelm_mixture, pin_revisions, write_openelm_mixture
from elm_data.manifests.shard_lists import every_nth, pin_revision
from elm_data.sources.registry import OPENELM_TARGETS, all_subsets


def test_openelm_names_all_13_subsets_with_their_targets_as_weights():
    mix = openelm_mixture("openelm")
    keys = [f"{e['source']}/{e['subset']}" for e in mix["sources"]]
    assert keys == [s.key for s in all_subsets()] and len(keys) == 13
    assert all(e["weight"] == OPENELM_TARGETS[k] / 1e9 for k, e in zip(keys, mix["sources"], strict=True))
    assert mix["targets"] == "openelm" and mix["sequences"] == {"mode": "packed", "seq_len": 2048}
    by_key = dict(zip(keys, mix["sources"], strict=True))
    assert by_key["refinedweb/default"]["shards"] == [
        "hf://datasets/tiiuae/falcon-refinedweb/data/train-*-of-05534-*.parquet"
    ]
    assert (
        by_key["redpajama/c4"]["shards_from"] == "https://data.together.xyz/redpajama-data-1T/v1.0.0/urls.txt"
    )
    assert by_key["dolma/gutenberg"]["match"] == "https://olmo-data.org/dolma-v1_6/books/*"
    assert "common_crawl" not in str(mix)  # OpenELM used RedPajama without its Common Crawl part
    assert all("fraction" in e for e in openelm_mixture("openelm-1pct")["sources"])


def test_pin_revisions_asks_each_repo_once():
    asked = []
    mix = pin_revisions(openelm_mixture(), lambda repo: asked.append(repo) or f"c0ffee-{repo}")
    assert sorted(asked) == ["EleutherAI/the_pile_deduplicated", "allenai/dolma", "tiiuae/falcon-refinedweb"]
    dolma = [e for e in mix["sources"] if e["source"] == "dolma"]
    assert {e["revision"] for e in dolma} == {"c0ffee-allenai/dolma"}


def test_pin_revision_and_every_nth():
    assert pin_revision("hf://datasets/a/b/data/x.parquet", "r1") == "hf://datasets/a/b@r1/data/x.parquet"
    assert pin_revision("hf://datasets/a/b@r0/x", "r1") == "hf://datasets/a/b@r0/x"
    assert pin_revision("hf://meta-llama/L/tokenizer.model", "r1") == "hf://meta-llama/L@r1/tokenizer.model"
    assert pin_revision("https://h/x", "r1") == "https://h/x"
    assert every_nth([str(i) for i in range(250)], 0.01) == ["0", "83", "166"]
    assert every_nth(["only"], 0.01) == ["only"]


@pytest.mark.slow  # resolves all 13 subsets and builds a manifest
def test_every_entry_resolves_against_a_stand_in_hub_and_builds_a_manifest(
    sample_dir, tokenizer_path, tmp_path, monkeypatch
):
    from elm_data.manifests.build import build_manifest
    from elm_data.manifests.manifest import Manifest

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    upstream = mirror_upstream(sample_dir, tmp_path / "mirror")
    mixture_path = write_openelm_mixture(tmp_path / "mix", "openelm")
    with serve(tmp_path / "mirror" / "hf", "hf"), serve(tmp_path / "mirror" / "https", "https"):
        mixture = MixtureConfig.load(mixture_path)
        resolved = {f"{e.source}/{e.subset}": mixture.resolve_shards(e) for e in mixture.entries}
        assert resolved == {k: sorted(v) for k, v in upstream.items()}
        assert resolved["refinedweb/default"][0].startswith(
            "hf://datasets/tiiuae/falcon-refinedweb@main/data/"
        )
        built = build_manifest(mixture_path, tmp_path / "m", tokenizer=tokenizer_path)
    shards = Manifest(built.manifest_dir).shards
    assert len({(s.source, s.subset) for s in shards}) == 13
    assert len(shards) == sum(len(v) for v in upstream.values())
    assert built.totals["docs_read"] == 20 * 13


def test_one_pct_keeps_one_shard_per_subset(sample_dir, tmp_path):
    mirror_upstream(sample_dir, tmp_path / "mirror")
    with serve(tmp_path / "mirror" / "hf", "hf"), serve(tmp_path / "mirror" / "https", "https"):
        mixture = MixtureConfig.load(write_openelm_mixture(tmp_path, "openelm-1pct"))
        assert all(len(mixture.resolve_shards(e)) == 1 for e in mixture.entries)


def test_a_local_url_list_with_relative_lines_and_a_match(sample_dir, tmp_path):
    (tmp_path / "urls.txt").write_text(
        f"# my shards\n{sample_dir}/redpajama/c4/c4-train.00001-of-01024.jsonl\n\n"
        f"{sample_dir}/redpajama/c4/c4-train.00000-of-01024.jsonl\nother/thing.jsonl\n"
    )
    spec = {
        "sources": [{"source": "redpajama", "subset": "c4", "shards_from": "urls.txt", "match": "*/c4/*"}]
    }
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(spec))
    mixture = MixtureConfig.load(tmp_path / "m.yaml")
    assert [p.rsplit("/", 1)[1] for p in mixture.resolve_shards(mixture.entries[0])] == [
        "c4-train.00000-of-01024.jsonl",
        "c4-train.00001-of-01024.jsonl",
    ]


def test_cli_init_writes_and_refuses_to_overwrite(tmp_path):
    runner = CliRunner()
    first = runner.invoke(cli, ["init", "openelm", str(tmp_path)])
    assert first.exit_code == 0, first.output
    assert len(yaml.safe_load((tmp_path / "openelm.yaml").read_text())["sources"]) == 13
    again = runner.invoke(cli, ["init", "openelm", str(tmp_path)])
    assert again.exit_code != 0 and "--force" in again.output


def test_an_unreachable_url_list_is_one_line_naming_it(tmp_path):
    import pytest
    from standin_hub import offline

    from elm_data.manifests.shard_lists import Unreachable

    mixture = MixtureConfig.load(write_openelm_mixture(tmp_path, "openelm"))
    c4 = next(e for e in mixture.entries if e.subset == "c4")
    with offline("https"), pytest.raises(Unreachable) as err:
        mixture.resolve_shards(c4)
    message = str(err.value)
    assert "\n" not in message and "data.together.xyz/redpajama-data-1T/v1.0.0/urls.txt" in message
    assert "huggingface-cli login" in message


def test_unknown_preset_and_an_existing_file_are_user_errors(tmp_path):
    with pytest.raises(InvalidValue, match="unknown preset 'nope'"):
        openelm_mixture("nope")
    first = write_openelm_mixture(tmp_path, "openelm")
    with pytest.raises(OutputExists, match="overwrite=True"):  # the writer refuses, not only the CLI
        write_openelm_mixture(tmp_path, "openelm")
    assert write_openelm_mixture(tmp_path, "openelm", overwrite=True) == first


def test_pin_without_the_hub_is_one_line(tmp_path, monkeypatch):
    import huggingface_hub

    def offline(self, repo, **kwargs):
        raise huggingface_hub.errors.OfflineModeIsEnabled("offline mode is enabled\nsecond line")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", offline)
    result = CliRunner().invoke(cli, ["init", "openelm", str(tmp_path), "--pin"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    (line,) = result.output.strip().splitlines()
    assert "cannot ask the hub for the commit of" in line and "OfflineModeIsEnabled" in line
    assert not (tmp_path / "openelm.yaml").exists()
