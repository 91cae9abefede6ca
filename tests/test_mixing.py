"""Deterministic, resumable mixing and the plan (partitions, their documents and batches), from manifests
alone."""

from __future__ import annotations

from collections import Counter
from itertools import islice

import pytest
from synthetic_manifest import synthetic_manifest

from elm_data.manifests.manifest import Manifest
from elm_data.pipeline.stream.mixing import WeightedDraws, permutation, proportional_draws
from elm_data.pipeline.stream.partition import PartitionWalk
from elm_data.pipeline.stream.plan import Plan, PlanConfig, PlanError, manifest_weights

P = 2  # partitions of the shared manifest: each holds about half of every source
LAYOUT = {"a/x": [80, 70, 60], "b/y": [50], "c/z": [20, 24]}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Manifest:
    return synthetic_manifest(tmp_path_factory.mktemp("m") / "manifest", LAYOUT)


def config(**kw) -> PlanConfig:
    return PlanConfig(
        **({"mode": "packed", "seq_len": 128, "batch_size": 4, "seed": 0, "partitions": P} | kw)
    )


def kept_keys(manifest: Manifest) -> Counter:
    docs = manifest.all_documents().to_pylist()
    return Counter((d["shard"], d["index"]) for d in docs if d["status"] == "kept")


def owned_keys(plan: Plan, p: int) -> set[tuple[int, int]]:
    """Kept documents of the blocks partition ``p`` owns, read from the ledger."""
    out = set()
    for run in plan.units[p]:
        for u in run:
            for b in u.blocks:
                rows = plan.manifest.block_documents(u.shard, b).to_pylist()
                out |= {(r["shard"], r["index"]) for r in rows if r["status"] == "kept"}
    return out


def partition_docs(plan: Plan, p: int, limit: int | None = None) -> list:
    walk = PartitionWalk(plan, p)
    return [d for d, _ in islice(walk.docs(walk.start()), limit)]


def partition_batches(plan: Plan, p: int, cursor=None, limit: int | None = None) -> list:
    walk = PartitionWalk(plan, p)
    return list(islice(walk.batches(walk.start() if cursor is None else cursor), limit))


def key(d) -> tuple[int, int]:
    return d.shard, d.index


# -- proportional_draws ------------------------------------------------------------------------------


@pytest.mark.parametrize("counts", [[40, 7, 1], [120, 120, 3, 55], [1], [0, 5]])
def test_proportional_draws_yield_everything_once_spread_evenly(counts):
    out = list(proportional_draws(counts, seed=7))
    assert Counter(out) == Counter({i: n for i, n in enumerate(counts) if n})
    total, drawn = sum(counts), [0] * len(counts)
    for m, src in enumerate(out, start=1):
        drawn[src] += 1
        for i, n in enumerate(counts):  # any prefix holds its natural share, give or take the bound
            assert abs(drawn[i] - m * n / total) <= 1 + len(counts) * n / total
    assert list(proportional_draws(counts, seed=7)) == out


def test_proportional_draws_depend_on_the_seed_and_check_the_state():
    one, two = (list(proportional_draws([30, 20, 10], seed)) for seed in (1, 2))
    assert one != two and Counter(one) == Counter(two)
    for bad in ([0, 21, 0], [0, 0], [-1, 0, 0]):
        with pytest.raises(ValueError, match="does not fit"):
            next(proportional_draws([30, 20, 10], 1, bad))
    assert list(proportional_draws([30, 20, 10], 1, [30, 20, 10])) == []


@pytest.mark.parametrize("counts", [[40, 7, 1], [120, 120, 3, 55], [0, 5], [13, 13]])
def test_proportional_draws_resume_from_any_prefix_exactly(counts):
    full = list(proportional_draws(counts, seed=11))
    drawn = [0] * len(counts)
    for m in range(len(full) + 1):
        assert list(proportional_draws(counts, 11, drawn)) == full[m:], m
        if m < len(full):
            drawn[full[m]] += 1


