"""Held-out documents (issue 22.1): chosen at build time from the seed and the doc id, their own ledger
status, read = kept + held out + filtered + rejected per shard, the same at any worker count, and never
streamed."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from elm_data.core.errors import ElmDataError, InvalidValue
from elm_data.manifests.audit import audit_manifest, format_table
from elm_data.manifests.build import build_manifest
from elm_data.manifests.manifest import MANIFEST_FILE, SHARDS_FILE, Manifest, data_files
from elm_data.manifests.mixture import MixtureConfig

FRACTION = 0.25  # the heldout_manifest fixture's


def _oracle(seed: int, key: str, doc_id: str) -> bool:
    """The documented rule, recomputed here: sha256 of seed, subset and doc id as a number in [0, 1) <
    fraction."""
    return is_heldout_oracle(seed, key, doc_id, FRACTION)


def _ledger_rows(manifest: Manifest):
    for record in manifest.shards:
        for row in manifest.documents(record.shard).to_pylist():
            yield record, row


def test_heldout_documents_are_the_rule_s_choice_and_have_their_own_status(heldout_manifest, sample_manifest):
    manifest, plain = Manifest(heldout_manifest), Manifest(sample_manifest)
    seed = manifest.info["seed"]
    passing = {
        (r.key, row["doc_id"]): row
        for r, row in _ledger_rows(manifest)
        if row["status"] in ("kept", "heldout")
    }
    held = {k for k, row in passing.items() if row["status"] == "heldout"}
    assert held == {k for k in passing if _oracle(seed, *k)}
    assert 0 < len(held) < len(passing)
    # what it would have given
    assert all(passing[k]["tokens"] > 0 and passing[k]["segments"] == 1 for k in held)
    # without a held-out fraction the same documents pass: held out + kept here = kept there, token for token
    kept_plain = {
        (r.key, row["doc_id"]): row["tokens"] for r, row in _ledger_rows(plain) if row["status"] == "kept"
    }
    assert {k: row["tokens"] for k, row in passing.items()} == kept_plain
    assert manifest.info["heldout"]["fraction"] == FRACTION and plain.info["heldout"]["fraction"] == 0.0


def test_read_is_kept_plus_heldout_plus_filtered_plus_rejected_in_every_shard(heldout_manifest):
    manifest = Manifest(heldout_manifest)
    for record in manifest.shards:
        statuses = Counter()
        for row in manifest.documents(record.shard).to_pylist():
            statuses[row["status"]] += row["count"]
        assert set(statuses) <= {"kept", "heldout", "filtered", "rejected"}
        assert record.docs_read == sum(statuses.values())
        assert (
            record.docs_read
            == record.docs_kept + record.docs_heldout + record.docs_filtered + record.docs_rejected
        )
        assert (record.docs_kept, record.docs_heldout) == (statuses["kept"], statuses["heldout"])
        assert (record.docs_filtered, record.docs_rejected) == (statuses["filtered"], statuses["rejected"])
        docs = manifest.documents(record.shard).to_pylist()
        assert record.heldout_tokens == sum(d["tokens"] for d in docs if d["status"] == "heldout")
        assert record.tokens == sum(d["tokens"] for d in docs if d["status"] == "kept")
    totals = manifest.info["totals"]
    assert totals["docs_heldout"] == sum(r.docs_heldout for r in manifest.shards) > 0
    assert not manifest.ledger_problems()


@pytest.mark.slow
def test_two_workers_give_the_same_heldout_manifest(heldout_manifest, tokenizer_path, tmp_path):
    mixture = heldout_manifest.parent / "mixture.yaml"
    result = build_manifest(mixture, tmp_path / "w2", tokenizer=tokenizer_path, workers=2)
    assert result.manifest_id == Manifest(heldout_manifest).manifest_id
    assert data_files(tmp_path / "w2") == data_files(heldout_manifest)
    for name in data_files(heldout_manifest):
        assert (tmp_path / "w2" / name).read_bytes() == (heldout_manifest / name).read_bytes(), name


@pytest.mark.slow  # Beam: importing it and running a pipeline take seconds
def test_beam_gives_the_same_heldout_manifest(heldout_manifest, tokenizer_path, tmp_path):
    mixture = heldout_manifest.parent / "mixture.yaml"
    result = build_manifest(mixture, tmp_path / "beam", tokenizer=tokenizer_path, runner="beam")
    assert result.manifest_id == Manifest(heldout_manifest).manifest_id
    for name in data_files(heldout_manifest):
        assert (tmp_path / "beam" / name).read_bytes() == (heldout_manifest / name).read_bytes(), name


def test_the_fraction_is_in_the_id_and_another_seed_holds_out_others(
    heldout_manifest, tokenizer_path, tmp_path
):
    raw = yaml.safe_load((heldout_manifest.parent / "mixture.yaml").read_text())
    raw["seed"] = 1
    (tmp_path / "mixture.yaml").write_text(yaml.safe_dump(raw))
    other = Manifest(
        build_manifest(tmp_path / "mixture.yaml", tmp_path / "m", tokenizer=tokenizer_path).manifest_dir
    )
    first, second = (
        {(r.key, row["doc_id"]) for r, row in _ledger_rows(m) if row["status"] == "heldout"}
        for m in (Manifest(heldout_manifest), other)
    )
    assert first and second and first != second  # the seed picks
    copy = Path(shutil.copytree(heldout_manifest, tmp_path / "edited"))
    info = json.loads((copy / MANIFEST_FILE).read_text())
    info["heldout"]["fraction"] = 0.5
    (copy / MANIFEST_FILE).write_text(json.dumps(info))
    with pytest.raises(ElmDataError, match="manifest_id does not recompute"):
        Manifest(copy)


def test_an_edited_heldout_count_is_refused(heldout_manifest, tmp_path):
    copy = Path(shutil.copytree(heldout_manifest, tmp_path / "edited"))
    table = pq.read_table(copy / SHARDS_FILE)
    counts = table.column("docs_heldout").to_pylist()
    counts[0] += 1
    pq.write_table(
        table.set_column(table.schema.get_field_index("docs_heldout"), "docs_heldout", [counts]),
        copy / SHARDS_FILE,
    )
    with pytest.raises(ElmDataError, match="refusing an altered manifest"):
        Manifest(copy)


def test_audit_shows_the_heldout_documents(heldout_manifest):
    audit = audit_manifest(heldout_manifest)
    table = format_table(audit)
    assert "held out" in table.splitlines()[2]
    total = audit.totals.docs_heldout
    assert f"held out: {total:,} documents ({audit.totals.heldout_tokens:,} tokens), ~25.00%" in table
    assert audit.to_json()["redpajama/arxiv"]["docs_heldout"] == sum(
        r.docs_heldout for r in Manifest(heldout_manifest).shards if r.key == "redpajama/arxiv"
    )


@pytest.mark.parametrize("value", [1.0, -0.1, "a lot", True])
def test_a_bad_fraction_is_a_one_line_error(value):
    raw = {
        "heldout": {"fraction": value},
        "sources": [{"source": "redpajama", "subset": "arxiv", "shards": ["x"]}],
    }
    with pytest.raises(InvalidValue, match="heldout"):
        MixtureConfig.from_dict(raw)


@pytest.mark.slow
def test_no_heldout_document_is_in_any_training_span_over_a_natural_pass(heldout_manifest, tokenizer):
    """A natural pass (one epoch, natural proportions) feeds every kept document and not one held-out
    document."""
    from elm_data.pipeline.stream import TokenStream

    manifest = Manifest(heldout_manifest)
    status = {(r.key, row["doc_id"]): row["status"] for r, row in _ledger_rows(manifest) if row["doc_id"]}
    stream = TokenStream(
        heldout_manifest,
        batch_size=2,
        seq_len=512,
        weights="natural",
        epochs=1,
        tokenizer=tokenizer,
        provenance=True,
    )
    fed = Counter()
    for batch in stream:
        for row in batch["spans"]:
            for span in row:
                fed[(f"{span['source']}/{span['subset']}", span["doc_id"])] += span["end"] - span["start"]
    assert {status[k] for k in fed} == {"kept"}
    kept = {k for k, s in status.items() if s == "kept"}
    assert set(fed) == kept  # the whole natural pass: every kept document, nothing held out


def test_with_dedup_a_copy_of_a_heldout_document_is_removed_not_trained_on(tmp_path, tokenizer_path):
    """filters.dedup and heldout together: held-out documents are signed too, so the first copy of a text
    stays (kept or held out by the rule) and every later copy is a duplicate of it; no kept text is a held-out
    one's."""
    from planted_corpus import planted_duplicates, words_of, write_mixture

    shards = planted_duplicates()
    mixture = write_mixture(tmp_path, shards, dedup="exact")
    raw = yaml.safe_load(mixture.read_text())
    raw["heldout"] = {"fraction": 0.5}
    mixture.write_text(yaml.safe_dump(raw, sort_keys=False))
    manifest = Manifest(build_manifest(mixture, tmp_path / "m", tokenizer=tokenizer_path).manifest_dir)
    texts = {}  # (shard, index) -> normalized words, in manifest order
    for shard, (subset, s) in enumerate(
        (k, s) for k, subset_shards in shards.items() for s in range(len(subset_shards))
    ):
        for i, text in enumerate(shards[subset][s]):
            texts[(shard, i)] = tuple(words_of(text))
    first, statuses = {}, {}
    for record, row in _ledger_rows(manifest):
        key, words = (record.shard, row["index"]), texts[(record.shard, row["index"])]
        statuses[key] = row["status"]
        if words in first:
            assert (row["status"], row["reason"]) == ("filtered", "duplicate"), key
        else:
            first[words] = key
            expected = "heldout" if is_heldout_oracle(0, record.key, row["doc_id"], 0.5) else "kept"
            assert row["status"] == expected, key
    held = {texts[k] for k, s in statuses.items() if s == "heldout"}
    assert held and not held & {texts[k] for k, s in statuses.items() if s == "kept"}
    assert not manifest.ledger_problems()
    for r in manifest.shards:
        assert r.docs_read == r.docs_kept + r.docs_heldout + r.docs_filtered + r.docs_rejected


