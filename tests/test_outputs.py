"""Outputs never half there, never clobbered, never leaking: replace, overwrite, lock, umask, redaction."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from elm_data.cli import run
from elm_data.core import outputs
from elm_data.core.errors import OutputExists, OutputLocked
from elm_data.core.redact import redact_text, redact_uri
from elm_data.manifests.build import BuildFailed, build_manifest
from elm_data.manifests.manifest import MANIFEST_FILE, SHARDS_FILE
from elm_data.manifests.workspace import workspace_path_for


@pytest.fixture(autouse=True)
def _keep_sigterm():
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


@pytest.fixture
def arxiv_mixture(sample_dir, tmp_path) -> Path:
    """A one-subset mixture (two small JSONL shards): a build in about a second."""
    path = tmp_path / "arxiv.yaml"
    shards = [str(sample_dir / "redpajama" / "arxiv" / "*.jsonl")]
    path.write_text(
        yaml.safe_dump({"sources": [{"source": "redpajama", "subset": "arxiv", "shards": shards}]})
    )
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- never clobbered ---------------------------------------------------------------------------------------
def test_an_existing_manifest_is_replaced_only_with_overwrite(
    arxiv_mixture, tokenizer_path, tmp_path, capsys
):
    out = tmp_path / "m"
    first = build_manifest(arxiv_mixture, out, tokenizer=tokenizer_path)
    (out / "croissant.json").write_text("{}")  # a file the user put there
    with pytest.raises(OutputExists, match="--overwrite"):
        build_manifest(arxiv_mixture, out, tokenizer=tokenizer_path)
    assert (out / "croissant.json").exists() and json.loads((out / MANIFEST_FILE).read_text())["manifest_id"]

    code = run(["build", "manifest", str(arxiv_mixture), "--out", str(out), "--tokenizer", tokenizer_path])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "--overwrite" in err[0]

    again = build_manifest(arxiv_mixture, out, tokenizer=tokenizer_path, overwrite=True)
    assert again.manifest_id == first.manifest_id and not (out / "croissant.json").exists()


def test_demo_rerun_into_the_same_folder_is_one_line(tmp_path, tokenizer_path, capsys):
    (tmp_path / "sample").mkdir()  # an earlier demo's output
    code = run(["demo", str(tmp_path), "--tokenizer", tokenizer_path])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--overwrite" in err[0] and "Traceback" not in err[0]


def test_a_replace_killed_between_its_renames_is_undone_on_the_next_start(
    arxiv_mixture, tokenizer_path, tmp_path, monkeypatch
):
    out = tmp_path / "m"
    first = build_manifest(arxiv_mixture, out, tokenizer=tokenizer_path)
    real_replace = os.replace

    def killed_after_first_rename(src, dst):
        if Path(dst) == out and Path(src).name.startswith(".m.tmp-"):
            # the process dies between moving the old one aside and moving the new one in
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(outputs, "_exchange", lambda a, b: False)  # the two-rename fallback
    monkeypatch.setattr(outputs.os, "replace", killed_after_first_rename)
    with pytest.raises(KeyboardInterrupt):
        build_manifest(arxiv_mixture, out, tokenizer=tokenizer_path, overwrite=True)
    monkeypatch.undo()
    assert not out.exists() and outputs.old_path(out).is_dir()  # what a kill at that moment leaves
    (tmp_path / ".m.tmp-abandoned").mkdir()  # and what a killed write leaves: a temp dir, a 0-byte temp file
    (tmp_path / ".m.tmp-empty").touch()
    workspace = Path(workspace_path_for(str(out)))
    workspace.mkdir(exist_ok=True)
    (workspace / ".shard-00000.json.tmp-0123").touch()

    with pytest.raises(OutputExists):  # the next start restored the old manifest, so it is there to refuse
        build_manifest(arxiv_mixture, out, tokenizer=tokenizer_path)
    assert json.loads((out / MANIFEST_FILE).read_text())["manifest_id"] == first.manifest_id
    assert not outputs.old_path(out).exists()
    assert not list(tmp_path.glob(".m.tmp-*"))
    build_manifest(arxiv_mixture, out, tokenizer=tokenizer_path, overwrite=True)
    assert not list(tmp_path.glob(".m.*")) and not workspace.exists()


def test_replace_dir_swaps_a_directory_in_whole(tmp_path):
    old, new = tmp_path / "out", tmp_path / ".out.tmp-1"
    old.mkdir()
    (old / "a").write_text("old")
    new.mkdir()
    (new / "b").write_text("new")
    outputs.replace_dir(new, old)
    assert sorted(p.name for p in old.iterdir()) == ["b"] and not new.exists()
    assert not outputs.old_path(old).exists()


# -- one file in whole -------------------------------------------------------------------------------------
def test_write_atomic_replaces_a_file_in_whole(tmp_path):
    target = tmp_path / "sub" / "out.json"
    outputs.write_atomic(target, "first\n")
    outputs.write_atomic(target, b"second\n")
    assert target.read_text() == "second\n" and [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_a_failure_mid_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk gone"), outputs.atomic_file(target) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("disk gone")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_several_files_appear_together_or_not_at_all(tmp_path):
    from contextlib import ExitStack

    with pytest.raises(KeyboardInterrupt), ExitStack() as stack:
        a = stack.enter_context(outputs.atomic_path(tmp_path / "a"))
        a.write_text("a")
        stack.enter_context(outputs.atomic_path(tmp_path / "b"))
        raise KeyboardInterrupt  # killed before b was written
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("umask", "file_mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_an_atomic_file_takes_the_umask_mode(tmp_path, umask, file_mode):
    previous = os.umask(umask)
    try:
        with outputs.atomic_path(tmp_path / "weights") as tmp:
            tmp.write_bytes(b"x")
            os.chmod(tmp, 0o600 if umask == 0o022 else 0o644)  # whatever mode the writer gave it
        outputs.write_atomic(tmp_path / "text", "y")
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "weights") == file_mode and _mode(tmp_path / "text") == file_mode


def test_a_stale_temp_file_is_swept_by_recover_dir(tmp_path):
    target = tmp_path / "out.json"
    stale = outputs.temp_path(target)
    stale.write_text("half")  # what a killed writer leaves
    assert stale.name.startswith(".out.json.tmp-")
    assert outputs.recover_dir(target) == [stale] and not stale.exists()


def test_write_atomic_on_an_fsspec_filesystem(tmp_path):
    import fsspec

    memory = fsspec.filesystem("memory")
    outputs.write_atomic("/atomic-test/out.json", "remote", fs=memory)
    assert memory.cat("/atomic-test/out.json") == b"remote" and memory.ls("/atomic-test", detail=False) == [
        "/atomic-test/out.json"
    ]
    memory.rm("/atomic-test", recursive=True)
    outputs.write_atomic(tmp_path / "local.json", "local", fs=fsspec.filesystem("file"))
    assert (tmp_path / "local.json").read_text() == "local"


def test_staged_dir_replaces_in_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out"
    with outputs.staged_dir(target) as tmp:
        (tmp / "a").write_text("first")
    with pytest.raises(ValueError), outputs.staged_dir(target) as tmp:
        (tmp / "b").write_text("half")
        raise ValueError("failed while writing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (target / "a").read_text() == "first"


# -- one writer per output -----------------------------------------------------------------------------------
def test_a_second_build_into_the_same_out_is_refused_naming_the_holder(
    arxiv_mixture, tokenizer_path, tmp_path
):
    out = tmp_path / "m"
    with outputs.output_lock(out, "manifest build"):
        with pytest.raises(OutputLocked) as refused:
            build_manifest(arxiv_mixture, out, tokenizer=tokenizer_path)
        message = str(refused.value)
        assert f"pid {os.getpid()}" in message and socket.gethostname() in message
        assert not out.exists()
    build_manifest(arxiv_mixture, out, tokenizer=tokenizer_path)  # released: the next build goes ahead
    assert not outputs.lock_path(out).exists()


def test_the_lock_is_not_shared_through_a_removed_lock_file(tmp_path):
    target = tmp_path / "out"
    with outputs.output_lock(target):
        pass
    with outputs.output_lock(target), pytest.raises(OutputLocked), outputs.output_lock(target):
        pass


# -- the umask's modes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("umask", "dir_mode", "file_mode"), [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_manifest_and_exports_follow_the_umask(
    arxiv_mixture, tokenizer_path, tmp_path, umask, dir_mode, file_mode
):
    from elm_data.manifests.croissant import export_croissant

    previous = os.umask(umask)
    try:
        out = build_manifest(arxiv_mixture, tmp_path / "m", tokenizer=tokenizer_path).manifest_dir
        croissant = export_croissant(out, tmp_path / "croissant.json")
    finally:
        os.umask(previous)
    assert _mode(out) == dir_mode
    for path in out.rglob("*"):
        assert _mode(path) == (dir_mode if path.is_dir() else file_mode), path
    assert _mode(croissant) == file_mode


def test_checkpoints_follow_the_umask(tmp_path):
    import torch

    from elm_data.model.config import OpenELMConfig
    from elm_data.model.openelm import OpenELM
    from elm_data.trainer.core.checkpoint import save_checkpoint

    model = OpenELM(OpenELMConfig.named("tiny"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    previous = os.umask(0o027)
    try:
        path = save_checkpoint(tmp_path / "run", 1, model, {"optimizer": optimizer.state_dict()}, {}, {})
    finally:
        os.umask(previous)
    assert _mode(path) == 0o750 and {_mode(f) for f in path.iterdir()} == {0o640}


# -- no secret in any record -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("uri", "clean"),
    [
        ("s3://AKIAKEY:s3cr3t@bucket/data/a.parquet", "s3://bucket/data/a.parquet"),
        ("https://u:pa55@h:8443/x?part=1&X-Amz-Signature=abc&X-Amz-Credential=k", "https://h:8443/x?part=1"),
        # allow-list only
        ("https://blob.example/x.jsonl.gz?sig=abc&se=2030", "https://blob.example/x.jsonl.gz"),
        ("https://h/x?access_token=t&token=u", "https://h/x"),
        ("hf://datasets/org/repo@main/file.parquet", "hf://datasets/org/repo@main/file.parquet"),
        ("/local/path/with@sign.jsonl", "/local/path/with@sign.jsonl"),
    ],
)
def test_redact_uri(uri, clean):
    assert redact_uri(uri) == clean
    assert (
        redact_text(f"shard not found: {uri} (after 3 tries)") == f"shard not found: {clean} (after 3 tries)"
    )


SECRET = "s3cr3tPASS"


def _memory_shards(sample_dir: Path) -> list[str]:
    """The sample arxiv shards in fsspec's memory filesystem, named with credentials in the URI."""
    import fsspec

    fs = fsspec.filesystem("memory")
    uris = []
    for shard in sorted((sample_dir / "redpajama" / "arxiv").glob("*.jsonl")):
        uri = f"memory://AKIAKEY:{SECRET}@bucket/arxiv/{shard.name}"
        with fsspec.open(uri, "wb") as f:
            f.write(shard.read_bytes())
        uris.append(uri)
    assert all(fs.exists(u) for u in uris)
    return uris


