"""``filters: {dedup: exact | minhash}``: the build removes planted copies (the duplicates audit's corpus),
records each as ``filtered``/``duplicate`` naming the kept first copy, balances per shard, gives the same
manifest at any worker count and under Beam, and the stream never yields a removed document. Oracles: brute
force over the texts (normalized words, word 5-gram Jaccard) in manifest order, independent of the hashing and
of MinHash."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
from export_fixtures import trained_run  # noqa: F401 (a fixture)
from planted_corpus import jaccard, ngrams, planted_duplicates, words_of, write_mixture

from elm_data.core.errors import ElmDataError
from elm_data.manifests.build import build_manifest
from elm_data.manifests.duplicates import DedupSettings, audit_duplicates
from elm_data.manifests.manifest import Manifest, data_files
from elm_data.sources.document import derived_doc_id

pytest.importorskip("datasketch", reason="the dedup extra: pip install 'elm-data[dedup]'")

# the filter's Jaccard threshold; ~3 standard errors of a 128-permutation estimate
THRESHOLD, MARGIN = 0.8, 0.1


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tokenizer_path):
    """The planted shards, their documents in manifest order ``(shard, index, doc id, text)``, and a manifest
    built without dedup, with ``exact`` and with ``minhash`` (one worker each)."""
    root = tmp_path_factory.mktemp("dedup")
    shards = planted_duplicates()
    built = {}
    for mode in (None, "exact", "minhash"):
        mixture = write_mixture(root, shards, name=f"mixture-{mode}", **({"dedup": mode} if mode else {}))
        build_manifest(mixture, root / f"manifest-{mode}", tokenizer=tokenizer_path, workers=1)
        built[mode] = root / f"manifest-{mode}"
    docs, shard = [], 0
    for subset, subset_shards in shards.items():
        for s, texts in enumerate(subset_shards):
            sha = hashlib.sha256(
                (root / "redpajama" / subset / f"{subset}-{s:05d}.jsonl").read_bytes()
            ).hexdigest()
            docs.extend((shard, i, derived_doc_id(sha, i), t) for i, t in enumerate(texts))
            shard += 1
    return root, docs, built


def _rows(manifest: Path) -> dict[tuple[int, int], dict]:
    m = Manifest(manifest)
    return {(r["shard"], r["index"]): r for s in m.shards for r in m.documents(s.shard).to_pylist()}


def _removed(manifest: Path) -> dict[str, str]:
    """``{doc id: duplicate_of}`` of the ledger's duplicate rows."""
    return {r["doc_id"]: r["duplicate_of"] for r in _rows(manifest).values() if r["reason"] == "duplicate"}


def test_exact_dedup_removes_every_later_copy_of_a_normalized_text(planted):
    _, docs, built = planted
    first: dict[tuple[str, ...], str] = {}
    # brute force in manifest order: a text seen before is removed as a copy of its first holder
    expected = {}
    for _, _, doc_id, text in docs:
        words = tuple(words_of(text))
        if words in first:
            expected[doc_id] = first[words]
        else:
            first[words] = doc_id
    assert len(expected) == 3  # the exact copies planted (one upper-cased, with a "!")
    assert _removed(built["exact"]) == expected
    base, rows = _rows(built[None]), _rows(built["exact"])
    for key, row in rows.items():  # everything else is as the build without dedup left it
        if row["reason"] != "duplicate":
            assert row == base[key]
        else:
            assert (row["status"], row["tokens"], row["segments"]) == ("filtered", 0, 0)
            assert row["chars"] == base[key]["chars"] and base[key]["status"] == "kept"


def test_minhash_dedup_against_brute_force_jaccard(planted):
    _, docs, built = planted
    sets = [ngrams(words_of(text), 5) for *_, text in docs]
    order = {doc_id: n for n, (_, _, doc_id, _) in enumerate(docs)}
    removed = _removed(built["minhash"])
    kept = {r["doc_id"] for r in _rows(built["minhash"]).values() if r["status"] == "kept"}
    for j in range(len(docs)):
        best = max((jaccard(sets[i], sets[j]) for i in range(j)), default=0.0)
        doc_id = docs[j][2]
        if best >= THRESHOLD + MARGIN:  # recall: a clear near copy of an earlier document goes
            assert doc_id in removed, (j, best)
        # precision: only documents near an earlier one go, as copies of a kept earlier one
        if doc_id in removed:
            assert best >= THRESHOLD - MARGIN, (j, best)
            assert removed[doc_id] in kept and order[removed[doc_id]] < j
    assert len(removed) > len(_removed(built["exact"]))
    # the audit's own count
    audit = audit_duplicates(Manifest(built[None]), DedupSettings()).to_json()["totals"]
    assert len(removed) == audit["near_redundant"]


