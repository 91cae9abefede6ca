"""`elm-data eval`: lm-evaluation-harness on a local task (offline), held-out perplexity, the hub-less
error."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import sentencepiece as spm
import torch
from click.testing import CliRunner
from export_fixtures import OFFLINE, STEPS, trained_run  # noqa: F401 (a fixture)

from elm_data.model import load_model

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.slow
TASK = "elm_data_tiny_choice"
WORDS = ["river", "stone", "cloud", "apple", "winter", "engine", "garden", "silver"]


@pytest.fixture(scope="module")
def local_task(tmp_path_factory):
    """A multiple-choice lm-eval task over a JSON-lines file: (include_path, documents)."""
    folder = tmp_path_factory.mktemp("tasks")
    generator = torch.Generator().manual_seed(0)
    docs = []
    for i in range(10):
        picks = torch.randperm(len(WORDS), generator=generator)[:4].tolist()
        docs.append(
            {
                "question": f"Which word comes after {WORDS[i % 8]}?",
                "choices": [WORDS[p] for p in picks],
                "label": i % 4,
            }
        )
    (folder / "data.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "tiny.yaml").write_text(
        f"task: {TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: "
        f"{folder / 'data.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\nmetric_list:\n  - metric: acc\n"
    )
    return folder, docs


def oracle_logliks(model, sp, doc) -> list[float]:
    """log p(" " + choice | BOS + question) per choice, from elm-data's forward and SentencePiece itself."""
    context = [1, *sp.encode(doc["question"])]
    scores = []
    for choice in doc["choices"]:
        whole = [1, *sp.encode(doc["question"] + " " + choice)]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([whole[:-1]]))[0].double(), -1)
        scores.append(sum(float(logp[t - 1, whole[t]]) for t in range(len(context), len(whole))))
    return scores


def test_eval_runs_a_local_task_and_matches_an_independent_scorer(trained_run, local_task, tokenizer_path):  # noqa: F811
    from elm_data.trainer.export.evaluate import lm_eval_results
    from elm_data.trainer.export.hf import export_checkpoint

    checkpoint = trained_run / "checkpoints" / f"step_{STEPS:08d}"
    folder, docs = local_task
    export = export_checkpoint(checkpoint, folder.parent / "hf", echo=lambda *_: None)
    results = lm_eval_results(export, [TASK], include_path=folder, log_samples=True)
    model, sp = load_model(checkpoint).eval(), spm.SentencePieceProcessor(model_file=tokenizer_path)
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    correct = 0
    for sample, doc in zip(samples, docs, strict=True):
        expected = oracle_logliks(model, sp, doc)
        got = [float(r[0][0]) for r in sample["resps"]]
        assert got == pytest.approx(expected, abs=1e-4)
        correct += max(range(4), key=lambda i: expected[i]) == doc["label"]
    assert results["results"][TASK]["acc,none"] == pytest.approx(correct / len(docs))


