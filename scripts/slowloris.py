#!/usr/bin/env python3
"""Slow clients against the server: /health and a normal request while 0, 100 and 500 connections dribble.

Each slow client opens a connection and sends a transcription request at ``--rate`` bytes a second: half of
them dribble their headers, half send whole headers and dribble a multipart body (the case that took a
gunicorn server down). While they are connected the script polls ``/health`` back to back and sends a
normal 5-second transcription ``--repeats`` times; then it waits until the server has cut every slow client
off, and reports /health's p50/p99, the normal request's median against its idle latency measured in the
same run, and how long the server took to cut the slow clients off (and with which status).

It starts the server itself on loopback, as the image runs it (``--server gunicorn``) and in Werkzeug mode,
on the tiny checkpoint, with the default ``--client-timeout`` and ``--min-upload-rate`` unless told
otherwise; or it targets ``--url`` (loopback only: this is a load tool, not an attack tool). Bounded:
at most 1000 clients, ``--window`` seconds each.

    python scripts/slowloris.py                      # both servers, 0/100/500 clients
    python scripts/slowloris.py --server gunicorn --clients 0 500 --client-timeout 10
"""

from __future__ import annotations

import argparse
import contextlib
import io
import ipaddress
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
MAX_CLIENTS = 1000
BOUNDARY = "slowloris-boundary"
HEALTH_INTERVAL = 0.02  # /health polled 50 times a second: far more often than any monitor