def is_heldout_oracle(seed: int, key: str, doc_id: str, fraction: float) -> bool:
    return int(hashlib.sha256(f"{seed}\0{key}\0{doc_id}".encode()).hexdigest(), 16) / 2**256 < fraction


# ---- 22.2: per-source held-out evaluation during training
# ------------------------------------------------------
HELD_DOCS, HELD_TOKENS, SEQ_LEN = 2, 1200, 64


@pytest.fixture(scope="module")
def heldout_run(heldout_manifest, tmp_path_factory) -> Path:
    """A tiny model trained 4 steps on the held-out manifest, evaluated on it every 2 steps, checkpointed at 2
    and 4."""
    from elm_data.trainer.core.config import TrainConfig
    from elm_data.trainer.core.loop import train

    model = {"name": "tiny", "num_transformer_layers": 2, "model_dim": 64, "head_dim": 32}
    config = TrainConfig(
        manifest=str(heldout_manifest),
        model=model,
        seq_len=SEQ_LEN,
        batch_size=2,
        max_steps=4,
        warmup_steps=1,
        lr=3e-3,
        epochs=None,
        precision="fp32",
        distributed="none",
        checkpoint_every=2,
        heldout_every=2,
        heldout_docs=HELD_DOCS,
        heldout_tokens=HELD_TOKENS,
    )
    out = tmp_path_factory.mktemp("heldout_run") / "run"
    train(config, out_dir=out, progress=False)
    return out


