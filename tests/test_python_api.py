"""The Python API: each folder's ``__init__`` names its entry points, cheaply, and docs/python_api.md runs."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "python_api.md"
PACKAGES = ["sources", "pipeline", "manifests", "pipeline.stream", "trainer", "model"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_listed_entry_point_resolves(package: str):
    module = importlib.import_module(f"elm_data.{package}")
    assert module.__doc__ and module.__all__
    for name in module.__all__:
        assert getattr(module, name) is not None, name
        assert name in dir(module), name


def test_an_unknown_name_is_an_attribute_error():
    import elm_data.manifests

    with pytest.raises(AttributeError, match="'elm_data.manifests' has no attribute 'no_such_entry_point'"):
        elm_data.manifests.no_such_entry_point  # noqa: B018
    with pytest.raises(ImportError, match="no_such_entry_point"):
        from elm_data.manifests import no_such_entry_point  # noqa: F401


def test_importing_the_data_packages_imports_no_heavy_library():
    """The entry points load on first use: `import elm_data.manifests` (etc.) pulls in neither torch nor
    Beam."""
    code = (
        "import sys, elm_data.sources, elm_data.pipeline, elm_data.manifests, elm_data.trainer; "
        "print(sorted(m for m in ('torch', 'apache_beam', 'transformers', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def example_code() -> str:
    """The one Python block of docs/python_api.md."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1
    return blocks[0]


@pytest.mark.slow
def test_the_documented_example_runs(tokenizer_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ELM_DATA_TOKENIZER", tokenizer_path)
    monkeypatch.chdir(tmp_path)
    exec(compile(example_code(), str(DOC), "exec"), {"__name__": "__main__"})
    out = capsys.readouterr().out
    assert re.search(r"manifest [0-9a-f]{16}: [\d,]+ kept tokens in \d+ shards", out)
    assert "OpenELM target" in out and out.count("row 0 begins in") == 3
    assert re.search(r"loss [\d.]+ -> [\d.]+; checkpoint .*step_00000004", out)
    assert (tmp_path / "elm-data-api" / "run" / "log.jsonl").is_file()