# -- WeightedDraws -----------------------------------------------------------------------------------


def test_weighted_draws_are_a_pure_function_of_weights_seed_and_position():
    weights = [0.5, 0.3, 0.2]
    n = 3000  # several seeded blocks of uniforms
    shared = WeightedDraws(weights, 3)
    forward = [shared.source_at(i) for i in range(n)]
    # fresh instances
    assert all(WeightedDraws(weights, 3).source_at(i) == forward[i] for i in range(0, n, 97))
    jumps = WeightedDraws(weights, 3)  # random access (backwards, across blocks) gives the same draws
    for i in [2999, 0, 2048, 1023, 1024, 3, 2500, 17]:
        assert jumps.source_at(i) == forward[i]
    assert [WeightedDraws(weights, 4).source_at(i) for i in range(n)] != forward


def test_weighted_draws_follow_the_weights():
    weights = [0.5, 0.3, 0.2]
    draws = WeightedDraws([w * 10 for w in weights], seed=3)  # only the ratios matter
    counts = Counter(draws.source_at(i) for i in range(6000))
    for src, weight in enumerate(weights):
        assert counts[src] / 6000 == pytest.approx(weight, abs=0.025)
    for zeros in ([0, 1], [1, 0], [1, 0, 1], [0, 0, 2]):
        draws = WeightedDraws(zeros, seed=0)
        assert {draws.source_at(i) for i in range(3000)} == {i for i, w in enumerate(zeros) if w}


def test_weighted_draws_reject_bad_weights():
    for bad in ([0, 0], [-1, 2], []):
        with pytest.raises(ValueError, match="mixing weight"):
            WeightedDraws(bad, seed=0)


def test_permutation_is_seeded():
    assert sorted(permutation(10, 0, "a", 1)) == list(range(10))
    assert permutation(10, 0, "a", 1) == permutation(10, 0, "a", 1)
    assert permutation(10, 0, "a", 1) != permutation(10, 0, "a", 2)


# -- the plan: natural mode --------------------------------------------------------------------------


def test_natural_partitions_hold_every_kept_document_once_in_manifest_order(manifest):
    plan = Plan(manifest, config())
    seen: Counter = Counter()
    for p in range(P):
        docs = partition_docs(plan, p)
        keys = [key(d) for d in docs]
        assert len(set(keys)) == len(keys) and set(keys) == owned_keys(plan, p)  # each of its docs once
        seen.update(keys)
        assert docs[0].start == 0
        assert all(b.start == a.start + a.units for a, b in zip(docs, docs[1:], strict=False))
        assert all(d.units == d.tokens + 2 for d in docs)
        for src in range(len(plan.sources)):
            mine = [key(d) for d in docs if d.src == src]
            assert mine == sorted(mine)  # epoch 0 reads each source's blocks in manifest order
        # deterministic, and sources are interleaved rather than concatenated
        assert docs == partition_docs(Plan(manifest, config()), p)
        assert keys[:20] != sorted(keys[:20])
    assert seen == kept_keys(manifest)  # all partitions together: every kept document once


def test_partitions_hold_about_an_equal_part_of_every_source(manifest):
    for partitions in (1, 2, 4):
        plan = Plan(manifest, config(partitions=partitions))
        for s, source in enumerate(plan.sources):
            units = [sum(u.units for u in plan.units[p][s]) for p in range(partitions)]
            biggest = max(u.units for u in source.units)
            assert sum(units) == source.kept_tokens + 2 * source.kept_segments
            assert all(abs(n - sum(units) / partitions) <= biggest for n in units), (source.key, units)
            owners = Counter(
                (u.shard, b) for p in range(partitions) for u in plan.units[p][s] for b in u.blocks
            )
            assert set(owners.values()) == {1} and len(owners) == len(source.units)  # each block: one owner