def _oracle_set(
    manifest_dir: Path, tokenizer, max_docs: int = HELD_DOCS, max_tokens: int = HELD_TOKENS
) -> dict[str, list[tuple[list[int], str]]]:
    """Per subset, ``(token ids, text)`` of the documents the evaluation must score, chosen from the ledger by
    hand (held-out rows in shard then record order, the first HELD_DOCS within HELD_TOKENS, a too-long one
    skipped) and read with the plain reader."""
    from elm_data.sources.readers import read_shard

    manifest = Manifest(manifest_dir)
    chosen: dict[str, list] = {}
    for record in manifest.shards:
        rows = [r for r in manifest.documents(record.shard).to_pylist() if r["status"] == "heldout"]
        picked = chosen.setdefault(record.key, [])
        for row in rows:
            if len(picked) < max_docs and sum(t for *_, t in picked) + row["tokens"] <= max_tokens:
                picked.append((record, row["index"], row["tokens"]))
    out: dict[str, list] = {}
    for key, picked in chosen.items():
        for record, index, tokens in picked:
            doc = next(
                d for d in read_shard(record.uri, record.source, record.subset) if d.provenance.index == index
            )
            ids = tokenizer.encode(doc.text)
            assert len(ids) == tokens
            out.setdefault(key, []).append((ids, doc.text))
    return out


