#!/usr/bin/env python3
"""Fault injection: SIGKILL the server at random moments while it transcribes async jobs, restart it on the
same folders each time, and check that every job completes with the transcript of an uninterrupted run.

1. Reference: one server runs the ``--jobs`` files (generated speech, different for each) to the end.
2. Faults: a fresh server on fresh folders gets the same files as async jobs; then, until every job has
   ended, it is killed with SIGKILL ``--min-seconds`` to ``--max-seconds`` after its model has loaded,
   and restarted (at most ``--kills`` times; after that it runs to the end). A kill also waits until every
   running job has finished a segment since the previous kill: a job killed repeatedly at the same
   segment is what the crash-loop guard fails on purpose (``MAX_ATTEMPTS`` in serve/jobs.py), and it is
   not what this run is about.
3. Every job must be completed, its pieces (text and times) equal to the reference's, and ``inputs/`` and
   ``temp/`` empty once the server has stopped.

The tiny checkpoint's random weights never stop on their own, so every segment generates exactly
``--tokens`` tokens. Prints the figures; exits 1 if any check fails.

    python scripts/crash_resume.py
    python scripts/crash_resume.py --jobs 3 --seconds 40 --kills 3 --json crash.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import build_tiny_checkpoints  # noqa: E402

from benchmarks.bench_serving import free_port  # noqa: E402
from benchmarks.synthetic_speech import build_track  # noqa: E402

ENTRY = ROOT / "serve" / "qwen2_5_omni_awq.py"


class Server:
    """The server as a user starts it, on ``work``'s folders, with the tiny checkpoint loaded at start."""

    def __init__(self, work: Path, checkpoint: Path, tokens: int, segment_seconds: float) -> None:
        self.work = work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = ["--port", str(self.port), "--checkpoint-path", str(checkpoint), "--local-model", "--preload",
                     "--max-new-tokens", str(tokens), "--segment-duration", str(segment_seconds),
                     "--inputs-dir", str(work / "inputs"), "--temp-dir", str(work / "temp"),
                     "--outputs-dir", str(work / "outputs"), "--data-dir", str(work / "data"),
                     "--log-level", "WARNING"]
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_OMNI_")}
        log = (self.work / f"server-{self.starts}.log").open("w")
        self.process = subprocess.Popen([sys.executable, str(ENTRY), *self.args], cwd=self.work, env=env,
                                        stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited (code {self.process.returncode}); see {log.name}")
            try:
                if requests.get(f"{self.url}/health", timeout=5).json()["model_loaded"]:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError("the server did not load its model in time")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def submit(self, audio: Path) -> str:
        with audio.open("rb") as f:
            response = requests.post(f"{self.url}/transcribe/async", files={"file": (audio.name, f)},
                                     data={"temperature": "0"}, timeout=60)  # greedy: the same text every run
        response.raise_for_status()
        return response.json()["job_id"]

    def statuses(self, jobs: dict[str, str]) -> dict[str, dict]:
        return {name: requests.get(f"{self.url}/status/{job}", timeout=10).json() for name, job in jobs.items()}

    def pieces(self, job: str) -> list[dict]:
        response = requests.get(f"{self.url}/result/{job}", timeout=10)
        response.raise_for_status()
        return response.json()["segments"]


def wait_all(server: Server, jobs: dict[str, str], timeout: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = server.statuses(jobs)
        if all(s["status"] != "processing" for s in statuses.values()):
            return statuses
        time.sleep(0.2)
    raise RuntimeError("jobs did not end in time")


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def wait_for_progress(server: Server, jobs: dict[str, str], done_before: dict[str, int],
                      timeout: float = 600) -> dict[str, dict]:
    """The jobs' statuses once each running one has finished more segments than ``done_before`` says."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = server.statuses(jobs)
        # Queued jobs (status "processing" too) wait for a place and cannot progress: only running ones count.
        if all(s.get("stage") != "running" or s["progress"]["segments_done"] > done_before[name]
               for name, s in statuses.items()) or time.monotonic() > deadline:
            return statuses
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=120.0, help="length of each job's audio")
    parser.add_argument("--segment-seconds", type=float, default=10.0)
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per segment")
    parser.add_argument("--kills", type=int, default=20, help="at most this many SIGKILLs")
    parser.add_argument("--min-seconds", type=float, default=0.5, help="earliest kill after the model loaded")
    parser.add_argument("--max-seconds", type=float, default=4.0, help="latest kill after the model loaded")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory(prefix="crash-resume-") as scratch:
        scratch_dir = Path(scratch)
        _, checkpoint = build_tiny_checkpoints.build(scratch_dir / "checkpoints")
        audio = []
        for n in range(args.jobs):
            path = scratch_dir / f"job{n:02d}.wav"
            build_track(path, args.seconds, seed=100 + n)
            audio.append(path)

        reference_dir = scratch_dir / "reference"
        reference_dir.mkdir()
        reference = Server(reference_dir, checkpoint, args.tokens, args.segment_seconds)
        reference.start()
        try:
            reference_jobs = {path.name: reference.submit(path) for path in audio}
            wait_all(reference, reference_jobs, timeout=3600)
            expected = {name: reference.pieces(job) for name, job in reference_jobs.items()}
        finally:
            reference.stop()

        faults_dir = scratch_dir / "faults"
        faults_dir.mkdir()
        server = Server(faults_dir, checkpoint, args.tokens, args.segment_seconds)
        server.start()
        jobs = {path.name: server.submit(path) for path in audio}
        kills, started = 0, time.monotonic()
        segments_at_kill: list[int] = []
        done_at_last_kill = dict.fromkeys(jobs, -1)
        while kills < args.kills:
            time.sleep(rng.uniform(args.min_seconds, args.max_seconds))
            statuses = wait_for_progress(server, jobs, done_at_last_kill)
            if all(s["status"] != "processing" for s in statuses.values()):
                break
            done_at_last_kill = {name: s["progress"]["segments_done"] for name, s in statuses.items()}
            server.kill()
            kills += 1
            segments_at_kill.append(sum(s["progress"]["segments_done"] for s in statuses.values()))
            server.start()
        final = wait_all(server, jobs, timeout=3600)
        seconds = time.monotonic() - started
        results = {name: server.pieces(job) for name, job in jobs.items() if final[name]["status"] == "completed"}
        exit_code = server.stop()
        left = {"inputs": leftovers(faults_dir / "inputs"), "temp": leftovers(faults_dir / "temp")}

    completed = sum(s["status"] == "completed" for s in final.values())
    identical = sum(results.get(name) == pieces for name, pieces in expected.items())
    figures = {
        "jobs": args.jobs, "seconds_of_audio_each": args.seconds, "segment_seconds": args.segment_seconds,
        "kills": kills, "starts": server.starts, "completed": completed, "identical_transcripts": identical,
        "failed": {name: s.get("error") for name, s in final.items() if s["status"] != "completed"},
        "segments_done_at_each_kill": segments_at_kill, "seconds_with_faults": round(seconds, 1),
        "left_in_folders": left, "last_stop_exit_code": exit_code,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    ok = completed == identical == args.jobs and not left["inputs"] and not left["temp"] and exit_code == 0
    print("OK: every job completed after the kills, each transcript equal to the uninterrupted run's" if ok
          else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
