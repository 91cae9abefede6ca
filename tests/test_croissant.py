"""`elm-data export croissant`: Croissant 1.1 JSON-LD that mlcroissant validates and can load."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import mlcroissant as mlc
import pytest
from click.testing import CliRunner

from elm_data.manifests.cli import export_croissant
from elm_data.manifests.croissant import croissant_metadata
from elm_data.manifests.manifest import Manifest

pytestmark = pytest.mark.slow  # an export; importing mlcroissant alone takes a second


@pytest.fixture(scope="module")
def exported(sample_manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("croissant") / "sample.croissant.json"
    result = CliRunner().invoke(export_croissant, [str(sample_manifest), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_mlcroissant_validates_and_loads_the_ledger(exported, sample_manifest):
    dataset = mlc.Dataset(jsonld=str(exported))
    assert dataset.metadata.ctx.is_v1_1()
    assert not dataset.metadata.ctx.issues.errors
    assert not dataset.metadata.ctx.issues.warnings
    shards = Manifest(sample_manifest).shards
    rows = list(dataset.records("shards"))
    assert [r["shards/sha256"].decode() for r in rows] == [s.sha256 for s in shards]
    assert sum(r["shards/tokens"] for r in rows) == sum(s.tokens for s in shards)


def test_every_shard_is_a_file_object_with_hash_and_provenance(exported, sample_manifest):
    doc = json.loads(exported.read_text())
    assert doc["conformsTo"] == "http://mlcommons.org/croissant/1.1"
    assert doc["@context"]["prov"] == "http://www.w3.org/ns/prov#"
    objects = {o["@id"]: o for o in doc["distribution"]}
    for shard in Manifest(sample_manifest).shards:
        obj = objects[f"shard-{shard.shard:05d}"]
        assert obj["@type"] == "cr:FileObject"
        assert obj["sha256"] == shard.sha256
        # relative, no /tmp
        assert (exported.parent / obj["contentUrl"]).resolve() == Path(shard.uri).resolve()
        assert "prov:wasDerivedFrom" not in obj  # the sample is synthetic: it derives from no upstream file
    # the manifest's own files are listed with their real hashes, relative to the JSON-LD's folder
    ledgers = {
        f"documents-{r.shard:06d}": f"documents/{r.shard:06d}.parquet"
        for r in Manifest(sample_manifest).shards
    }
    for name, path in {
        "manifest.json": "manifest.json",
        "shards.parquet": "shards.parquet",
        **ledgers,
    }.items():
        obj = objects[name]
        target = (exported.parent / obj["contentUrl"]).resolve()
        assert target == (sample_manifest / path).resolve()
        assert obj["sha256"] == hashlib.sha256(target.read_bytes()).hexdigest()
    for key in (
        "rai:dataCollection",
        "rai:dataPreprocessingProtocol",
        "rai:dataLimitations",
        "rai:dataUseCases",
    ):
        assert doc[key]
    assert {rs["@id"] for rs in doc["recordSet"]} == {"shards"}


def test_validation_really_checks(sample_manifest):
    broken = copy.deepcopy(croissant_metadata(sample_manifest))
    shard = next(o for o in broken["distribution"] if o["@id"] == "shard-00000")
    del shard["sha256"]  # a FileObject without a checksum is invalid
    with pytest.raises(mlc.ValidationError, match="sha256"):
        mlc.Dataset(jsonld=broken)


def test_default_output_lives_in_the_manifest_dir(sample_manifest, tmp_path):
    import shutil

    copy_dir = shutil.copytree(sample_manifest, tmp_path / "m")
    result = CliRunner().invoke(export_croissant, [str(copy_dir)])
    assert result.exit_code == 0, result.output
    doc = json.loads((copy_dir / "croissant.json").read_text())
    assert any(o["contentUrl"] == "shards.parquet" for o in doc["distribution"])
