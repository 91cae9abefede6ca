"""The consumption receipt: batch digests from the plan alone equal the stream's, and the run's hash chain
recomputed by `audit-run --verify` from the manifest and plan (no corpus, no model) detects edits."""

from __future__ import annotations

import json
import shutil
from itertools import islice
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from test_stream import rewrite_manifest
from test_trainer_run import small_config

from elm_data.pipeline.stream import StreamLoader, TokenStream
from elm_data.pipeline.stream.receipt import (
    batch_spans,
    global_batches,
    label_positions,
    plan_batch_digest,
    state_at,
    stream_batch_digest,
)
from elm_data.pipeline.tokenizer import PAD_ID
from elm_data.trainer.cli import audit_run as audit_run_command
from elm_data.trainer.core.loop import train
from elm_data.trainer.core.runlog import LOG_FILE, read_log
from elm_data.trainer.proof.audit import verify_deep, verify_run


def _compare(stream: TokenStream, limit: int | None = None) -> int:
    plan = stream.plan()
    planned = global_batches(plan)
    n = 0
    for batch in islice(StreamLoader(stream), limit):
        bp = next(planned)
        assert bp.batch == batch["batch_index"]
        if stream.config.mode == "packed":
            assert batch_spans(bp, plan) == batch["spans"]  # the very spans, not only the digest
        assert plan_batch_digest(bp, plan) == stream_batch_digest(batch, stream.config.mode), bp.batch
        # the label positions a trainer counts, from the plan's spans, are those of the very ids
        labels = batch["input_ids"][:, 1:]
        positions, counted = label_positions(batch_spans(bp, plan), stream.config.seq_len, stream.config.mode)
        assert positions == labels.numel(), bp.batch
        assert counted in (None, int((labels != PAD_ID).sum())), bp.batch
        n += 1
    if limit is None:
        assert next(planned, None) is None  # the plan ends where the stream ends
    return n


@pytest.mark.slow  # the whole natural stream in 3x64 batches (the weighted one stops after 40)
def test_plan_digests_equal_the_stream_natural_packed(sample_manifest, tokenizer):
    stream = TokenStream(sample_manifest, batch_size=3, seq_len=64, weights="natural", tokenizer=tokenizer)
    assert _compare(stream) > 20


def test_plan_digests_equal_the_stream_weighted_packed(sample_manifest, tokenizer):
    stream = TokenStream(sample_manifest, batch_size=2, seq_len=48, tokenizer=tokenizer, partitions=2)
    assert stream.config.weights  # the sample mixture carries weights
    assert _compare(stream, limit=40) == 40


@pytest.mark.slow  # the CoreNet stream twice (natural and weighted); the packed one stays quick
def test_plan_digests_equal_the_stream_corenet(corenet_manifest, tokenizer):
    natural = TokenStream(corenet_manifest, batch_size=3, seq_len=200, weights="natural", tokenizer=tokenizer)
    assert natural.config.mode == "corenet"
    assert _compare(natural) > 5
    weighted = TokenStream(corenet_manifest, batch_size=2, seq_len=200, tokenizer=tokenizer, partitions=1)
    assert _compare(weighted, limit=20) == 20


def test_digest_changes_with_any_span_field(sample_manifest, tokenizer):
    stream = TokenStream(sample_manifest, batch_size=2, seq_len=32, weights="natural", tokenizer=tokenizer)
    batch = next(iter(StreamLoader(stream)))
    base = stream_batch_digest(batch, "packed")
    for field in (
        "source",
        "subset",
        "shard_sha256",
        "doc_id",
        "index",
        "doc_start",
        "doc_end",
        "start",
        "end",
    ):
        edited = json.loads(json.dumps(batch["spans"]))
        value = edited[0][0][field]
        edited[0][0][field] = value + 1 if isinstance(value, int) else value + "x"
        assert stream_batch_digest(batch | {"spans": edited}, "packed") != base, field
    assert stream_batch_digest(batch | {"batch_index": batch["batch_index"] + 1}, "packed") != base


# ---- the chain in a training run, recomputed by audit-run --verify
# ---------------------------------------------
STEPS = 6


def receipt_config(manifest: Path, **overrides):
    return small_config(manifest, max_steps=STEPS, tokens_per_step=2 * 2 * 32, log_every=2, **overrides)


