"""The stream's and the trainer's plain-dict records are named TypedDicts, one module each, held to what is
made.

Cursors (``partition.py``), spans (``sequences.py``), batches (``dataset.py``), stream states (``state.py``,
built by one function) and the trainer's ``trainer_state.json`` (``trainer/core/checkpoint.py``): each name's
keys are checked against the records the code really makes, and every TypedDict of the project is used in an
annotation.
"""

from __future__ import annotations

import ast
import itertools

from test_code_shape import ROOT, production_files

from elm_data.pipeline.stream import StreamLoader, TokenStream, merge_states
from elm_data.pipeline.stream.dataset import StreamBatch
from elm_data.pipeline.stream.partition import Cursor, Mixer, PartitionWalk
from elm_data.pipeline.stream.receipt import batch_spans, state_at
from elm_data.pipeline.stream.sequences import DocIdentity, Span
from elm_data.pipeline.stream.state import MergedStreamState, StreamState
from elm_data.trainer.core.checkpoint import TrainerState
from elm_data.trainer.proof.audit import TRAINER_STATE_FIELDS_VERIFIED


def keys(typed) -> set[str]:
    return set(typed.__required_keys__) | set(typed.__optional_keys__)


def test_batches_spans_cursors_and_states_have_exactly_their_named_keys(sample_manifest, tokenizer):
    stream = TokenStream(sample_manifest, batch_size=2, seq_len=64, tokenizer=tokenizer, weights="natural")
    loader = StreamLoader(stream)
    batches = list(itertools.islice(loader, 6))
    # as a reader makes them
    made = list(itertools.islice(stream.batches(range(stream.config.partitions)), 6))
    for batch in batches + made:  # the loader hands them out without their cursor (it keeps the position)
        assert set(batch) <= keys(StreamBatch) and set(StreamBatch.__required_keys__) <= set(batch)
        for span in itertools.chain.from_iterable(batch["spans"]):
            assert keys(DocIdentity) <= set(span) <= keys(Span)
    for cursor in [b["cursor"] for b in made] + list(loader.cursors.values()):
        assert set(cursor) <= keys(Cursor) and set(cursor.get("mixer", {})) <= keys(Mixer)
    assert {"input_ids", "spans", "tokens_by_source", "cursor", "batch_index", "partition"} <= set(made[0])
    own = loader.state_dict()
    assert set(own) == keys(StreamState)
    merged = merge_states([own])
    assert set(merged) == keys(MergedStreamState) == set(StreamState.__required_keys__)
    planned = state_at(stream.plan(), stream.manifest_id, 4)
    assert list(planned) == list(merged) and planned["cursors"].keys() == merged["cursors"].keys()
    walk = PartitionWalk(stream.plan(), 0)
    for bp, _cursor in itertools.islice(walk.batches(walk.start()), 3):
        for span in itertools.chain.from_iterable(batch_spans(bp, stream.plan())):
            assert keys(DocIdentity) <= set(span) <= keys(Span)


def test_the_trainer_state_names_what_audit_run_verifies():
    assert keys(TrainerState) == set(TRAINER_STATE_FIELDS_VERIFIED) | {"files"}


def _dict_keys(node: ast.Dict) -> set[str]:
    return {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}


def test_one_builder_makes_a_stream_state():
    """The whole surface: outside ``state.py`` no production dict literal holds a stream state's own keys."""
    own = {"global_batches", "cursors"}
    builders = []
    for path in production_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict) and own <= _dict_keys(node):
                builders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert builders == []  # state.stream_state assigns them one by one, in the saved order


def test_every_typed_dict_is_used_in_an_annotation():
    """Every TypedDict a production module defines is named in at least one annotation outside its
    definition."""
    classes: dict[str, tuple[str, set[str]]] = {}  # name -> (file, base names)
    annotated: set[str] = set()
    for path in production_files():
        tree = ast.parse(path.read_text())
        fields = set()  # a TypedDict's own field annotations do not count as a use
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = {n.id for b in node.bases for n in ast.walk(b) if isinstance(n, ast.Name)}
                classes[node.name] = (str(path.relative_to(ROOT)), bases)
                fields |= {id(s) for s in node.body if isinstance(s, ast.AnnAssign)}
        for node in ast.walk(tree):
            annotations = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args + node.args.kwonlyargs + node.args.posonlyargs
                annotations = [a.annotation for a in args] + [node.returns]
            elif isinstance(node, ast.AnnAssign) and id(node) not in fields:
                annotations = [node.annotation]
            for annotation in annotations:
                if annotation is not None:
                    names = ast.walk(ast.parse(ast.unparse(annotation)))
                    annotated |= {n.id for n in names if isinstance(n, ast.Name)}
    defined = {name: where for name, (where, bases) in classes.items() if "TypedDict" in bases}
    while grown := {n: w for n, (w, b) in classes.items() if b & set(defined) and n not in defined}:
        defined |= grown  # subclasses of a TypedDict are TypedDicts
    expected = {
        "Cursor",
        "Mixer",
        "DocIdentity",
        "Span",
        "StreamBatch",
        "StreamState",
        "MergedStreamState",
        "TrainerState",
    }
    assert expected <= set(defined), defined
    unused = {name: where for name, where in defined.items() if name not in annotated}
    assert unused == {}
