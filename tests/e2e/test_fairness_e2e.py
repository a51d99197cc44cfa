"""Fair scheduling over real HTTP, on the real server with its default flags: a short request is answered
while long files are being transcribed (all of them at once, segment by segment), a job among them can be
cancelled, and every transcript is exactly the one the job gets when it runs alone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import folder_is_empty
from tests.distributed.test_scale_out import speech_minutes, transcribe, transcript_of
from tests.e2e.conftest import tiny_server
from tests.e2e.test_guide_examples import Server

pytestmark = pytest.mark.e2e

FIELDS = {"segment_duration": "10", "temperature": "0"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_awq_checkpoint: Path) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("fair")
    with tiny_server(root, tiny_awq_checkpoint, "--checkpoint-path", "Qwen/Qwen2.5-Omni-7B-AWQ",
                     "--max-new-tokens", "32", "--preload") as server:
        yield server


@pytest.fixture(scope="module")
def files(server: Server, audio_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A long file (12 segments) and a short one, with the transcripts each gets alone on the idle server."""
    folder = tmp_path_factory.mktemp("fair_audio")
    long_audio = speech_minutes(folder, audio_dir, 2)
    return {"long": long_audio, "short": audio_dir / "speech.wav",
            "long_alone": transcript_of(transcribe(server.url, long_audio, **FIELDS)),
            "short_alone": transcript_of(transcribe(server.url, audio_dir / "speech.wav", **FIELDS))}


def submit(server: Server, audio: Path) -> str:
    with audio.open("rb") as f:
        response = requests.post(f"{server.url}/transcribe/async", files={"file": f}, data=FIELDS, timeout=60)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def status(server: Server, job_id: str) -> dict:
    return requests.get(f"{server.url}/status/{job_id}", timeout=10).json()


def wait_until_all_under_way(server: Server, jobs: list[str]) -> None:
    deadline = time.monotonic() + 60
    while not all(status(server, job)["progress"]["segments_done"] >= 1 for job in jobs):
        assert time.monotonic() < deadline, "the long jobs did not all start: are they run one after another?"
        time.sleep(0.05)


def final(server: Server, job_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while (body := status(server, job_id))["status"] == "processing":
        assert time.monotonic() < deadline, f"job {job_id} did not finish"
        time.sleep(0.1)
    return body


def result(server: Server, job_id: str) -> tuple:
    response = requests.get(f"{server.url}/result/{job_id}", params={"format": "json"}, timeout=10)
    assert response.status_code == 200, response.text
    return transcript_of(response.json())


def test_a_short_request_is_answered_while_three_long_files_run_and_nothing_changes_their_text(
        server: Server, files: dict) -> None:
    long_jobs = [submit(server, files["long"]) for _ in range(3)]
    wait_until_all_under_way(server, long_jobs)  # more than the old two-at-a-time: every one shares the model
    short = transcribe(server.url, files["short"], **FIELDS)
    during = [status(server, job) for job in long_jobs]
    assert all(s["status"] == "processing" for s in during), during  # answered before any long job ended
    assert all(s["progress"]["segments_done"] < s["progress"]["segments_total"] for s in during)
    assert transcript_of(short) == files["short_alone"]
    for job in long_jobs:
        assert final(server, job)["status"] == "completed"
        assert result(server, job) == files["long_alone"]  # pieces in time order, the text of the job alone


def test_cancelling_one_of_two_interleaved_jobs_stops_it_and_leaves_the_other_whole(server: Server,
                                                                                  files: dict) -> None:
    cancelled, kept = submit(server, files["long"]), submit(server, files["long"])
    wait_until_all_under_way(server, [cancelled, kept])
    response = requests.delete(f"{server.url}/jobs/{cancelled}", timeout=10)
    assert response.status_code == 200
    stopped = final(server, cancelled, timeout=10)
    assert stopped["status"] == "cancelled" and stopped["code"] == "cancelled"
    assert status(server, kept)["status"] == "processing"
    assert final(server, kept)["status"] == "completed"
    assert result(server, kept) == files["long_alone"]
    assert status(server, cancelled)["progress"] == stopped["progress"]  # nothing ran for it afterwards
    assert folder_is_empty(server.root / "inputs") and folder_is_empty(server.root / "temp")
