"""The Beam pipeline through Beam's portability layer (``--runner beam-portable``) gives exactly the local
build.

A ``PortableRunner`` submits the pipeline to Beam's local job service, whose SDK worker is started by an
external worker pool — the path Flink, Spark and Dataflow take — each in a process of its own, offline, with
every server on 127.0.0.1, and nothing left running afterwards.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest

from elm_data.manifests import beam
from elm_data.manifests.beam import (
    _loopback,
    job_service_on_loopback,
    local_services,
    on_this_machine,
    pipeline_options,
    portable_args,
)
from elm_data.manifests.build import build_manifest
from elm_data.manifests.manifest import Manifest, data_files

pytestmark = pytest.mark.slow  # Beam: importing it, its services and a portable run take seconds

PORTABLE_TIMEOUT_S = 600  # a generous bound: the run takes well under a minute on two busy cores
# 127.0.0.1, ::ffff:127.0.0.1 in /proc/net/tcp*
LOOPBACK_HEX = {"0100007F", "0000000000000000FFFF00000100007F"}
HAS_PROC = Path("/proc/net/tcp").exists()


def _assert_same_manifest(out: Path, local_dir: Path) -> None:
    local = Manifest(local_dir)
    assert Manifest(out).manifest_id == local.manifest_id
    assert Manifest(out).info["merkle_root"] == local.info["merkle_root"]
    names = data_files(out)
    assert names == data_files(local_dir) and "shards.parquet" in names
    for name in names:
        assert (out / name).read_bytes() == (local_dir / name).read_bytes(), name


def _descendants(pid: int) -> set[int]:
    """``pid``'s children, grandchildren, ... (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _services_of(parent_pid: int) -> list[int]:
    """Service processes (``... beam worker-pool|job-service ... --parent-pid PID``) still running."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            b"elm_data.manifests.beam" in args
            and b"--parent-pid" in args
            and str(parent_pid).encode() in args
        ):
            found.append(int(proc.name))
    return found


def _listening(pids: set[int]) -> dict[int, set[str]]:
    """pid -> hex local addresses (as /proc/net/tcp* write them) of the TCP sockets it listens on."""
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    found: dict[int, set[str]] = {}
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        for line in table.read_text().splitlines()[1:] if table.exists() else []:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.setdefault(inodes[fields[9]], set()).add(fields[1])
    return found


class SocketWatch:
    """While open, every 0.1 s: the processes this one started (``started``) and the listening sockets of
    this process and of those (``seen``)."""

    def __init__(self):
        self.seen: dict[int, set[str]] = {}
        self.started: set[int] = set()
        self._before = _descendants(os.getpid())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.1):
            self.started |= _descendants(os.getpid()) - self._before
            for pid, addresses in _listening(self.started | {os.getpid()}).items():
                self.seen.setdefault(pid, set()).update(addresses)

    def __enter__(self):
        self._thread.start()
        return self

    def still_running(self) -> set[int]:
        return {pid for pid in self.started if Path(f"/proc/{pid}").exists()}

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def not_on_loopback(self) -> set[str]:
        return {
            a
            for addresses in self.seen.values()
            for a in addresses
            if a.rpartition(":")[0] not in LOOPBACK_HEX
        }


def test_portable_options_name_the_job_service_and_the_pool():
    options = pipeline_options(portable_args("127.0.0.1:8099", "127.0.0.1:50000")).get_all_options()
    assert options["runner"] == "PortableRunner"  # never Prism (downloads a binary), never a Maven job server
    assert options["job_endpoint"] == "127.0.0.1:8099"
    assert (options["environment_type"], options["environment_config"]) == ("EXTERNAL", "127.0.0.1:50000")
    # A job service embedded in this process is kept on loopback only when its workers are local too.
    assert on_this_machine(pipeline_options(portable_args("embed", "127.0.0.1:50000")))
    assert on_this_machine(pipeline_options(portable_args("embed", "localhost:50000")))
    assert not on_this_machine(pipeline_options(portable_args("embed", "pool.example:50000")))
    assert not on_this_machine(pipeline_options(portable_args("127.0.0.1:8099", "127.0.0.1:50000")))
    assert not on_this_machine(pipeline_options([]))


def test_job_service_servers_bind_loopback_only():
    assert _loopback("[::]:0") == "127.0.0.1:0"
    assert _loopback("0.0.0.0:8099") == "127.0.0.1:8099"
    assert _loopback("localhost:8099") == "127.0.0.1:8099"
    assert _loopback("pool.example:8099") == "pool.example:8099"
    real = grpc.server
    with job_service_on_loopback():
        server = grpc.server(None)
        port = server.add_insecure_port("[::]:0")
        server.start()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            if HAS_PROC:
                ours = {
                    a for a in _listening({os.getpid()}).get(os.getpid(), set()) if a.endswith(f":{port:04X}")
                }
                assert ours and {a.rpartition(":")[0] for a in ours} <= LOOPBACK_HEX, ours
        finally:
            server.stop(0)
    assert grpc.server is real


def test_services_serve_on_loopback_and_stop():
    with local_services("worker-pool", "job-service", max_seconds=PORTABLE_TIMEOUT_S) as addresses:
        for address in addresses:
            host, port = address.rsplit(":", 1)
            assert host == "127.0.0.1"
            socket.create_connection((host, int(port)), timeout=5).close()
        if HAS_PROC:
            assert len(_services_of(os.getpid())) == 2
    assert _services_of(os.getpid()) == []
    for address in addresses:
        host, port = address.rsplit(":", 1)
        with pytest.raises(OSError):
            socket.create_connection((host, int(port)), timeout=5).close()


def test_portable_build_equals_local_build(
    sample_dir, tokenizer_path, sample_manifest, tmp_path, monkeypatch
):
    # The counting must happen in the SDK worker process: in this (driver) process it would fail.
    def not_here(*args, **kwargs):
        raise AssertionError("a shard was counted in the driver process")

    monkeypatch.setattr(beam, "process_shard", not_here)
    out = tmp_path / "portable"
    with SocketWatch() as watch:
        result = build_manifest(
            sample_dir / "mixture.yaml", out, tokenizer=tokenizer_path, runner="beam-portable"
        )
    assert result.shards == len(Manifest(sample_manifest).shards) and result.shards_reused == 0
    _assert_same_manifest(out, sample_manifest)
    if HAS_PROC:
        # the pool, the job service (its job API, artifact staging, and the control, data, state and logging
        # servers of the job) all listened on 127.0.0.1 only
        assert len([pid for pid in watch.seen if pid != os.getpid()]) >= 2, watch.seen
        assert sum(map(len, watch.seen.values())) >= 4, watch.seen
        assert watch.not_on_loopback() == set(), watch.seen
        assert len(watch.started) >= 3, watch.started  # job service, worker pool, SDK worker
        assert watch.still_running() == set() and _services_of(os.getpid()) == []  # nothing left running


def test_portable_runner_from_the_cli(sample_dir, tokenizer_path, sample_manifest, tmp_path):
    out = tmp_path / "portable-cli"
    command = [sys.executable, "-m", "elm_data", "build", "manifest", str(sample_dir / "mixture.yaml")]
    command += ["--out", str(out), "--tokenizer", tokenizer_path, "--runner", "beam-portable"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=PORTABLE_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()  # its job service and worker pool die with it
            proc.communicate()
    assert proc.returncode == 0, output
    assert Manifest(out).manifest_id in output
    _assert_same_manifest(out, sample_manifest)
    assert _services_of(proc.pid) == []
