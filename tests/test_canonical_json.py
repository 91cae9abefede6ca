"""The frozen JSON spellings, byte for byte, and the hashes that depend on them, as they were before they
moved.

The expected bytes and digests below were computed by the tree before ``elm_data/core/canonical_json.py``
existed (each module then spelled its own ``json.dumps``): a change to any spelling changes one of them.
"""

from __future__ import annotations

import ast
import datetime as dt
import decimal
import hashlib
from pathlib import Path

import numpy as np
import pytest
from synthetic_manifest import synthetic_manifest
from test_code_shape import ROOT, production_files

from elm_data.core import canonical_json
from elm_data.core.canonical_json import (
    ORDERED_UTF8,
    SORTED_ASCII,
    SORTED_SPACED,
    SORTED_UTF8,
    SPELLINGS,
    json_safe,
)
from elm_data.manifests import identity
from elm_data.manifests.manifest import ledger_digest
from elm_data.pipeline.stream.receipt import RECEIPT_VERSION, digest_spans, genesis

VALUE = {"b": [1, 2.5, None, True], "a": "é€\U0001f600", "c": {"z": 1, "y": "x"}}
SPELLED = {
    "SORTED_UTF8": '{"a":"é€\U0001f600","b":[1,2.5,null,true],"c":{"y":"x","z":1}}',
    "SORTED_ASCII": '{"a":"\\u00e9\\u20ac\\ud83d\\ude00","b":[1,2.5,null,true],"c":{"y":"x","z":1}}',
    "ORDERED_UTF8": '{"b":[1,2.5,null,true],"a":"é€\U0001f600","c":{"z":1,"y":"x"}}',
    "SORTED_SPACED": (
        '{"a": "\\u00e9\\u20ac\\ud83d\\ude00", "b": [1, 2.5, null, true], "c": {"y": "x", "z": 1}}'
    ),
}


def test_every_spelling_is_named_and_frozen_byte_for_byte():
    assert set(SPELLINGS) == set(SPELLED)  # the whole surface: a new spelling needs its frozen bytes here
    for name, spelling in SPELLINGS.items():
        assert spelling.dumps(VALUE) == SPELLED[name], name
        assert spelling.encode(VALUE) == SPELLED[name].encode("utf-8"), name


def test_a_fixed_manifest_keeps_its_id_merkle_root_and_digests(tmp_path, monkeypatch):
    """Covers the id payload (SORTED_UTF8), the shard records' Merkle leaves and block-index digests
    (SORTED_ASCII), the by-reason columns (SORTED_SPACED) and the ledger digests (ORDERED_UTF8). The format
    version is held at the one these were computed with; a deliberate change of what the id covers (a new
    shard column: the held-out counts moved both from fb64e5d6... and da97f004...) is re-pinned with values
    the tree before it computes."""
    monkeypatch.setattr(identity, "FORMAT_VERSION", 5)
    m = synthetic_manifest(
        tmp_path / "golden", {"a/x": [30, 20], "b/y": [25]}, weights={"a/x": 2.0, "b/y": 0.5}
    )
    assert m.manifest_id == "41d7400cd659be7c1619d3b9e72ff0d3110b7b14bbc72a232378d6c63e8a5d5b"
    assert m.info["merkle_root"] == "b0f6218789451bab00ddb178c4f1b8330956d30b75ffaf0bb05461e1cf318046"
    assert m.shards[0].blocks_sha256 == "edad0613876597687bd42d6db15777c57bd792fdd6255cf2048671c671b2d700"
    assert (
        ledger_digest(m.block_documents(0, 0))
        == "e426cacd9fff931155a15217512f156cb1394f4f1a98de386360b28510826aaf"
    )
    assert m.shards[0].to_row()["filtered_by_reason"] == '{"min_tokens": 3}'