def test_natural_epochs_repeat_each_partition_in_a_new_order(manifest):
    plan = Plan(manifest, config(epochs=2))
    one_plan = Plan(manifest, config())
    for p in range(P):
        one = partition_docs(one_plan, p)
        two = partition_docs(plan, p)
        assert len(two) == 2 * len(one) and [key(d) for d in two[: len(one)]] == [key(d) for d in one]
        again = two[len(one) :]
        assert Counter(key(d) for d in again) == Counter(key(d) for d in one)
        assert [key(d) for d in again] != [key(d) for d in one]
        assert again[0].start == one[-1].start + one[-1].units  # one continuous stream over the epochs
        # epoch 1 visits source a's blocks in another order, each block still read in record order
        a = [key(d) for d in again if d.src == 0]
        assert a != sorted(a)
        blocks = [b for i, b in enumerate(block_of(plan, a)) if i == 0 or b != block_of(plan, a)[i - 1]]
        assert (
            sorted(blocks)
            == sorted({(u.shard, b) for u in plan.units[p][0] for b in u.blocks})
            == sorted(set(blocks))
        )
        assert plan.partition_batches(p) == len(partition_batches(plan, p))


def block_of(plan: Plan, keys: list[tuple[int, int]]) -> list[tuple[int, int]]:
    firsts = {
        r.shard: [b["first_record"] for b in plan.manifest.blocks(r.shard)] for r in plan.manifest.shards
    }
    return [(s, max(b for b, f in enumerate(firsts[s]) if f <= i)) for s, i in keys]


