"""Weighted deterministic mixing and the plan (global order of documents and batches), from manifests alone."""

from __future__ import annotations

import random
from collections import Counter
from itertools import islice

import pyarrow as pa
import pytest

from elm_data.manifests.manifest import FORMAT_VERSION, Manifest, ShardRecord, write_manifest_dir
from elm_data.pipeline.mixing import permutation, proportional_interleave, weighted_interleave
from elm_data.pipeline.plan import Plan, PlanConfig, PlanError


def synthetic_manifest(path, layout: dict[str, list[int]], *, mode="packed", seed=0, weights=None):
    """A manifest with ``layout[key][i]`` records in shard i of source ``key``; about 1 in 5 is filtered.

    Kept documents get 50-400 tokens (1-3 segments in corenet mode). Written with the real schema.
    """
    rng = random.Random(path.name)  # the data depend on the name given, not on the temp folder
    records, tables, shard = [], [], 0
    for key, sizes in layout.items():
        source, subset = key.split("/")
        for n in sizes:
            rows = []
            for i in range(n):
                kept = rng.random() > 0.2
                tokens = rng.randint(50, 400) if kept else 0
                segments = (rng.randint(1, 3) if mode == "corenet" else 1) if kept else 0
                rows.append({"shard": shard, "index": i, "doc_id": f"{key}:{shard}:{i}",
                             "status": "kept" if kept else "filtered", "reason": None if kept else "min_tokens",
                             "count": 1, "chars": 1000, "tokens": tokens, "segments": segments})
            tables.append(pa.Table.from_pylist(rows))
            records.append(ShardRecord(
                shard=shard, source=source, subset=subset, uri=f"/nowhere/{shard}.jsonl", size_bytes=0,
                sha256=f"{shard:064x}", licence="test", docs_read=n,
                docs_kept=sum(r["status"] == "kept" for r in rows),
                docs_filtered=sum(r["status"] != "kept" for r in rows),
                tokens=sum(r["tokens"] for r in rows), segments=sum(r["segments"] for r in rows)))
            shard += 1
    mixture = [{"source": k.split("/")[0], "subset": k.split("/")[1], "weight": (weights or {}).get(k)} for k in layout]
    info = {"format_version": FORMAT_VERSION, "manifest_id": f"test-{path.name}", "seed": seed,
            "sequences": {"mode": mode, "seq_len": 2048}, "filters": {}, "mixture": mixture,
            "tokenizer": {"uri": "unused", "sha256": "unused"}}
    return Manifest(write_manifest_dir(path, info, records, tables))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return synthetic_manifest(tmp_path_factory.mktemp("m") / "manifest",
                              {"a/x": [40, 35, 30], "b/y": [25], "c/z": [10, 12]})


def kept_keys(manifest: Manifest) -> Counter:
    docs = manifest.all_documents().to_pylist()
    return Counter((d["shard"], d["index"]) for d in docs if d["status"] == "kept")


def test_natural_interleave_yields_each_item_once_and_is_seeded():
    sources = [lambda e, n=n: iter(range(n)) for n in (50, 20, 5)]
    first = list(weighted_interleave(sources, [5, 2, 1], seed=1, restart=False))
    assert Counter(first) == Counter((s, i) for s, n in enumerate((50, 20, 5)) for i in range(n))
    assert first == list(weighted_interleave(sources, [5, 2, 1], seed=1, restart=False))
    assert first != list(weighted_interleave(sources, [5, 2, 1], seed=2, restart=False))
    # within a source, items keep their order
    assert [i for s, i in first if s == 0] == list(range(50))


def test_weighted_interleave_restarts_sources_and_follows_weights():
    epochs_seen = Counter()

    def source(epoch, n):
        epochs_seen[(n, epoch)] += 1
        return iter(range(n))

    sources = [lambda e, n=n: source(e, n) for n in (7, 3, 11)]
    draws = [s for s, _ in islice(weighted_interleave(sources, [0.5, 0.3, 0.2], seed=3, restart=True), 6000)]
    counts = Counter(draws)
    for src, weight in enumerate((0.5, 0.3, 0.2)):
        assert counts[src] / 6000 == pytest.approx(weight, abs=0.025)
    assert epochs_seen[(3, 500)] == 1  # the 3-item source went through hundreds of epochs


