#!/usr/bin/env python3
"""Soak and load test: many concurrent clients, valid and invalid requests, bounded in count and time.

By default it builds a tiny checkpoint, starts the server on loopback (gunicorn, as in the image) and
drives it; ``--base-url`` points it at a running server instead (loopback only, by design: this is a
load generator). It reports requests lost (no HTTP answer: must be 0), non-JSON or 500 answers (must be
0), 503s (a full queue, allowed), /health latency under load, and the server's RSS before and after.

    python scripts/soak.py                                   # 32 clients, 300 requests
    python scripts/soak.py --clients 8 --requests 60 --json soak.json
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent


def tone_wav(seconds: float, frequency: float = 330.0) -> bytes:
    t = np.arange(int(seconds * 16000)) / 16000
    samples = (0.3 * np.sin(2 * np.pi * frequency * t) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


AUDIO = tone_wav(2.0)
NOT_AUDIO = b"definitely not audio\n" * 50

# (name, method, path, files, form fields, expected statuses)
REQUESTS = [
    ("json", "POST", "/transcribe/json", {"file": ("a.wav", AUDIO)}, {"segment_duration": "1"}, {200}),
    ("text", "POST", "/transcribe", {"file": ("a.wav", AUDIO)}, {}, {200}),
    ("srt", "POST", "/transcribe/srt", {"file": ("a.wav", AUDIO)}, {"segment_duration": "1"}, {200}),
    ("async", "POST", "/transcribe/async", {"file": ("a.wav", AUDIO)}, {}, {202}),
    ("health", "GET", "/health", None, {}, {200}),
    ("not-audio", "POST", "/transcribe/json", {"file": ("a.mp3", NOT_AUDIO)}, {}, {415}),
    ("no-file", "POST", "/transcribe/json", None, {"segment_duration": "10"}, {400}),
    ("empty-file", "POST", "/transcribe/json", {"file": ("a.wav", b"")}, {}, {400}),
    ("bad-param", "POST", "/transcribe/json", {"file": ("a.wav", AUDIO)}, {"temperature": "hot"}, {400}),
    ("unknown-route", "GET", "/nope", None, {}, {404}),
    ("wrong-method", "GET", "/transcribe/json", None, {}, {405}),
    ("unknown-job", "GET", "/status/unknown", None, {}, {404}),
]
ATTACHMENTS = {"text", "srt"}  # their 200s are files; every other answer must be JSON


@dataclass
class Outcome:
    name: str
    status: int | None  # None: no HTTP answer (lost)
    seconds: float
    json_ok: bool
    expected: bool
    error: str = ""


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    health_latencies: list[float] = field(default_factory=list)
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    rss_samples_mb: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0

    def summary(self) -> dict:
        statuses = Counter(str(o.status) for o in self.outcomes)
        lat = sorted(self.health_latencies)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1) if lat else None

        return {
            "requests": len(self.outcomes),
            "lost": sum(o.status is None for o in self.outcomes),
            "server_errors_500": sum(o.status is not None and o.status >= 500 and o.status != 503
                                     for o in self.outcomes),
            "non_json": sum(not o.json_ok for o in self.outcomes if o.status is not None),
            "unexpected_status": sum(not o.expected and o.status not in (None, 503) for o in self.outcomes),
            "busy_503": statuses.get("503", 0),
            "statuses": dict(sorted(statuses.items())),
            "health_probes": len(lat),
            "health_p50_ms": pct(0.50),
            "health_p99_ms": pct(0.99),
            "rss_before_mb": round(self.rss_before_mb, 1),
            "rss_after_mb": round(self.rss_after_mb, 1),
            "rss_growth_mb": round(self.rss_after_mb - self.rss_before_mb, 1),
            # RSS at each quarter of the run: a leak shows as a steady climb, allocator warm-up does not.
            "rss_quarters_mb": [round(self.rss_samples_mb[min(len(self.rss_samples_mb) - 1,
                                                              q * len(self.rss_samples_mb) // 4)], 1)
                                for q in range(1, 5)] if self.rss_samples_mb else [],
            "wall_seconds": round(self.wall_seconds, 1),
        }


def one_request(session: requests.Session, base: str, spec: tuple, timeout: float) -> Outcome:
    name, method, path, files, fields, expected = spec
    started = time.monotonic()
    try:
        response = session.request(method, base + path, files=files, data=fields, timeout=timeout)
    except requests.RequestException as exc:
        return Outcome(name, None, time.monotonic() - started, False, False, repr(exc)[:200])
    status = response.status_code
    json_ok = True
    if not (name in ATTACHMENTS and status == 200):
        try:
            body = response.json()
            json_ok = isinstance(body, dict) and "Traceback" not in response.text
        except ValueError:
            json_ok = False
    ok = status in expected
    if name == "async" and status == 202:
        job_id = response.json()["job_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = session.get(f"{base}/status/{job_id}", timeout=timeout).json()["status"]
            if state != "processing":
                ok = state == "completed"
                break
            time.sleep(0.1)
        else:
            ok = False
    return Outcome(name, status, time.monotonic() - started, json_ok, ok)


def server_rss_mb(pid: int) -> float:
    try:
        process = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 1e6
    except psutil.NoSuchProcess:
        return 0.0


def run_load(base: str, pid: int | None, clients: int, total: int, time_limit: float, seed: int) -> Report:
    report = Report()
    rng = random.Random(seed)
    plan = [rng.choice(REQUESTS) for _ in range(total)]
    counter = itertools.count()
    lock = threading.Lock()
    stop = threading.Event()
    deadline = time.monotonic() + time_limit

    # Warm up (loads the model) before measuring the idle-with-model RSS.
    with requests.Session() as s:
        one_request(s, base, REQUESTS[0], 120)
    report.rss_before_mb = server_rss_mb(pid) if pid else 0.0

    def client() -> None:
        with requests.Session() as session:
            while time.monotonic() < deadline:
                index = next(counter)
                if index >= total:
                    return
                outcome = one_request(session, base, plan[index], timeout=max(5.0, deadline - time.monotonic()))
                with lock:
                    report.outcomes.append(outcome)

    def prober() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    session.get(f"{base}/health", timeout=10)
                    report.health_latencies.append(time.monotonic() - started)
                except requests.RequestException:
                    report.health_latencies.append(10.0)
                if pid:
                    report.rss_samples_mb.append(server_rss_mb(pid))
                stop.wait(0.05)

    started = time.monotonic()
    threads = [threading.Thread(target=client, name=f"client-{i}") for i in range(clients)]
    probe = threading.Thread(target=prober, name="health-prober")
    probe.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    probe.join()
    report.wall_seconds = time.monotonic() - started
    report.rss_after_mb = server_rss_mb(pid) if pid else 0.0
    unfinished = total - len(report.outcomes)
    if unfinished:  # the time limit ended the run early: say so rather than count them lost
        print(f"time limit reached: {unfinished} planned requests were not sent", file=sys.stderr)
    return report


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_server(work: Path, server: str, queue_depth: int, concurrent_jobs: int
                       ) -> tuple[subprocess.Popen, str]:
    sys.path.insert(0, str(ROOT / "scripts"))
    import build_tiny_checkpoints

    _, awq = build_tiny_checkpoints.build(work / "Qwen")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_OMNI_")}
    command = [sys.executable, str(ROOT / "serve" / "qwen2_5_omni_awq.py"), "--server", server,
               "--host", "127.0.0.1", "--port", str(port), "--checkpoint-path", str(awq), "--local-model",
               "--max-new-tokens", "8", "--idle-timeout", "-1", "--log-level", "WARNING",
               "--queue-depth", str(queue_depth), "--concurrent-jobs", str(concurrent_jobs),
               "--data-dir", str(work / "data"), "--inputs-dir", str(work / "inputs"),
               "--temp-dir", str(work / "temp"), "--outputs-dir", str(work / "outputs")]
    log = (work / "server.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            requests.get(f"{base}/health", timeout=2)
            return process, base
        except requests.ConnectionError:
            if process.poll() is not None:
                raise RuntimeError((work / "server.log").read_text()) from None
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the server did not start")


def print_table(summary: dict) -> None:
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", help="a running server on loopback (default: start one on a tiny model)")
    parser.add_argument("--server", choices=["gunicorn", "werkzeug"], default="gunicorn")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--queue-depth", type=int, default=16,
                        help="of the server it starts: with --concurrent-jobs below --clients, so that "
                             "back-pressure (503) is exercised")
    parser.add_argument("--concurrent-jobs", type=int, default=4, help="of the server it starts")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds; the run stops sending then")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)

    process = None
    with tempfile.TemporaryDirectory(prefix="soak-") as work:
        if args.base_url:
            host = urlparse(args.base_url).hostname
            if host not in ("127.0.0.1", "localhost", "::1"):
                parser.error("--base-url must be a loopback address")
            base, pid = args.base_url.rstrip("/"), None
        else:
            process, base = start_local_server(Path(work), args.server, args.queue_depth, args.concurrent_jobs)
            pid = process.pid
        try:
            report = run_load(base, pid, args.clients, args.requests, args.time_limit, args.seed)
        finally:
            if process is not None:
                process.send_signal(signal.SIGTERM)
                process.wait(60)
    summary = report.summary()
    summary.update(clients=args.clients, server=args.server if not args.base_url else args.base_url)
    print_table(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    failed = summary["lost"] or summary["server_errors_500"] or summary["non_json"] or summary["unexpected_status"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
