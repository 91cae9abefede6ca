"""Every field a consumer of a manifest reads is covered by the check ``docs/ARCHITECTURE.md`` names for it.

Three independent pieces meet here: what each consumer really reads (``record_reads.recording``: the consumer
runs on a manifest whose ``manifest.json``, shard records and ledger log every read), what the table in
``docs/ARCHITECTURE.md`` says it reads and which check covers it, and what the checks really refuse (every
field of the manifest edited in turn, plainly and — for the id — with everything else recomputed around the
edit, then opened). A field read later by new code, a new field in ``manifest.json``, or a check that stops
covering what the table says, fails here.
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import json
import re
import shutil
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from record_reads import BLOCKS, LEDGER, recording

from elm_data.core.errors import ElmDataError
from elm_data.manifests.audit import audit_manifest, format_table
from elm_data.manifests.block_index import BLOCKS_FILE, BLOCKS_SCHEMA
from elm_data.manifests.croissant import croissant_metadata
from elm_data.manifests.identity import OUTSIDE_THE_ID, seal
from elm_data.manifests.manifest import (
    DOCUMENT_SCHEMA,
    MANIFEST_FILE,
    SHARDS_FILE,
    Manifest,
    ledger_path,
    write_ledger,
)
from elm_data.manifests.shard_records import ShardRecord, shards_table
from elm_data.manifests.verify import verify_manifest

ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md"
SECTION = "### Every field a consumer reads, and the check that covers it"
CHECKS = (
    "manifest id",
    "Merkle root",
    "recomputed",
    "format version",
    "ledger digest",
    "block digests",
    "tokenizer sha256",
    "not covered",
)
SHARDS = "shards.parquet"


@dataclasses.dataclass
class Row:
    file: str
    patterns: list[str]
    readers: set[str]
    check: str

    def matches(self, field: str) -> bool:
        return any(fnmatch.fnmatchcase(field, p) for p in self.patterns)


def table_rows() -> list[Row]:
    """The rows of the table in ``docs/ARCHITECTURE.md`` (the check is the first known name in its cell)."""
    text = ARCHITECTURE.read_text()
    body = text[text.index(SECTION) :].split("\n\n| file |", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in body.splitlines()[2:]:
        file, fields, readers, check = [c.strip() for c in line.strip().strip("|").split("|")]
        named = [c for c in CHECKS if check.startswith(c)]
        assert named, f"unknown check {check!r} in {line}"
        patterns = [] if fields == "every column" else re.findall(r"`([^`]+)`", fields)
        rows.append(
            Row(file, patterns or ["*"], set() if readers == "—" else set(readers.split(", ")), named[0])
        )
    return rows


def row_of(rows: list[Row], read: str) -> Row | None:
    """The first row covering ``read`` (``shards.parquet:col``, ``documents/*.parquet`` or a manifest.json
    path)."""
    file, _, field = read.rpartition(":") if read.startswith(SHARDS) else ("manifest.json", "", read)
    if read in (LEDGER, BLOCKS):
        file, field = read, "*"
    return next((r for r in rows if r.file == file and r.matches(field)), None)


# ------------------------------------------------------------------------------------------------ the
# consumers
def _verify(m: Path) -> None:
    assert verify_manifest(m).ok


def _stream(m: Path) -> None:
    from elm_data.pipeline.stream import TokenStream

    assert list(islice(iter(TokenStream(m, batch_size=2, seq_len=256)), 3))


def _contamination(m: Path) -> None:
    from elm_data.manifests.contamination import audit_contamination
    from elm_data.manifests.eval_tasks import EvalItem, EvalTask

    assert audit_contamination(Manifest(m), [EvalTask("t", (EvalItem("i", "a b " * 10),), "t")]).scanned


def _duplicates(m: Path) -> None:
    pytest.importorskip("datasketch")
    from elm_data.manifests.duplicates import audit_duplicates

    assert audit_duplicates(Manifest(m)).docs


FAST_CONSUMERS: dict[str, Callable[[Path], Any]] = {
    "verify": _verify,
    "audit": lambda m: format_table(audit_manifest(m)),
    "contamination": _contamination,
    "duplicates": _duplicates,
    "croissant": croissant_metadata,
    "stream": _stream,
}
# Every production module that names ``Manifest`` (or opens one through a helper), and the consumer of the
# table
# whose run above exercises it: a module that starts reading manifests fails here until it is run and tabled.
CONSUMER_MODULES = {
    "manifests/verify.py": "verify",
    "manifests/audit.py": "audit",
    "manifests/plot.py": "audit",
    "manifests/cli.py": "verify, audit",
    "manifests/croissant.py": "croissant",
    "pipeline/stream/dataset.py": "stream",
    "pipeline/stream/plan.py": "stream",
    "pipeline/stream/partition.py": "stream",
    "pipeline/stream/reading.py": "stream",
    "pipeline/stream/sequences.py": "stream",
    "pipeline/stream/cli.py": "stream",
    "trainer/core/loop.py": "train",
    "trainer/bench/efficiency.py": "train",
    "trainer/export/evaluate.py": "train",
    "trainer/proof/audit.py": "audit-run",
    "trainer/proof/records.py": "audit-run, trace",
    "trainer/proof/trace.py": "trace",
    "trainer/export/hf.py": "card",
    "manifests/contamination.py": "contamination",
    "manifests/duplicates.py": "duplicates",
    "manifests/kept_text.py": "contamination, duplicates",
    "trainer/contamination_cli.py": "contamination, duplicates",
    "trainer/proof/report.py": "report",
    "manifests/audit_store.py": "croissant, card",
    "manifests/heldout.py": "train",
    "trainer/core/heldout_eval.py": "train",
}


def test_every_module_that_reads_a_manifest_is_a_consumer_this_file_runs():
    """A module naming ``Manifest`` / ``load_manifest`` / ``trained_manifest`` (the ways to open one) is
    listed."""
    root = ARCHITECTURE.parents[1]
    folders = ("manifests", "pipeline", "trainer", "sources", "model", "elm_data")
    openers = {"Manifest", "load_manifest", "trained_manifest"}

    def names(path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        return used | {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}

    readers = {
        p.relative_to(root).as_posix()
        for folder in folders
        for p in (root / folder).rglob("*.py")
        if names(p) & openers
    }
    own = {"manifests/manifest.py", "manifests/identity.py", "manifests/build.py", "manifests/__init__.py"}
    assert readers - own - set(CONSUMER_MODULES) == set(), (
        "new manifest readers: run them above and table them"
    )
    listed = {c for names in CONSUMER_MODULES.values() for c in names.split(", ")}
    assert listed <= {r for row in table_rows() for r in row.readers}


def reads_of(consumer: Callable[[], Any]) -> set[str]:
    with recording() as reads:
        consumer()
    return set(reads)


def check_reads_against_table(read_by: dict[str, set[str]]) -> None:
    """Each read is in the table for its consumer; each row naming a consumer is read by it."""
    rows = table_rows()
    missing = sorted(
        f"{c}: {r}"
        for c, reads in read_by.items()
        for r in reads
        if c not in (row_of(rows, r) or Row("", [], set(), "")).readers
    )
    assert not missing, f"reads the table in docs/ARCHITECTURE.md does not list: {missing}"
    stale = [
        f"{c}: {row.patterns}"
        for row in rows
        for c in row.readers & set(read_by)
        if not any(row_of(rows, r) is row for r in read_by[c])
    ]
    assert not stale, f"the table says these consumers read fields they do not: {stale}"


@pytest.mark.slow  # every fast consumer run over the sample: ~2.5 s
def test_the_fast_consumers_read_only_what_the_table_lists(sample_manifest, sample_dir):
    read_by = {name: reads_of(lambda f=f: f(sample_manifest)) for name, f in FAST_CONSUMERS.items()}
    assert read_by["stream"] >= {"filters.min_tokens", "filters.nfc_normalization", "seed", LEDGER}
    from elm_data.manifests.estimate import estimate_mixture

    read_by["estimate"] = reads_of(lambda: estimate_mixture(sample_dir / "mixture.yaml", sample_docs=2))
    assert read_by["estimate"] == set()  # it reads the mixture and the corpus, never a manifest
    check_reads_against_table(read_by)


# ------------------------------------------------------------------------------------- what the checks refuse
def _edited(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "0"
    if isinstance(value, list):
        return [*value, "edited"]
    if isinstance(value, dict):
        return value | {"edited": 0}
    return "edited"  # None


def leaves(value: Any, path: str = "") -> Iterator[tuple[str, list[Any]]]:
    """``(path, keys)`` of every leaf of ``manifest.json`` as the recorder names them; lists of scalars are
    leaves."""
    if isinstance(value, dict):
        for k, v in value.items():
            for sub, keys in leaves(v, f"{path}.{k}" if path else k):
                yield sub, [k, *keys]
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        seen = set()
        for i, v in enumerate(value):
            for sub, keys in leaves(v, f"{path}[]"):
                if sub not in seen:
                    seen.add(sub)
                    yield sub, [i, *keys]
    else:
        yield path, []


class Editor:
    """A copy of a manifest whose fields are edited one at a time and put back after each question."""

    def __init__(self, manifest: Path, work: Path):
        self.dir = work / "manifest"
        shutil.copytree(manifest, self.dir)
        self.info = json.loads((self.dir / MANIFEST_FILE).read_text())
        self.records = Manifest(self.dir).shards
        self.saved = {
            p: p.read_bytes()
            for p in (
                self.dir / MANIFEST_FILE,
                self.dir / SHARDS_FILE,
                self.dir / BLOCKS_FILE,
                ledger_path(self.dir, 0),
            )
        }

    def restore(self) -> None:
        for path, data in self.saved.items():
            path.write_bytes(data)

    def refused(self, info: dict[str, Any], records: list[ShardRecord] | None = None) -> bool:
        (self.dir / MANIFEST_FILE).write_text(json.dumps(info))
        if records is not None:
            pq.write_table(shards_table(records), self.dir / SHARDS_FILE)
        try:
            Manifest(self.dir)
            return False
        except ElmDataError:
            return True
        finally:
            self.restore()

    def info_edit(self, keys: list[Any], resealed: bool) -> bool:
        """Whether opening refuses ``manifest.json`` with the leaf at ``keys`` edited (``resealed``: and the
        Merkle root, totals and shard counts recomputed around it, keeping the old id — the edit only the id
        catches)."""
        info = json.loads(json.dumps(self.info))
        holder = info
        for k in keys[:-1]:
            holder = holder[k]
        holder[keys[-1]] = _edited(holder[keys[-1]])
        if resealed:
            info = seal(info, self.records) | {"manifest_id": self.info["manifest_id"]}
        return self.refused(info)

    def column_edit(self, column: str, resealed: bool) -> bool:
        records = [dataclasses.replace(r) for r in self.records]
        first = records[0]
        setattr(first, column, _edited(getattr(first, column)))
        info = seal(self.info, records) | {"manifest_id": self.info["manifest_id"]} if resealed else self.info
        return self.refused(info, records)

    def ledger_edit(self, column: str) -> bool:
        manifest = Manifest(self.dir)
        table = manifest.documents(0)
        values = table.column(column).to_pylist()
        values[0] = _edited(values[0]) if column != "status" else "rejected"
        edited = table.set_column(
            table.schema.get_field_index(column), column, pa.array(values, DOCUMENT_SCHEMA.field(column).type)
        )
        write_ledger(ledger_path(self.dir, 0), manifest.blocks(0), edited)
        try:
            Manifest(self.dir).documents(0)
            return False
        except ElmDataError:
            return True
        finally:
            self.restore()

    def blocks_edit(self, column: str) -> bool:
        """Whether a consumer refuses ``blocks.parquet`` with ``column`` of shard 0's first block edited: on
        opening the manifest, or when it first uses shard 0's block index."""
        table = pq.read_table(self.dir / BLOCKS_FILE)
        values = table.column(column).to_pylist()
        values[0] = _edited(values[0]) if column != "shard" else values[0] + 1
        table = table.set_column(
            table.schema.get_field_index(column), column, pa.array(values, table[column].type)
        )
        pq.write_table(table, self.dir / BLOCKS_FILE)
        try:
            Manifest(self.dir).blocks(0)
            return False
        except ElmDataError:
            return True
        finally:
            self.restore()


@pytest.fixture(scope="module")
def editor(sample_manifest, tmp_path_factory) -> Editor:
    return Editor(sample_manifest, tmp_path_factory.mktemp("edits"))


def _refused_as(check: str, plain: bool, resealed: bool) -> bool:
    """Whether what the checks did to one edited field is what ``check`` promises."""
    if check == "manifest id":
        return resealed
    if check in ("Merkle root", "recomputed", "format version"):
        return plain
    return not plain and not resealed  # "not covered", "tokenizer sha256": the edit alone is not refused


def test_every_manifest_json_field_is_refused_when_edited_as_the_table_says(editor):
    rows = table_rows()
    wrong = []
    for path, keys in leaves(editor.info):
        row = row_of(rows, path)
        assert row is not None, (
            f"manifest.json field {path} is in no row of the table in docs/ARCHITECTURE.md"
        )
        plain, resealed = editor.info_edit(keys, False), editor.info_edit(keys, True)
        if not _refused_as(row.check, plain, resealed):
            wrong.append(
                f"{path}: table says {row.check!r}; edited: refused {plain}, with all but the id resealed: "
                f"{resealed}"
            )
        if row.check == "not covered":
            assert any(path == f or path.startswith(f"{f}.") for f in OUTSIDE_THE_ID), (
                f"{path} not in OUTSIDE_THE_ID"
            )
    assert not wrong, wrong


def test_every_shard_column_and_ledger_column_is_refused_when_edited_as_the_table_says(editor):
    rows = table_rows()
    wrong = []
    for column in pa.schema(shards_table(editor.records).schema).names:
        row = row_of(rows, f"{SHARDS}:{column}")
        assert row is not None, f"shards.parquet column {column} is in no row of the table"
        plain, resealed = editor.column_edit(column, False), editor.column_edit(column, True)
        if not _refused_as(row.check, plain, resealed):
            wrong.append(f"{column}: table says {row.check!r}; refused {plain}, resealed {resealed}")
    assert row_of(rows, LEDGER).check == "ledger digest"
    wrong += [f"ledger column {c} not refused" for c in DOCUMENT_SCHEMA.names if not editor.ledger_edit(c)]
    assert row_of(rows, BLOCKS).check == "block digests"
    wrong += [
        f"blocks.parquet column {c} not refused" for c in BLOCKS_SCHEMA.names if not editor.blocks_edit(c)
    ]
    assert not wrong, wrong


def test_only_the_tokenizer_location_is_read_under_its_own_check():
    """The one field read outside every manifest-side check is where the tokenizer is: its bytes are
    checked."""
    assert {tuple(r.patterns) for r in table_rows() if r.check == "tokenizer sha256"} == {("tokenizer.uri",)}
    assert all(not r.readers for r in table_rows() if r.check == "not covered")


# ---------------------------------------------------------------------------------- every consumer refuses
def sneaky_edit(manifest: Path, out: Path, key: str, value: Any) -> Path:
    """A copy of ``manifest`` at ``out`` (``out`` itself when it is ``manifest``) with ``filters[key]`` set to
    ``value`` and everything but the id recomputed."""
    if out != manifest:
        shutil.copytree(manifest, out)
    info = json.loads((out / MANIFEST_FILE).read_text())
    info["filters"][key] = value
    (out / MANIFEST_FILE).write_text(
        json.dumps(seal(info, Manifest(out).shards) | {"manifest_id": info["manifest_id"]})
    )
    return out


@pytest.mark.parametrize("key,value", [("nfc_normalization", True), ("min_tokens", 8), ("dedup", "exact")])
def test_a_filters_edit_is_refused_by_every_fast_consumer(sample_manifest, tmp_path, key, value):
    """Issue 26.1: the stream rebuilds its pass from ``filters``; editing it used to pass every check (the
    dedup setting included: a manifest may not claim a dedup it was not built with)."""
    edited = sneaky_edit(sample_manifest, tmp_path / "m", key, value)
    report = verify_manifest(edited)
    assert not report.ok and "manifest_id does not recompute" in report.summary()
    for name, consumer in FAST_CONSUMERS.items():
        if name != "verify":
            with pytest.raises(ElmDataError, match="refusing an altered manifest"):
                consumer(edited)


# ------------------------------------------------------------------------------- the consumers that need a
# run
def _train(manifest: Path, out: Path) -> Path:
    from elm_data.trainer.core.config import TrainConfig
    from elm_data.trainer.core.loop import train

    model = {"name": "tiny", "num_transformer_layers": 2, "model_dim": 64, "head_dim": 32}
    config = TrainConfig(
        manifest=str(manifest),
        model=model,
        seq_len=64,
        batch_size=2,
        max_steps=2,
        warmup_steps=1,
        epochs=None,
        precision="fp32",
        distributed="none",
        checkpoint_every=2,
        heldout_docs=1,
        heldout_tokens=600,
    )
    train(config, out_dir=out, progress=False)
    return out


def _first_kept(manifest: Path) -> str:
    """``source/subset:doc_id`` of the first kept document of shard 0."""
    opened = Manifest(manifest)
    docs = opened.documents(0)
    return f"{opened.shards[0].key}:{docs.column('doc_id')[docs.column('status').to_pylist().index('kept')]}"


def _run_consumers(run: Path, doc_ref: str) -> dict[str, Callable[[], Any]]:
    from elm_data.trainer.export.hf import checkpoint_card, newest_checkpoint, run_of
    from elm_data.trainer.proof.audit import audit_run, verify_run
    from elm_data.trainer.proof.trace import build_text_index, trace_doc

    def audit_run_verify():
        assert verify_run(run).ok
        audit_run(run)

    def trace():
        trace_doc(run, doc_ref)
        build_text_index(run)

    def report():
        from elm_data.trainer.proof.report import write_report

        return write_report(run, run.parent / "report-page")

    return {
        "audit-run": audit_run_verify,
        "trace": trace,
        "report": report,
        "card": lambda: checkpoint_card(run_of(newest_checkpoint(run))),
    }


@pytest.mark.slow
def test_the_run_consumers_read_only_what_the_table_lists_and_refuse_an_edit(heldout_manifest, tmp_path):
    """On the sample with held-out documents, so the run's held-out evaluation reads are enumerated too."""
    manifest = shutil.copytree(heldout_manifest, tmp_path / "manifest")
    read_by = {"train": reads_of(lambda: _train(manifest, tmp_path / "run"))}
    doc_ref = _first_kept(manifest)
    read_by |= {name: reads_of(f) for name, f in _run_consumers(tmp_path / "run", doc_ref).items()}
    check_reads_against_table(read_by)

    sneaky_edit(manifest, manifest, "min_tokens", 8)  # the run's manifest, edited in place
    with pytest.raises(ElmDataError, match="refusing an altered manifest"):
        _train(manifest, tmp_path / "run-edited")
    for name, consumer in _run_consumers(tmp_path / "run", doc_ref).items():
        if name == "report":  # the page reports what the check said instead of stopping
            assert "refusing an altered manifest" in consumer().receipt
            continue
        with pytest.raises(ElmDataError, match="refusing an altered manifest"):
            consumer()