def outputs_fs_copy(src: str, dst: str) -> None:
    import fsspec

    with fsspec.open(src, "rb") as f, fsspec.open(dst, "wb") as g:
        g.write(f.read())


def test_credentials_are_recorded_nowhere_and_do_not_change_the_id(sample_dir, tokenizer_path, tmp_path):
    from elm_data.manifests.croissant import export_croissant

    uris = _memory_shards(sample_dir)
    mixture = tmp_path / "secret.yaml"
    entry = {"source": "redpajama", "subset": "arxiv", "shards": uris}
    mixture.write_text(yaml.safe_dump({"sources": [entry]}))
    out = tmp_path / "m"
    result = build_manifest(mixture, out, tokenizer=tokenizer_path, dropped_samples=2)
    croissant = export_croissant(out)
    for path in [*out.rglob("*"), croissant]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes() and b"AKIAKEY" not in path.read_bytes(), path
    shard_uris = pq.read_table(out / SHARDS_FILE, columns=["uri"]).column("uri").to_pylist()
    assert shard_uris == [redact_uri(u) for u in uris] and all(
        u.startswith("memory://bucket/") for u in shard_uris
    )

    plain = tmp_path / "plain.yaml"  # the same bytes at the same place without credentials: the same id
    plain.write_text(yaml.safe_dump({"sources": [entry | {"shards": [redact_uri(u) for u in uris]}]}))
    for uri in uris:
        outputs_fs_copy(uri, redact_uri(uri))
    assert (
        build_manifest(plain, tmp_path / "plain", tokenizer=tokenizer_path).manifest_id == result.manifest_id
    )


