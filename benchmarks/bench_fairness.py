#!/usr/bin/env python3
"""Fair scheduling on a tiny checkpoint (CPU): how long a 5 s request takes while hour-long files run.

For each mode (the single process with its default flags; the API role with two workers on a real
redis-server), the script measures the idle latency of a short synchronous request (median of
``--repeats``), then, for 1, 3 and 8 long jobs:

- latency: it submits that many ``--minutes`` MP3s as async jobs and sends ``--repeats`` short requests at
  random moments while they run (the first one's latency, and the median of those answered while every
  long job was still running); the long jobs are then cancelled;
- throughput: it runs that many ``--throughput-minutes`` MP3s to the end, alone and then with short
  requests sent all along, and reports audio seconds transcribed per second over the jobs.

``--baseline-root`` measures another checkout the same way in the same run (for example the previous
main in a git worktree), for the ratios against it. Random weights never stop on their own, so every
segment generates exactly ``--tokens`` tokens.

    python benchmarks/bench_fairness.py
    python benchmarks/bench_fairness.py --long-jobs 1 3 8 --baseline-root /tmp/main-before --json f.json
    python benchmarks/bench_fairness.py --minutes 20 --throughput-minutes 3 --long-jobs 2 --repeats 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import build_tiny_checkpoints  # noqa: E402
from local_redis import RedisServer  # noqa: E402

from benchmarks.bench_scaleout import folders, stop, wait_for  # noqa: E402
from benchmarks.bench_serving import free_port  # noqa: E402
from benchmarks.report import report  # noqa: E402
from benchmarks.synthetic_speech import build_track  # noqa: E402

SEGMENT_SECONDS = "60"  # the server's default


def launch(root: Path, args: list[str], work: Path, name: str, threads: int | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_OMNI_")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # one CPU thread per scale-out worker: one "device" each
    log = (work / f"{name}.log").open("w")
    return subprocess.Popen([sys.executable, str(root / "serve" / "qwen2_5_omni_awq.py"), *args, "--log-level",
                             "WARNING"], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def single_process(root: Path, checkpoint: Path, work: Path, tokens: int) -> Iterator[str]:
    """The server as a new user starts it: default flags, the tiny checkpoint, short generation."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = launch(root, ["--port", str(port), "--checkpoint-path", str(checkpoint), "--local-model",
                           "--max-new-tokens", str(tokens), "--preload", *folders(work)], work, "single", None)
    try:
        wait_for(base, lambda h: h["model_loaded"])
        yield base
    finally:
        stop(server)


@contextlib.contextmanager
def scaled_out(root: Path, checkpoint: Path, work: Path, tokens: int, workers: int = 2) -> Iterator[str]:
    redis_server = RedisServer(work / "redis").start()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    shared = ["--redis-url", redis_server.url, "--segments-dir", str(work / "segments")]
    # The API holds the request defaults (the generation settings travel with each task).
    api = launch(root, ["--role", "api", "--port", str(port), "--max-new-tokens", str(tokens), *shared,
                        *folders(work)], work, "api", None)
    pool = [launch(root, ["--role", "worker", "--worker-name", f"w{i}", "--checkpoint-path", str(checkpoint),
                          "--local-model", "--preload", *shared], work, f"worker{i}", 1) for i in range(workers)]
    try:
        wait_for(base, lambda h: sum(w["model_loaded"] for w in h.get("workers", [])) == workers)
        yield base
    finally:
        stop(api, *pool)
        redis_server.stop()


def short_request(base: str, audio: bytes) -> float:
    started = time.monotonic()
    response = requests.post(f"{base}/transcribe/json", files={"file": ("short.wav", audio)},
                             data={"temperature": "0"}, timeout=3600)
    response.raise_for_status()
    return time.monotonic() - started


def submit_long(base: str, audio: Path, count: int) -> list[str]:
    jobs = []
    for _ in range(count):
        with audio.open("rb") as f:
            response = requests.post(f"{base}/transcribe/async", files={"file": ("long.mp3", f)},
                                     data={"temperature": "0"}, timeout=600)
        response.raise_for_status()
        jobs.append(response.json()["job_id"])
    return jobs


def processing(base: str, jobs: list[str]) -> list[dict]:
    """The status of each job of ``jobs`` still processing, with its progress."""
    statuses = [requests.get(f"{base}/status/{job}", timeout=30).json() for job in jobs]
    return [s for s in statuses if s["status"] == "processing"]


def short_latency(base: str, long_audio: Path, short: bytes, count: int, repeats: int) -> dict:
    """Short requests at random moments while ``count`` long jobs run (they are cancelled afterwards)."""
    pause = random.Random(count)
    jobs = submit_long(base, long_audio, count)
    try:
        deadline = time.monotonic() + 120
        while not any(s["progress"]["segments_done"] for s in processing(base, jobs)):  # under way
            if time.monotonic() > deadline:
                raise RuntimeError("the long jobs did not start")
            time.sleep(0.2)
        latencies, all_running = [], []
        for _ in range(repeats):
            # Requests sent back to back would all land just after a long segment started (the previous short
            # one's end frees the model for it): arrivals at random moments measure the wait a user sees.
            time.sleep(pause.uniform(0.2, 1.5))
            latencies.append(short_request(base, short))
            all_running.append(len(processing(base, jobs)) == count)
    finally:
        for job in jobs:
            requests.delete(f"{base}/jobs/{job}", timeout=60)
        deadline = time.monotonic() + 120
        while processing(base, jobs) and time.monotonic() < deadline:
            time.sleep(0.2)
    while_running = [t for t, running in zip(latencies, all_running, strict=True) if running]
    return {"first_short_s": latencies[0], "short_s": statistics.median(while_running) if while_running else None,
            "answered_while_all_ran": f"{len(while_running)}/{repeats}"}


