"""The docs point at code that exists: every ``folder/file.py`` named in README.md or docs/*.md is a file of
the repository, and every ``file.py:Name`` (or ``file.py:Class.member``) names a function, class or assignment
of that file, read with ``ast``. Moves (the trainer/ split, a helper moved below an import cycle) fail here
until the docs follow them."""

from __future__ import annotations

import ast
import re
import subprocess
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXTERNAL = ("corenet/",)  # other projects' files, cited by their own paths
FILE = re.compile(r"(?<![\w/.-])((?:[A-Za-z_]\w*/)+[A-Za-z_]\w*\.py)\b")
DEFINITION = re.compile(r"(?<![\w/.-])((?:[A-Za-z_]\w*/)*[A-Za-z_]\w*\.py):([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)")


@cache
def tracked() -> tuple[str, ...]:
    out = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return tuple(out.split())


def files_named(path: str) -> list[str]:
    """The tracked files ``path`` can mean: itself, or any file whose path ends with ``/path``."""
    return [f for f in tracked() if f == path or f.endswith(f"/{path}")]


def defined(path: str, dotted: str) -> bool:
    """Whether ``dotted`` (``name`` or ``Class.member``) is defined at the top of ``path`` (or in that
    class)."""
    body = ast.parse((ROOT / path).read_text()).body
    for part in dotted.split("."):
        found = None
        for node in body:
            names = []
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names = [node.target.id]
            if part in names:
                found = node
        if found is None:
            return False
        body = getattr(found, "body", [])
    return True


def doc_references(pattern: re.Pattern) -> list[tuple[str, re.Match]]:
    return [
        (f"{doc.name}:{n}", m)
        for doc in DOCS
        for n, line in enumerate(doc.read_text().splitlines(), 1)
        for m in pattern.finditer(line)
    ]


def test_every_file_the_docs_name_exists():
    missing = [
        f"{where}: {m.group(1)}"
        for where, m in doc_references(FILE)
        if not m.group(1).startswith(EXTERNAL) and not files_named(m.group(1))
    ]
    assert not missing


def test_every_definition_the_docs_name_is_in_its_file():
    refs = doc_references(DEFINITION)
    assert len(refs) > 30  # the invariant table alone names a dozen
    missing = [
        f"{where}: {m.group(0)}"
        for where, m in refs
        if not any(defined(f, m.group(2)) for f in files_named(m.group(1)))
    ]
    assert not missing
