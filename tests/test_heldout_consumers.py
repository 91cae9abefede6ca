"""Held-out documents (ledger status ``heldout``) in what prints or publishes a manifest's counts: every
figure said beside ``read`` accounts for them, so the buckets said add up to the records read (the ledger's
statuses are the oracle; ``tests/test_heldout.py`` covers the build, the audit and the stream)."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from click.testing import CliRunner

from elm_data.cli import cli
from elm_data.manifests.croissant import croissant_metadata
from elm_data.manifests.manifest import Manifest


def _statuses(manifest: Manifest) -> Counter:
    counts: Counter = Counter()
    for record in manifest.shards:
        for row in manifest.documents(record.shard, ["status", "count"]).to_pylist():
            counts[row["status"]] += row["count"]
    return counts


def test_the_build_summary_counts_every_bucket_of_the_ledger(heldout_manifest, tmp_path):
    out = tmp_path / "manifest"
    result = CliRunner().invoke(
        cli, ["build", "manifest", str(heldout_manifest.parent / "mixture.yaml"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.strip().startswith("documents"))
    read, terms = re.fullmatch(r"\s*documents\s+([\d,]+) read = (.*)", line).groups()
    said = {name: int(n.replace(",", "")) for n, name in re.findall(r"([\d,]+) ([a-z ]+?)(?: \+ |$)", terms)}
    ledger = _statuses(Manifest(out))
    assert ledger["heldout"] > 0
    assert said == {
        "kept": ledger["kept"],
        "held out": ledger["heldout"],
        "filtered": ledger["filtered"],
        "rejected": ledger["rejected"],
    }
    assert int(read.replace(",", "")) == sum(said.values())


def test_croissant_says_how_many_documents_are_held_out(heldout_manifest):
    manifest = Manifest(heldout_manifest)
    meta = croissant_metadata(heldout_manifest)
    ledger = _statuses(manifest)
    held = re.search(r"records kept \(([\d,]+) more held out for evaluation", meta["description"])
    assert held and int(held.group(1).replace(",", "")) == ledger["heldout"] > 0
    shard_objects = {d["@id"]: d for d in meta["distribution"] if d["@id"].startswith("shard-")}
    for record in manifest.shards:
        text = shard_objects[f"shard-{record.shard:05d}"]["description"]
        kept, read = (
            int(n.replace(",", "")) for n in re.search(r"([\d,]+) of ([\d,]+) records kept", text).groups()
        )
        held = re.search(r"\(([\d,]+) more held out", text)
        held_out = int(held.group(1).replace(",", "")) if held else 0
        assert kept + held_out + record.docs_filtered + record.docs_rejected == read, text
    fields = {f["name"]: f.get("description", "") for f in meta["recordSet"][0]["field"]}
    assert "held out" in fields["docs_read"]
    assert fields["docs_heldout"] and fields["heldout_tokens"]


@pytest.mark.slow
def test_the_estimate_says_its_kept_figures_include_what_the_build_holds_out(
    heldout_manifest, tokenizer_path
):
    from elm_data.manifests.estimate import estimate_mixture, format_estimate

    estimate = estimate_mixture(heldout_manifest.parent / "mixture.yaml", tokenizer=tokenizer_path)
    totals = Manifest(heldout_manifest).info["totals"]
    assert totals["docs_heldout"] > 0
    assert totals["docs_kept"] + totals["docs_heldout"] in estimate.total("kept")  # what the note says
    assert totals["docs_kept"] not in estimate.total("kept")
    assert any(n.startswith("heldout.fraction 0.25: ") for n in estimate.notes)
    assert "Note: heldout.fraction 0.25" in format_estimate(estimate)


def test_the_estimate_says_the_dedup_filter_is_not_in_its_figures(heldout_manifest, tmp_path):
    import yaml

    from elm_data.manifests.estimate import build_only_notes
    from elm_data.manifests.mixture import MixtureConfig

    raw = yaml.safe_load((heldout_manifest.parent / "mixture.yaml").read_text())
    raw.setdefault("filters", {})["dedup"] = "exact"
    (tmp_path / "mixture.yaml").write_text(yaml.safe_dump(raw))
    notes = build_only_notes(MixtureConfig.load(tmp_path / "mixture.yaml"))
    assert [n.split(":")[0] for n in notes] == ["heldout.fraction 0.25", "filters.dedup exact"]
