"""A real HTTP file server on 127.0.0.1 with Range support that injects faults, for tests and benchmarks.

``serve(root, ...)`` serves the files under ``root`` at ``http://127.0.0.1:PORT/<path>`` (HEAD and GET,
``Range: bytes=a-b`` answered 206) from a thread, and stops when the block ends or after ``lifetime_s``.
Faults are counted over all requests (HEAD and GET): every ``fail_every``-th answers 503, every
``throttle_every``-th answers 429 with ``Retry-After: retry_after``, every ``cut_every``-th sends its full
``Content-Length`` but only the first half of the body and closes the connection; ``fault_rate`` instead
draws a fault (503 or cut, alternately) for that fraction of requests from a seeded generator. Every answer
waits ``latency_s`` first. ``stats`` counts requests, faults and body bytes sent. The ``Faults`` given is read
at every request, so a caller may change it while the server runs.
"""

from __future__ import annotations

import contextlib
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Faults:
    fail_every: int = 0
    cut_every: int = 0
    throttle_every: int = 0
    retry_after: str = "0"
    latency_s: float = 0.0
    fault_rate: float = 0.0
    seed: int = 0
    ranges: bool = True  # False: answer every GET with the whole file (a server that ignores Range)


@dataclass
class ServerStats:
    requests: int = 0
    faults: Counter = field(default_factory=Counter)
    bytes_sent: int = 0


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, faults: Faults):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root, self.faults, self.stats = root.resolve(), faults, ServerStats()
        self.lock = threading.Lock()

    def handle_error(self, request, client_address) -> None:  # a client that hung up: nothing to report
        pass

    def fault_for_next(self) -> str | None:
        with self.lock:
            self.stats.requests += 1
            n, f = self.stats.requests, self.faults
            if f.fault_rate:  # a seeded draw per request number: the same requests fail in a rerun
                fault = (
                    ("503", "cut")[n % 2]
                    if random.Random(f.seed * 1_000_003 + n).random() < f.fault_rate
                    else None
                )
            elif f.fail_every and n % f.fail_every == 0:
                fault = "503"
            elif f.throttle_every and n % f.throttle_every == 0:
                fault = "429"
            elif f.cut_every and n % f.cut_every == 0:
                fault = "cut"
            else:
                fault = None
            if fault:
                self.stats.faults[fault] += 1
            return fault


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        server = self.server
        fault = server.fault_for_next()
        time.sleep(server.faults.latency_s)
        if fault in ("503", "429"):
            self.send_response(int(fault))
            if fault == "429" or server.faults.retry_after != "0":
                self.send_header("Retry-After", server.faults.retry_after)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = (server.root / self.path.split("?", 1)[0].lstrip("/")).resolve()
        if server.root not in path.parents or not path.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = path.stat().st_size
        start, end, status = 0, size, 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match and server.faults.ranges:
            start, end, status = int(match[1]), min(size, int(match[2] or size - 1) + 1), 206
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        self.send_response(status)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if not body:
            return
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        if fault == "cut":
            data = data[: len(data) // 2]
            self.close_connection = True
        self.wfile.write(data)
        self.wfile.flush()
        with server.lock:
            server.stats.bytes_sent += len(data)
        if fault == "cut":
            with contextlib.suppress(OSError):
                self.connection.shutdown(2)


@contextlib.contextmanager
def serve(
    root: Path, faults: Faults | None = None, lifetime_s: float = 600.0
) -> Iterator[tuple[str, ServerStats]]:
    """``(base url, stats)`` of a server of ``root`` on 127.0.0.1, stopped when the block ends or the time is
    up."""
    server = _Server(Path(root), faults or Faults())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    timer = threading.Timer(lifetime_s, server.shutdown)
    timer.daemon = True
    timer.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.stats
    finally:
        timer.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