@pytest.fixture(scope="module")
def receipt_run(sample_manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("receipt") / "run"
    return train(receipt_config(sample_manifest), out_dir=out, progress=False).run_dir


def _edit(run_dir: Path, tmp_path: Path, change) -> Path:
    """A copy of the run whose log records were passed through ``change(records) -> records``."""
    copy = tmp_path / "edited"
    shutil.copytree(run_dir, copy)
    records = change(read_log(copy))
    (copy / LOG_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    return copy


def _at(records, step, events=("step", "receipt")):
    return next(i for i, r in enumerate(records) if r.get("event") in events and r.get("step") == step)


@pytest.mark.slow
def test_every_step_logs_its_chain_head_and_the_end_record_the_receipt(receipt_run, sample_manifest):
    records = read_log(receipt_run)
    heads = [r for r in records if r.get("event") in ("step", "receipt")]
    assert [r["step"] for r in heads] == list(range(1, STEPS + 1))  # log_every=2: receipt records in between
    assert [r["event"] for r in heads] == ["receipt", "step"] * 3
    assert len({r["receipt"] for r in heads}) == STEPS
    end = records[-1]
    assert end["event"] == "end" and end["receipt"] == heads[-1]["receipt"] and end["steps"] == STEPS
    assert end["plan"] == records[0]["stream_state"]["plan"] and end["batches_per_step"] == 2
    checkpoint = json.loads(
        (receipt_run / "checkpoints" / "step_00000006" / "trainer_state.json").read_text()
    )
    assert checkpoint["receipt"] == end["receipt"]


def test_verify_recomputes_the_chain_of_a_clean_run(receipt_run):
    outcome = verify_run(receipt_run)
    assert outcome.ok, outcome.format()
    assert outcome.checked["steps"] == STEPS and outcome.checked["checkpoints"] >= 1
    assert outcome.head == read_log(receipt_run)[-1]["receipt"]
    result = CliRunner().invoke(audit_run_command, [str(receipt_run), "--verify"])
    assert result.exit_code == 0 and "receipt verified" in result.output, result.output


@pytest.mark.slow  # trains, stops and resumes a run with two DataLoader worker processes
def test_a_run_resumed_with_other_workers_continues_the_chain(receipt_run, sample_manifest, tmp_path):
    config = receipt_config(sample_manifest)
    first = train(config, out_dir=tmp_path / "resumed", stop_after=3, progress=False)
    second = train(config.replace(num_workers=2), resume=first.run_dir, progress=False)
    assert second.final_step == STEPS
    outcome = verify_run(first.run_dir)
    assert outcome.ok, outcome.format()
    assert outcome.head == read_log(receipt_run)[-1]["receipt"]  # the same tokens in the same order
    assert len([r for r in read_log(first.run_dir) if r.get("event") == "end"]) == 2


@pytest.mark.parametrize(
    "name, step, change",
    [
        (
            "edited head",
            3,
            lambda rs: [r | {"receipt": "0" * 64} if i == _at(rs, 3) else r for i, r in enumerate(rs)],
        ),
        (
            "edited tokens",
            4,
            lambda rs: [
                r | {"step_tokens_by_source": {k: v + 1 for k, v in r["step_tokens_by_source"].items()}}
                if i == _at(rs, 4)
                else r
                for i, r in enumerate(rs)
            ],
        ),
        ("skipped step", 3, lambda rs: [r for i, r in enumerate(rs) if i != _at(rs, 3)]),
        ("duplicated step", 4, lambda rs: rs[: _at(rs, 4) + 1] + rs[_at(rs, 4) :]),
    ],
)
def test_verify_names_the_first_edited_step(receipt_run, tmp_path, name, step, change):
    edited = _edit(receipt_run, tmp_path, change)
    outcome = verify_run(edited)
    assert not outcome.ok and outcome.first_bad_step == step, (name, outcome.format())
    result = CliRunner().invoke(audit_run_command, [str(edited), "--verify"])
    assert result.exit_code == 1 and f"FAILS at step {step}" in result.output, result.output


@pytest.mark.slow  # trains, stops and resumes a run
def test_a_resume_that_restarted_the_stream_is_caught(sample_manifest, tmp_path, monkeypatch):
    from elm_data.pipeline.stream.loader import StreamLoader as Loader

    config = receipt_config(sample_manifest)
    first = train(config, out_dir=tmp_path / "restarted", stop_after=3, progress=False)
    monkeypatch.setattr(Loader, "load_state_dict", lambda self, state: None)  # the silent-restart bug
    train(config, resume=first.run_dir, progress=False)
    outcome = verify_run(first.run_dir)
    assert not outcome.ok and outcome.first_bad_step == 4, outcome.format()


def test_another_manifest_is_caught_at_step_one(receipt_run, sample_manifest, tmp_path):
    other = rewrite_manifest(
        sample_manifest, tmp_path / "other", info=lambda i: i | {"seed": i.get("seed", 0) + 1}
    )
    outcome = verify_run(receipt_run, manifest_dir=other)
    assert not outcome.ok and outcome.first_bad_step == 1, outcome.format()
    result = CliRunner().invoke(audit_run_command, [str(receipt_run), "--verify", "--manifest", str(other)])
    assert result.exit_code == 1 and "FAILS at step 1" in result.output
    # another plan (here: its seed) recorded in the log: also step 1
    edited = _edit(
        receipt_run,
        tmp_path,
        lambda rs: (
            [
                rs[0]
                | {
                    "stream_state": rs[0]["stream_state"]
                    | {"plan": rs[0]["stream_state"]["plan"] | {"seed": 99}}
                }
            ]
            + rs[1:]
        ),
    )
    outcome = verify_run(edited)
    assert not outcome.ok and outcome.first_bad_step == 1, outcome.format()


@pytest.mark.slow  # rereads and retokenizes sampled steps' documents
def test_deep_verify_rereads_and_retokenizes_sampled_steps(
    receipt_run, sample_manifest, tmp_path, monkeypatch
):
    outcome = verify_deep(receipt_run, verify_run(receipt_run), steps=3)
    assert outcome.ok and outcome.checked["deep steps"] == 3, outcome.format()
    result = CliRunner().invoke(
        audit_run_command, [str(receipt_run), "--verify", "--deep", "--deep-steps", "0"]
    )
    assert result.exit_code == 0 and "deep steps: 6" in result.output, result.output
    # a log whose step 5 head was recomputed by a forger over other batches: the plan check and the corpus
    # both refuse it; the corpus check alone (given a plan check that passed) names the step too
    edited = _edit(
        receipt_run,
        tmp_path,
        lambda rs: [r | {"receipt": "0" * 64} if i == _at(rs, 5) else r for i, r in enumerate(rs)],
    )
    outcome = verify_deep(edited, verify_run(receipt_run), steps=None)
    assert not outcome.ok and outcome.first_bad_step == 5, outcome.format()


@pytest.mark.slow  # the whole stream six times (test_mixing resumes from every cursor quickly)
def test_state_at_resumes_the_stream_at_any_global_batch(sample_manifest, tokenizer):
    stream = TokenStream(
        sample_manifest, batch_size=8, seq_len=128, tokenizer=tokenizer, weights="natural", partitions=4
    )
    straight = [stream_batch_digest(b, "packed") for b in StreamLoader(stream)]
    n = len(straight)
    assert n > 8
    plan = stream.plan()
    for g in (0, 3, n // 2, n - 5, n - 1):  # the last rounds hold partitions whose data has ended
        loader = StreamLoader(stream)
        loader.load_state_dict(state_at(plan, stream.manifest_id, g))
        assert [stream_batch_digest(b, "packed") for b in loader] == straight[g:], g


@pytest.mark.slow
def test_a_two_rank_run_chains_the_same_heads_as_one_process(sample_manifest, tokenizer_path, tmp_path):
    """Under torchrun (DDP, 2 ranks, gloo) the step digest gathers both ranks' batches in global order: the
    heads equal those of one process accumulating the same two batches per step."""
    from test_trainer_distributed import settings, torchrun

    from elm_data.trainer.core.config import TrainConfig

    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(settings(sample_manifest, tokenizer_path, distributed="ddp")))
    torchrun(config_path, tmp_path / "ddp")
    outcome = verify_run(tmp_path / "ddp")
    assert outcome.ok and outcome.checked["checkpoints"] >= 1, outcome.format()
    single = TrainConfig(
        **settings(sample_manifest, tokenizer_path, distributed="none", tokens_per_step=2 * 2 * 64)
    )
    run = train(single, out_dir=tmp_path / "single", progress=False).run_dir
    heads = [
        [r["receipt"] for r in read_log(d) if r.get("event") in ("step", "receipt")]
        for d in (tmp_path / "ddp", run)
    ]
    assert heads[0] == heads[1] and len(heads[0]) == 4


# ---- the receipt covers every figure it reports
# ------------------------------------------------------------------
def test_every_step_field_is_verified_or_declared_a_measurement(receipt_run):
    from elm_data.trainer.proof.audit import STEP_FIELDS_MEASURED, STEP_FIELDS_VERIFIED

    assert not set(STEP_FIELDS_VERIFIED) & set(STEP_FIELDS_MEASURED)
    for record in (r for r in read_log(receipt_run) if r.get("event") == "step"):
        assert (
            set(STEP_FIELDS_VERIFIED)
            <= set(record) - {"event"}
            <= {*STEP_FIELDS_VERIFIED, *STEP_FIELDS_MEASURED}
        )


def _bump(value):
    """An edit of a logged value: a number + 1000, each count of a per-source table + 1, a hash replaced."""
    if isinstance(value, dict):
        return {k: v + 1 for k, v in value.items()}
    return "0" * 64 if isinstance(value, str) else value + 1000


@pytest.mark.parametrize(
    "field",
    [
        "step",
        "receipt",
        "tokens",
        "tokens_total",
        "counted_tokens",
        "step_tokens_by_source",
        "tokens_by_source",
    ],
)
def test_an_edited_step_field_fails_at_its_step(receipt_run, tmp_path, field):
    from elm_data.trainer.proof.audit import STEP_FIELDS_VERIFIED

    assert field in STEP_FIELDS_VERIFIED
    edited = _edit(
        receipt_run,
        tmp_path,
        lambda rs: [
            r | {field: _bump(r[field])} if i == _at(rs, 4, ("step",)) else r for i, r in enumerate(rs)
        ],
    )
    outcome = verify_run(edited)
    assert not outcome.ok and outcome.first_bad_step == 4, (field, outcome.format())
    if field not in ("step", "receipt"):  # those two: "a step skipped or repeated", "the logged chain head"
        assert field in outcome.reason, outcome.reason


def test_an_edited_end_record_token_total_fails(receipt_run, tmp_path):
    edited = _edit(
        receipt_run,
        tmp_path,
        lambda rs: [r | {"tokens_total": r["tokens_total"] + 1000} if r["event"] == "end" else r for r in rs],
    )
    outcome = verify_run(edited)
    assert not outcome.ok and outcome.first_bad_step == STEPS and "tokens_total" in outcome.reason, (
        outcome.format()
    )


def _edit_state(path: Path, change) -> None:
    state = json.loads((path / "trainer_state.json").read_text())
    (path / "trainer_state.json").write_text(json.dumps(change(state)))


@pytest.mark.parametrize(
    "field, change",
    [
        ("receipt", lambda s: s | {"receipt": "0" * 64}),
        ("tokens", lambda s: s | {"tokens": s["tokens"] + 1000}),
        ("consumed", lambda s: s | {"consumed": _bump(s["consumed"])}),
        ("manifest_id", lambda s: s | {"manifest_id": "0" * 64}),
        ("fingerprint", lambda s: s | {"fingerprint": s["fingerprint"].replace("0.003", "0.004")}),
        ("config", lambda s: s | {"config": s["config"] | {"lr": 0.004}}),
        ("files", lambda s: s | {"files": s["files"] | {"model.safetensors": "0" * 64}}),
        ("step", lambda s: s | {"step": s["step"] - 1}),
    ],
)
def test_an_edited_checkpoint_trainer_state_fails(receipt_run, tmp_path, field, change):
    from elm_data.trainer.core.checkpoint import list_checkpoints
    from elm_data.trainer.proof.audit import TRAINER_STATE_FIELDS_VERIFIED

    assert field in TRAINER_STATE_FIELDS_VERIFIED
    copy = _edit(receipt_run, tmp_path, lambda rs: rs)
    last = list_checkpoints(copy)[-1]
    assert set(json.loads((last / "trainer_state.json").read_text())) == {*TRAINER_STATE_FIELDS_VERIFIED}
    _edit_state(last, change)
    outcome = verify_run(copy)
    assert not outcome.ok and "checkpoint" in outcome.reason, (field, outcome.format())
    assert outcome.first_bad_step == (STEPS - 1 if field == "step" else STEPS), outcome.format()


@pytest.mark.slow  # trains, edits the checkpoint, resumes
def test_tokens_edited_in_a_checkpoint_before_a_resume_fail(sample_manifest, tmp_path):
    from elm_data.trainer.core.checkpoint import list_checkpoints

    config = receipt_config(sample_manifest)
    first = train(config, out_dir=tmp_path / "run", stop_after=3, progress=False)
    _edit_state(list_checkpoints(first.run_dir)[-1], lambda s: s | {"tokens": s["tokens"] + 1000})
    second = train(config, resume=first.run_dir, progress=False)
    assert second.tokens == STEPS * 2 * 2 * 32 + 1000  # the resumed run carries the edit into its figures
    outcome = verify_run(first.run_dir)
    assert not outcome.ok and outcome.first_bad_step == 3, outcome.format()


# ---- run directories: a resume into a new --out, a restart, one run at a time
# ------------------------------------
@pytest.mark.slow
def test_a_run_resumed_into_a_new_out_verifies_from_step_one(receipt_run, sample_manifest, tmp_path):
    from elm_data.trainer.core.runlog import effective_steps

    before = (receipt_run / LOG_FILE).read_bytes()
    config = receipt_config(sample_manifest)
    result = train(config, resume=receipt_run, out_dir=tmp_path / "more", max_steps=STEPS + 1, progress=False)
    assert result.run_dir == tmp_path / "more" and result.final_step == STEPS + 1
    assert (receipt_run / LOG_FILE).read_bytes() == before  # the source run is left as it was
    outcome = verify_run(result.run_dir)
    assert outcome.ok and outcome.steps == STEPS + 1 and outcome.checked["steps"] == STEPS + 1, (
        outcome.format()
    )
    steps = effective_steps(read_log(result.run_dir))
    assert [r["step"] for r in steps] == [2, 4, 6, 7]  # the source's logged steps, then this run's
    # a checkpoint copied away from its run (no log beside it): the new log starts at it, and says so
    bare = tmp_path / "bare" / "step_00000006"
    shutil.copytree(receipt_run / "checkpoints" / "step_00000006", bare)
    result = train(config, resume=bare, out_dir=tmp_path / "from_bare", max_steps=STEPS + 1, progress=False)
    outcome = verify_run(result.run_dir)
    assert outcome.ok and outcome.checked["steps"] == STEPS + 1, outcome.format()
    assert any("steps 1-6" in note for note in outcome.notes), outcome.notes


@pytest.mark.slow
def test_a_run_stopped_before_its_first_checkpoint_starts_again_with_resume(
    receipt_run, sample_manifest, tmp_path
):
    from elm_data.trainer.core.loop import TrainingError

    killed = _edit(
        receipt_run,
        tmp_path,
        lambda rs: [r for r in rs if r.get("event") in ("header", "step", "receipt")][:4],
    )
    shutil.rmtree(killed / "checkpoints")
    with (killed / LOG_FILE).open("a") as log:
        log.write('{"event": "step", "step": 4, "lo')  # killed mid-record
    config = receipt_config(sample_manifest)
    with pytest.raises(TrainingError, match=f"before its first checkpoint: pass --resume {killed}"):
        train(config, out_dir=killed, progress=False)
    result = train(config, resume=killed, progress=False)
    assert result.run_dir == killed and result.steps == list(range(1, STEPS + 1))
    records = read_log(killed)  # every line whole: the cut one was dropped before appending
    restart = next(r for r in records if r["event"] == "resume")
    assert restart["from_step"] == 0 and "before its first checkpoint" in restart["restarted"]
    outcome = verify_run(killed)
    assert outcome.ok and outcome.head == read_log(receipt_run)[-1]["receipt"], outcome.format()
    with pytest.raises(TrainingError, match="another manifest or other training settings"):
        shutil.rmtree(killed / "checkpoints")
        train(config.replace(lr=1e-2), resume=killed, progress=False)


def test_a_second_run_into_a_locked_run_directory_is_refused(sample_manifest, tmp_path):
    from elm_data.cli import run as cli_run
    from elm_data.core.errors import OutputLocked
    from elm_data.core.outputs import output_lock

    config = receipt_config(sample_manifest)
    run_dir = tmp_path / "run"
    with output_lock(run_dir, "training run"):  # as a first `train` holds it while it runs
        with pytest.raises(OutputLocked, match="another training run is writing it"):
            train(config, out_dir=run_dir, progress=False)
        path = tmp_path / "train.yaml"
        path.write_text(yaml.safe_dump(config.to_dict()))
        code = cli_run(["train", str(path), "--out", str(run_dir), "--no-progress"])
    assert code == 2 and not (run_dir / LOG_FILE).exists()
