"""Trainer pieces that need no data: config, schedule, parameter groups, loss, accumulation, checkpoints,
log."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from elm_data.model.config import OpenELMConfig
from elm_data.model.openelm import OpenELM
from elm_data.trainer.core import checkpoint as ckpt
from elm_data.trainer.core.config import ConfigError, TrainConfig
from elm_data.trainer.core.distributed import DistInfo
from elm_data.trainer.core.loop import train_step
from elm_data.trainer.core.loss import lm_loss, loss_sums, split_inputs_labels
from elm_data.trainer.core.optim import build_optimizer, build_scheduler, lr_at, parameter_groups
from elm_data.trainer.core.runlog import RunLog, effective_steps, read_log

PAD = 32000


def small_model(seed: int = 0) -> OpenELM:
    torch.manual_seed(seed)
    return OpenELM(OpenELMConfig(num_transformer_layers=2, model_dim=64, head_dim=16, name="unit"))


# ---- config ------------------------------------------------------------------------------------------------
def test_config_yaml_resolves_paths_and_rejects_unknown_keys(tmp_path):
    path = tmp_path / "cfg" / "run.yaml"
    path.parent.mkdir()
    path.write_text("manifest: ../data/manifest\nmodel: tiny\nseq_len: 128\nmax_steps: 3\n")
    config = TrainConfig.from_yaml(path)
    assert config.manifest_dir == (tmp_path / "data" / "manifest").resolve()
    assert config.run_dir == (tmp_path / "cfg" / "runs" / "run").resolve()
    assert config.name == "run" and config.model_config().name == "tiny"

    path.write_text("manifest: m\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp8")


def test_recipe_defaults_follow_openelm():
    config = TrainConfig(model="270M")
    assert (config.beta1, config.beta2, config.eps, config.weight_decay) == (0.9, 0.95, 1e-8, 0.1)
    assert (config.grad_clip, config.z_loss, config.seq_len, config.warmup_init_lr) == (1.0, 1e-4, 2048, 1e-6)
    assert config.peak_lr == 5.3e-3
    assert TrainConfig(model="450M").peak_lr == 3.9e-3
    assert TrainConfig(model="1.1B").peak_lr == 2.4e-3
    assert TrainConfig(model="3B").peak_lr == 1.2e-3
    assert TrainConfig(model="3B", lr=1e-4).peak_lr == 1e-4
    custom = TrainConfig(model={"name": "tiny", "num_transformer_layers": 2}).model_config()
    assert custom.num_transformer_layers == 2 and custom.model_dim == 256


def test_grad_accum_from_tokens_per_step():
    config = TrainConfig(batch_size=4, seq_len=128, tokens_per_step=4 * 128 * 6)
    assert config.grad_accum_steps(world_size=1) == 6
    assert config.grad_accum_steps(world_size=2) == 3
    assert TrainConfig(batch_size=4, seq_len=128).grad_accum_steps() == 1


# ---- schedule and optimizer --------------------------------------------------------------------------------
def test_lr_schedule_warmup_peak_and_floor():
    kw = {"peak": 5.3e-3, "warmup_steps": 10, "max_steps": 100, "init": 1e-6, "min_ratio": 0.1}
    assert lr_at(0, **kw) == pytest.approx(1e-6)
    assert lr_at(5, **kw) == pytest.approx(1e-6 + (5.3e-3 - 1e-6) / 2)
    assert lr_at(10, **kw) == pytest.approx(5.3e-3)
    assert lr_at(99, **kw) == pytest.approx(5.3e-4)
    assert lr_at(150, **kw) == pytest.approx(5.3e-4)
    values = [lr_at(s, **kw) for s in range(100)]
    assert all(a < b for a, b in zip(values[:10], values[1:11], strict=True))  # rising warm-up
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False))  # monotone decay
    assert lr_at(55, **kw) == pytest.approx(
        5.3e-4 + 0.5 * (5.3e-3 - 5.3e-4) * (1 + math.cos(math.pi * 45 / 89))
    )


def test_scheduler_drives_optimizer_lr():
    model = small_model()
    config = TrainConfig(lr=1e-3, warmup_steps=4, max_steps=12)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    seen = []
    for _ in range(12):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [lr_at(s, peak=1e-3, warmup_steps=4, max_steps=12) for s in range(12)]
    assert seen == pytest.approx(expected, rel=1e-12)
    assert {g["lr"] for g in optimizer.param_groups} == {optimizer.param_groups[0]["lr"]}


def test_no_weight_decay_on_one_dimensional_parameters():
    model = small_model()
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() == 1 for p in no_decay["params"])
    assert all(p.dim() >= 2 for p in decay["params"])
    assert any("norm" in names[id(p)] for p in no_decay["params"])
    assert model.token_embeddings.weight in decay["params"]  # CoreNet decays the (tied) embedding
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))

    # behaviour, not only bookkeeping: with zero gradients AdamW's decay moves only the 2-D weights
    optimizer = build_optimizer(model, TrainConfig(lr=0.5, weight_decay=0.1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == (param.dim() >= 2), name


# ---- loss --------------------------------------------------------------------------------------------------
def test_z_loss_matches_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7, dtype=torch.float64) * 3
    labels = torch.tensor([[1, 4, PAD], [0, 6, 2]])
    ce_terms, z_terms = [], []
    for b in range(2):
        for t in range(3):
            if labels[b, t] == PAD:
                continue
            row = logits[b, t].tolist()
            norm = math.log(sum(math.exp(v) for v in row))
            ce_terms.append(norm - row[labels[b, t]])
            z_terms.append(norm**2)
    expected = sum(ce_terms) / 5 + 1e-4 * sum(z_terms) / 5
    sums = loss_sums(logits, labels, PAD)
    assert int(sums.count) == 5
    assert float(sums.z) == pytest.approx(sum(z_terms), rel=1e-6)
    assert float(lm_loss(logits, labels, z_weight=1e-4)) == pytest.approx(expected, rel=1e-6)
    ce_only = torch.nn.functional.cross_entropy(
        logits.reshape(-1, 7).float(), labels.reshape(-1), ignore_index=PAD
    )
    assert float(sums.ce) / 5 == pytest.approx(float(ce_only), rel=1e-5)


def test_pad_labels_are_ignored():
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 11, requires_grad=True)
    labels = torch.tensor([[3, 4, 5, PAD, PAD], [1, 2, 3, 4, 5]])
    base = lm_loss(logits, labels)
    changed = logits.detach().clone()
    changed[0, 3:] = torch.randn(2, 11) * 100  # only the pad positions' logits
    assert torch.equal(lm_loss(changed, labels), base.detach())
    base.backward()
    assert torch.count_nonzero(logits.grad[0, 3:]) == 0
    assert torch.count_nonzero(logits.grad[0, :3]) > 0


def test_inputs_map_pad_into_the_vocabulary():
    ids = torch.tensor([[1, 10, 11, 2, PAD, PAD]])
    inputs, labels = split_inputs_labels(ids, vocab_size=32000, pad_id=PAD)
    assert inputs.tolist() == [[1, 10, 11, 2, 0]]
    assert labels.tolist() == [[10, 11, 2, PAD, PAD]]
    inputs, _ = split_inputs_labels(ids, vocab_size=32128, pad_id=PAD)  # CoreNet's padded vocabulary keeps it
    assert inputs.tolist() == [[1, 10, 11, 2, PAD]]
    with pytest.raises(ValueError, match="outside the model vocabulary"):
        split_inputs_labels(torch.tensor([[1, 32005, 3]]), vocab_size=32000, pad_id=PAD)

    # trailing pads in the inputs change no counted loss: a real model, pads mapped or not
    model = small_model()
    real = torch.tensor([[1, 50, 60, 70, 80, 2, PAD, PAD, PAD]])
    other_tail = real.clone()
    other_tail[0, 6:] = torch.tensor([5, 6, 7])  # inputs after the last real token differ
    other_tail_labels = real.clone()
    other_tail_labels[0, 6:] = PAD
    a_in, a_lab = split_inputs_labels(real, 32000, PAD)
    b_in, _ = split_inputs_labels(other_tail, 32000, PAD)
    with torch.no_grad():
        assert torch.equal(lm_loss(model(a_in), a_lab), lm_loss(model(b_in), a_lab))


def test_gradient_accumulation_matches_one_large_batch():
    torch.manual_seed(3)
    ids = torch.randint(3, 31999, (4, 33))
    ids[1, 25:] = PAD  # uneven counted tokens per micro-batch: normalisation must be over the whole step
    ids[3, 10:] = PAD
    config = TrainConfig(lr=1e-3, warmup_steps=0, max_steps=10, batch_size=4, seq_len=32)
    info, device = DistInfo(), torch.device("cpu")

    def run(batches):
        model = small_model(seed=7)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # the update is the gradient itself
        stats = train_step(model, optimizer, batches, config, device, None, info, 32000)
        return stats, model

    one, model_one = run([{"input_ids": ids}])
    two, model_two = run([{"input_ids": ids[:2]}, {"input_ids": ids[2:]}])
    assert one.counted_tokens == two.counted_tokens == int((ids[:, 1:] != PAD).sum())
    assert two.loss == pytest.approx(one.loss, rel=1e-6)
    assert two.grad_norm == pytest.approx(one.grad_norm, rel=1e-5)
    for (name, a), b in zip(model_one.named_parameters(), model_two.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


# ---- checkpoints and log -----------------------------------------------------------------------------------
def test_checkpoint_is_atomic(tmp_path, monkeypatch):
    model = small_model()
    optimizer = build_optimizer(model, TrainConfig(lr=1e-3))
    args = (
        model,
        {"optimizer": optimizer.state_dict(), "scheduler": {"last_epoch": 3}},
        {"position": 7},
        {"tokens": 10},
    )
    good = ckpt.save_checkpoint(tmp_path, 3, *args)
    assert good.name == "step_00000003" and ckpt.resolve_checkpoint(tmp_path) == good

    real_save = torch.save
    calls = []

    def failing_save(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == 2:  # the model and training state are written, then the stream state fails
            raise OSError("disk full")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 4, *args)
    monkeypatch.undo()
    entries = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert entries == ["step_00000003"]  # nothing half-written is visible, no temp left behind
    assert ckpt.resolve_checkpoint(tmp_path) == good

    # a leftover temp dir from a killed process is never taken for a checkpoint, and is cleaned up
    (tmp_path / "checkpoints" / ".step_00000005.tmp-x").mkdir()
    assert ckpt.list_checkpoints(tmp_path) == [good]
    ckpt.save_checkpoint(tmp_path, 6, *args, keep=1)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000006"]


def test_checkpoint_round_trip_restores_everything(tmp_path):
    model = small_model()
    optimizer = build_optimizer(model, TrainConfig(lr=1e-3))
    model(torch.randint(0, 100, (1, 8))).sum().backward()
    optimizer.step()
    torch.manual_seed(123)
    states = {"optimizer": optimizer.state_dict(), "scheduler": {"x": 1}, "rng": ckpt.rng_state()}
    path = ckpt.save_checkpoint(tmp_path, 1, model, states, {"pos": [1, 2]}, {"t": 5})
    expected_next = torch.rand(3)

    other = small_model(seed=99)
    saved = ckpt.read_checkpoint(tmp_path)
    other.load_state_dict(saved.model.state_dict())
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert saved.path == path and saved.stream == {"pos": [1, 2]} and saved.trainer["t"] == 5
    fresh = build_optimizer(other, TrainConfig(lr=1e-3))
    assert sorted(saved.states) == ["optimizer", "rng", "scheduler"] and saved.states["scheduler"] == {"x": 1}
    fresh.load_state_dict(saved.states["optimizer"])
    assert torch.equal(
        fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )
    ckpt.set_rng_state(saved.states["rng"])
    assert torch.equal(torch.rand(3), expected_next)


def test_damaged_state_files_are_one_checkpoint_error(tmp_path):
    step = tmp_path / "checkpoints" / ckpt.step_dir_name(1)
    step.mkdir(parents=True)
    (step / ckpt.TRAINER_STATE).write_text("{not json")
    (step / ckpt.STREAM_STATE).write_bytes(b"\x80\x04 not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match=ckpt.TRAINER_STATE):
        ckpt.read_trainer_state(step)
    with pytest.raises(ckpt.CheckpointError, match=ckpt.STREAM_STATE):
        ckpt.read_stream_state(step)
    (step / ckpt.TRAINER_STATE).write_text("[]")
    with pytest.raises(ckpt.CheckpointError, match="does not hold a trainer state"):
        ckpt.read_trainer_state(step)


def test_device_without_cuda_is_a_config_error(monkeypatch):
    from elm_data.trainer.core.hardware import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device"):
        pick_device("cuda")
    with pytest.raises(ConfigError, match="device"):
        pick_device("nonsense")


def test_model_vocabulary_smaller_than_the_tokenizers_is_refused():
    from types import SimpleNamespace

    from elm_data.trainer.core.loop import Trainer

    trainer = Trainer(TrainConfig(), torch.device("cpu"), DistInfo(0, 1), progress=False)
    trainer.model = SimpleNamespace(config=SimpleNamespace(vocab_size=512))
    trainer.tokenizer = SimpleNamespace(vocab_size=32000)
    with pytest.raises(ConfigError, match="512.*32000"):
        trainer.check_vocabulary()
    trainer.model.config.vocab_size = 32000
    trainer.check_vocabulary()


def test_missing_run_log_is_not_found(tmp_path):
    from elm_data.core.errors import NotFound

    with pytest.raises(NotFound, match="log.jsonl"):
        read_log(tmp_path)


def test_effective_steps_drop_records_superseded_by_resume(tmp_path: Path):
    with RunLog(tmp_path) as log:
        log.write("header", manifest_id="m")
        for step in (1, 2, 3, 4):
            log.write("step", step=step, loss=float(step))
        log.write("resume", from_step=2)
        for step in (3, 4):
            log.write("step", step=step, loss=10.0 + step)
    with (tmp_path / "log.jsonl").open("a") as f:
        f.write('{"event": "step", "st')  # a run killed mid-line
    steps = effective_steps(read_log(tmp_path))
    assert [(r["step"], r["loss"]) for r in steps] == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0)]


def test_copy_of_config_is_independent():
    config = TrainConfig(model={"name": "tiny"})
    clone = copy.deepcopy(config).replace(max_steps=5)
    assert clone.max_steps == 5 and config.max_steps == 1000
    assert config.fingerprint() == clone.fingerprint()  # max_steps does not change what a step trains on