def _oracle_scores(model, documents: list[tuple[list[int], str]]) -> tuple[float, float]:
    """(loss, bits per byte) by hand: each document alone, BOS + ids + EOS, windows of SEQ_LEN predictions."""
    import torch

    total, count = 0.0, 0
    for ids, _ in documents:
        framed = [1, *ids, 2]
        for start in range(0, len(framed) - 1, SEQ_LEN):
            window = torch.tensor(framed[start : start + SEQ_LEN + 1])
            with torch.no_grad():
                logits = model(window[None, :-1])[0].double()
            total += float(torch.nn.functional.cross_entropy(logits, window[1:], reduction="sum"))
            count += len(window) - 1
    text_bytes = sum(len(text.encode()) for _, text in documents)
    return total / count, total / math.log(2) / text_bytes


@pytest.mark.slow  # trains (test_the_evaluation_equals_a_recomputation_on_a_fresh_model is the quick sibling)
def test_logged_heldout_loss_equals_a_recomputation_from_the_checkpoint(
    heldout_run, heldout_manifest, tokenizer
):
    from elm_data.trainer.core.checkpoint import list_checkpoints, load_checkpoint_model
    from elm_data.trainer.core.runlog import read_log

    records = [r for r in read_log(heldout_run) if r["event"] == "heldout"]
    assert [r["step"] for r in records] == [2, 4]
    expected = _oracle_set(heldout_manifest, tokenizer)
    assert set(records[0]["loss_by_source"]) == set(expected) and len(expected) >= 5
    checkpoints = {int(p.name.split("_")[1]): p for p in list_checkpoints(heldout_run)}
    for record in records:
        model = load_checkpoint_model(checkpoints[record["step"]]).eval()
        for key, documents in expected.items():
            loss, bpb = _oracle_scores(model, documents)
            assert abs(record["loss_by_source"][key] - loss) < 1e-5, (record["step"], key)
            assert abs(record["bits_per_byte_by_source"][key] - bpb) < 1e-5, (record["step"], key)
            assert record["perplexity_by_source"][key] == pytest.approx(math.exp(loss), rel=1e-5)
            assert record["docs_by_source"][key] == len(documents)
            assert record["tokens_by_source"][key] == sum(len(ids) + 1 for ids, _ in documents)
    assert records[0]["loss_by_source"] != records[1]["loss_by_source"]  # the model moved between them


@pytest.mark.slow  # trains (the heldout_run fixture)
def test_heldout_records_are_declared_measurements_and_the_receipt_still_verifies(heldout_run):
    from elm_data.trainer.core.heldout_eval import RECORD_FIELDS
    from elm_data.trainer.core.runlog import read_log
    from elm_data.trainer.proof.audit import (
        HELDOUT_FIELDS_MEASURED,
        STEP_FIELDS_MEASURED,
        STEP_FIELDS_VERIFIED,
        verify_run,
    )

    assert set(RECORD_FIELDS) <= set(HELDOUT_FIELDS_MEASURED)
    records = read_log(heldout_run)
    for record in records:
        if record["event"] == "heldout":
            assert set(record) - {"event"} == set(HELDOUT_FIELDS_MEASURED)
        if record["event"] == "step":
            assert (
                set(STEP_FIELDS_VERIFIED)
                <= set(record) - {"event"}
                <= {*STEP_FIELDS_VERIFIED, *STEP_FIELDS_MEASURED}
            )
    assert verify_run(heldout_run).ok


