"""Security over real HTTP against the real server (Werkzeug mode): foreign Origin and Host, playlists,
slow clients. The gunicorn side of slow clients is in tests/deploy/test_gunicorn.py."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests
from slowloris import SlowClients

from tests.conftest import folder_is_empty
from tests.e2e.conftest import tiny_server
from tests.e2e.test_guide_examples import Server

pytestmark = pytest.mark.e2e

CLIENT_TIMEOUT = 5.0
SLOW_CLIENTS = 200


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_awq_checkpoint: Path, audio_dir: Path) -> Iterator[Server]:
    with tiny_server(tmp_path_factory.mktemp("secure"), tiny_awq_checkpoint, "--preload",
                     "--client-timeout", str(CLIENT_TIMEOUT)) as server:
        wait_for_model(server.url)
        warm_up = requests.post(f"{server.url}/transcribe/json", timeout=120,
                                files={"file": ("a.wav", (audio_dir / "speech.wav").read_bytes())})
        assert warm_up.status_code == 200  # the first transcription's lazy set-up is not the slow clients' doing
        yield server


def wait_for_model(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not requests.get(f"{url}/health", timeout=5).json()["model_loaded"]:
        assert time.monotonic() < deadline, "the model did not load"
        time.sleep(0.2)


def raw_request(server: Server, head: str) -> bytes:
    """A request exactly as written (requests would put its own Host header in)."""
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_a_foreign_web_page_cannot_read_or_cancel_jobs(server: Server) -> None:
    listing = requests.get(f"{server.url}/jobs", headers={"Origin": "http://evil.example"}, timeout=10)
    assert listing.status_code == 200 and "Access-Control-Allow-Origin" not in listing.headers
    preflight = requests.options(f"{server.url}/jobs/{'0' * 32}", timeout=10, headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "DELETE"})
    assert "Access-Control-Allow-Origin" not in preflight.headers  # the browser refuses to send the DELETE


def test_a_rebound_host_name_gets_403(server: Server) -> None:
    answer = raw_request(server, "GET /jobs HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403 ") and b'"forbidden_host"' in answer
    own = raw_request(server, "GET /jobs HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert own.startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize(("name", "text"), [
    ("list.ffconcat", "ffconcat version 1.0\nfile /etc/passwd\n"),
    ("list.m3u8", "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n"),
])
def test_playlists_are_refused(server: Server, name: str, text: str) -> None:
    response = requests.post(f"{server.url}/transcribe/json", files={"file": (name, text.encode())}, timeout=30)
    assert response.status_code == 415 and response.json()["code"] == "unsupported_media"
    assert folder_is_empty(server.root / "inputs")


def check_slow_clients_are_cut_off_while_others_are_served(url: str, root: Path, audio_dir: Path,
                                                           client_timeout: float, pid: int) -> None:
    """Shared with the gunicorn test: SLOW_CLIENTS dribbling connections, while /health and a normal
    transcription must still be answered; then every slow client gets 408 and leaves nothing behind."""
    port = int(url.rsplit(":", 1)[1])
    # One more sends 200 KB at once, then stalls: its body is spooled to a file, which must go too.
    burst = socket.create_connection(("127.0.0.1", port), timeout=30)
    burst.sendall(b"POST /transcribe/json HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 900000\r\n"
                  b"Content-Type: multipart/form-data; boundary=b\r\n\r\n" + b"\0" * 200_000)
    slow = SlowClients("127.0.0.1", port, SLOW_CLIENTS).start()
    try:
        deadline = time.monotonic() + 5
        while not spooled_files(pid, root / "temp"):  # unlinked: only the open file shows it
            assert time.monotonic() < deadline, "the burst's body was never spooled to a file"
            time.sleep(0.05)
        for _ in range(5):
            assert requests.get(f"{url}/health", timeout=5).status_code == 200
        with open(audio_dir / "speech.wav", "rb") as f:
            normal = requests.post(f"{url}/transcribe/json", files={"file": f}, timeout=60)
        assert normal.status_code == 200 and normal.json()["segments"]
        answered = time.monotonic()
        # Cut off after the timeout plus the grace their bytes bought (16 bytes/s at 1 KiB/s: ~2 %).
        assert slow.wait_closed(client_timeout * 2 + 10)
    finally:
        slow.stop()
    assert burst.recv(100).startswith(b"HTTP/1.1 408 ")
    burst.close()
    assert {c.status for c in slow.clients} == {408}
    assert answered < min(c.closed_at for c in slow.clients)  # answered while every slow client was connected
    assert max(slow.lifetimes()) < client_timeout * 1.1 + 5
    assert requests.get(f"{url}/health", timeout=5).status_code == 200
    assert folder_is_empty(root / "inputs") and folder_is_empty(root / "temp")
    assert spooled_files(pid, root / "temp") == []  # the burst's spool is closed


def spooled_files(pid: int, temp: Path) -> list[str]:
    """Files under ``temp`` that the server process ``pid`` (or its children) has open, unlinked ones too."""
    found = []
    for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        for fd in Path(f"/proc/{process.pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith(str(temp.resolve())):
                    found.append(target)
    return found


def test_slow_clients_are_cut_off_while_others_are_served(server: Server, audio_dir: Path) -> None:
    check_slow_clients_are_cut_off_while_others_are_served(server.url, server.root, audio_dir, CLIENT_TIMEOUT,
                                                           server.process.pid)
    assert "cut off a slow client" in server.log.read_text()
