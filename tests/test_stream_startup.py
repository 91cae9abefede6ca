"""The stream's start-up (issues 25 and 27): what a stream process imports, and planning that cannot succeed.

``elm-data stream`` reads in one process and prints numpy arrays: it must import neither torch (~1.1 CPU-s,
~190 MiB of RSS) nor pandas (~0.2 CPU-s, ~47 MiB, which pyarrow imports on its own unless told otherwise).
A loader that hands out tensors, or reads through DataLoader workers, gives the same bytes.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from elm_data.pipeline.stream import plan as plan_module

# torch and pandas (~1.1 CPU-s, ~0.2 CPU-s); pyarrow's compute module (~30 ms: the manifest's reads avoid it)
# and tenacity (only a remote read that retries needs it)
HEAVY = ("torch", "pandas", "pyarrow.compute", "tenacity")


def _modules_after(code: str, heavy: tuple[str, ...] = HEAVY) -> dict:
    """Run ``code`` in a fresh interpreter; the ``heavy`` modules it imported and what it printed last as
    JSON."""
    script = f"{code}\nimport sys, json\nprint(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return {"imported": json.loads(out.strip().splitlines()[-1]), "out": out}


# every way `elm-data stream` reads: printed sequences, JSON lines, a full natural pass
STREAM_ARGS = {
    "take": ["--take", "2"],
    "jsonl": ["--take", "1", "--format", "jsonl"],
    "full pass": ["--full-pass"],
}


@pytest.mark.parametrize("way", list(STREAM_ARGS))
def test_the_stream_command_imports_neither_torch_nor_pandas(sample_manifest, tokenizer_path, way):
    args = [
        "stream",
        str(sample_manifest),
        "--seq-len",
        "256",
        "--tokenizer",
        tokenizer_path,
        *STREAM_ARGS[way],
    ]
    code = (
        "from click.testing import CliRunner; from elm_data.cli import cli; "
        f"r = CliRunner().invoke(cli, {args!r}); print(r.output); assert r.exit_code == 0, r.output"
    )
    got = _modules_after(code)
    assert got["imported"] == [], f"elm-data stream ({way}) imported {got['imported']}"
    assert "tokens" in got["out"]


def test_pyarrow_imports_pandas_only_where_pandas_is_used():
    base = "import pyarrow as pa\nfrom elm_data.core.lazy import pyarrow_without_implicit_pandas\n"
    probe = "pa.array([1, 2]); pa.table({'a': [1]})"
    pandas = ("pandas",)
    assert _modules_after(f"{base}{probe}", pandas)["imported"] == ["pandas"]  # pyarrow's own probe, unasked
    assert _modules_after(f"{base}pyarrow_without_implicit_pandas()\n{probe}", pandas)["imported"] == []
    # where pandas is really used, pyarrow imports it and behaves as usual (pandas objects are recognised)
    used = (
        f"{base}pyarrow_without_implicit_pandas()\n"
        "df = pa.table({'a': [1, 2]}).to_pandas(); assert list(df['a']) == [1, 2]\n"
        "import pandas as pd\n"
        "assert pa.types.is_dictionary(pa.array(pd.Categorical(['x', 'y'])).type)\n"
        "assert pa.Table.from_pandas(pd.DataFrame({'b': [1.5]})).column('b').to_pylist() == [1.5]"
    )
    assert _modules_after(used, pandas)["imported"] == ["pandas"]


def _batches(stream, **loader_args) -> list[dict]:
    """The loader's first 24 batches."""
    from elm_data.pipeline.stream import StreamLoader

    return list(itertools.islice(StreamLoader(stream, **loader_args), 24))


def test_numpy_and_tensor_batches_are_the_same_bytes(sample_manifest, tokenizer):
    """(With workers, the loader's tensors are those of one process: ``test_stream.py``.)"""
    import torch

    from elm_data.pipeline.stream import TokenStream

    stream = TokenStream(
        sample_manifest, batch_size=2, seq_len=128, tokenizer=tokenizer, weights="natural", partitions=4
    )
    arrays = _batches(stream, tensors=False)
    tensors = _batches(stream)
    assert len(arrays) == len(tensors) == 24
    for a, t in zip(arrays, tensors, strict=True):
        assert isinstance(a["input_ids"], np.ndarray) and isinstance(t["input_ids"], torch.Tensor)
        assert np.array_equal(a["input_ids"], t["input_ids"].numpy())
        assert a["spans"] == t["spans"]


def _fitted(held: np.ndarray, weights: np.ndarray) -> np.ndarray | None:
    """The shares by iterative proportional fitting with no early exit (the oracle); None where it fails."""
    target = weights / weights.sum()
    shares = held * target[None, :]
    for _ in range(20_000):
        shares /= shares.sum(axis=1, keepdims=True)
        mean = shares.mean(axis=0)
        if np.abs(mean - target).max() <= plan_module.SHARE_TOLERANCE:
            return shares
        shares *= np.divide(target, mean, out=np.zeros_like(target), where=mean > 0)[None, :]
    return None