def test_rolling_perplexity_task_scores_each_document_after_one_bos(trained_run, tmp_path, tokenizer_path):  # noqa: F811
    """A local loglikelihood_rolling task (bits per byte, as lm-eval's wikitext): every document's score and
    the aggregate equal log p(text | BOS) computed directly with elm-data's forward and SentencePiece."""
    from elm_data.trainer.export.evaluate import lm_eval_results
    from elm_data.trainer.export.hf import export_checkpoint

    texts = [
        "The river ran past the old stone mill, and the engine hummed.",
        "émoji 😀 and 中文 in one line.",
        "def f(x):\n    return x + 1\n",
        "Winter came early; the silver garden slept under snow.",
    ]
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (tmp_path / "tasks" / "rolling.yaml").write_text(
        f"task: elm_data_tiny_rolling\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / 'tasks' / 'docs.jsonl'}\ntest_split: test\noutput_type: "
        "loglikelihood_rolling\n"
        "doc_to_text: ''\ndoc_to_target: '{{text}}'\nmetric_list:\n  - metric: word_perplexity\n"
        "  - metric: byte_perplexity\n  - metric: bits_per_byte\n"
    )
    checkpoint = trained_run / "checkpoints" / f"step_{STEPS:08d}"
    export = export_checkpoint(checkpoint, tmp_path / "hf", echo=lambda *_: None)
    results = lm_eval_results(
        export, ["elm_data_tiny_rolling"], include_path=tmp_path / "tasks", log_samples=True
    )
    model, sp = load_model(checkpoint).eval(), spm.SentencePieceProcessor(model_file=tokenizer_path)
    expected = []
    for text in texts:
        ids = [1, *sp.encode(text)]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0].double(), -1)
        expected.append(sum(float(logp[i - 1, ids[i]]) for i in range(1, len(ids))))
    samples = sorted(results["samples"]["elm_data_tiny_rolling"], key=lambda s: s["doc_id"])
    assert [float(s["resps"][0][0]) for s in samples] == pytest.approx(expected, abs=1e-3)
    bits_per_byte = -sum(expected) / sum(len(t.encode()) for t in texts) / math.log(2)
    got = results["results"]["elm_data_tiny_rolling"]["bits_per_byte,none"]
    assert got == pytest.approx(bits_per_byte, rel=1e-5)


def test_eval_command_writes_results_beside_the_run_with_held_out_perplexity(trained_run, local_task):  # noqa: F811
    from elm_data.trainer.core.config import TrainConfig
    from elm_data.trainer.core.distributed import DistInfo
    from elm_data.trainer.core.loop import build_loader, load_tokenizer
    from elm_data.trainer.core.runlog import read_log
    from elm_data.trainer.export_cli import eval_command

    folder, _ = local_task
    checkpoint = trained_run / "checkpoints" / f"step_{STEPS // 2:08d}"
    args = [str(checkpoint), "--tasks", TASK, "--include-path", str(folder), "--heldout-batches", "2"]
    result = CliRunner().invoke(eval_command, args)
    assert result.exit_code == 0, result.output
    report = json.loads((trained_run / "eval" / f"{checkpoint.name}.json").read_text())
    assert TASK in report["results"] and f"{TASK}" in result.output and "held-out perplexity" in result.output
    held = report["held_out"]

    # replay the run's stream from the start, skip what the first STEPS // 2 steps consumed, score the next
    # two
    header = read_log(trained_run)[0]
    config = TrainConfig.from_dict(header["config"], base_dir=trained_run)
    from elm_data.manifests.manifest import Manifest

    manifest = Manifest(header["manifest_dir"])
    batches = iter(build_loader(config, manifest.path, load_tokenizer(config, manifest), DistInfo()))
    consumed = [next(batches)["input_ids"] for _ in range(STEPS // 2)]
    unseen = [next(batches)["input_ids"] for _ in range(2)]
    model = load_model(checkpoint).eval()
    total, count = 0.0, 0
    for ids in unseen:
        assert not any(torch.equal(ids, seen) for seen in consumed)
        with torch.no_grad():
            logp = torch.log_softmax(model(ids[:, :-1]).double(), -1)
        labels = ids[:, 1:]
        keep = labels != 32000
        total -= float(logp.gather(-1, labels.clamp(max=31999)[..., None])[..., 0][keep].sum())
        count += int(keep.sum())
    assert held["tokens"] == count and held["step"] == STEPS // 2
    assert held["loss"] == pytest.approx(total / count, rel=1e-5)
    assert held["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_default_tasks_without_the_hub_fail_in_one_line(trained_run, tmp_path):  # noqa: F811
    env = {**os.environ, **OFFLINE}
    command = [
        sys.executable,
        "-m",
        "elm_data",
        "eval",
        str(trained_run),
        "--tasks",
        "arc_easy",
        "--limit",
        "2",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode != 0
    assert "need the Hugging Face hub" in done.stderr and "Traceback" not in done.stderr
