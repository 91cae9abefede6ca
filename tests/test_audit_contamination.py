"""`elm-data audit contamination`: planted evaluation passages are found exactly (equal to a brute-force
n-gram scan over word tuples), unrelated items give zero hits, and the report is bound to the manifest id."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
import sentencepiece
from click.testing import CliRunner
from planted_corpus import OTHER_VOCAB, brute_contamination, random_words, write_corpus

from elm_data.cli import run
from elm_data.manifests.contamination import MatchRule, audit_contamination
from elm_data.manifests.eval_tasks import jsonl_task
from elm_data.manifests.manifest import Manifest
from elm_data.sources.document import derived_doc_id
from elm_data.trainer.contamination_cli import contamination as contamination_command


def _prose(words: list[str]) -> str:
    """Words as a page shows them: capitals, commas and full stops (all removed by normalization)."""
    out = []
    for i, w in enumerate(words):
        out.append(w.capitalize() if i % 11 == 0 else w)
        if i % 11 == 10:
            out[-1] += "."
        elif i % 7 == 6:
            out[-1] += ","
    return " ".join(out)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tokenizer_path):
    """A corpus of c4 (2 shards) and wikipedia (1 shard) with items planted at known places."""
    rng = random.Random(23)
    items = {f"item{k}": random_words(rng, 30) for k in range(8)}
    shards = {
        "c4": [[random_words(rng, rng.randint(150, 300)) for _ in range(6)] for _ in range(2)],
        "wikipedia": [[random_words(rng, rng.randint(150, 300)) for _ in range(6)]],
    }

    def plant(subset, shard, doc, words, at):
        shards[subset][shard][doc][at:at] = words

    plant("c4", 0, 1, [w.upper() for w in items["item0"]], 40)  # whole item, case changed
    plant("c4", 1, 3, items["item1"], 0)  # whole item, in two subsets
    plant("wikipedia", 0, 2, items["item1"], 100)
    plant("wikipedia", 0, 4, items["item2"][:15], 7)  # 15 of 30 words: 3 of its 18 13-grams
    plant("c4", 0, 4, items["item3"][:12], 20)  # 12 words: shorter than a 13-gram, no match
    plant("c4", 1, 5, items["item4"][10:30], 60)  # the item's last 20 words
    texts = {s: [[_prose(d) for d in shard] for shard in docs] for s, docs in shards.items()}
    root = tmp_path_factory.mktemp("planted")
    manifest = write_corpus(root, texts, tokenizer_path)
    docs = {}
    for subset, subset_shards in texts.items():
        for s, shard in enumerate(subset_shards):
            sha = hashlib.sha256(
                (root / "redpajama" / subset / f"{subset}-{s:05d}.jsonl").read_bytes()
            ).hexdigest()
            docs.update({derived_doc_id(sha, i): (f"redpajama/{subset}", t) for i, t in enumerate(shard)})
    task = root / "planted.jsonl"
    lines = [{"id": k, "text": _prose(w)} for k, w in items.items()] + [{"id": "short", "text": "Too short."}]
    task.write_text("".join(json.dumps(x) + "\n" for x in lines))
    unrelated = root / "unrelated.jsonl"
    unrelated.write_text(
        "".join(
            json.dumps({"id": f"u{k}", "text": " ".join(random_words(rng, 40, OTHER_VOCAB))}) + "\n"
            for k in range(20)
        )
    )
    return {
        "manifest": manifest,
        "docs": docs,
        "items": {x["id"]: x["text"] for x in lines},
        "task": task,
        "unrelated": unrelated,
        "root": root,
    }


def _reported(result) -> dict[str, dict[str, tuple[set[str], set[str]]]]:
    """``{task: {subset: (item ids, doc ids)}}`` from the JSON report (every cell holds <= 5 of each)."""
    return {
        name: {k: (set(c["example_items"]), set(c["example_documents"])) for k, c in t["by_subset"].items()}
        for name, t in result.to_json()["tasks"].items()
    }


@pytest.mark.parametrize(("n", "min_overlap"), [(13, None), (13, 0.5), (8, None), (20, None)])
def test_planted_items_are_found_exactly_as_a_brute_force_scan(planted, tokenizer_path, n, min_overlap):
    tasks = [jsonl_task(planted["task"]), jsonl_task(planted["unrelated"])]
    result = audit_contamination(Manifest(planted["manifest"]), tasks, MatchRule(n, min_overlap))
    truth = brute_contamination(planted["items"], planted["docs"], n, min_overlap)
    expected = {k: (set(v), set().union(*v.values())) for k, v in truth.items()}
    reported = _reported(result)
    assert reported["planted"] == expected
    assert reported["unrelated"] == {}  # unrelated items: zero hits
    if (n, min_overlap) == (13, None):  # the planted places, spelled out
        assert {k: sorted(v[0]) for k, v in expected.items()} == {
            "redpajama/c4": ["item0", "item1", "item4"],
            "redpajama/wikipedia": ["item1", "item2"],
        }
    if min_overlap == 0.5:
        assert "item2" not in expected.get("redpajama/wikipedia", ({}, set()))[0]  # 3/18 n-grams < 50 %
    sp = sentencepiece.SentencePieceProcessor(model_file=tokenizer_path)
    report = result.to_json()["tasks"]["planted"]
    for key, cell in report["by_subset"].items():
        tokens = sum(len(sp.encode(planted["docs"][d][1])) for d in expected[key][1])
        assert (cell["documents"], cell["tokens"]) == (len(expected[key][1]), tokens)
    assert report["contaminated_items"] == len(set().union(*(v[0] for v in expected.values())))
    assert report["items_too_short"] == 1 + (n > 30) * 8


@pytest.mark.slow
def test_two_workers_give_the_one_worker_report(planted):
    tasks = [jsonl_task(planted["task"]), jsonl_task(planted["unrelated"])]
    manifest = Manifest(planted["manifest"])
    one, two = (audit_contamination(manifest, tasks, MatchRule(8), workers=w).to_json() for w in (1, 2))
    assert one == two and one["tasks"]["planted"]["contaminated_items"] >= 4


def test_the_report_is_bound_to_the_manifest_and_an_edited_manifest_is_refused(planted, tmp_path):
    result = CliRunner().invoke(
        contamination_command, [str(planted["manifest"]), "--tasks", str(planted["task"]), "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["manifest_id"] == Manifest(planted["manifest"]).manifest_id
    assert report["settings"]["ngram"] == 13 and report["settings"]["match"] == "any"
    assert report["scanned"]["redpajama/c4"]["documents"] == 12
    table = CliRunner().invoke(
        contamination_command, [str(planted["manifest"]), "--tasks", str(planted["task"])]
    )
    assert "redpajama/wikipedia" in table.output and "4/9" in table.output, table.output
    import shutil

    edited = tmp_path / "edited"
    shutil.copytree(planted["manifest"], edited)
    info = json.loads((edited / "manifest.json").read_text())
    info["seed"] = 1
    (edited / "manifest.json").write_text(json.dumps(info))
    code = run(["audit", "contamination", str(edited), "--tasks", str(planted["task"])])
    assert code == 2


def test_a_changed_shard_is_refused_not_scanned(planted, tmp_path, capsys):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(planted["root"], root)
    from elm_data.manifests.build import build_manifest

    build_manifest(root / "mixture.yaml", root / "m2", workers=1)
    shard = root / "redpajama" / "c4" / "c4-00000.jsonl"
    shard.write_bytes(shard.read_bytes().replace(b"a", b"b", 1))
    code = run(["audit", "contamination", str(root / "m2"), "--tasks", str(planted["task"])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "shard 0" in err[0], err


def test_audit_without_a_subcommand_is_still_the_mixture_audit(sample_manifest, capsys):
    assert run(["audit", str(sample_manifest), "--format", "json"]) == 0
    assert "redpajama/c4" in json.loads(capsys.readouterr().out)
    assert run(["audit", "--format", "json", str(sample_manifest)]) == 0
    capsys.readouterr()


@pytest.mark.slow  # trains a small run first
def test_run_mode_counts_only_what_the_run_consumed(planted, tmp_path):
    from test_trainer_run import small_config

    from elm_data.trainer.core.distributed import DistInfo
    from elm_data.trainer.core.loop import build_loader, load_tokenizer, train

    steps = 10
    config = small_config(planted["manifest"], max_steps=steps, seq_len=256, tokens_per_step=512, log_every=5)
    run_dir = train(config, out_dir=tmp_path / "run", progress=False).run_dir
    loader = build_loader(
        config, config.manifest_dir, load_tokenizer(config, Manifest(planted["manifest"])), DistInfo()
    )
    batches = iter(loader)
    consumed = {s["doc_id"] for _ in range(steps) for spans in next(batches)["spans"] for s in spans}
    assert 0 < len(consumed) < len(planted["docs"])
    result = CliRunner().invoke(
        contamination_command,
        [
            str(planted["manifest"]),
            "--tasks",
            str(planted["task"]),
            "--run",
            str(run_dir),
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    docs = {d: v for d, v in planted["docs"].items() if d in consumed}
    truth = brute_contamination(planted["items"], docs, 13)
    reported = {
        k: (set(c["example_items"]), set(c["example_documents"]))
        for k, c in report["tasks"]["planted"]["by_subset"].items()
    }
    assert reported == {k: (set(v), set().union(*v.values())) for k, v in truth.items()}
    assert report["run"] == str(run_dir)
    assert sum(c["documents"] for c in report["scanned"].values()) == len(consumed)


@pytest.mark.slow  # imports lm-eval (seconds)
def test_an_lm_eval_task_yaml_gives_the_same_hits_as_its_jsonl(planted, tmp_path, monkeypatch):
    """A local lm-eval task (dataset_path: json, data_files beside the YAML): each item is prompt + gold
    answer."""
    from elm_data.manifests.eval_tasks import load_tasks

    folder = tmp_path / "task"
    folder.mkdir()
    rows = [
        {"id": k, "question": " ".join(t.split()[:20]), "answer": " ".join(t.split()[20:])}
        for k, t in planted["items"].items()
    ]
    (folder / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "planted_qa.yaml").write_text(
        "task: planted_qa\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: items.jsonl\n"
        "test_split: test\noutput_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: "
        "'{{answer}}'\n"
    )
    monkeypatch.chdir(tmp_path)  # data_files resolve against the YAML's folder, not the working directory
    (task,) = load_tasks([str(folder / "planted_qa.yaml")])
    assert [i.item_id for i in task.items] == list(planted["items"])
    manifest = Manifest(planted["manifest"])
    from_yaml = _reported(audit_contamination(manifest, [task]))["planted_qa"]
    assert from_yaml == _reported(audit_contamination(manifest, [jsonl_task(planted["task"])]))["planted"]


@pytest.mark.slow  # imports lm-eval and indexes its task registry (seconds)
def test_an_lm_eval_task_name_offline_is_one_line(planted, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    code = run(["audit", "contamination", str(planted["manifest"]), "--tasks", "arc_easy"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "arc_easy" in err[0] and "hub" in err[0], err
    assert run(["audit", "contamination", str(planted["manifest"]), "--tasks", "no_such_task_xyz"]) == 2
    assert "neither a .jsonl/.yaml file nor an lm-eval task name" in capsys.readouterr().err