def test_weighted_interleave_rejects_bad_weights():
    with pytest.raises(ValueError, match="no items"):
        list(islice(weighted_interleave([lambda e: iter(()), lambda e: iter(range(3))], [1, 1], seed=0, restart=True),
                    100))
    drawn = islice(weighted_interleave([lambda e: iter(range(5)), lambda e: iter(range(5))], [0, 1], seed=0,
                                       restart=True), 100)
    assert {s for s, _ in drawn} == {1}
    with pytest.raises(ValueError):
        next(weighted_interleave([lambda e: iter(())], [-1], seed=0, restart=True))


def test_permutation_is_seeded():
    assert sorted(permutation(10, 0, "a", 1)) == list(range(10))
    assert permutation(10, 0, "a", 1) == permutation(10, 0, "a", 1)
    assert permutation(10, 0, "a", 1) != permutation(10, 0, "a", 2)


def test_natural_plan_covers_every_kept_document_once_in_shard_order(manifest):
    plan = Plan(manifest, PlanConfig(mode="packed", seq_len=128, batch_size=4, seed=0))
    docs = list(plan.docs())
    assert Counter((d.shard, d.index) for d in docs) == kept_keys(manifest)
    assert docs[0].start == 0
    assert all(b.start == a.start + a.units for a, b in zip(docs, docs[1:], strict=False))
    assert all(d.units == d.tokens + 2 for d in docs)
    for src in range(len(plan.sources)):
        mine = [(d.shard, d.index) for d in docs if d.src == src]
        assert mine == sorted(mine)
    # deterministic, and sources are interleaved rather than concatenated
    assert docs == list(Plan(manifest, PlanConfig(mode="packed", seq_len=128, batch_size=4, seed=0)).docs())
    assert docs[:20] != sorted(docs[:20], key=lambda d: d.shard)


def test_natural_plan_epochs_repeat_with_new_order(manifest):
    one = list(Plan(manifest, PlanConfig(mode="packed", seq_len=128, batch_size=4, seed=0)).docs())
    two = list(Plan(manifest, PlanConfig(mode="packed", seq_len=128, batch_size=4, seed=0, epochs=2)).docs())
    assert len(two) == 2 * len(one)
    assert Counter((d.shard, d.index) for d in two[len(one):]) == kept_keys(manifest)
    assert [(d.shard, d.index) for d in two[len(one):]] != [(d.shard, d.index) for d in one]
    # source a's shards are permuted in epoch 1
    plan = Plan(manifest, PlanConfig(mode="packed", seq_len=128, batch_size=4, seed=0))
    orders = {tuple(plan.shard_order(0, e)) for e in range(1, 6)}
    assert plan.shard_order(0, 0) == [0, 1, 2] and len(orders) > 1


def test_weighted_plan_token_shares_over_a_long_run(manifest):
    weights = {"a/x": 0.2, "b/y": 0.5, "c/z": 0.3}
    plan = Plan(manifest, PlanConfig(mode="packed", seq_len=128, batch_size=4, seed=7, weights=weights))
    keys = [s.key for s in plan.sources]
    n = 3000  # far beyond one epoch of b/y (~20 kept) and c/z (~18 kept): they restart
    docs = list(islice(plan.docs(), n))
    tokens = Counter()
    for d in docs:
        tokens[keys[d.src]] += d.units
    for key, weight in weights.items():  # weights are shares of the tokens fed
        assert tokens[key] / sum(tokens.values()) == pytest.approx(weight, abs=0.03), (key, tokens)
    by = [(d.shard, d.index) for d in docs if keys[d.src] == "b/y"]
    kept_b = sum(1 for (s, _) in kept_keys(manifest) if s == 3)
    assert by[:kept_b] == by[kept_b: 2 * kept_b]  # a one-shard source repeats in shard order


