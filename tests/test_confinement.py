"""``shards_from:`` confinement (issue 21): a list read from a zip or a remote names only remote URLs or paths
under its own folder; local paths only from a local list, or with ``allow_local_shards`` /
--allow-local-shards.

The remote is a loopback HTTP server started here (fsspec's http filesystem over aiohttp); the zip is made
here.
"""

from __future__ import annotations

import functools
import http.server
import json
import signal
import threading
import zipfile
from pathlib import Path

import pytest
import yaml

from elm_data.manifests.shard_lists import LocalShardRefused, entry_shards, read_url_list

HOSTILE = ["/etc/hostname", "file:///etc/shadow", "local:///etc/hostname", "simplecache::file:///etc/shadow"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no request log on stderr (the CLI's stderr is asserted)
        pass


@pytest.fixture
def served(tmp_path):
    """``(folder, base URL)``: an HTTP server on 127.0.0.1 serving ``folder``, stopped after the test."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("line", HOSTILE)
def test_a_remote_list_may_not_name_a_local_path(served, line):
    folder, base = served
    (folder / "urls.txt").write_text(f"data/a.jsonl\nhttps://example.org/b.jsonl\n{line}\n")
    with pytest.raises(LocalShardRefused, match="names the local path") as refused:
        entry_shards([], [f"{base}/urls.txt"], "/unused", "pile/default")
    assert line in str(refused.value) and "--allow-local-shards" in str(refused.value)
    allowed = read_url_list(f"{base}/urls.txt", allow_local=True)  # the explicit flag lifts it
    assert allowed == [f"{base}/data/a.jsonl", "https://example.org/b.jsonl", line]


def test_a_remote_list_names_remote_urls_and_paths_under_its_folder(served):
    folder, base = served
    (folder / "lists").mkdir()
    (folder / "lists" / "urls.txt").write_text("# shards\nc4/a.jsonl\nhttps://example.org/b.jsonl\n")
    assert entry_shards([], [f"{base}/lists/urls.txt"], "/unused", "pile/default") == sorted(
        [f"{base}/lists/c4/a.jsonl", "https://example.org/b.jsonl"]
    )


def _zip(path: Path, lines: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("lists/urls.txt", "\n".join(lines) + "\n")
        z.writestr("lists/shard.jsonl", json.dumps({"text": "inside the archive " * 20}) + "\n")
    return path


@pytest.mark.parametrize("line", HOSTILE)
def test_a_list_inside_a_zip_may_not_name_a_local_path(tmp_path, line):
    archive = _zip(tmp_path / "lists.zip", ["shard.jsonl", line])
    with pytest.raises(LocalShardRefused, match="names the local path"):
        entry_shards([], [f"zip://lists/urls.txt::{archive}"], str(tmp_path), "pile/default")


def test_a_list_inside_a_zip_names_its_own_members_and_they_read(tmp_path):
    from elm_data.sources.document import Document
    from elm_data.sources.readers import fetched, read_shard

    archive = _zip(tmp_path / "lists.zip", ["shard.jsonl"])
    uris = entry_shards([], [f"zip://lists/urls.txt::{archive}"], str(tmp_path), "pile/default")
    assert uris == [f"zip://lists/shard.jsonl::{archive}"]  # under the list's own folder, inside the archive
    with fetched(uris[0]) as local:  # as the build reads it: one local copy
        docs = [
            d for d in read_shard(uris[0], "pile", "default", local_path=local) if isinstance(d, Document)
        ]
    assert [d.text for d in docs] == ["inside the archive " * 20]


def test_a_local_list_may_name_local_paths(tmp_path):
    (tmp_path / "urls.txt").write_text("/etc/hostname\nfile:///etc/shadow\n")
    assert read_url_list(str(tmp_path / "urls.txt")) == ["/etc/hostname", "file:///etc/shadow"]


def test_the_build_refuses_in_one_line_and_the_flag_or_the_entry_key_lets_it(
    served, tmp_path, tokenizer_path, capsys
):
    from elm_data.cli import run

    folder, base = served
    local = tmp_path / "mine.jsonl"
    local.write_text(json.dumps({"text": "a local shard of mine " * 20}) + "\n")
    (folder / "urls.txt").write_text(f"{local}\n")
    entry = {"source": "pile", "subset": "default", "shards_from": f"{base}/urls.txt"}
    (tmp_path / "mixture.yaml").write_text(yaml.safe_dump({"sources": [entry]}))
    before = signal.getsignal(signal.SIGTERM)
    try:
        code = run(["build", "manifest", str(tmp_path / "mixture.yaml"), "--out", str(tmp_path / "m")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "names the local path" in err[0], err
        assert not (tmp_path / "m").exists()
        code = run(
            [
                "build",
                "manifest",
                str(tmp_path / "mixture.yaml"),
                "--out",
                str(tmp_path / "m"),
                "--allow-local-shards",
            ]
        )
        assert code == 0, capsys.readouterr().err
        (tmp_path / "mixture.yaml").write_text(
            yaml.safe_dump({"sources": [entry | {"allow_local_shards": True}]})
        )
        assert run(["build", "manifest", str(tmp_path / "mixture.yaml"), "--out", str(tmp_path / "m2")]) == 0
    finally:
        signal.signal(signal.SIGTERM, before)
    shards = json.loads((tmp_path / "m" / "manifest.json").read_text())["totals"]
    assert shards["docs_read"] == 1


def test_a_remote_mixture_may_not_name_a_local_path(served):
    from elm_data.manifests.mixture import MixtureConfig

    _, base = served
    mixture = MixtureConfig.from_dict(
        {"sources": [{"source": "pile", "subset": "default", "shards": ["/etc/hostname"]}]}, base_dir=base
    )
    with pytest.raises(LocalShardRefused, match="names the local path '/etc/hostname'"):
        mixture.resolve_shards(mixture.entries[0])
    assert mixture.resolve_shards(mixture.entries[0], allow_local=True) == ["/etc/hostname"]
