"""Evaluation items for the contamination audit: local JSONL, lm-eval's local task YAML, or an lm-eval task
name.

A task spec is

- a ``.jsonl`` / ``.json`` file: one JSON object per line with a string ``text`` (the item as the model sees
it)
  and an id in ``id`` (else ``doc_id``, else the 0-based line number); the task is named after the file's
  stem;
- a ``.yaml`` / ``.yml`` file: an lm-eval task config (``task: NAME``, ``dataset_path: json``,
  ``dataset_kwargs: {data_files: …}``); lm-eval (the ``eval`` extra) loads it offline, its ``data_files``
  relative to the YAML's folder. An item's text is ``doc_to_text`` then the gold answer (``doc_to_target``;
  for a multiple-choice task, the gold choice's text), joined by a space, as a contaminated page would hold
  them;
- anything else: an lm-eval task (or group) name, loaded from the Hugging Face hub; offline, one line saying
so.

Every refusal is one line (:class:`TaskError`).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elm_data.core.errors import ElmDataError
from elm_data.core.settings import load_mapping

MAX_ITEM_LINE_BYTES = 16 << 20  # one evaluation item per line: a longer line is a broken file, not an item


class TaskError(ElmDataError, ValueError):
    """A task spec that cannot be read: missing file, bad line, not an lm-eval task, hub unreachable."""


@dataclass(frozen=True, slots=True)
class EvalItem:
    item_id: str
    text: str


@dataclass(frozen=True)
class EvalTask:
    """One task's items, in file (or dataset) order; ``origin`` says where they came from."""

    name: str
    items: tuple[EvalItem, ...]
    origin: str


def load_tasks(specs: list[str] | tuple[str, ...]) -> list[EvalTask]:
    """Each spec's tasks (a group name may give several), in order; task names must be distinct."""
    tasks: list[EvalTask] = []
    for spec in specs:
        path = Path(spec)
        if path.suffix in (".jsonl", ".json"):
            tasks.append(jsonl_task(path))
        elif path.suffix in (".yaml", ".yml"):
            tasks.extend(lm_eval_yaml_tasks(path))
        else:
            tasks.extend(lm_eval_named_tasks(spec))
    names = [t.name for t in tasks]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise TaskError(f"--tasks: task names must be distinct, {twice} given twice")
    return tasks


def jsonl_task(path: Path) -> EvalTask:
    """A JSONL file's items (``text`` and ``id``/``doc_id``/line number)."""
    if not path.is_file():
        raise TaskError(f"--tasks: no such file: {path}")
    items = []
    with path.open("rb") as f:
        for number, line in enumerate(f):
            if len(line) > MAX_ITEM_LINE_BYTES:
                raise TaskError(f"{path}:{number + 1}: line longer than {MAX_ITEM_LINE_BYTES} bytes")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as err:  # RecursionError: nested about 1,000 levels deep
                raise TaskError(f"{path}:{number + 1}: not JSON ({err})") from None
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise TaskError(f"{path}:{number + 1}: expected an object with a string 'text' field")
            item_id = record.get("id", record.get("doc_id", number))
            items.append(EvalItem(str(item_id), text))
    return EvalTask(path.stem, tuple(items), str(path))


def _task_items(name: str, task: Any) -> EvalTask:
    """An lm-eval ``ConfigurableTask``'s evaluation documents as items (prompt + gold answer)."""
    docs = task.eval_docs
    items = []
    for number, doc in enumerate(docs):
        prompt = task.doc_to_text(doc)
        target = task.doc_to_target(doc)
        if task.config.output_type == "multiple_choice":
            choices = task.doc_to_choice(doc)
            golds = target if isinstance(target, list) else [target]
            target = " ".join(choices[g] if isinstance(g, int) else str(g) for g in golds)
        elif isinstance(target, list):
            target = " ".join(map(str, target))
        text = f"{prompt} {target}" if isinstance(prompt, str) else f"{' '.join(map(str, prompt))} {target}"
        item_id = doc.get("id", doc.get("doc_id", number)) if isinstance(doc, dict) else number
        items.append(EvalItem(str(item_id), text))
    return EvalTask(name, tuple(items), f"lm-eval:{name}")


def _lm_eval():
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise TaskError(
            "lm-eval is not installed: pip install 'elm-data[eval]' (or give --tasks a JSONL file)"
        ) from None
    return TaskManager


def lm_eval_yaml_tasks(path: Path) -> list[EvalTask]:
    """The tasks of an lm-eval local task YAML (loaded offline by lm-eval; data files relative to the
    YAML)."""
    config = load_mapping(path, "lm-eval task config")
    name = config.get("task")
    if not isinstance(name, str) or not name:
        raise TaskError(f"{path}: not an lm-eval task config (no 'task: NAME')")
    manager = _lm_eval()(include_path=str(path.parent.resolve()), include_defaults=False)
    try:
        with _working_dir(path.parent):
            loaded = manager.load([name])["tasks"]
    except Exception as err:  # lm-eval raises whatever datasets/jinja raise: a broken task is the user's file
        raise TaskError(f"{path}: lm-eval could not load task {name!r}: {_one_line(err)}") from None
    return [_task_items(n, t) for n, t in sorted(loaded.items())]


def lm_eval_named_tasks(name: str) -> list[EvalTask]:
    """An lm-eval task or group by name (its datasets come from the Hugging Face hub)."""
    manager = _lm_eval()()
    if name not in manager.all_tasks:
        raise TaskError(f"--tasks {name!r}: neither a .jsonl/.yaml file nor an lm-eval task name")
    try:
        loaded = manager.load([name])["tasks"]
    except Exception as err:  # network errors come from requests/huggingface_hub/datasets in many types
        raise TaskError(
            f"--tasks {name}: could not load it from the Hugging Face hub ({_one_line(err)}); "
            "offline, pass the task as a local JSONL or lm-eval YAML"
        ) from None
    return [_task_items(n, t) for n, t in sorted(loaded.items())]


@contextlib.contextmanager
def _working_dir(path: Path):
    """lm-eval resolves a YAML's ``data_files`` against the working directory: make it the YAML's folder."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:300]
