"""Invariant 9 (issue 21): no secret of a URI in any output folder or stream, whatever its kind.

Every secret below is a unique marker; the oracle is a byte search of every file the commands wrote and of
everything they printed. The shards are served by a loopback HTTP server started here (it ignores userinfo and
query, as a signed-URL host would check them) and by fsspec's memory filesystem (for the ``KEY:SE/CRET@``
form, which no HTTP URL can carry).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import fsspec
import pytest
import yaml

from elm_data.core import outputs
from elm_data.core.redact import redact_text, redact_uri

KINDS = [
    "hf_token",
    "access_key",
    "api-key",
    "x-api-key",
    "private_token",
    "sas_token",
    "jwt",
    "session",
    "credential",
    "access-token",
    "AccessKey",
    "aws_secret_access_key",
    "pass",
    "pwd",
    "code",
]
QUERY_SECRETS = {kind: f"SEKRIT{i:02d}q" for i, kind in enumerate(KINDS)}
FRAGMENT_SECRET = "SEKRITfrag"
USER, PASSWORD = "tokuserSEKRIT", "SEKRITpass"
S3_KEY, S3_SECRET = "AKIASEKRITID", "SEKRIT/SL+ASH/99"  # a secret key holding "/" (and "+")
QUERY = (
    "?"
    + "&".join(f"{k}={v}" for k, v in QUERY_SECRETS.items())
    + f"&revision=main#access_token={FRAGMENT_SECRET}"
)
SECRETS = [*QUERY_SECRETS.values(), FRAGMENT_SECRET, USER, PASSWORD, S3_KEY, S3_SECRET, "SL+ASH", "SEKRIT"]


def _leaks(blob: str | bytes) -> list[str]:
    text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
    return [s for s in SECRETS if s in text]


@pytest.mark.parametrize("kind", KINDS)
def test_every_query_value_and_the_fragment_are_redacted_and_allow_listed_names_kept(kind):
    uri = f"https://host/data/a.jsonl?{kind}={QUERY_SECRETS[kind]}&revision=main&split=train#access_token=x1y2z3"
    assert redact_uri(uri) == "https://host/data/a.jsonl?revision=main&split=train"


def test_userinfo_with_a_slash_and_a_credential_echoed_without_its_scheme():
    assert redact_uri(f"s3://{S3_KEY}:{S3_SECRET}@bucket/data/a.jsonl") == "s3://bucket/data/a.jsonl"
    assert redact_uri(f"simplecache::s3://{S3_KEY}:{S3_SECRET}@bucket/x") == "simplecache::s3://bucket/x"
    for path in (
        "hf://datasets/org/name@main/x.parquet",
        "https://h:8443/a@v2.jsonl",
        "s3://bucket/a:b/c@d/x",
    ):
        assert redact_uri(path) == path  # an "@" in a path is not userinfo
    in_play = f"https://user:TOKPASS12@host/x.jsonl?sas_token={QUERY_SECRETS['sas_token']}"
    text = (
        f"ValueError: got 'user:TOKPASS12' and {S3_KEY}:{S3_SECRET}@bucket; sas {QUERY_SECRETS['sas_token']}"
    )
    redact_uri(f"s3://{S3_KEY}:{S3_SECRET}@bucket/y")  # seen earlier in the process
    assert _leaks(redact_text(text, in_play)) == [] and "TOKPASS12" not in redact_text(text, in_play)


def test_short_values_are_not_searched_for_in_free_text():
    assert redact_uri("https://h/x.jsonl?v=main&lang=en") == "https://h/x.jsonl"
    assert (
        redact_text("the rest remains in english", "https://h/y.jsonl?v=main")
        == "the rest remains in english"
    )


def test_the_lock_file_holds_the_redacted_command_line_mode_0600(tmp_path, monkeypatch):
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "elm-data",
            "build",
            "manifest",
            "--tokenizer",
            f"https://h/t.model{QUERY}",
            f"s3://{S3_KEY}:{S3_SECRET}@bucket/x",
        ],
    )
    previous = os.umask(0o022)
    try:
        with outputs.output_lock(tmp_path / "out") as lock:
            held = lock.read_bytes()
            mode = lock.stat().st_mode & 0o777
    finally:
        os.umask(previous)
    assert mode == 0o600 and _leaks(held) == []
    assert json.loads(held)["command"].startswith(
        "elm-data build manifest --tokenizer https://h/t.model?revision"
    )


_HOLD = """
import sys, time
from elm_data.core.outputs import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_lock_left_by_kill_9_does_not_block_the_next_writer(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path / "out")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(outputs.OutputLocked, match=f"pid {holder.pid}"),
            outputs.output_lock(tmp_path / "out"),
        ):
            pass  # alive: refused, naming it
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert outputs.lock_path(tmp_path / "out").exists()  # kill -9 leaves the file ...
    start = time.monotonic()
    # ... but not the lock (the kernel released the flock)
    with outputs.output_lock(tmp_path / "out") as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert time.monotonic() - start < 5


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def served(tmp_path, tokenizer_path):
    """An HTTP server on 127.0.0.1 serving a shard and the tokenizer; the base URL carries user and
    password."""
    www = tmp_path / "www"
    (www / "data").mkdir(parents=True)
    shutil.copy(tokenizer_path, www / "tokenizer.model")
    lines = [json.dumps({"text": f"kept words {i} " * 120}) for i in range(12)] + [
        '{"text": "short"}',
        "not json",
    ]
    (www / "data" / "a.jsonl").write_text("\n".join(lines) + "\n")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{USER}:{PASSWORD}@127.0.0.1:{server.server_address[1]}", "\n".join(lines) + "\n"
    finally:
        server.shutdown()
        server.server_close()