def test_the_receipt_keeps_its_genesis_and_batch_digests():
    plan = {"mode": "packed", "seq_len": 127, "weights": {"b/y": 0.5, "a/x": 2.0}, "seed": 0}
    assert genesis("éééid", plan) == "d2531d3343f4722b65c49ae9d11391b4b834b5b3eb1b2c07a9b6ee433e80cdfb"
    span = {"source": "a", "subset": "ü", "shard_sha256": "00", "doc_id": "d€1", "index": 3}
    spans = [[span | {"doc_start": 0, "doc_end": 5, "start": 0, "end": 5}], []]
    packed = "5771ac5a1f561ce76f3a45182e8ab379bd1a6bcd8c3b42299e38cb150a06a06a"
    corenet = "55af7d2d6468ce21f5e3d310f142a4ef8dff564c58a5a4a9b267a43b27b6e834"
    assert digest_spans(7, spans, "packed").hex() == packed
    assert digest_spans(7, spans, "corenet").hex() == corenet


def test_the_spellings_hash_what_they_hashed_before():
    """The digests above, recomputed from the spellings alone (an oracle independent of the modules using
    them)."""
    plan = {"mode": "packed", "seq_len": 127, "weights": {"b/y": 0.5, "a/x": 2.0}, "seed": 0}
    assert hashlib.sha256(SORTED_ASCII.encode([RECEIPT_VERSION, "éééid", plan])).hexdigest() == genesis(
        "éééid", plan
    )
    rows = [[["a", "ü", "00", "d€1", 3, 0, 5, 0, 5]], []]
    assert hashlib.sha256(ORDERED_UTF8.encode([7, rows])).hexdigest() == (
        "5771ac5a1f561ce76f3a45182e8ab379bd1a6bcd8c3b42299e38cb150a06a06a"
    )
    assert SORTED_UTF8.encode({"é": 1}) == '{"é":1}'.encode() and SORTED_SPACED.dumps({}) == "{}"


def _calls(path: Path, name: str) -> list[ast.Call]:
    tree = ast.parse(path.read_text())
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == name]


def test_no_module_spells_canonical_json_itself():
    """The whole surface: outside the canonical module, no ``json.dumps`` sets separators (every hashed
    spelling fixes them), and no module defines its own JSON-safe converter."""
    own = Path(canonical_json.__file__).resolve()
    spelled, converters = [], []
    for path in production_files():
        if path.resolve() == own:
            continue
        for call in _calls(path, "json.dumps"):
            if any(k.arg == "separators" for k in call.keywords):
                spelled.append(f"{path.relative_to(ROOT)}:{call.lineno}")
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.FunctionDef)
                and "json" in node.name.lower()
                and "safe" in node.name.lower()
            ):
                converters.append(f"{path.relative_to(ROOT)}:{node.name}")
            if isinstance(node, ast.FunctionDef) and node.name.lstrip("_") in ("jsonable", "to_jsonable"):
                converters.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert spelled == [] and converters == []


@pytest.mark.parametrize(
    "value, expected",
    [
        ({"b": (1, 2), 3: {1}}, {"b": [1, 2], "3": [1]}),
        (dt.datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05"),
        (dt.date(2024, 1, 2), "2024-01-02"),
        (b"\x00\xff", "00ff"),
        (decimal.Decimal("1.50"), "1.50"),
        (np.arange(3), [0, 1, 2]),
        (np.int64(7), 7),
        (Path("a/b"), "a/b"),
        ([None, True, 1.5, "x"], [None, True, 1.5, "x"]),
    ],
)
def test_json_safe_gives_plain_json_types(value, expected):
    assert json_safe(value) == expected


def test_json_safe_sorts_keys_at_every_level_when_asked():
    value = {"b": {"d": 1, "c": 2}, "a": [{"f": 1, "e": 2}]}
    assert list(json_safe(value, sort_keys=True)) == ["a", "b"]
    assert list(json_safe(value, sort_keys=True)["b"]) == ["c", "d"]
    assert list(json_safe(value, sort_keys=True)["a"][0]) == ["e", "f"]
    assert list(json_safe(value)) == ["b", "a"]
