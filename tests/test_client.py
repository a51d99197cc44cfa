"""serve.client against a scripted stub server (a test double): a transient outage while polling is ridden
out; the end-to-end client tests against the real server are in tests/e2e/test_client.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from serve import client


class StubServer(BaseHTTPRequestHandler):
    """Accepts one job, then answers its status polls from ``script`` (status code, body) in order."""

    script: ClassVar[list[tuple[int, dict]]] = []
    polls = 0

    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass

    def _answer(self, status: int, body: dict | bytes, headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self._answer(202, {"job_id": "job-1", "status": "processing"})

    def do_GET(self) -> None:
        if self.path.startswith("/result/"):
            self._answer(200, b"hello\n")
            return
        status, body = StubServer.script[min(StubServer.polls, len(StubServer.script) - 1)]
        StubServer.polls += 1
        self._answer(status, body, {"Retry-After": "1"} if status == 503 else None)


@pytest.fixture
def stub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_polling_rides_out_a_503_with_retry_after(stub: str, tmp_path: Path) -> None:
    unavailable = {"status": "error", "error": "the job store (Redis) is unavailable; retry shortly",
                   "code": "store_unavailable"}
    StubServer.script = [(200, {"status": "processing"}), (503, unavailable), (503, unavailable),
                         (200, {"status": "completed", "duration": 1.0})]
    StubServer.polls = 0
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    assert client.main([str(tmp_path / "a.wav"), "--url", stub, "--poll", "0.01"]) == 0
    assert (tmp_path / "a.txt").read_text() == "hello\n" and StubServer.polls == 4


def test_a_lasting_error_still_fails_the_file(stub: str, tmp_path: Path) -> None:
    StubServer.script = [(404, {"status": "error", "error": "no such job", "code": "not_found"})]
    StubServer.polls = 0
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    assert client.main([str(tmp_path / "a.wav"), "--url", stub]) == 1
    assert not (tmp_path / "a.txt").exists()
