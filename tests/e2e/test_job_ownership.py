"""End to end: over real HTTP, each job belongs to the API key that created it; an admin key sees every job."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import tiny_server
from tests.e2e.test_guide_examples import Server

pytestmark = pytest.mark.e2e

KEY_A, KEY_B, ADMIN = "team-a-key", "team-b-key", "admin-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_awq_checkpoint: Path) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("ownership")
    key_file = root / "keys.txt"
    key_file.write_text(f"# one key per line\n{KEY_A}\n\n{KEY_B}\n")
    with tiny_server(root, tiny_awq_checkpoint, "--api-key-file", str(key_file), "--admin-key", ADMIN) as server:
        yield server


def call(server: Server, method: str, path: str, key: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.request(method, f"{server.url}{path}", headers=headers, timeout=30)


def listed(server: Server, key: str) -> list[str]:
    response = call(server, "GET", "/jobs", key)
    assert response.status_code == 200
    return [job["job_id"] for job in response.json()["jobs"]]


@pytest.fixture(scope="module")
def job_of_a(server: Server, audio_dir: Path) -> str:
    """An async job submitted with key A, once it has completed."""
    with (audio_dir / "speech.mp3").open("rb") as audio:
        submitted = requests.post(f"{server.url}/transcribe/async", files={"file": audio},
                                  headers={"X-API-Key": KEY_A}, timeout=60)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]
    deadline = time.monotonic() + 120
    while (status := call(server, "GET", f"/status/{job_id}", KEY_A).json()["status"]) == "processing":
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.2)
    assert status == "completed"
    return job_id


def test_another_key_gets_404_for_every_lookup(server: Server, job_of_a: str) -> None:
    for method, path in (("GET", f"/status/{job_of_a}"), ("GET", f"/result/{job_of_a}"),
                         ("GET", f"/result/{job_of_a}?format=srt"), ("DELETE", f"/jobs/{job_of_a}")):
        response = call(server, method, path, KEY_B)
        assert response.status_code == 404 and response.json()["code"] == "not_found", (method, path)
    assert listed(server, KEY_B) == []


def test_the_owner_and_an_admin_see_the_job(server: Server, job_of_a: str) -> None:
    for key in (KEY_A, ADMIN):
        assert call(server, "GET", f"/status/{job_of_a}", key).json()["status"] == "completed"
        assert call(server, "GET", f"/result/{job_of_a}", key).json()["job_id"] == job_of_a
        assert call(server, "DELETE", f"/jobs/{job_of_a}", key).status_code == 409  # found, already finished
        assert listed(server, key) == [job_of_a]


def test_no_key_or_a_wrong_one_gets_401(server: Server, job_of_a: str) -> None:
    for key in (None, "not-a-key", "# one key per line"):  # a comment line of the key file is no key
        assert call(server, "GET", f"/status/{job_of_a}", key).status_code == 401
        assert call(server, "GET", "/jobs", key).status_code == 401
    assert call(server, "GET", "/health", None).status_code == 200


def test_the_job_store_holds_no_key(server: Server, job_of_a: str) -> None:
    stored = b"".join(p.read_bytes() for p in (server.root / "data").glob("jobs.sqlite3*"))
    assert job_of_a.encode() in stored
    assert not any(key.encode() in stored for key in (KEY_A, KEY_B, ADMIN))


def test_an_upload_without_a_key_is_refused_at_its_headers(server: Server) -> None:
    """The intake refuses it before storing the body: the answer comes while the body is still unsent."""
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /transcribe/json HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 50000000\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 401 ") and b"WWW-Authenticate: Bearer" in answer
    assert b'"unauthorized"' in answer
