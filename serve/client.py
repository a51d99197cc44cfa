"""Command-line client: transcribe files through a server's async API, with a progress bar per file.

    python -m serve.client meeting.mp3 interview.m4a --format srt --language zh
    python -m serve.client *.wav --url http://gpu-box:5000 --api-key KEY --format vtt

Each result is written next to its input (``meeting.mp3`` -> ``meeting.srt``). The exit status is 0 when
every file was transcribed, 1 when any failed, 2 for usage errors. Needs only ``requests`` and ``tqdm``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from tqdm import tqdm

FORMATS = ("txt", "srt", "vtt", "json")
QUEUE_FULL_RETRIES = 30
# A poll that gets 503 with Retry-After (a server or its Redis restarting) or no connection tries again
# for this long before the file counts as failed: its job is safe on the server meanwhile.
OUTAGE_PATIENCE_SECONDS = 600


@dataclass
class Task:
    source: Path
    target: Path
    job_id: str | None = None
    bar: tqdm | None = None
    error: str | None = None
    done: bool = False
    fields: dict[str, str] = field(default_factory=dict)


class Client:
    def __init__(self, url: str, api_key: str | None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout

    def submit(self, path: Path, fields: dict[str, str]) -> str:
        """Upload ``path`` to /transcribe/async (waiting out a full queue); return the job id."""
        for _ in range(QUEUE_FULL_RETRIES):
            with path.open("rb") as f:
                response = self.session.post(f"{self.url}/transcribe/async", files={"file": (path.name, f)},
                                             data=fields, timeout=self.timeout)
            if response.status_code == 503 and response.headers.get("Retry-After"):
                time.sleep(min(60, int(response.headers["Retry-After"])))
                continue
            body = _json(response)
            if response.status_code != 202:
                raise RuntimeError(body.get("error") or f"HTTP {response.status_code}")
            return body["job_id"]
        raise RuntimeError("the server's queue stayed full")

    def _get(self, path: str, **params: str) -> requests.Response:
        """GET, riding out a temporary outage (503 with Retry-After, or refused connections)."""
        deadline = time.monotonic() + OUTAGE_PATIENCE_SECONDS
        while True:
            try:
                response = self.session.get(f"{self.url}{path}", params=params, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout):
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
                continue
            retry_after = response.headers.get("Retry-After", "")
            if response.status_code == 503 and retry_after.isdigit() and time.monotonic() < deadline:
                time.sleep(min(60, int(retry_after)))
                continue
            return response

    def status(self, job_id: str) -> dict:
        response = self._get(f"/status/{job_id}")
        body = _json(response)
        if response.status_code != 200:
            raise RuntimeError(body.get("error") or f"HTTP {response.status_code}")
        return body

    def result(self, job_id: str, fmt: str) -> bytes:
        response = self._get(f"/result/{job_id}", format=fmt)
        if response.status_code != 200:
            raise RuntimeError(_json(response).get("error") or f"HTTP {response.status_code}")
        return response.content


def _json(response: requests.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {"error": f"HTTP {response.status_code}: not a JSON answer"}
    return body if isinstance(body, dict) else {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serve.client", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="audio or video files")
    parser.add_argument("--url", default=os.environ.get("QWEN_OMNI_URL", "http://localhost:5000"),
                        help="server address [env QWEN_OMNI_URL] (default: %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("QWEN_OMNI_API_KEY"),
                        help="API key, if the server requires one [env QWEN_OMNI_API_KEY]")
    parser.add_argument("--format", choices=FORMATS, default="txt", help="output format (default: txt)")
    parser.add_argument("--language", help="auto (default), zh, en, yue, ja, ko, ...")
    parser.add_argument("--prompt", help="context words: names, jargon")
    parser.add_argument("--segment-duration", type=float, help="seconds per segment (server default: 60)")
    parser.add_argument("--opencc", choices=("s2t", "s2tw", "s2twp", "s2hk", "t2s"),
                        help="Chinese script conversion")
    parser.add_argument("--output-dir", type=Path, help="write results here instead of next to the inputs")
    parser.add_argument("--overwrite", action="store_true", help="replace existing result files")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between status checks (default: 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fields = {k: str(v) for k, v in (("language", args.language), ("prompt", args.prompt),
                                      ("segment_duration", args.segment_duration), ("opencc", args.opencc))
              if v is not None}
    client = Client(args.url, args.api_key)
    tasks = []
    for source in args.files:
        target = (args.output_dir or source.parent) / f"{source.stem}.{args.format}"
        task = Task(source, target, fields=fields)
        if not source.is_file():
            task.error = "no such file"
        elif target.exists() and not args.overwrite:
            task.error = f"{target} exists (use --overwrite)"
        tasks.append(task)

    for position, task in enumerate(tasks):
        if task.error:
            continue
        try:
            task.job_id = client.submit(task.source, task.fields)
        except (RuntimeError, requests.RequestException) as exc:
            task.error = str(exc)
            continue
        task.bar = tqdm(total=1.0, desc=task.source.name[:30], position=position, unit="s", leave=True,
                        bar_format="{desc:<30} {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s {postfix}")

    while any(t.job_id and not t.done and not t.error for t in tasks):
        for task in tasks:
            if not task.job_id or task.done or task.error:
                continue
            try:
                status = client.status(task.job_id)
            except (RuntimeError, requests.RequestException) as exc:
                task.error = str(exc)
                continue
            _show(task, status)
            if status["status"] == "completed":
                try:
                    task.target.parent.mkdir(parents=True, exist_ok=True)
                    task.target.write_bytes(client.result(task.job_id, args.format))
                    task.done = True
                except (RuntimeError, requests.RequestException, OSError) as exc:
                    task.error = str(exc)
            elif status["status"] != "processing":
                task.error = status.get("error") or status["status"]
        if any(t.job_id and not t.done and not t.error for t in tasks):
            time.sleep(args.poll)

    for task in tasks:
        if task.bar is not None:
            task.bar.close()
    failures = 0
    for task in tasks:
        if task.done:
            print(f"ok      {task.source} -> {task.target}")
        else:
            failures += 1
            print(f"failed  {task.source}: {task.error}", file=sys.stderr)
    return 1 if failures else 0


def _show(task: Task, status: dict) -> None:
    bar = task.bar
    if bar is None:
        return
    progress = status.get("progress") or {}
    total = progress.get("audio_seconds_total") or status.get("duration") or 1.0
    done = total if status["status"] == "completed" else progress.get("audio_seconds_done") or 0.0
    bar.total = total
    bar.n = min(done, total)
    eta = progress.get("eta_seconds")
    bar.set_postfix_str(f"eta {eta:.0f} s" if eta is not None else status.get("stage", status["status"]))
    bar.refresh()


if __name__ == "__main__":
    sys.exit(main())