def _head(host: str, body_length: int) -> bytes:
    return (f"POST /transcribe/json HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {body_length}\r\n\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"slow.wav\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode()


@dataclass(eq=False)
class SlowClient:
    sock: socket.socket
    opened: float
    dribble_headers: bool
    to_send: bytes
    sent: int = 0
    answer: bytes = b""
    closed_at: float | None = None

    @property
    def status(self) -> int | None:
        """The HTTP status the server answered with before it closed the connection (None: no answer)."""
        line = self.answer.split(b"\r\n", 1)[0].split()
        return int(line[1]) if len(line) >= 2 and line[1].isdigit() else None


@dataclass
class SlowClients:
    """``count`` slow connections, driven by one thread with non-blocking sockets."""

    host: str
    port: int
    count: int
    rate: int = 16
    clients: list[SlowClient] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.count <= MAX_CLIENTS:
            raise ValueError(f"at most {MAX_CLIENTS} slow clients")

    def start(self) -> SlowClients:
        body = _head(f"{self.host}:{self.port}", 10_000_000)
        for n in range(self.count):
            sock = socket.create_connection((self.host, self.port), timeout=10)
            sock.setblocking(False)
            dribble_headers = n % 2 == 0
            # A body dribbler sends its whole header block at once (a valid, huge upload that never ends).
            client = SlowClient(sock, time.monotonic(), dribble_headers, body)
            if not dribble_headers:
                with contextlib.suppress(BlockingIOError):
                    client.sent = sock.send(body)
            self.clients.append(client)
        self._thread = threading.Thread(target=self._drive, name="slow-clients", daemon=True)
        self._thread.start()
        return self

    def _drive(self) -> None:
        selector = selectors.DefaultSelector()
        for client in self.clients:
            selector.register(client.sock, selectors.EVENT_READ, client)
        next_send = time.monotonic()
        while not self._stop.is_set() and any(c.closed_at is None for c in self.clients):
            for key, _ in selector.select(0.1):
                client = key.data
                try:
                    data = client.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                client.answer += data
                if not data:
                    client.closed_at = time.monotonic()
                    selector.unregister(client.sock)
                    client.sock.close()
            if time.monotonic() >= next_send:  # `rate` bytes a second, in one send
                next_send += 1.0
                for client in self.clients:
                    if client.closed_at is None:
                        chunk = client.to_send[client.sent:client.sent + self.rate] or b"\0" * self.rate
                        with contextlib.suppress(OSError):
                            client.sent += client.sock.send(chunk)
        for client in self.clients:
            if client.closed_at is None:
                client.sock.close()

    def wait_closed(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(c.closed_at is not None for c in self.clients):
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def lifetimes(self) -> list[float]:
        return [c.closed_at - c.opened for c in self.clients if c.closed_at is not None]


def tone_wav(seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return out.getvalue()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def normal_request(base: str, audio: bytes, timeout: float = 30) -> float:
    started = time.monotonic()
    response = requests.post(f"{base}/transcribe/json", files={"file": ("clip.wav", audio, "audio/wav")},
                             data={"max_new_tokens": "16"}, timeout=timeout)
    response.raise_for_status()
    return time.monotonic() - started


def measure(base: str, count: int, audio: bytes, window: float, repeats: int, rate: int,
            cutoff_limit: float | None) -> dict:
    """/health latencies and normal requests while ``count`` slow clients are connected."""
    parts = urlsplit(base)
    slow = SlowClients(parts.hostname or "127.0.0.1", parts.port or 80, count, rate).start()
    health: list[float] = []
    failures = 0
    normal: list[float] = []
    errors: list[str] = []
    stop_polling = threading.Event()

    def poll_health() -> None:
        nonlocal failures
        while not stop_polling.is_set():
            started = time.monotonic()
            try:
                requests.get(f"{base}/health", timeout=5).raise_for_status()
                health.append(time.monotonic() - started)
                time.sleep(HEALTH_INTERVAL)
            except requests.RequestException:
                failures += 1

    poller = threading.Thread(target=poll_health, daemon=True)
    started = time.monotonic()
    poller.start()
    for _ in range(repeats):
        try:
            normal.append(normal_request(base, audio))
        except requests.RequestException as exc:
            errors.append(str(exc)[:200])
    time.sleep(max(0.0, window - (time.monotonic() - started)))
    stop_polling.set()
    poller.join(10)
    still_open = [c for c in slow.clients if c.closed_at is None]
    # A server without a cut-off (the baseline) is not waited for.
    all_cut = slow.wait_closed(cutoff_limit * 2 + 30) if count and cutoff_limit else not still_open
    lifetimes = slow.lifetimes()
    statuses: dict[str, int] = {}
    for client in slow.clients:
        key = str(client.status) if client.closed_at is not None else "open"
        statuses[key] = statuses.get(key, 0) + 1
    slow.stop()
    return {
        "slow_clients": count,
        "open_during_window": len(still_open),
        "health_p50_ms": round(1000 * statistics.median(health), 1) if health else None,
        "health_p99_ms": round(1000 * percentile(health, 99), 1) if health else None,
        "health_samples": len(health),
        "health_failures": failures,
        "normal_median_s": round(statistics.median(normal), 3) if normal else None,
        "normal_errors": errors,
        "cut_off_max_s": round(max(lifetimes), 1) if lifetimes else None,
        "all_cut_off": all_cut,
        "answers": statuses,
    }


def wait_ready(base: str, process: subprocess.Popen | None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError("the server exited early")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{base}/health", timeout=2).json().get("model_loaded"):
                return
        time.sleep(0.2)
    raise RuntimeError(f"{base} was not ready in {timeout:.0f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_server(server: str, work: Path, checkpoint: Path, flags: list[str], root: Path = ROOT,
                 name: str | None = None) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_OMNI_")}
    name = name or server
    folders = [arg for folder in ("inputs", "temp", "outputs", "data")
               for arg in (f"--{folder}-dir", str(work / name / folder))]
    log = (work / f"{name}.log").open("w")
    process = subprocess.Popen(
        [sys.executable, str(root / "serve" / "qwen2_5_omni_awq.py"), "--server", server, "--port", str(port),
         "--checkpoint-path", str(checkpoint), "--local-model", "--preload", "--idle-timeout", "-1",
         "--log-level", "WARNING", *folders, *flags], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run_levels(base: str, args: argparse.Namespace, label: str, cutoff: bool = True) -> list[dict]:
    audio = tone_wav(5.0)
    normal_request(base, audio)  # warm-up: the first request pays for lazy initialisation
    rows = []
    for count in args.clients:
        row = {"server": label, **measure(base, count, audio, args.window, args.repeats, args.rate,
                                          args.client_timeout if cutoff else None)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    idle = next((r["normal_median_s"] for r in rows if r["slow_clients"] == 0), None)
    for row in rows:
        if idle and row["normal_median_s"]:
            row["normal_vs_idle"] = round(row["normal_median_s"] / idle, 2)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=["gunicorn", "werkzeug", "both"], default="both")
    parser.add_argument("--url", help="measure this running server instead (loopback only)")
    parser.add_argument("--clients", type=int, nargs="+", default=[0, 100, 500])
    parser.add_argument("--rate", type=int, default=16, help="bytes a second each slow client sends")
    parser.add_argument("--window", type=float, default=20.0, help="seconds of measurement per level, while "
                                                                    "the slow clients are connected")
    parser.add_argument("--repeats", type=int, default=5, help="normal requests per level (median)")
    parser.add_argument("--client-timeout", type=float, default=30.0, help="the server's --client-timeout")
    parser.add_argument("--min-upload-rate", default="1K", help="the server's --min-upload-rate")
    parser.add_argument("--baseline-root", type=Path, help="also run gunicorn from this checkout (e.g. a worktree "
                                                         "of an earlier commit), with its own defaults")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if any(not 0 <= c <= MAX_CLIENTS for c in args.clients):
        parser.error(f"--clients: 0 to {MAX_CLIENTS}")
    if args.window >= args.client_timeout:
        parser.error("--window must be shorter than --client-timeout: the slow clients must still be connected")

    rows: list[dict] = []
    if args.url:
        if not _loopback(args.url):
            parser.error("--url must be a loopback address (127.0.0.1, ::1, localhost)")
        rows = run_levels(args.url.rstrip("/"), args, "given")
    else:
        sys.path.insert(0, str(ROOT / "scripts"))
        import build_tiny_checkpoints

        with tempfile.TemporaryDirectory(prefix="slowloris-") as tmp:
            work = Path(tmp)
            _, checkpoint = build_tiny_checkpoints.build(work / "Qwen")  # the AWQ one, as the image serves
            flags = ["--client-timeout", str(args.client_timeout), "--min-upload-rate", args.min_upload_rate]
            for server in (["gunicorn", "werkzeug"] if args.server == "both" else [args.server]):
                with local_server(server, work, checkpoint, flags) as base:
                    rows += run_levels(base, args, server)
            if args.baseline_root:
                with local_server("gunicorn", work, checkpoint, [], root=args.baseline_root.resolve(),
                                  name="baseline") as base:
                    rows += run_levels(base, args, "gunicorn, baseline", cutoff=False)
    print("\n| server | slow clients | /health p50 | /health p99 | /health failures | normal request | vs idle "
          "| cut off after (max) | answers |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['server']} | {r['slow_clients']} | {r['health_p50_ms']} ms | {r['health_p99_ms']} ms | "
              f"{r['health_failures']} | {r['normal_median_s']} s | {r.get('normal_vs_idle', '-')}x | "
              f"{r['cut_off_max_s']} s | {r['answers']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