def test_credentials_never_reach_error_files_or_stderr(tokenizer_path, tmp_path, capsys):
    uri = f"memory://AKIAKEY:{SECRET}@bucket/missing/arxiv_0.jsonl"
    mixture = tmp_path / "missing.yaml"
    mixture.write_text(
        yaml.safe_dump({"sources": [{"source": "redpajama", "subset": "arxiv", "shards": [uri]}]})
    )
    out = tmp_path / "m"
    with pytest.raises(BuildFailed) as failed:
        build_manifest(mixture, out, tokenizer=tokenizer_path)
    assert SECRET not in str(failed.value)
    for path in Path(workspace_path_for(str(out))).iterdir():
        assert SECRET not in path.read_text(), path
    code = run(["build", "manifest", str(mixture), "--out", str(out), "--tokenizer", tokenizer_path])
    captured = capsys.readouterr()
    assert (
        code == 2 and SECRET not in captured.err + captured.out and "memory://bucket/missing" in captured.err
    )


def test_opening_a_manifest_whose_replace_was_killed_restores_it(arxiv_mixture, tokenizer_path, tmp_path):
    from elm_data.manifests.build import load_manifest

    out = tmp_path / "m"
    first = build_manifest(arxiv_mixture, out, tokenizer=tokenizer_path)
    os.replace(out, outputs.old_path(out))  # a kill between the two renames of a replace
    assert load_manifest(out).manifest_id == first.manifest_id
    assert not outputs.old_path(out).exists()


def test_a_training_config_records_its_tokenizer_url_without_credentials():
    from elm_data.trainer.core.config import TrainConfig

    config = TrainConfig(tokenizer=f"https://user:{SECRET}@host/tokenizer.model?token={SECRET}")
    assert SECRET not in json.dumps(config.to_dict()) and SECRET not in config.fingerprint()
    assert config.to_dict()["tokenizer"] == "https://host/tokenizer.model"