def long_throughput(base: str, audio: Path, short: bytes, count: int, with_short: bool) -> tuple[float, int]:
    """Audio seconds per second for ``count`` jobs of ``audio`` from submission to the last one's end, with or
    without short requests sent all along (at random moments); and how many short requests were answered."""
    pause = random.Random(count)
    stop = threading.Event()
    answered = []

    def shorts() -> None:
        while not stop.wait(pause.uniform(0.2, 1.5)):
            answered.append(short_request(base, short))

    sender = threading.Thread(target=shorts, daemon=True)
    started = time.monotonic()
    jobs = submit_long(base, audio, count)
    if with_short:
        sender.start()
    total = 0.0
    for job in jobs:
        while (body := requests.get(f"{base}/status/{job}", timeout=30).json())["status"] == "processing":
            time.sleep(0.1)
        if body["status"] != "completed":
            raise RuntimeError(f"long job {job} ended {body['status']}: {body.get('error')}")
        total += body["duration"]
    elapsed = time.monotonic() - started
    stop.set()
    if with_short:
        sender.join()
    return total / elapsed, len(answered)


def measure(mode: str, root: Path, checkpoint: Path, work: Path, audio: dict[str, Path], short: bytes,
            args: argparse.Namespace) -> list[dict]:
    server = single_process if mode == "single" else scaled_out
    rows = []
    with server(root, checkpoint, work, args.tokens) as base:
        short_request(base, short)  # warm-up
        idle = statistics.median(short_request(base, short) for _ in range(args.repeats))
        for count in args.long_jobs:
            latency = short_latency(base, audio["long"], short, count, args.repeats)
            quiet, _ = long_throughput(base, audio["throughput"], short, count, with_short=False)
            busy, shorts_answered = long_throughput(base, audio["throughput"], short, count, with_short=True)
            median = latency["short_s"]
            rows.append({
                "mode": mode, "long_jobs": count, "idle_short_s": round(idle, 3),
                "first_short_s": round(latency["first_short_s"], 3),
                "short_s": round(median, 3) if median is not None else "-",
                "short_vs_idle": round(median / idle, 2) if median is not None else "-",
                "answered_while_all_ran": latency["answered_while_all_ran"],
                "long_audio_s_per_s": round(quiet, 1), "with_short_requests": round(busy, 1),
                "shorts_answered": shorts_answered,
            })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="length of each long job's MP3")
    parser.add_argument("--long-jobs", type=int, nargs="+", default=[1, 3, 8])
    parser.add_argument("--short-seconds", type=float, default=5.0)
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated per segment")
    parser.add_argument("--repeats", type=int, default=5, help="short requests per measurement (median)")
    parser.add_argument("--throughput-minutes", type=float, default=10.0, help="length of each long job in the "
                                                                               "throughput runs (run to the end)")
    parser.add_argument("--modes", nargs="+", choices=["single", "scaleout"], default=["single", "scaleout"])
    parser.add_argument("--baseline-root", type=Path, help="another checkout to measure the same way (today's "
                                                           "main, say), for ratios against it")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _, awq = build_tiny_checkpoints.build(work / "Qwen")
        speech = work / "speech.wav"
        build_track(speech, 120, seed=5)
        audio = {}
        for name, minutes in (("long", args.minutes), ("throughput", args.throughput_minutes)):
            audio[name] = work / f"{name}.mp3"
            subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-stream_loop", "-1", "-i",
                            str(speech), "-t", str(minutes * 60), "-ar", "44100", "-ac", "2", str(audio[name])],
                           check=True)
        short_wav = work / "short.wav"
        subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", str(speech), "-t",
                        str(args.short_seconds), str(short_wav)], check=True)
        short = short_wav.read_bytes()
        roots = [("this checkout", ROOT)] + ([("baseline", args.baseline_root)] if args.baseline_root else [])
        rows = []
        for label, root in roots:
            for mode in args.modes:
                run = work / f"{label.replace(' ', '_')}-{mode}"
                run.mkdir()
                rows += [{"code": label, **row} for row in measure(mode, root, awq, run, audio, short, args)]
                shutil.rmtree(run / "outputs", ignore_errors=True)
    print(f"latency: long jobs of {args.minutes:g} minutes, short requests of {args.short_seconds:g} s (median of "
          f"those answered while every long job still ran, of {args.repeats}); throughput: long jobs of "
          f"{args.throughput_minutes:g} minutes run to the end; MP3s at 44.1 kHz stereo, the default "
          f"{SEGMENT_SECONDS} s segments, {args.tokens} tokens per segment")
    report(rows, width=12)
    if args.baseline_root:
        baseline = {(r["mode"], r["long_jobs"]): r for r in rows if r["code"] == "baseline"}
        for row in rows:
            other = baseline.get((row["mode"], row["long_jobs"]))
            if row["code"] == "this checkout" and other and other["long_audio_s_per_s"]:
                throughput = row["long_audio_s_per_s"] / other["long_audio_s_per_s"]
                print(f"{row['mode']}, {row['long_jobs']} long jobs: short request {row['short_s']} s against "
                      f"{other['short_s']} s; long-job throughput x{throughput:.3f} of the baseline's")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