@pytest.mark.parametrize("mode", ["exact", "minhash"])
def test_a_deduplicated_manifest_balances_per_shard(planted, mode):
    _, _, built = planted
    base, dedup = Manifest(built[None]), Manifest(built[mode])
    assert dedup.ledger_problems() == []
    for b, d in zip(base.shards, dedup.shards, strict=True):
        rows = dedup.documents(d.shard).to_pylist()
        gone = [r for r in rows if r["reason"] == "duplicate"]
        assert d.docs_read == d.docs_kept + d.docs_filtered + d.docs_rejected == b.docs_read == len(rows)
        assert d.filtered_by_reason.get("duplicate", 0) == len(gone) == b.docs_kept - d.docs_kept
        base_rows = {r["index"]: r for r in base.documents(b.shard).to_pylist()}
        assert b.tokens - d.tokens == sum(base_rows[r["index"]]["tokens"] for r in gone)
        assert all((r["duplicate_of"] is None) == (r["reason"] != "duplicate") for r in rows)
    assert dedup.info["filters"]["dedup"] == mode and dedup.info["pass"]["dedup"]["mode"] == mode
    assert len({base.manifest_id, dedup.manifest_id}) == 2


@pytest.mark.slow
def test_exact_dedup_at_two_workers_gives_the_same_manifest(planted, tokenizer_path, tmp_path):
    root, _, built = planted
    out = tmp_path / "two"
    build_manifest(root / "mixture-exact.yaml", out, tokenizer=tokenizer_path, workers=2)
    assert Manifest(out).manifest_id == Manifest(built["exact"]).manifest_id
    for name in data_files(out):
        assert (out / name).read_bytes() == (built["exact"] / name).read_bytes(), name


@pytest.mark.slow  # two worker processes, then a Beam pipeline: seconds each
def test_minhash_dedup_is_the_same_at_two_workers_and_under_beam(planted, tokenizer_path, tmp_path):
    root, _, built = planted
    for name, kwargs in (("two", {"workers": 2}), ("beam", {"runner": "beam"})):
        out = tmp_path / name
        build_manifest(root / "mixture-minhash.yaml", out, tokenizer=tokenizer_path, **kwargs)
        assert Manifest(out).manifest_id == Manifest(built["minhash"]).manifest_id, name
        for file in data_files(out):
            assert (out / file).read_bytes() == (built["minhash"] / file).read_bytes(), (name, file)


def test_the_stream_never_yields_a_removed_document(planted, tokenizer_path):
    from elm_data.pipeline.stream.dataset import TokenStream

    _, _, built = planted
    manifest = Manifest(built["minhash"])
    sha = {s.shard: s.sha256 for s in manifest.shards}
    rows = _rows(built["minhash"])
    removed = {(sha[s], i) for (s, i), r in rows.items() if r["reason"] == "duplicate"}
    kept = {(sha[s], i) for (s, i), r in rows.items() if r["status"] == "kept"}
    stream = TokenStream(built["minhash"], batch_size=4, seq_len=256, tokenizer=tokenizer_path)
    seen = {
        (span["shard_sha256"], span["index"])
        for batch in stream
        for spans in batch["spans"]
        for span in spans
    }
    assert removed and seen == kept and not seen & removed


def test_a_dedup_mode_that_does_not_exist_is_one_line(planted, tokenizer_path, tmp_path):
    root, _, _ = planted
    mixture = (root / "mixture-exact.yaml").read_text().replace("dedup: exact", "dedup: fuzzy")
    (tmp_path / "bad.yaml").write_text(mixture)
    with pytest.raises(ElmDataError, match=r"filters\.dedup: expected one of 'exact', 'minhash'"):
        build_manifest(tmp_path / "bad.yaml", tmp_path / "out", tokenizer=tokenizer_path)


