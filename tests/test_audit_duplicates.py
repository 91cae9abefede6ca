"""`elm-data audit duplicates`: planted exact copies and edited copies at several similarity levels are found,
with recall and precision measured against brute-force Jaccard over the same shingles (word 5-grams)."""

from __future__ import annotations

import hashlib
import json

import pytest
from click.testing import CliRunner
from planted_corpus import jaccard, ngrams, planted_duplicates, words_of, write_corpus

from elm_data.manifests.cli import duplicates as duplicates_command
from elm_data.manifests.duplicates import DedupSettings, audit_duplicates
from elm_data.manifests.manifest import Manifest
from elm_data.sources.document import derived_doc_id

pytest.importorskip("datasketch", reason="the dedup extra: pip install 'elm-data[dedup]'")

MARGIN = 0.1  # ~3 standard errors of a 128-permutation MinHash estimate


@pytest.fixture(scope="module")
def dup_corpus(tmp_path_factory, tokenizer_path):
    """c4 and wikipedia shards: originals, and copies of some at each edit rate, within and across subsets."""
    shards = planted_duplicates()
    root = tmp_path_factory.mktemp("dups")
    manifest = write_corpus(root, shards, tokenizer_path)
    docs = []  # (subset key, doc id, text) in manifest order
    for subset, subset_shards in shards.items():
        for s, texts in enumerate(subset_shards):
            sha = hashlib.sha256(
                (root / "redpajama" / subset / f"{subset}-{s:05d}.jsonl").read_bytes()
            ).hexdigest()
            docs.extend((f"redpajama/{subset}", derived_doc_id(sha, i), t) for i, t in enumerate(texts))
    return manifest, docs


def _truth(docs, threshold: float, shingle: int = 5) -> tuple[set, set]:
    """Brute force over every pair: (pairs with Jaccard >= threshold, pairs with identical normalized
    words)."""
    words = [words_of(t) for _, _, t in docs]
    sets = [ngrams(w, shingle) for w in words]
    near = {
        (i, j)
        for i in range(len(docs))
        for j in range(i + 1, len(docs))
        if jaccard(sets[i], sets[j]) >= threshold
    }
    exact = {(i, j) for i in range(len(docs)) for j in range(i + 1, len(docs)) if words[i] == words[j]}
    return near, exact


@pytest.mark.parametrize("threshold", [0.8, 0.5])
def test_planted_duplicates_against_brute_force_jaccard(dup_corpus, threshold):
    manifest, docs = dup_corpus
    result = audit_duplicates(Manifest(manifest), DedupSettings(threshold=threshold))
    # every kept doc, in order
    assert [(r.key, r.doc_id) for r in result.docs] == [(k, d) for k, d, _ in docs]
    near, exact = _truth(docs, threshold)
    found = result.duplicate_pairs()
    # exact: exactly
    assert {(i, j) for i, j in found if result.docs[i].exact == result.docs[j].exact} == exact
    recall = len(found & near) / len(near)
    precision = len(found & near) / len(found)
    # MinHash estimates J with a standard error of ~sqrt(J(1-J)/128) ~ 0.035 near 0.8: pairs within a margin
    # of the threshold fall either way; outside it, none may be missed or wrongly found
    clear, fair = _truth(docs, threshold + MARGIN)[0], _truth(docs, threshold - MARGIN)[0]
    print(
        f"threshold {threshold}: {len(near)} true pairs, recall {recall:.3f}, precision {precision:.3f}; "
        f"recall of pairs >= {threshold + MARGIN:.2f}: {len(found & clear) / len(clear):.3f}, "
        f"precision vs >= {threshold - MARGIN:.2f}: {len(found & fair) / len(found):.3f}"
    )
    assert len(near) >= 15 and recall >= 0.7 and precision >= 0.9
    assert clear <= found <= fair
    unrelated = {
        (i, j)
        for i, j in found
        if jaccard(ngrams(words_of(docs[i][2]), 5), ngrams(words_of(docs[j][2]), 5)) < 0.3
    }
    assert not unrelated  # nothing unlike is ever paired


@pytest.mark.slow
def test_two_workers_give_the_one_worker_clusters(dup_corpus):
    one, two = (audit_duplicates(Manifest(dup_corpus[0]), workers=w) for w in (1, 2))
    assert (one.docs, one.near_pairs, one.cluster_of) == (two.docs, two.near_pairs, two.cluster_of)
    assert one.to_json() == two.to_json() and one.near_pairs


def test_report_rates_overlap_and_clusters_follow_the_clusters(dup_corpus, tmp_path):
    manifest, docs = dup_corpus
    out = CliRunner().invoke(
        duplicates_command, [str(manifest), "--format", "json", "--plot", str(tmp_path / "d.png")]
    )
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["manifest_id"] == Manifest(manifest).manifest_id and (tmp_path / "d.png").stat().st_size > 0
    result = audit_duplicates(Manifest(manifest))
    by_key: dict[str, list[int]] = {}
    for n, row in enumerate(result.docs):
        by_key.setdefault(row.key, []).append(n)
    for key, members in by_key.items():
        distinct = len({result.cluster_of[n] for n in members})
        exact_distinct = len({words_of(docs[n][2]).__repr__() for n in members})
        cell = report["subsets"][key]
        assert cell["near_redundant"] == len(members) - distinct
        assert cell["exact_redundant"] == len(members) - exact_distinct
        for other in by_key:
            if other != key:
                clusters = {result.cluster_of[n] for n in by_key[other]}
                assert report["overlap"][key][other] == sum(result.cluster_of[n] in clusters for n in members)
    assert report["overlap"]["redpajama/c4"]["redpajama/wikipedia"] > 0  # copies were planted across subsets
    largest = report["largest_clusters"][0]
    assert largest["size"] == max(report["largest_clusters"], key=lambda c: c["size"])["size"] >= 3
    exact_only = audit_duplicates(Manifest(manifest), DedupSettings(near=False)).to_json()
    assert exact_only["totals"]["exact_redundant"] == report["totals"]["exact_redundant"] > 0
    assert exact_only["totals"]["near_pairs"] == 0


def test_without_datasketch_the_command_gives_the_pip_line(dup_corpus, monkeypatch, capsys):
    import sys

    from elm_data.cli import run

    monkeypatch.setitem(sys.modules, "datasketch", None)  # import datasketch -> ImportError
    code = run(["audit", "duplicates", str(dup_corpus[0])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install 'elm-data[dedup]'" in err[0], err