def test_natural_plan_spreads_every_source_over_the_whole_epoch(manifest):
    plan = Plan(manifest, PlanConfig(mode="packed", seq_len=128, batch_size=4, seed=0))
    docs = list(plan.docs())
    last_tenth = {d.src for d in docs[-len(docs) // 10:]}
    first_tenth = {d.src for d in docs[: len(docs) // 10]}
    assert first_tenth == last_tenth == set(range(len(plan.sources)))


def test_manifest_weights_are_the_default(tmp_path):
    m = synthetic_manifest(tmp_path / "w", {"a/x": [30], "b/y": [30]}, weights={"a/x": 3, "b/y": 1})
    from elm_data.pipeline.plan import manifest_weights

    assert manifest_weights(m.info) == {"a/x": 3.0, "b/y": 1.0}


def test_plan_rejects_unknown_weights_and_missing_corenet_counts(manifest):
    with pytest.raises(PlanError, match="not in the manifest"):
        Plan(manifest, PlanConfig(mode="packed", seq_len=128, batch_size=4, seed=0, weights={"nope/x": 1}))
    with pytest.raises(PlanError, match=r"sequences: \{mode: corenet\}"):
        Plan(manifest, PlanConfig(mode="corenet", seq_len=128, batch_size=4, seed=0))


@pytest.mark.parametrize("mode", ["packed", "corenet"])
def test_batches_partition_over_ranks_and_workers(tmp_path, mode):
    m = synthetic_manifest(tmp_path / mode, {"a/x": [30, 20], "b/y": [25]}, mode=mode)
    config = PlanConfig(mode=mode, seq_len=127, batch_size=3, seed=0)
    plan = Plan(m, config)
    everything = list(plan.batches())
    total = sum(d.units for d in plan.docs())
    span = plan.units_per_batch
    assert [b.batch for b in everything] == list(range(-(-total // span)))
    assert all(b.sequences == config.batch_size for b in everything[:-1])
    for bp in everything:  # the documents of a batch cover its units exactly
        covered = sum(min(d.start + d.units, bp.start + span) - max(d.start, bp.start) for d in bp.docs)
        assert covered == min(span, total - bp.start)
    owned = []
    world, workers = 2, 2
    for rank in range(world):
        for worker in range(workers):
            def owns(b, rank=rank, worker=worker):
                return b % world == rank and (b // world) % workers == worker
            owned += [(b.batch, [d[:4] for d in b.docs]) for b in plan.batches(owns)]
    assert sorted(owned) == [(b.batch, [d[:4] for d in b.docs]) for b in everything]
    resumed = list(plan.batches(start_batch=5))
    assert [(b.batch, b.docs) for b in resumed] == [(b.batch, b.docs) for b in everything[5:]]


@pytest.mark.parametrize("counts", [[40, 7, 1], [120, 120, 3, 55], [1], [0, 5]])
def test_proportional_interleave_yields_everything_once_spread_evenly(counts):
    sources = [[(i, k) for k in range(n)] for i, n in enumerate(counts)]
    out = list(proportional_interleave([iter(s) for s in sources], counts, seed=7))
    assert sorted(item for _, item in out) == sorted(item for s in sources for item in s)
    for i, s in enumerate(sources):
        assert [item for src, item in out if src == i] == s  # each source keeps its own order
    total, drawn = sum(counts), [0] * len(counts)
    for m, (src, _) in enumerate(out, start=1):
        drawn[src] += 1
        for i, n in enumerate(counts):  # any prefix holds its natural share, give or take the bound
            assert abs(drawn[i] - m * n / total) <= 1 + len(counts) * n / total
    again = list(proportional_interleave([iter(s) for s in sources], counts, seed=7))
    assert again == out


def test_proportional_interleave_depends_on_the_seed_and_checks_counts():
    make = lambda: [iter(range(30)), iter(range(20)), iter(range(10))]  # noqa: E731
    one, two = (list(proportional_interleave(make(), [30, 20, 10], seed)) for seed in (1, 2))
    assert one != two
    with pytest.raises(ValueError, match="ended after 20 of its 21"):
        list(proportional_interleave(make(), [30, 21, 10], 1))
    with pytest.raises(ValueError, match="more than its 9"):
        list(proportional_interleave(make(), [30, 20, 9], 1))