def test_minhash_without_datasketch_is_refused_before_a_shard_is_read(
    planted, tokenizer_path, tmp_path, monkeypatch
):
    from elm_data.manifests.dedup_filter import signer_for
    from elm_data.manifests.duplicates import MissingDependency

    root, _, _ = planted
    signer_for.cache_clear()
    monkeypatch.setitem(sys.modules, "datasketch", None)  # import datasketch -> ImportError
    with pytest.raises(MissingDependency, match=r"pip install 'elm-data\[dedup\]'"):
        build_manifest(root / "mixture-minhash.yaml", tmp_path / "out", tokenizer=tokenizer_path)
    assert not (tmp_path / "out.partial").exists()
    signer_for.cache_clear()


# ------------------------------------------------------------------ what the card and the Croissant export
# carry
def test_croissant_carries_the_dedup_counts_and_the_audits_bound_to_the_manifest(planted, tmp_path):
    from click.testing import CliRunner

    from elm_data.manifests.audit_store import mix_summary
    from elm_data.manifests.cli import duplicates as duplicates_command
    from elm_data.manifests.croissant import croissant_metadata

    _, _, built = planted
    manifest = tmp_path / "m"
    shutil.copytree(built["minhash"], manifest)
    removed = len(_removed(manifest))
    summary = mix_summary(Manifest(manifest))
    assert summary == {
        "dedup_filter": {
            "mode": "minhash",
            "threshold": THRESHOLD,
            "removed_documents": removed,
            "documents_kept": sum(r["status"] == "kept" for r in _rows(manifest).values()),
        }
    }
    result = CliRunner().invoke(duplicates_command, [str(manifest), "--format", "json", "--save"])
    assert result.exit_code == 0, result.output
    stored = manifest / "audits" / "duplicates.json"
    assert stored.read_text() == result.stdout  # exactly what --format json prints
    sha = hashlib.sha256(stored.read_bytes()).hexdigest()
    report = json.loads(stored.read_text())
    audit = mix_summary(Manifest(manifest))["duplicates_audit"]
    assert audit["sha256"] == sha and audit["near_redundant"] == report["totals"]["near_redundant"]
    metadata = croissant_metadata(manifest)
    assert f"{removed} documents removed" in " ".join(metadata["rai:dataPreprocessingProtocol"])
    assert f"sha256 {sha}" in metadata["rai:dataLimitations"]
    assert {"@id": "audit-duplicates", "sha256": sha}.items() <= next(
        f for f in metadata["distribution"] if f["@id"] == "audit-duplicates"
    ).items()
    # bound to the id: the same report beside another manifest is not used
    other = tmp_path / "other"
    shutil.copytree(built["exact"], other)
    (other / "audits").mkdir()
    shutil.copy(stored, other / "audits" / "duplicates.json")
    assert "duplicates_audit" not in mix_summary(Manifest(other))
    assert all(f["@id"] != "audit-duplicates" for f in croissant_metadata(other)["distribution"])


def test_a_saved_contamination_audit_is_summarized_and_a_run_audit_is_not_saved(planted, tmp_path):
    from elm_data.cli import run
    from elm_data.manifests.audit_store import mix_summary

    _, docs, built = planted
    manifest = tmp_path / "m"
    shutil.copytree(built[None], manifest)
    items = tmp_path / "items.jsonl"
    copied = " ".join(docs[0][3].split()[:30])
    items.write_text(
        json.dumps({"id": "a", "text": copied}) + "\n" + json.dumps({"id": "b", "text": "x " * 30}) + "\n"
    )
    assert run(["audit", "contamination", str(manifest), "--tasks", str(items), "--save"]) == 0
    task = mix_summary(Manifest(manifest))["contamination_audit"]["tasks"]["items"]
    grams = ngrams(words_of(copied), 13)
    # brute force over the texts
    holders = {d for _, _, d, text in docs if ngrams(words_of(text), 13) & grams}
    assert task["items"] == 2 and task["contaminated_items"] == 1 and task["documents"] == len(holders) >= 1
    assert "dedup_filter" not in mix_summary(Manifest(manifest))  # built without dedup: nothing claimed
    assert (
        run(
            ["audit", "contamination", str(manifest), "--tasks", str(items), "--save", "--run", str(tmp_path)]
        )
        == 2
    )