def test_the_evaluation_equals_a_recomputation_on_a_fresh_model(heldout_manifest, tokenizer):
    """The quick sibling: the evaluator on a freshly initialised tiny model, against the same hand
    computation."""
    import torch

    from elm_data.model.config import OpenELMConfig
    from elm_data.model.openelm import OpenELM
    from elm_data.trainer.core.heldout_eval import evaluate_heldout, load_heldout_set

    torch.manual_seed(0)
    config = OpenELMConfig.from_dict(
        {
            **OpenELMConfig.named("tiny").to_dict(),
            "num_transformer_layers": 1,
            "model_dim": 64,
            "head_dim": 32,
        }
    )
    model = OpenELM(config)
    manifest = Manifest(heldout_manifest)
    heldout = load_heldout_set(manifest, tokenizer, SEQ_LEN, 1, 600)
    record = evaluate_heldout(model, heldout, torch.device("cpu"), None, batch_size=3)
    assert model.training  # put back as it was
    expected = {key: docs[:1] for key, docs in _oracle_set(heldout_manifest, tokenizer, 1, 600).items()}
    assert set(record["loss_by_source"]) == set(expected)
    for key, documents in expected.items():
        loss, bpb = _oracle_scores(model.eval(), documents)
        model.train()
        assert abs(record["loss_by_source"][key] - loss) < 1e-5, key
        assert abs(record["bits_per_byte_by_source"][key] - bpb) < 1e-5, key
    assert load_heldout_set(manifest, tokenizer, SEQ_LEN, 0, 600).sources == {}  # heldout_docs: 0 is off


def test_the_evaluation_set_is_refused_when_a_document_no_longer_matches_its_ledger(
    heldout_manifest, tokenizer, monkeypatch
):
    """A pass that now tokenizes differently (here: NFC normalization switched on) is one error, not a quiet
    set."""
    from elm_data.pipeline.config import FilterConfig
    from elm_data.trainer.core import heldout_eval

    changed = type(
        "Changed",
        (),
        {"from_dict": staticmethod(lambda d: FilterConfig.from_dict({**d, "nfc_normalization": True}))},
    )
    monkeypatch.setattr(heldout_eval, "FilterConfig", changed)
    with pytest.raises(heldout_eval.HeldoutChanged, match="the ledger records"):
        heldout_eval.load_heldout_set(Manifest(heldout_manifest), tokenizer, SEQ_LEN, 16, 10**6)


@pytest.mark.slow  # trains (the heldout_run fixture)
def test_the_model_card_and_the_report_show_the_heldout_evaluation(heldout_run, tmp_path):
    from elm_data.trainer.core.runlog import read_log
    from elm_data.trainer.export.hf import checkpoint_card, newest_checkpoint, run_of
    from elm_data.trainer.proof.report import write_report

    last = [r for r in read_log(heldout_run) if r["event"] == "heldout"][-1]
    card = checkpoint_card(run_of(newest_checkpoint(heldout_run)))["README.md"]
    section = card[card.index("## Held-out evaluation") :].split("\n## ", 1)[0]
    assert f"at step {last['step']}:" in section
    for key, loss in last["loss_by_source"].items():
        bpb = last["bits_per_byte_by_source"][key]
        assert (
            f"| {key} | {last['docs_by_source'][key]} | {last['tokens_by_source'][key]:,} | {loss:.4f} |"
            in section
        )
        assert f"| {bpb:.4f} |" in section
    report = write_report(heldout_run, tmp_path / "page")
    assert report.heldout and (tmp_path / "page" / "heldout.png").is_file()
