"""House style the formatter cannot hold: where a function may import the project's own modules.

A function-level import of an ``elm_data`` module is allowed in a command module (``cli.py``, ``*_cli.py``,
``demo.py``: the commands load their work on first use, so ``elm-data --help`` stays fast) and in the modules
of ``LAZY`` below, each for the reason it gives; anywhere else the import belongs at the top of the module.
"""

from __future__ import annotations

import ast
from pathlib import Path

from test_code_shape import ROOT, production_files

LAZY = {
    "manifests/build.py": "apache_beam (and grpc) only for a Beam build, dedup_filter only for filters.dedup",
    "manifests/shard_work.py": "dedup_filter (and the audits it imports) loads only for filters.dedup",
    "pipeline/stream/dataset.py": "torch loads only for tensors (torch_data.py), not at stream start-up",
    "pipeline/stream/loader.py": "torch loads only for tensors or DataLoader workers (torch_data.py)",
    "trainer/proof/records.py": "the plan and receipt modules (seconds to import) load only for a plan walk",
    "trainer/proof/audit.py": "the stream, plan and checkpoint modules load only for --verify's deep checks",
    "trainer/proof/trace.py": "the stream (seconds to import) loads only to build a --text index",
    "trainer/bench/efficiency.py": "matplotlib (efficiency_plots) loads only when plots are written",
}


def is_command_module(path: Path) -> bool:
    return path.name in ("cli.py", "demo.py") or path.name.endswith("_cli.py")


def own_function_level_imports(path: Path) -> list[str]:
    """``function:line module`` of every import of an ``elm_data`` module inside a function of ``path``."""
    found = []
    for fn in ast.walk(ast.parse(path.read_text())):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").startswith("elm_data")
            ):
                found.append(f"{fn.name}:{node.lineno} {'.' * node.level}{node.module or ''}")
            elif isinstance(node, ast.Import) and any(a.name.startswith("elm_data") for a in node.names):
                found.append(f"{fn.name}:{node.lineno} {node.names[0].name}")
    return found


def test_function_level_imports_of_the_project_only_where_they_have_a_reason():
    unexplained = {}
    for path in production_files():
        rel = path.relative_to(ROOT).as_posix()
        if is_command_module(path) or rel in LAZY:
            continue
        if found := own_function_level_imports(path):
            unexplained[rel] = found
    assert unexplained == {}


def test_every_reason_still_names_a_module_with_such_an_import():
    """The table holds no stale entry: each listed module still imports the project inside a function."""
    stale = [rel for rel in LAZY if not own_function_level_imports(ROOT / rel)]
    assert stale == []


def test_no_formatter_escapes_and_lines_of_at_most_110_characters():
    """The whole surface: every Python file of the repository (production, tests, benchmarks) is left to the
    formatter (no skip or off escape comment), and ruff holds each line to 110 characters (E501)."""
    import tomllib

    escapes = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted(ROOT.rglob("*.py"))
        if not any(
            part.startswith(".") or part.endswith(".egg-info") for part in path.relative_to(ROOT).parts
        )
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "fmt: " + "skip" in line or "fmt: " + "off" in line
    ]
    assert escapes == []
    ruff = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]
    assert ruff["line-length"] == 110 and "E501" in ruff["lint"]["select"]
    assert not [p for p in ROOT.rglob("ruff.toml") if ".git" not in p.parts]  # no folder sets its own length
