"""The shape of the code itself: imports point down the layers, no module imports itself through others, and
production functions fit on a screen.

The layer order is the one in docs/ARCHITECTURE.md; a folder may import its own modules and any folder of a
lower layer, never one of the same or a higher layer. Within a folder the modules import one way too: the
graph of module imports has no cycle (no strongly connected component of two or more modules). The checks read
the source with ``ast`` (lazy imports inside functions and ``TYPE_CHECKING`` imports count too), so they hold
whatever is installed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]

# folder -> layer; imports go from a higher number to a lower one only (equal numbers may not import each
# other).
# trainer/ is split by job into sub-packages that import one way among themselves: core below all; proof,
# compress and bench on core only (not on each other); export on proof and core; trainer/*.py (the click
# commands) on any of them.
LAYERS = {
    "elm_data/core": 0,
    "sources": 1,
    "model": 1,
    "pipeline": 2,
    "manifests": 3,
    "pipeline/stream": 4,
    "trainer/core": 5.0,
    "trainer/proof": 5.1,
    "trainer/compress": 5.1,
    "trainer/bench": 5.1,
    "trainer/export": 5.2,
    "trainer": 5.3,
    "elm_data": 6,
}
PACKAGE_OF = {"core": "elm_data/core", "sources": "sources", "model": "model", "pipeline": "pipeline"}
PACKAGE_OF |= {"manifests": "manifests", "trainer": "trainer"}
TRAINER_PARTS = {folder.split("/")[1] for folder in LAYERS if folder.startswith("trainer/")}
MAX_FUNCTION_LINES = 60
# the one module that moves a finished file or directory into place
ATOMIC_WRITER = "elm_data/core/outputs.py"
RENAMES = {("os", "replace"), ("os", "rename"), ("os", "renames"), ("shutil", "move")}


def production_files(root: Path = ROOT) -> list[Path]:
    return sorted(p for folder in LAYERS for p in (root / folder).glob("*.py"))


def folder_of_module(module: str) -> str | None:
    """The repository folder of an ``elm_data`` module name; None for third-party modules."""
    parts = module.split(".")
    if parts[0] != "elm_data":
        return None
    if len(parts) == 1 or parts[1] not in PACKAGE_OF:
        return "elm_data"
    if parts[1] == "pipeline" and len(parts) > 2 and parts[2] == "stream":
        return "pipeline/stream"
    if parts[1] == "trainer" and len(parts) > 2 and parts[2] in TRAINER_PARTS:
        return "trainer/" + parts[2]
    return PACKAGE_OF[parts[1]]


def package_of(folder: str) -> str:
    """The ``elm_data`` package a repository folder is installed as (``trainer/core`` ->
    ``elm_data.trainer.core``)."""
    package = "elm_data" if folder == "elm_data" else "elm_data." + folder.replace("/", ".")
    return package.replace("elm_data.elm_data.", "elm_data.")


def module_of(path: Path, root: Path = ROOT) -> str:
    """The module name of a production file (a folder's ``__init__.py`` is its package)."""
    package = package_of(path.parent.relative_to(root).as_posix())
    return package if path.stem == "__init__" else f"{package}.{path.stem}"


def imported_folders(path: Path, root: Path = ROOT) -> set[tuple[str, int]]:
    """``(folder, line)`` of every elm_data import in ``path`` (absolute and relative)."""
    package = package_of(path.parent.relative_to(root).as_posix())
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from elm_data.pipeline import stream`, `from elm_data.trainer import cli`
            submodule = base == "elm_data" or base.endswith((".pipeline", ".trainer"))
            names = [f"{base}.{a.name}" if submodule else base for a in node.names]
        for name in names:
            target = folder_of_module(name)
            if target is not None:
                found.add((target, node.lineno))
    return found


def layer_violations(root: Path = ROOT) -> list[str]:
    out = []
    for path in production_files(root):
        folder = path.parent.relative_to(root).as_posix()
        for target, line in sorted(imported_folders(path, root)):
            if target != folder and LAYERS[target] >= LAYERS[folder]:
                layers = f"layer {LAYERS[target]} >= {LAYERS[folder]}"
                out.append(f"{path.relative_to(root)}:{line} imports {target} ({layers})")
    return out


def imported_modules(path: Path, modules: set[str], root: Path = ROOT) -> set[tuple[str, int]]:
    """``(module, line)`` of every import in ``path`` of one of ``modules`` (module level, in functions, under
    ``TYPE_CHECKING``; absolute and relative). ``from P import x`` imports module ``P.x`` when there is one,
    else ``P``; a name that is no module of ``modules`` stands for the nearest enclosing one (its package)."""
    package = package_of(path.parent.relative_to(root).as_posix())
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for name in names:
            while name not in modules and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in modules:
                found.add((name, node.lineno))
    return found


def import_graph(root: Path = ROOT) -> nx.DiGraph:
    """Production modules, and an edge ``a -> b`` (with the ``line`` of ``a`` that imports) for each import of
    ``b``."""
    paths = {module_of(path, root): path for path in production_files(root)}
    graph = nx.DiGraph()
    graph.add_nodes_from(paths)
    for module, path in paths.items():
        for target, line in sorted(imported_modules(path, set(paths), root), reverse=True):
            if target != module:
                # the first line that imports it (sorted, last wins)
                graph.add_edge(module, target, line=line)
    return graph


def import_cycles(root: Path = ROOT) -> list[str]:
    """Every strongly connected component of two or more modules, as ``a:line -> b`` edges inside it."""
    graph = import_graph(root)
    out = []
    for component in nx.strongly_connected_components(graph):
        if len(component) > 1:
            edges = sorted((a, b) for a, b in graph.subgraph(component).edges)
            out.append(", ".join(f"{a}:{graph.edges[a, b]['line']} -> {b}" for a, b in edges))
    return sorted(out)


def long_functions(root: Path = ROOT, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    out = []
    for path in production_files(root):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    out.append(f"{path.relative_to(root)}:{node.lineno} {node.name} is {lines} lines")
    return out


def renames_outside_the_writer(root: Path = ROOT, writer: str = ATOMIC_WRITER) -> list[str]:
    """``os.replace``/``os.rename``/``shutil.move`` calls and ``.rename()`` methods outside
    :data:`ATOMIC_WRITER`."""
    out = []
    for path in production_files(root):
        if path.relative_to(root).as_posix() == writer:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            if (owner, node.func.attr) in RENAMES or node.func.attr == "rename":
                out.append(f"{path.relative_to(root)}:{node.lineno} {owner or '…'}.{node.func.attr}")
    return out


def test_imports_point_down_the_layers():
    assert layer_violations() == []


def test_no_import_cycle_between_modules():
    assert import_cycles() == []


def test_every_production_folder_has_a_layer():
    folders = {p.parent.relative_to(ROOT).as_posix() for p in ROOT.glob("*/**/*.py")}
    production = {f for f in folders if f.split("/")[0] in {"elm_data", *PACKAGE_OF}}
    assert production <= set(LAYERS)


def test_no_production_function_over_the_limit():
    assert long_functions() == []


def test_only_the_atomic_writer_moves_files_into_place():
    assert renames_outside_the_writer() == []


@pytest.fixture
def toy_tree(tmp_path: Path) -> Path:
    for folder, text in {
        "elm_data/core": "import os\n\nos.replace('a', 'b')\n",
        "sources": "import os\nfrom elm_data.core.errors import ElmDataError\n\nos.replace('a', 'b')\n",
        "pipeline": "from elm_data.sources import readers\nfrom .stream.plan import Plan\n",
        "pipeline/stream": "from ..config import X\nfrom elm_data.manifests.manifest import Manifest\n",
        "manifests": "from elm_data.pipeline import document_pass\n",
        "model": "def f():\n    from elm_data.sources import sample\n" + "    x = 1\n" * 70,
        "trainer": (
            "from elm_data.pipeline.stream import TokenStream\nfrom .export.hf import export_checkpoint\n"
        ),
        "trainer/core": "from elm_data.manifests.manifest import Manifest\nfrom ..proof import audit\n",
        "trainer/proof": "from ..core.runlog import read_log\n",
        "trainer/bench": (
            "from ..core import distributed\nfrom elm_data.trainer.compress.finetune import prepare\n"
        ),
        "trainer/export": "from ..proof.audit import audit_run\nfrom elm_data.trainer import cli\n",
        "elm_data": "from elm_data.trainer import loop\n",
    }.items():
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "m.py").write_text(text)
    return tmp_path


def test_the_checks_catch_what_they_should(toy_tree: Path):
    """An independent oracle: a hand-made tree with exactly five upward or sideways imports (two of them
    between trainer's sub-packages, one from a sub-package up to trainer/'s commands), one long function and
    one rename outside the atomic writer (core/m.py stands in for it)."""
    assert layer_violations(toy_tree) == [
        "model/m.py:2 imports sources (layer 1 >= 1)",
        "pipeline/m.py:2 imports pipeline/stream (layer 4 >= 2)",
        "trainer/bench/m.py:2 imports trainer/compress (layer 5.1 >= 5.1)",
        "trainer/core/m.py:2 imports trainer/proof (layer 5.1 >= 5.0)",
        "trainer/export/m.py:2 imports trainer (layer 5.3 >= 5.2)",
    ]
    assert long_functions(toy_tree) == ["model/m.py:1 f is 72 lines"]
    assert import_cycles(toy_tree) == []  # every import above points to a module the tree does not hold
    assert renames_outside_the_writer(toy_tree, writer="elm_data/core/m.py") == ["sources/m.py:4 os.replace"]


def test_the_cycle_check_sees_every_kind_of_import(tmp_path: Path):
    """An independent oracle: three cycles, closed by a function-level import, a ``TYPE_CHECKING`` import and
    ``from package import module``; and two one-way chains (through a package ``__init__`` and a name that is
    no module) that are none."""
    files = {
        "manifests/a.py": "from .b import X\n",
        "manifests/b.py": "def f():\n    from elm_data.manifests.a import Y\n",
        "trainer/core/c.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..proof.d import Z\n"
        ),
        "trainer/proof/d.py": "from ..core import c\n",
        "trainer/e.py": "from .core import c\nfrom . import f\n",
        "trainer/f.py": "import elm_data.trainer.e as e\n",
        "pipeline/__init__.py": "from .g import G\n",
        "pipeline/g.py": "from elm_data.sources import h\n",
        "sources/h.py": "from elm_data.core.errors import ElmDataError\n",
        "elm_data/core/errors.py": "import json\n",
        # G is no module: the package, then g, h, errors
        "manifests/i.py": "from elm_data.pipeline import G\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert import_cycles(tmp_path) == [
        "elm_data.manifests.a:1 -> elm_data.manifests.b, elm_data.manifests.b:2 -> elm_data.manifests.a",
        "elm_data.trainer.core.c:3 -> elm_data.trainer.proof.d, elm_data.trainer.proof.d:1 -> "
        "elm_data.trainer.core.c",
        "elm_data.trainer.e:2 -> elm_data.trainer.f, elm_data.trainer.f:1 -> elm_data.trainer.e",
    ]
