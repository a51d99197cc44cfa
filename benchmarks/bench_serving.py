#!/usr/bin/env python3
"""Serving overheads on a tiny checkpoint (CPU): HTTP versus a direct pipeline call, /health latency during a
long transcription, and batched versus one-at-a-time generation.

Random weights never stop on their own, so every segment generates exactly ``--tokens`` tokens: the model's
share of the work is fixed and the ratios measure the serving code.

    python benchmarks/bench_serving.py
    python benchmarks/bench_serving.py --minutes 1 --json serving.json
Targets: HTTP/direct <= 1.1; /health p99 <= 50 ms while transcribing; batch-N throughput above 1x.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import build_tiny_checkpoints  # noqa: E402

from benchmarks.synthetic_speech import build_track  # noqa: E402
from serve.batching import BatchRunner  # noqa: E402
from serve.engines.qwen2_5_omni import QwenOmniEngine  # noqa: E402
from serve.generation import GenerationOptions  # noqa: E402
from serve.local import LocalDestination  # noqa: E402
from serve.model_manager import ModelManager  # noqa: E402
from serve.scheduler import FairScheduler  # noqa: E402
from serve.transcriber import Transcriber, TranscriptionParams  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, work: Path, tokens: int, segment_seconds: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_OMNI_")}
    command = [sys.executable, str(ROOT / "serve" / "qwen2_5_omni_awq.py"), "--server", "gunicorn",
               "--host", "127.0.0.1", "--port", str(port), "--checkpoint-path", str(checkpoint), "--local-model",
               "--max-new-tokens", str(tokens), "--segment-duration", str(segment_seconds), "--temperature", "0",
               "--batch-size", "1", "--idle-timeout", "-1", "--log-level", "WARNING",
               "--data-dir", str(work / "data"), "--inputs-dir", str(work / "inputs"),
               "--temp-dir", str(work / "temp"), "--outputs-dir", str(work / "outputs")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            requests.get(f"{base}/health", timeout=1)
            return process, base
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or the worker still starting
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not start")


def http_vs_direct(checkpoint: Path, audio: Path, work: Path, tokens: int, segment_seconds: float,
                   repeats: int) -> dict:
    params = TranscriptionParams(segment_duration=segment_seconds, max_new_tokens=tokens, temperature=0.0,
                                 repetition_penalty=1.1)
    scheduler = FairScheduler()
    manager = ModelManager(lambda: BatchRunner(QwenOmniEngine.load(checkpoint, device="cpu"), 1, scheduler),
                           unloader=lambda r: r.close(), idle_timeout=-1)
    transcriber = Transcriber(LocalDestination(manager, scheduler))
    transcriber(audio, params)  # warm-up: load
    direct = []
    for _ in range(repeats):
        started = time.monotonic()
        transcriber(audio, params)
        direct.append(time.monotonic() - started)
    manager.close()

    process, base = start_server(checkpoint, work, tokens, segment_seconds)
    try:
        with open(audio, "rb") as f:
            data = f.read()
        requests.post(f"{base}/transcribe/json", files={"file": ("a.wav", data)}, timeout=600)  # warm-up
        over_http = []
        for _ in range(repeats):
            started = time.monotonic()
            response = requests.post(f"{base}/transcribe/json", files={"file": ("a.wav", data)}, timeout=600)
            over_http.append(time.monotonic() - started)
            response.raise_for_status()
        health = health_during_transcription(base, data)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    return {
        "direct_s": round(min(direct), 3),
        "http_s": round(min(over_http), 3),
        "http_over_direct": round(min(over_http) / min(direct), 3),
        **health,
    }


def health_during_transcription(base: str, audio: bytes) -> dict:
    job = requests.post(f"{base}/transcribe/async", files={"file": ("a.wav", audio)}, timeout=60).json()["job_id"]
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                started = time.monotonic()
                session.get(f"{base}/health", timeout=10)
                latencies.append(time.monotonic() - started)
                stop.wait(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    while requests.get(f"{base}/status/{job}", timeout=10).json()["status"] == "processing":
        time.sleep(0.2)
    stop.set()
    prober.join()
    ordered = sorted(latencies)
    return {
        "health_probes": len(ordered),
        "health_p50_ms": round(statistics.median(ordered) * 1000, 1),
        "health_p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 1),
    }


def batch_throughput(checkpoint: Path, tokens: int, sizes: list[int], segments: int = 16) -> dict:
    engine = QwenOmniEngine.load(checkpoint, device="cpu")
    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(10 * 16000)).astype(np.float32) for _ in range(segments)]
    options = GenerationOptions(max_new_tokens=tokens, temperature=0.0, repetition_penalty=1.1)
    engine.transcribe(clips[0], options)  # warm-up
    started = time.monotonic()
    sequential = [engine.transcribe(c, options) for c in clips]
    one = time.monotonic() - started
    result = {"sequential_s": round(one, 3)}
    for size in sizes:
        started = time.monotonic()
        batched = [text for i in range(0, segments, size) for text in engine.transcribe_batch(clips[i:i + size],
                                                                                              options)]
        seconds = time.monotonic() - started
        result[f"batch{size}_s"] = round(seconds, 3)
        result[f"batch{size}_speedup"] = round(one / seconds, 2)
        result[f"batch{size}_identical"] = batched == sequential
    engine.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the generated speech")
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per segment")
    parser.add_argument("--segment-seconds", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    report: dict = {"device": "cpu", "tokens_per_segment": args.tokens, "segment_seconds": args.segment_seconds,
                    "audio_minutes": args.minutes}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        full, awq = build_tiny_checkpoints.build(work / "Qwen")
        audio = work / "speech.wav"
        build_track(audio, args.minutes * 60, seed=2)
        report["serving"] = http_vs_direct(awq, audio, work, args.tokens, args.segment_seconds, args.repeats)
        print(json.dumps(report["serving"]), file=sys.stderr, flush=True)
        report["batching_bf16"] = batch_throughput(full, args.tokens, args.batch_sizes)
        report["batching_awq"] = batch_throughput(awq, args.tokens, args.batch_sizes)
    for section in ("serving", "batching_bf16", "batching_awq"):
        print(f"[{section}]")
        for key, value in report[section].items():
            print(f"  {key:<22} {value}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
