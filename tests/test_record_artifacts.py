"""Artifacts describe the real data: what the run consumed, whether the text is synthetic, no local paths, and
both token totals explained (issue 26.6).

Oracles: the run log's per-source token counts (read here from ``log.jsonl``), a hand-written map from each
corpus to its Hugging Face dataset id, and the run's own shape (steps x batch x seq_len).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from elm_data.manifests.build import build_manifest
from elm_data.manifests.croissant import croissant_metadata
from elm_data.manifests.manifest import Manifest

HUB = {
    "refinedweb": "tiiuae/falcon-refinedweb",
    "redpajama": "togethercomputer/RedPajama-Data-1T",
    "pile": "EleutherAI/the_pile_deduplicated",
    "dolma": "allenai/dolma",
}
STEPS, BATCH, SEQ_LEN = 4, 2, 64


@pytest.fixture(scope="module")
def real_format_manifest(sample_dir, tokenizer_path, tmp_path_factory) -> Path:
    """The sample corpus under a mixture that does not say ``synthetic: true``: it stands for real corpus
    files."""
    mixture = yaml.safe_load((sample_dir / "mixture.yaml").read_text())
    assert mixture.pop("synthetic") is True  # the sample says what it is
    for entry in mixture["sources"]:
        entry["shards"] = [str(sample_dir / s) for s in entry["shards"]]
    folder = tmp_path_factory.mktemp("real_format")
    (folder / "mixture.yaml").write_text(yaml.safe_dump(mixture))
    build_manifest(folder / "mixture.yaml", folder / "manifest", tokenizer=tokenizer_path)
    return folder / "manifest"


def test_the_sample_is_marked_synthetic_and_derives_from_no_upstream(
    sample_manifest, real_format_manifest, tmp_path
):
    """The sample's shards were linked to real upstream files (``prov:wasDerivedFrom``) and never called
    synthetic."""
    sample = Manifest(sample_manifest)
    assert sample.synthetic and sample.info["synthetic"] is True
    assert all(r.upstream is None and "synthetic" in r.licence for r in sample.shards)
    doc = croissant_metadata(sample_manifest, relative_to=tmp_path)
    assert doc["description"].startswith("SYNTHETIC SAMPLE, NOT REAL CORPUS DATA")
    assert "synthetic" in doc["rai:dataCollection"].lower() and "synthetic data" in doc["keywords"]
    assert not any("prov:wasDerivedFrom" in o for o in doc["distribution"])

    real = Manifest(real_format_manifest)
    assert not real.synthetic and all(r.upstream for r in real.shards)
    doc = croissant_metadata(real_format_manifest, relative_to=tmp_path)
    assert "SYNTHETIC" not in doc["description"] and "synthetic data" not in doc["keywords"]
    shards = [o for o in doc["distribution"] if o["@id"].startswith("shard-")]
    assert [o["prov:wasDerivedFrom"]["@id"] for o in shards] == [r.upstream for r in real.shards]


def test_croissant_embeds_no_absolute_local_path(sample_manifest, sample_dir, tmp_path):
    out = tmp_path / "published"
    text = json.dumps(croissant_metadata(sample_manifest, relative_to=out))
    for local in (sample_dir, sample_manifest, tmp_path):
        assert str(local) not in text
    urls = [o["contentUrl"] for o in json.loads(text)["distribution"]]
    assert not [u for u in urls if u.startswith("/")]
    shard = Manifest(sample_manifest).shards[0]
    assert (out / urls[-len(Manifest(sample_manifest).shards)]).resolve() == Path(shard.uri).resolve()


def _train(manifest: Path, out: Path) -> Path:
    from elm_data.trainer.core.config import TrainConfig
    from elm_data.trainer.core.loop import train

    model = {"name": "tiny", "num_transformer_layers": 2, "model_dim": 64, "head_dim": 32}
    shape = {"seq_len": SEQ_LEN, "batch_size": BATCH, "max_steps": STEPS, "checkpoint_every": STEPS}
    config = TrainConfig(
        manifest=str(manifest),
        model=model,
        warmup_steps=1,
        epochs=None,
        precision="fp32",
        distributed="none",
        **shape,
    )
    train(config, out_dir=out, progress=False)
    return out


def _card(run: Path) -> tuple[str, dict]:
    from elm_data.trainer.export.hf import checkpoint_card, newest_checkpoint, run_of

    card = checkpoint_card(run_of(newest_checkpoint(run)))["README.md"]
    return card, yaml.safe_load(card.split("---\n")[1])


def _consumed(run: Path) -> dict[str, int]:
    steps = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [s for s in steps if s.get("event") == "step"][-1]["tokens_by_source"]


@pytest.mark.slow
def test_the_card_describes_what_the_run_consumed(real_format_manifest, sample_manifest, tmp_path):
    """The card listed the manifest's hub upstreams (a Pile that gave 0 tokens), not what the run ate; it
    named no synthetic data, embedded absolute paths and put two token totals side by side unexplained."""
    run = _train(real_format_manifest, tmp_path / "run")
    consumed = _consumed(run)
    card, front = _card(run)
    eaten = {key.split("/")[0] for key, n in consumed.items() if n > 0}
    assert front["datasets"] == sorted(HUB[source] for source in eaten)
    starved = {r.source for r in Manifest(real_format_manifest).shards} - eaten
    # kept tokens, none eaten: not listed
    assert starved and not {HUB[s] for s in starved} & set(front["datasets"])
    assert "Synthetic data" not in card and "synthetic-data" not in front["tags"]
    for local in (tmp_path, real_format_manifest):
        assert str(local) not in card

    totals = re.search(
        r"two token totals: ([\d,]+) positions trained \(([\d,]+) sequences x (\d+) inputs.*?\) and "
        r"([\d,]+) tokens consumed.*?= ([\d,]+) slots, ([\d,]+) of them padding",
        card,
    )
    assert totals, card
    positions, sequences, inputs, eaten_tokens, slots, padding = (
        int(g.replace(",", "")) for g in totals.groups()
    )
    assert (positions, sequences, inputs) == (STEPS * BATCH * SEQ_LEN, STEPS * BATCH, SEQ_LEN)
    assert eaten_tokens == sum(consumed.values()) and slots == sequences * (SEQ_LEN + 1)
    assert slots - padding == eaten_tokens

    synthetic_run = _train(shutil.copytree(sample_manifest, tmp_path / "sample"), tmp_path / "sample-run")
    card, front = _card(synthetic_run)
    assert "datasets" not in front and "synthetic-data" in front["tags"] and "**Synthetic data.**" in card