@pytest.mark.slow  # a trained run (shared with the export tests)
def test_the_model_card_says_what_is_known_of_duplicates_and_contamination(trained_run):  # noqa: F811
    import yaml

    from elm_data.manifests.audit_store import save_audit
    from elm_data.trainer.core.runlog import read_log
    from elm_data.trainer.export.hf import checkpoint_card, newest_checkpoint, run_of

    # the session's sample manifest: restored below
    manifest = Manifest(read_log(trained_run)[0]["manifest_dir"])
    run = run_of(newest_checkpoint(trained_run))
    card = checkpoint_card(run)["README.md"]
    assert "No dedup filter, and no audit stored with this manifest" in card
    assert "mix" not in yaml.safe_load(card.split("---\n")[1])["elm_data"]
    try:
        report = audit_duplicates(manifest, DedupSettings(near=False)).to_json()
        stored = save_audit(manifest, "duplicates", report)
        card = checkpoint_card(run)["README.md"]
        sha = hashlib.sha256(stored.read_bytes()).hexdigest()
        mix = yaml.safe_load(card.split("---\n")[1])["elm_data"]["mix"]
        assert mix["duplicates_audit"]["sha256"] == sha and "No dedup filter" not in card
        documents = report["totals"]["documents"]
        said = f"- Duplicates audit (audits/duplicates.json, sha256 {sha}): of {documents:,} kept"
        assert said in card
    finally:
        shutil.rmtree(manifest.path / "audits", ignore_errors=True)


@pytest.mark.slow  # mlcroissant: importing it takes seconds
def test_mlcroissant_validates_an_export_with_the_dedup_filter_and_a_stored_audit(planted, tmp_path):
    mlc = pytest.importorskip("mlcroissant")
    from elm_data.manifests.audit_store import save_audit
    from elm_data.manifests.croissant import export_croissant

    _, _, built = planted
    manifest = tmp_path / "m"
    shutil.copytree(built["minhash"], manifest)
    save_audit(Manifest(manifest), "duplicates", audit_duplicates(Manifest(manifest)).to_json())
    dataset = mlc.Dataset(jsonld=str(export_croissant(manifest, tmp_path / "out" / "c.json")))
    assert not dataset.metadata.ctx.issues.errors and not dataset.metadata.ctx.issues.warnings
    kept = Manifest(manifest).info["totals"]["docs_kept"]
    assert sum(r["shards/docs_kept"] for r in dataset.records("shards")) == kept


def test_an_interrupted_dedup_build_resumes_from_its_committed_signatures(planted, tokenizer_path, tmp_path):
    """Committed shards (ledger + signatures) are reused; one whose signatures file was lost is counted again;
    the manifest is the one an uninterrupted build writes."""
    root, _, built = planted
    out = tmp_path / "m"

    def stop_after_the_first(outcome):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_manifest(
            root / "mixture-minhash.yaml", out, tokenizer=tokenizer_path, on_shard_done=stop_after_the_first
        )
    partial = tmp_path / "m.partial"
    assert sorted(p.name for p in partial.glob("*.dedup.parquet")) == ["shard-00000.dedup.parquet"]
    result = build_manifest(root / "mixture-minhash.yaml", out, tokenizer=tokenizer_path)
    assert result.shards_reused == 1 and result.manifest_id == Manifest(built["minhash"]).manifest_id
    with pytest.raises(KeyboardInterrupt):
        build_manifest(
            root / "mixture-minhash.yaml",
            tmp_path / "n",
            tokenizer=tokenizer_path,
            on_shard_done=stop_after_the_first,
        )
    (tmp_path / "n.partial" / "shard-00000.dedup.parquet").unlink()
    result = build_manifest(root / "mixture-minhash.yaml", tmp_path / "n", tokenizer=tokenizer_path)
    assert result.shards_reused == 0 and result.manifest_id == Manifest(built["minhash"]).manifest_id


def test_on_a_deduplicated_manifest_the_fast_consumers_read_only_what_the_table_lists(planted):
    """The coverage table (docs/ARCHITECTURE.md) holds for a manifest built with dedup too: its ``pass.dedup``
    and ``duplicate_of`` are read only where the table says, under the checks it names."""
    from record_reads import recording
    from test_record_coverage import FAST_CONSUMERS, check_reads_against_table

    _, _, built = planted
    read_by = {}
    for name, consumer in FAST_CONSUMERS.items():
        with recording() as reads:
            consumer(built["minhash"])
        read_by[name] = set(reads)
    assert "pass.dedup.mode" in read_by["croissant"]
    check_reads_against_table(read_by)