def _cli(capsys, *args) -> tuple[int, str]:
    from elm_data.cli import run

    before = signal.getsignal(signal.SIGTERM)
    try:
        code = run([str(a) for a in args])
    finally:
        signal.signal(signal.SIGTERM, before)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _scan(folder: Path) -> dict[str, list[str]]:
    """Every file under ``folder`` (the served copy and the inputs excepted) that holds a secret, with
    which."""
    found = {}
    for path in folder.rglob("*"):
        inputs = "www" in path.parts or path.suffix == ".yaml"
        if path.is_file() and not inputs and (leaked := _leaks(path.read_bytes())):
            found[str(path.relative_to(folder))] = leaked
    return found


def _build_everything(capsys, tmp_path: Path, base: str, text: str) -> list[tuple[str, int, str]]:
    """Build (ok, then with a missing shard), verify, audit, export Croissant: each command's exit and
    output."""
    shard = f"{base}/data/a.jsonl{QUERY}"
    memory = f"memory://{S3_KEY}:{S3_SECRET}@bucket/b.jsonl"
    with fsspec.open(memory, "w") as f:
        f.write(text)
    tokenizer = f"{base}/tokenizer.model?hf_token={QUERY_SECRETS['hf_token']}"
    entry = {"source": "pile", "subset": "default", "shards": [shard, memory]}
    (tmp_path / "mixture.yaml").write_text(yaml.safe_dump({"sources": [entry]}))
    missing = {
        "source": "pile",
        "subset": "default",
        "shards": [memory.replace("b.jsonl", "gone.jsonl") + QUERY],
    }
    (tmp_path / "missing.yaml").write_text(yaml.safe_dump({"sources": [entry, missing]}))
    m = tmp_path / "m"
    runs = [
        (
            "build",
            *_cli(
                capsys,
                "build",
                "manifest",
                tmp_path / "mixture.yaml",
                "--out",
                m,
                "--tokenizer",
                tokenizer,
                "--dropped-samples",
                3,
            ),
        )
    ]
    runs.append(
        (
            "build missing",
            *_cli(
                capsys,
                "build",
                "manifest",
                tmp_path / "missing.yaml",
                "--out",
                tmp_path / "failed",
                "--tokenizer",
                tokenizer,
            ),
        )
    )
    runs.append(("verify", *_cli(capsys, "verify", m)))
    runs.append(("audit", *_cli(capsys, "audit", m)))
    runs.append(("croissant", *_cli(capsys, "export", "croissant", m)))
    return runs


def test_a_build_and_its_commands_write_and_print_no_secret(capsys, served, tmp_path):
    base, text = served
    runs = _build_everything(capsys, tmp_path, base, text)
    assert [(name, code) for name, code, _ in runs][:2] == [("build", 0), ("build missing", 2)], runs
    assert list((tmp_path / "failed.partial").glob("*.error.json")), "the failed shard's error file"
    for name, _, printed in runs:
        assert _leaks(printed) == [], (name, printed)
    assert _scan(tmp_path) == {}
    names = {p.name for p in (tmp_path / "m").rglob("*")}
    assert {"shards.parquet", "dropped_samples.jsonl", "manifest.json"} <= names
    assert list(tmp_path.glob("m/*croissant*.json")) or list(tmp_path.glob("*croissant*.json"))


@pytest.mark.slow  # trains two steps and exports a model card
def test_a_run_its_log_header_and_model_card_hold_no_secret(capsys, served, tmp_path):
    base, _ = served
    shard = f"{base}/data/a.jsonl{QUERY}"  # readable at its redacted URL (the server ignores credentials)
    (tmp_path / "mixture.yaml").write_text(
        yaml.safe_dump({"sources": [{"source": "pile", "subset": "default", "shards": [shard]}]})
    )
    tokenizer = f"{base}/tokenizer.model?hf_token={QUERY_SECRETS['hf_token']}#access_token={FRAGMENT_SECRET}"
    runs = [
        (
            "build",
            *_cli(
                capsys,
                "build",
                "manifest",
                tmp_path / "mixture.yaml",
                "--out",
                tmp_path / "m",
                "--tokenizer",
                tokenizer,
            ),
        )
    ]
    config = {
        "manifest": str(tmp_path / "m"),
        "tokenizer": tokenizer,
        "seq_len": 32,
        "batch_size": 2,
        "max_steps": 2,
        "warmup_steps": 1,
        "epochs": None,
        "precision": "fp32",
        "distributed": "none",
        "model": {"name": "tiny", "num_transformer_layers": 2, "model_dim": 128, "head_dim": 32},
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    runs.append(
        ("train", *_cli(capsys, "train", tmp_path / "train.yaml", "--out", tmp_path / "run", "--no-progress"))
    )
    runs.append(
        (
            "export hf",
            *_cli(capsys, "export", "hf", tmp_path / "run", tmp_path / "hf", "--tokenizer", tokenizer),
        )
    )
    runs.append(("audit-run", *_cli(capsys, "audit-run", tmp_path / "run")))
    assert [(name, code) for name, code, _ in runs][:3] == [("build", 0), ("train", 0), ("export hf", 0)], (
        runs
    )
    assert (tmp_path / "hf" / "README.md").exists() and list((tmp_path / "run").glob("*.jsonl"))
    for name, _, printed in runs:
        assert _leaks(printed) == [], (name, printed)
    assert _scan(tmp_path) == {}