def test_natural_plan_spreads_every_source_over_each_partitions_epoch(manifest):
    plan = Plan(manifest, config())
    for p in range(P):
        docs = partition_docs(plan, p)
        last_tenth = {d.src for d in docs[-len(docs) // 10 :]}
        first_tenth = {d.src for d in docs[: len(docs) // 10]}
        assert first_tenth == last_tenth == set(range(len(plan.sources)))


# -- the plan: weighted mode -------------------------------------------------------------------------


@pytest.mark.slow  # a long weighted run, for its statistics
def test_weighted_plan_token_shares_over_a_long_run(manifest):
    weights = {"a/x": 0.2, "b/y": 0.5, "c/z": 0.3}
    plan = Plan(manifest, config(seed=7, weights=weights))
    keys = [s.key for s in plan.sources]
    n = 2000  # far beyond one epoch of b/y (~20 kept per partition) and c/z (~18): they restart
    everywhere: Counter = Counter()
    for p in range(P):
        docs = partition_docs(plan, p, n)
        tokens: Counter = Counter()
        for d in docs:
            tokens[keys[d.src]] += d.units
        everywhere += tokens
        # weights are shares of the tokens fed (per partition: its own means)
        for k, weight in weights.items():
            assert tokens[k] / sum(tokens.values()) == pytest.approx(weight, abs=0.06), (p, k, tokens)
        b = [key(d) for d in docs if keys[d.src] == "b/y"]
        kept_b = sum(u.kept_docs for u in plan.units[p][keys.index("b/y")])
        assert b[:kept_b] == sorted(b[:kept_b])  # the first pass over a source is in manifest order
        for rep in range(len(b) // kept_b):  # each restart goes over the partition's documents of b/y once
            assert set(b[rep * kept_b : (rep + 1) * kept_b]) == set(b[:kept_b]), rep
    for k, weight in weights.items():
        assert everywhere[k] / sum(everywhere.values()) == pytest.approx(weight, abs=0.025), (k, everywhere)
    assert partition_docs(plan, 1, 200) == partition_docs(
        Plan(manifest, config(seed=7, weights=weights)), 1, 200
    )
    assert partition_docs(plan, 1, 200) != partition_docs(
        Plan(manifest, config(seed=8, weights=weights)), 1, 200
    )


def test_weighted_token_shares_hold_for_the_global_stream_when_a_source_has_fewer_blocks_than_partitions(
    tmp_path,
):
    m = synthetic_manifest(tmp_path / "few", {"a/x": [80, 70, 60], "b/y": [8]})  # b/y: one block
    weights = {"a/x": 0.5, "b/y": 0.5}
    plan = Plan(m, config(seed=3, weights=weights))
    keys = [s.key for s in plan.sources]
    rounds = 150  # every partition feeds the same tokens per round of P global batches
    end = rounds * plan.config.units_per_batch
    tokens: Counter = Counter()
    for p in range(P):
        walk = PartitionWalk(plan, p)
        for d, _ in walk.docs(walk.start()):
            if d.start >= end:
                break
            tokens[keys[d.src]] += min(d.start + d.units, end) - d.start
    for k, weight in weights.items():
        assert tokens[k] / sum(tokens.values()) == pytest.approx(weight, abs=0.05), (k, tokens)


def test_zero_weight_sources_are_never_drawn(manifest):
    plan = Plan(manifest, config(weights={"a/x": 1, "c/z": 2}))
    assert plan.weights == [1.0, 0.0, 2.0]
    for p in range(P):
        assert {d.src for d in partition_docs(plan, p, 500)} == {0, 2}


def test_manifest_weights_are_the_default(tmp_path):
    m = synthetic_manifest(tmp_path / "w", {"a/x": [30], "b/y": [30]}, weights={"a/x": 3, "b/y": 1})
    assert manifest_weights(m) == {"a/x": 3.0, "b/y": 1.0}
    plan = Plan(m, config(weights=manifest_weights(m), partitions=1))
    assert plan.weights == [3.0, 1.0] and plan.partition_batches(0) is None  # weighted: endless
    unweighted = synthetic_manifest(tmp_path / "n", {"a/x": [30], "b/y": [30]})
    assert manifest_weights(unweighted) is None


def test_a_subset_without_a_weight_keeps_its_natural_share_of_a_weighted_stream(tmp_path):
    """mixture.yaml: an omitted weight means natural proportion (it was 0 %: the subset was never drawn)."""
    m = synthetic_manifest(tmp_path / "omitted", LAYOUT, weights={"a/x": 1, "b/y": 3})  # c/z: no weight
    docs = m.all_documents().to_pylist()
    kept = Counter(d["doc_id"].split(":")[0] for d in docs if d["status"] == "kept")  # oracle: the ledger
    kept_tokens = Counter()
    for d in docs:
        kept_tokens[d["doc_id"].split(":")[0]] += d["tokens"] if d["status"] == "kept" else 0
    natural = kept_tokens["c/z"] / sum(kept_tokens.values())
    expected = {"a/x": (1 - natural) / 4, "b/y": 3 * (1 - natural) / 4, "c/z": natural}
    assert set(kept) == set(LAYOUT) and 0.05 < natural < 0.3
    plan = Plan(m, config(seed=5, weights=manifest_weights(m), partitions=1))
    keys = [s.key for s in plan.sources]
    tokens: Counter = Counter()
    for d in partition_docs(plan, 0, 1500):
        tokens[keys[d.src]] += d.units
    for k, share in expected.items():
        assert tokens[k] / sum(tokens.values()) == pytest.approx(share, abs=0.03), (k, tokens, expected)


def test_plan_rejects_unknown_weights_and_missing_corenet_counts(manifest):
    with pytest.raises(PlanError, match="not in the manifest"):
        Plan(manifest, config(weights={"nope/x": 1}))
    with pytest.raises(PlanError, match=r"\(did you mean 'b/y' for 'b/yy'\?\)"):
        Plan(manifest, config(weights={"a/x": 1, "b/yy": 1}))
    with pytest.raises(PlanError, match=r"sequences: \{mode: corenet\}"):
        Plan(manifest, config(mode="corenet"))
    with pytest.raises(PlanError, match="all mixing weights are zero"):
        Plan(manifest, config(weights={"a/x": 0}))
    with pytest.raises(PlanError, match="must be >= 0"):
        config(weights={"a/x": -1})


# -- batches, readers and resume ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["packed", "corenet"])
def test_batches_cover_each_partition_and_are_the_same_for_every_reader_layout(tmp_path, mode):
    m = synthetic_manifest(tmp_path / mode, {"a/x": [30, 20], "b/y": [25]}, mode=mode, records_per_block=5)
    partitions = 4
    plan = Plan(m, config(mode=mode, seq_len=127, batch_size=3, partitions=partitions))
    span = plan.config.units_per_batch
    per_partition = {}
    for p in range(partitions):
        docs = partition_docs(plan, p)
        total = sum(d.units for d in docs)
        batches = [bp for bp, _ in partition_batches(plan, p)]
        assert [b.batch for b in batches] == [t * partitions + p for t in range(-(-total // span))]
        assert len(batches) == plan.partition_batches(p)
        assert all(b.sequences == 3 for b in batches[:-1])
        for bp in batches:  # the documents of a batch cover its units exactly
            covered = sum(min(d.start + d.units, bp.start + span) - max(d.start, bp.start) for d in bp.docs)
            assert covered == min(span, total - bp.start)
            assert bp.sequences == (-(-covered // plan.config.window) if mode == "packed" else covered)
        per_partition[p] = batches
    rounds = plan.rounds()
    assert rounds == max(len(b) for b in per_partition.values())

    def global_batches(world_size: int, workers: int) -> dict[int, tuple]:
        """Every reader's batches (its partitions round by round, empty once its data ended), by global
        index."""
        out: dict[int, tuple] = {}
        for rank in range(world_size):
            layout = plan.readers_layout(rank, world_size, workers)
            assert len(layout) == workers
            for mine in layout:
                assert all(p % world_size == rank for p in mine)
                for t in range(rounds):
                    for p in mine:
                        bp = (
                            per_partition[p][t]
                            if t < len(per_partition[p])
                            else PartitionWalk(plan, p).empty(t)
                        )
                        assert bp.batch not in out
                        out[bp.batch] = (bp.start, bp.sequences, [key(d) for d in bp.docs])
        return out

    single = global_batches(1, 1)
    assert sorted(single) == list(range(rounds * partitions))
    for world_size, workers in [(1, 2), (1, 4), (2, 1), (2, 2), (4, 1)]:
        assert global_batches(world_size, workers) == single
    for world_size, workers in [(3, 1), (1, 3), (2, 4), (8, 1)]:
        with pytest.raises(PlanError, match="do not divide"):
            plan.readers_layout(0, world_size, workers)


# every cursor of four streams (test_weighted_batches_resume_from_every_cursor is the quick one)
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["packed", "corenet"])
@pytest.mark.parametrize("epochs", [1, 2])
def test_natural_batches_resume_from_every_cursor(tmp_path, mode, epochs):
    m = synthetic_manifest(tmp_path / mode, {"a/x": [30, 20], "b/y": [25]}, mode=mode, records_per_block=5)
    plan = Plan(m, config(mode=mode, seq_len=127, batch_size=3, epochs=epochs))
    for p in range(P):
        everything = partition_batches(plan, p)
        assert everything[-1][1] == {"batch": len(everything), "done": True}
        for t, (_, cursor) in enumerate(everything):
            resumed = partition_batches(plan, p, cursor)
            assert [bp for bp, _ in resumed] == [bp for bp, _ in everything[t + 1 :]], t
            assert [c for _, c in resumed] == [c for _, c in everything[t + 1 :]], t


def test_weighted_batches_resume_from_every_cursor(manifest):
    plan = Plan(manifest, config(seq_len=127, batch_size=3, weights={"a/x": 1, "b/y": 2, "c/z": 1}))
    n = 60  # batches; b/y and c/z restart several times
    for p in range(P):
        everything = partition_batches(plan, p, limit=n)
        for t in range(0, n - 1, 3):
            resumed = partition_batches(plan, p, everything[t][1], limit=n - t - 1)
            assert [bp for bp, _ in resumed] == [bp for bp, _ in everything[t + 1 :]], t
