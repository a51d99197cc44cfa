#!/usr/bin/env python3
"""Scale-out throughput on a tiny checkpoint (CPU): one file through the single-process server, then through
the API role with 1, 2, ... workers on a real redis-server, each worker limited to ``--threads`` CPU threads
(standing in for one GPU each).

Random weights never stop on their own, so every segment generates exactly ``--tokens`` tokens: each
segment costs the same, and the ratios measure how well the segments spread over the workers and what the
hand-off (segment files, Redis, polling) costs per segment.

    python benchmarks/bench_scaleout.py
    python benchmarks/bench_scaleout.py --minutes 2 --workers 1 2 --json scaleout.json
"""

from __future__ import annotations

import argparse
import json
import os
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
from local_redis import RedisServer  # noqa: E402

from benchmarks.bench_serving import free_port  # noqa: E402
from benchmarks.report import report  # noqa: E402
from benchmarks.synthetic_speech import build_track  # noqa: E402

ENTRY = ROOT / "serve" / "qwen2_5_omni_awq.py"


def launch(args: list[str], work: Path, name: str, threads: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_OMNI_")}
    env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads: one "device" per process
    log = (work / f"{name}.log").open("w")
    return subprocess.Popen([sys.executable, str(ENTRY), *args, "--log-level", "WARNING"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def wait_for(base: str, ready, timeout: float = 300) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready(requests.get(f"{base}/health", timeout=5).json()):
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{base} was not ready in {timeout:.0f} s")


def timed_runs(base: str, audio: Path, fields: dict[str, str], repeats: int) -> tuple[float, dict]:
    data = audio.read_bytes()
    best, body = float("inf"), {}
    for _ in range(repeats):
        started = time.monotonic()
        response = requests.post(f"{base}/transcribe/json", files={"file": ("speech.wav", data)}, data=fields,
                                 timeout=3600)
        elapsed = time.monotonic() - started
        response.raise_for_status()
        best, body = min(best, elapsed), response.json()
    return best, body


def stop(*processes: subprocess.Popen) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def folders(work: Path) -> list[str]:
    return ["--inputs-dir", str(work / "inputs"), "--temp-dir", str(work / "temp"),
            "--outputs-dir", str(work / "outputs"), "--data-dir", str(work / "data")]


def single_process(checkpoint: Path, work: Path, audio: Path, fields: dict[str, str], args: argparse.Namespace
                   ) -> tuple[float, dict]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = launch(["--port", str(port), "--checkpoint-path", str(checkpoint), "--local-model", "--preload",
                     "--idle-timeout", "-1", "--batch-size", "1", *folders(work / "single")], work, "single",
                    args.threads)
    try:
        wait_for(base, lambda h: h["model_loaded"])
        return timed_runs(base, audio, fields, args.repeats)
    finally:
        stop(server)


def scaled_out(checkpoint: Path, work: Path, audio: Path, fields: dict[str, str], workers: int,
               args: argparse.Namespace) -> tuple[float, dict]:
    run = work / f"scale{workers}"
    redis_server = RedisServer(run / "redis").start()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    shared = ["--redis-url", redis_server.url, "--segments-dir", str(run / "segments")]
    api = launch(["--role", "api", "--port", str(port), "--concurrent-jobs", "1", *shared, *folders(run)], work,
                 f"api{workers}", args.threads)
    pool = [launch(["--role", "worker", "--worker-name", f"w{i}", "--checkpoint-path", str(checkpoint),
                    "--local-model", "--preload", "--idle-timeout", "-1", "--batch-size", "1", *shared], work,
                   f"worker{workers}-{i}", args.threads) for i in range(workers)]
    try:
        wait_for(base, lambda h: sum(w["model_loaded"] for w in h.get("workers", [])) == workers)
        return timed_runs(base, audio, fields, args.repeats)
    finally:
        stop(api, *pool)
        redis_server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the generated speech")
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per segment")
    parser.add_argument("--segment-seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per worker (and for the baseline)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    fields = {"segment_duration": str(args.segment_seconds), "max_new_tokens": str(args.tokens),
              "temperature": "0"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _, awq = build_tiny_checkpoints.build(work / "Qwen")
        audio = work / "speech.wav"
        build_track(audio, args.minutes * 60, seed=3)
        alone, expected = single_process(awq, work, audio, fields, args)
        audio_seconds = expected["duration"]
        segments = len(expected["segments"])
        rows = [{"mode": "single process", "workers": 1, "seconds": round(alone, 2),
                 "x_realtime": round(audio_seconds / alone, 1), "vs_single": 1.0, "vs_one_worker": "",
                 "same_text": True}]
        one_worker = None
        for count in args.workers:
            seconds, body = scaled_out(awq, work, audio, fields, count, args)
            one_worker = one_worker or (seconds if count == 1 else None)
            rows.append({"mode": "api + workers", "workers": count, "seconds": round(seconds, 2),
                         "x_realtime": round(audio_seconds / seconds, 1), "vs_single": round(alone / seconds, 2),
                         "vs_one_worker": round(one_worker / seconds, 2) if one_worker else "",
                         "same_text": body["transcription"] == expected["transcription"]})
    print(f"{args.minutes:g} min of speech, {segments} segments of up to {args.segment_seconds:g} s, "
          f"{args.tokens} tokens each, {args.threads} CPU thread(s) per process")
    report(rows, width=15)
    if one_worker:
        print(f"hand-off cost per segment (1 worker against one process): "
              f"{(one_worker - alone) / segments * 1000:.0f} ms")
    if args.json:
        args.json.write_text(json.dumps({"segments": segments, "rows": rows}, indent=2) + "\n")
    return 0 if all(row["same_text"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