@pytest.mark.slow
def test_weight_shares_are_those_of_the_full_fitting_and_a_hopeless_mix_fails_at_once():
    rng = np.random.default_rng(7)
    outcomes = set()
    for case in range(6):
        partitions, sources = int(rng.integers(2, 9)), int(rng.integers(2, 6))
        held = rng.random((partitions, sources)) < rng.uniform(0.3, 0.9)
        # every partition holds a source
        held[np.arange(partitions), rng.integers(0, sources, partitions)] = True
        weights = rng.random(sources) + 0.01
        expected = _fitted(held, weights)
        try:
            got = plan_module.partition_shares(held, weights, [f"s{i}" for i in range(sources)])
        except plan_module.PlanError:
            got = None
        outcomes.add(expected is None)
        if expected is None:
            assert got is None, f"case {case}: the fitting fails, partition_shares did not"
        else:
            assert got is not None and np.array_equal(got, expected), f"case {case}"
    assert outcomes == {True, False}  # both kinds of mix were met
    # a source held by 1 of 16 partitions cannot have half the tokens: refused without 20,000 fitting rounds
    held = np.ones((16, 13), dtype=bool)
    held[1:, 0] = False
    weights = np.ones(13)
    weights[0] = 12.0
    cpu = time.process_time()
    with pytest.raises(plan_module.PlanError, match="cannot be met with 16 partitions"):
        plan_module.partition_shares(held, weights, [f"s{i}" for i in range(13)])
    assert time.process_time() - cpu < 0.05  # the full fitting takes ~0.3 CPU-s here


def _blas_after_looking_up(group: list[str], command: str) -> dict:
    """In a fresh interpreter without OPENBLAS_NUM_THREADS: look ``command`` up as the command line does,
    then import numpy; the variable's value and how many threads carry the main thread's name after (OpenBLAS'
    threads are unnamed; pyarrow's jemalloc thread names itself)."""
    code = (
        "import os, json, click; from elm_data.cli import cli\n"
        "ctx, group = click.Context(cli), cli\n"
        f"for name in {group!r}: group = group.get_command(ctx, name)\n"
        f"group.get_command(ctx, {command!r})\n"
        "import numpy\n"
        "names = [open(f'/proc/self/task/{t}/comm').read() for t in os.listdir('/proc/self/task')]\n"
        "main = open('/proc/self/comm').read()\n"
        "print(json.dumps([os.environ.get('OPENBLAS_NUM_THREADS'), names.count(main)]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    value, threads = json.loads(out.stdout.strip().splitlines()[-1])
    return {"value": value, "threads": threads}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc")
@pytest.mark.parametrize(
    "group, command",
    [([], "stream"), (["build"], "manifest")],  # the two modules in NO_LINEAR_ALGEBRA
)
def test_commands_without_linear_algebra_start_numpy_without_blas_threads(group, command):
    # OpenBLAS' idle threads spin ~0.1 CPU-s at start-up (issue 25): these commands never multiply matrices
    got = _blas_after_looking_up(group, command)
    assert got == {"value": "1", "threads": 1}, got


def test_other_commands_and_a_users_setting_keep_their_blas_threads(monkeypatch):
    assert _blas_after_looking_up([], "sample")["value"] is None  # not in NO_LINEAR_ALGEBRA: untouched
    from elm_data.core import procs

    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    monkeypatch.delitem(sys.modules, "numpy")  # as if not imported yet: the user's value stays
    assert procs.blas_without_thread_pool() and os.environ["OPENBLAS_NUM_THREADS"] == "3"


# numpy's linear algebra (what OpenBLAS threads would speed up): the ``@`` operator and these calls
LINEAR_ALGEBRA_CALLS = {"dot", "vdot", "matmul", "einsum", "tensordot", "inner", "outer", "linalg", "kron"}


def linear_algebra_in(path) -> list[str]:
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.BinOp | ast.AugAssign) and isinstance(node.op, ast.MatMult):
            found.append(f"{path.name}:{node.lineno} @")
        elif isinstance(node, ast.Attribute) and node.attr in LINEAR_ALGEBRA_CALLS:
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
    return found


def test_no_module_a_no_linear_algebra_command_may_import_multiplies_matrices():
    """``NO_LINEAR_ALGEBRA`` holds: every production module the stream and manifests command modules import,
    at module level or lazily in a function (the import graph of test_code_shape), has no matrix product
    and no numpy linear algebra call; the scan itself finds them where they are."""
    import networkx as nx
    from test_code_shape import import_graph, module_of, production_files

    from elm_data.cli import NO_LINEAR_ALGEBRA

    graph = import_graph()
    reached = set(NO_LINEAR_ALGEBRA).union(*(nx.descendants(graph, m) for m in NO_LINEAR_ALGEBRA))
    assert {"elm_data.pipeline.stream.dataset", "elm_data.manifests.build"} <= reached
    paths = {module_of(p): p for p in production_files()}
    found = [hit for module in sorted(reached) for hit in linear_algebra_in(paths[module])]
    assert not found, f"linear algebra under a NO_LINEAR_ALGEBRA command: {found}"
    assert any(hit.endswith(" @") for hit in linear_algebra_in(paths["elm_data.model.layers"]))  # it sees one
